"""A CSV upload streamed into the dataset store: never the whole file in memory.

pyarrow's CSV reader (`pyarrow.csv.open_csv`: streaming, multithreaded) reads every column as
text, the missing-cell tokens of `core.table` as null; each chunk is typed here with
`core.table`'s rules and written to the store as soon as it is typed, while the columns'
statistics (`core.column_stats`) and the target's classes are gathered:

- a feature column is numeric while every present cell is a finite number (arrow's cast, and
  where it fails `core.table.as_number` on the chunk's distinct cells); a column whose first
  chunk has text is categorical; a column that was numeric in earlier chunks and meets text
  becomes categorical from then on, and the answer warns which column, for which values and
  lines (its earlier parts keep their numbers, read back as their shortest text; its statistics
  are counted again from the store once the upload is stored). `column_types` overrides this.
- categories are stripped text; `true`/`false` in any of their spellings are booleans
  (`"true"`/`"false"`), as pandas read them before.
- the target (`target`, default the last column): numbers (ints may be class labels:
  `classes` the sorted distinct ints when every cell is an integer and there are at most
  `max_classes`), or text labels. Rows without a target are counted and named (422), or
  dropped with `drop_missing_target` (a warning says how many).

Lines in messages count the header as line 1 (blank lines are skipped, as they always were).

`ingest_batches` is the pipeline itself, over any batches: `service.table_stream` feeds it
Parquet row groups and JSON-lines blocks, whose typed numbers are taken as numbers (a NaN is a
missing cell) and whose other cells (booleans, dates) go through the text rules.

Cost per chunk (measured on a 1M-row, 22-column, 185 MB CSV): arrow's parse into text and the
cast of numeric columns to float64 dominate (reading those columns as float64 in the CSV
reader costs as much); text columns are cleaned once per distinct cell (a dictionary encoding)
and counted from its codes; a numeric chunk's statistics come from one NumPy view of its
present values.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from core.column_stats import CategoricalStats, NumericStats
from core.table import CATEGORICAL, NUMERIC, as_category, as_number, is_missing
from service.config import Limits
from service.csv_source import (
    Opened,
    header_of,
    not_utf8_later,
    open_source,
    sniff_delimiter,
)
from service.dataset_store import TARGET, DatasetStore, StoredRows
from service.ingest import NA_VALUES, check_column_types
from service.problems import ApiError, InputError

BLOCK_SIZE = 8 << 20
READ_AHEAD_BLOCKS = 4  # blocks of text read before the chunks typed and stored
FIRST_LINES = 5  # lines named in a message or a warning
BOOLEANS = {"true": "true", "True": "true", "TRUE": "true",
            "false": "false", "False": "false", "FALSE": "false"}  # fmt: skip
_NA_SET = pa.array(NA_VALUES, type=pa.string())
_INTEGER = r"^[+-]?[0-9]+$"


@dataclass
class CsvOptions:
    """What the upload's form or query says about the file."""

    name: str
    target: str | None = None
    column_types: Any = None
    delimiter: str | None = None
    encoding: str | None = None
    drop_missing_target: bool = False
    block_size: int = BLOCK_SIZE


@dataclass
class CsvFacts:
    """What describes the stored rows (the fields of `service.datasets.DatasetFacts`)."""

    name: str
    feature_names: list[str]
    columns: list[dict[str, Any]]
    target_name: str
    target_kind: str
    classes: list[Any] | None
    n_targets: int = 1
    warnings: list[dict[str, Any]] = field(default_factory=list)


# ---- cells --------------------------------------------------------------------------------------


def _trimmed(array: pa.Array) -> pa.Array:
    return pc.utf8_trim_whitespace(array)


def _null_missing(array: pa.Array) -> pa.Array:
    """Stripped missing tokens (" NA ") as null too (arrow matched only the exact ones)."""
    hits = pc.is_in(array, value_set=_NA_SET)
    if not pc.any(hits).as_py():
        return array
    return pc.if_else(hits, pa.scalar(None, pa.string()), array)


@dataclass
class Numbers:
    """A chunk read as numbers: `values` (float64, null where missing) or, when some present
    cell is not a number, `text` (row index, cell) of the first few such cells."""

    values: pa.Array | None
    text: list[tuple[int, str]] = field(default_factory=list)


