"""A dataset's rows in the store and its description in SQL: what was stored reads back the
same (in chunks, typed by the description), and the parts of an upload that never got its row
are deleted once old enough, on a file:// store and on the real S3 server."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.table import Table, categorical_from_texts, numeric_column
from service import datasets
from service.dataset_store import TARGET, DatasetStore, store_for
from service.db import session_scope
from service.ingest import ParsedDataset
from service.problems import ApiError
from service.tables import Dataset
from tests.support import free_port
from tests.support.s3 import S3Server


@pytest.fixture(params=["file", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return (tmp_path / "store").as_uri()
    return str(request.getfixturevalue("s3_server").url())  # a prefix of the test's own


def parsed(n: int = 30) -> ParsedDataset:
    x = np.arange(n, dtype=np.float64)
    x[3] = np.nan
    colours: list[str | None] = ["red", "green", None][:3] * (n // 3)
    table = Table([numeric_column("x", x), categorical_from_texts("colour", colours)])
    labels = np.arange(n) % 2
    return ParsedDataset("d", table, labels.astype(np.int64), "labels", ["no", "yes"], "y", True)


def test_a_stored_dataset_reads_back_as_it_was_given(
    factory: sessionmaker[Session], store_url: str
) -> None:
    given = parsed()
    with session_scope(factory) as session:
        dataset = datasets.new_dataset(session, given, "alice", store_url)
        dataset_id = dataset.id
    with session_scope(factory) as session:
        row = session.get(Dataset, dataset_id)
        assert row is not None and row.location == f"{store_url}/datasets/{dataset_id}"
        store = store_for(store_url)
        assert row.n_bytes == store.size(dataset_id) > 0 and len(row.checksum or "") == 64
        assert row.n_samples == 30
        table, targets = datasets.load_data(session, dataset_id)
        source = datasets.StoredSource(row)
        np.testing.assert_array_equal(source.targets(), given.targets)
        # training takes them a row group at a time (core.rows.target_chunks)
        chunks = list(source.target_chunks())
        assert len(chunks) == 1 and chunks[0].dtype == given.targets.dtype
        np.testing.assert_array_equal(np.concatenate(chunks), given.targets)
    assert table.rows() == given.table.rows()
    np.testing.assert_array_equal(targets, given.targets)
    # the labels are stored as their text, the description keeps their order
    stored = pa.Table.from_batches(list(store.read_batches(dataset_id, columns=[TARGET])))
    assert stored.column(TARGET).to_pylist()[:3] == ["no", "yes", "no"]


def test_parts_without_a_row_are_deleted_once_old(
    factory: sessionmaker[Session], store_url: str
) -> None:
    store = store_for(store_url)
    with session_scope(factory) as session:
        kept = datasets.new_dataset(session, parsed(), "alice", store_url).id
    with store.writer("f" * 32) as writer:  # an upload whose API process died before its row
        writer.write(pa.record_batch({"x": pa.array([1.0, 2.0])}))
        writer.commit()
    assert datasets.delete_orphans(factory, store_url) == []  # fresh: perhaps still uploading
    assert store.parts("f" * 32)
    later = time.time() + 7 * 3600
    assert datasets.delete_orphans(factory, store_url, now=later) == ["f" * 32]
    assert store.parts("f" * 32) == [] and store.parts(kept)
    assert datasets.delete_orphans(factory, store_url, now=later) == []


def test_a_location_names_its_store_and_dataset(tmp_path: Path) -> None:
    url = (tmp_path / "s").as_uri()
    store, dataset_id = DatasetStore.at(f"{url}/datasets/{'a' * 32}")
    assert store.url == url and dataset_id == "a" * 32
    with pytest.raises(ValueError, match="not a dataset's location"):
        DatasetStore.at(url)


def test_rows_as_uploaded_read_back_from_either_store(
    factory: sessionmaker[Session], store_url: str
) -> None:
    """`uploaded_batches`: the columns a download has, the first row group read at once."""
    with session_scope(factory) as session:
        dataset = datasets.new_dataset(session, parsed(), "alice", store_url)
        schema, batches = datasets.uploaded_batches(dataset)
    assert schema.names == ["x", "colour", "y"]
    assert [f.type for f in schema] == [pa.float64(), pa.string(), pa.string()]
    table = pa.Table.from_batches(list(batches), schema=schema)
    assert table.column("x").to_pylist()[:5] == [0.0, 1.0, 2.0, None, 4.0]
    assert table.column("colour").to_pylist()[:3] == ["red", "green", None]
    assert table.column("y").to_pylist()[:3] == ["no", "yes", "no"]


def test_an_unreachable_store_is_a_503_before_a_download_starts(
    factory: sessionmaker[Session], s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with session_scope(factory) as session:
        dataset = datasets.new_dataset(session, parsed(), "alice", s3_server.url())
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    store_for.cache_clear()  # a store (its filesystem) made with the closed port
    try:
        with pytest.raises(ApiError) as caught:
            datasets.uploaded_batches(dataset)
        assert caught.value.status == 503
    finally:
        store_for.cache_clear()
