"""The CUDA device against the CPU tiers: every layout and option, the statistics the
accumulator keeps (row moments included), errors, device arrays, streaming, the CLI.

Tests marked ``cudasim`` run the kernels: on numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``, set before numba is imported) or on a GPU.  A plain
``pytest`` (CI, no GPU) deselects them in its own process (``tests/conftest.py``)
and runs them in a subprocess with the simulator instead:
:func:`test_kernels_on_the_simulator`.  Tests marked ``gpu`` need the real thing
and skip without one.  Arrays stay small: the simulator runs a Python thread per
CUDA thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bce_cli import BCEAccumulator, BCEInputError, _device, _tiers, bce_with_logits
from bce_cli._dispatch import LossOptions, class_stats
from bce_cli.errors import InvalidValueError
from bce_cli.stats import N_ACC_STATS, N_STATS, STAT_NAMES

ROOT = Path(__file__).resolve().parent.parent
SIM = _device.simulated()
REAL_GPU = not SIM and _device.problem() is None
RTOL = 1e-12

if SIM:
    # numba's simulator polls its threads while holding the GIL: a short switch
    # interval lets them run (6x faster here); it changes nothing they compute.
    sys.setswitchinterval(1e-4)

gpu = pytest.mark.skipif(not REAL_GPU, reason="needs an NVIDIA GPU")


def _cpu(tier="numpy"):
    class Tier:
        def __enter__(self):
            _tiers.set_tier(tier)

        def __exit__(self, *exc):
            _tiers.set_tier(None)

    return Tier()


def _close(gpu_value, cpu_value, rtol=RTOL):
    """Equal to ``rtol`` relative, NaN where the other is NaN, inf where it is inf."""
    a = np.asarray(gpu_value, dtype=np.float64)
    b = np.asarray(cpu_value, dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_array_equal(np.isinf(a), np.isinf(b))
    ok = np.isfinite(b)
    np.testing.assert_allclose(a[ok], b[ok], rtol=rtol, atol=1e-300)


def _data(rng, shape, dtype=np.float32, soft=False):
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    x.reshape(-1)[:3] = [40.0, -40.0, 0.0]  # saturated logits and zero
    y = rng.random(shape).astype(dtype) if soft else (rng.random(shape) < 0.3).astype(dtype)
    return x, y


# (name, batch shape): 1-D (one class), (n, 1), (n, C), (n, C) column-major (a wide
# table), (n, C, B) (rows along A: the per-(row, class) fold).
LAYOUTS = {
    "1d": (1500,),
    "n1": (700, 1),
    "rows": (300, 5),
    "fortran": (300, 4),
    "nd": (12, 3, 40),
}
OPTIONS = {
    "plain": {},
    "class_weight": {"weight": "class"},
    "pos_weight": {"pos_weight": True},
    "element_weight": {"weight": "element"},
    "smoothing": {"label_smoothing": 0.1},
    "ignore": {"ignore_value": -1.0},
    "omit": {"nan_policy": "omit"},
    "propagate": {"nan_policy": "propagate"},
}
CASES = [("1d", "plain"), ("1d", "element_weight"), ("n1", "smoothing"),
         ("rows", "plain"), ("rows", "class_weight"), ("rows", "ignore"),
         ("rows", "omit"), ("fortran", "pos_weight"), ("fortran", "element_weight"),
         ("nd", "plain"), ("nd", "propagate"), ("nd", "ignore")]


def _accumulate(layout, option, rng, device, dtype=np.float32, **kw):
    shape = LAYOUTS[layout]
    x, y = _data(rng, shape, dtype, soft=option == "smoothing")
    if layout == "fortran":
        x, y = np.asfortranarray(x), np.asfortranarray(y)
    c = 1 if len(shape) == 1 else shape[1]
    opts = dict(OPTIONS[option])
    weight = None
    if opts.pop("weight", None) == "class":
        opts["weight"] = np.linspace(0.5, 2.0, c)
    elif option == "element_weight":
        weight = rng.random(shape).astype(dtype)
        if len(shape) == 1:
            weight = weight[:, None]  # a 1-D batch is (n, 1) to the accumulator
        if layout == "fortran":
            weight = np.asfortranarray(weight)
    if opts.pop("pos_weight", None):
        opts["pos_weight"] = np.linspace(1.0, 3.0, c)
    if option == "ignore":
        y.reshape(-1)[::7] = -1.0
    if option in ("omit", "propagate"):
        x.reshape(-1)[5::11] = np.nan
        y.reshape(-1)[8::13] = np.nan
    acc = BCEAccumulator(c, device=device, **opts, **kw)
    losses = acc.update(x, y, weight, return_losses=True)
    return acc, losses


@pytest.mark.cudasim
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("layout", "option"), CASES)
def test_accumulator_state_matches_the_cpu(rng, layout, option, dtype):
    """Every row of the state (sums, counts, row moments, w*y) and the per-element losses,
    against the exact NumPy tier; then standard errors and intervals."""
    gpu_acc, gpu_losses = _accumulate(layout, option, np.random.default_rng(1), "cuda", dtype)
    with _cpu():
        cpu_acc, cpu_losses = _accumulate(layout, option, np.random.default_rng(1), "cpu",
                                          dtype)
    for i, name in enumerate(STAT_NAMES):
        try:
            _close(gpu_acc.state[i], cpu_acc.state[i])
        except AssertionError as err:
            raise AssertionError(f"state row {name}") from err
    assert gpu_losses.dtype == cpu_losses.dtype and gpu_losses.shape == cpu_losses.shape
    _close(gpu_losses, cpu_losses, RTOL if dtype == np.float64 else 2 ** -23)
    g = gpu_acc.compute(confidence=0.9)
    c = cpu_acc.compute(confidence=0.9)
    for field in ("loss", "class_loss", "loss_se", "class_loss_se", "loss_ci", "class_loss_ci",
                  "prior_loss", "accuracy"):
        _close(getattr(g, field), getattr(c, field), 1e-10 if "se" in field else RTOL)


@pytest.mark.cudasim
@pytest.mark.parametrize("layout", ["1d", "rows", "nd"])
def test_float64_matches_the_compiled_tier(layout):
    """The compiled CPU kernels' float64 path uses the same polynomial: 1e-12 again."""
    gpu_acc, _ = _accumulate(layout, "pos_weight", np.random.default_rng(2), "cuda",
                             np.float64)
    with _cpu("compiled"):
        cpu_acc, _ = _accumulate(layout, "pos_weight", np.random.default_rng(2), "cpu",
                                 np.float64)
    _close(gpu_acc.state[:N_STATS], cpu_acc.state[:N_STATS])


