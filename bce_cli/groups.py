"""Per-group reports, ``bce eval --by COLUMN``: the loss of each value of a column.

Each batch's per-element losses (from ``BCEAccumulator.update(...,
return_losses=True)``) are summed per row and class, then per group with one
``np.bincount`` per class.  A group's state is a set of float64 sums like the
accumulator's, so batches (and their order) do not matter and the groups add up
to the whole: per class the loss sum, the count of elements that took part and
the sum of targets; per group, over its rows, the row moments ``A^2``, ``A*N``,
``N^2`` (``A``, ``N``: a row's loss sum and count over all classes, see
:mod:`bce_cli.uncertainty`) and the row count.  The mean loss of a group is its
loss sum divided by its element count, as for the overall loss.

Keys are mapped to dense ids as they come (:class:`GroupKeys`), one Arrow
``dictionary_encode`` per batch; at most :data:`MAX_GROUPS` distinct values.
"""

from __future__ import annotations

import numpy as np

from ._checks import left_out
from .errors import BCEInputError
from .uncertainty import intervals, overall_standard_errors

MAX_GROUPS = 100_000

# Columns of a group's row of sums after its 3 * C per-class ones (loss, count, targets).
RSQ, RSQN, RNSQ, ROWS = range(4)


class GroupKeys:
    """Dense ids ``0, 1, ...`` for the values of the ``--by`` column, in the order
    they are first met; ``keys[i]`` is the value of id ``i`` (None for null)."""

    def __init__(self, column: str, limit: int = MAX_GROUPS):
        self.column = column
        self.limit = limit
        self.keys: list = []
        self._ids: dict = {}

    def _id(self, value) -> int:
        i = self._ids.get(value)
        if i is None:
            if len(self.keys) >= self.limit:
                raise BCEInputError(
                    f"the --by column has more than {self.limit:,} distinct values",
                    column=self.column,
                    hint="group by a column with fewer values (a split, a country, a source)",
                )
            i = self._ids[value] = len(self.keys)
            self.keys.append(value)
        return i

    def ids_of(self, keys: list) -> np.ndarray:
        """The ids of ``keys`` (values as :attr:`keys` holds them: another batch's)."""
        return np.array([self._id(k) for k in keys], dtype=np.intp)

    def order(self) -> list[int]:
        """The ids in key order, the null key last (the report's order)."""
        return sorted(range(len(self.keys)), key=lambda i: sort_key(self.keys[i]))

    def ids(self, values) -> np.ndarray:
        """The ids (intp) of one batch's values (an Arrow array or chunked array)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from .data._convert import arrow_of, numpy_of

        chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
        out = np.empty(len(values), dtype=np.intp)
        pos = 0
        for chunk in chunks:
            m = len(chunk)
            if not m:
                continue
            if not pa.types.is_dictionary(chunk.type):
                chunk = pc.dictionary_encode(chunk)
            indices, dictionary = chunk.indices, chunk.dictionary
            d = len(dictionary)
            idx = numpy_of(indices, nulls=d)  # nulls: one slot past the dictionary
            used = np.flatnonzero(np.bincount(idx, minlength=d + 1))
            lut = np.zeros(d + 1, dtype=np.intp)
            in_dict = used[used < d]
            for j, value in zip(in_dict.tolist(), dictionary.take(arrow_of(in_dict)).to_pylist(),
                                strict=True):
                lut[j] = self._id(value)
            if used.size and used[-1] == d:
                lut[d] = self._id(None)
            out[pos:pos + m] = lut[idx]
            pos += m
        return out


class GroupStats:
    """The mergeable per-group state: ``sums`` of shape ``(G, 3 * C + 4)`` (per class
    the loss sums, counts and target sums, then ``RSQ``, ``RSQN``, ``RNSQ``,
    ``ROWS``), one row per group id."""

    def __init__(self, n_classes: int):
        self.n_classes = n_classes
        self.sums = np.zeros((0, 3 * n_classes + 4))

    def _grow(self, n_groups: int) -> None:
        if n_groups > len(self.sums):
            more = np.zeros((n_groups - len(self.sums), self.sums.shape[1]))
            self.sums = np.concatenate([self.sums, more])

    def add(self, ids, losses, targets, counted=None) -> None:
        """Add one batch: group ``ids`` per row, per-element ``losses`` (weighted, of
        shape (R, C) or (R, C, S)), ``targets`` of the same shape, and ``counted``: a
        bool mask of the elements that take part (None: all of them)."""
        ids = np.asarray(ids, dtype=np.intp)
        if not ids.size:
            return
        C = self.n_classes
        n_groups = int(ids.max()) + 1
        self._grow(n_groups)
        y = np.asarray(targets)
        if y.dtype == np.bool_:
            y = y.view(np.uint8)
        per_row = losses.ndim == 3
        S = losses.shape[2] if per_row else 1
        if counted is None:
            a = losses.sum(axis=2, dtype=np.float64) if per_row else losses
            pos = y.sum(axis=2, dtype=np.float64) if per_row else y
            n = None
        else:
            with np.errstate(invalid="ignore"):
                a = np.where(counted, losses, 0.0)
                pos = np.where(counted, y, 0.0)
            n = counted
            if per_row:
                a, pos, n = a.sum(axis=2), pos.sum(axis=2), n.sum(axis=2)
        out = np.zeros((n_groups, self.sums.shape[1]))
        for c in range(C):  # one bincount per class and quantity: no sort, no copy of a
            out[:, c] = np.bincount(ids, weights=a[:, c], minlength=n_groups)
            out[:, 2 * C + c] = np.bincount(ids, weights=pos[:, c], minlength=n_groups)
        rows = np.bincount(ids, minlength=n_groups).astype(np.float64)
        big_a = a.sum(axis=1, dtype=np.float64)
        extra = out[:, 3 * C:]
        extra[:, RSQ] = np.bincount(ids, weights=big_a * big_a, minlength=n_groups)
        extra[:, ROWS] = rows
        if n is None:  # every element counts: C * S of them per row
            m = float(C * S)
            out[:, C:2 * C] = (rows * S)[:, None]
            extra[:, RSQN] = m * out[:, :C].sum(axis=1)  # the sum of A: of the class sums
            extra[:, RNSQ] = rows * m * m
        else:
            for c in range(C):
                out[:, C + c] = np.bincount(ids, weights=n[:, c], minlength=n_groups)
            big_n = n.sum(axis=1, dtype=np.float64)
            extra[:, RSQN] = np.bincount(ids, weights=big_a * big_n, minlength=n_groups)
            extra[:, RNSQ] = np.bincount(ids, weights=big_n * big_n, minlength=n_groups)
        self.sums[:n_groups] += out

    def add_rows(self, ids: np.ndarray, sums: np.ndarray) -> GroupStats:
        """Add rows of sums (another state's, a Dask task's batch) to the groups ``ids``."""
        if ids.size:
            self._grow(int(ids.max()) + 1)
            self.sums[ids] += sums
        return self

    def compute(self, reduction: str, confidence: float) -> dict:
        """Per group (by id): ``loss``, ``loss_se``, ``loss_ci`` (2, G), ``n_rows``,
        and per class ``class_loss``, ``count``, ``n_pos``, ``n_neg`` (G, C)."""
        C = self.n_classes
        s = self.sums
        loss_sum, count, n_pos = s[:, :C], s[:, C:2 * C], s[:, 2 * C:3 * C]
        extra = s[:, 3 * C:]
        t_a, t_n = loss_sum.sum(axis=1), count.sum(axis=1)
        rows = extra[:, ROWS]
        with np.errstate(invalid="ignore", divide="ignore"):
            if reduction == "sum":
                loss, class_loss = t_a, loss_sum
            else:
                loss, class_loss = t_a / t_n, loss_sum / count
        se = overall_standard_errors(t_a, t_n, extra[:, RSQ], extra[:, RSQN], extra[:, RNSQ],
                                     rows, reduction)
        lo, hi = intervals(loss, se, rows.astype(np.int64), confidence)
        return {"loss": loss, "loss_se": se, "loss_ci": np.stack([lo, hi]), "n_rows": rows,
                "loss_sum": t_a, "n_elements": t_n, "class_loss": class_loss, "count": count,
                "n_pos": n_pos, "n_neg": count - n_pos}


class Groups:
    """``--by`` for one run: the keys and their mergeable sums, fed batch by batch
    (:meth:`add`), or from the batches of Dask tasks (:meth:`part` in the worker,
    :meth:`add_part` in the driver, in the dataset's order: the same sums, bit for
    bit, as the batches added here in that order)."""

    def __init__(self, n_classes: int, column: str, ignore_value=None,
                 nan_policy: str = "error"):
        self.n_classes, self.column = n_classes, column
        self.ignore_value, self.nan_policy = ignore_value, nan_policy
        self.keys, self.stats = GroupKeys(column), GroupStats(n_classes)

    def add(self, batch, losses) -> None:
        """Add one batch (its ``key`` column, targets and logits) and its per-element
        losses."""
        self.stats.add(self.keys.ids(batch.key), losses, batch.targets,
                       counted_mask(batch.logits, batch.targets, self.ignore_value,
                                    self.nan_policy))

    def empty(self) -> Groups:
        """A new, empty one with these settings (what a Dask task is given)."""
        return Groups(self.n_classes, self.column, self.ignore_value, self.nan_policy)

    def part(self, batch, losses) -> tuple[list, np.ndarray]:
        """One batch's ``(keys, sums)``, one row of sums per key, for the driver."""
        one = self.empty()
        one.add(batch, losses)
        return one.keys.keys, one.stats.sums

    def add_part(self, keys: list, sums: np.ndarray) -> None:
        self.stats.add_rows(self.keys.ids_of(keys), sums)

    def report(self, class_names, reduction: str, confidence: float) -> list[dict]:
        return group_report(self.stats, self.keys, class_names, reduction, confidence)


