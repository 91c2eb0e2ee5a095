"""A dataset's rows as training reads them: in chunks, so that memory does not grow with them.

A `RowSource` gives its rows chunk by chunk (a typed `Table` and its targets), as many times
as asked, always in the same order: a table in memory is one chunk; a stored dataset
(`service.datasets.StoredSource`) is one chunk per Parquet row group. Training reads a source
three times, holding at most one chunk of raw rows at a time:
1. the targets alone (`target_chunks`), to split the rows (seeded, stratified);
2. the rows of a seeded sample of the training split (`FIT_SAMPLE_ROWS`, all of them when the
   split is smaller), on which the preprocessing is fitted: medians, levels, means and
   standard deviations come from that sample;
3. every row, encoded by the fitted preprocessing into one float matrix, its rows ordered
   training | validation | test. A matrix above `IN_MEMORY_BYTES` is a memory map of a
   temporary file (deleted at once; the kernel frees it with the map): its pages are the
   page cache's, not the process's anonymous memory, so a worker's own memory stays flat as
   the table grows, and minibatches are gathered from it.

Every other array with one entry per row that training keeps (the targets, encoded and raw,
the split's indices, each epoch's shuffled order, the scores ROC AUC sorts) is allocated the
same way by `allocate_rows`, with a lower bar (`ARRAY_IN_MEMORY_BYTES`): small jobs keep plain
arrays, large ones map them, and they are filled in place, a piece at a time (`pieces`), so
no whole-length temporary is ever made beside them.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from core.preprocessing import MissingValueError, Preprocessor
from core.table import Column, Table, concat_columns

#: the preprocessing is fitted on at most this many training rows (a seeded sample)
FIT_SAMPLE_ROWS = 500_000
#: an encoded matrix larger than this is a memory map of a temporary file
IN_MEMORY_BYTES = 256 << 20
#: any other per-row array larger than this is a memory map of a temporary file too
ARRAY_IN_MEMORY_BYTES = 16 << 20
#: rows per piece when a per-row array is filled or read in pieces (`pieces`)
PIECE_ROWS = 1 << 20
#: rows per forward pass when a whole split is scored (losses, evaluation)
EVAL_BATCH_ROWS = 65_536
#: rows encoded at a time (the float temporaries of `Preprocessor.transform`, a one-hot block
#: of float64 among them, are this many rows, whatever the size of the source's chunks)
ENCODE_ROWS = 16_384
#: the seed of the fit sample is the job's seed plus this (the split's draws stay as they were)
_SAMPLE_SEED_OFFSET = 7919

SPLITS = ("train", "validation", "test")


class RowSource(Protocol):
    """Rows in chunks, the same ones in the same order on every call."""

    @property
    def n_rows(self) -> int: ...

    def chunks(self) -> Iterator[tuple[Table, np.ndarray]]:
        """(features, targets) chunk by chunk."""
        ...

    def targets(self) -> np.ndarray:
        """Every row's target, in order (class indices, or float64 `(n, n_targets)`)."""
        ...


def target_chunks(source: RowSource) -> Iterator[np.ndarray]:
    """The source's targets in order, a chunk at a time: from its `target_chunks()` where it
    has one (optional: a source that can read its targets in pieces, as a stored dataset's row
    groups, spares training the whole array), else its `targets()` as one chunk."""
    chunks = getattr(source, "target_chunks", None)
    if chunks is not None:
        yield from chunks()
    else:
        yield source.targets()


@dataclass
class InMemory:
    """A table already in memory, as one chunk."""

    table: Table
    y: np.ndarray

    @property
    def n_rows(self) -> int:
        return self.table.n_rows

    def chunks(self) -> Iterator[tuple[Table, np.ndarray]]:
        yield self.table, self.y

    def targets(self) -> np.ndarray:
        return self.y


def fit_rows(train_rows: np.ndarray, seed: int | None) -> np.ndarray:
    """The training rows the preprocessing is fitted on: all of them up to `FIT_SAMPLE_ROWS`,
    else a seeded sample of that many (sorted)."""
    if len(train_rows) <= FIT_SAMPLE_ROWS:
        return train_rows
    rng = np.random.default_rng(None if seed is None else seed + _SAMPLE_SEED_OFFSET)
    picked = rng.choice(len(train_rows), size=FIT_SAMPLE_ROWS, replace=False)
    return np.sort(train_rows[picked])


