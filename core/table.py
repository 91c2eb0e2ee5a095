"""Typed feature columns with missing cells: what a dataset's features are before preprocessing.

A column is **numeric** (float64 values, NaN where a cell is missing) or **categorical** (sorted
distinct string levels and int32 codes into them, -1 where a cell is missing). A column is
numeric when every present cell is a number (or a string that parses as a finite number), else
categorical; `column_types` overrides that per column.

Cells, wherever they come from (JSON values, CSV text, predict rows):
- missing: `None`, a float NaN, or a string that is empty, `NA`, `NaN`, `null` or `None`
  (case-insensitive, surrounding spaces ignored);
- numbers: ints and floats (booleans are not numbers), or strings that parse as one;
- anything else is a category: strings as they are (stripped), booleans as `"true"`/`"false"`,
  numbers in a categorical column as their shortest text (`3.0` -> `"3"`).

Infinite numbers are refused (`TableError`): they cannot be scaled or imputed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import NoneType
from typing import Any

import numpy as np

NUMERIC = "numeric"
CATEGORICAL = "categorical"
COLUMN_TYPES = (NUMERIC, CATEGORICAL)
MISSING_TOKENS = frozenset({"", "na", "nan", "null", "none"})


class TableError(ValueError):
    """A cell or a column that cannot be read; `row` (0-based) and `column` locate it."""

    def __init__(self, message: str, *, column: str | None = None, row: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.column = column
        self.row = row


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, str):
        return value.strip().lower() in MISSING_TOKENS
    return False


def as_number(value: Any) -> float | None:
    """The cell as a float, or None when it is not a number (missing cells are not numbers)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in MISSING_TOKENS:
            return None
        try:
            return float(text)
        except ValueError:
            return None
    return None


def as_category(value: Any) -> str:
    """A present cell as a category level."""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        return str(int(number)) if number.is_integer() and abs(number) < 2**53 else repr(number)
    if isinstance(value, str):
        return value.strip()
    raise TableError(f"{_describe(value)} is neither a number, a string nor a boolean")


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class Column:
    name: str
    kind: str  # NUMERIC or CATEGORICAL
    #: numeric: float64 (n,) with NaN for missing; categorical: int32 codes (n,), -1 missing
    values: np.ndarray
    #: categorical only: the sorted distinct levels that `values` index
    levels: list[str] | None = None

    def __len__(self) -> int:
        return len(self.values)

    @property
    def missing_mask(self) -> np.ndarray:
        if self.kind == NUMERIC:
            return np.isnan(self.values)
        return self.values < 0

    @property
    def n_missing(self) -> int:
        return int(self.missing_mask.sum())

    def take(self, index: np.ndarray) -> Column:
        return Column(self.name, self.kind, self.values[index], self.levels)

    def cells(self) -> list[Any]:
        """The column as JSON values: floats or level strings, None where missing."""
        if self.kind == NUMERIC:
            return [None if math.isnan(v) else v for v in self.values.tolist()]
        levels = self.levels or []
        return [None if c < 0 else levels[c] for c in self.values.tolist()]

    def describe(self, top: int = 10) -> dict[str, Any]:
        """`{"name", "type", "missing", ...}`: min/max/mean/std for numeric, the most frequent
        levels with their counts (and how many distinct) for categorical."""
        out: dict[str, Any] = {"name": self.name, "type": self.kind, "missing": self.n_missing}
        if self.kind == NUMERIC:
            present = self.values[~np.isnan(self.values)]
            stats = (
                (present.min(), present.max(), present.mean(), present.std())
                if len(present)
                else (None,) * 4
            )
            for key, value in zip(("min", "max", "mean", "std"), stats, strict=True):
                out[key] = None if value is None else float(value)
        else:
            levels = self.levels or []
            counts = np.bincount(self.values[self.values >= 0], minlength=len(levels))
            order = np.argsort(-counts, kind="stable")[:top]
            out["n_levels"] = len(levels)
            out["top"] = [{"value": levels[i], "count": int(counts[i])} for i in order]
        return out


def numeric_column(name: str, values: np.ndarray) -> Column:
    """A numeric column from floats (NaN: missing); infinities are refused."""
    array = np.asarray(values, dtype=np.float64)
    bad = np.isinf(array)
    if bad.any():
        row = int(np.argmax(bad))
        raise TableError(f"{array[row]} is not a finite number", column=name, row=row)
    return Column(name, NUMERIC, array)


