"""Reading a global row range (the Dask engine's tasks): the same batches, rows and
positions as the whole input's, files and row groups before the range left unread."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bce_cli.data import InputSpec, open_inputs, open_targets
from bce_cli.errors import BCEInputError

SIZES = [(1000, 300), (777, 100), (1500, 1000), (10, 3)]  # (rows, row group size) per file


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("rows")
    rng = np.random.default_rng(7)
    n = 0
    for k, (rows, group) in enumerate(SIZES):
        table = pa.table({"logit_a": rng.normal(size=rows).astype(np.float32),
                          "logit_b": rng.normal(size=rows), "a": rng.random(rows) > 0.5,
                          "b": rng.random(rows)})
        pq.write_table(table, root / f"part{k}.parquet", row_group_size=group)
        n += rows
    np.save(root.parent / "rows-w.npy", rng.random(n))
    return root, n


def _batches(inp):
    return [(b.row_offset, b.logits.copy(), b.targets.copy(),
             None if b.weight is None else b.weight.copy()) for b in inp.batches()]


@pytest.mark.parametrize("batch_rows", [64, 1000, 5000])
def test_a_row_range_gives_the_whole_inputs_batches(dataset, batch_rows):
    root, n = dataset
    spec = dict(preds=str(root / "*.parquet"), logits="logit_*", targets="a,b",
                weight=str(root.parent / "rows-w.npy"), batch_rows=batch_rows)
    with open_inputs(InputSpec(**spec)) as inp:
        whole = _batches(inp)
    for start in range(0, n, batch_rows):
        stop = min(n, start + 2 * batch_rows)
        with open_inputs(InputSpec(**spec, rows=(start, stop))) as inp:
            part = _batches(inp)
        expected = [b for b in whole if start <= b[0] < stop]
        assert len(part) == len(expected)
        for got, want in zip(part, expected, strict=True):
            assert got[0] == want[0]
            for g, w in zip(got[1:], want[1:], strict=True):
                assert np.array_equal(g, w)


def test_positions_stay_global(dataset):
    root, n = dataset
    with open_inputs(InputSpec(str(root), logits="logit_*", targets="a,b", batch_rows=250,
                               rows=(2750, 3000))) as inp:
        assert [b.row_offset for b in inp.batches()] == [2750]
        assert inp.locate(2999, 1) == (str(root / "part2.parquet"), "b", 1222)
    with open_targets(str(root), targets="a,b", batch_rows=500, rows=(3000, n)) as inp:
        assert sum(b.n_rows for b in inp.batches()) == n - 3000


def test_a_range_must_start_on_a_batch():
    with pytest.raises(BCEInputError, match="multiple of batch_rows"):
        InputSpec("x.parquet", batch_rows=100, rows=(50, 200))
