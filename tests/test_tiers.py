"""Which tier runs a call: small and first runs never wait for numba."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from bce_cli import _native, _tiers
from bce_cli._forms import Form

FORM = Form("planes", 0, 32)


def fresh(monkeypatch):
    """As in a fresh process: neither numba nor the native loader has started."""
    monkeypatch.setitem(sys.modules, "bce_cli._launch", None)
    monkeypatch.setattr(_native, "started", lambda: False)


@pytest.fixture(autouse=True)
def auto(monkeypatch):
    monkeypatch.delenv(_tiers.TIER_ENV, raising=False)
    _tiers.set_tier(None)
    yield
    _tiers.set_tier(None)


def test_small_inputs_take_numpy_even_when_compiling_costs_nothing(monkeypatch):
    fresh(monkeypatch)
    monkeypatch.setattr(_tiers, "is_cached", lambda *args: True)
    for cost in ("NUMBA_START_S", "LOAD_S", "COMPILE_S", "NATIVE_START_S", "LLVM_START_S",
                 "NATIVE_LOAD_S"):
        monkeypatch.setattr(_tiers, cost, 0.0)
    monkeypatch.setattr(_tiers, "rates", lambda: (1e8, 1e15))
    assert _tiers.choose(_tiers.SMALL, FORM) == "numpy"
    assert _tiers.choose(_tiers.SMALL + 1, FORM) == "compiled"


def test_a_large_job_of_small_batches_takes_the_cached_kernels(monkeypatch):
    """A 1-D Parquet column is read in batches of 65536 rows, ``SMALL`` elements each: the
    job's size decides (it used to take the NumPy tier batch after batch, 1.4x the time)."""
    fresh(monkeypatch)
    monkeypatch.setattr(_tiers, "is_cached", lambda *args: True)
    assert _tiers.choose(_tiers.SMALL, FORM, job_elements=_tiers.SMALL) == "numpy"
    assert _tiers.choose(_tiers.SMALL, FORM, job_elements=3 * 10**7) == "compiled"
    assert _tiers.choose(1000, FORM, job_elements=3 * 10**7) == "compiled"


def test_uncached_form_is_compiled_only_for_jobs_that_repay_it(monkeypatch):
    monkeypatch.setattr(_tiers, "is_cached", lambda *args: False)
    fresh(monkeypatch)
    assert _tiers.choose(2 * 10**7, FORM) == "numpy"
    assert _tiers.choose(2 * 10**7, FORM, job_elements=10**8) == "numpy"
    assert _tiers.choose(2 * 10**7, FORM, job_elements=10**11) == "compiled"


def test_cached_form_pays_sooner(monkeypatch):
    fresh(monkeypatch)
    monkeypatch.setattr(_tiers, "is_cached", lambda *args: False)
    sizes = [int(n) for n in np.geomspace(1e6, 1e12, 120)]
    uncached = next(n for n in sizes if _tiers.choose(n, FORM) == "compiled")
    monkeypatch.setattr(_tiers, "is_cached", lambda *args: True)
    cached = next(n for n in sizes if _tiers.choose(n, FORM) == "compiled")
    assert cached < uncached / 2


def test_without_avx512_the_compiled_tier_pays_sooner(monkeypatch):
    """NumPy's float64 exp and log1p have AVX-512 loops only: with AVX2 code
    (``benchmarks/as_avx2.py``) the NumPy tier's rate halves, and the compiled tier
    pays from fewer elements than with AVX-512."""
    probe = ("import sys, numpy as np; from bce_cli import _tiers, _forms, _native; "
             "_tiers.is_cached = lambda *args: True; _native.started = lambda: False; "
             "form = _forms.Form('planes', 0, 32); "
             "sizes = [int(n) for n in np.geomspace(1e5, 1e10, 200)]; "
             "print(*_tiers.rates(), next(n for n in sizes "
             "if _tiers.choose(n, form) == 'compiled'))")
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    env.pop(_tiers.TIER_ENV, None)
    avx2 = subprocess.run([sys.executable, str(root / "benchmarks" / "as_avx2.py"), "-c", probe],
                          capture_output=True, text=True, check=True, env=env, cwd=root)
    numpy_rate, compiled_rate, narrow_from = avx2.stdout.split()
    assert (float(numpy_rate), float(compiled_rate)) == (_tiers.NUMPY_RATE_NARROW,
                                                         _tiers.COMPILED_RATE_NARROW)
    if _tiers.rates() == (_tiers.NUMPY_RATE, _tiers.COMPILED_RATE):  # this host has AVX-512
        native = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                check=True, env=env, cwd=root)
        assert int(narrow_from) < int(native.stdout.split()[-1])


