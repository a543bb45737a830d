"""The data layer: what ``bce eval PREDS [LABELS]`` points at, as aligned NumPy batches.

>>> from bce_cli.data import InputSpec, open_inputs      # doctest: +SKIP
>>> with open_inputs(InputSpec("preds.parquet", "labels.parquet")) as inp:  # doctest: +SKIP
...     for batch in inp.batches():
...         ...

Pure NumPy / PyArrow (no numba).  See :func:`open_inputs` and :class:`InputSpec`.
"""

from ._inputs import Inputs, open_inputs
from ._spec import Batch, InputSpec
from ._weights import WeightSpec, parse_pos_weight, parse_weight

__all__ = [
    "Batch",
    "InputSpec",
    "Inputs",
    "WeightSpec",
    "open_inputs",
    "parse_pos_weight",
    "parse_weight",
]
