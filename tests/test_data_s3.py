"""S3 for real: a local moto server on 127.0.0.1, read through pyarrow's S3 filesystem."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bce_cli.data import InputSpec, open_inputs
from bce_cli.errors import BCEInputError

from ._net import free_port

moto_server = pytest.importorskip(
    "moto.server", reason="moto[server] is not installed (pip install 'moto[server]' boto3)"
)
boto3 = pytest.importorskip("boto3", reason="boto3 is not installed")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }.items():
        mp.setenv(k, v)
    mp.delenv("AWS_PROFILE", raising=False)
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1")
    client.create_bucket(Bucket="bce")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 3)).astype(np.float32)
    y = rng.random((1000, 3)) < 0.5
    d = tmp_path_factory.mktemp("s3data")
    pq.write_table(
        pa.table({f"logit_{i}": x[:, i] for i in range(3)}), d / "p.parquet", row_group_size=300
    )
    pq.write_table(pa.table({f"target_{i}": y[:, i] for i in range(3)}), d / "l.parquet")
    for part, (a, b) in enumerate([(0, 400), (400, 1000)]):
        pq.write_table(
            pa.table(
                {
                    **{f"logit_{i}": x[a:b, i] for i in range(3)},
                    **{f"target_{i}": y[a:b, i] for i in range(3)},
                }
            ),
            d / f"part{part}.parquet",
        )
        client.upload_file(str(d / f"part{part}.parquet"), "bce", f"ds/part{part}.parquet")
    np.save(d / "x.npy", x)
    client.upload_file(str(d / "p.parquet"), "bce", "p.parquet")
    client.upload_file(str(d / "l.parquet"), "bce", "l.parquet")
    client.upload_file(str(d / "x.npy"), "bce", "x.npy")
    query = f"?endpoint_override={endpoint}&scheme=http&region=us-east-1"
    try:
        yield query, x, y
    finally:
        server.stop()
        mp.undo()


def _read(spec):
    with open_inputs(spec) as inp:
        bs = list(inp.batches())
    return inp, np.concatenate([b.logits for b in bs]), np.concatenate([b.targets for b in bs])


def test_s3_two_parquet_files(s3):
    q, x, y = s3
    inp, L, T = _read(InputSpec(f"s3://bce/p.parquet{q}", f"s3://bce/l.parquet{q}", batch_rows=128))
    np.testing.assert_array_equal(L, x)
    np.testing.assert_array_equal(T, y)
    assert inp.n_rows == 1000 and inp.class_names == ["target_0", "target_1", "target_2"]
    assert inp.sources["preds"]["files"][0].startswith("s3://")


def test_s3_dataset_directory_and_glob(s3):
    q, x, y = s3
    for src in (f"s3://bce/ds{q}", f"s3://bce/ds/part*.parquet{q}"):
        inp, L, T = _read(InputSpec(src, batch_rows=333))
        np.testing.assert_array_equal(L, x)
        np.testing.assert_array_equal(T, y)
        assert len(inp.sources["preds"]["files"]) == 2


def test_s3_npy_with_parquet_labels(s3):
    q, x, y = s3
    _, L, T = _read(InputSpec(f"s3://bce/x.npy{q}", f"s3://bce/l.parquet{q}", batch_rows=100))
    np.testing.assert_array_equal(L, x)
    np.testing.assert_array_equal(T, y)


def test_s3_missing_object(s3):
    q, _, _ = s3
    with pytest.raises(BCEInputError) as ei:
        open_inputs(InputSpec(f"s3://bce/nope.parquet{q}"))
    assert "s3://bce/nope.parquet" in str(ei.value)


def test_s3_open_targets(s3):
    from bce_cli.data import open_targets

    q, _, y = s3
    with open_targets(f"s3://bce/l.parquet{q}", batch_rows=300) as inp:
        T = np.concatenate([b.targets for b in inp.batches()])
    assert inp.class_names == ["target_0", "target_1", "target_2"]
    np.testing.assert_array_equal(T, y)
