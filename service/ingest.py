"""Reading what users upload: JSON bodies and CSV files into typed feature tables and targets.

Feature columns are numeric or categorical with missing cells (`core.table` has the rules);
targets may not be missing. Three dataset forms:
- JSON `{"name", "features": [[cell, ...], ...], "targets": [...]}` (cells: numbers, strings,
  booleans, null);
- JSON `{"name", "rows": [{"col": cell, ...}, ...], "target": "col"}`;
- a CSV file with a header row: streamed into the dataset store by `service.csv_stream`
  (never held whole); here only the CSV of rows to predict on (`table_from_csv`, pandas' C
  reader), which is small.
Every form takes an optional `column_types` (`{"zip": "categorical"}`) that overrides inference.
Everything is checked here, before anything is stored; errors name the field and the line.
"""

from __future__ import annotations

import csv
import io
import itertools
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from types import NoneType
from typing import Any

import numpy as np

from core.table import (
    CATEGORICAL,
    COLUMN_TYPES,
    MISSING_TOKENS,
    NUMERIC,
    Column,
    Table,
    TableError,
    as_category,
    as_number,
    categorical_from_texts,
    column_from_cells,
    default_names,
    is_missing,
    numeric_column,
)
from service.config import Limits
from service.csv_source import check_column_names
from service.problems import InputError


@dataclass
class ParsedDataset:
    name: str
    table: Table
    targets: np.ndarray  # float64 (n_samples, n_targets) or int64 class indices (n_samples,)
    target_kind: str  # "numeric" or "labels"
    classes: list[Any] | None
    target_name: str | None = None
    #: the CSV header / the rows' keys; None for a bare features matrix
    named: bool = False

    @property
    def n_samples(self) -> int:
        return self.table.n_rows

    @property
    def n_features(self) -> int:
        return len(self.table.columns)

    @property
    def n_targets(self) -> int:
        return 1 if self.targets.ndim == 1 else int(self.targets.shape[1])


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


# ---- targets -------------------------------------------------------------------------------


def parse_targets(
    values: Any, n_samples: int, field: str, limits: Limits, *, line_offset: int = 0
) -> tuple[np.ndarray, str, list[Any] | None]:
    """Targets as `(array, target_kind, classes)`: numbers (float64 `(n, 1)`; `classes` the
    sorted distinct values when they are all integers), lists of numbers (several outputs), or
    labels (all strings or all booleans: int64 indices into the sorted `classes`)."""
    if not isinstance(values, list):
        raise InputError(field, "must be a list with one target per row")
    if len(values) != n_samples:
        raise InputError(field, f"has {len(values)} entries but there are {n_samples} rows")
    for i, v in enumerate(values):
        if is_missing(v):
            where = f"line {i + line_offset}" if line_offset else f"entry {i}"
            raise InputError(field, f"{where}: the target is missing; every row needs one")
    kinds = {type(v) for v in values}
    if kinds == {list}:
        array = parse_number_matrix(values, field, limits, max_columns=limits.max_width)
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


def parse_number_matrix(
    rows: Any, field: str, limits: Limits, *, max_columns: int | None = None
) -> np.ndarray:
    """A JSON list of equally long lists of finite numbers as float64 `(n, m)`, or 422."""
    check_rows(rows, field, limits, max_columns=max_columns)
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


# ---- feature tables --------------------------------------------------------------------------


def check_rows(rows: Any, field: str, limits: Limits, *, max_columns: int | None = None) -> int:
    """Check a list of equally long lists; return the width."""
    if not isinstance(rows, list):
        raise InputError(field, "must be a list of rows (lists of values)")
    if not rows:
        raise InputError(field, "is empty: at least one row is needed")
    if limits.max_rows and len(rows) > limits.max_rows:
        raise InputError(field, f"has {len(rows)} rows; the limit is {limits.max_rows}")
    first = rows[0]
    if not isinstance(first, list):
        raise InputError(field, f"row 0 is {_describe(first)}, not a list of values")
    width = len(first)
    if width == 0:
        raise InputError(field, "row 0 is empty: at least one column is needed")
    cap = limits.max_features if max_columns is None else max_columns
    if width > cap:
        raise InputError(field, f"has {width} columns; the limit is {cap}")
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise InputError(field, f"row {i} is {_describe(row)}, not a list of values")
        if len(row) != width:
            raise InputError(
                field, f"rows have different lengths: row 0 has {width}, row {i} has {len(row)}"
            )
    return width


