"""`service.dataset_store` against both of its stores: a `file://` folder and a real S3-compatible
server (SeaweedFS, started by the `s3_server` fixture; never a mock). Parts and row groups are
made small (`PART_ROWS`, `ROW_GROUP_ROWS`) so that a few hundred rows span several of each.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from service import dataset_store
from service.dataset_store import TARGET, DatasetStore, StoreError
from tests.support import free_port
from tests.support.s3 import S3Server, start_s3_server

PART_ROWS = 100
ROW_GROUP_ROWS = 30


@pytest.fixture(autouse=True)
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset_store, "PART_ROWS", PART_ROWS)
    monkeypatch.setattr(dataset_store, "ROW_GROUP_ROWS", ROW_GROUP_ROWS)


@pytest.fixture(params=["file", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store of the test's own: a folder, or a prefix of its own on the session's S3 server."""
    if request.param == "file":
        return (tmp_path / "store").as_uri()
    return f"{request.getfixturevalue('s3_store_url')}/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(store_url: str) -> DatasetStore:
    return DatasetStore(store_url)


def rows(n: int, start: int = 0, color: bool = True) -> pa.Table:
    """`n` rows numbered from `start`: a numeric column with missing cells, a text column (or
    the same numbers as float64 when `color` is False) and a numeric target."""
    ids = range(start, start + n)
    columns: dict[str, Any] = {
        "x": pa.array([None if i % 7 == 0 else i * 0.5 for i in ids], pa.float64()),
        "color": (
            pa.array([["red", "green", None][i % 3] for i in ids], pa.string())
            if color
            else pa.array([float(i % 3) for i in ids], pa.float64())
        ),
        TARGET: pa.array([float(i) for i in ids], pa.float64()),
    }
    return pa.table(columns)


def write(store: DatasetStore, dataset_id: str, *tables: pa.Table, batch: int = 70) -> Any:
    """Write `tables` in batches of `batch` rows; what `commit()` returned."""
    with store.writer(dataset_id) as writer:
        for table in tables:
            for record_batch in table.to_batches(max_chunksize=batch):
                writer.write(record_batch)
        return writer.commit()


def read(store: DatasetStore, dataset_id: str, columns: list[str] | None = None) -> pa.Table:
    return pa.Table.from_batches(list(store.read_batches(dataset_id, columns=columns)))


def test_batches_over_several_parts_read_back_in_order(store: DatasetStore) -> None:
    table = rows(250)
    stored = write(store, "ds-1", table)
    assert (stored.n_rows, stored.n_parts) == (250, 3)  # 100 + 100 + 50
    assert stored.location == store.location("ds-1") == f"{store.url}/datasets/ds-1"
    parts = store.parts("ds-1")
    assert [p.rsplit("/", 1)[1] for p in parts] == [f"part-0000{i}.parquet" for i in range(3)]
    assert all(p.startswith(f"{store.root}/datasets/ds-1/") for p in parts)
    assert [store.open_part(p).metadata.num_rows for p in parts] == [100, 100, 50]

    # one row group at a time, never more rows than a row group, in order; a new store object
    # (another process) reads the same
    batches = list(DatasetStore(store.url).read_batches("ds-1"))
    assert len(batches) >= 9 and max(b.num_rows for b in batches) <= ROW_GROUP_ROWS
    assert pa.Table.from_batches(batches).equals(table)

    by_columns = read(store, "ds-1", columns=[TARGET, "color"])
    assert by_columns.column_names == [TARGET, "color"]
    assert by_columns.equals(table.select([TARGET, "color"]))


def test_a_table_written_whole_is_cut_at_part_rows(store: DatasetStore) -> None:
    table = rows(PART_ROWS * 2 + 1)
    stored = write(store, "whole", table, batch=10_000)
    assert (stored.n_rows, stored.n_parts) == (table.num_rows, 3)
    assert read(store, "whole").equals(table)


def test_a_schema_change_starts_a_new_part(store: DatasetStore) -> None:
    # `color` first looks numeric, then a text cell makes it categorical (a streamed upload)
    numeric, text = rows(40, color=False), rows(40, start=40)
    stored = write(store, "changing", numeric, text)
    assert (stored.n_rows, stored.n_parts) == (80, 2)
    schemas = [store.open_part(p).schema_arrow for p in store.parts("changing")]
    assert schemas[0].field("color").type == pa.float64()
    assert schemas[1].field("color").type == pa.string()
    batches = list(store.read_batches("changing"))
    assert pa.Table.from_batches([b for b in batches if b.schema == numeric.schema]).equals(numeric)
    assert pa.Table.from_batches([b for b in batches if b.schema == text.schema]).equals(text)
    assert [b.column(TARGET)[0].as_py() for b in batches] == sorted(
        b.column(TARGET)[0].as_py() for b in batches
    )


def test_size_and_checksum_describe_the_stored_bytes(store: DatasetStore) -> None:
    table = rows(250)
    first = write(store, "a", table)
    assert store.size("a") == first.n_bytes > 0
    # the checksum is SHA-256 over the parts' own SHA-256 digests, in part order
    digests = []
    for path in store.parts("a"):
        with store.fs.open_input_stream(path) as f:
            digests.append(hashlib.sha256(f.read()).hexdigest())
    assert first.checksum == hashlib.sha256("".join(digests).encode()).hexdigest()

    # the same content, written again, stores the same bytes; other content does not
    again = write(store, "b", table)
    assert (again.checksum, again.n_bytes, again.n_parts) == (
        first.checksum, first.n_bytes, first.n_parts
    )  # fmt: skip
    other = write(store, "c", rows(250, start=1))
    assert other.checksum != first.checksum
    assert store.size("never-written") == 0


