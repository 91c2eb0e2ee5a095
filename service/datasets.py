"""Datasets: store a parsed upload, look datasets up, list them, give their rows back.

A dataset's rows live in the dataset store (`service.dataset_store`, Parquet parts) and its SQL
row describes them (columns with their statistics, target, row count, bytes, checksum,
location). Parsing and checking what users upload is `service.ingest`'s job (and, for files
streamed in, `service.csv_stream`'s); both end here: `create_dataset` adds the row once every
part is stored. Readers need only the row: `read_chunks` streams the rows back one row group at
a time, typed as the row describes them.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.orm import Session

from core.model import array_from_bytes
from core.table import Table, table_from_bytes
from service.columnar import (
    batch_as_uploaded,
    batch_targets,
    batch_to_table,
    table_to_batch,
    uploaded_schema,
)
from service.dataset_store import (
    ORPHAN_AFTER_S,
    DatasetStore,
    StoredRows,
    StoreError,
    store_for,
    target_columns,
)
from service.db import iso_utc, paginate, session_scope
from service.ingest import ParsedDataset
from service.problems import ApiError
from service.tables import Dataset, DatasetData, is_id, new_id


@dataclass
class DatasetFacts:
    """What describes a dataset whose rows are being stored: everything its SQL row holds but
    the storage figures (`StoredRows`)."""

    name: str
    feature_names: list[str]
    #: one description per feature column, as `core.table.Column.describe()` gives it, with the
    #: column's final type
    columns: list[dict[str, Any]]
    target_name: str | None
    target_kind: str  # "numeric" or "labels"
    classes: list[Any] | None
    n_targets: int = 1
    warnings: list[dict[str, Any]] = field(default_factory=list)


def facts_of(parsed: ParsedDataset) -> DatasetFacts:
    return DatasetFacts(
        name=parsed.name,
        feature_names=parsed.table.names,
        columns=parsed.table.describe(),
        target_name=parsed.target_name,
        target_kind=parsed.target_kind,
        classes=parsed.classes,
        n_targets=parsed.n_targets,
    )


def create_dataset(
    session: Session, facts: DatasetFacts, stored: StoredRows, owner: str, dataset_id: str
) -> Dataset:
    """Add the row of a dataset whose rows `stored` holds (flushed; the caller commits)."""
    dataset = Dataset(
        id=dataset_id,
        owner=owner,
        name=facts.name,
        n_samples=stored.n_rows,
        n_features=len(facts.feature_names),
        n_targets=facts.n_targets,
        target_kind=facts.target_kind,
        classes=facts.classes,
        feature_names=facts.feature_names,
        columns=facts.columns,
        target_name=facts.target_name,
        location=stored.location,
        n_bytes=stored.n_bytes,
        checksum=stored.checksum,
        warnings=facts.warnings or None,
    )
    session.add(dataset)
    session.flush()
    return dataset


def write_rows(
    store: DatasetStore,
    dataset_id: str,
    table: Table,
    targets: np.ndarray,
    target_kind: str,
    classes: list[Any] | None,
) -> StoredRows:
    """Write rows held in memory (a JSON body, a blob stored before the store) as one batch."""
    n_targets = 1 if targets.ndim == 1 else int(targets.shape[1])
    batch = table_to_batch(table, targets, target_kind, classes, target_columns(n_targets))
    with store.writer(dataset_id) as writer:
        writer.write(batch)
        return writer.commit()


def new_dataset(session: Session, parsed: ParsedDataset, owner: str, store_url: str) -> Dataset:
    """Store a dataset parsed in memory and add its row (flushed; the caller commits)."""
    dataset_id = new_id()
    stored = write_rows(
        store_for(store_url),
        dataset_id,
        parsed.table,
        parsed.targets,
        parsed.target_kind,
        parsed.classes,
    )
    return create_dataset(session, facts_of(parsed), stored, owner, dataset_id)


def _types(dataset: Dataset) -> list[str]:
    if dataset.columns:
        return [c["type"] for c in dataset.columns]
    return ["numeric"] * dataset.n_features


def _stored_at(dataset: Dataset) -> tuple[DatasetStore, str]:
    if dataset.location is None:
        raise LookupError(f"dataset {dataset.id} has not been moved to the dataset store")
    return DatasetStore.at(dataset.location)


def read_chunks(dataset: Dataset) -> Iterator[tuple[Table, np.ndarray]]:
    """The dataset's rows one row group at a time, in order: the feature table (typed as the
    dataset's row says) and the targets (int64 class indices for labels, else float64
    `(n, n_targets)`)."""
    store, dataset_id = _stored_at(dataset)
    names = dataset.feature_names or [f"x{j}" for j in range(dataset.n_features)]
    types = _types(dataset)
    targets = target_columns(dataset.n_targets)
    for batch in store.read_batches(dataset_id):
        yield (
            batch_to_table(batch, names, types),
            batch_targets(batch, targets, dataset.target_kind, dataset.classes),
        )


def read_targets(dataset: Dataset) -> Iterator[np.ndarray]:
    """The dataset's targets one row group at a time (only their columns are read)."""
    store, dataset_id = _stored_at(dataset)
    names = target_columns(dataset.n_targets)
    for batch in store.read_batches(dataset_id, columns=names):
        yield batch_targets(batch, names, dataset.target_kind, dataset.classes)


