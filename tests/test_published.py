"""Published examples: values printed in other projects' documentation."""

import math

import numpy as np
import pytest

from bce_cli import BCEWithLogitsLoss, bce_with_logits

pytestmark = pytest.mark.usefixtures("engine")  # numba kernels and NumPy path


def test_pytorch_docs_example():
    # torch.nn.BCEWithLogitsLoss docs: a logit of 1.5 for a positive target.
    assert bce_with_logits(np.array([1.5]), np.array([1.0])) == pytest.approx(
        0.2014132779827524, rel=1e-15)
    assert 0.2014132779827524 == pytest.approx(-math.log(1 / (1 + math.exp(-1.5))), rel=1e-15)


ONEFLOW_X = [[1.2, 0.2, -0.3], [0.7, 0.6, -2], [0.7, 0.6, -2]]
ONEFLOW_Y = [[0, 1, 0], [1, 0, 1], [1, 0, 1]]
ONEFLOW_PW = [1.2, 1.3, 1.4]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("reduction", "expected"), [("mean", 2.6207), ("sum", 23.5865)])
def test_oneflow_docs_example(dtype, reduction, expected):
    # oneflow.nn.BCEWithLogitsLoss docs: weight 2, pos_weight [1.2, 1.3, 1.4].
    loss = BCEWithLogitsLoss(weight=np.full((3, 3), 2.0), pos_weight=np.array(ONEFLOW_PW),
                             reduction=reduction)
    got = loss(np.array(ONEFLOW_X, dtype=dtype), np.array(ONEFLOW_Y, dtype=dtype))
    assert got == pytest.approx(expected, abs=5e-5)


def test_oneflow_docs_example_none():
    got = bce_with_logits(np.array(ONEFLOW_X), np.array(ONEFLOW_Y, dtype=float), weight=2.0,
                          pos_weight=np.array(ONEFLOW_PW), reduction="none")
    expected = [[2.9266, 1.5552, 1.1087], [0.9676, 2.075, 5.9554], [0.9676, 2.075, 5.9554]]
    np.testing.assert_allclose(got, expected, atol=5e-5)


def test_pytorch_cancellation_case_is_exact():
    # PyTorch float32 returns 0 here; the true loss is log1p(exp(-30)) = 9.357622968839299e-14.
    got = bce_with_logits(np.array([-30.0], np.float32), np.array([0.0], np.float32),
                          reduction="none")
    assert got.dtype == np.float32
    assert got[0] == np.float32(math.log1p(math.exp(-30.0)))


def test_infinite_logits_give_their_limits():
    x = np.array([np.inf, -np.inf, np.inf, -np.inf])
    y = np.array([1.0, 1.0, 0.0, 0.0])
    got = bce_with_logits(x, y, reduction="none")
    np.testing.assert_array_equal(got, [0.0, np.inf, np.inf, 0.0])