def test_row_groups_hold_row_group_rows_whatever_the_batches(store: DatasetStore) -> None:
    table = rows(250)
    first = write(store, "a", table, batch=70)
    again = write(store, "b", table, batch=5)
    for dataset_id in ("a", "b"):
        sizes = []
        for path in store.parts(dataset_id):
            meta = store.open_part(path).metadata
            sizes.append([meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
        assert sizes == [[30, 30, 30, 10], [30, 30, 30, 10], [30, 20]], dataset_id
    assert (again.checksum, again.n_bytes) == (first.checksum, first.n_bytes)


def test_abort_deletes_everything_written(store: DatasetStore, tmp_path: Path) -> None:
    write(store, "kept", rows(10))
    writer = store.writer("half")
    writer.write(rows(150))  # one part closed, one open
    assert store.parts("half")
    writer.abort()
    assert store.parts("half") == [] and list(store.read_batches("half")) == []
    assert set(store.dataset_ids()) == {"kept"}

    # an exception in a `with` block aborts too
    with pytest.raises(ZeroDivisionError), store.writer("failed") as failing:
        failing.write(rows(120))
        1 / 0  # noqa: B018
    assert store.parts("failed") == []
    assert set(store.dataset_ids()) == {"kept"}
    if store.url.startswith("file://"):
        assert not (Path(store.root) / "datasets" / "half").exists()
        assert not (Path(store.root) / "datasets" / "failed").exists()


def test_delete_is_idempotent(store: DatasetStore) -> None:
    write(store, "gone", rows(150))
    write(store, "stays", rows(5))
    store.delete("gone")
    assert store.parts("gone") == [] and store.size("gone") == 0
    store.delete("gone")
    store.delete("never-written")
    assert set(store.dataset_ids()) == {"stays"}
    assert read(store, "stays").equals(rows(5))


def test_dataset_ids_lists_folders_with_their_newest_time(store: DatasetStore) -> None:
    assert store.dataset_ids() == {}
    before = time.time()
    write(store, "one", rows(150))
    write(store, "two", rows(5))
    found = store.dataset_ids()
    assert set(found) == {"one", "two"}
    for mtime in found.values():
        # S3 keeps whole seconds: allow for the rounding and a little clock skew
        assert before - 5 <= mtime <= time.time() + 5, (before, found)


def test_store_urls_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="names no bucket"):
        DatasetStore("s3:///prefix")
    with pytest.raises(ValueError, match="unknown store URL"):
        DatasetStore(f"ftp://{tmp_path}")
    # a file store makes its folder
    DatasetStore((tmp_path / "new" / "store").as_uri())
    assert (tmp_path / "new" / "store").is_dir()


OPERATIONS: dict[str, Callable[[DatasetStore], object]] = {
    "parts": lambda store: store.parts("ds"),
    "read_batches": lambda store: list(store.read_batches("ds")),
    "size": lambda store: store.size("ds"),
    "write": lambda store: write(store, "ds", rows(10)),
    "delete": lambda store: store.delete("ds"),
    "dataset_ids": lambda store: store.dataset_ids(),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_an_unreachable_s3_server_is_a_store_error(
    operation: str, monkeypatch: pytest.MonkeyPatch, s3_server: S3Server
) -> None:
    """A closed port: every operation raises StoreError (the API answers 503), not OSError."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    store = DatasetStore(s3_server.url())
    started = time.monotonic()
    with pytest.raises(StoreError):
        OPERATIONS[operation](store)
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("operation", ["parts", "write", "dataset_ids"])
def test_wrong_credentials_are_a_store_error(
    operation: str, monkeypatch: pytest.MonkeyPatch, s3_server: S3Server
) -> None:
    """The server checks the keys (so the other tests prove that the right ones are used)."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StoreError):
        OPERATIONS[operation](DatasetStore(s3_server.url()))


def test_the_s3_store_keeps_its_objects_in_the_bucket_under_its_prefix(
    s3_server: S3Server,
) -> None:
    url = s3_server.url()
    prefix = url.removeprefix(f"s3://{s3_server.bucket}/")
    write(DatasetStore(url), "ds", rows(150))
    fs = pafs.S3FileSystem(
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        endpoint_override=s3_server.endpoint.removeprefix("http://"),
        scheme="http",
        region=s3_server.region,
    )
    keys = sorted(
        info.path
        for info in fs.get_file_info(pafs.FileSelector(s3_server.bucket, recursive=True))
        if info.type == pafs.FileType.File and f"/{prefix}/" in f"/{info.path}"
    )
    assert keys == [
        f"{s3_server.bucket}/{prefix}/datasets/ds/part-00000.parquet",
        f"{s3_server.bucket}/{prefix}/datasets/ds/part-00001.parquet",
    ]


def test_a_server_that_stops_while_a_dataset_is_read_is_a_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker reading row group by row group when the store goes away (a server of its own,
    stopped half way): StoreError, not OSError."""
    with start_s3_server(tmp_path / "s3") as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        store = DatasetStore(server.url())
        write(store, "ds", rows(250))
        batches = store.read_batches("ds")
        assert next(batches).num_rows == ROW_GROUP_ROWS
        server.proc.stop()
        with pytest.raises(StoreError):
            list(batches)
