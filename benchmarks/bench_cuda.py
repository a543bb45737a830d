"""GPU throughput of ``--device cuda`` (needs an NVIDIA GPU; without one it says so and exits 0).

    python benchmarks/bench_cuda.py [--elements N] [--classes C] [--dtype float32|float64]
                                    [--repeat R] [--why]

Rows, for logits and targets of ``--dtype`` (8 or 16 bytes per element):

* the kernels alone on resident data: the tiles kernel and the fixed-order sum of
  its partials, timed with CUDA events, as GB/s and as a share of the device's
  memory bandwidth, 2 x memory clock x bus width from its attributes;
* ``bce_with_logits(x, y)`` on device arrays as a user calls it (checks, buffers,
  the result back to Python);
* PyTorch's ``binary_cross_entropy_with_logits`` on the same resident tensors, when
  PyTorch with CUDA is installed (float32 in, float32 arithmetic and sums; bce works
  in float64);
* end to end from host NumPy arrays: pinned chunks copied on one stream while the
  previous chunk's kernel runs on another, then the partials; beside it, the copy of
  the same bytes from pinned host memory alone (the bus's ceiling).

``--why`` adds what bounds the kernel: the same tiles reading the data and adding it
with no loss (the access pattern's ceiling), and the tiles kernel with the shorter
float32 polynomial of the CPU kernels, with no log1p(exp(-a)) at all (the cost of
everything else) and with fewer registers per thread; and the copy from host memory
with the arrays' own pages locked in place (no staging copy).

Best of ``--repeat`` runs after a warm-up run (which compiles the kernel).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _best(fn, repeat: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def _best_events(launch, repeat: int) -> float:
    """Seconds of GPU time between two CUDA events around ``launch()`` (best of repeat)."""
    from numba import cuda

    launch()
    cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = cuda.event(), cuda.event()
        start.record()
        launch()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)  # ms
    return min(times)


def _form(c: int):
    """The tiles form ``bce_with_logits(x, y)`` runs for ``c`` classes, and its geometry."""
    from bce_cli import _cuda
    from bce_cli._forms import MOMENTS_NONE, UNIT

    def geometry(n):
        return (_cuda.geometry(1, c, n // c, MOMENTS_NONE) if c == 1 else
                _cuda.geometry(n // c, c, 1, MOMENTS_NONE))

    return (lambda mode: _cuda.TilesForm(UNIT, False, False, False, MOMENTS_NONE, mode),
            geometry)


def _kernels(xd, yd, c: int, tiles=None):
    """A launch of the tiles kernel (``tiles(form)``, or bce's) and of the sum of its
    partials on resident ``xd``, ``yd`` with the defaults (no weights, no moments),
    buffers made once: the kernels alone."""
    from numba import cuda

    from bce_cli import _cuda
    from bce_cli.kernels import NAN_ERROR

    n = xd.size
    xd, yd = xd.reshape(n), yd.reshape(n)
    form, geometry = _form(c)
    geom, n_tiles, mode = geometry(n)
    ones = cuda.to_device(np.ones(c))
    empty = cuda.device_array(0, dtype=np.float64)
    no_out = cuda.device_array(0, dtype=xd.dtype)
    partials = cuda.device_array((_cuda.N_ROWS, c, n_tiles), dtype=np.float64)
    total = cuda.device_array((_cuda.N_ROWS, c), dtype=np.float64)
    kernel = (tiles or _cuda.tiles)(form(mode))

    def launch():
        _cuda._configured(kernel, n_tiles, 0)(xd, yd, ones, ones, empty, empty, 0.0, 0.0, False,
                                              NAN_ERROR, no_out, False, geom, partials, empty)
        _cuda._configured(_cuda._add_partials, _cuda.N_ROWS * c, 0)(partials, total)

    return launch, geom, n_tiles, mode


def _no_math(a):
    return a


def _reads(x, y, geom, partials):
    """The tiles' access pattern for long runs (one class) with no loss: each element's
    x + y added in float64, ``UNROLL`` loads in flight per thread as in the tiles kernel
    (compiled by :func:`_reads_kernel` with ``cuda``, ``THREADS``, ``UNROLL`` and
    ``_block_sum`` of ``bce_cli._cuda``)."""
    b_count, n_bblocks, b_step, per_thread = geom[2], geom[4], geom[5], geom[6]
    tile = cuda.blockIdx.x  # noqa: F821 (the kernel's namespace)
    tid = cuda.threadIdx.x  # noqa: F821
    b_lo = (tile % n_bblocks) * b_step
    n_here = min(b_count, b_lo + b_step) - b_lo
    xs = cuda.local.array(UNROLL, np.float64)  # noqa: F821
    acc = 0.0
    for m0 in range(0, per_thread, UNROLL):  # noqa: F821
        for u in range(UNROLL):  # noqa: F821
            q = tid + (m0 + u) * THREADS  # noqa: F821
            ok = m0 + u < per_thread and q < n_here
            xs[u] = float(x[b_lo + q]) + float(y[b_lo + q]) if ok else 0.0
        for u in range(UNROLL):  # noqa: F821
            acc += xs[u]
    sh = cuda.shared.array((1, THREADS), np.float64)  # noqa: F821
    sh[0, tid] = acc
    _block_sum(sh, 1, tid)  # noqa: F821
    if tid == 0:
        partials[0, 0, tile] = sh[0, 0]


def _reads_kernel():
    from numba import cuda

    from bce_cli import _cuda
    from bce_cli._jit import retarget

    namespace = dict(globals(), cuda=cuda, THREADS=_cuda.THREADS, UNROLL=_cuda.UNROLL,
                     _block_sum=_cuda._block_sum)
    return retarget(_reads, namespace, cuda.jit)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=1 << 28)
    parser.add_argument("--classes", type=int, default=1)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--why", action="store_true",
                        help="also the rows that show what bounds the kernel")
    args = parser.parse_args()

    from bce_cli import _device

    if _device.simulated():
        print("bench_cuda: NUMBA_ENABLE_CUDASIM is set: the simulator's speed means nothing; "
              "unset it on a machine with a GPU")
        return 0
    problem = _device.problem()
    if problem is not None:
        print(f"bench_cuda: no GPU to measure: {problem[0].removeprefix('--device cuda: ')} "
              f"({problem[1]})")
        return 0

    from numba import cuda

    from bce_cli import _cuda, bce_with_logits

    dev = cuda.get_current_device()
    clock_hz = dev.MEMORY_CLOCK_RATE * 1e3  # the attribute is in kHz
    bus_bytes = dev.GLOBAL_MEMORY_BUS_WIDTH / 8
    peak = 2 * clock_hz * bus_bytes  # double data rate
    name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
    c = args.classes
    n = args.elements // c * c
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(n, dtype=np.float32) * 3).astype(dtype).reshape(-1, c)
    y = (rng.random(n, dtype=np.float32) < 0.3).astype(dtype).reshape(-1, c)
    if c == 1:
        x, y = x.reshape(-1), y.reshape(-1)
    nbytes = x.nbytes + y.nbytes
    xd, yd = cuda.to_device(x), cuda.to_device(y)
    print(f"{name} ({dev.MULTIPROCESSOR_COUNT} multiprocessors): memory bandwidth "
          f"{peak / 1e9:.0f} GB/s (2 x {clock_hz / 1e6:.0f} MHz x {bus_bytes * 8:.0f}-bit bus); "
          f"{n:,} {dtype.name} elements, {c} class(es), {nbytes / 1e9:.2f} GB read")

    def row(label, seconds, on_device=True):
        rate = nbytes / seconds
        share = f"{rate / peak:6.1%} of bandwidth" if on_device else " " * 19  # (not the bus's)
        print(f"  {label:<50} {seconds * 1e3:8.3f} ms  {rate / 1e9:7.1f} GB/s  "
              f"{share}  {n / seconds / 1e9:6.2f} G elements/s", flush=True)

    launch, geom, n_tiles, mode = _kernels(xd, yd, c)
    row(f"bce kernels alone, resident data ({_cuda.MODES[mode]})",
        _best_events(launch, args.repeat))
    if args.why and mode == _cuda.RUNS:
        reads = _reads_kernel()
        partials = cuda.device_array((1, 1, n_tiles), dtype=np.float64)
        row("  the same tiles, reading only (no loss)",
            _best_events(lambda: reads[n_tiles, _cuda.THREADS](xd.reshape(n), yd.reshape(n),
                                                               geom, partials),
                         args.repeat))
    if args.why:
        from bce_cli._forms import MOMENTS_ALONG_B, MOMENTS_NONE

        moments = MOMENTS_ALONG_B if c > 1 else MOMENTS_NONE  # the accumulator's (bce eval's)
        row("  with the squared losses and row moments (bce eval)",
            _best_events(_kernels(xd, yd, c, lambda form: _cuda.tiles(
                form._replace(squares=True, moments=moments)))[0], args.repeat))
        for label, core, opts in (
                ("  with the CPU's float32 polynomial", _cuda._MATH["log1p_exp_neg_f32"], {}),
                ("  with log1p(exp(-a)) replaced by a (no math)", _cuda._device(_no_math), {}),
                ("  at most 64 registers per thread", _cuda._MATH["log1p_exp_neg"],
                 {"max_registers": 64})):
            row(label, _best_events(_kernels(xd, yd, c, functools.partial(
                _cuda._tiles_kernel, core=core, **opts))[0], args.repeat))
    row("bce_with_logits(x, y) on device arrays",
        _best(lambda: bce_with_logits(xd, yd), args.repeat, cuda.synchronize))
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        xt, yt = torch.as_tensor(x, device="cuda"), torch.as_tensor(y, device="cuda")
        fn = torch.nn.functional.binary_cross_entropy_with_logits
        row(f"PyTorch F.binary_cross_entropy_with_logits ({dtype.name})",
            _best(lambda: fn(xt, yt), args.repeat, torch.cuda.synchronize))
        del xt, yt
    else:
        print("  PyTorch with CUDA: not installed (pip install torch for the comparison)")
    pinned = cuda.pinned_array(x.size, dtype=x.dtype)
    xc, yc = cuda.device_array(x.size, dtype=x.dtype), cuda.device_array(x.size, dtype=x.dtype)
    row("  (copying x and y from pinned host memory alone)",
        _best_events(lambda: (xc.copy_to_device(pinned), yc.copy_to_device(pinned)),
                     args.repeat), on_device=False)
    if args.why:
        def registered():  # the arrays' own pages locked in place, then one copy each
            with cuda.pinned(x, y):
                xc.copy_to_device(x.reshape(-1))
                yc.copy_to_device(y.reshape(-1))

        row("  (locking x and y in place, then copying them)",
            _best(registered, args.repeat, cuda.synchronize), on_device=False)
    row("bce end to end from host memory",
        _best(lambda: bce_with_logits(x, y, device="cuda"), args.repeat, cuda.synchronize),
        on_device=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
