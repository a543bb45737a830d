"""Read ahead: same items in order, errors where they happened, stops with its consumer."""

import threading
import time

import numpy as np
import pytest

from bce_cli.data import InputSpec, _inputs, open_inputs
from bce_cli.data._readahead import read_ahead


def test_items_in_order():
    assert list(read_ahead(iter(range(1000)), depth=3)) == list(range(1000))


def test_error_reaches_the_consumer_after_the_items_before_it():
    def gen():
        yield 1
        yield 2
        raise ValueError("bad row 3")

    seen = []
    with pytest.raises(ValueError, match="bad row 3"):
        for item in read_ahead(gen()):
            seen.append(item)
    assert seen == [1, 2]


def test_producer_stops_and_closes_when_the_consumer_stops():
    produced = []
    closed = threading.Event()

    def gen():
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    for item in read_ahead(gen(), depth=2):
        if item == 5:
            break
    assert closed.wait(5)
    time.sleep(0.05)
    assert len(produced) <= 5 + 1 + 2 + 1  # the consumed, the queue, one in hand


def test_npy_batches_are_views_of_the_file(tmp_path, monkeypatch):
    """A C-ordered .npy of the right dtype is read without a copy per batch."""
    monkeypatch.setattr(_inputs, "VIEW_BATCH_ELEMENTS", 3)
    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", (x > 30).astype(np.float32))
    spec = InputSpec(str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), batch_rows=8)
    with open_inputs(spec) as inp:
        batches = list(inp.batches())
    assert [b.n_rows for b in batches] == [8, 8, 4]
    for b in batches:
        assert not b.logits.flags.owndata and not b.logits.flags.writeable  # the mapping
        assert b.logits.flags.c_contiguous
    np.testing.assert_array_equal(np.concatenate([b.logits for b in batches]), x)


@pytest.mark.parametrize("shape", [(70_000,), (9_000, 7), (3_000, 4, 5)])
def test_batches_of_views_hold_at_least_a_few_million_elements(tmp_path, shape):
    """Batches that are views (a memory-mapped .npy) hold nothing, but each costs a fixed
    time: they hold at least VIEW_BATCH_ELEMENTS elements whatever ``batch_rows``.
    Batches that are copies (here logits converted from int16) keep ``batch_rows``."""
    rng = np.random.default_rng(5)
    x = rng.integers(-5, 5, size=shape).astype(np.int16)
    np.save(tmp_path / "x16.npy", x)
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    np.save(tmp_path / "y.npy", (x > 0).astype(np.float32))
    per_row = int(np.prod(shape[1:], dtype=np.int64))
    view_rows = max(100, -(-_inputs.VIEW_BATCH_ELEMENTS // per_row))
    for logits, rows in (("x.npy", view_rows), ("x16.npy", 100)):
        spec = InputSpec(str(tmp_path / logits), str(tmp_path / "y.npy"), batch_rows=100)
        with open_inputs(spec) as inp:
            batches = list(inp.batches())
        n = shape[0]
        assert [b.n_rows for b in batches] == [min(rows, n - a) for a in range(0, n, rows)]
        got = np.concatenate([b.logits.reshape(b.n_rows, -1) for b in batches])
        np.testing.assert_array_equal(got, x.reshape(n, -1).astype(np.float64 if logits ==
                                                                   "x16.npy" else np.float32))
