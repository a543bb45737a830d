"""Kernels compiled ahead into the wheel (``bce_cli._prebuilt``, ``bce_cli._wheel``): which
level a CPU loads, that stale objects are passed over, that a process runs them without
numba, and that a wheel carries them in its RECORD."""

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from bce_cli import _native, _prebuilt
from bce_cli._cache_dirs import source_stamp

V3 = set(_prebuilt.LEVELS["x86-64-v3"])
V4 = set(_prebuilt.LEVELS["x86-64-v4"])


@pytest.fixture
def x86_linux(monkeypatch):
    monkeypatch.setattr(_prebuilt, "_x86_64_linux", lambda: True)
    for name in ("NUMBA_CPU_FEATURES", "NUMBA_CPU_NAME", "BCE_PREBUILT"):
        monkeypatch.delenv(name, raising=False)


def test_a_cpu_loads_the_widest_level_it_runs(x86_linux, monkeypatch):
    for flags, want in ((V4, ["x86-64-v4", "x86-64-v3"]), (V3, ["x86-64-v3"]),
                        (V4 - {"avx512vl"}, ["x86-64-v3"]), (V3 - {"movbe"}, []),
                        ({"sse2", "avx"}, []), (set(), [])):
        monkeypatch.setattr(_prebuilt, "_host_flags", lambda f=flags: f)
        assert _prebuilt.levels_here() == want, sorted(flags)
    monkeypatch.setattr(_prebuilt, "_host_flags", lambda: V4)
    for features, want in (("+avx2,-avx512f", ["x86-64-v3"]),  # AVX2 code asked for
                           ("-avx512vl", ["x86-64-v3"]), ("-lzcnt", []), (" -sse4.2", []),
                           ("-bmi,+avx512f", []), ("+avx2", ["x86-64-v4", "x86-64-v3"])):
        monkeypatch.setenv("NUMBA_CPU_FEATURES", features)
        assert _prebuilt.levels_here() == want, features


def test_no_level_off_x86_64_linux(monkeypatch):
    monkeypatch.setattr(_prebuilt, "_host_flags", lambda: V4)
    monkeypatch.setattr(_prebuilt, "_x86_64_linux", lambda: False)
    assert _prebuilt.levels_here() == []


@pytest.mark.skipif(not (_prebuilt._x86_64_linux() and os.path.exists("/proc/cpuinfo")),
                    reason="x86-64 Linux's /proc/cpuinfo")
def test_the_host_flags_are_read():
    flags = _prebuilt._host_flags()
    assert {"sse2", "fpu"} <= flags  # every x86-64 CPU has them
    assert not any(":" in flag for flag in flags)  # the values only, not the line's name


@pytest.mark.parametrize("level", list(_prebuilt.LEVELS))
def test_each_level_compiles_the_loops_of_its_vector_width(monkeypatch, level):
    """The rows loops' form follows ``_tiers.numba_avx512``, which must read a level's
    features as the level has AVX-512 or not."""
    from bce_cli import _tiers

    monkeypatch.setenv("NUMBA_CPU_FEATURES", _prebuilt.FEATURES[level])
    assert _tiers.numba_avx512() is ("avx512f" in _prebuilt.LEVELS[level])


def test_a_build_leaves_nothing_of_an_earlier_one(monkeypatch, tmp_path):
    """A level not rebuilt now must not pass for one of the current sources under the new
    STAMP (a v4 CPU would load objects of other sources)."""
    import subprocess as sp

    class Done:
        def __init__(self, cmd, **kwargs):
            self.cmd = cmd

        def wait(self):
            return 0

    out = tmp_path / "out"
    for level in _prebuilt.LEVELS:
        (out / level).mkdir(parents=True)
        (out / level / "native.old.o").write_bytes(b"old")
    (out / _prebuilt.STAMP).write_text("0" * 64 + "\n")
    monkeypatch.setattr(sp, "Popen", Done)  # compiles nothing
    files = _prebuilt.build(str(out), levels=("x86-64-v3",), report=lambda line: None)
    assert files == [str(out / _prebuilt.STAMP)]
    assert sorted(p.name for p in out.iterdir()) == [_prebuilt.STAMP, "x86-64-v3"]
    assert list((out / "x86-64-v3").iterdir()) == []
    assert (out / _prebuilt.STAMP).read_text().strip() == source_stamp()


