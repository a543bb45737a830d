"""Bad input raises ValueError (BCEInputError) saying what and where; never a silent NaN."""

import numpy as np
import pytest

from bce_cli import (
    BCEAccumulator,
    BCEInputError,
    InvalidValueError,
    bce_with_logits,
    bce_with_logits_grad,
    suggest_pos_weight,
)
from bce_cli._checks import check_targets

pytestmark = pytest.mark.usefixtures("engine")  # numba kernels and NumPy path


def test_shape_mismatch():
    with pytest.raises(BCEInputError, match=r"target shape \(3,\) .* input shape \(4,\)"):
        bce_with_logits(np.zeros(4), np.zeros(3))


@pytest.mark.parametrize("name", ["weight", "pos_weight"])
def test_weights_that_do_not_broadcast(name):
    with pytest.raises(BCEInputError, match=f"{name} of shape \\(4,\\) does not broadcast"):
        bce_with_logits(np.zeros((2, 3)), np.zeros((2, 3)), **{name: np.ones(4)})
    with pytest.raises(BCEInputError, match="does not broadcast"):
        bce_with_logits(np.zeros(3), np.zeros(3), **{name: np.ones((2, 3))})


REDUCTIONS = pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
# per-class weights put (n, C) data through the rows kernel, else it is one flat class
LAYOUTS = pytest.mark.parametrize("pos_weight", [None, [1.0, 2.0, 3.0]], ids=["flat", "rows"])


@REDUCTIONS
@LAYOUTS
def test_target_out_of_range_names_first_index(reduction, pos_weight):
    y = np.zeros((4, 3))
    y[2, 1] = 1.5
    y[3, 0] = -2
    msg = r"target 1.5 is outside \[0, 1\] at index \(2, 1\)"
    with pytest.raises(InvalidValueError, match=msg):
        bce_with_logits(np.zeros((4, 3)), y, pos_weight=pos_weight, reduction=reduction)


@REDUCTIONS
@LAYOUTS
@pytest.mark.parametrize("which", ["logit", "target"])
def test_nan_is_an_error(which, reduction, pos_weight):
    x, y = np.zeros((4, 3)), np.zeros((4, 3))
    (x if which == "logit" else y)[2, 1] = np.nan
    with pytest.raises(InvalidValueError, match=rf"{which} is NaN at index \(2, 1\)") as info:
        bce_with_logits(x, y, pos_weight=pos_weight, reduction=reduction)
    assert info.value.index == (2, 1)
    assert info.value.role == ("logits" if which == "logit" else "targets")
    assert info.value.what == f"{which} is NaN"


@pytest.mark.parametrize("which", ["logit", "target"])
def test_every_entry_point_describes_the_first_bad_element_alike(which):
    """One description (bce_cli._checks.check_targets) behind the loss, the
    accumulator, the gradient and suggest_pos_weight."""
    x, y = np.zeros((4, 3)), np.zeros((4, 3))
    y[3, 0] = 7.0  # later than the NaN: the first bad element is the one named
    (x if which == "logit" else y)[2, 1] = np.nan
    calls = [lambda: bce_with_logits(x, y), lambda: BCEAccumulator(3).update(x, y),
             lambda: bce_with_logits_grad(x, y)]
    if which == "target":
        calls.append(lambda: suggest_pos_weight(y))
    for call in calls:
        with pytest.raises(InvalidValueError) as info:
            call()
        assert (info.value.what, info.value.index) == (f"{which} is NaN", (2, 1))


def test_check_targets_follows_the_policies():
    y = np.array([[0.0, -1.0], [np.nan, 1.0]])
    check_targets(y, ignore=-1.0, nan_policy="omit")  # nothing invalid
    with pytest.raises(InvalidValueError, match="target -1.0 is outside") as info:
        check_targets(y, class_axis=1, nan_policy="omit")
    assert (info.value.index, info.value.class_index) == ((0, 1), 1)
    with pytest.raises(InvalidValueError, match=r"target is NaN at index \(1, 0\)"):
        check_targets(y, ignore=-1.0)
    check_targets(np.array([True, False]))  # bool targets are always valid
    with pytest.raises(InvalidValueError, match="logit is NaN") as info:
        check_targets(np.array([True, False]), logits=np.array([0.0, np.nan]))
    assert info.value.role == "logits" and info.value.index == (1,)


def test_empty_input():
    with pytest.raises(BCEInputError, match="no elements"):
        bce_with_logits(np.zeros((0, 3)), np.zeros((0, 3)))


def test_pos_weight_of_wrong_length():
    with pytest.raises(BCEInputError, match="pos_weight has 2 values but there are 3 classes"):
        BCEAccumulator(3, pos_weight=[1.0, 2.0])


def test_unknown_reduction():
    with pytest.raises(BCEInputError, match="reduction must be one of"):
        bce_with_logits(np.zeros(2), np.zeros(2), reduction="avg")


def test_nan_weight():
    with pytest.raises(BCEInputError, match="weight contains NaN"):
        bce_with_logits(np.zeros(2), np.zeros(2), weight=np.array([1.0, np.nan]))


def test_suggest_pos_weight_rejects_bad_targets():
    with pytest.raises(BCEInputError, match="outside"):
        suggest_pos_weight(np.array([[0.0, 2.0]]))


def test_errors_are_value_errors():
    assert issubclass(BCEInputError, ValueError)
    assert issubclass(InvalidValueError, BCEInputError)


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("shape", [(3000,), (1000, 3)])  # planes and rows kernels
def test_validation_also_runs_when_only_losses_are_wanted(reduction, shape):
    y = np.zeros(shape)
    y.reshape(-1)[2500] = 1.25
    pw = np.ones(shape[-1]) * 2.0
    with pytest.raises(InvalidValueError, match="target 1.25 is outside"):
        bce_with_logits(np.zeros(shape), y, pos_weight=pw, reduction=reduction)
    x = np.zeros(shape)
    x.reshape(-1)[2999] = np.nan
    with pytest.raises(InvalidValueError, match="logit is NaN"):
        bce_with_logits(x, np.zeros(shape), pos_weight=pw, reduction=reduction)
