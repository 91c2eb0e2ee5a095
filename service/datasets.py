"""Datasets: parse JSON bodies and CSV files into the stored arrays, validate, store.

Stored formats are those of `service.modelspec`: float64 features `(n_samples, n_features)`;
`target_kind == "numeric"`: float64 targets `(n_samples, n_targets)`, with `classes` the sorted
distinct values when the targets are one column of integers (so they can serve as class labels);
`target_kind == "labels"` (strings or booleans): int64 class indices `(n_samples,)` into
`classes`. Everything is checked here, before anything is stored.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.config import Limits
from service.errors import ApiError, InputError
from service.models import Dataset, is_id
from service.modelspec import array_from_bytes, array_to_bytes


@dataclass
class ParsedDataset:
    name: str
    features: np.ndarray  # float64 (n_samples, n_features)
    targets: np.ndarray  # float64 (n_samples, n_targets) or int64 (n_samples,)
    target_kind: str  # "numeric" or "labels"
    classes: list[Any] | None
    feature_names: list[str] | None = None

    @property
    def n_samples(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.features.shape[1])

    @property
    def n_targets(self) -> int:
        return 1 if self.targets.ndim == 1 else int(self.targets.shape[1])


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_matrix(
    rows: Any, field: str, limits: Limits, *, max_columns: int | None = None
) -> np.ndarray:
    """A JSON list of equally long lists of finite numbers as float64 `(n, m)`, or 422."""
    if not isinstance(rows, list):
        raise InputError(field, "must be a list of rows (lists of numbers)")
    if not rows:
        raise InputError(field, "is empty: at least one row is needed")
    if len(rows) > limits.max_rows:
        raise InputError(field, f"has {len(rows)} rows; the limit is {limits.max_rows}")
    first = rows[0]
    if not isinstance(first, list):
        raise InputError(field, f"row 0 is {_describe(first)}, not a list of numbers")
    width = len(first)
    if width == 0:
        raise InputError(field, "row 0 is empty: at least one column is needed")
    cap = limits.max_features if max_columns is None else max_columns
    if width > cap:
        raise InputError(field, f"has {width} columns; the limit is {cap}")
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise InputError(field, f"row {i} is {_describe(row)}, not a list of numbers")
        if len(row) != width:
            raise InputError(
                field, f"rows have different lengths: row 0 has {width}, row {i} has {len(row)}"
            )
    kinds = {type(v) for row in rows for v in row}
    if not kinds <= {int, float}:
        for i, row in enumerate(rows):
            for j, v in enumerate(row):
                if not _is_number(v):
                    raise InputError(field, f"row {i}, column {j}: {_describe(v)} is not a number")
    try:
        array = np.array(rows, dtype=np.float64)
    except (OverflowError, ValueError) as exc:
        raise InputError(field, f"holds a number out of range: {exc}") from None
    if not np.isfinite(array).all():
        i, j = np.argwhere(~np.isfinite(array))[0]
        raise InputError(field, f"row {i}, column {j}: {array[i, j]} is not a finite number")
    return array


def parse_targets(
    values: Any, n_samples: int, field: str, limits: Limits
) -> tuple[np.ndarray, str, list[Any] | None]:
    """Targets as `(array, target_kind, classes)`; see the module docstring for the rules."""
    if not isinstance(values, list):
        raise InputError(field, "must be a list with one target per row")
    if len(values) != n_samples:
        raise InputError(field, f"has {len(values)} entries but there are {n_samples} rows")
    kinds = {type(v) for v in values}
    if kinds == {list}:
        array = parse_matrix(values, field, limits, max_columns=limits.max_width)
        return array, "numeric", None
    if kinds <= {int, float}:
        try:
            array = np.array(values, dtype=np.float64).reshape(-1, 1)
        except OverflowError as exc:
            raise InputError(field, f"holds a number out of range: {exc}") from None
        if not np.isfinite(array).all():
            i = int(np.argwhere(~np.isfinite(array))[0][0])
            raise InputError(field, f"entry {i}: {values[i]} is not a finite number")
        classes: list[Any] | None = None
        if kinds == {int}:
            distinct = sorted(set(values))
            if len(distinct) <= limits.max_classes:
                classes = distinct
        return array, "numeric", classes
    if kinds in ({str}, {bool}):
        for i, v in enumerate(values):
            if isinstance(v, str) and "\x00" in v:
                raise InputError(field, f"entry {i}: labels cannot hold NUL characters")
        distinct = sorted(set(values))
        if len(distinct) > limits.max_classes:
            raise InputError(
                field, f"has {len(distinct)} classes; the limit is {limits.max_classes}"
            )
        index = {label: k for k, label in enumerate(distinct)}
        array = np.array([index[v] for v in values], dtype=np.int64)
        return array, "labels", distinct
    for i, v in enumerate(values):
        if not (_is_number(v) or isinstance(v, str | bool | list)):
            raise InputError(field, f"entry {i}: {_describe(v)} is not a valid target")
    raise InputError(
        field,
        "mixes kinds of targets: use numbers, lists of numbers, or labels (all strings, "
        "all integers or all booleans)",
    )


def parse_json_dataset(data: dict[str, Any], limits: Limits, prefix: str = "") -> ParsedDataset:
    """A dataset from the fields of a JSON body (`name`, `features`, `targets`)."""
    features = parse_matrix(data["features"], f"{prefix}features", limits)
    targets, kind, classes = parse_targets(
        data["targets"], len(features), f"{prefix}targets", limits
    )
    return ParsedDataset(data["name"], features, targets, kind, classes)


def _cell(text: str) -> int | float | str:
    """A CSV cell as an int, a float or (when it is neither) a string."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def parse_csv_dataset(
    raw: bytes, name: str, target: str | None, limits: Limits, field: str = "file"
) -> ParsedDataset:
    """A dataset from a CSV file with a header row; `target` names the target column."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(field, "is not UTF-8 text") from None
    if "\x00" in text:
        raise InputError(field, "holds NUL characters: it is not a text file")
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise InputError(field, f"is not valid CSV: {exc}") from None
    rows = [row for row in rows if row]  # blank lines
    if not rows:
        raise InputError(field, "is empty: a header row and at least one data row are needed")
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    if len(header) < 2:
        raise InputError(field, "needs at least two columns (features and a target)")
    if not body:
        raise InputError(field, "is empty: no data rows after the header")
    if len(body) > limits.max_rows:
        raise InputError(field, f"has {len(body)} rows; the limit is {limits.max_rows}")
    if len(header) - 1 > limits.max_features:
        raise InputError(
            field, f"has {len(header) - 1} feature columns; the limit is {limits.max_features}"
        )
    if target is None or target == "":
        t = len(header) - 1
    elif target in header:
        t = header.index(target)
    else:
        raise InputError("target", f"no column named {target!r}; the columns are {header}")
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise InputError(field, f"line {i} has {len(row)} fields; the header has {len(header)}")
    columns = list(zip(*body, strict=True))
    features = np.empty((len(body), len(header) - 1), dtype=np.float64)
    j = 0
    for c, column in enumerate(columns):
        if c == t:
            continue
        for i, cell in enumerate(column):
            value = _cell(cell.strip())
            if isinstance(value, str):
                raise InputError(
                    field,
                    f"line {i + 2}, column {header[c]!r}: {_describe(cell)} is not a number",
                )
            if not math.isfinite(value):
                raise InputError(
                    field, f"line {i + 2}, column {header[c]!r}: {cell} is not a finite number"
                )
            features[i, j] = value
        j += 1
    cells = [_cell(cell.strip()) for cell in columns[t]]
    if any(isinstance(v, str) for v in cells):
        values: list[Any] = [cell.strip() for cell in columns[t]]
        if any(v == "" for v in values):
            raise InputError(field, f"column {header[t]!r} has empty cells")
    else:
        values = cells
    targets, kind, classes = parse_targets(values, len(body), field, limits)
    names = [h for c, h in enumerate(header) if c != t]
    return ParsedDataset(name, features, targets, kind, classes, names)


def new_dataset(parsed: ParsedDataset, owner: str) -> Dataset:
    """The (not yet added) row for a parsed dataset."""
    return Dataset(
        owner=owner,
        name=parsed.name,
        n_samples=parsed.n_samples,
        n_features=parsed.n_features,
        n_targets=parsed.n_targets,
        target_kind=parsed.target_kind,
        classes=parsed.classes,
        feature_names=parsed.feature_names,
        features=array_to_bytes(parsed.features),
        targets=array_to_bytes(parsed.targets),
    )


def create_dataset(session: Session, parsed: ParsedDataset, owner: str) -> Dataset:
    """Add the dataset (flushed; the caller commits)."""
    dataset = new_dataset(parsed, owner)
    session.add(dataset)
    session.flush()
    return dataset


def dataset_rows(dataset: Dataset) -> dict[str, Any]:
    """The rows as submitted: `features`, and `targets` as numbers (a list per row for several
    outputs) or as labels in their own type (ints or strings)."""
    features = array_from_bytes(dataset.features)
    targets = array_from_bytes(dataset.targets)
    if dataset.target_kind == "labels":
        classes = dataset.classes or []
        values: list[Any] = [classes[i] for i in targets.reshape(-1).tolist()]
    elif dataset.classes is not None:  # one column of integer labels
        values = [int(v) for v in targets.reshape(-1).tolist()]
    elif dataset.n_targets == 1:
        values = targets.reshape(-1).tolist()
    else:
        values = targets.tolist()
    return {"id": dataset.id, "features": features.tolist(), "targets": values}


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
    where = Dataset.owner == owner
    total = session.scalar(sa.select(sa.func.count()).select_from(Dataset).where(where)) or 0
    rows = session.scalars(
        sa.select(Dataset)
        .where(where)
        .order_by(Dataset.created_at.desc(), Dataset.id.desc())
        .limit(page_size)
        .offset((page - 1) * page_size)
    ).all()
    return list(rows), total
