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
    monkeypatch.setattr(_prebuilt.sys, "platform", "linux")
    monkeypatch.setattr(_prebuilt.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("NUMBA_CPU_FEATURES", raising=False)


def test_a_cpu_loads_the_widest_level_it_runs(x86_linux, monkeypatch):
    for flags, want in ((V4, ["x86-64-v4", "x86-64-v3"]), (V3, ["x86-64-v3"]),
                        (V4 - {"avx512vl"}, ["x86-64-v3"]), (V3 - {"movbe"}, []),
                        ({"sse2", "avx"}, []), (set(), [])):
        monkeypatch.setattr(_prebuilt, "_host_flags", lambda f=flags: f)
        assert _prebuilt.levels_here() == want, sorted(flags)
    monkeypatch.setattr(_prebuilt, "_host_flags", lambda: V4)
    monkeypatch.setenv("NUMBA_CPU_FEATURES", "+avx2,-avx512f")  # AVX2 code asked for
    assert _prebuilt.levels_here() == ["x86-64-v3"]


def test_no_level_off_x86_64_linux(monkeypatch):
    monkeypatch.setattr(_prebuilt, "_host_flags", lambda: V4)
    monkeypatch.setattr(_prebuilt.platform, "machine", lambda: "aarch64")
    assert _prebuilt.levels_here() == []
    monkeypatch.setattr(_prebuilt.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(_prebuilt.sys, "platform", "darwin")
    assert _prebuilt.levels_here() == []


def test_the_host_flags_are_read(x86_linux):
    flags = _prebuilt._host_flags()
    if os.path.exists("/proc/cpuinfo"):
        assert "sse2" in flags or not flags  # x86: every x86-64 CPU has SSE2
    assert isinstance(flags, set)


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
    _native.cache_dirs = lambda: [sys.argv[2]]  # an empty cache
    _prebuilt.DIR = sys.argv[1]
    from bce_cli import BCEWithLogitsLoss, bce_with_logits
    from bce_cli._forms import Form
    form = Form("planes", 0, 32)
    cached = _tiers.is_cached(form)
    x = np.linspace(-30, 30, 2_000_001, dtype=np.float32)
    y = (np.sin(x * 7) > 0).astype(np.float32)
    mean = bce_with_logits(x, y)
    none = BCEWithLogitsLoss(reduction="none")(x, y)
    np.save(sys.argv[3], none)
    print(json.dumps({"mean": mean, "cached": cached, "numba": "numba" in sys.modules,
                      "how": _launch.how(form, "float32-float32-float32-float32"),
                      "dir": _prebuilt.directory()}))
""")

NATIVE = pytest.mark.skipif(not (_native.supported() and _prebuilt.levels_here()),
                            reason="objects compiled ahead: x86-64-v3 Linux only")


@NATIVE
def test_a_fresh_process_runs_the_shipped_objects_without_numba(tmp_path):
    """Objects built for x86-64-v3 (which every CPU that loads any level runs) are
    found by a process whose cache is empty: the tier model counts the form as
    cached, ``auto`` takes the compiled tier for a large call, and the losses are
    those of the NumPy float64 reference, without numba imported."""
    from .reference import elementwise

    pre = tmp_path / "pre"
    files = _prebuilt.build(str(pre), levels=("x86-64-v3",), report=lambda line: None,
                            names=["planes_unit_f32"])
    names = sorted(os.path.relpath(f, pre) for f in files)
    assert names[0] == _prebuilt.STAMP and len(names) >= 3
    assert all(n.startswith("x86-64-v3/native.planes_unit_f32.") for n in names[1:])
    assert (pre / _prebuilt.STAMP).read_text().strip() == source_stamp()
    out = subprocess.run([sys.executable, "-c", CHILD, str(pre), str(tmp_path / "empty"),
                          str(tmp_path / "none.npy")],
                         env={k: v for k, v in os.environ.items()
                              if k not in ("BCE_TIER", "NUMBA_CPU_FEATURES")},
                         check=True, capture_output=True, text=True, timeout=300)
    got = json.loads(out.stdout)
    assert got["dir"] == str(pre / "x86-64-v3")
    assert got["cached"] and got["how"] == "loaded" and not got["numba"]
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
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("demo/__init__.py", "")
        zf.writestr("demo-1.0.dist-info/RECORD", "demo/__init__.py,sha256=x,0\n"
                    "demo-1.0.dist-info/RECORD,,\n")
    obj = tmp_path / "native.o"
    obj.write_bytes(b"\x7fELF object")
    _wheel.add_to_wheel(str(wheel), {"demo/_prebuilt/x86-64-v3/native.o": str(obj)})
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read("demo/_prebuilt/x86-64-v3/native.o") == b"\x7fELF object"
        record = zf.read("demo-1.0.dist-info/RECORD").decode().splitlines()
    digest = base64.urlsafe_b64encode(hashlib.sha256(b"\x7fELF object").digest()).rstrip(b"=")
    assert record == ["demo/__init__.py,sha256=x,0",
                      f"demo/_prebuilt/x86-64-v3/native.o,sha256={digest.decode()},11",
                      "demo-1.0.dist-info/RECORD,,"]


@pytest.mark.parametrize("setting, env, machine, want", [
    (None, "", "x86_64", True), ("none", "", "x86_64", False), (None, "none", "x86_64", False),
    (None, "", "aarch64", False),
])
def test_a_wheel_build_compiles_where_it_can_and_is_asked_to(monkeypatch, setting, env,
                                                              machine, want):
    from bce_cli import _wheel

    monkeypatch.setenv("BCE_PREBUILT", env)
    monkeypatch.setattr(_wheel.sys, "platform", "linux")
    monkeypatch.setattr(_wheel.platform, "machine", lambda: machine)
    config = {"prebuilt": setting} if setting else None
    assert _wheel._wanted(config) is want
    requires = _wheel.get_requires_for_build_wheel(config)
    assert ("numba>=0.60" in requires) is want