def _tree(root, stamp, levels):
    root.mkdir()
    (root / _prebuilt.STAMP).write_text(stamp + "\n")
    for level in levels:
        (root / level).mkdir()
    return root


@pytest.mark.parametrize("levels, flags, want", [
    (("x86-64-v4", "x86-64-v3"), V4, "x86-64-v4"),
    (("x86-64-v4", "x86-64-v3"), V3, "x86-64-v3"),
    (("x86-64-v3",), V4, "x86-64-v3"),
    (("x86-64-v4",), V3, None),
])
def test_the_directory_is_the_widest_level_built_and_run(x86_linux, monkeypatch, tmp_path,
                                                         levels, flags, want):
    root = _tree(tmp_path / "pre", source_stamp(), levels)
    monkeypatch.setattr(_prebuilt, "_host_flags", lambda: flags)
    monkeypatch.setattr(_prebuilt, "DIR", str(root))
    _prebuilt.directory.cache_clear()
    try:
        assert _prebuilt.directory() == (None if want is None else str(root / want))
    finally:
        _prebuilt.directory.cache_clear()


@pytest.mark.parametrize("env", [{"BCE_PREBUILT": "none"}, {"NUMBA_CPU_NAME": "haswell"}])
def test_none_are_loaded_when_asked_or_when_numba_is_given_a_cpu(x86_linux, monkeypatch,
                                                                 tmp_path, env):
    root = _tree(tmp_path / "pre", source_stamp(), ("x86-64-v3",))
    monkeypatch.setattr(_prebuilt, "_host_flags", lambda: V3)
    monkeypatch.setattr(_prebuilt, "DIR", str(root))
    _prebuilt.directory.cache_clear()
    try:
        assert _prebuilt.directory() == str(root / "x86-64-v3")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        _prebuilt.directory.cache_clear()
        assert _prebuilt.directory() is None
    finally:
        _prebuilt.directory.cache_clear()


@pytest.mark.parametrize("stamp", ["0" * 64, "", None])
def test_objects_of_other_sources_are_passed_over(x86_linux, monkeypatch, tmp_path, stamp):
    """A source tree edited after a build, or a damaged tree: nothing shipped is loaded,
    and ``_native.find`` looks only at the cache."""
    root = _tree(tmp_path / "pre", stamp or "", ("x86-64-v3",))
    if stamp is None:
        (root / _prebuilt.STAMP).unlink()
    name = "planes_unit_f32.float32-float32-float32-float32"
    (root / "x86-64-v3" / _prebuilt.file_name(name)).write_bytes(b"")
    monkeypatch.setattr(_prebuilt, "_host_flags", lambda: V3)
    monkeypatch.setattr(_prebuilt, "DIR", str(root))
    monkeypatch.setattr(_native, "cache_dirs", lambda: [str(tmp_path / "cache")])
    _prebuilt.directory.cache_clear()
    try:
        assert _prebuilt.directory() is None
        assert _native.find(name) == []
        (root / _prebuilt.STAMP).write_text(source_stamp() + "\n")  # the current sources
        _prebuilt.directory.cache_clear()
        assert _native.find(name) == [str(root / "x86-64-v3" / _prebuilt.file_name(name))]
    finally:
        _prebuilt.directory.cache_clear()


CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from bce_cli import _launch, _native, _prebuilt, _tiers
    _native.cache_dirs = lambda: [sys.argv[1]]  # an empty cache
    from bce_cli import BCEWithLogitsLoss, bce_with_logits
    from bce_cli._forms import Form
    form = Form("planes", 0, 32)
    cached = _tiers.is_cached(form)
    auto = _tiers.choose(10**9, form)  # a large job (the size that pays depends on the cores)
    _tiers.set_tier("compiled")
    x = np.linspace(-30, 30, 2_000_001, dtype=np.float32)
    y = (np.sin(x * 7) > 0).astype(np.float32)
    mean = bce_with_logits(x, y)
    none = BCEWithLogitsLoss(reduction="none")(x, y)
    np.save(sys.argv[2], none)
    print(json.dumps({"mean": mean, "cached": cached, "auto": auto,
                      "numba": "numba" in sys.modules,
                      "how": _launch.how(form, "float32-float32-float32-float32"),
                      "dir": _prebuilt.directory(), "package": _prebuilt.__file__}))
