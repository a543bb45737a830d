import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(20261128)


@pytest.fixture(scope="module", params=["compiled", "numpy"])
def engine(request):
    """Run a module's tests through both tiers: the compiled numba kernels and the
    vectorised NumPy path (bce_cli._tiers)."""
    from bce_cli import _tiers

    _tiers.set_tier(request.param)
    yield request.param
    _tiers.set_tier(None)
