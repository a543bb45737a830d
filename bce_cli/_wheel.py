"""The package's build backend: setuptools', and a release wheel that ships the kernels
compiled.

Installed from such a wheel, bce runs the compiled kernels from its first call on
an x86-64 Linux machine of x86-64-v3 or later (``bce_cli._prebuilt``).  Asked for
with ``BCE_PREBUILT=all`` (or ``--config-settings prebuilt=all``; ``make wheel``
does it), building the wheel compiles every form for x86-64-v3 (AVX2) and
x86-64-v4 (AVX-512), one process per level (about 3 minutes on two cores), and
adds the objects to the wheel; a comma-separated list of levels builds those only.
The objects are built from the sources being packaged, on x86-64 Linux, and never
kept in the repository.

By default (``none``) a wheel is setuptools' own, as is every editable install and
source distribution: a ``pip install`` from a checkout or a git URL does not wait
minutes for kernels that its first runs can do without (they take the NumPy tier,
``bce_cli._tiers``).  The release wheel keeps the tag ``py3-none-any``: its objects
are x86-64 Linux code, left unused elsewhere, where the package works as without them.
``make wheel`` builds without build isolation, so that the objects are compiled by
the numba the tests ran with.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
import tempfile
import zipfile

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (  # noqa: F401  (the hooks left as setuptools has them)
    build_editable,
    build_sdist,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

# What compiling the kernels needs in the build environment.
COMPILE_REQUIRES = ["numba>=0.60", "numpy>=1.26"]
PACKAGE = "bce_cli"


def levels(config_settings) -> tuple[str, ...]:
    """The levels to compile into the wheel: ``prebuilt`` in the config settings, else
    ``BCE_PREBUILT``: ``none`` (the default), ``all``, or levels separated by commas."""
    from ._prebuilt import LEVELS, _x86_64_linux

    setting = (config_settings or {}).get("prebuilt")
    if isinstance(setting, list):  # given more than once: the last
        setting = setting[-1]
    setting = (setting or os.environ.get("BCE_PREBUILT") or "none").strip()
    if setting == "none":
        return ()
    wanted = tuple(LEVELS) if setting == "all" else tuple(s.strip() for s in setting.split(","))
    unknown = [level for level in wanted if level not in LEVELS]
    if unknown:
        raise ValueError(f"prebuilt: unknown level {unknown[0]!r} (none, all, or of "
                         f"{', '.join(LEVELS)})")
    if not _x86_64_linux():
        raise RuntimeError("prebuilt: the kernels are compiled ahead on x86-64 Linux only "
                           "(build with prebuilt=none elsewhere)")
    return wanted


def get_requires_for_build_wheel(config_settings=None):
    extra = COMPILE_REQUIRES if levels(config_settings) else []
    return [*_setuptools.get_requires_for_build_wheel(config_settings), *extra]


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    wanted = levels(config_settings)
    name = _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    if wanted:
        from . import _prebuilt

        with tempfile.TemporaryDirectory(prefix="bce-wheel-") as tmp:
            files = _prebuilt.build(tmp, wanted,
                                    report=lambda line: print(line, file=sys.stderr))
            add_to_wheel(os.path.join(wheel_directory, name),
                         {f"{PACKAGE}/{os.path.basename(_prebuilt.DIR)}/"
                          f"{os.path.relpath(path, tmp)}": path for path in files})
    return name


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def add_to_wheel(wheel: str, files: dict[str, str]) -> None:
    """Add ``files`` (name in the wheel -> path here) to ``wheel``, listed in its RECORD:
    before the ``.dist-info`` entries (which a wheel keeps last), dated as its other
    entries (a build from the same sources gives the same bytes), readable by all."""
    tmp = wheel + ".tmp"
    try:
        with zipfile.ZipFile(wheel) as src, \
                zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            infos = src.infolist()
            record = next(i for i in infos if i.filename.endswith(".dist-info/RECORD"))
            date = next((i.date_time for i in infos if i is not record), (1980, 1, 1, 0, 0, 0))
            for info in infos:
                if ".dist-info/" not in info.filename:
                    dst.writestr(info, src.read(info))
            lines = [line for line in src.read(record).decode("utf-8").splitlines()
                     if line and not line.startswith(record.filename + ",")]
            for arcname, path in sorted(files.items()):
                with open(path, "rb") as fh:
                    data = fh.read()
                info = zipfile.ZipInfo(arcname, date)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                dst.writestr(info, data)
                lines.append(f"{arcname},{_record_hash(data)},{len(data)}")
            for info in infos:
                if ".dist-info/" in info.filename and info is not record:
                    dst.writestr(info, src.read(info))
            lines.append(f"{record.filename},,")
            dst.writestr(record, "\n".join(lines) + "\n")
        os.replace(tmp, wheel)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