def is_number_type(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)


def read_numbers(array: pa.Array) -> Numbers:
    """Cells as float64 by `core.table.as_number`'s rules: arrow's cast first, then the
    chunk's distinct cells one by one when it fails. Typed numbers (Parquet, JSON) are taken
    as they are (a NaN is a missing cell); other typed cells (booleans) are not numbers."""
    if is_number_type(array.type):
        return Numbers(pc.cast(array, pa.float64()))
    if not pa.types.is_string(array.type):
        texts = as_texts(array)
        present = np.flatnonzero(texts.is_valid().to_numpy(zero_copy_only=False))
        return Numbers(None, [(int(r), texts[int(r)].as_py()) for r in present[:FIRST_LINES]])
    try:
        values = pc.cast(array, pa.float64())
    except pa.ArrowInvalid:
        try:
            values = pc.cast(_trimmed(array), pa.float64())
        except pa.ArrowInvalid:
            return _numbers_by_distinct(array)
    return Numbers(values)  # "-nan" reads as NaN: `summarize` makes it null (missing)


def _numbers_by_distinct(array: pa.Array) -> Numbers:
    distinct = pc.unique(array).drop_null()
    numbers: list[float | None] = []
    bad: set[str] = set()
    for cell in distinct.to_pylist():
        number = as_number(cell)
        if number is None and not is_missing(cell):
            bad.add(cell)
        numbers.append(None if number is None or math.isnan(number) else number)
    if bad:
        hits = pc.is_in(array, value_set=pa.array(sorted(bad), type=pa.string()))
        rows = np.flatnonzero(hits.fill_null(False).to_numpy(zero_copy_only=False))
        return Numbers(None, [(int(r), array[int(r)].as_py()) for r in rows[:FIRST_LINES]])
    lookup = pa.array(numbers, type=pa.float64())
    return Numbers(pc.take(lookup, pc.index_in(array, value_set=distinct)))


@dataclass
class Texts:
    """A chunk read as category levels: `array` (stripped, missing tokens null, booleans
    `true`/`false`), and its distinct `levels` with their `counts` and the `missing` cells."""

    array: pa.Array
    levels: list[str]
    counts: list[int]
    missing: int


def _clean_levels(dictionary: pa.Array) -> pa.Array:
    texts = _null_missing(_trimmed(dictionary))
    spelled = pc.is_in(texts, value_set=pa.array(list(BOOLEANS), type=pa.string()))
    if pc.any(spelled).as_py():
        texts = pc.if_else(spelled, pc.utf8_lower(texts), texts)
    return texts


def as_texts(array: pa.Array) -> pa.Array:
    """Typed cells as text: numbers as their shortest text (`core.table.as_category`),
    booleans `true`/`false`; text as it is."""
    if pa.types.is_string(array.type):
        return array
    if is_number_type(array.type):
        encoded = pc.dictionary_encode(pc.cast(array, pa.float64()))
        texts = [None if v is None or math.isnan(v) else as_category(v)
                 for v in encoded.dictionary.to_pylist()]  # fmt: skip
        return pc.take(pa.array(texts, type=pa.string()), encoded.indices)
    return pc.cast(array, pa.string())


def read_texts(array: pa.Array) -> Texts:
    """Cells as category levels (see `Texts`): the chunk's distinct cells are cleaned, once
    each (a dictionary encoding), and counted from the codes."""
    encoded = pc.dictionary_encode(as_texts(array))
    cleaned = _clean_levels(encoded.dictionary)
    codes = encoded.indices
    texts = pc.take(cleaned, codes)
    n_levels = len(cleaned)
    filled = codes.fill_null(n_levels) if codes.null_count else codes
    tally = np.bincount(filled.to_numpy(), minlength=n_levels + 1)
    missing = int(tally[n_levels])
    levels: list[str] = []
    counts: list[int] = []
    for level, n in zip(cleaned.to_pylist(), tally[:n_levels].tolist(), strict=True):
        if level is None:
            missing += n
        elif n:
            levels.append(level)
            counts.append(n)
    return Texts(texts, levels, counts, missing)


def count_texts(stats: CategoricalStats, texts: pa.Array) -> None:
    counts = pc.value_counts(texts.drop_null())
    stats.add_counts(
        counts.field("values").to_pylist(), counts.field("counts").to_pylist(), texts.null_count
    )