""")

# Builds a wheel of a copy of the sources with the backend, as pip does, the kernels
# compiled ahead for one level and (to keep the test short) the two forms the child runs.
FORMS = ["planes_unit_f32", "planes_unit_f32_direct"]
BUILD = textwrap.dedent("""
    import functools, sys
    from bce_cli import _prebuilt, _wheel
    _prebuilt.build = functools.partial(_prebuilt.build, names=sys.argv[2:])
    print(_wheel.build_wheel(sys.argv[1], {"prebuilt": "all"}))
""")

NATIVE = pytest.mark.skipif(not (_native.supported() and _prebuilt.levels_here()),
                            reason="objects compiled ahead: x86-64-v3 Linux only")


@NATIVE
def test_a_fresh_install_of_the_wheel_runs_the_shipped_objects_without_numba(tmp_path,
                                                                             monkeypatch):
    """The wheel's backend compiles the objects of both levels (whichever this CPU runs:
    nothing compiled is run) and lists them in the RECORD; every object links here.
    Installed (unpacked) and run with an empty cache, the form counts as cached, ``auto``
    takes the compiled tier for a large job, and the widest level's objects are loaded
    without numba, and the losses are those of the NumPy float64 reference."""
    import shutil

    from .reference import elementwise

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = tmp_path / "src"
    shutil.copytree(os.path.join(root, "bce_cli"), src / "bce_cli",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(root, name), src / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "BCE_"))}
    out = subprocess.run([sys.executable, "-c", BUILD, str(tmp_path / "dist"), *FORMS], cwd=src,
                         env=dict(env, PYTHONPATH=str(src)), check=True, capture_output=True,
                         text=True, timeout=600)
    wheel = tmp_path / "dist" / out.stdout.split()[-1]
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        record = zf.read(next(n for n in names if n.endswith("RECORD"))).decode()
        for line in record.splitlines():  # every file hashed as it is
            name, digest, size = line.rsplit(",", 2)
            if digest:
                data = zf.read(name)
                assert digest == "sha256=" + base64.urlsafe_b64encode(
                    hashlib.sha256(data).digest()).rstrip(b"=").decode() and int(size) == len(data)
        zf.extractall(site)
    shipped = sorted(n for n in names if "/prebuilt-kernels/" in n)
    assert shipped[0] == "bce_cli/prebuilt-kernels/STAMP"
    for level in _prebuilt.LEVELS:
        mine = [n for n in shipped if n.startswith(f"bce_cli/prebuilt-kernels/{level}/")]
        assert {n.split("/")[-1].split(".")[1] for n in mine} == set(FORMS)
        assert len(mine) >= 4  # each form for bool and float targets
        for name in mine:  # linked, not run
            assert _native.load(str(site / name)) is not None, name
    assert len(shipped) == 1 + sum(n.endswith(".o") for n in names)
    assert len(record.splitlines()) == len(names)
    assert names[-1].endswith(".dist-info/RECORD")
    assert (site / "bce_cli/prebuilt-kernels/STAMP").read_text().strip() == source_stamp()
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "empty"),
                          str(tmp_path / "none.npy")],
                         env=dict(env, PYTHONPATH=str(site)), cwd=tmp_path, check=True,
                         capture_output=True, text=True, timeout=300)
    got = json.loads(out.stdout)
    assert got["package"].startswith(str(site))
    monkeypatch.delenv("NUMBA_CPU_FEATURES", raising=False)  # as in the child
    widest = _prebuilt.levels_here()[0]
    assert got["dir"] == str(site / "bce_cli" / "prebuilt-kernels" / widest)
    assert got["cached"] and got["auto"] == "compiled"
    assert got["how"] == "loaded" and not got["numba"]
    x = np.linspace(-30, 30, 2_000_001, dtype=np.float32)
    y = (np.sin(x * 7) > 0).astype(np.float32)
    want = elementwise(x, y)
    none = np.load(tmp_path / "none.npy")
    assert none.dtype == np.float32
    spacing = np.spacing((np.abs(x) + want).astype(np.float32)).astype(np.longdouble)
    assert (np.abs(none - want) / spacing).max() <= 1  # the compiled tier's float32 bound
    assert got["mean"] == pytest.approx(float(want.mean()), rel=1e-12)


def test_a_wheel_lists_what_is_added_in_its_record(tmp_path):
    from bce_cli import _wheel

    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    date = (2020, 5, 17, 12, 0, 0)
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(zipfile.ZipInfo("demo/__init__.py", date), "")
        zf.writestr(zipfile.ZipInfo("demo-1.0.dist-info/WHEEL", date), "Wheel-Version: 1.0\n")
        zf.writestr(zipfile.ZipInfo("demo-1.0.dist-info/RECORD", date),
                    "demo/__init__.py,sha256=x,0\ndemo-1.0.dist-info/WHEEL,sha256=y,19\n"
                    "demo-1.0.dist-info/RECORD,,\n")
    obj = tmp_path / "native.o"
    obj.write_bytes(b"\x7fELF object")
    _wheel.add_to_wheel(str(wheel), {"demo/kernels/x86-64-v3/native.o": str(obj)})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([wheel.name, obj.name])
    with zipfile.ZipFile(wheel) as zf:
        assert zf.namelist() == ["demo/__init__.py", "demo/kernels/x86-64-v3/native.o",
                                 "demo-1.0.dist-info/WHEEL", "demo-1.0.dist-info/RECORD"]
        info = zf.getinfo("demo/kernels/x86-64-v3/native.o")
        assert info.date_time == date and info.external_attr >> 16 == 0o644
        assert zf.read("demo/kernels/x86-64-v3/native.o") == b"\x7fELF object"
        record = zf.read("demo-1.0.dist-info/RECORD").decode().splitlines()
    digest = base64.urlsafe_b64encode(hashlib.sha256(b"\x7fELF object").digest()).rstrip(b"=")
    assert record == ["demo/__init__.py,sha256=x,0", "demo-1.0.dist-info/WHEEL,sha256=y,19",
                      f"demo/kernels/x86-64-v3/native.o,sha256={digest.decode()},11",
                      "demo-1.0.dist-info/RECORD,,"]


@pytest.mark.parametrize("setting, env, want", [
    (None, "", ()), (None, None, ()), ("none", "all", ()), (None, "none", ()),
    ("all", "", ("x86-64-v4", "x86-64-v3")), (None, "all", ("x86-64-v4", "x86-64-v3")),
    (None, "x86-64-v3", ("x86-64-v3",)), ("x86-64-v3, x86-64-v4", "none",
                                           ("x86-64-v3", "x86-64-v4")),
])
def test_a_wheel_build_compiles_the_levels_asked_for(monkeypatch, setting, env, want):
    """Plain wheels by default (a ``pip install`` from a checkout or a git URL does not
    wait minutes for kernels); the config setting overrides the variable."""
    from bce_cli import _wheel

    if env is None:
        monkeypatch.delenv("BCE_PREBUILT", raising=False)
    else:
        monkeypatch.setenv("BCE_PREBUILT", env)
    monkeypatch.setattr(_prebuilt, "_x86_64_linux", lambda: True)
    monkeypatch.setattr(_wheel._setuptools, "get_requires_for_build_wheel", lambda c=None: [])
    config = {"prebuilt": setting} if setting else None
    assert _wheel.levels(config) == want
    assert ("numba>=0.60" in _wheel.get_requires_for_build_wheel(config)) is bool(want)


def test_a_wheel_build_says_what_it_cannot_compile(monkeypatch):
    from bce_cli import _wheel

    monkeypatch.setattr(_prebuilt, "_x86_64_linux", lambda: True)
    with pytest.raises(ValueError, match="unknown level 'x86-64-v2'"):
        _wheel.levels({"prebuilt": "x86-64-v2"})
    monkeypatch.setattr(_prebuilt, "_x86_64_linux", lambda: False)
    with pytest.raises(RuntimeError, match="x86-64 Linux only"):
        _wheel.levels({"prebuilt": "all"})
    assert _wheel.levels({"prebuilt": "none"}) == ()
    monkeypatch.setattr(_prebuilt, "_x86_64_linux", lambda: True)
    assert _wheel.levels({"prebuilt": ["all", "x86-64-v3"]}) == ("x86-64-v3",)  # the last
