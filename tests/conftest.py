import os

import numpy as np
import pytest


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cudasim`` run CUDA kernels: on numba's simulator (which must be
    switched on before numba is imported) or on a GPU.  In a process with neither
    they are deselected: ``tests/test_cuda.py::test_kernels_on_the_simulator`` runs
    them in a subprocess with the simulator."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return
    marked = [item for item in items if item.get_closest_marker("cudasim")]
    if not marked:
        return
    from bce_cli import _device

    if _device.problem() is None:  # a GPU: run them here, for real
        return
    items[:] = [item for item in items if not item.get_closest_marker("cudasim")]
    config.hook.pytest_deselected(items=marked)


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