def gather(source: RowSource, rows: np.ndarray) -> Table:
    """The feature rows at the sorted indices `rows`, in one table (joined a column at a time,
    each column's pieces let go once joined: the rows are not held twice)."""
    parts: list[list[Column]] = []
    offset = 0
    for table, _ in source.chunks():
        lo, hi = np.searchsorted(rows, [offset, offset + table.n_rows])
        if hi > lo:
            parts.append(table.take(rows[lo:hi] - offset).columns)
        offset += table.n_rows
        if hi >= len(rows):
            break
    if len(parts) <= 1:
        return Table.concat([Table(columns) for columns in parts])
    by_column = [list(pieces) for pieces in zip(*parts, strict=True)]
    del parts
    joined = []
    for j in range(len(by_column)):
        joined.append(concat_columns(by_column[j]))
        by_column[j] = []
    return Table(joined)


def allocate(shape: tuple[int, ...], dtype: Any, limit: int | None = None) -> np.ndarray:
    """An empty array: in memory, or a memory map of a deleted temporary file when larger
    than `limit` bytes (`IN_MEMORY_BYTES` unless given)."""
    dtype = np.dtype(dtype)
    limit = IN_MEMORY_BYTES if limit is None else limit
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes <= limit:
        return np.empty(shape, dtype=dtype)
    with tempfile.NamedTemporaryFile(prefix="trainyard-rows-", suffix=".f") as f:
        if hasattr(os, "posix_fallocate"):
            # the file's blocks now, so that a full disk is an OSError here rather than a
            # SIGBUS that kills the process when a page of a sparse file is first written
            os.posix_fallocate(f.fileno(), 0, max(1, nbytes))
        matrix = np.memmap(f, dtype=dtype, mode="w+", shape=shape)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
    return matrix


def allocate_rows(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An empty per-row array (`allocate` with `ARRAY_IN_MEMORY_BYTES`), as a plain ndarray
    (a view of the map when mapped: NumPy's fast paths, `Generator.shuffle`'s among them, take
    only plain arrays)."""
    array = allocate(shape, dtype, ARRAY_IN_MEMORY_BYTES)
    return array.view(np.ndarray) if isinstance(array, np.memmap) else array


def index_dtype(n: int) -> np.dtype:
    """The dtype of indices into `n` rows: int32 (4 bytes a row) unless they need more."""
    return np.dtype(np.int32 if n < 2**31 else np.int64)


def pieces(n: int, size: int | None = None) -> Iterator[slice]:
    """Consecutive slices of `PIECE_ROWS` rows (unless `size` says) covering `range(n)`."""
    return batches(n, size or PIECE_ROWS)


def fill_range(out: np.ndarray) -> np.ndarray:
    """`out[i] = i` for every i, a piece at a time (no whole `np.arange` beside it)."""
    for rows in pieces(len(out)):
        out[rows] = np.arange(rows.start, rows.stop, dtype=out.dtype)
    return out


def shuffled_range(out: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`out` holding a seeded permutation of `range(len(out))`, filled in place: the very one
    `rng.permutation(np.arange(len(out)))` gives (which shuffles a copy the same way)."""
    rng.shuffle(fill_range(out))
    return out


def take_into(out: np.ndarray, values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """`out[i] = values[index[i]]`, a piece at a time."""
    for rows in pieces(len(out)):
        out[rows] = values[index[rows]]
    return out


def encode(
    source: RowSource, preprocessor: Preprocessor, order: np.ndarray, dtype: Any
) -> np.ndarray:
    """Every row encoded by `preprocessor`, row `order[i]` of the source at row `i`, in pieces
    of `ENCODE_ROWS` rows."""
    index_type = index_dtype(source.n_rows)
    position = allocate_rows((source.n_rows,), index_type)
    for rows in pieces(len(order)):
        position[order[rows]] = np.arange(rows.start, rows.stop, dtype=index_type)
    matrix = allocate((source.n_rows, preprocessor.n_outputs), dtype)
    offset = 0
    for table, _ in source.chunks():
        for part in batches(table.n_rows, ENCODE_ROWS):
            piece = Table([Column(c.name, c.kind, c.values[part], c.levels) for c in table.columns])
            try:
                block = preprocessor.transform(piece, dtype)
            except MissingValueError as exc:
                raise MissingValueError(exc.column, exc.row + offset + part.start) from None
            matrix[position[offset + part.start : offset + part.stop]] = block
        offset += table.n_rows
    return matrix


def batches(n: int, size: int | None = None) -> Iterator[slice]:
    """Consecutive slices of at most `size` rows (`EVAL_BATCH_ROWS` unless given) covering
    `range(n)`."""
    size = size or EVAL_BATCH_ROWS
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))
