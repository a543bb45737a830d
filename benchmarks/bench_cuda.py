"""GPU throughput of ``--device cuda`` (needs an NVIDIA GPU; without one it says so and exits 0).

    python benchmarks/bench_cuda.py [--elements N] [--classes C] [--repeat R]

Printed, for float32 logits and targets (8 bytes per element):

* the kernel on resident data (device arrays read in place: the tiles kernel and
  the fixed-order sum of its partials), as GB/s and as a share of the device's
  memory bandwidth, 2 x memory clock x bus width from the device's attributes
  (the goal is 70% or more);
* PyTorch's ``binary_cross_entropy_with_logits`` on the same resident tensors,
  when PyTorch with CUDA is installed (it returns float32 and rounds its sums
  there; bce adds in float64);
* end to end from host NumPy arrays: pinned chunks copied on one stream while the
  previous chunk's kernel runs on another, then the partials.

Best of ``--repeat`` runs after a warm-up run (which compiles the kernel).
"""

from __future__ import annotations

import argparse
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=1 << 26)
    parser.add_argument("--classes", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=10)
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

    from bce_cli import bce_with_logits

    dev = cuda.get_current_device()
    clock_hz = dev.MEMORY_CLOCK_RATE * 1e3  # the attribute is in kHz
    bus_bytes = dev.GLOBAL_MEMORY_BUS_WIDTH / 8
    peak = 2 * clock_hz * bus_bytes  # double data rate
    name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
    c = args.classes
    n = args.elements // c * c
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(n) * 3).astype(np.float32).reshape(-1, c)
    y = (rng.random(n) < 0.3).astype(np.float32).reshape(-1, c)
    if c == 1:
        x, y = x.reshape(-1), y.reshape(-1)
    nbytes = x.nbytes + y.nbytes
    xd, yd = cuda.to_device(x), cuda.to_device(y)
    print(f"{name}: memory bandwidth {peak / 1e9:.0f} GB/s (2 x {clock_hz / 1e6:.0f} MHz x "
          f"{bus_bytes * 8:.0f}-bit bus); {n:,} float32 elements, {c} class(es), "
          f"{nbytes / 1e9:.2f} GB read")

    def row(label, seconds):
        rate = nbytes / seconds
        print(f"  {label:<44} {seconds * 1e3:8.2f} ms  {rate / 1e9:7.1f} GB/s  "
              f"{rate / peak:6.1%} of bandwidth  {n / seconds / 1e9:6.2f} G elements/s")

    row("bce kernel, resident data (mean)",
        _best(lambda: bce_with_logits(xd, yd), args.repeat, cuda.synchronize))
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        xt, yt = torch.as_tensor(x, device="cuda"), torch.as_tensor(y, device="cuda")
        fn = torch.nn.functional.binary_cross_entropy_with_logits
        row("PyTorch F.binary_cross_entropy_with_logits",
            _best(lambda: fn(xt, yt), args.repeat, torch.cuda.synchronize))
    else:
        print("  PyTorch with CUDA: not installed (pip install torch for the comparison)")
    row("bce end to end from host memory (mean)",
        _best(lambda: bce_with_logits(x, y, device="cuda"), args.repeat, cuda.synchronize))
    return 0


if __name__ == "__main__":
    sys.exit(main())
