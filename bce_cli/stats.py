"""Layout of the per-class statistics shared by every engine (no numba here).

The mergeable state is a float64 array of shape ``(N_STATS, C)``; row ``LOSS``
holds the sum of weighted element losses, ``COUNT`` the elements that took
part, ``POS``/``NEG`` the sums of y and 1 - y, ``CORRECT`` the elements with
(logit > 0) == (target >= 0.5).  The kernels fill those ``N_STATS`` rows; the
accumulator adds two of its own after them, ``WPOS``/``WNEG``: the sums of w*y and
w*(1 - y) over the same elements (w the element's weight), from which the prior
loss under the run's options follows (``N_ACC_STATS`` rows in all).
"""

LOSS, COUNT, POS, NEG, CORRECT = range(5)
N_STATS = 5
WPOS, WNEG = 5, 6
N_ACC_STATS = 7

NAN_ERROR, NAN_OMIT, NAN_PROPAGATE = 0, 1, 2
NAN_POLICIES = {"error": NAN_ERROR, "omit": NAN_OMIT, "propagate": NAN_PROPAGATE}

# What a kernel writes to ``out``: nothing, per-element losses as well as the
# statistics, or only the losses (the statistics then hold no sums, only the
# validation runs).
OUT_NONE, OUT_WITH_STATS, OUT_ONLY = 0, 1, 2