def categorical_column(name: str, cells: Sequence[Any]) -> Column:
    """A categorical column from cells (missing ones become code -1)."""
    if set(map(type, cells)) <= {str, NoneType}:
        # JSON's usual categorical column: each distinct cell is looked at once (only for
        # strings and nulls: 1, 1.0 and True are one key of a dict, and NaN is none)
        text_of = {v: None if is_missing(v) else as_category(v) for v in set(cells)}
        return categorical_from_texts(name, [text_of[v] for v in cells])
    texts: list[str | None] = []
    for row, value in enumerate(cells):
        if is_missing(value):
            texts.append(None)
            continue
        try:
            texts.append(as_category(value))
        except TableError as exc:
            raise TableError(exc.message, column=name, row=row) from None
    return categorical_from_texts(name, texts)


def categorical_from_texts(name: str, texts: Sequence[str | None]) -> Column:
    for row, text in enumerate(texts):
        if text is not None and "\x00" in text:
            raise TableError("cells cannot hold NUL characters", column=name, row=row)
    levels = sorted({t for t in texts if t is not None})
    index = {level: i for i, level in enumerate(levels)}
    codes = np.fromiter((-1 if t is None else index[t] for t in texts), np.int32, len(texts))
    return Column(name, CATEGORICAL, codes, levels)


def column_from_cells(name: str, cells: Sequence[Any], kind: str | None = None) -> Column:
    """A column from JSON-like cells; `kind` None infers it (see the module docstring)."""
    if kind not in (None, *COLUMN_TYPES):
        raise TableError(f"unknown column type {kind!r}; expected one of {list(COLUMN_TYPES)}")
    if kind == CATEGORICAL:
        return categorical_column(name, cells)
    if set(map(type, cells)) <= {int, float, NoneType}:
        # numbers and nulls: NumPy reads None as NaN, a missing cell (bool is a type of its own)
        try:
            return numeric_column(name, np.array(cells, dtype=np.float64))
        except OverflowError:
            raise TableError("holds a number out of range", column=name) from None
    numbers = np.empty(len(cells), dtype=np.float64)
    for row, value in enumerate(cells):
        number = as_number(value)
        if number is None:
            if is_missing(value):
                numbers[row] = np.nan
                continue
            if kind == NUMERIC:
                raise TableError(f"{_describe(value)} is not a number", column=name, row=row)
            return categorical_column(name, cells)
        numbers[row] = number
    return numeric_column(name, numbers)


@dataclass
class Table:
    """Feature columns of equal length, in the order they were given."""

    columns: list[Column]

    def __post_init__(self) -> None:
        lengths = {len(c) for c in self.columns}
        if len(lengths) > 1:
            raise TableError(f"columns have different lengths: {sorted(lengths)}")

    @property
    def n_rows(self) -> int:
        return len(self.columns[0]) if self.columns else 0

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def types(self) -> list[str]:
        return [c.kind for c in self.columns]

    def take(self, index: np.ndarray) -> Table:
        return Table([c.take(index) for c in self.columns])

    def rows(self) -> list[list[Any]]:
        """The rows as JSON values (None for missing cells)."""
        return [list(row) for row in zip(*(c.cells() for c in self.columns), strict=True)]

    def describe(self) -> list[dict[str, Any]]:
        return [c.describe() for c in self.columns]

    @classmethod
    def concat(cls, tables: Sequence[Table]) -> Table:
        """The rows of `tables` (same columns, same types) one after another; a categorical
        column's levels are the sorted union of theirs."""
        if not tables:
            raise TableError("no tables to join")
        if len(tables) == 1:
            return tables[0]
        return cls(
            [concat_columns([t.columns[j] for t in tables]) for j in range(len(tables[0].columns))]
        )


def concat_columns(columns: Sequence[Column]) -> Column:
    first = columns[0]
    if any(c.kind != first.kind or c.name != first.name for c in columns):
        raise TableError("columns of different names or types cannot be joined", column=first.name)
    if first.kind == NUMERIC:
        return Column(first.name, NUMERIC, np.concatenate([c.values for c in columns]))
    levels = sorted({level for c in columns for level in c.levels or []})
    index = {level: i for i, level in enumerate(levels)}
    parts = []
    for c in columns:
        mapping = np.array([index[level] for level in c.levels or []] + [-1], dtype=np.int32)
        parts.append(mapping[c.values])  # code -1 picks the last entry: still missing
    return Column(first.name, CATEGORICAL, np.concatenate(parts), levels)