def _check_cells(rows: list[list[Any]], field: str) -> None:
    if {type(v) for row in rows for v in row} <= {int, float, str, bool, NoneType}:
        return  # what JSON gives; anything else is named below
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            if not (v is None or isinstance(v, int | float | str | bool)):
                raise InputError(
                    field,
                    f"row {i}, column {j}: {_describe(v)} is not a number, string, boolean or null",
                )


def table_error(exc: TableError, field: str, what: str = "row") -> InputError:
    where = []
    if exc.row is not None:
        where.append(f"{what} {exc.row}")
    if exc.column is not None:
        where.append(f"column {exc.column!r}")
    prefix = ", ".join(where)
    return InputError(field, f"{prefix}: {exc.message}" if prefix else exc.message)


def check_column_types(
    column_types: Any, names: list[str], field: str = "column_types"
) -> dict[str, str]:
    if column_types is None:
        return {}
    if not isinstance(column_types, dict):
        raise InputError(field, 'must be an object such as {"zip": "categorical"}')
    for name, kind in column_types.items():
        if name not in names:
            raise InputError(field, f"names no column {name!r}; the columns are {names}")
        if kind not in COLUMN_TYPES:
            raise InputError(
                f"{field}.{name}", f"is {kind!r}; expected one of {list(COLUMN_TYPES)}"
            )
    return dict(column_types)


def table_from_cells(
    rows: Any,
    field: str,
    limits: Limits,
    *,
    names: list[str] | None = None,
    column_types: dict[str, str] | None = None,
) -> Table:
    """A typed table from a JSON matrix of cells (numbers, strings, booleans, null)."""
    width = check_rows(rows, field, limits)
    if names is not None and len(names) != width:
        raise InputError(field, f"rows have {width} values; there are {len(names)} columns")
    names = names or default_names(width)
    if all(type(v) in (int, float) for row in rows for v in row):  # the fast path
        matrix = parse_number_matrix(rows, field, limits)
        columns = [numeric_column(n, matrix[:, j]) for j, n in enumerate(names)]
        types = column_types or {}
        if any(t == CATEGORICAL for t in types.values()):
            columns = [
                column_from_cells(n, [row[j] for row in rows], CATEGORICAL)
                if types.get(n) == CATEGORICAL
                else c
                for j, (n, c) in enumerate(zip(names, columns, strict=True))
            ]
        return Table(columns)
    _check_cells(rows, field)
    types = column_types or {}
    try:
        cells = list(zip(*rows, strict=True))  # the columns, in one pass
        return Table([column_from_cells(n, cells[j], types.get(n)) for j, n in enumerate(names)])
    except TableError as exc:
        raise table_error(exc, field) from None


def table_from_records(
    records: Any,
    field: str,
    limits: Limits,
    *,
    names: list[str] | None = None,
    column_types: dict[str, str] | None = None,
    exclude: str | None = None,
) -> tuple[Table, list[str]]:
    """A table from JSON objects keyed by column name (a missing key is a missing cell).
    `names`: the columns to expect (an unknown key is a 422); None: every key seen, in order."""
    if not isinstance(records, list):
        raise InputError(field, "must be a list of objects ({column: value})")
    if not records:
        raise InputError(field, "is empty: at least one row is needed")
    if limits.max_rows and len(records) > limits.max_rows:
        raise InputError(field, f"has {len(records)} rows; the limit is {limits.max_rows}")
    seen: dict[str, None] = {}
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise InputError(field, f"row {i} is {_describe(record)}, not an object")
        for key in record:
            seen.setdefault(key, None)
    if names is None:
        names = [k for k in seen if k != exclude]
        if not names:
            raise InputError(field, "has no feature columns")
        if len(names) > limits.max_features:
            raise InputError(
                field, f"has {len(names)} feature columns; the limit is {limits.max_features}"
            )
    else:
        unknown = [k for k in seen if k not in names and k != exclude]
        if unknown:
            raise InputError(
                field, f"unknown column {unknown[0]!r}; the model takes the columns {names}"
            )
    matrix = [[record.get(name) for name in names] for record in records]
    _check_cells(matrix, field)
    return table_from_cells(matrix, field, limits, names=names, column_types=column_types), names


