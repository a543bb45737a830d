"""The JIT options: a missing cache directory is said once, never fatal."""

import numba
import pytest

from bce_cli import _jit


def test_unwritable_cache_falls_back_once(monkeypatch):
    real = numba.njit

    def njit(*args, cache=False, **kw):
        if cache:
            raise RuntimeError("cannot cache function 'f': no locator available for file 'x'")
        return real(*args, **kw)

    monkeypatch.setattr(_jit.numba, "njit", njit)
    monkeypatch.setattr(_jit, "_cache_warned", False)

    def f(a):
        return a + 1

    with pytest.warns(RuntimeWarning, match="NUMBA_CACHE_DIR") as record:
        g = _jit.scalar()(f)
        h = _jit.kernel(parallel=False)(f)
    assert len(record) == 1
    assert g(1) == 2 and h(2) == 3


def test_other_errors_are_not_swallowed(monkeypatch):
    def njit(*args, **kw):
        raise RuntimeError("something else")

    monkeypatch.setattr(_jit.numba, "njit", njit)
    with pytest.raises(RuntimeError, match="something else"):
        _jit.scalar()(lambda a: a)


def test_kernel_calls_go_straight_to_the_compiled_form():
    """Kernels take their form as a literal; numba re-types such a call every time
    (~20 ms), so bce keeps the compiled entry point of each form and calls it."""
    import numpy as np

    from bce_cli import bce_with_logits, kernels

    x = np.linspace(-5, 5, 100_000)
    y = (x > 0.3).astype(np.float64)
    kernels._ENTRY_POINTS.clear()
    first = bce_with_logits(x, y, reduction="sum")
    assert len(kernels._ENTRY_POINTS) == 1
    (entry,) = kernels._ENTRY_POINTS.values()
    calls = []

    def spy(*args):
        calls.append(args[-1])
        return entry(*args)

    key = next(iter(kernels._ENTRY_POINTS))
    kernels._ENTRY_POINTS[key] = spy
    assert bce_with_logits(x, y, reduction="sum") == first
    assert calls == [key[-1]]


def test_stale_kernel_cache_is_dropped(tmp_path):
    """A cache file older than any kernel source goes; newer ones and other files stay."""
    import os

    for name in _jit.KERNEL_SOURCES:
        (tmp_path / name).write_text("")
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    files = {name: cache / name for name in
             ("kernels.f-1.py311.nbi", "kernels.f-1.py311.1.nbc", "kernels.g-9.py311.nbi",
              "kernels.cpython-311.pyc")}
    for path in files.values():
        path.write_text("")
    edited = os.stat(tmp_path / "_fastmath.py").st_mtime
    for name in ("kernels.f-1.py311.nbi", "kernels.f-1.py311.1.nbc", "kernels.cpython-311.pyc"):
        os.utime(files[name], (edited - 60, edited - 60))  # cached before the edit
    os.utime(files["kernels.g-9.py311.nbi"], (edited + 60, edited + 60))
    assert _jit.drop_stale_cache(tmp_path) == 2
    assert sorted(p.name for p in cache.iterdir()) == ["kernels.cpython-311.pyc",
                                                       "kernels.g-9.py311.nbi"]
