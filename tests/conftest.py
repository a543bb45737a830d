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


@pytest.fixture
def cli():
    """Run ``bce`` in this process: ``cli("eval", ...)`` returns typer's Result
    (exit_code, stdout, stderr, output)."""
    from typer.testing import CliRunner

    from bce_cli.cli import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])
