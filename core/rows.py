"""A dataset's rows as training reads them: in chunks, so that memory does not grow with them.

A `RowSource` gives its rows chunk by chunk (a typed `Table` and its targets), as many times
as asked, always in the same order: a table in memory is one chunk; a stored dataset
(`service.datasets.StoredSource`) is one chunk per Parquet row group. Training reads a source
three times, holding at most one chunk of raw rows at a time:
1. the targets alone (8 bytes a row), to split the rows (seeded, stratified);
2. the rows of a seeded sample of the training split (`FIT_SAMPLE_ROWS`, all of them when the
   split is smaller), on which the preprocessing is fitted: medians, levels, means and
   standard deviations come from that sample;
3. every row, encoded by the fitted preprocessing into one float matrix, its rows ordered
   training | validation | test. A matrix above `IN_MEMORY_BYTES` is a memory map of a
   temporary file (deleted at once; the kernel frees it with the map): its pages are the
   page cache's, not the process's anonymous memory, so a worker's own memory stays flat as
   the table grows, and minibatches are gathered from it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from core.preprocessing import MissingValueError, Preprocessor
from core.table import Table

#: the preprocessing is fitted on at most this many training rows (a seeded sample)
FIT_SAMPLE_ROWS = 500_000
#: an encoded matrix larger than this is a memory map of a temporary file
IN_MEMORY_BYTES = 256 << 20
#: rows per forward pass when a whole split is scored (losses, evaluation)
EVAL_BATCH_ROWS = 65_536
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
    """The feature rows at the sorted indices `rows`, in one table."""
    pieces = []
    offset = 0
    for table, _ in source.chunks():
        lo, hi = np.searchsorted(rows, [offset, offset + table.n_rows])
        if hi > lo:
            pieces.append(table.take(rows[lo:hi] - offset))
        offset += table.n_rows
        if hi >= len(rows):
            break
    return Table.concat(pieces)


def allocate(shape: tuple[int, int], dtype: Any) -> np.ndarray:
    """An empty matrix: in memory, or a memory map of a deleted temporary file when large."""
    dtype = np.dtype(dtype)
    if shape[0] * shape[1] * dtype.itemsize <= IN_MEMORY_BYTES:
        return np.empty(shape, dtype=dtype)
    with tempfile.NamedTemporaryFile(prefix="trainyard-rows-", suffix=".f") as f:
        matrix = np.memmap(f, dtype=dtype, mode="w+", shape=shape)
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
    return matrix


def encode(
    source: RowSource, preprocessor: Preprocessor, order: np.ndarray, dtype: Any
) -> np.ndarray:
    """Every row encoded by `preprocessor`, row `order[i]` of the source at row `i`."""
    index_type = np.int32 if source.n_rows < 2**31 else np.int64
    position = np.empty(source.n_rows, dtype=index_type)
    position[order] = np.arange(len(order), dtype=index_type)
    matrix = allocate((source.n_rows, preprocessor.n_outputs), dtype)
    offset = 0
    for table, _ in source.chunks():
        try:
            block = preprocessor.transform(table, dtype)
        except MissingValueError as exc:
            raise MissingValueError(exc.column, exc.row + offset) from None
        matrix[position[offset : offset + table.n_rows]] = block
        offset += table.n_rows
    return matrix


def batches(n: int, size: int = EVAL_BATCH_ROWS) -> Iterator[slice]:
    """Consecutive slices of at most `size` rows covering `range(n)`."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))
