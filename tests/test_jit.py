"""Compiled kernel forms: caching (also read-only), the serial entry point on threads."""

import os
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bce_cli import _cache_dirs, _elf, _jit, _native, _tiers
from bce_cli._forms import Form, planes_geometry, rows_geometry


def test_no_cache_directory_is_said_once(monkeypatch):
    monkeypatch.setattr(_jit, "cache_dirs", lambda: [])
    monkeypatch.setattr(_jit, "_cache_warned", False)

    def f(a, b):
        return a + b

    def g(a, b):
        return a * b

    with pytest.warns(RuntimeWarning, match="NUMBA_CACHE_DIR") as record:
        kf = _jit.form_kernel("test_f", parallel=False)(f)
        kg = _jit.form_kernel("test_g", parallel=False)(g)
    assert len(record) == 1
    assert kf(1, 2) == 3 and kg(2, 3) == 6


def _run_form(form, parallel, pool=None):
    rng = np.random.default_rng(1)
    shape = (3000, 7) if form.kernel == "rows" else (5 * 33_000,)
    x = (rng.standard_normal(shape) * 3).astype(np.float32).reshape(-1)
    y = (rng.random(shape) < 0.3).astype(np.float32).reshape(-1)
    if form.kernel == "rows":
        geom, n_tasks = rows_geometry(*shape)
        c = 7
    else:
        geom, n_tasks = planes_geometry(1, 1, x.size)
        c = 1
    empty = np.zeros(0)
    from bce_cli import _launch

    return _launch.run(form, geom, n_tasks, x, y, np.ones(c), np.full(c, 2.0), empty, empty,
                       0.0, 0.0, False, 0, np.zeros(0, np.float32), False, empty,
                       parallel=parallel, pool=pool, workers=_tiers.threads())


@pytest.mark.parametrize("kind", ["planes", "rows"])
def test_serial_entry_on_threads_equals_prange(kind):
    """The same task under numba's prange, in order, and on the thread pool: same bits."""

    form = Form(kind, 1, 32)  # scalar / weighted factors
    serial = _run_form(form, parallel=False)
    threaded = _run_form(form, parallel=False, pool=_tiers.pool())
    prange = _run_form(form, parallel=True)
    for got in (threaded, prange):
        np.testing.assert_array_equal(got[0], serial[0])
        np.testing.assert_array_equal(got[1], serial[1])
    assert serial[0][:, 1].sum() > 0  # counted something


CHILD = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from bce_cli import _launch, _native, _tiers
    if sys.argv[1] == "deny-writes":  # what a read-only file system says, even to root
        def refuse(path, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+"):
                raise OSError(30, "Read-only file system", path)
            return open(path, mode, *args, **kwargs)
        _native.open = refuse
    only = os.path.join(os.environ["NUMBA_CACHE_DIR"], "bce_cli")
    _native.cache_dirs = lambda: [only]  # no fallback to the package's or the user's cache
    _tiers.set_tier("compiled")
    from bce_cli import bce_with_logits
    from bce_cli._forms import Form
    x = np.linspace(-4, 4, 200_000, dtype=np.float32)
    loss = bce_with_logits(x, (x > 0.5).astype(np.float32))
    how = _launch.how(Form("planes", 0, 32), "float32-float32-float32-float32")
    print(json.dumps({"loss": loss, "how": how, "numba": "numba" in sys.modules,
                      "llvm": "llvmlite" in sys.modules, "runs_an_object": _native.started()}))
""")


def _child(mode, cache_dir, stderr=False):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    out = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, check=True,
                         capture_output=True, text=True)
    import json

    result = json.loads(out.stdout)
    return {**result, "stderr": out.stderr} if stderr else result


NATIVE = pytest.mark.skipif(not _native.supported(), reason="native objects: ELF (Linux) only")


@NATIVE
def test_cache_is_written_then_used_read_only_without_numba(tmp_path):
    """A form compiled once is saved as a native object; a later process (here with a
    read-only cache: a CI cache, a Docker layer) loads it without importing numba,
    and computes the same bits."""
    first = _child("write", tmp_path)
    assert first["how"] == "compiled" and first["numba"] and first["runs_an_object"]
    saved = list((tmp_path / "bce_cli").iterdir())
    assert [p.name for p in saved] == [_native.file_name(
        "planes_unit_f32.float32-float32-float32-float32")]
    before = sorted((p.name, p.stat().st_mtime_ns) for p in saved)
    second = _child("deny-writes", tmp_path)
    assert second == {**first, "how": "loaded", "numba": False,
                      "llvm": platform.machine() != "x86_64"}  # linked by bce_cli._elf
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "bce_cli").iterdir()) \
        == before


METRICS_CHILD = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from bce_cli import _launch, _native, _tiers
    only = os.path.join(os.environ["NUMBA_CACHE_DIR"], "bce_cli")
    _native.cache_dirs = lambda: [only]
    _tiers.set_tier("compiled")
    from bce_cli.metrics import MetricsAccumulator, metrics_form
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((30_000, 4)) * 3).astype(np.float32)
    y = rng.random((30_000, 4)) < 0.3
    acc = MetricsAccumulator(4).update(x, y, wfull=rng.random((30_000, 4)))
    acc.update(x, y.astype(np.float32), ignore=1.0, nan_policy="omit")
    how = [_launch.how(metrics_form(x.dtype), f"float32-{t}-float64-float64")
           for t in ("uint8", "float32")]
    print(json.dumps({"state": acc.state.tobytes().hex(), "how": how,
                      "numba": "numba" in sys.modules, "llvm": "llvmlite" in sys.modules}))
""")


