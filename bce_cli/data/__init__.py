"""The data layer: what ``bce eval PREDS [LABELS]`` points at, as aligned NumPy batches.

Usage::

    from bce_cli.data import InputSpec, open_inputs
    with open_inputs(InputSpec("preds.parquet", "labels.parquet")) as inp:
        for batch in inp.batches():
            ...

Pure NumPy / PyArrow (no numba).  See :func:`open_inputs` and :class:`InputSpec`.

The modules, in the order the data goes through them: ``_spec`` (what to open, what
comes out); ``_paths`` (where the bytes are, which format); ``_numpy`` (``.npy`` /
``.npz`` arrays) or ``_sources`` (Arrow tables; ``_feather_v1`` reads Feather v1 in a
child process); ``_names`` and ``_columns`` (which columns hold which role); ``_join``
(``--on KEY``); ``_convert`` (Arrow to NumPy); ``_feeds`` (the batches of one input);
``_weights`` (``--weight``, ``--pos-weight``); ``_open`` (:func:`open_inputs`,
:func:`open_targets`); ``_inputs`` (:class:`Inputs`, aligned batches); ``_readahead``
(reading overlapped with the loss).
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
