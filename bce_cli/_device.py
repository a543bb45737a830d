"""Which device computes (``--device``, ``device=``): is CUDA usable here, and if not, what
is missing and how to get it (no numba import until asked).

``cuda`` needs an NVIDIA driver (``libcuda``), a GPU it can see, and numba's CUDA
target (the ``[cuda]`` extra, ``numba-cuda``; numba's own older CUDA target is used
when that is all there is).  With ``NUMBA_ENABLE_CUDASIM=1`` numba runs CUDA
kernels on its CPU simulator instead (slow: for tests), and ``cuda`` is usable
without any of them; ``auto`` still takes the CPU there.  Device arrays are
anything with ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors, numba
device arrays) or a numba device array (the simulator's have no interface).
"""

from __future__ import annotations

import ctypes.util
import functools
import importlib.util
import os

from .choices import Device, check
from .errors import BCEInputError

EXTRA = "pip install 'bce-cli[cuda]'"


def simulated() -> bool:
    """Whether numba runs CUDA kernels on its simulator in this process."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def is_device_array(a) -> bool:
    """Whether ``a`` lives in GPU memory (read there in place, never copied to the host)."""
    # hasattr on the object, not its type: PyTorch's property raises for a CPU tensor
    return (hasattr(a, "__cuda_array_interface__")
            or bool(getattr(type(a), "__cuda_ndarray__", False)))


def to_host(a):
    """An array on the host: a (numba) device array copied back, others as they are."""
    return a.copy_to_host() if hasattr(a, "copy_to_host") else a


def _driver_found() -> bool:
    if ctypes.util.find_library("cuda") is not None:
        return True
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def _target_installed() -> bool:
    """numba's CUDA target: the numba-cuda package, or numba's own (deprecated) one."""
    return (importlib.util.find_spec("numba_cuda") is not None
            or importlib.util.find_spec("numba.cuda") is not None)


def _target_error() -> str | None:
    """Why numba-cuda's array support fails to load here, or None.  It loads at the first
    kernel's compile, after the GPU was found: numba-cuda 0.30 fails there with NumPy 2.5
    (``np.row_stack`` is gone), which would otherwise surface as a traceback."""
    if importlib.util.find_spec("numba_cuda") is None:  # numba's own (older) CUDA target
        return None
    module = "numba.cuda.np.arrayobj"
    try:
        importlib.import_module(module)
    except Exception as err:  # any failure: the message names it
        if isinstance(err, ModuleNotFoundError) and err.name == module:
            return None  # another numba-cuda, laid out otherwise: nothing to check
        return f"{type(err).__name__}: {err}"
    return None


def _gpu_found() -> bool:
    from numba import cuda

    try:
        return bool(cuda.is_available())
    except Exception:  # a broken driver install: numba says why on its own terms
        return False


@functools.lru_cache(maxsize=1)
def problem() -> tuple[str, str] | None:
    """``(what keeps CUDA from being usable here, how to get it)``, or None: usable."""
    if simulated():
        return None
    driver, target = _driver_found(), _target_installed()
    if driver and target and _gpu_found():
        error = _target_error()
        if error is None:
            return None
        import numpy

        fix = "install NumPy and numba-cuda releases that work together"
        if "'numpy'" in error:  # NumPy dropped something it uses (2.5: np.row_stack)
            fix += " (numba-cuda 0.30 needs NumPy < 2.5: pip install 'numpy<2.5')"
        return (f"--device cuda: numba's CUDA target fails to load with NumPy "
                f"{numpy.__version__} ({error})",
                f"{fix}; or run with --device cpu (the same report)")
    missing, fixes = [], []
    if not driver:
        missing.append("no NVIDIA driver (libcuda) was found")
        fixes.append("install the NVIDIA driver on a machine with a GPU")
    if not target:
        missing.append("numba's CUDA target is not installed")
        fixes.append(EXTRA)
    if driver and target:
        missing.append("the NVIDIA driver sees no usable GPU")
        fixes.append("check it with nvidia-smi")
    return (f"--device cuda: {'; '.join(missing)}",
            f"{' and '.join(fixes)}; or run with --device cpu (the same report)")


def resolve(device: str, *arrays) -> str:
    """"cpu" or "cuda" for ``device`` ("cpu", "cuda" or "auto"; device arrays among
    ``arrays`` make "cpu" and "auto" mean "cuda": they are read where they are).
    Raises BCEInputError (exit status 2) when CUDA is asked for and not usable."""
    device = check(Device, device, "device")
    on_gpu = any(is_device_array(a) for a in arrays)
    if device == "cpu" and not on_gpu:
        return "cpu"
    if device == "auto" and not on_gpu:
        return "cuda" if not simulated() and problem() is None else "cpu"
    reason = problem()
    if reason is not None:
        raise BCEInputError(reason[0], hint=reason[1])
    return "cuda"
