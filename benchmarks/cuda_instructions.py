"""What the GPU kernels cost per element, read from their machine code (no GPU needed).

    python benchmarks/cuda_instructions.py [--dtype float32|float64] [--cc 9.0]

For each tiles form ``bce_with_logits`` and ``bce eval`` run, compiles the kernel as a GPU
would (numba-cuda to PTX, ``ptxas`` to a cubin for ``--cc``), disassembles it with
``nvdisasm`` and counts the instructions of its hot loop (the innermost loop holding the
loss's division) per element: all of them, and those of the float64 units.  A Hopper
multiprocessor issues one instruction per cycle in each of its 4 partitions and runs a
float64 instruction for 32 threads in 2 cycles there (16 float64 units each), so a loop of
``n`` instructions, ``d`` of them float64, needs about ``max(n, 2 d)`` cycles per 32
elements and partition.  The last columns turn that into the time and the share of the
memory bandwidth for ``--elements`` elements on an H200 (132 multiprocessors at 1.98 GHz,
4814 GB/s): a bound from arithmetic alone, which memory latency can only make longer.
(The row moments of ``(n, C)`` add each step's rows on a few threads of the block; they
are counted here as if every thread ran them, so that row overstates its cost.)

Needs the ``cuda`` extra (numba-cuda, ``nvidia-cuda-nvcc-cu12``) and ``nvdisasm``
(``pip install nvidia-cuda-nvdisasm``).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types as pytypes
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SMS, CLOCK_HZ, BANDWIDTH = 132, 1.98e9, 4814e9  # H200
FP64 = ("DADD", "DMUL", "DFMA", "DSETP", "DMNMX")


def _tool(name: str, package: str) -> str | None:
    try:
        mod = __import__(package, fromlist=["__path__"])
    except ImportError:
        return shutil.which(name)
    for root in mod.__path__:
        for dirpath, _, files in os.walk(root):
            if name in files:
                return os.path.join(dirpath, name)
    return shutil.which(name)


def _sass(fn, sig, cc, ptxas, nvdisasm):
    from numba import cuda

    ptx, _ = cuda.compile_ptx(fn, sig, cc=cc)
    with tempfile.TemporaryDirectory() as d:
        src, cubin = os.path.join(d, "k.ptx"), os.path.join(d, "k.cubin")
        Path(src).write_text(ptx)
        res = subprocess.run([ptxas, "-v", f"-arch=sm_{cc[0]}{cc[1]}", src, "-o", cubin],
                             capture_output=True, text=True, check=True)
        regs = int(re.search(r"Used (\d+) registers", res.stderr).group(1))
        text = subprocess.run([nvdisasm, "-c", cubin], capture_output=True, text=True,
                              check=True).stdout
    return text, regs


def hot_loop(text: str) -> list[str]:
    """The instructions of the smallest loop (a backward branch's span) that holds the
    float64 reciprocal of the loss's division."""
    lines, labels, label = [], {}, None
    for raw in text.splitlines():
        m = re.match(r"\s*\.L_x_(\d+):", raw)
        if m:
            label = m.group(1)
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", raw)
        if m:
            addr = int(m.group(1), 16)
            lines.append((addr, m.group(2).strip()))
            if label is not None:
                labels[label], label = addr, None
    loops = [(labels[m.group(1)], addr) for addr, ins in lines
             if (m := re.search(r"BRA.*\.L_x_(\d+)", ins)) and labels.get(m.group(1), addr) < addr]
    rcp = [addr for addr, ins in lines if "MUFU.RCP64H" in ins]
    _, lo, hi = min((hi - lo, lo, hi) for lo, hi in loops if any(lo <= r <= hi for r in rcp))
    return [ins for addr, ins in lines if lo <= addr <= hi]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--cc", default="9.0", help="compute capability to compile for")
    parser.add_argument("--elements", type=int, default=1 << 28)
    args = parser.parse_args()
    os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
    ptxas = _tool("ptxas", "nvidia.cuda_nvcc")
    nvdisasm = _tool("nvdisasm", "nvidia")
    if ptxas is None or nvdisasm is None:
        print("cuda_instructions: needs ptxas (pip install 'bce-cli[cuda]') and nvdisasm "
              "(pip install nvidia-cuda-nvdisasm)")
        return 0
    import numba.cuda.dispatcher as dispatcher
    from numba import types

    cc = tuple(int(p) for p in args.cc.split("."))
    # no GPU here: device functions compile for this compute capability
    dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=cc)
    from bce_cli import _cuda
    from bce_cli._forms import MOMENTS_ALONG_B, MOMENTS_NONE, SMOOTH, UNIT

    xt = getattr(types, args.dtype)[::1]
    f64 = types.float64[::1]
    sig = (xt, xt, f64, f64, f64, f64, types.float64, types.float64, types.boolean,
           types.int64, xt, types.boolean, types.UniTuple(types.int64, 11),
           types.float64[:, :, ::1], f64)
    forms = [
        ("bce_with_logits, 1-D", _cuda.TilesForm(UNIT, False, False, False, MOMENTS_NONE,
                                                 _cuda.RUNS)),
        ("bce eval, 1-D (squared losses)", _cuda.TilesForm(UNIT, False, False, True,
                                                           MOMENTS_NONE, _cuda.RUNS)),
        ("bce_with_logits, (n, C) by class", _cuda.TilesForm(UNIT, False, False, False,
                                                             MOMENTS_NONE, _cuda.INTERLEAVED)),
        ("bce eval, (n, C) (row moments)", _cuda.TilesForm(UNIT, False, False, True,
                                                           MOMENTS_ALONG_B, _cuda.INTERLEAVED)),
        ("every option, short runs", _cuda.TilesForm(SMOOTH, True, True, True, MOMENTS_ALONG_B,
                                                     _cuda.SPREAD)),
    ]
    nbytes = 2 * args.elements * xt.dtype.bitwidth // 8
    print(f"sm_{cc[0]}{cc[1]}, {args.dtype} logits and targets; time and share for "
          f"{args.elements:,} elements ({nbytes / 1e9:.2f} GB) on an H200, from arithmetic")
    print(f"  {'form':<34} {'regs':>4} {'instr/el':>8} {'fp64/el':>7} {'bound':>9} {'share':>6}")
    for label, form in forms:
        text, regs = _sass(_cuda._tiles_kernel(form).py_func, sig, cc, ptxas, nvdisasm)
        body = hot_loop(text)
        ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", i).split()[0].split(".")[0]
                                  for i in body)
        per = sum(1 for i in body if "MUFU.RCP64H" in i)  # one division per element
        n, d = len(body) / per, sum(ops[o] for o in FP64) / per
        seconds = args.elements * max(n, 2 * d) / 32 / (4 * SMS * CLOCK_HZ)
        print(f"  {label:<34} {regs:>4} {n:>8.1f} {d:>7.1f} {seconds * 1e3:>6.2f} ms "
              f"{nbytes / seconds / BANDWIDTH:>6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