@dataclass
class StoredSource:
    """A stored dataset as training reads it (`core.rows.RowSource`): one chunk per row group,
    the targets from their own column. Holds no session: only what the dataset's row says."""

    dataset: Dataset

    @property
    def n_rows(self) -> int:
        return self.dataset.n_samples

    def chunks(self) -> Iterator[tuple[Table, np.ndarray]]:
        return read_chunks(self.dataset)

    def targets(self) -> np.ndarray:
        parts = list(read_targets(self.dataset))
        if not parts:
            raise LookupError(f"dataset {self.dataset.id} has no rows in the store")
        return np.concatenate(parts)

    def target_chunks(self) -> Iterator[np.ndarray]:
        """The targets one row group at a time, so that training keeps them in its own (mapped)
        storage rather than a whole float64 array built beside the parts."""
        empty = True
        for part in read_targets(self.dataset):
            empty = False
            yield part
        if empty:
            raise LookupError(f"dataset {self.dataset.id} has no rows in the store")


def load_data(session: Session, dataset_id: str) -> tuple[Table, np.ndarray]:
    """A stored dataset's whole feature table and targets array (for tables that fit in
    memory: evaluating a model, giving the rows back; training streams with `read_chunks`)."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.deleted_at is not None:
        raise LookupError(f"no dataset {dataset_id}")
    tables, targets = [], []
    for table, y in read_chunks(dataset):
        tables.append(table)
        targets.append(y)
    if not tables:
        raise LookupError(f"dataset {dataset_id} has no rows in the store")
    return Table.concat(tables), np.concatenate(targets)


def delete_orphans(
    factory: Any, store_url: str, older_than_s: float = ORPHAN_AFTER_S, now: float | None = None
) -> list[str]:
    """Delete the parts of datasets that never got their SQL row (an API process killed while
    it stored an upload), once their newest part is `older_than_s` old. The ids deleted."""
    store = store_for(store_url)
    cutoff = (time.time() if now is None else now) - older_than_s
    stale = [key for key, mtime in store.dataset_ids().items() if mtime < cutoff]
    if not stale:
        return []
    with factory() as session:
        known = set(session.scalars(sa.select(Dataset.id).where(Dataset.id.in_(stale))))
    orphans = [key for key in stale if key not in known]
    for key in orphans:
        store.delete(key)
    return orphans


def move_to_store(factory: Any, store_url: str) -> int:
    """Move the rows of datasets stored before the dataset store (`dataset_data`) into it, one
    dataset per transaction: write its parts, record where, delete the old row. A move cut
    short is done again from the start (its parts are rewritten). The number moved."""
    store = store_for(store_url)
    moved = 0
    with session_scope(factory) as session:
        pending = session.scalars(sa.select(Dataset.id).where(Dataset.location.is_(None))).all()
    for dataset_id in pending:
        with session_scope(factory) as session:
            dataset = session.get(Dataset, dataset_id)
            data = session.get(DatasetData, dataset_id)
            if dataset is None or data is None or dataset.location is not None:
                continue
            store.delete(dataset_id)  # what a move cut short left
            stored = write_rows(
                store,
                dataset_id,
                table_from_bytes(data.features, dataset.feature_names),
                array_from_bytes(data.targets),
                dataset.target_kind,
                dataset.classes,
            )
            dataset.location = stored.location
            dataset.n_bytes = stored.n_bytes
            dataset.checksum = stored.checksum
            session.delete(data)
            moved += 1
    return moved


def describe(dataset: Dataset) -> dict[str, Any]:
    """What `GET /datasets/{id}` shows: sizes, columns, the target."""
    out: dict[str, Any] = {
        "id": dataset.id,
        "name": dataset.name,
        "n_samples": dataset.n_samples,
        "n_features": dataset.n_features,
        "n_targets": dataset.n_targets,
        "columns": dataset.columns or [],
        "target": {
            "name": dataset.target_name,
            "kind": target_kind(dataset),
            "classes": dataset.classes,
        },
        "storage": {"format": "parquet", "bytes": dataset.n_bytes, "checksum": dataset.checksum},
        "warnings": dataset.warnings or [],
        "created_at": iso_utc(dataset.created_at),
        "expires_at": iso_utc(dataset.expires_at),
    }
    if dataset.classes is not None:
        out["classes"] = dataset.classes
    if dataset.feature_names is not None:
        out["feature_names"] = dataset.feature_names
    return out


def target_kind(dataset: Dataset) -> str:
    """ "labels" (strings or booleans), "integers" (one column of ints: labels or numbers),
    "numeric" (numbers, one column per output)."""
    if dataset.target_kind == "labels":
        return "labels"
    return "integers" if dataset.classes is not None else "numeric"


def target_values(dataset: Dataset, targets: np.ndarray) -> list[Any]:
    """Stored targets as submitted: labels in their own type (ints or strings), numbers, or a
    list of numbers per row for several outputs."""
    if dataset.target_kind == "labels":
        classes = dataset.classes or []
        return [classes[i] for i in targets.reshape(-1).tolist()]
    if dataset.classes is not None:  # one column of integer labels
        return [int(v) for v in targets.reshape(-1).tolist()]
    if dataset.n_targets == 1:
        return list(targets.reshape(-1).tolist())
    return list(targets.tolist())


def uploaded_names(dataset: Dataset) -> tuple[list[str], list[str]]:
    """The feature column names, and the target's as the dataset's columns out (CSV, JSON
    lines, Parquet) name it: its own name (`target` when it has none), or `<name>_0`,
    `<name>_1`, ... for several outputs."""
    names = dataset.feature_names or [f"x{j}" for j in range(dataset.n_features)]
    target = dataset.target_name or "target"
    if dataset.n_targets == 1:
        return names, [target]
    return names, [f"{target}_{j}" for j in range(dataset.n_targets)]


def uploaded_batches(dataset: Dataset) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The dataset's rows as they were uploaded, one row group at a time: the feature columns
    by name (numbers `float64`, categories text, null where missing), then the target: labels
    as text, integer targets `int64`, numbers `float64` (`uploaded_names`). The first row
    group is read at once, so an unreachable store is a 503 before any answer starts; the rest
    needs only the store, not this session."""
    names, out_targets = uploaded_names(dataset)
    if dataset.target_kind == "labels":
        target_type = pa.string()
    else:
        target_type = pa.int64() if dataset.classes is not None else pa.float64()
    schema = uploaded_schema(names, _types(dataset), out_targets, target_type)
    stored_targets = target_columns(dataset.n_targets)
    store, dataset_id = _stored_at(dataset)
    batches = (
        batch_as_uploaded(batch, names, stored_targets, schema)
        for batch in store.read_batches(dataset_id)
    )
    try:
        first = list(itertools.islice(batches, 1))
    except StoreError as exc:
        raise ApiError(503, f"The dataset store is unavailable: {exc}") from None
    return schema, itertools.chain(first, batches)