def default_names(n: int) -> list[str]:
    """Column names for a features matrix that came without any: x0, x1, ..."""
    return [f"x{i}" for i in range(n)]


def table_from_matrix(
    rows: Sequence[Sequence[Any]],
    names: Sequence[str] | None = None,
    column_types: dict[str, str] | None = None,
) -> Table:
    """A table from equally long rows of cells, columns named `names` (default x0, x1, ...)."""
    width = len(rows[0]) if rows else 0
    names = list(names) if names is not None else default_names(width)
    types = column_types or {}
    columns = []
    for j, name in enumerate(names):
        cells = [row[j] for row in rows]
        columns.append(column_from_cells(name, cells, types.get(name)))
    return Table(columns)


def table_from_records(
    records: Sequence[dict[str, Any]], names: Sequence[str], column_types: dict[str, str] | None
) -> Table:
    """A table from dicts keyed by column name (an absent key is a missing cell)."""
    types = column_types or {}
    return Table(
        [column_from_cells(name, [r.get(name) for r in records], types.get(name)) for name in names]
    )


def conform(
    table_or_rows: Table | Sequence[Sequence[Any]], names: Sequence[str], types: Sequence[str]
) -> Table:
    """Rows (cells in the training column order) read as the training columns were typed: what
    a model is given to predict on. A numeric column refuses text; a categorical one takes
    anything (unseen levels are the preprocessing's business)."""
    if isinstance(table_or_rows, Table):
        return table_or_rows
    rows = table_or_rows
    return Table(
        [
            column_from_cells(name, [row[j] for row in rows], kind)
            for j, (name, kind) in enumerate(zip(names, types, strict=True))
        ]
    )


# ---- storage: one zip of .npy arrays (deflated at a fast level) plus a JSON header -------------

_HEADER = "table.json"


def table_to_bytes(table: Table) -> bytes:
    """The table as a zip of `.npy` arrays (`v{i}` values, `l{i}` levels) and `table.json`
    (names and types); `np.load` reads it back with `allow_pickle=False`. Category codes are
    stored in the narrowest integer type and deflated (they compress well); numbers are stored
    as they are (measured floats rarely compress, and deflating them costs more than it saves)."""
    import io
    import json
    import zipfile

    buf = io.BytesIO()
    header = {"columns": [{"name": c.name, "type": c.kind} for c in table.columns]}
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr(_HEADER, json.dumps(header), zipfile.ZIP_DEFLATED)
        for i, column in enumerate(table.columns):
            arrays = {f"v{i}": column.values}
            if column.levels is not None:
                arrays[f"v{i}"] = column.values.astype(_code_dtype(len(column.levels)))
                arrays[f"l{i}"] = np.array(column.levels, dtype=str)
            for key, array in arrays.items():
                deflate = array.dtype.kind != "f"
                archive.compression = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
                archive.compresslevel = 1 if deflate else None
                with archive.open(f"{key}.npy", "w", force_zip64=True) as out:
                    np.lib.format.write_array(out, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _code_dtype(n_levels: int) -> Any:
    if n_levels < 2**7:
        return np.int8
    if n_levels < 2**15:
        return np.int16
    return np.int32


def table_from_bytes(blob: bytes, names: Sequence[str] | None = None) -> Table:
    """A table stored by `table_to_bytes`, or a legacy float64 `.npy` feature matrix (its
    columns named `names`, default x0, x1, ...)."""
    import io
    import json
    import zipfile

    if not blob.startswith(b"PK"):
        matrix = np.load(io.BytesIO(blob), allow_pickle=False)
        names = list(names) if names else default_names(matrix.shape[1])
        return Table(
            [Column(n, NUMERIC, np.ascontiguousarray(matrix[:, j])) for j, n in enumerate(names)]
        )
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        header = json.loads(archive.read(_HEADER))
        columns = []
        for i, spec in enumerate(header["columns"]):
            with archive.open(f"v{i}.npy") as f:
                values = np.lib.format.read_array(f, allow_pickle=False)
            if spec["type"] == CATEGORICAL:
                values = values.astype(np.int32)
            levels = None
            if spec["type"] == CATEGORICAL:
                with archive.open(f"l{i}.npy") as f:
                    levels = np.lib.format.read_array(f, allow_pickle=False).tolist()
            columns.append(Column(spec["name"], spec["type"], values, levels))
    return Table(columns)
