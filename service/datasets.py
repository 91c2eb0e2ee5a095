"""Datasets: store a parsed upload, look datasets up, list them, give their rows back.

Parsing and checking what users upload is `service.ingest`'s job; the stored formats are in
`service.tables.DatasetData`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from core.model import array_from_bytes, array_to_bytes
from core.table import Table, table_from_bytes, table_to_bytes
from service.db import iso_utc, paginate
from service.errors import ApiError
from service.ingest import ParsedDataset
from service.tables import Dataset, DatasetData, is_id


def new_dataset(parsed: ParsedDataset, owner: str) -> Dataset:
    """The (not yet added) row for a parsed dataset, with its data row."""
    return Dataset(
        owner=owner,
        name=parsed.name,
        n_samples=parsed.n_samples,
        n_features=parsed.n_features,
        n_targets=parsed.n_targets,
        target_kind=parsed.target_kind,
        classes=parsed.classes,
        feature_names=parsed.table.names,
        columns=parsed.table.describe(),
        target_name=parsed.target_name,
        data=DatasetData(
            features=table_to_bytes(parsed.table), targets=array_to_bytes(parsed.targets)
        ),
    )


def load_data(session: Session, dataset_id: str) -> tuple[Table, np.ndarray]:
    """A stored dataset's feature table and targets array."""
    row = session.get(DatasetData, dataset_id)
    if row is None:
        raise LookupError(f"dataset {dataset_id} has no data")
    names = session.scalar(sa.select(Dataset.feature_names).where(Dataset.id == dataset_id))
    return table_from_bytes(row.features, names), array_from_bytes(row.targets)


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
        "created_at": iso_utc(dataset.created_at),
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


def create_dataset(session: Session, parsed: ParsedDataset, owner: str) -> Dataset:
    """Add the dataset (flushed; the caller commits)."""
    dataset = new_dataset(parsed, owner)
    session.add(dataset)
    session.flush()
    return dataset


def dataset_rows(session: Session, dataset: Dataset) -> dict[str, Any]:
    """The rows as submitted: `features` (numbers, strings, null for a missing cell, in the
    `feature_names` order), and `targets` as numbers (a list per row for several outputs) or as
    labels in their own type (ints or strings)."""
    table, targets = load_data(session, dataset.id)
    if dataset.target_kind == "labels":
        classes = dataset.classes or []
        values: list[Any] = [classes[i] for i in targets.reshape(-1).tolist()]
    elif dataset.classes is not None:  # one column of integer labels
        values = [int(v) for v in targets.reshape(-1).tolist()]
    elif dataset.n_targets == 1:
        values = targets.reshape(-1).tolist()
    else:
        values = targets.tolist()
    return {"id": dataset.id, "features": table.rows(), "targets": values}


def find_dataset(session: Session, dataset_id: str, owner: str) -> Dataset | None:
    """The owner's dataset with this id; None for another owner's (as for no dataset)."""
    if not is_id(dataset_id):
        return None
    return session.scalars(
        sa.select(Dataset).where(Dataset.id == dataset_id, Dataset.owner == owner)
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
        .where(Dataset.owner == owner)
        .order_by(Dataset.created_at.desc(), Dataset.id.desc()),
        page,
        page_size,
    )
