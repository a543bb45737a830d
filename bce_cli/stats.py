"""Layout of the per-class statistics shared by every engine (no numba here).

The mergeable state is a float64 array of shape ``(N_ACC_STATS, C)``, one row per
:class:`Stat`.  The tiers fill the first ``N_STATS`` rows; the accumulator adds
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
    # Row moments (bce_cli.uncertainty): with a[r], n[r] the class's loss sum and count
    # in row r, and A[r], N[r] those of the whole row (all classes),
    SQ = 5        # sum over rows of a^2
    SQN = 6       # sum over rows of a*n
    NSQ = 7       # sum over rows of n^2
    RSQ = 8       # sum over rows of A^2   (overall: in the first class's column, others 0)
    RSQN = 9      # sum over rows of A*N   (the same)
    RNSQ = 10     # sum over rows of N^2   (the same)
    WPOS = 11     # sum of w*y (w the element's weight): the prior loss follows from these
    WNEG = 12     # sum of w*(1 - y)


STAT_NAMES = tuple(s.name.lower() for s in Stat)
(LOSS, COUNT, POS, NEG, CORRECT, SQ, SQN, NSQ, RSQ, RSQN, RNSQ, WPOS,
 WNEG) = map(int, Stat)
N_STATS = 11  # the rows a tier returns for a batch (the kernels write some, see _dispatch)
N_ACC_STATS = len(Stat)

NAN_ERROR, NAN_OMIT, NAN_PROPAGATE = 0, 1, 2
NAN_POLICIES = {"error": NAN_ERROR, "omit": NAN_OMIT, "propagate": NAN_PROPAGATE}

# What a kernel writes to ``out``: nothing, per-element losses as well as the
# statistics, or only the losses (the statistics then hold no sums, only the
# validation runs).
OUT_NONE, OUT_WITH_STATS, OUT_ONLY = 0, 1, 2

# The metrics' state (bce_cli.metrics): per class one float64 row of the ranking
# histogram, RANK_BINS bins of the logit x: bin 0 holds x < -LOGIT_MAX (and -inf),
# the last bin x >= LOGIT_MAX (and +inf); in between, bins of 1/COARSE from
# -LOGIT_MAX to -LOGIT_CORE, of 1/FINE up to LOGIT_CORE (where positives and
# negatives meet, for most models), of 1/COARSE up to LOGIT_MAX, each [low, high)
# with edges exact in float64: first the sums of w*y (positives), then of w*(1 - y)
# (negatives); then, for B calibration bins, the sums of 1, w, w*p, w*y per bin;
# then the sum of w*(p - y)^2, the count, the count of NaN elements (--nan-policy
# propagate) and the count of elements whose weight is not 1 or whose target is not
# 0 or 1 (with none, the average precision can be exact).
LOGIT_MAX = 32.0
LOGIT_CORE = 8.0
COARSE = 64.0
FINE = 1024.0
COARSE_BINS = int((LOGIT_MAX - LOGIT_CORE) * COARSE)  # on each side
FINE_BINS = int(2 * LOGIT_CORE * FINE)
FINE_START = 1 + COARSE_BINS  # the first fine bin
HIGH_START = FINE_START + FINE_BINS  # the first coarse bin above the core
RANK_BINS = 2 + 2 * COARSE_BINS + FINE_BINS