def count_numbers_as_texts(stats: CategoricalStats, values: pa.Array) -> None:
    """Numbers of a column that turned categorical, counted as their shortest text."""
    counts = pc.value_counts(values.drop_null())
    texts = [as_category(v) for v in counts.field("values").to_pylist()]
    stats.add_counts(texts, counts.field("counts").to_pylist(), values.null_count)


def present_values(values: pa.Array) -> np.ndarray:
    """A float64 array's present values (a zero-copy view when none is null)."""
    start, end = values.offset, values.offset + len(values)
    data = np.frombuffer(values.buffers()[1], dtype=np.float64, count=end)[start:]
    if not values.null_count:
        return data
    bits = np.frombuffer(values.buffers()[0], dtype=np.uint8)
    valid = np.unpackbits(bits, count=end, bitorder="little")[start:].view(bool)
    return data[valid]


def summarize(values: pa.Array) -> tuple[pa.Array, tuple[int, int, float, float, float, float]]:
    """The chunk's numbers (a NaN, which only text such as "-nan" gives, made null: a missing
    cell, as core.table reads it) and their (present, missing, min, max, mean, M2), from the
    present values in one NumPy view (two passes: the mean, then the squared deviations)."""
    present = len(values) - values.null_count
    if present == 0:
        return values, (0, len(values), 0.0, 0.0, 0.0, 0.0)
    numbers = present_values(values)
    with np.errstate(invalid="ignore", over="ignore"):  # infinities: refused later
        mean = float(numbers.mean())
        if math.isnan(mean) and np.isnan(numbers).any():
            values = pc.if_else(pc.is_nan(values), pa.scalar(None, pa.float64()), values)
            return summarize(values)
        deviations = numbers - mean
        m2 = float(np.einsum("i,i->", deviations, deviations))
    lo, hi = float(numbers.min()), float(numbers.max())
    return values, (present, values.null_count, lo, hi, mean, m2)


# ---- columns ------------------------------------------------------------------------------------


class FeatureColumn:
    """One feature column's type and statistics as the chunks pass."""

    def __init__(self, name: str, forced: str | None) -> None:
        self.name = name
        self.forced = forced
        self.kind = CATEGORICAL if forced == CATEGORICAL else NUMERIC
        self.numeric = NumericStats()
        self.categorical = CategoricalStats()
        #: turned categorical after numbers were stored: counted again from the store
        self.turned = False
        #: the first infinite number (line, text): refused if the column stays numeric
        self.infinite: tuple[int, str] | None = None
        self.infinite_word = "line"

    def take(self, array: pa.Array, lines: LineMap, field: str) -> tuple[pa.Array, dict | None]:
        """The chunk's stored column, and a warning when the column turned categorical."""
        warning = None
        if self.kind == NUMERIC:
            numbers = read_numbers(array)
            if numbers.values is not None:
                values, summary = summarize(numbers.values)
                self.numeric.add_summary(*summary)
                infinite = math.isinf(summary[2]) or math.isinf(summary[3])
                if summary[0] and self.infinite is None and infinite:
                    self._note_infinite(values, array, lines)
                return values, None
            first = [(lines.line(r), cell) for r, cell in numbers.text]
            if self.forced == NUMERIC:
                line, cell = first[0]
                raise InputError(
                    field, f"{lines.word} {line}, column {self.name!r}: {cell!r} is not a number"
                )
            self.kind = CATEGORICAL
            self.turned = bool(self.numeric.count or self.numeric.missing)
            if self.numeric.count:
                warning = self._warning(first, lines.word)
            self.numeric = NumericStats()
        texts = read_texts(array)
        if not self.turned:
            self.categorical.add_counts(texts.levels, texts.counts, texts.missing)
        return texts.array, warning

    def _note_infinite(self, values: pa.Array, cells: pa.Array, lines: LineMap) -> None:
        inf = np.isinf(values.to_numpy(zero_copy_only=False))
        row = int(np.flatnonzero(inf)[0])
        self.infinite = (lines.line(row), str(cells[row].as_py()))
        self.infinite_word = lines.word

    def _warning(self, first: list[tuple[int, str]], word: str) -> dict[str, Any]:
        shown = ", ".join(f"{cell!r} ({word} {line})" for line, cell in first)
        return {
            "code": "column_became_categorical",
            "column": self.name,
            "message": f"column {self.name!r} held only numbers until {word} {first[0][0]}, "
            f"then text: {shown}; it is categorical (the numbers are levels). Pass "
            f'column_types {{"{self.name}": "numeric"}} to refuse such cells instead.',
            "values": [{word: line, "value": cell} for line, cell in first],
        }

    def describe(self) -> dict[str, Any]:
        if self.kind == NUMERIC:
            return self.numeric.describe(self.name)
        return self.categorical.describe(self.name)


