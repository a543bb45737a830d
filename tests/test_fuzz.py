"""A fixed handful of fuzz cases in every test run (``make fuzz`` runs many more)."""

import pytest

from .fuzz import run


@pytest.mark.parametrize("seed", [0, 1])
def test_mutated_inputs_get_clean_answers(seed, tmp_path):
    messages = []
    failures = run(cases=12, seed=seed, workdir=tmp_path, log=messages.append)
    assert not failures, "\n".join(messages)