# Shapes that take each way a tile maps to memory (``bce_cli._cuda.MODES``) with the
# simulator's blocks of 8 threads as with a GPU's 128: (N, 2) and (N, 3) rows taken flat
# (INTERLEAVED: several rows per step, so the per-class tree adds), (N, THREADS) (one row
# per step), (N, C) with more classes than threads (SPREAD with B = 1), short runs of
# several rows (SPREAD), long runs (RUNS).
_T = 8 if SIM else 128  # bce_cli._cuda.THREADS (checked in the test)
TILE_SHAPES = {"pairs": (301, 2), "triples": (101, 3), "full": (9, _T), "wide": (12, _T + 2),
               "short": (10, 3, 5), "long": (2, 2, _T * 64 + 37)}
TILE_MODES = {"pairs": "interleaved", "triples": "interleaved", "full": "interleaved",
              "wide": "spread", "short": "spread", "long": "runs"}
TILE_OPTIONS = {
    "plain": {},
    "class_weight": {"weight": True},
    "ignore": {"ignore": -1.0},
    "omit": {"nan_policy": "omit"},
    "propagate": {"nan_policy": "propagate"},
    "element_weight": {"weight_full": True},
    "pos_element_weight": {"pos_weight_full": True, "weight": True},
    "smoothing": {"smoothing": 0.1, "pos_weight": True},
}


@pytest.mark.cudasim
@pytest.mark.parametrize("moments", [False, True])
@pytest.mark.parametrize("option", list(TILE_OPTIONS))
@pytest.mark.parametrize("shape", list(TILE_SHAPES))
def test_every_tile_mode_and_form_matches_the_cpu(shape, option, moments):
    """``class_stats`` per class (axis 1), every statistic and the losses, GPU against
    the exact NumPy tier, for each mapping of tiles to memory and each form's options."""
    from bce_cli import _cuda
    from bce_cli._dispatch import _layout
    from bce_cli._forms import MOMENTS_NONE
    from bce_cli.stats import OUT_WITH_STATS

    dims = TILE_SHAPES[shape]
    assert _cuda.THREADS == _T
    assert _cuda.MODES[_cuda.geometry(*_layout(dims, 1)[0], MOMENTS_NONE)[2]] == \
        TILE_MODES[shape]
    rng = np.random.default_rng(7)
    x, y = _data(rng, dims, soft=option == "smoothing")
    kw = dict(TILE_OPTIONS[option])
    if kw.pop("weight_full", None):
        kw["weight_full"] = rng.random(dims)
    if kw.pop("pos_weight_full", None):
        kw["pos_weight_full"] = 1.0 + rng.random(dims)
    if kw.pop("pos_weight", None):
        kw["pos_weight"] = np.linspace(1.0, 3.0, dims[1])
    if kw.pop("weight", None):
        kw["weight"] = np.linspace(0.5, 2.0, dims[1])
    if option == "ignore":
        y.reshape(-1)[::7] = -1.0
    if option in ("omit", "propagate"):
        x.reshape(-1)[5::11] = np.nan
        y.reshape(-1)[8::13] = np.nan
    opts = LossOptions(**kw)
    got, got_out = class_stats(x, y, 1, opts, write=OUT_WITH_STATS, moments=moments,
                               device="cuda")
    with _cpu():
        want, want_out = class_stats(x, y, 1, opts, write=OUT_WITH_STATS, moments=moments)
    for i, name in enumerate(STAT_NAMES[:N_STATS]):
        try:
            _close(got[i], want[i])
        except AssertionError as err:
            raise AssertionError(f"row {name}") from err
    _close(got_out, want_out, 2 ** -23)
    # w*y and w*(1 - y) over the elements that count (the accumulator's WPOS, WNEG)
    w = np.ones(dims) * np.reshape(opts.weight if opts.weight is not None else 1.0,
                                   (1, -1) + (1,) * (len(dims) - 2))
    w = w * (opts.weight_full if opts.weight_full is not None else 1.0)
    yf = y.astype(np.float64)
    counts = ~((yf == opts.ignore) | (opts.nan_policy == "omit") & (np.isnan(x) | np.isnan(yf)))
    axes = (0, *range(2, len(dims)))
    _close(got[N_STATS], np.where(counts, w * yf, 0.0).sum(axis=axes))
    _close(got[N_STATS + 1], np.where(counts, w * (1.0 - yf), 0.0).sum(axis=axes))