@NATIVE
def test_the_metrics_kernel_is_saved_then_loaded_without_numba(tmp_path):
    """``--metrics``'s kernel has a pointer entry point like the loss's: compiled once and
    saved as native objects, then loaded by a later process without numba, which
    computes the same bits (weights, an ignore value, both target types)."""
    import json

    def child():
        env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
        out = subprocess.run([sys.executable, "-c", METRICS_CHILD], env=env, check=True,
                             capture_output=True, text=True)
        return json.loads(out.stdout)

    first = child()
    assert first["how"] == ["compiled", "compiled"] and first["numba"]
    assert sorted(p.name for p in (tmp_path / "bce_cli").iterdir()) == sorted(
        _native.file_name(f"metrics_hist_f32.float32-{t}-float64-float64")
        for t in ("uint8", "float32"))
    second = child()
    assert second == {**first, "how": ["loaded", "loaded"], "numba": False,
                      "llvm": platform.machine() != "x86_64"}


@NATIVE
def test_a_read_only_cache_without_the_form_still_computes(tmp_path):
    """Nothing can be saved: the form is compiled, computes, and the user is told once
    how to keep compiled kernels."""
    (tmp_path / "bce_cli").mkdir()
    result = _child("deny-writes", tmp_path, stderr=True)
    assert result["how"] == "compiled" and result["loss"] > 0
    assert result["stderr"].count("no writable cache directory") == 1
    assert list((tmp_path / "bce_cli").iterdir()) == []


def test_cache_stamp_covers_every_kernel_source(monkeypatch, tmp_path):
    """An edit to _fastmath.py (inlined into the kernels) invalidates cached forms."""
    for name in _cache_dirs.KERNEL_SOURCES:
        (tmp_path / name).write_text(name)
    monkeypatch.setattr(_cache_dirs, "PACKAGE_DIR", tmp_path)
    _cache_dirs.source_stamp.cache_clear()
    stamp = _cache_dirs.source_stamp()
    _native._key.cache_clear()
    name = _native.file_name("planes_unit_f32.float32-uint8-float32-float32")
    (tmp_path / "_fastmath.py").write_text("edited")
    _cache_dirs.source_stamp.cache_clear()
    _native._key.cache_clear()
    assert _cache_dirs.source_stamp() != stamp
    assert _native.file_name("planes_unit_f32.float32-uint8-float32-float32") != name
    _cache_dirs.source_stamp.cache_clear()
    _native._key.cache_clear()


def test_stale_read_only_cache_is_passed_over(monkeypatch, tmp_path):
    """A read-only directory whose entry was compiled from other sources neither counts
    as cached nor keeps the form from being saved in a writable directory."""
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    (old / _cache_dirs.index_name("planes_ps_f64")).write_text("")
    (old / _cache_dirs.stamp_name("planes_ps_f64")).write_text("0" * 64)
    monkeypatch.setattr(_jit, "cache_dirs", lambda: [str(old), str(new)])
    monkeypatch.setattr(_cache_dirs, "cache_dirs", lambda: [str(old), str(new)])
    real = os.access
    monkeypatch.setattr(_jit.os, "access", lambda p, m: False if str(p) == str(old) else
                        real(p, m))
    assert not _cache_dirs.is_cached("planes_ps_f64")
    locator = _jit._Locator.for_form("planes_ps_f64", __file__)
    assert locator.get_cache_path() == str(new)
    (old / _cache_dirs.stamp_name("planes_ps_f64")).write_text(_cache_dirs.stamp_text(None))
    assert _cache_dirs.is_cached("planes_ps_f64")
    assert _jit._Locator.for_form("planes_ps_f64", __file__).get_cache_path() == str(old)


def test_saves_into_one_cache_are_serialised(monkeypatch, tmp_path):
    """numba updates its index by read-modify-write: each save into numba's cache (the
    metrics' forms, the prange entry points) holds a file lock."""
    import fcntl

    calls = []
    real = fcntl.flock
    monkeypatch.setattr(fcntl, "flock", lambda fd, op: calls.append(op) or real(fd, op))
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))

    def add_one(a):
        return a + 1

    kernel = _jit.form_kernel("test_lock", parallel=False)(add_one)
    assert kernel(1) == 2
    assert calls[:2] == [fcntl.LOCK_EX, fcntl.LOCK_UN]
    assert (tmp_path / "bce_cli" / _cache_dirs.stamp_name("test_lock")).read_text() == \
        _cache_dirs.stamp_text(None)


