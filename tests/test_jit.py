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
