"""The data layer: what ``bce eval PREDS [LABELS]`` points at, as aligned NumPy batches.

Usage::

    from bce_cli.data import InputSpec, open_inputs
    with open_inputs(InputSpec("preds.parquet", "labels.parquet")) as inp:
        for batch in inp.batches():
            ...

Pure NumPy / PyArrow (no numba).  See :func:`open_inputs` and :class:`InputSpec`.
"""

from ._inputs import Inputs
from ._open import open_inputs, open_targets
from ._spec import Batch, InputSpec
from ._weights import WeightSpec, parse_pos_weight, parse_weight

__all__ = [
    "Batch",
    "InputSpec",
    "Inputs",
    "WeightSpec",
    "open_inputs",
    "open_targets",
    "parse_pos_weight",
    "parse_weight",
]