def test_native_objects_are_per_cpu(monkeypatch):
    """A native object is named by the CPU it was compiled for (and the sources and
    compiler versions): a cache restored on another CPU model holds nothing to load."""
    name = "planes_ps_f64.float64-uint8-float64-float64"
    monkeypatch.setattr(_native, "cpu_key", lambda: "a" * 16)
    _native._key.cache_clear()
    first = _native.file_name(name)
    monkeypatch.setattr(_native, "cpu_key", lambda: "b" * 16)
    _native._key.cache_clear()
    assert _native.file_name(name) != first
    _native._key.cache_clear()


def test_a_cache_built_for_another_cpu_counts_as_empty(monkeypatch, tmp_path):
    """numba keys its cache by the CPU it compiled for and compiles again on any other
    (a CI cache restored on another runner model, a Docker layer built elsewhere): the
    tier model must not count such a form as cached (it would pay a compile where it
    expected a load).  Saving on a second CPU keeps the first one's entry."""
    form = "planes_ps_f64"
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setattr(_cache_dirs, "cache_dirs", lambda: [str(cache)])
    (cache / _cache_dirs.index_name(form)).write_text("")
    stamp = cache / _cache_dirs.stamp_name(form)
    monkeypatch.setattr(_cache_dirs, "cpu_key", lambda: "a" * 16)
    stamp.write_text(_cache_dirs.stamp_text(None))
    assert _cache_dirs.is_cached(form)
    monkeypatch.setattr(_cache_dirs, "cpu_key", lambda: "b" * 16)
    assert not _cache_dirs.is_cached(form)
    stamp.write_text(_cache_dirs.stamp_text(stamp.read_text()))  # saved on CPU b too
    assert _cache_dirs.is_cached(form)
    monkeypatch.setattr(_cache_dirs, "cpu_key", lambda: "a" * 16)
    assert _cache_dirs.is_cached(form)
    monkeypatch.setattr(_cache_dirs, "source_stamp", lambda: "0" * 64)  # sources edited
    assert not _cache_dirs.is_cached(form)
    assert _cache_dirs.stamp_text(stamp.read_text()).split() == ["0" * 64, "a" * 16]


def test_the_cpu_key_follows_numbas_target(monkeypatch):
    """The key changes with the host CPU and with NUMBA_CPU_NAME / NUMBA_CPU_FEATURES, as
    numba's cache index does; with both set, numba's target, and the key, do not depend
    on the host."""
    def key():
        _cache_dirs.cpu_key.cache_clear()
        return _cache_dirs.cpu_key()

    monkeypatch.delenv("NUMBA_CPU_NAME", raising=False)
    monkeypatch.delenv("NUMBA_CPU_FEATURES", raising=False)
    host = key()
    assert host == key() and len(host) == 16
    monkeypatch.setenv("NUMBA_CPU_NAME", "haswell")
    named = key()
    assert named != host
    monkeypatch.setenv("NUMBA_CPU_FEATURES", "+avx2,-avx512f")
    portable = key()
    assert portable not in (host, named)
    monkeypatch.setattr(_cache_dirs, "_host_cpu", lambda: "another CPU")
    assert key() == portable
    monkeypatch.delenv("NUMBA_CPU_FEATURES")
    assert key() != named  # the host's features still count
    monkeypatch.delenv("NUMBA_CPU_NAME")
    assert key() != host
    _cache_dirs.cpu_key.cache_clear()


@NATIVE
def test_warmup_fills_the_cache_for_the_forms_it_names(tmp_path, monkeypatch):
    """``bce warmup`` compiles each form, for each common signature, into the cache; the
    tier model then sees it."""
    from typer.testing import CliRunner

    from bce_cli import _forms, _launch
    from bce_cli.cli import app

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_native, "cache_dirs", lambda: [str(tmp_path / "bce_cli")])
    forms = [Form("planes", 3, 64), Form("rows", 1, 64), Form("metrics", 0, 64)]
    monkeypatch.setattr(_forms, "all_forms", lambda: forms)
    keys = [(f, sig) for f in forms for sig in _forms.common_signatures(f)]
    for key in keys:  # compiled afresh, so that they are saved in the new cache directory
        monkeypatch.delitem(_launch._entries, key, raising=False)
    files = [tmp_path / "bce_cli" / _native.file_name(f"{f.name}.{sig}") for f, sig in keys]
    assert not any(f.exists() for f in files) and not any(_tiers.is_cached(f) for f in forms)
    result = CliRunner().invoke(app, ["warmup"])
    assert result.exit_code == 0, result.output
    assert "3 kernel forms ready" in result.output and str(tmp_path) in result.output
    assert all(f.exists() for f in files)
    assert all(_tiers.is_cached(f) for f in forms)


_START = """
import sys
from bce_cli import _tiers
_tiers.own_process = {own}
import bce_cli._jit
import numba.np.arraymath as arraymath
from numba.core.typing import cffi_utils
print(arraymath._HAVE_BLAS, "scipy.linalg" in sys.modules, cffi_utils.SUPPORTED,
      "cffi" in sys.modules)
import cffi, scipy.linalg  # noqa: F401  (import as usual afterwards)
print("ok")
"""