def test_form_compiled_in_this_process_is_used():
    from bce_cli import _launch, bce_with_logits

    x = np.linspace(-3, 3, 100_000)
    _tiers.set_tier("compiled")
    bce_with_logits(x, (x > 0).astype(np.float64))
    _tiers.set_tier(None)
    form = Form("planes", 0, 64)
    assert _launch.is_ready(form)
    assert _tiers.choose(100_000, form) == "compiled"


def test_environment_forces_a_tier(monkeypatch):
    monkeypatch.setenv(_tiers.TIER_ENV, "compiled")
    assert _tiers.choose(10, FORM) == "compiled"
    monkeypatch.setenv(_tiers.TIER_ENV, "numpy")
    assert _tiers.choose(10**12, FORM) == "numpy"
    monkeypatch.setenv(_tiers.TIER_ENV, "fastest")
    with pytest.raises(ValueError, match="BCE_TIER must be one of"):
        _tiers.choose(10, FORM)


def test_first_run_of_bce_eval_does_not_start_numba(tmp_path):
    """A fresh process on 2e6 elements with an empty cache: no compile, no numba import,
    no pyarrow for .npy inputs, no rich for a JSON report with nothing to warn about."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100_000, 20)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", x > 0.5)
    code = ("import sys; from bce_cli.cli import main; sys.argv = ['bce', 'eval', "
            f"{str(tmp_path / 'x.npy')!r}, {str(tmp_path / 'y.npy')!r}, '--format', 'json']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('numba' in sys.modules, 'pyarrow' in sys.modules, 'rich' in sys.modules, "
            "file=sys.stderr)")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    env.pop(_tiers.TIER_ENV, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    # .npy: no pyarrow; JSON and nothing to warn about: no rich
    assert out.stderr.split()[-3:] == ["False", "False", "False"], out.stderr
    assert '"loss"' in out.stdout
    assert not (tmp_path / "cache").exists()


def test_threads_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        _tiers.set_threads(0)


def test_choice_does_not_depend_on_the_thread_count(monkeypatch):
    """The tier decides the last bits of a result: --threads must not change it."""
    fresh(monkeypatch)
    monkeypatch.setattr(_tiers, "is_cached", lambda *args: True)
    sizes = [int(n) for n in np.geomspace(1e5, 1e11, 60)]
    try:
        choices = []
        for threads in (1, 2, 7):
            _tiers.set_threads(threads)
            choices.append([_tiers.choose(n, FORM) for n in sizes])
    finally:
        _tiers.set_threads(None)
    assert choices[0] == choices[1] == choices[2]
    assert "numpy" in choices[0] and "compiled" in choices[0]


def test_a_job_keeps_the_tier_of_its_first_batch(monkeypatch):
    fresh(monkeypatch)
    monkeypatch.setattr(_tiers, "is_cached", lambda *args: True)
    job = _tiers.JobTier(10**12)
    assert job.pick(2 * 10**7, FORM) == "compiled"
    monkeypatch.setenv(_tiers.TIER_ENV, "numpy")  # later batches, or another process
    assert job.pick(10, FORM) == "compiled"
    assert _tiers.JobTier(10**12).pick(2 * 10**7, FORM) == "numpy"


METRICS = Form("metrics", 0, 32)


def test_the_metrics_take_their_kernel_as_the_loss_does(monkeypatch):
    """``--metrics``: with its native objects cached the kernel costs a millisecond, so it
    is taken from SMALL elements on; uncached it must repay numba's start and a compile
    (about 4e7 elements at the metrics' rates); loaded here already, always."""
    from bce_cli import metrics

    fresh(monkeypatch)
    monkeypatch.setattr(_native, "supported", lambda: True)
    monkeypatch.setattr(_native, "links_itself", lambda: True)
    cached = {"float32-uint8-float64-float64"}
    monkeypatch.setattr(_native, "is_cached", lambda name, sigs: any(s in cached for s in sigs))
    sig = "float32-uint8-float64-float64"
    assert metrics.choose_tier(_tiers.SMALL, METRICS, sig=sig) == "numpy"
    assert metrics.choose_tier(_tiers.SMALL + 1, METRICS, sig=sig) == "compiled"
    assert metrics.choose_tier(1000, METRICS, job_elements=10**6, sig=sig) == "compiled"
    other = "float32-float64-float64-float64"  # not a common signature: not cached
    assert metrics.choose_tier(10**7, METRICS, sig=other) == "numpy"
    assert metrics.choose_tier(10**8, METRICS, sig=other) == "compiled"
    monkeypatch.setattr(_native, "is_cached", lambda name, sigs: False)
    assert metrics.choose_tier(10**7, METRICS) == "numpy"


def test_a_metrics_form_loaded_here_is_always_taken(monkeypatch):
    from bce_cli import _launch, metrics

    monkeypatch.setattr(_launch, "is_ready", lambda form: form == METRICS)
    assert metrics.choose_tier(10, METRICS) == "compiled"
    assert metrics.choose_tier(10, Form("metrics", 0, 64)) == "numpy"


@pytest.mark.parametrize("shape", [(4000,), (800, 5)])  # the planes and the rows kernel
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
def test_kernels_hand_infinite_logits_to_the_numpy_tier(monkeypatch, rng, shape, reduction,
                                                        weighted):
    """The kernels' shorter formula (``kernels.fast_loss``) gives NaN where a zero
    coefficient meets an infinite logit; such a call is redone by the NumPy tier's
    careful path, which gives the limits, and a call without one is not."""
    from bce_cli import _vectorised, bce_with_logits

    from . import reference as ref

    _tiers.set_tier("compiled")
    calls = []
    real = _vectorised.class_stats
    monkeypatch.setattr(_vectorised, "class_stats",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    x = (rng.standard_normal(shape) * 5).astype(np.float32)
    y = (rng.random(shape) < 0.5).astype(np.float32)
    pw = np.linspace(0.5, 2.0, shape[-1]).astype(np.float32) if weighted else None

    def check():
        got = bce_with_logits(x, y, pos_weight=pw, reduction=reduction)
        want = ref.bce(x, y, pos_weight=pw, reduction=reduction)
        if reduction == "none":
            np.testing.assert_allclose(got, np.asarray(want).astype(np.float32), rtol=1e-6)
        else:
            assert got == pytest.approx(float(want), rel=1e-9)

    check()
    assert calls == []
    flat_x, flat_y = x.reshape(-1), y.reshape(-1)
    flat_x[:4] = [np.inf, -np.inf, np.inf, -np.inf]
    flat_y[:4] = [1.0, 0.0, 0.0, 1.0]  # limits 0, 0, inf, inf*p: only the first two are NaN
    flat_x[-1], flat_y[-1] = np.inf, 0.0
    if reduction == "none":
        check()
    else:
        assert bce_with_logits(x, y, pos_weight=pw, reduction=reduction) == np.inf
    assert calls == [1]


@pytest.mark.parametrize("shape", [(4000,), (800, 5)])  # the planes and the rows kernel
@pytest.mark.parametrize("where", ["logits", "targets"])
@pytest.mark.parametrize("how", ["element", "class"])
def test_a_nan_under_a_weight_of_0_is_still_an_error(rng, shape, where, how):
    """A weight of 0 (padding masked out, say) does not hide a NaN input: the compiled
    loops' loss is NaN there too, and the call is refused as on the NumPy tier."""
    from bce_cli import bce_with_logits
    from bce_cli.errors import InvalidValueError

    _tiers.set_tier("compiled")
    x = (rng.standard_normal(shape) * 5).astype(np.float32)
    y = (rng.random(shape) < 0.5).astype(np.float32)
    if how == "element":
        w = np.ones(shape, np.float32)
        w.reshape(-1)[7] = 0.0
        index = 7
    else:  # the last class's weight, or the only class's
        w = np.ones(shape[-1], np.float32)
        w[-1] = 0.0
        index = shape[-1] - 1
    (x if where == "logits" else y).reshape(-1)[index] = np.nan
    for reduction in ("mean", "none"):
        with pytest.raises(InvalidValueError):
            bce_with_logits(x, y, weight=w, reduction=reduction)


def test_kernels_leave_the_decoding_thread_a_core(monkeypatch):
    """While a job's batches are decoded on a thread of their own, the compiled kernels
    take one core fewer, unless the thread count was asked for."""
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    monkeypatch.setattr(_tiers, "cores", lambda: 4)
    _tiers.set_threads(None)
    assert _tiers.kernel_threads() == 4
    with _tiers.decoding_on_a_thread(True):
        assert _tiers.kernel_threads() == 3
        with _tiers.decoding_on_a_thread(False):  # a .npy job's views: nothing decoded
            assert _tiers.kernel_threads() == 4
        assert _tiers.kernel_threads() == 3
        monkeypatch.setenv("NUMBA_NUM_THREADS", "4")
        assert _tiers.kernel_threads() == 4
        monkeypatch.delenv("NUMBA_NUM_THREADS")
        try:
            _tiers.set_threads(2)  # --threads 2
            assert _tiers.kernel_threads() == 2
        finally:
            _tiers.set_threads(None)
        monkeypatch.setenv("NUMBA_NUM_THREADS", "0")  # not a count: ignored, as threads() does
        assert _tiers.kernel_threads() == 3
        monkeypatch.delenv("NUMBA_NUM_THREADS")
        other = []  # another thread's kernels (a library caller's): every core
        worker = threading.Thread(target=lambda: other.append(_tiers.kernel_threads()))
        worker.start()
        worker.join()
        assert other == [4]
        monkeypatch.setattr(_tiers, "cores", lambda: 1)
        assert _tiers.kernel_threads() == 1
    assert _tiers.kernel_threads() == 1


def _pairs(tmp_path) -> None:
    """x/y pairs of the same (10, 2) zeros as .npy and as Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = np.zeros((10, 2), np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", x)
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1]}), tmp_path / "x.parquet")
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1]}), tmp_path / "y.parquet")


def test_which_inputs_are_decoded(tmp_path):
    """Tables are decoded batch by batch; a memory-mapped .npy pair gives views."""
    from bce_cli.data import InputSpec, open_inputs

    _pairs(tmp_path)
    for suffix, decodes in ((".npy", False), (".parquet", True)):
        spec = InputSpec(preds=str(tmp_path / f"x{suffix}"), labels=str(tmp_path / f"y{suffix}"))
        with open_inputs(spec) as inp:
            assert inp.decodes is decodes


def test_eval_leaves_a_core_to_decode_tables(monkeypatch, tmp_path, cli):
    """``bce eval`` runs the kernels on one core fewer while it decodes a table's batches
    ahead, and on every core over a .npy pair's views."""
    _pairs(tmp_path)
    seen = []
    real = _tiers.kernel_threads
    monkeypatch.setattr(_tiers, "kernel_threads", lambda: seen.append(_tiers.decoding()) or real())
    _tiers.set_tier("compiled")
    for suffix, decodes in ((".npy", False), (".parquet", True)):
        seen.clear()
        res = cli("eval", tmp_path / f"x{suffix}", tmp_path / f"y{suffix}", "--format", "json")
        assert res.exit_code == 0, res.output
        assert seen and set(seen) == {decodes}
    assert not _tiers.decoding()


def test_numba_compiles_for_avx512_as_its_features_say(monkeypatch):
    """One answer for the kernels' loops (``kernels._rows_task_for``) and the cost model:
    ``NUMBA_CPU_FEATURES`` decides where it turns avx512f on or off, else the host."""
    host = bool(_tiers._numpy_cpu().__cpu_features__.get("AVX512F"))
    for features, want in (("", host), ("+avx2,-avx512f", False), ("+avx2,+avx512f", True),
                           ("+avx2", host), ("+avx2, -avx512f", False)):
        monkeypatch.setenv("NUMBA_CPU_FEATURES", features)
        assert _tiers.numba_avx512() is want, features
        assert (_tiers.rates()[1] == _tiers.COMPILED_RATE) is want, features


def test_numba_features_are_read_as_numba_gives_them(monkeypatch):
    """One reading of ``NUMBA_CPU_FEATURES`` for the cost model, the kernels' loops and the
    shipped kernels' levels (``bce_cli._prebuilt``)."""
    from bce_cli._cache_dirs import numba_features

    for text, want in (("", {}), ("+avx2,-avx512f", {"avx2": True, "avx512f": False}),
                       (" +fma , -sse4.2,", {"fma": True, "sse4.2": False}), ("avx2,+,-", {})):
        monkeypatch.setenv("NUMBA_CPU_FEATURES", text)
        assert numba_features() == want, text
    monkeypatch.delenv("NUMBA_CPU_FEATURES")
    assert numba_features() == {}