def parse_json_dataset(data: dict[str, Any], limits: Limits, prefix: str = "") -> ParsedDataset:
    """A dataset from a JSON body: `features` + `targets`, or `rows` + `target`."""
    if "rows" in data:
        records = data["rows"]
        target = data["target"]
        if isinstance(records, list) and records and all(isinstance(r, dict) for r in records):
            keys = {k for r in records for k in r}
            if target not in keys:
                raise InputError(f"{prefix}target", f"no column named {target!r} in the rows")
            names = [k for k in dict.fromkeys(k for r in records for k in r) if k != target]
            types = check_column_types(data.get("column_types"), names, f"{prefix}column_types")
        else:
            types = {}
        table, names = table_from_records(
            records, f"{prefix}rows", limits, column_types=types, exclude=target
        )
        values = [r.get(target) for r in records]
        targets, kind, classes = parse_targets(values, len(values), f"{prefix}rows", limits)
        return ParsedDataset(data["name"], table, targets, kind, classes, target, named=True)
    features = data["features"]
    width = check_rows(features, f"{prefix}features", limits)
    names = default_names(width)
    types = check_column_types(data.get("column_types"), names, f"{prefix}column_types")
    table = table_from_cells(features, f"{prefix}features", limits, column_types=types)
    targets, kind, classes = parse_targets(
        data["targets"], table.n_rows, f"{prefix}targets", limits
    )
    return ParsedDataset(data["name"], table, targets, kind, classes)


# ---- CSV -----------------------------------------------------------------------------------


def _case_variants(word: str) -> list[str]:
    return [
        "".join(chars)
        for chars in itertools.product(*((c.lower(), c.upper()) for c in word))
        if True
    ]


#: every spelling of the missing-cell tokens, for pandas' `na_values`
NA_VALUES = sorted({v for token in MISSING_TOKENS for v in _case_variants(token)})


def _decode(raw: bytes, field: str) -> str:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(field, "is not UTF-8 text") from None
    if "\x00" in text:
        raise InputError(field, "holds NUL characters: it is not a text file")
    return text


def read_csv(
    raw: bytes,
    field: str,
    limits: Limits,
    column_types: Any = None,
    *,
    min_columns: int = 1,
    types_field: str = "column_types",
    text_columns: Sequence[str] = (),
) -> tuple[list[str], dict[str, Any], dict[str, str]]:
    """(header, {name: pandas Series}, column types asked for) of a CSV file with a header;
    `text_columns` (and the categorical `column_types`) are read as text ("02139" stays so)."""
    import pandas as pd

    text = _decode(raw, field)
    first_line = text.split("\n", 1)[0]
    header_guess = next(iter(csv.reader([first_line])), [])
    if len(header_guess) < max(min_columns, 2) and ";" in first_line:
        raise InputError(
            field,
            "looks semicolon-separated (its header has no commas but has semicolons); "
            "save it with commas as separators",
        )
    if not text.strip():
        raise InputError(field, "is empty: a header row and at least one data row are needed")
    header = check_column_names([h.strip() for h in header_guess], field)
    if len(header) < min_columns:
        raise InputError(field, f"needs at least {min_columns} columns")
    types = check_column_types(column_types, header, types_field)
    dtypes = {name: str for name, kind in types.items() if kind == CATEGORICAL}
    dtypes.update({name: str for name in text_columns if name in header})
    try:
        with warnings.catch_warnings():
            # index_col=False: a row longer than the header is an error (pandas would otherwise
            # take the first column as the index, shifting every cell) instead of a warning
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                io.StringIO(text),
                header=0,
                names=header,
                index_col=False,
                na_values=NA_VALUES,
                keep_default_na=False,
                skipinitialspace=True,
                skip_blank_lines=True,
                dtype=dtypes or None,
                engine="c",
                low_memory=False,
            )
    except pd.errors.ParserWarning:
        raise InputError(
            field, f"has rows with more values than the header's {len(header)} columns"
        ) from None
    except pd.errors.ParserError as exc:
        raise InputError(field, f"is not valid CSV: {str(exc).strip()}") from None
    except pd.errors.EmptyDataError:
        raise InputError(
            field, "is empty: a header row and at least one data row are needed"
        ) from None
    if len(frame) == 0:
        raise InputError(field, "is empty: no data rows after the header")
    _check_short_rows(text, frame, len(header), field)
    if limits.max_rows and len(frame) > limits.max_rows:
        raise InputError(field, f"has {len(frame)} rows; the limit is {limits.max_rows}")
    return header, {name: frame[name] for name in header}, types