def counted_mask(x, y, ignore_value, nan_policy):
    """The elements that take part in the sums (None: all of them), as the accumulator
    decides (:func:`bce_cli._checks.left_out`)."""
    skip = left_out(x, y, ignore_value, nan_policy)
    return None if skip is None else ~skip


def sort_key(key):
    """Groups in key order, the null key last."""
    return (key is None, key if key is not None else 0)


def group_report(stats: GroupStats, keys: GroupKeys, class_names, reduction: str,
                 confidence: float) -> list[dict]:
    """The report's ``groups``: one object per group, sorted by key (null last)."""
    from .report import finite_values, interval_values, loss_values

    r = stats.compute(reduction, confidence)
    loss, se = loss_values(r["loss"]), finite_values(r["loss_se"])
    ci = interval_values(r["loss_ci"])
    class_loss, n_pos, n_neg = (loss_values(r["class_loss"]), finite_values(r["n_pos"]),
                                finite_values(r["n_neg"]))
    count = r["count"].astype(np.int64).tolist()
    names = [str(n) for n in class_names]
    out = []
    for g in keys.order():
        out.append({
            "key": keys.keys[g], "n_rows": int(r["n_rows"][g]),
            "n_elements": int(r["n_elements"][g]), "loss": loss[g], "loss_se": se[g],
            "loss_ci": ci[g],
            "classes": [{"name": name, "loss": cl, "n_pos": p, "n_neg": q, "count": k}
                        for name, cl, p, q, k in zip(names, class_loss[g], n_pos[g],
                                                     n_neg[g], count[g], strict=True)],
        })
    return out