@pytest.mark.cudasim
@pytest.mark.parametrize("shape", [(301, 3), (700,), (5, 2, 40)])
def test_kept_buffers_carry_nothing_from_one_call_to_the_next(shape, monkeypatch):
    """The partials and class factors kept between calls (``_cuda._Kept``): a call after
    one with other data, weights and options of the same shape gives the CPU's result,
    and calls from several threads at once give what they give one at a time."""
    import concurrent.futures

    from bce_cli import _cuda

    rng = np.random.default_rng(11)
    c = 1 if len(shape) == 1 else shape[1]
    first = BCEAccumulator(c, device="cuda", ignore_value=-1.0, weight=np.linspace(1, 2, c))
    x, y = _data(rng, shape, soft=True)
    first.update(x, y)
    assert _cuda._Kept.partials  # kept
    x, y = _data(rng, shape)
    got = BCEAccumulator(c, device="cuda").update(x, y)
    with _cpu():
        want = BCEAccumulator(c).update(x, y)
    _close(got.state[:N_ACC_STATS], want.state)
    batches = [_data(np.random.default_rng(k), shape) for k in range(4)]
    alone = [bce_with_logits(bx, by, device="cuda") for bx, by in batches]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda b: bce_with_logits(*b, device="cuda"), batches))
    assert together == alone
    _cuda._Kept.partials.clear()
    monkeypatch.setattr(_cuda, "KEEP_BYTES", 0)  # too large to keep: each call its own
    assert bce_with_logits(*batches[0], device="cuda") == alone[0]
    assert not _cuda._Kept.partials