def dataset_rows(dataset: Dataset) -> Iterator[str]:
    """The rows as submitted, as the text of one JSON object streamed a row group at a time
    (the API never holds them all): `{"id", "features", "targets"}`, `features` numbers,
    strings and null for a missing cell in the `feature_names` order, `targets` as
    `target_values` gives them. Two passes over the store: the features, then the targets'
    columns alone."""
    yield '{"id": ' + json.dumps(dataset.id) + ', "features": ['
    first = True
    for table, _ in read_chunks(dataset):
        rows = table.rows()
        if rows:
            yield ("" if first else ",") + ",".join(json.dumps(r, allow_nan=False) for r in rows)
            first = False
    yield '], "targets": ['
    first = True
    for targets in read_targets(dataset):
        values = target_values(dataset, targets)
        if values:
            yield ("" if first else ",") + ",".join(json.dumps(v) for v in values)
            first = False
    yield "]}"


def find_dataset(session: Session, dataset_id: str, owner: str) -> Dataset | None:
    """The owner's dataset with this id; None for another owner's (as for no dataset)."""
    if not is_id(dataset_id):
        return None
    return session.scalars(
        sa.select(Dataset).where(
            Dataset.id == dataset_id, Dataset.owner == owner, Dataset.deleted_at.is_(None)
        )
    ).one_or_none()


def get_dataset(session: Session, dataset_id: str, owner: str) -> Dataset:
    dataset = find_dataset(session, dataset_id, owner)
    if dataset is None:
        raise ApiError(404, f"No dataset with id {dataset_id!r}.")
    return dataset


def list_datasets(
    session: Session, owner: str, page: int, page_size: int
) -> tuple[list[Dataset], int]:
    return paginate(
        session,
        sa.select(Dataset)
        .where(Dataset.owner == owner, Dataset.deleted_at.is_(None))
        .order_by(Dataset.created_at.desc(), Dataset.id.desc()),
        page,
        page_size,
    )
