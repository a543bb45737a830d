"""Compiled kernel forms: caching (also read-only), the serial entry point on threads."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bce_cli import _cache_dirs, _jit, _tiers
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
    if sys.argv[1] == "deny-writes":  # what a read-only file system says, even to root
        real = os.access
        os.access = lambda p, m, *a, **k: False if m & os.W_OK else real(p, m, *a, **k)
    from bce_cli import _jit, _tiers, kernels
    only = os.path.join(os.environ["NUMBA_CACHE_DIR"], "bce_cli")
    _jit.cache_dirs = lambda: [only]  # no fallback to the package's or the user's cache
    _tiers.set_tier("compiled")
    from bce_cli import bce_with_logits
    x = np.linspace(-4, 4, 200_000, dtype=np.float32)
    loss = bce_with_logits(x, (x > 0.5).astype(np.float32))
    fn = kernels.entry(kernels.Form("planes", 0, 32))
    print(json.dumps({"loss": loss, "hits": sum(fn.stats.cache_hits.values()),
                      "misses": sum(fn.stats.cache_misses.values())}))
""")


def _child(mode, cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    out = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, check=True,
                         capture_output=True, text=True)
    import json

    return json.loads(out.stdout)


def test_cache_is_written_then_used_read_only(tmp_path):
    """A cache restored read-only (CI cache, Docker layer) is used, not recompiled."""
    first = _child("write", tmp_path)
    assert first["misses"] == 1 and first["hits"] == 0
    name = _cache_dirs.index_name("planes_unit_f32")
    index = tmp_path / "bce_cli" / name
    assert index.exists()
    before = sorted((p.name, p.stat().st_mtime_ns) for p in index.parent.iterdir())
    second = _child("deny-writes", tmp_path)
    assert second["hits"] == 1 and second["misses"] == 0
    assert second["loss"] == first["loss"]
    assert sorted((p.name, p.stat().st_mtime_ns) for p in index.parent.iterdir()) == before


def test_a_read_only_cache_without_the_form_still_computes(tmp_path):
    (tmp_path / "bce_cli").mkdir()
    result = _child("deny-writes", tmp_path)
    assert result["misses"] == 1 and result["hits"] == 0 and result["loss"] > 0
    assert list((tmp_path / "bce_cli").iterdir()) == []


def test_cache_stamp_covers_every_kernel_source(monkeypatch, tmp_path):
    """An edit to _fastmath.py (inlined into the kernels) invalidates cached forms."""
    for name in _cache_dirs.KERNEL_SOURCES:
        (tmp_path / name).write_text(name)
    monkeypatch.setattr(_cache_dirs, "PACKAGE_DIR", tmp_path)
    _cache_dirs.source_stamp.cache_clear()
    stamp = _cache_dirs.source_stamp()
    (tmp_path / "_fastmath.py").write_text("edited")
    _cache_dirs.source_stamp.cache_clear()
    assert _cache_dirs.source_stamp() != stamp
    _cache_dirs.source_stamp.cache_clear()


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
    """numba updates its index by read-modify-write: each save holds a file lock."""
    import fcntl

    from bce_cli import kernels

    calls = []
    real = fcntl.flock
    monkeypatch.setattr(fcntl, "flock", lambda fd, op: calls.append(op) or real(fd, op))
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    form = Form("planes", 4, 64)  # wsps
    monkeypatch.delitem(kernels._ENTRIES, (form, False), raising=False)
    _run_form(form, parallel=False)
    assert calls[:2] == [fcntl.LOCK_EX, fcntl.LOCK_UN]
    assert (tmp_path / "bce_cli" / _cache_dirs.stamp_name(form.name)).read_text() == \
        _cache_dirs.stamp_text(None)
    monkeypatch.delitem(kernels._ENTRIES, (form, False))


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


def test_warmup_fills_the_cache_for_the_forms_it_names(tmp_path, monkeypatch):
    """``bce warmup`` compiles each form into the cache; the tier model then sees it."""
    from typer.testing import CliRunner

    from bce_cli import _forms, kernels
    from bce_cli.cli import app

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    forms = [Form("planes", 3, 64), Form("rows", 1, 64)]  # ps, weighted
    monkeypatch.setattr(_forms, "all_forms", lambda: forms)
    for form in forms:  # built afresh, so that they pick the new cache directory
        monkeypatch.delitem(kernels._ENTRIES, (form, False), raising=False)
    indexes = [tmp_path / "bce_cli" / _cache_dirs.index_name(f.name) for f in forms]
    assert not any(i.exists() for i in indexes)
    result = CliRunner().invoke(app, ["warmup"])
    assert result.exit_code == 0, result.output
    assert "2 kernel forms ready" in result.output and str(tmp_path) in result.output
    assert all(i.exists() for i in indexes)
    assert all(_cache_dirs.is_cached(f.name) for f in forms)
    for form in forms:
        monkeypatch.delitem(kernels._ENTRIES, (form, False))


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
    from bce_cli import _cache_dirs, _jit, _launch, _tiers
    from bce_cli._dispatch import LossOptions, class_stats
    from bce_cli.stats import OUT_WITH_STATS
    only = os.path.join(os.environ["NUMBA_CACHE_DIR"], "bce_cli")
    _jit.cache_dirs = _cache_dirs.cache_dirs = lambda: [only]
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
    print(json.dumps(got))
""")


def test_same_bits_compiled_or_loaded_on_any_threads(tmp_path):
    """The statistics and per-element losses of a form compiled in this process, of the
    same form loaded from the cache by another (a Dask worker), and on 1 or 2 threads
    are the same bits.  (The planes task's float64 sums used to be a separate function:
    a cold process ran its own compile of it, a warm one the form's copy, and under
    ``reassoc`` the two added in different orders.)"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))

    def child(threads):
        out = subprocess.run([sys.executable, "-c", SAME_BITS, str(threads)], env=env,
                             check=True, capture_output=True, text=True)
        return out.stdout

    cold = child(2)
    assert (tmp_path / "bce_cli").is_dir()
    assert child(2) == cold  # loaded from the cache
    assert child(1) == cold


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