@pytest.mark.cudasim
@pytest.mark.skipif(not SIM, reason="a fault of the simulator")
def test_a_blocks_threads_share_one_shared_array_on_the_simulator(monkeypatch):
    """numba's simulator makes a block's shared array when a thread finds none, without a
    lock; threads that all find none each get their own (the CI failure: sums of
    uninitialised memory).  Here every simulated thread that allocates waits for all
    the block's threads to allocate too (so without the lock all of them do, each its
    own NaN-filled array), and the partials kernel must still add all its tiles."""
    import threading

    from bce_cli import _cuda

    empty = np.empty
    together = threading.Barrier(_cuda.THREADS, timeout=0.5)

    def racing_empty(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            try:
                together.wait()  # with the lock, the first waits alone until the timeout
            except threading.BrokenBarrierError:
                pass
        made = empty(*args, **kwargs)
        if made.dtype.kind == "f":  # memory reused from earlier runs cannot add up right
            made.fill(np.nan)
        return made

    partials = np.arange(1.0, 41.0).reshape(1, 1, 40)
    total = np.zeros((1, 1))
    monkeypatch.setattr(np, "empty", racing_empty)
    _cuda._add_partials[1, _cuda.THREADS](partials, total)
    monkeypatch.undo()
    assert total[0, 0] == 820.0


@pytest.mark.cudasim
def test_results_are_bit_identical_run_to_run(rng):
    x, y = _data(rng, (400, 6), soft=True)
    runs = [BCEAccumulator(6, device="cuda", label_smoothing=0.05).update(x, y).state
            for _ in range(2)]
    assert runs[0].tobytes() == runs[1].tobytes()
    a = bce_with_logits(x, y, device="cuda")
    b = bce_with_logits(x, y, device="cuda")
    assert a == b


@pytest.mark.cudasim
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_functional_api(rng, reduction):
    x, y = _data(rng, (8, 3, 30), np.float64)
    pw = np.array([1.0, 2.0, 4.0]).reshape(3, 1)
    w = rng.random((30,))
    got = bce_with_logits(x, y, weight=w, pos_weight=pw, reduction=reduction, device="cuda")
    with _cpu():
        want = bce_with_logits(x, y, weight=w, pos_weight=pw, reduction=reduction)
    _close(got, want)


@pytest.mark.cudasim
def test_loss_module_and_float16():
    from bce_cli import BCEWithLogitsLoss

    rng = np.random.default_rng(3)
    x, y = _data(rng, (500,), np.float16)
    got = BCEWithLogitsLoss(reduction="sum", device="cuda")(x, y)
    with _cpu():
        want = BCEWithLogitsLoss(reduction="sum")(x, y)
    _close(got, want)


@pytest.mark.cudasim
@pytest.mark.parametrize(("bad", "policy", "what"), [
    (2.0, "error", "outside [0, 1]"), (np.nan, "error", "target is NaN"),
    (-0.5, "omit", "outside [0, 1]")])
def test_invalid_elements_name_the_same_element(rng, bad, policy, what):
    x, y = _data(rng, (60, 4, 5))
    y[17, 2, 3] = bad
    y[40, 1, 0] = bad
    errors = []
    for device in ("cuda", "cpu"):
        acc = BCEAccumulator(4, device=device, nan_policy=policy)
        with pytest.raises(InvalidValueError) as info:
            acc.update(x, y)
        errors.append(info.value)
        assert acc.state.sum() == 0.0  # unchanged
    g, c = errors
    assert (g.index, g.class_index, g.role, str(g)) == (c.index, c.class_index, c.role, str(c))
    assert g.index == (17, 2, 3) and what in str(g)


@pytest.mark.cudasim
def test_a_column_major_table_names_the_element_as_given(rng):
    """The GPU reads an (n, C) table in F order as its (C, n) view; the error still names
    the element by the caller's (row, class), as the CPU does."""
    x, y = _data(rng, (50, 4))
    x, y = np.asfortranarray(x), np.asfortranarray(y)
    y[7, 2] = 2.0
    errors = []
    for device in ("cuda", "cpu"):
        with pytest.raises(InvalidValueError) as info:
            BCEAccumulator(4, device=device).update(x, y)
        errors.append(info.value)
    g, c = errors
    assert (g.index, g.class_index, str(g)) == (c.index, c.class_index, str(c))
    assert g.index == (7, 2) and g.class_index == 2


@pytest.mark.cudasim
def test_nan_logit_is_an_error_on_the_gpu_too(rng):
    x, y = _data(rng, (100, 3))
    x[7, 1] = np.nan
    with pytest.raises(InvalidValueError, match="logit is NaN") as info:
        bce_with_logits(x, y, device="cuda")
    assert info.value.index == (7, 1)


@pytest.mark.cudasim
def test_streaming_in_chunks_through_two_slots(rng, monkeypatch):
    """Host batches go through pinned buffers in chunks on two streams: small chunks
    (many through each slot) give the CPU's figures and losses."""
    from bce_cli import _cuda

    monkeypatch.setattr(_cuda, "CHUNK", 100)
    chunks = []
    split = _cuda._chunks
    monkeypatch.setattr(_cuda, "_chunks", lambda *a: chunks.append(split(*a)) or chunks[-1])
    x, y = _data(rng, (90, 4, 6))  # rows along A: the fold across chunks
    acc = BCEAccumulator(4, device="cuda")
    losses = acc.update(x, y, return_losses=True)
    x1, y1 = _data(rng, (700,), np.float64)  # one class: chunks along B
    stats, out = class_stats(x1, y1, None, LossOptions(nan_policy="omit"), write=1,
                             moments=True, device="cuda")
    x2, y2 = _data(rng, (1, 3, 130))  # one row along A, chunks along B: its blocks side by side
    one = BCEAccumulator(3, device="cuda").update(x2, y2)
    # rows of (N, 3): chunks of 33 rows taken flat (INTERLEAVED), the last of one row (RUNS)
    modes = []
    geometry = _cuda.geometry
    monkeypatch.setattr(_cuda, "geometry", lambda *a, **k: modes.append(geometry(*a, **k)[2])
                        or geometry(*a, **k))
    x3, y3 = _data(rng, (100, 3))
    rows = BCEAccumulator(3, device="cuda", weight=np.array([0.5, 1.0, 2.0])).update(x3, y3)
    assert [len(c) for c in chunks] == [23, 7, 4, 4]  # each went through both slots
    assert chunks[-1][-1] == (99, 100, 0, 1) and set(modes) == {_cuda.INTERLEAVED, _cuda.RUNS}
    with _cpu():
        cpu = BCEAccumulator(4)
        want = cpu.update(x, y, return_losses=True)
        stats1, out1 = class_stats(x1, y1, None, LossOptions(nan_policy="omit"), write=1,
                                   moments=True)
        one_cpu = BCEAccumulator(3).update(x2, y2)
        rows_cpu = BCEAccumulator(3, weight=np.array([0.5, 1.0, 2.0])).update(x3, y3)
    _close(acc.state, cpu.state)
    _close(losses, want, 2 ** -23)
    _close(stats[:N_STATS], stats1)
    _close(out, out1)
    _close(one.state, one_cpu.state)
    _close(rows.state, rows_cpu.state)


@pytest.mark.cudasim
@pytest.mark.parametrize("shape", [(9, 3, 4), (1, 3, 50)])
def test_chunks_go_into_pinned_memory_in_pieces(rng, monkeypatch, shape):
    """A chunk is copied into the staging buffer by several threads, along A or (one
    entry of A) along B, from a strided view of the batch: every element lands."""
    from bce_cli import _cuda

    monkeypatch.setattr(_cuda, "STAGING_PIECE", 4)
    monkeypatch.setattr(_cuda, "STAGING_THREADS", 4)
    _cuda._stagers.cache_clear()
    batch = rng.standard_normal((shape[0] + 2, shape[1], shape[2] + 5))
    src = batch[1:1 + shape[0], :, 2:2 + shape[2]]  # as a chunk of a larger batch
    dst = np.full(shape, np.nan)
    pieces = []
    submit = _cuda._stagers().submit
    monkeypatch.setattr(_cuda._stagers(), "submit",
                        lambda fn, d, s: pieces.append(d.shape) or submit(fn, d, s))
    _cuda._stage(dst, src)
    np.testing.assert_array_equal(dst, src)
    axis = 0 if shape[0] > 1 else 2
    assert len(pieces) == 4 and sum(p[axis] for p in pieces) == shape[axis]
    _cuda._stagers.cache_clear()


@pytest.mark.cudasim
def test_device_arrays_are_read_in_place(rng, monkeypatch):
    """A numba device array is passed to the kernel as it is: copying it to the host
    (all a read through NumPy could do) fails here, and the results are the host's."""
    from numba import cuda

    x, y = _data(rng, (200, 3), np.float64)
    xd, yd = cuda.to_device(x), cuda.to_device(y)

    def no_copy(*args, **kwargs):
        raise AssertionError("a device array was copied to the host")

    monkeypatch.setattr(xd, "copy_to_host", no_copy)
    monkeypatch.setattr(yd, "copy_to_host", no_copy)
    got = bce_with_logits(xd, yd)  # device="cpu", but the data is on the GPU
    acc = BCEAccumulator(3, device="cuda").update(xd, yd)
    losses = bce_with_logits(xd, yd, reduction="none")
    monkeypatch.undo()
    with _cpu():
        want = bce_with_logits(x, y)
        want_acc = BCEAccumulator(3).update(x, y)
        want_losses = bce_with_logits(x, y, reduction="none")
    _close(got, want)
    _close(acc.state, want_acc.state)
    assert type(losses) is type(xd)  # the losses stay on the device
    _close(losses.copy_to_host(), want_losses)


@pytest.mark.cudasim
@pytest.mark.parametrize("ydtype", [np.bool_, np.uint8, np.int64, np.float64])
def test_device_targets_of_any_numeric_type(rng, ydtype, monkeypatch):
    """Device targets of bool (read as bytes, as on the host: numba-cuda has no
    float(bool), which the simulator's Python does not show), integer or another float
    type than the logits give the host's results."""
    from numba import cuda

    from bce_cli import _cuda

    seen = []
    run = _cuda.run
    monkeypatch.setattr(_cuda, "run", lambda x, y, *a, **k: seen.append(y.dtype) or run(x, y, *a,
                                                                                         **k))
    x, y = _data(rng, (300, 4))
    yt = y.astype(ydtype)
    got = BCEAccumulator(4, device="cuda").update(cuda.to_device(x), cuda.to_device(yt))
    assert seen == [np.dtype(np.uint8) if ydtype is np.bool_ else np.dtype(ydtype)]
    with _cpu():
        want = BCEAccumulator(4).update(x, y)
    _close(got.state, want.state)


def _eval_json(cli, *args):
    res = cli("eval", *args, "--format", "json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _close_reports(a, b, path="report"):
    if isinstance(b, dict):
        assert a.keys() == b.keys(), path
        for k in b:
            _close_reports(a[k], b[k], f"{path}.{k}")
    elif isinstance(b, list):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            _close_reports(u, v, f"{path}[{i}]")
    elif isinstance(b, float) and isinstance(a, float):
        assert a == pytest.approx(b, rel=RTOL, abs=1e-300), path
    else:
        assert a == b, path


@pytest.mark.cudasim
def test_cli_device_cuda_gives_the_cpu_report(cli, tmp_path):
    preds = ROOT / "sample_data" / "digits_preds.parquet"
    labels = ROOT / "sample_data" / "digits_labels.parquet"
    args = (preds, labels, "--pos-weight", "2", "--label-smoothing", "0.05")
    gpu_report = _eval_json(cli, *args, "--device", "cuda")
    cpu_report = _eval_json(cli, *args, "--device", "cpu")
    _close_reports(gpu_report, cpu_report)
    for device in ("cuda", "cpu"):
        res = cli("eval", ROOT / "sample_data" / "digits_logits.npy",
                  ROOT / "sample_data" / "digits_targets.npy", "--reduction", "none",
                  "--output", tmp_path / f"{device}.npy", "--device", device)
        assert res.exit_code == 0, res.output
    _close(np.load(tmp_path / "cuda.npy"), np.load(tmp_path / "cpu.npy"), 2 ** -23)


@pytest.mark.cudasim
def test_auto_takes_the_cpu_on_the_simulator():
    assert _device.resolve("auto") == ("cuda" if REAL_GPU else "cpu")
    assert _device.resolve("cuda") == "cuda"


# --- without a GPU (every run) --------------------------------------------------------

@pytest.mark.skipif(SIM or REAL_GPU, reason="CUDA is usable here")
def test_device_cuda_without_a_gpu_exits_2(cli):
    res = cli("eval", ROOT / "sample_data" / "digits_preds.parquet",
              ROOT / "sample_data" / "digits_labels.parquet", "--device", "cuda")
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert "--device cuda:" in res.stderr and "--device cpu" in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2
    with pytest.raises(BCEInputError, match="--device cuda"):
        bce_with_logits(np.zeros(3), np.zeros(3), device="cuda")
    assert _device.resolve("auto") == "cpu"


@pytest.mark.parametrize(("driver", "target", "gpu_found", "words"), [
    (False, True, False, ["no NVIDIA driver", "install the NVIDIA driver"]),
    (True, False, False, ["numba's CUDA target is not installed", "bce-cli[cuda]"]),
    (False, False, False, ["no NVIDIA driver", "bce-cli[cuda]"]),
    (True, True, False, ["sees no usable GPU", "nvidia-smi"]),
])
def test_what_is_missing_is_named(monkeypatch, driver, target, gpu_found, words):
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    monkeypatch.setattr(_device, "_driver_found", lambda: driver)
    monkeypatch.setattr(_device, "_target_installed", lambda: target)
    monkeypatch.setattr(_device, "_gpu_found", lambda: gpu_found)
    _device.problem.cache_clear()
    try:
        with pytest.raises(BCEInputError) as info:
            _device.resolve("cuda")
        for w in words:
            assert w in str(info.value)
        assert _device.resolve("auto") == "cpu"
    finally:
        _device.problem.cache_clear()


ARRAYOBJ = "numba.cuda.np.arrayobj"


@pytest.mark.parametrize(("error", "words"), [
    (AttributeError("module 'numpy' has no attribute 'row_stack'"),
     ["fails to load with NumPy", "row_stack", "numpy<2.5"]),
    (ImportError("libnvvm.so: cannot open shared object file"),
     ["fails to load with NumPy", "libnvvm"]),
    (ModuleNotFoundError(f"No module named '{ARRAYOBJ}'", name=ARRAYOBJ), None),
])
def test_a_cuda_target_that_fails_to_load_is_named(monkeypatch, error, words):
    """numba-cuda 0.30 with NumPy 2.5: the GPU is found, and the first compile would fail
    with a traceback; the failure is found first and named (exit status 2).  A numba-cuda
    without that module (laid out otherwise) is not refused for it."""
    import importlib

    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    monkeypatch.setattr(_device, "_driver_found", lambda: True)
    monkeypatch.setattr(_device, "_target_installed", lambda: True)
    monkeypatch.setattr(_device, "_gpu_found", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    load = importlib.import_module

    def broken(name, *args):
        if name == ARRAYOBJ:
            raise error
        return load(name, *args)

    monkeypatch.setattr(importlib, "import_module", broken)
    _device.problem.cache_clear()
    try:
        if words is None:
            assert _device.resolve("cuda") == "cuda"
            return
        with pytest.raises(BCEInputError) as info:
            _device.resolve("cuda")
        text = f"{info.value} {info.value.hint}"
        for w in words:
            assert w in text
        assert ("numpy<2.5" in text) == ("row_stack" in text)
        assert _device.resolve("auto") == "cpu"
    finally:
        _device.problem.cache_clear()


def test_dask_engine_refuses_the_gpu(cli, monkeypatch):
    """Refused as a usage error before Dask is looked for (installing it would not help)."""
    monkeypatch.setitem(sys.modules, "dask", None)  # as if Dask were not installed
    res = cli("eval", ROOT / "sample_data" / "digits_preds.parquet",
              ROOT / "sample_data" / "digits_labels.parquet", "--device", "cuda",
              "--engine", "dask")
    assert res.exit_code == 2
    assert "--device" in res.stderr


@pytest.mark.skipif(SIM, reason="this is the simulator run")
def test_kernels_on_the_simulator():
    """Runs this module's ``cudasim`` tests in a subprocess on numba's CUDA simulator
    (the variable must be set before numba is imported): how CI, with no GPU, runs them."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cudasim",
         str(Path(__file__))], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=900)
    tail = res.stdout[-3000:] + res.stderr[-2000:]
    assert res.returncode == 0, tail
    assert " passed" in res.stdout and " skipped" not in res.stdout, tail


_PTX = """
import glob, os, subprocess, sys, tempfile, types as pytypes
import numba.cuda.dispatcher as dispatcher
from numba import cuda, types
# No GPU here: device functions are compiled for the compute capability given below
# instead of asking the driver for the current device's.
dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=CC)
from bce_cli import _cuda
assert not _cuda.simulated()
import nvidia.cuda_nvcc
ptxas = os.path.join(nvidia.cuda_nvcc.__path__[0], "bin", "ptxas")
f64 = types.float64[::1]
out = []
for x, y in SIGNATURES:
    xt, yt = getattr(types, x)[::1], getattr(types, y)[::1]
    sig = (xt, yt, f64, f64, f64, f64, types.float64, types.float64, types.boolean,
           types.int64, xt, types.boolean, types.UniTuple(types.int64, 11),
           types.float64[:, :, ::1], f64)
    forms = [_cuda.TilesForm(*f) for f in (FORMS if not out else FORMS[-1:])]
    kernels = [(_cuda._tiles_kernel(f).py_func, sig) for f in forms]
    if not out:
        kernels.append((_cuda._add_partials.py_func, (types.float64[:, :, ::1],
                                                      types.float64[:, ::1])))
    for fn, s in kernels:
        ptx, _ = cuda.compile_ptx(fn, s, cc=CC)
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "k.ptx")
            with open(src, "w") as fh:
                fh.write(ptx)
            r = subprocess.run([ptxas, f"-arch=sm_{CC[0]}{CC[1]}", src, "-o",
                                os.path.join(d, "k.cubin")], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
        out.append(f"{x},{y}:{fn.__name__}")
print(" ".join(out))
"""


def test_kernels_compile_for_a_real_gpu():
    """The kernels as a GPU runs them (not the simulator's Python): compiled by numba-cuda
    to PTX for a Hopper GPU (sm_90) and assembled by ptxas, for every type of logits and
    targets the CUDA path passes (host targets: uint8 from bool, or a float type; device
    targets of any numeric type; bool ones are read as bytes), so the device code
    type-checks and lowers for the hardware, libdevice's bit cast included.  Needs the
    ``cuda`` extra (numba-cuda and the CUDA compiler wheels), not a GPU; CI installs it."""
    import importlib.util

    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("needs the cuda extra: pip install 'bce-cli[cuda]'")
    if importlib.util.find_spec("nvidia.cuda_nvcc") is None:
        pytest.skip("needs the CUDA compiler wheel (nvidia-cuda-nvcc-cu12, in the cuda extra)")
    from bce_cli._forms import MOMENTS_ALONG_A, MOMENTS_ALONG_B, MOMENTS_NONE, SMOOTH, UNIT, WSPS

    signatures = [("float32", y) for y in ("uint8", "float32", "float64", "int64")]
    signatures += [("float64", y) for y in ("uint8", "float64")]
    # (loop, general, write_out, squares, moments, mode): each mode plain, then with every
    # option (the last form, compiled for every signature)
    forms = [(UNIT, False, False, False, MOMENTS_NONE, mode) for mode in range(3)]
    forms += [(WSPS, True, True, True, MOMENTS_ALONG_A, 0),
              (SMOOTH, True, True, True, MOMENTS_ALONG_B, 1),
              (SMOOTH, True, True, True, MOMENTS_ALONG_B, 2)]
    script = f"CC = (9, 0)\nSIGNATURES = {signatures!r}\nFORMS = {forms!r}\n" + _PTX
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = str(ROOT)
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    done = res.stdout.split()
    first = "{},{}:".format(*signatures[0])
    assert done == [first + "tiles"] * len(forms) + [first + "_add_partials"] + [
        f"{x},{y}:tiles" for x, y in signatures[1:]]


_DISK_CACHE = """
import inspect, os, sys
from bce_cli import _cache_dirs, _cuda
assert not _cuda.simulated()
from bce_cli._forms import MOMENTS_NONE, UNIT
form = _cuda.TilesForm(UNIT, False, False, False, MOMENTS_NONE, _cuda.RUNS)
for kernel, name in ((_cuda.tiles(form), form.name), (_cuda._add_partials, "add_partials")):
    cache = kernel._cache
    assert type(cache).__name__ == "DiskCache", type(cache)
    assert cache.cache_path == os.path.join(os.environ["NUMBA_CACHE_DIR"], "bce_cli")
    assert cache._cache_file._source_stamp == _cache_dirs.source_stamp(_cache_dirs.CUDA_SOURCES)
    assert cache._impl.filename_base == _cache_dirs.cuda_base(name)
    # a save (numba-cuda's part left out: it needs a GPU) stamps the kernel's sources
    type(cache).__mro__[1].save_overload = lambda self, sig, data: None
    cache.save_overload(None, None)
    base = os.path.join(cache.cache_path, _cache_dirs.cuda_base(name))
    assert open(base + ".stamp").read() == _cache_dirs.cuda_stamp_text()
    assert not _cache_dirs.holds_cuda(cache.cache_path, name)  # no index yet
    open(base + ".nbi", "w").close()
    assert _cache_dirs.holds_cuda(cache.cache_path, name)
compiled = [_cuda.tiles(form).py_func, _cuda._LOSS.py_func, _cuda._FLAGS.py_func,
            _cuda._block_sum.py_func, _cuda._class_sum.py_func, _cuda._position.py_func]
compiled += [f.py_func for f in _cuda._MATH.values()]
print(" ".join(sorted({os.path.basename(inspect.getfile(f)) for f in compiled})))
"""


def test_a_read_only_cuda_cache_of_the_current_sources_is_used(monkeypatch, tmp_path):
    """A CUDA kernel cache restored read-only (CI cache, Docker layer) is used when its
    stamp is of the current sources, else passed over for a writable directory."""
    from bce_cli import _cache_dirs, _jit

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    base = _cache_dirs.cuda_base("tiles")
    (old / f"{base}.nbi").write_text("")
    (old / f"{base}.stamp").write_text(_cache_dirs.stamp_text(None))  # the CPU forms' stamp
    monkeypatch.setattr(_jit, "cache_dirs", lambda: [str(old), str(new)])
    real = os.access
    monkeypatch.setattr(_jit.os, "access", lambda p, m: False if str(p) == str(old) else
                        real(p, m))
    assert not _cache_dirs.holds_cuda(str(old), "tiles")
    locate = _jit._Locator.for_form
    assert locate("tiles", __file__, held=_cache_dirs.holds_cuda).get_cache_path() == str(new)
    (old / f"{base}.stamp").write_text(_cache_dirs.cuda_stamp_text())
    assert _cache_dirs.holds_cuda(str(old), "tiles")
    assert locate("tiles", __file__, held=_cache_dirs.holds_cuda).get_cache_path() == str(old)


_SMALL_GRID = """
import warnings
from bce_cli import _cuda
warnings.simplefilter("error")
try:
    _cuda._add_partials[1, _cuda.THREADS, 0]
except Warning as w:
    print(type(w).__name__)
_cuda._configured(_cuda._add_partials, 1, 0)  # raises if the warning comes through
_cuda._configured(_cuda._add_partials, 0, 0)
print("quiet")
"""


def test_small_grids_launch_without_numbas_occupancy_warning():
    """numba-cuda warns when a launch is configured with fewer than 128 blocks (the sum of
    the partials always is, small batches are); under ``-W error`` the warning would fail
    a user's job.  numba-cuda's own launch configuration, which needs no GPU."""
    import importlib.util

    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("needs the cuda extra: pip install 'bce-cli[cuda]'")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = str(ROOT)
    res = subprocess.run([sys.executable, "-c", _SMALL_GRID], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["NumbaPerformanceWarning", "quiet"]


def test_cuda_kernels_are_cached_on_disk_stamped_with_their_sources(tmp_path):
    """The kernels are kept in bce's cache directory, stamped with a hash of every source
    file whose functions they compile (numba-cuda's own stamp is the kernel's file
    alone: an edit of the math would load a stale kernel).  No GPU needed: the cache
    is set up at import; loading and saving were checked on one (README)."""
    import importlib.util

    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("needs the cuda extra: pip install 'bce-cli[cuda]'")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env.update(PYTHONPATH=str(ROOT), NUMBA_CACHE_DIR=str(tmp_path))
    res = subprocess.run([sys.executable, "-c", _DISK_CACHE], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    from bce_cli._cache_dirs import CUDA_SOURCES

    files = res.stdout.split()
    assert "_fastmath.py" in files and "kernels.py" in files and "_cuda.py" in files
    assert set(files) <= set(CUDA_SOURCES)


def test_instruction_counts_of_the_kernels():
    """``benchmarks/cuda_instructions.py`` reads each form's machine code (no GPU needed):
    with ``nvdisasm`` at hand, one row per form with plausible counts; without it, it says
    what to install and exits 0."""
    import importlib.util

    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("needs the cuda extra: pip install 'bce-cli[cuda]'")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = str(ROOT)
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cuda_instructions.py")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    if "needs ptxas" in res.stdout:
        assert "pip install nvidia-cuda-nvdisasm" in res.stdout
        return
    rows = [line.split() for line in res.stdout.splitlines() if line.endswith("%")]
    assert len(rows) == 5, res.stdout
    for row in rows:
        regs, per_element, fp64 = int(row[-6]), float(row[-5]), float(row[-4])
        assert 0 < regs <= 255 and 60 < fp64 < per_element < 1000, row


# --- on a real GPU (skip without one) ---------------------------------------------------

@gpu
@pytest.mark.gpu
def test_torch_cuda_tensors_in_place():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch without CUDA")
    rng = np.random.default_rng(4)
    x, y = _data(rng, (20000, 8))
    xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
    got = bce_with_logits(xt, yt, device="cuda")
    with _cpu():
        want = bce_with_logits(x, y)
    assert got == pytest.approx(want, rel=RTOL)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(xt.double(), yt.double())
    assert got == pytest.approx(float(ref), rel=1e-9)


@gpu
@pytest.mark.gpu
def test_large_batches_on_the_gpu():
    rng = np.random.default_rng(5)
    x, y = _data(rng, (200_000, 20))
    acc = BCEAccumulator(20, device="cuda", ignore_value=-1.0).update(x, y)
    with _cpu():
        cpu = BCEAccumulator(20, ignore_value=-1.0).update(x, y)
    _close(acc.state[:N_ACC_STATS], cpu.state)


@gpu
@pytest.mark.gpu
def test_benchmark_runs():
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_cuda.py"),
                          "--elements", "4000000"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "GB/s" in res.stdout