def _check_short_rows(text: str, frame: Any, width: int, field: str) -> None:
    """pandas reads a row with fewer values than the header as missing trailing cells: refuse
    it (ragged rows are a broken file, not missing data). Only rows whose last cell came out
    missing are looked at again, by the csv module."""
    suspects = np.flatnonzero(frame.iloc[:, -1].isna().to_numpy())
    if not len(suspects):
        return
    wanted, last = set(suspects.tolist()), int(suspects[-1])
    reader = csv.reader(io.StringIO(text), skipinitialspace=True)
    next(reader, None)  # the header
    row = -1
    for record in reader:
        if not record or (len(record) == 1 and not record[0].strip()):
            continue  # a blank line: pandas skips it too
        row += 1
        if row in wanted and len(record) < width:
            raise InputError(
                field,
                f"line {reader.line_num}: has {len(record)} of the header's {width} columns "
                "(rows have different lengths)",
            )
        if row >= last:
            return


def column_from_series(name: str, series: Any, kind: str | None, field: str) -> Column:
    """A typed column from a pandas Series (lines in errors count the header as line 1)."""
    import pandas as pd

    try:
        if (
            kind != CATEGORICAL
            and pd.api.types.is_numeric_dtype(series.dtype)
            and not (pd.api.types.is_bool_dtype(series.dtype))
        ):
            return numeric_column(name, series.to_numpy(dtype=np.float64, na_value=np.nan))
        if kind == NUMERIC:
            numbers = pd.to_numeric(series, errors="coerce")
            bad = numbers.isna() & ~series.map(is_missing)
            if bad.any():
                row = int(np.argmax(bad.to_numpy()))
                raise TableError(
                    f"{_describe(series.iloc[row])} is not a number", column=name, row=row
                )
            return numeric_column(name, numbers.to_numpy(dtype=np.float64, na_value=np.nan))
        # pandas factorizes the cells in C; only the distinct values go through core.table's
        # rules, so a CSV and a JSON body type a column alike (pandas leaves some numbers as
        # text, e.g. 5000 digits: read as core.table does, an overflow is refused)
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        distinct = uniques.tolist()
        gaps = [is_missing(u) for u in distinct]
        if kind is None and not pd.api.types.is_bool_dtype(series.dtype):
            numbers = [None if gap else as_number(u) for u, gap in zip(distinct, gaps, strict=True)]
            if all(n is not None or gap for n, gap in zip(numbers, gaps, strict=True)):
                lookup = np.array([np.nan if n is None else n for n in numbers] + [np.nan])
                return numeric_column(name, lookup[codes])
        texts = [None if gap else as_category(u) for u, gap in zip(distinct, gaps, strict=True)]
        for text in texts:
            if text is not None and "\x00" in text:
                raise TableError("cells cannot hold NUL characters", column=name)
        levels = sorted({t for t in texts if t is not None})
        index = {level: i for i, level in enumerate(levels)}
        lookup = np.array([-1 if t is None else index[t] for t in texts] + [-1], dtype=np.int32)
        return Column(name, CATEGORICAL, lookup[codes], levels)
    except TableError as exc:
        if exc.row is not None:
            exc.row += 2  # 0-based data row -> file line (the header is line 1)
        raise table_error(exc, field, "line") from None


def table_from_csv(
    raw: bytes,
    names: list[str],
    types: list[str],
    limits: Limits,
    ignored: Collection[str] = (),
) -> Table:
    """Rows to predict on from a CSV file with a header naming (some of) the model's columns:
    a column named in `ignored` (the training target) is left out, another the model does not
    take is a 422, a missing one is all missing cells."""
    text = [n for n, kind in zip(names, types, strict=True) if kind == CATEGORICAL]
    header, series, _ = read_csv(raw, "file", limits, text_columns=text)
    unknown = [h for h in header if h not in names and h not in ignored]
    if unknown and all(as_number(h) is not None for h in header):
        raise InputError(
            "file",
            f"its first row ({', '.join(header[:4])}{', ...' if len(header) > 4 else ''}) looks "
            f"like data, not a header: the file needs a header row naming the model's columns "
            f"{names} (no row was used)",
        )
    if unknown:
        raise InputError(
            "file", f"unknown column {unknown[0]!r}; the model takes the columns {names}"
        )
    n = len(next(iter(series.values())))
    columns = []
    for name, kind in zip(names, types, strict=True):
        if name in series:
            columns.append(column_from_series(name, series[name], kind, "file"))
        elif kind == NUMERIC:
            columns.append(numeric_column(name, np.full(n, np.nan)))
        else:
            columns.append(categorical_from_texts(name, [None] * n))
    return Table(columns)
