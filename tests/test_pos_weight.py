import numpy as np
import pytest

from bce_cli import suggest_pos_weight


def test_ratio_is_the_pytorch_docs_rule():
    # PyTorch docs: 100 positive and 300 negative examples -> pos_weight 3.
    y = np.zeros((400, 1))
    y[:100] = 1
    assert suggest_pos_weight(y).tolist() == [3.0]


def test_methods_and_missing_positives():
    y = np.zeros((1000, 3))
    y[:10, 0] = 1
    y[:500, 1] = 1
    got = suggest_pos_weight(y)
    assert got[0] == 99.0 and got[1] == 1.0 and np.isnan(got[2])
    np.testing.assert_allclose(suggest_pos_weight(y, "sqrt")[:2], np.sqrt([99.0, 1.0]))
    beta = 0.99
    eff = suggest_pos_weight(y, "effective-number", beta=beta)
    want0 = (1 - beta**990) / (1 - beta**10)
    assert eff[0] == pytest.approx(want0, rel=1e-12)
    assert suggest_pos_weight(y, clip_max=50.0)[0] == 50.0


def test_effective_number_tends_to_ratio():
    y = np.zeros((400, 1))
    y[:100] = 1
    assert suggest_pos_weight(y, "effective-number", beta=1 - 1e-12)[0] == pytest.approx(3.0,
                                                                                         rel=1e-6)


def test_soft_labels_count_fractionally():
    y = np.array([[0.25], [0.75], [0.0]])
    assert suggest_pos_weight(y)[0] == pytest.approx(2.0 / 1.0)


def test_one_dimensional_targets_are_one_class():
    assert suggest_pos_weight(np.array([1, 0, 0, 0])).tolist() == [3.0]
