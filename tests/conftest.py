import numpy as np
import pytest

from bce_cli._jit import drop_stale_cache

drop_stale_cache()  # a kernel cached before an edit to _fastmath.py would test old code


@pytest.fixture
def rng():
    return np.random.default_rng(20261128)


@pytest.fixture(scope="module", params=["numba", "numpy"])
def engine(request):
    """Run a module's tests through both engines: the numba kernels and the NumPy
    path that small inputs take (bce_cli._engine.NUMPY_MAX_ELEMENTS)."""
    from bce_cli import _engine

    limit = -1 if request.param == "numba" else 1 << 62
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_engine, "NUMPY_MAX_ELEMENTS", limit)
        yield request.param
