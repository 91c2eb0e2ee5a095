"""Typed tables to and from Apache Arrow columns: how a dataset's rows are kept in the store.

A stored batch (`service.dataset_store` has the layout) holds numeric features as `float64`
and categorical ones as strings, null where a cell is missing, and the target as `float64`
numbers or label strings. A dataset's description (its SQL row) has the final type of every
column, so reading needs no guessing: a categorical column that was still numeric when the
first parts were written reads those numbers as their shortest text (`core.table.as_category`,
`3.0` -> `"3"`), as a categorical column given numbers always does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.table import CATEGORICAL, NUMERIC, Column, Table, as_category


def label_text(value: Any) -> str:
    """A class label as stored: booleans as `true`/`false`, integers as digits, text as is."""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    return str(value)


# ---- to Arrow ------------------------------------------------------------------------------------


def column_to_arrow(column: Column) -> pa.Array:
    if column.kind == NUMERIC:
        values = np.asarray(column.values, dtype=np.float64)
        return pa.array(values, mask=np.isnan(values), type=pa.float64())
    levels = pa.array(column.levels or [], type=pa.string())
    codes = np.asarray(column.values, dtype=np.int32)
    indices = pa.array(codes, mask=codes < 0, type=pa.int32())
    return pc.take(levels, indices)


def targets_to_arrow(
    targets: np.ndarray, target_kind: str, classes: Sequence[Any] | None
) -> list[pa.Array]:
    """The target column(s) of a batch: label texts for labels (`targets` class indices), else
    one float64 column per output."""
    if target_kind == "labels":
        texts = pa.array([label_text(c) for c in classes or []], type=pa.string())
        return [pc.take(texts, pa.array(np.asarray(targets, dtype=np.int64).reshape(-1)))]
    matrix = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    return [pa.array(matrix[:, j]) for j in range(matrix.shape[1])]


def table_to_batch(
    table: Table,
    targets: np.ndarray,
    target_kind: str,
    classes: Sequence[Any] | None,
    target_names: Sequence[str],
) -> pa.RecordBatch:
    """A typed table and its targets as one stored batch."""
    arrays = [column_to_arrow(c) for c in table.columns]
    arrays += targets_to_arrow(targets, target_kind, classes)
    return pa.record_batch(arrays, names=[*table.names, *target_names])


# ---- from Arrow ----------------------------------------------------------------------------------


def _plain(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    return array


def _as_text(array: pa.Array) -> pa.Array:
    """Numbers of a column that is categorical as their shortest text (core.table's rule)."""
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return array
    distinct = pc.unique(array).drop_null()
    texts = pa.array([as_category(v) for v in distinct.to_pylist()], type=pa.string())
    return pc.take(texts, pc.index_in(array, value_set=distinct))


def column_from_arrow(name: str, kind: str, array: pa.Array | pa.ChunkedArray) -> Column:
    """A stored column read as `kind` (levels sorted, as `core.table` makes them)."""
    array = _plain(array)
    if kind == NUMERIC:
        values = array.cast(pa.float64()).to_numpy(zero_copy_only=False)
        return Column(name, NUMERIC, np.asarray(values, dtype=np.float64))
    if kind != CATEGORICAL:
        raise ValueError(f"unknown column type {kind!r}")
    texts = _as_text(array)
    levels = pc.unique(texts).drop_null()
    levels = levels.take(pc.sort_indices(levels))
    codes = pc.index_in(texts, value_set=levels).fill_null(-1)
    return Column(
        name,
        CATEGORICAL,
        codes.to_numpy(zero_copy_only=False).astype(np.int32),
        levels.to_pylist(),
    )


def batch_to_table(
    batch: pa.RecordBatch | pa.Table, names: Sequence[str], types: Sequence[str]
) -> Table:
    """The feature columns `names` of a stored batch, typed as the dataset describes them."""
    return Table(
        [
            column_from_arrow(name, kind, batch.column(name))
            for name, kind in zip(names, types, strict=True)
        ]
    )


def batch_targets(
    batch: pa.RecordBatch | pa.Table,
    target_names: Sequence[str],
    target_kind: str,
    classes: Sequence[Any] | None,
) -> np.ndarray:
    """The targets of a stored batch as training reads them: int64 class indices `(n,)` for
    labels, float64 `(n, n_targets)` otherwise."""
    if target_kind == "labels":
        # a labels target may be float64 in the parts written before its first text label
        stored = _as_text(_plain(batch.column(target_names[0])))
        value_set = pa.array([label_text(c) for c in classes or []], type=pa.string())
        index = pc.index_in(stored, value_set=value_set)
        if index.null_count:
            raise ValueError("a stored label is not one of the dataset's classes")
        return index.to_numpy(zero_copy_only=False).astype(np.int64)
    columns = [
        _plain(batch.column(n)).cast(pa.float64()).to_numpy(zero_copy_only=False)
        for n in target_names
    ]
    return np.column_stack(columns).astype(np.float64, copy=False)


# ---- as uploaded ---------------------------------------------------------------------------------


def uploaded_schema(
    names: Sequence[str],
    types: Sequence[str],
    target_names: Sequence[str],
    target_type: pa.DataType,
) -> pa.Schema:
    """The columns of a dataset as its user uploaded them: numeric features `float64`,
    categorical ones `string`, then the target column(s) as `target_type`."""
    fields = [
        pa.field(name, pa.float64() if kind == NUMERIC else pa.string())
        for name, kind in zip(names, types, strict=True)
    ]
    return pa.schema([*fields, *(pa.field(n, target_type) for n in target_names)])


def batch_as_uploaded(
    batch: pa.RecordBatch | pa.Table,
    names: Sequence[str],
    stored_targets: Sequence[str],
    schema: pa.Schema,
) -> pa.RecordBatch:
    """A stored batch with the columns of `uploaded_schema` (the features `names`, then the
    stored target columns renamed): a categorical column's or a labels target's numbers, as
    parts written before their first text hold them, become their shortest text."""
    arrays = []
    for name, field in zip([*names, *stored_targets], schema, strict=True):
        array = _plain(batch.column(name))
        if pa.types.is_string(field.type):
            arrays.append(_as_text(array))
        else:
            arrays.append(array.cast(field.type))
    return pa.record_batch(arrays, schema=schema)