@pytest.mark.parametrize("own", [True, False])
def test_the_command_starts_numba_without_its_probes(own):
    """In the bce command's own process numba starts without importing scipy.linalg
    (its BLAS probe, 0.1 s) or cffi; a library caller's process keeps numba's own
    start."""
    pytest.importorskip("scipy")
    pytest.importorskip("cffi")
    out = subprocess.run([sys.executable, "-c", _START.format(own=own)], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == (["False"] * 4 + ["ok"] if own else ["True"] * 4 + ["ok"])


SAME_BITS = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from bce_cli import _cache_dirs, _launch, _native, _tiers
    from bce_cli._dispatch import LossOptions, class_stats
    from bce_cli.stats import OUT_WITH_STATS
    only = os.path.join(os.environ["NUMBA_CACHE_DIR"], "bce_cli")
    _cache_dirs.cache_dirs = _native.cache_dirs = lambda: [only]
    _tiers.set_tier("compiled")
    _tiers.set_threads(int(sys.argv[1]))
    rng = np.random.default_rng(3)
    got = []
    for dtype in (np.float32, np.float64):
        for shape, axis in (((4097,), None), ((250, 3), 1), ((1500, 3), "F")):
            x = (rng.standard_normal(shape) * 5).astype(dtype)
            y = (rng.random(shape) < 0.4).astype(dtype)
            if axis == "F":
                x, y, axis = np.asfortranarray(x), np.asfortranarray(y), 1
            for n in (33, 47, 70, 250, shape[0]):
                for opts in (LossOptions(pos_weight=np.array([2.5])),
                             LossOptions(weight_full=rng.random(shape)[:n], smoothing=0.1)):
                    stats, out = class_stats(x[:n], y[:n], axis, opts, write=OUT_WITH_STATS,
                                             moments=True)
                    got.append([stats.tobytes().hex(), out.tobytes().hex()])
    hows = sorted({how for _, how in _launch._entries.values()})
    print(json.dumps({"bits": got, "how": hows, "numba": "numba" in sys.modules,
                      "llvm": "llvmlite" in sys.modules}))
""")


def test_same_bits_compiled_or_loaded_on_any_threads(tmp_path):
    """The statistics and per-element losses of a form compiled in this process, of the
    same form loaded from the cache by another (a Dask worker), and on 1 or 2 threads
    are the same bits.  (The planes task's float64 sums used to be a separate function:
    a cold process ran its own compile of it, a warm one the form's copy, and under
    ``reassoc`` the two added in different orders.)"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))

    def child(threads):
        import json

        out = subprocess.run([sys.executable, "-c", SAME_BITS, str(threads)], env=env,
                             check=True, capture_output=True, text=True)
        return json.loads(out.stdout)

    cold = child(2)
    assert (tmp_path / "bce_cli").is_dir()
    warm = child(2)  # loaded from the cache
    assert warm["bits"] == cold["bits"] and child(1)["bits"] == cold["bits"]
    assert cold["how"] == ["compiled"] and cold["numba"]
    if _native.supported():  # native objects, without numba
        assert warm["how"] == ["loaded"] and not warm["numba"]
        assert warm["llvm"] == (platform.machine() != "x86_64")  # linked by bce_cli._elf


@pytest.mark.parametrize("bits", [32, 64])
def test_per_element_bits_do_not_depend_on_entry_or_offset(bits):
    """Each element's loss is the same bits whichever entry point computes it (prange,
    serial, on threads), wherever it lands in the vectorised loops (any offset and
    length), and whichever task holds it."""
    from bce_cli import _launch

    dtype = np.float32 if bits == 32 else np.float64
    rng = np.random.default_rng(bits)
    x = (rng.standard_normal(40_000) * 5).astype(dtype)
    y = (rng.random(x.size) < 0.3).astype(dtype)
    w = rng.random(x.size).astype(dtype)
    form = Form("planes", 2, bits)  # ws: a weight per element
    view = np.uint32 if bits == 32 else np.uint64

    def losses(lo, hi, parallel=False, pool=None):
        out = np.zeros(hi - lo, dtype=dtype)
        geom, n_tasks = planes_geometry(1, 1, hi - lo)
        empty = np.zeros(0, dtype)
        _launch.run(form, geom, n_tasks, x[lo:hi], y[lo:hi], np.ones(1), np.full(1, 2.0),
                    w[lo:hi], empty, 0.0, 0.0, False, 0, out, True, np.zeros(0),
                    parallel=parallel, pool=pool, workers=_tiers.threads())
        return out.view(view)

    full = losses(0, x.size)
    assert np.array_equal(losses(0, x.size, parallel=True), full)
    assert np.array_equal(losses(0, x.size, pool=_tiers.pool()), full)
    for lo, hi in [(1, 70), (3, 35), (7, 4104), (33, 33 + 32769), (1029, 40_000), (0, 5)]:
        assert np.array_equal(losses(lo, hi), full[lo:hi]), (lo, hi)


@NATIVE
def test_an_object_that_needs_numbas_runtime_is_never_saved():
    """LLVM's loader stops the process at an unresolved symbol: an object is saved (and
    loaded) only when every symbol it leaves undefined is one the loader binds.  Code
    that allocates needs numba's runtime, so it is refused; an entry point is not."""
    import numba

    from bce_cli import kernels

    @numba.njit(no_cpython_wrapper=True, no_cfunc_wrapper=True)
    def allocates(n):
        return np.zeros(n).sum()

    allocates.compile((numba.int64,))
    obj = allocates.overloads[(numba.int64,)].library._get_compiled_object()
    assert "NRT_MemInfo_alloc_aligned" in _elf.undefined_symbols(obj)
    assert not _native.loadable(obj)
    assert _native.save("test_allocates", "allocates", obj) is None
    symbol, address, entry_obj = kernels.compile_native(Form("rows", 2, 64),
                                                        "float64-uint8-float64-float64")
    assert address and entry_obj is not None and _native.loadable(entry_obj)
    assert _elf.undefined_symbols(entry_obj) <= {"memset", "memcpy", "memmove",
                                                     "NRT_MemInfo_call_dtor"}
    for bad in (b"", b"\x7fELF", b"not an object at all", entry_obj[:200]):
        assert not _native.loadable(bad)


def _damaged(obj: bytes, symbol: str) -> dict:
    """Files a cache could hold in place of a good object (a disk error, another program)."""
    import hashlib
    import struct

    def file(body, head=None):
        head = head if head is not None else f"{symbol} {hashlib.sha256(body).hexdigest()}"
        return _native.MAGIC + (head.encode() if isinstance(head, str) else head) + b"\n" + body

    shoff, = struct.unpack_from("<Q", obj, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", obj, 0x3A)
    zero_entsize = bytearray(obj)
    for i in range(shnum):  # the symbol table's entry size set to 0
        at = shoff + i * shentsize
        if struct.unpack_from("<I", obj, at + 4)[0] == 2:
            struct.pack_into("<Q", zero_entsize, at + 56, 0)
    flipped = bytearray(obj)
    flipped[len(obj) // 2] ^= 0x40
    return {
        "not an object": file(b"\x7fELF" + b"\0" * 100),
        "truncated": file(obj[: len(obj) // 2]),
        "symbol table entries of size 0": file(bytes(zero_entsize)),
        "a symbol line that is not text": file(obj, head=b"\xff\xfe " + b"0" * 64),
        "a bit flipped after saving": file(bytes(flipped),
                                           head=f"{symbol} {hashlib.sha256(obj).hexdigest()}"),
        "an older format": b"bce-native-1\n" + symbol.encode() + b"\n" + obj,
    }


@NATIVE
def test_a_damaged_object_in_the_cache_is_compiled_again(monkeypatch, tmp_path):
    """A cached object that is not whole is never handed to LLVM's loader (which would
    stop the process): the form is compiled again, saved whole, and computes."""
    from bce_cli import _forms, _launch, kernels

    form = Form("planes", 1, 64)  # scalar
    sig = "float64-float64-float64-float64"
    symbol, _, obj = kernels.compile_native(form, sig)
    monkeypatch.setattr(_native, "cache_dirs", lambda: [str(tmp_path)])
    path = tmp_path / _native.file_name(f"{form.name}.{sig}")
    x = np.linspace(-5, 5, 1000)
    y = (x > 1).astype(np.float64)

    def softplus(v):
        return np.maximum(v, 0) + np.log1p(np.exp(-np.abs(v)))

    expected = (2.0 * y * softplus(-x) + (1 - y) * softplus(x)).sum()  # pos_weight 2
    geom, n_tasks = _forms.planes_geometry(1, 1, x.size)
    for what, data in _damaged(obj, symbol).items():
        monkeypatch.delitem(_launch._entries, (form, sig), raising=False)
        monkeypatch.setattr(_native, "_loaded", {})
        path.write_bytes(data)
        assert _native.load(str(path)) is None, what
        partials, n_bad = _launch.run(form, geom, n_tasks, x, y, np.ones(1), np.full(1, 2.0),
                                      np.zeros(0), np.zeros(0), 0.0, 0.0, False, 0,
                                      np.zeros(0), False, np.zeros(0))
        assert _launch.how(form, sig) == "compiled" and not n_bad.any(), what
        np.testing.assert_allclose(partials.sum(axis=0)[0, 0], expected, rtol=1e-13)
        assert _native.load(str(path)) is not None, what  # saved again, whole


AVX2_CHILD = r"""
import sys
import numpy as np
from bce_cli import BCEAccumulator, _tiers, bce_with_logits
assert not _tiers.numba_avx512()  # per-class factors: the loop of their own
_tiers.set_tier("compiled")
x, y, pw = (np.load(f) for f in sys.argv[1:4])
np.save(sys.argv[4], bce_with_logits(x, y, pos_weight=pw, reduction="none"))
np.save(sys.argv[5], np.array([bce_with_logits(x, y, pos_weight=pw)]))
state = BCEAccumulator(x.shape[1], pos_weight=pw).update(x, y).state_dict()["state"]
np.savez(sys.argv[6], **state)  # with the row moments
"""


def test_rows_kernel_with_avx2_code(tmp_path, rng):
    """With AVX2's 16 vector registers the rows loops with per-class factors compute the
    losses in a loop of their own (``_tiers.numba_avx512``): the same bounds there, in
    a process that compiles for this CPU without its AVX-512 features."""
    from pathlib import Path

    from .reference import elementwise
    from .test_accuracy import logit_grid

    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root / "benchmarks"))
    try:
        from as_avx2 import avx2_env
    finally:
        sys.path.remove(str(root / "benchmarks"))
    x = logit_grid(np.float32)
    x = x[np.abs(x) < np.finfo(np.float32).max / 4]  # finite, |x| + loss representable
    x = x[: x.size - x.size % 5].reshape(-1, 5)
    y = np.where(rng.random(x.shape) < 0.5, 0.0, 1.0).astype(np.float32)
    y[::7] = rng.random(y[::7].shape)  # some soft targets
    pw = np.array([0.5, 1.0, 2.0, 3.0, 4.0], np.float32)
    files = [tmp_path / f"{name}.npy" for name in ("x", "y", "pw", "none", "mean")]
    files.append(tmp_path / "state.npz")
    for f, a in zip(files[:3], (x, y, pw), strict=True):
        np.save(f, a)
    env = dict(avx2_env(dict(os.environ)), NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    subprocess.run([sys.executable, "-c", AVX2_CHILD, *map(str, files)], env=env, check=True,
                   timeout=600)
    got = np.load(files[3])
    assert got.dtype == np.float32 and got.shape == x.shape
    want = elementwise(x, y, pos_weight=pw)
    scale = np.abs(x.astype(np.longdouble)) + want
    spacing = np.spacing(scale.astype(np.float32)).astype(np.longdouble)
    assert (np.abs(got - want) / spacing).max() <= 4
    assert np.load(files[4])[0] == pytest.approx(float(want.mean()), rel=1e-10)
    from bce_cli import BCEAccumulator

    here = BCEAccumulator(x.shape[1], pos_weight=pw).update(x, y).state_dict()["state"]
    with np.load(files[5]) as there:  # this process's code against AVX2 code's
        for name, value in here.items():
            np.testing.assert_allclose(there[name], value, rtol=1e-10, err_msg=name)


INTERLEAVE_CHILD = """
import numpy as np
from numba import types
from bce_cli import _jit
from bce_cli._fastmath import log1p_exp_neg_f32

core = _jit.inline_copy(log1p_exp_neg_f32)


def loop(x, out):
    for i in range(x.size):
        out[i] = core(abs(np.float64(x[i])))


def broken(x, out):
    for i in range(x.size):
        out[i] = core(abs(np.float64(x[i]))) + undefined_name  # noqa: F821


sig = (types.float32[::1], types.float64[::1])


def body(fn):
    # the compiled function's instructions, without its name or labels
    fn.compile(sig)
    lines = fn.inspect_asm(sig).splitlines()
    return [ln.split()[0] for ln in lines if ln.startswith("\\t") and not ln.startswith("\\t.")]


def divides(code):  # packed (vector) divides: one per vector of the loop's body
    return sum(op.startswith(("divp", "vdivp")) for op in code)


before = body(_jit.scalar()(loop))
interleaved = body(_jit.scalar(interleave=True)(loop))
after = body(_jit.scalar()(loop))
try:
    _jit.scalar(interleave=True)(broken).compile(sig)
except Exception:
    pass
else:
    raise SystemExit("the broken loop compiled")
after_error = body(_jit.scalar()(loop))
print(divides(before), divides(interleaved), before == after == after_error)
"""


def test_interleaving_is_for_its_own_compile_only():
    """``scalar(interleave=True)`` compiles its loop with more vectors per iteration (more
    divides in its code), and a function compiled after it, also after a compile that
    failed, is the code of a process that never interleaved."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("counts x86 divide instructions")
    done = subprocess.run([sys.executable, "-c", INTERLEAVE_CHILD], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, NUMBA_CACHE_DIR=""))
    assert done.returncode == 0, done.stderr
    before, interleaved, same = done.stdout.split()
    assert int(before) >= 1 and int(interleaved) >= _jit.INTERLEAVE
    assert int(interleaved) > int(before)
    assert same == "True"


def test_an_interleaved_loop_never_sums_under_reassoc():
    with pytest.raises(ValueError, match="reassoc"):
        _jit.scalar(_jit.SUM_FLAGS, interleave=True)


def _callable(fn):
    """A Python-callable wrapper of a ``scalar`` function (which has none)."""
    import numba

    @numba.njit
    def call(*args):
        return fn(*args)

    return call


@pytest.mark.parametrize("bits", [32, 64])
def test_interleaving_changes_no_bit(bits):
    """The loss loops interleaved (as shipped) and not: the same bits for every loop, the
    general options too, on lengths that end anywhere in the vector body and its
    remainder; and an element's bits do not depend on where it falls in the loop (the
    general options' loss once took a masked multiply-add in AVX-512 vector bodies
    only, see ``kernels.element_loss``)."""
    from bce_cli import kernels
    from bce_cli._forms import PLANES_LOOPS

    dtype = np.float32 if bits == 32 else np.float64
    rng = np.random.default_rng(bits)
    n = 1024
    x = (rng.standard_normal(n) * 6).astype(dtype)
    x[5::97] = [0.0, -0.0, 800.0, -800.0, 1e-30, 30.0, -30.0, np.inf, -np.inf, np.nan, 2.0]
    y = rng.random(n).astype(dtype)
    y[::3] = 1.0
    y[1::5] = 0.0  # zero coefficients, also under an infinite logit
    ws = (rng.random(n) + 0.5).astype(dtype)
    ws[2::11] = 0.0
    ps = (rng.random(n) * 3).astype(dtype)
    ps[4::7] = 0.0
    for loop in range(len(PLANES_LOOPS)):
        for general in (False, True):
            shipped = kernels._block_losses_for(kernels._CORES[bits], loop, general)
            plain = _jit.scalar()(shipped.py_func)
            run_shipped, run_plain = _callable(shipped), _callable(plain)
            for m in (1, 3, 4, 5, 15, 16, 17, 31, 33, 63, 64, 65, 1000, 1024):
                got, want = np.zeros(m), np.ones(m)
                args = (x[:m], y[:m], ws[:m], ps[:m], 0.7, 1.9, 0.1)
                run_shipped(*args, got)
                run_plain(*args, want)
                _same_bits(got, want, (loop, general, m))
            full = np.zeros(n)
            run_shipped(x, y, ws, ps, 0.7, 1.9, 0.1, full)
            for lo in (1, 2, 3, 5, 13):
                part = np.zeros(n - lo)
                run_shipped(x[lo:], y[lo:], ws[lo:], ps[lo:], 0.7, 1.9, 0.1, part)
                _same_bits(part, full[lo:], (loop, general, lo))


def _same_bits(got, want, where):
    """The same bits, but for the sign of a NaN (which operand order decides)."""
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan), where
    assert got[~nan].tobytes() == want[~nan].tobytes(), where


@pytest.mark.parametrize("bits", [32, 64])
def test_the_rows_line_loops_interleaved_change_no_bit(bits):
    """The rows kernel's line functions as shipped (interleaved) and compiled plain: the
    same losses, per-position sums and count of invalid targets, for each default loop,
    with and without the row moments and smoothing, over many lines of lengths whose
    elements fall in the vector body of one compile and the remainder of the other."""
    from bce_cli import kernels
    from bce_cli._forms import ROWS_GENERAL, ROWS_LOOPS

    dtype = np.float32 if bits == 32 else np.float64
    rng = np.random.default_rng(bits + 1)
    n = 4000
    x = (rng.standard_normal(n) * 4).astype(dtype)
    x[3::401] = np.resize([0.0, -0.0, 800.0, -800.0, 1e-30, 30.0, -30.0, np.inf, -np.inf,
                           np.nan], x[3::401].size)
    y = (rng.random(n) < 0.3).astype(dtype)
    y[::7] = rng.random(y[::7].size)
    y[7::500] = 1.5  # a target outside [0, 1]: counted
    ws = rng.random(n) + 0.5
    ps = rng.random(n) * 3
    ps[4::7] = 0.0
    for loop in range(len(ROWS_LOOPS)):
        if loop == ROWS_GENERAL:
            continue
        task, _ = kernels._rows_task_for(kernels._CORES[bits], loop)
        for name in ("line_losses", "line_stats"):
            shipped = getattr(task, name)
            plain = _jit.scalar()(shipped.py_func)
            run_shipped, run_plain = _callable(shipped), _callable(plain)
            for m in (5, 31, 63, 200, 520):
                for moments, keep, half in ((0, 1.0, 0.0), (1, 0.9, 0.05)):
                    for lo in range(0, n - m, m):
                        outs = []
                        for run in (run_shipped, run_plain):
                            bufs = [np.zeros(m, dtype)] + [np.full(m, 0.25) for _ in range(5)]
                            args = (x[lo:lo + m], y[lo:lo + m], ws[lo:lo + m], ps[lo:lo + m],
                                    keep, half)
                            if name == "line_losses":
                                run(*args, bufs[1])
                                outs.append((bufs, 0))
                            else:
                                outs.append((bufs, run(*args, *bufs, moments)))
                        (got, bad), (want, bad_want) = outs
                        assert bad == bad_want, (loop, name, m, lo)
                        for g, w in zip(got, want, strict=True):
                            _same_bits(g, w, (loop, name, m, moments, lo))


@pytest.mark.parametrize("interleave", [False, True])
def test_a_fused_loss_loop_does_not_depend_on_the_position(interleave):
    """A loop where the float32 core's result meets a caller's sum (``fast_loss`` with
    smoothing, written out and added into per-position sums: the shape where it was
    seen, in the rows kernel's unit loop while it was compiled interleaved whole): each
    element's loss is the same bits wherever it falls in the vector body or the
    remainder.  AVX-512 code once fused the core's last product with the caller's sum
    in vector bodies only (see ``_fastmath.log1p_exp_neg_f32``); the kernel's own
    ``line_stats`` compiles to code where the old core showed no difference."""
    from bce_cli import kernels

    core = kernels._CORES[32]

    def body(xs, ys, keep, half, out, a_loss, a_pos):
        for j in range(xs.size):
            xv = np.float64(xs[j])
            yv = np.float64(ys[j])
            loss = kernels.fast_loss(xv, yv * keep + half, 1.0, 1.0, core(abs(xv)), True)
            out[j] = loss
            a_loss[j] += loss
            a_pos[j] += yv

    run = _callable(_jit.scalar(interleave=interleave)(body))
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(1000) * 3).astype(np.float32)
    y = (rng.random(1000) < 0.3).astype(np.uint8)

    def losses(k):
        out, a_loss, a_pos = (np.zeros(x.size - k) for _ in range(3))
        run(x[k:], y[k:], 0.9, 0.05, out, a_loss, a_pos)
        assert out.tobytes() == a_loss.tobytes()
        return out

    full = losses(0)
    for k in (1, 2, 3, 5, 7, 13):
        assert losses(k).tobytes() == full[k:].tobytes(), k


THREE = 3


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_view_and_span_are_carray_and_a_slice(dtype):
    """``_jit.view`` (the kernels' ``carray``) and ``_jit.span`` (their slices) give the
    arrays ``numba.carray`` and a slice give: shape, strides, elements, and writes that
    reach the caller's memory; an empty span is empty; a span of an array numba owns
    keeps it alive and lets it go as a slice does."""
    import numba

    from bce_cli._jit import span, view
    from bce_cli.kernels import _data

    @numba.njit
    def check(a, lo, n, got):
        p = _data(a)
        cube = view(p, (a.shape[0], THREE, a.shape[2]))  # (a constant, as N_STATS is)
        want = numba.carray(p, (a.shape[0], a.shape[1], a.shape[2]))
        flat = view(p, a.size)
        part = span(flat, lo, n)
        ok = cube.shape == want.shape and cube.strides == want.strides
        ok &= flat.shape == (a.size,) and flat.strides == want.strides[2:]
        ok &= part.shape == (n,) and span(flat, lo, 0).size == 0
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                for k in range(a.shape[2]):
                    ok &= cube[i, j, k] == a[i, j, k]
        for i in range(n):
            got[i] = part[i]
        part[n - 1] = -1
        return ok

    @numba.njit
    def owned(n, lo, count):  # a span of an array numba owns: counted as a slice is
        a = np.empty(n)
        for i in range(n):
            a[i] = i
        part = span(a, lo, count)
        total = 0.0
        for i in range(part.size):
            total += part[i]
        return total + span(view(_data(a), 0), 0, 0).size

    a = np.arange(2 * 3 * 5).astype(dtype).reshape(2, 3, 5)
    got = np.zeros(6, dtype=dtype)
    assert check(a, 7, 6, got)
    assert got.tolist() == list(range(7, 13))
    assert a.flat[12] == -1 and a.flat[11] == 11 and a.flat[13] == 13
    from numba.core.runtime import _nrt_python, rtsys

    owned(4, 0, 1)  # compiled first
    was_on = _nrt_python.memsys_stats_enabled()
    _nrt_python.memsys_enable_stats()
    try:
        before = rtsys.get_allocation_stats()
        assert owned(100, 10, 5) == sum(range(10, 15))
        after = rtsys.get_allocation_stats()
    finally:
        if not was_on:
            _nrt_python.memsys_disable_stats()
    assert after.mi_alloc - before.mi_alloc == after.mi_free - before.mi_free == 1


def test_run_refuses_arrays_the_tasks_would_read_past():
    """The tasks view their blocks unchecked (``_jit.span``): ``_launch.run`` refuses
    per-element factors, targets or a written output of another length than the
    logits, before anything is compiled or run."""
    from bce_cli import _launch

    form = Form("planes", 0, 64)
    (geom, n_tasks), ones = planes_geometry(1, 1, 64), np.ones(1)
    x = np.zeros(64)
    good = dict(wf=np.zeros(0), pf=np.zeros(0), y=np.zeros(64), out=np.zeros(64))
    for name, bad in (("wf", np.ones(63)), ("pf", np.ones(65)), ("y", np.zeros(63)),
                      ("out", np.zeros(0))):
        arrays = {**good, name: bad}
        with pytest.raises(ValueError, match="do not match"):
            _launch.run(form, geom, n_tasks, x, arrays["y"], ones, ones, arrays["wf"],
                        arrays["pf"], 0.0, 0.0, False, 0, arrays["out"], True, np.zeros(0))


def test_the_address_handed_to_the_kernels_is_the_arrays_data(tmp_path):
    """``_launch._ptr`` (a ctypes buffer's address where the array is writable and not
    empty) gives ``a.ctypes.data`` for every kind of array the kernels are handed: views at
    an offset, read-only and memory-mapped arrays, empty placeholders, bool and 0-d."""
    from bce_cli._launch import _ptr

    base = np.arange(64, dtype=np.float64)
    read_only = base.copy()
    read_only.flags.writeable = False
    np.save(tmp_path / "a.npy", base.astype(np.float32))
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    mapped_rw = np.load(tmp_path / "a.npy", mmap_mode="r+")
    arrays = [base, base[5:], base[5:13].astype(np.float32), read_only, read_only[3:],
              mapped, mapped[7:], mapped_rw[9:], np.zeros(0), np.zeros(0, np.float32),
              np.ones(10, dtype=bool), np.frombuffer(bytearray(b"abcdefgh"), dtype=np.uint8),
              np.array(2.5)]
    for a in arrays:
        assert _ptr(a) == a.ctypes.data, (a.dtype, a.shape, a.flags.writeable)
