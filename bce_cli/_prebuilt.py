"""Entry points compiled ahead of time, shipped in the release wheel: the first call on
a fresh machine runs the compiled kernels, with nothing to compile and no numba to start.

The release build (``make wheel``: ``bce_cli._wheel`` with ``BCE_PREBUILT=all``)
compiles every form's entry point for each argument type ``bce warmup`` covers,
once for each x86-64 level below, into ``prebuilt-kernels/<level>/`` beside this
module, with ``STAMP``: the hash of the kernel sources they were compiled from
(``bce_cli._cache_dirs.source_stamp``).  Each object is in ``bce_cli._native``'s
format (its symbol and SHA-256 on the first line) and is loaded like a cached one,
after the cache's: a process takes the widest level its CPU has (``/proc/cpuinfo``'s
flags).  Objects of other sources (a source tree edited after a build) are never
loaded, nor any where ``BCE_PREBUILT=none`` is set or ``NUMBA_CPU_NAME`` names the
CPU numba should compile for (numba then compiles, as without them).

numba compiles a level by its CPU name (``NUMBA_CPU_NAME``), with AVX-512 turned on
or off in ``NUMBA_CPU_FEATURES`` as the level has it, which also chooses the form of
the kernels' rows loops (``bce_cli._tiers.numba_avx512``); x86-64-v4's code uses
512-bit vectors (LLVM's x86-64-v4 prefers 256-bit ones, as for early AVX-512 CPUs).
"""

from __future__ import annotations

import functools
import os
import platform
import sys

from ._cache_dirs import PACKAGE_DIR, numba_features, source_stamp

# The levels, widest first: the CPU flags (``/proc/cpuinfo``) each one needs, and the
# features numba compiles it with.
_V3 = ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave", "popcnt",
       "sse4_1", "sse4_2", "ssse3", "cx16", "lahf_lm")
LEVELS = {
    "x86-64-v4": (*_V3, "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"),
    "x86-64-v3": _V3,
}
# LLVM's names (``NUMBA_CPU_FEATURES``) of the flags whose names differ.
_LLVM_NAMES = {"bmi1": "bmi", "abm": "lzcnt", "sse4_1": "sse4.1", "sse4_2": "sse4.2",
               "lahf_lm": "sahf"}
FEATURES = {"x86-64-v4": "+avx512f,-prefer-256-bit", "x86-64-v3": "-avx512f"}
STAMP = "STAMP"
ENV = "BCE_PREBUILT"
# Not a Python name: never taken for a package beside this module.
DIR: str | None = str(PACKAGE_DIR / "prebuilt-kernels")  # None: none are used (building)


def _host_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def _x86_64_linux() -> bool:
    return sys.platform.startswith("linux") and platform.machine() == "x86_64"


def levels_here() -> list[str]:
    """The levels this CPU runs, widest first (none off x86-64 Linux), less those that
    need a feature ``NUMBA_CPU_FEATURES`` turns off (``-avx512f``: AVX2 code only), as
    numba's own code would."""
    if not _x86_64_linux():
        return []
    flags = _host_flags()
    off = {name for name, on in numba_features().items() if not on}
    return [level for level, needs in LEVELS.items()
            if flags.issuperset(needs) and not off & {_LLVM_NAMES.get(f, f) for f in needs}]


@functools.cache
def directory() -> str | None:
    """The directory of the objects this process loads, or None: the widest level this
    CPU runs among those built, if they were compiled from the current sources."""
    if DIR is None or os.environ.get(ENV) == "none" or os.environ.get("NUMBA_CPU_NAME"):
        return None
    try:
        with open(os.path.join(DIR, STAMP), encoding="ascii") as fh:
            if fh.read().strip() != source_stamp():
                return None
    except (OSError, ValueError):
        return None
    for level in levels_here():
        path = os.path.join(DIR, level)
        if os.path.isdir(path):
            return path
    return None


def file_name(name: str) -> str:
    """The object of ``name`` (a form's name and its signature) in a level's directory."""
    return f"native.{name}.o"


def build(out: str, levels=tuple(LEVELS), report=print, names=None) -> list[str]:
    """Compile every form (or those named in ``names``) for each of ``levels`` into
    ``out/<level>/`` (``out`` emptied of any earlier build first; one process per
    level, all at once), then write
    ``out/STAMP``; returns the files written.  Nothing compiled is run, so a level
    builds on a CPU that does not have it."""
    import shutil
    import subprocess
    import tempfile

    os.makedirs(out, exist_ok=True)
    # Nothing of an earlier build is left beside the new STAMP (a level not rebuilt now
    # would pass for one of the current sources).
    for old in (STAMP, *LEVELS):
        path = os.path.join(out, old)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.unlink(path)
    root = str(PACKAGE_DIR.parent)
    # numba's other settings (optimisation level, bounds checks, debug info...) would
    # be compiled into the objects unseen: numba's defaults only.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "BCE_"))}
    with tempfile.TemporaryDirectory(prefix="bce-prebuild-") as tmp:
        runs = []
        for level in levels:
            target = os.path.join(out, level)
            os.makedirs(target)
            env = dict(base, NUMBA_CPU_NAME=level, NUMBA_CPU_FEATURES=FEATURES[level],
                       NUMBA_CACHE_DIR=os.path.join(tmp, level),
                       PYTHONPATH=os.pathsep.join(filter(None, (root,
                                                                os.environ.get("PYTHONPATH")))))
            code = ("import sys; from bce_cli import _prebuilt; "
                    "_prebuilt.compile_level(sys.argv[1], sys.argv[2:] or None)")
            cmd = [sys.executable, "-c", code, target, *(names or ())]
            runs.append((level, subprocess.Popen(cmd, env=env, cwd=tmp)))
        failed = [level for level, proc in runs if proc.wait() != 0]
        if failed:
            raise RuntimeError(f"compiling the kernels for {', '.join(failed)} failed")
    with open(os.path.join(out, STAMP), "w", encoding="ascii") as fh:
        fh.write(source_stamp() + "\n")
    files = [os.path.join(out, STAMP)]
    for level in levels:
        objects = sorted(os.listdir(os.path.join(out, level)))
        report(f"{level}: {len(objects)} objects")
        files += [os.path.join(out, level, obj) for obj in objects]
    return files


def compile_level(target: str, names=None) -> None:
    """In a process whose numba compiles for one level: compile each form's entry point
    (every form's, or those named in ``names``) for the argument types ``bce warmup``
    covers, none loaded from shipped objects and none run, and copy each object into
    ``target``."""
    import shutil

    global DIR
    DIR = None
    from . import _launch, _native
    from ._forms import all_forms, common_signatures

    # Only this build's cache: no object compiled elsewhere under the same name.
    own = os.path.join(os.environ["NUMBA_CACHE_DIR"], "bce_cli")
    _native.cache_dirs = lambda: [own]

    for form in all_forms():
        if names is not None and form.name not in names:
            continue
        for sig in common_signatures(form):
            name = f"{form.name}.{sig}"
            _launch.pointer_entry(form, sig)
            paths = _native.find(name)
            if not paths:
                raise SystemExit(f"{name}: no object was saved")
            shutil.copyfile(paths[0], os.path.join(target, file_name(name)))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="directory to write <level>/ and STAMP into")
    parser.add_argument("--level", action="append", choices=list(LEVELS),
                        help="a level to compile (repeatable; default: all)")
    args = parser.parse_args()
    build(args.out, tuple(args.level or LEVELS))