class TargetColumn:
    """The target: numbers (and whether they are all integers, and their distinct values) or
    labels (their distinct texts)."""

    def __init__(self, name: str, max_classes: int) -> None:
        self.name = name
        self.max_classes = max_classes
        self.kind = "numeric"
        self.integers = True
        self.numbers: set[float] | None = set()  # None: more than max_classes
        self.labels: set[str] = set()
        self.booleans = True  # every label was spelled as a boolean
        self.turned = False

    def missing(self, array: pa.Array) -> np.ndarray | None:
        """Rows of the chunk without a target (a bool mask), or None when there are none."""
        if pa.types.is_floating(array.type):
            gaps = pc.or_kleene(array.is_null(), pc.is_nan(array)).fill_null(True)
            return gaps.to_numpy(zero_copy_only=False) if pc.any(gaps).as_py() else None
        if not pa.types.is_string(array.type):
            return array.is_null().to_numpy(zero_copy_only=False) if array.null_count else None
        texts = _null_missing(_trimmed(array))
        if texts.null_count == 0:
            return None
        return texts.is_null().to_numpy(zero_copy_only=False)

    def take(self, array: pa.Array, lines: LineMap, field: str) -> pa.Array:
        if self.kind == "numeric":
            numbers = read_numbers(array)
            if numbers.values is not None:
                return self._add_numbers(array, numbers.values, lines, field)
            self.kind = "labels"
            self.turned = bool(self.numbers)
            if self.numbers is None:
                raise self._too_many(field)
            self.labels.update(as_category(v) for v in self.numbers)
            self.booleans = not self.numbers
        texts = read_texts(array)
        for label in texts.levels:
            if label not in self.labels:
                self.labels.add(label)
                self.booleans = self.booleans and label in ("true", "false")
                if len(self.labels) > self.max_classes:
                    raise self._too_many(field)
        return texts.array

    def _add_numbers(
        self, cells: pa.Array, values: pa.Array, lines: LineMap, field: str
    ) -> pa.Array:
        checked, (_, gaps, lo, hi, _, _) = summarize(values)
        if gaps:  # NaN ("-nan"): not a missing-cell token, so not dropped as one either
            row = int(np.flatnonzero(checked.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputError(
                field,
                f"{lines.word} {lines.line(row)}: the target {cells[row].as_py()!r} is not a "
                "number",
            )
        if math.isinf(lo) or math.isinf(hi):
            row = int(np.flatnonzero(np.isinf(values.to_numpy(zero_copy_only=False)))[0])
            raise InputError(
                field,
                f"{lines.word} {lines.line(row)}: the target {cells[row].as_py()!r} is not a "
                "finite number",
            )
        distinct = pc.unique(values)
        if self.integers and not pa.types.is_integer(cells.type):
            # whole numbers, each written as an integer ("2", not "2.0"; typed: an int type)
            whole = np.all(np.mod(distinct.drop_null().to_numpy(), 1.0) == 0.0)
            self.integers = (
                bool(whole)
                and pa.types.is_string(cells.type)
                and bool(
                    pc.all(pc.match_substring_regex(_trimmed(pc.unique(cells)), _INTEGER)).as_py()
                )
            )
        if self.numbers is not None:
            self.numbers.update(distinct.to_pylist())
            if len(self.numbers) > self.max_classes:
                self.numbers = None
        return values

    def _too_many(self, field: str) -> InputError:
        return InputError(
            field, f"has more than {self.max_classes} classes; the limit is {self.max_classes}"
        )

    def classes(self) -> list[Any] | None:
        if self.kind == "labels":
            if self.booleans:
                return sorted(label == "true" for label in self.labels)
            return sorted(self.labels)
        if self.integers and self.numbers is not None:
            return sorted(int(v) for v in self.numbers)
        return None


@dataclass(frozen=True)
class Where:
    """How messages name a row: a CSV file's line (the header is line 1), a JSON-lines file's
    line, a Parquet file's row (from 1)."""

    word: str = "line"
    base: int = 2


CSV_LINES = Where("line", 2)


class LineMap:
    """File lines of a chunk's rows: the header is line 1; dropped rows keep their lines."""

    def __init__(self, first_row: int, kept: np.ndarray | None = None,
                 where: Where = CSV_LINES) -> None:  # fmt: skip
        self.first_row = first_row
        self.kept = kept
        self.where = where
        self.word = where.word

    def line(self, row: int) -> int:
        index = int(self.kept[row]) if self.kept is not None else row
        return self.first_row + index + self.where.base


# ---- the upload ---------------------------------------------------------------------------------


class PipelinedWriter:
    """Writes batches to the store in a thread of its own, so that encoding and compressing
    the Parquet parts (which release the GIL) overlap with parsing the next chunks; at most
    `depth` batches wait. An error of the store is raised at the next `write` or at `close`."""

    def __init__(self, writer: Any, depth: int = 2) -> None:
        self.writer = writer
        self.queue: queue.Queue[pa.RecordBatch | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="csv-store-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            batch = self.queue.get()
            if batch is None:
                return
            if self.error is None:
                try:
                    self.writer.write(batch)
                except BaseException as exc:  # raised again in the caller's thread
                    self.error = exc

    def write(self, batch: pa.RecordBatch) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(batch)

    def close(self) -> None:
        """Wait for every batch to be written (raising the store's error, if any)."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if self.error is not None:
            raise self.error


@dataclass
class _Missing:
    count: int = 0
    lines: list[int] = field(default_factory=list)

    def add(self, mask: np.ndarray, first_row: int, base: int = 2) -> None:
        rows = np.flatnonzero(mask)
        self.count += len(rows)
        room = FIRST_LINES - len(self.lines)
        if room > 0:
            self.lines.extend(int(r) + first_row + base for r in rows[:room])


class _BadRows:
    """arrow's handler for rows with another number of fields than the header."""

    def __init__(self) -> None:
        self.first: Any = None

    def __call__(self, row: Any) -> str:
        if self.first is None:
            self.first = row
        return "skip"

    def error(self, field: str) -> InputError:
        row = self.first
        where = f"line {row.number}: " if row.number else ""
        text = row.text if len(row.text) <= 60 else row.text[:57] + "..."
        return InputError(
            field,
            f"{where}a row has {row.actual_columns} of the header's {row.expected_columns} "
            f"columns (rows have different lengths): {text!r}",
        )


def _reader(opened: Opened, header: list[str], delimiter: str, options: CsvOptions,
            bad_rows: _BadRows) -> pcsv.CSVStreamingReader:  # fmt: skip
    return pcsv.open_csv(
        pa.PythonFile(opened.source, mode="r"),
        read_options=pcsv.ReadOptions(
            use_threads=True,
            block_size=options.block_size,
            column_names=header,
            skip_rows=1,
            encoding=opened.encoding,
        ),
        parse_options=pcsv.ParseOptions(
            delimiter=delimiter, newlines_in_values=True, invalid_row_handler=bad_rows
        ),
        convert_options=pcsv.ConvertOptions(
            column_types={name: pa.string() for name in header},
            null_values=NA_VALUES,
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )


def _batches(reader: pcsv.CSVStreamingReader, opened: Opened, field: str, block_size: int
             ) -> Iterator[pa.RecordBatch]:  # fmt: skip
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except Exception as exc:
            raise _arrow_error(exc, opened, field) from None
        opened.source.consumed(block_size)
        yield batch


def _arrow_error(exc: Exception, opened: Opened, field: str) -> Exception:
    if opened.source.error is not None:
        return opened.source.error
    if isinstance(exc, ApiError):
        return exc
    text = str(exc)
    if "invalid UTF8" in text:
        return not_utf8_later(field)
    return InputError(field, f"is not valid CSV: {text.strip()[:300]}")


def check_delimiter(delimiter: str | None) -> str | None:
    if delimiter is None or delimiter == "":
        return None
    named = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
    delimiter = named.get(delimiter.lower(), delimiter)
    if len(delimiter) != 1 or delimiter in ('"', "\n", "\r"):
        raise InputError("delimiter", "must be one character (or tab, comma, semicolon, pipe)")
    return delimiter


def ingest_csv(
    stream: BinaryIO,
    options: CsvOptions,
    limits: Limits,
    store: DatasetStore,
    dataset_id: str,
    *,
    max_bytes: int = 0,
    expected_bytes: int | None = None,
    field: str = "file",
) -> tuple[CsvFacts, StoredRows]:
    """Parse the upload into `store` as dataset `dataset_id`; on any error nothing stays
    stored. Returns what describes the rows and what the store holds."""
    delimiter = check_delimiter(options.delimiter)
    opened = open_source(stream, field, max_bytes, options.encoding, expected_bytes)
    delimiter = delimiter or sniff_delimiter(opened.text_head)
    header = header_of(opened.text_head, delimiter, field)
    if len(header) < 2:
        hint = ""
        if delimiter == "," and any(d in opened.text_head.split("\n", 1)[0] for d in ";\t|"):
            hint = " (pass delimiter= if its columns are separated by another character)"
        raise InputError(field, f"needs at least 2 columns{hint}")
    check_header(header, options, limits, field)
    bad_rows = _BadRows()
    opened.source.window = READ_AHEAD_BLOCKS * options.block_size
    try:
        reader = _reader(opened, header, delimiter, options, bad_rows)
    except (pa.ArrowException, OSError) as exc:
        raise _arrow_error(exc, opened, field) from None
    batches = _checked(_batches(reader, opened, field, options.block_size), bad_rows, field)
    return ingest_batches(batches, header, options, limits, store, dataset_id, field=field)


def check_header(header: list[str], options: CsvOptions, limits: Limits, field: str) -> None:
    """The columns' count, the target and `column_types` (each a 422 naming its field)."""
    if len(header) < 2:
        raise InputError(field, "needs at least 2 columns")
    if len(header) - 1 > limits.max_features:
        raise InputError(
            field, f"has {len(header) - 1} feature columns; the limit is {limits.max_features}"
        )
    target = options.target or header[-1]
    if target not in header:
        raise InputError("target", f"no column named {target!r}; the columns are {header}")
    types = check_column_types(options.column_types, header)
    if target in types:
        raise InputError("column_types", f"names the target column {target!r}")


def _checked(batches: Iterator[pa.RecordBatch], bad_rows: _BadRows, field: str
             ) -> Iterator[pa.RecordBatch]:  # fmt: skip
    """The CSV reader's batches, refused at the first row of another length."""
    for batch in batches:
        if bad_rows.first is not None:
            raise bad_rows.error(field)
        yield batch
    if bad_rows.first is not None:
        raise bad_rows.error(field)


def ingest_batches(
    batches: Iterator[pa.RecordBatch],
    header: list[str],
    options: CsvOptions,
    limits: Limits,
    store: DatasetStore,
    dataset_id: str,
    *,
    field: str = "file",
    where: Where = CSV_LINES,
) -> tuple[CsvFacts, StoredRows]:
    """Type, describe and store a table's batches (CSV text, or typed Parquet and JSON
    columns: numbers taken as numbers, anything else through the text rules) as dataset
    `dataset_id`; on any error nothing stays stored. `header`: the columns, every batch has
    them by name."""
    check_header(header, options, limits, field)
    target = options.target or header[-1]
    names = [n for n in header if n != target]
    types = check_column_types(options.column_types, header)
    writer = store.writer(dataset_id)
    pipeline = PipelinedWriter(writer)
    try:
        pending = _stream(batches, names, target, types, options, limits, pipeline, field,
                          where)  # fmt: skip
        pipeline.close()
        stored = writer.commit()
    except BaseException:
        with contextlib.suppress(BaseException):  # the first error is the one to report
            pipeline.close()
        writer.abort()
        raise
    try:
        _recount(store, dataset_id, pending)
    except BaseException:
        store.delete(dataset_id)
        raise
    return pending.facts, stored


@dataclass
class _Pending:
    facts: CsvFacts
    columns: list[FeatureColumn]


def _stream(batches: Iterator[pa.RecordBatch], names: list[str], target: str,
            types: dict[str, str], options: CsvOptions, limits: Limits, writer: Any,
            field: str, where: Where) -> _Pending:  # fmt: skip
    columns = [FeatureColumn(n, types.get(n)) for n in names]
    goal = TargetColumn(target, limits.max_classes)
    missing, dropped = _Missing(), _Missing()
    warnings: list[dict[str, Any]] = []
    rows = written = 0
    out_names = [*names, TARGET]
    for batch in batches:
        first_row, rows = rows, rows + batch.num_rows
        if limits.max_rows and rows > limits.max_rows:
            raise InputError(
                field,
                f"has more than {limits.max_rows} rows; the limit is {limits.max_rows} "
                "(TRAINYARD_MAX_ROWS)",
            )
        gaps = goal.missing(batch.column(target))
        kept = None
        if gaps is not None:
            if not options.drop_missing_target:
                missing.add(gaps, first_row, where.base)
                continue
            dropped.add(gaps, first_row, where.base)
            kept = np.flatnonzero(~gaps)
            batch = batch.filter(pa.array(~gaps))
        if missing.count or batch.num_rows == 0:
            continue  # only counting the rows without a target now
        lines = LineMap(first_row, kept, where)
        arrays = []
        for column in columns:
            array, warning = column.take(batch.column(column.name), lines, field)
            arrays.append(array)
            if warning:
                warnings.append(warning)
        arrays.append(goal.take(batch.column(target), lines, field))
        writer.write(pa.RecordBatch.from_arrays(arrays, names=out_names))
        written += batch.num_rows
    if missing.count:
        raise _missing_targets(missing, field, where.word)
    if rows == 0:
        raise InputError(field, "is empty: no data rows after the header")
    if written == 0:
        raise InputError(field, f"has no rows with a target ({dropped.count} dropped)")
    for column in columns:
        if column.kind == NUMERIC and column.infinite is not None:
            line, cell = column.infinite
            raise InputError(
                field,
                f"{column.infinite_word} {line}, column {column.name!r}: {cell} is not a "
                "finite number",
            )
    if goal.turned:
        warnings.append(
            {
                "code": "target_became_labels",
                "column": target,
                "message": f"the target {target!r} held only numbers in its first rows, then "
                "text: its values are class labels",
            }
        )
    if dropped.count:
        shown = ", ".join(map(str, dropped.lines))
        plural = "s" if dropped.count > 1 else ""
        warnings.append(
            {
                "code": "rows_dropped",
                "count": dropped.count,
                "lines": dropped.lines,
                "message": f"{dropped.count} row{plural} without a target dropped "
                f"({where.word}{plural} {shown}"
                f"{', ...' if dropped.count > len(dropped.lines) else ''})",
            }
        )
    facts = CsvFacts(
        name=options.name,
        feature_names=names,
        columns=[],
        target_name=target,
        target_kind=goal.kind,
        classes=goal.classes(),
        warnings=warnings,
    )
    return _Pending(facts, columns)


def _missing_targets(missing: _Missing, field: str, word: str = "line") -> InputError:
    shown = ", ".join(map(str, missing.lines))
    more = ", ..." if missing.count > len(missing.lines) else ""
    if missing.count == 1:
        what = f"{word} {shown}: the target is missing (1 row)"
    else:
        what = f"the target is missing in {missing.count} rows ({word}s {shown}{more})"
    return InputError(
        field,
        f"{what}; every row needs one, or pass drop_missing_target=true to drop such rows",
    )


def _recount(store: DatasetStore, dataset_id: str, pending: _Pending) -> None:
    """The final statistics; a column that turned categorical is counted again from the
    store, its earlier numbers as their shortest text."""
    described = []
    for column in pending.columns:
        if column.turned:
            stats = CategoricalStats()
            for batch in store.read_batches(dataset_id, columns=[column.name]):
                array = batch.column(0)
                if pa.types.is_floating(array.type):
                    count_numbers_as_texts(stats, array)
                else:
                    count_texts(stats, array)
            column.categorical = stats
        described.append(column.describe())
    pending.facts.columns = described
