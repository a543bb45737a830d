"""Layout of the per-class statistics shared by every engine (no numba here).

The mergeable state is a float64 array of shape ``(N_ACC_STATS, C)``, one row per
:class:`Stat`.  The kernels fill the first ``N_STATS`` rows; the accumulator adds
``WPOS``/``WNEG`` after them (see :class:`Stat`).  The plain ``int`` constants
below index those rows in the kernels: numba freezes them at compile time.
"""

from enum import IntEnum


class Stat(IntEnum):
    """The rows of the state: their order is the state's layout, their lower-case
    names (:data:`STAT_NAMES`) the keys of ``BCEAccumulator.state_dict()``."""

    LOSS = 0      # sum of weighted element losses
    COUNT = 1     # elements that took part
    POS = 2       # sum of y
    NEG = 3       # sum of 1 - y
    CORRECT = 4   # elements with (logit > 0) == (target >= 0.5)
    WPOS = 5      # sum of w*y (w the element's weight): the prior loss follows from these
    WNEG = 6      # sum of w*(1 - y)


STAT_NAMES = tuple(s.name.lower() for s in Stat)
LOSS, COUNT, POS, NEG, CORRECT, WPOS, WNEG = map(int, Stat)
N_STATS = 5  # the rows a kernel writes
N_ACC_STATS = len(Stat)

NAN_ERROR, NAN_OMIT, NAN_PROPAGATE = 0, 1, 2
NAN_POLICIES = {"error": NAN_ERROR, "omit": NAN_OMIT, "propagate": NAN_PROPAGATE}

# What a kernel writes to ``out``: nothing, per-element losses as well as the
# statistics, or only the losses (the statistics then hold no sums, only the
# validation runs).
OUT_NONE, OUT_WITH_STATS, OUT_ONLY = 0, 1, 2
