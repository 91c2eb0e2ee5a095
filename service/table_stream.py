"""Parquet and JSON-lines uploads streamed into the dataset store, typed, described and checked
by the same pipeline as CSV (`service.csv_stream.ingest_batches`): numbers are taken as numbers,
text, booleans (`"true"`/`"false"`), dates and other cells through the text rules of
`core.table`, so that a table gives the same answer and rows in every format.

- Parquet needs its footer (at the end) before any row: the body is spooled to a temporary file
  on local disk a MiB at a time (counted against the upload limit, never whole in memory), then
  read a row group at a time (`pyarrow.parquet.ParquetFile.iter_batches`); rows are named
  `row N` (from 1) in messages.
- JSON lines (one object per line, also gzipped): read in blocks of whole lines, each block
  parsed by `pyarrow.json`; a block whose column mixes types (a number, then a string) is read
  again cell by cell as text (numbers as their JSON text). The first block's keys are the
  columns; lines are named `line N` (from 1, blank lines skipped).
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.json as pjson
import pyarrow.parquet as pq

from service.config import Limits
from service.csv_source import (
    UTF8,
    CountingReader,
    check_column_names,
    check_encoding,
    open_source,
)
from service.csv_stream import (
    CsvFacts,
    CsvOptions,
    Where,
    ingest_batches,
    ingest_csv,
    is_number_type,
)
from service.dataset_store import DatasetStore, StoredRows
from service.problems import InputError

CSV, PARQUET, JSONL = "csv", "parquet", "jsonl"
PARQUET_MAGIC = b"PAR1"
PARQUET_ROWS = Where("row", 1)
JSON_LINES = Where("line", 1)
SPOOL_CHUNK = 1 << 20
BATCH_ROWS = 1 << 16
MAX_LINE = 64 << 20


def _not_csv_options(options: CsvOptions, what: str) -> None:
    if options.delimiter:
        raise InputError("delimiter", f"applies to CSV text only, not to {what}")


def plain_column(array: pa.Array, name: str, field: str) -> pa.Array:
    """A typed column as numbers or text the typing pipeline reads (see the module)."""
    kind = array.type
    if pa.types.is_dictionary(kind):
        return plain_column(array.dictionary_decode(), name, field)
    if pa.types.is_string(kind) or is_number_type(kind) or pa.types.is_boolean(kind):
        return array
    if (
        pa.types.is_large_string(kind)
        or pa.types.is_string_view(kind)
        or pa.types.is_null(kind)
        or pa.types.is_temporal(kind)
    ):
        return array.cast(pa.string())
    raise InputError(
        field,
        f"column {name!r} holds {kind} values; only numbers, text, booleans and dates can be read",
    )


def _plain_batch(batch: pa.RecordBatch, header: list[str], field: str) -> pa.RecordBatch:
    arrays = [plain_column(batch.column(name), name, field) for name in header]
    return pa.RecordBatch.from_arrays(arrays, names=header)


# ---- Parquet ------------------------------------------------------------------------------------


def spool(stream: BinaryIO, max_bytes: int, expected_bytes: int | None) -> Any:
    """The body in a temporary file on local disk (deleted when closed), copied a MiB at a
    time and counted against the upload limit."""
    counted = CountingReader(stream, max_bytes, expected_bytes)
    spooled = tempfile.NamedTemporaryFile(prefix="trainyard-upload-", suffix=".parquet")  # noqa: SIM115
    try:
        shutil.copyfileobj(counted, spooled, SPOOL_CHUNK)
        spooled.flush()
    except BaseException:
        spooled.close()
        raise
    return spooled


def _broken_parquet(field: str, exc: Exception) -> InputError:
    return InputError(field, f"is not a readable Parquet file: {str(exc).strip()[:300]}")


def ingest_parquet(
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
    """Spool a Parquet upload, then store it a row group at a time (see the module)."""
    _not_csv_options(options, "Parquet")
    with spool(stream, max_bytes, expected_bytes) as spooled:
        with open(spooled.name, "rb") as head:
            magic = head.read(4)
        if not magic:
            raise InputError(field, "is empty: a Parquet file is needed")
        if magic != PARQUET_MAGIC:
            raise InputError(field, "is not a Parquet file (it does not start with PAR1)")
        try:
            parquet = pq.ParquetFile(spooled.name)
            schema = parquet.schema_arrow
        except (pa.ArrowException, OSError) as exc:
            raise _broken_parquet(field, exc) from None
        header = check_column_names(list(schema.names), field, header=False)
        for name in header:  # a nested or binary column is refused before any row is read
            plain_column(pa.array([], type=schema.field(name).type), name, field)
        batches = _parquet_batches(parquet, header, field)
        try:
            return ingest_batches(
                batches, header, options, limits, store, dataset_id, field=field,
                where=PARQUET_ROWS,
            )  # fmt: skip
        finally:
            parquet.close()


def ingest_parquet_files(
    parts: list[pq.ParquetFile],
    options: CsvOptions,
    limits: Limits,
    store: DatasetStore,
    dataset_id: str,
    *,
    field: str = "source",
    on_batch: Callable[[pa.RecordBatch], None] | None = None,
) -> tuple[CsvFacts, StoredRows]:
    """Store already opened Parquet files (an object, or the parts under a prefix, read where
    they are: `service.imports`) as one table, a row group at a time, as `ingest_parquet` does
    an upload: they must have the same columns. `on_batch(batch)` is called before each batch
    is stored (progress; it may raise to stop, and then nothing stays stored)."""
    _not_csv_options(options, "Parquet")
    if not parts:
        raise InputError(field, "holds no Parquet file")
    try:
        names = [list(part.schema_arrow.names) for part in parts]
    except (pa.ArrowException, OSError) as exc:
        raise _broken_parquet(field, exc) from None
    header = check_column_names(names[0], field, header=False)
    for i, other in enumerate(names[1:], start=2):
        if other != header:
            raise InputError(
                field, f"Parquet part {i} has the columns {other}, the first one {header}"
            )
    for name in header:  # a nested or binary column is refused before any row is read
        plain_column(pa.array([], type=parts[0].schema_arrow.field(name).type), name, field)

    def batches() -> Iterator[pa.RecordBatch]:
        for part in parts:
            for batch in _parquet_batches(part, header, field):
                if on_batch is not None:
                    on_batch(batch)
                yield batch

    return ingest_batches(
        batches(), header, options, limits, store, dataset_id, field=field, where=PARQUET_ROWS
    )


def _parquet_batches(parquet: pq.ParquetFile, header: list[str], field: str
                     ) -> Iterator[pa.RecordBatch]:  # fmt: skip
    batches = parquet.iter_batches(batch_size=BATCH_ROWS, use_threads=True)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            raise _broken_parquet(field, exc) from None
        yield _plain_batch(batch, header, field)


# ---- JSON lines ---------------------------------------------------------------------------------


def ingest_jsonl(
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
    """Store a JSON-lines upload a block of lines at a time (see the module)."""
    _not_csv_options(options, "JSON lines")
    codec = check_encoding(options.encoding)
    if codec is not None and codec not in UTF8:
        raise InputError("encoding", "JSON lines are UTF-8 text; save the file as UTF-8")
    opened = open_source(stream, field, max_bytes, None, expected_bytes)
    blocks = _line_blocks(opened.source, options.block_size, field)
    first = next(blocks, None)
    if first is None:
        raise InputError(field, "is empty: one JSON object per line is needed")
    table = _parse_block(first, None, 0, field)
    header = check_column_names(table.column_names, field, header=False)
    if not header:
        raise InputError(field, "is empty: one JSON object per line is needed")
    batches = _json_batches(table, blocks, header, field)
    return ingest_batches(
        batches, header, options, limits, store, dataset_id, field=field, where=JSON_LINES
    )


def _line_blocks(source: Any, block_size: int, field: str) -> Iterator[bytes]:
    """The text in blocks of whole lines (about `block_size` bytes each)."""
    rest = b""
    while True:
        data = source.read(block_size)
        if not data:
            if rest.strip():
                yield rest
            return
        rest += data
        cut = rest.rfind(b"\n")
        if cut < 0:
            if len(rest) > MAX_LINE:
                raise InputError(field, f"has a line longer than {MAX_LINE >> 20} MiB")
            continue
        block, rest = rest[: cut + 1], rest[cut + 1 :]
        if block.strip():
            yield block


def _json_batches(first: pa.Table, blocks: Iterator[bytes], header: list[str], field: str
                  ) -> Iterator[pa.RecordBatch]:  # fmt: skip
    rows = 0
    table: pa.Table | None = first
    while True:
        if table is None:
            block = next(blocks, None)
            if block is None:
                return
            table = _parse_block(block, header, rows, field)
        extra = [name for name in table.column_names if name not in header]
        if extra:
            raise InputError(
                field,
                f"a row after line {rows} has the key {extra[0]!r}, which the first lines do "
                f"not have; the columns are {header}",
            )
        columns = [
            table.column(name).combine_chunks()
            if name in table.column_names
            else pa.nulls(table.num_rows, pa.string())
            for name in header
        ]
        batch = pa.RecordBatch.from_arrays(columns, names=header)
        rows += batch.num_rows
        table = None
        yield _plain_batch(batch, header, field)


def _parse_block(block: bytes, header: list[str] | None, first_row: int, field: str) -> pa.Table:
    """A block of lines as a table: arrow's JSON reader, or cell by cell as text when arrow
    cannot type it."""
    try:
        return pjson.read_json(
            io.BytesIO(block),
            read_options=pjson.ReadOptions(use_threads=True, block_size=max(len(block), 1 << 16)),
            parse_options=pjson.ParseOptions(newlines_in_values=False),
        )
    except (pa.ArrowException, OSError):
        return _parse_as_text(block, header, first_row, field)


def _cell_text(value: Any, line: int, key: str, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    raise InputError(
        field, f"line {line}, column {key!r}: nested values (objects, arrays) cannot be read"
    )


def _parse_as_text(block: bytes, header: list[str] | None, first_row: int, field: str
                   ) -> pa.Table:  # fmt: skip
    names: list[str] = list(header or [])
    cells: dict[str, list[str | None]] = {name: [] for name in names}
    row = 0
    for raw in block.split(b"\n"):
        if not raw.strip():
            continue
        line = first_row + row + 1
        try:
            item = json.loads(raw)
        except UnicodeDecodeError:
            raise InputError(field, f"line {line} is not UTF-8 text") from None
        except ValueError as exc:
            raise InputError(field, f"line {line} is not valid JSON: {exc}") from None
        if not isinstance(item, dict):
            raise InputError(field, f"line {line} is not a JSON object")
        for key, value in item.items():
            if key not in cells:
                if header is not None:
                    raise InputError(
                        field,
                        f"line {line} has the key {key!r}, which the first lines do not "
                        f"have; the columns are {header}",
                    )
                names.append(key)
                cells[key] = [None] * row
            cells[key].append(_cell_text(value, line, key, field))
        row += 1
        for key in names:
            if len(cells[key]) < row:
                cells[key].append(None)
    return pa.table({name: pa.array(cells[name], type=pa.string()) for name in names})


# ---- which --------------------------------------------------------------------------------------


def ingest_upload(fmt: str, stream: BinaryIO, options: CsvOptions, limits: Limits,
                  store: DatasetStore, dataset_id: str, **kwargs: Any
                  ) -> tuple[CsvFacts, StoredRows]:  # fmt: skip
    """Store an upload of the format `fmt` (CSV, PARQUET or JSONL)."""
    ingest = {CSV: ingest_csv, PARQUET: ingest_parquet, JSONL: ingest_jsonl}[fmt]
    return ingest(stream, options, limits, store, dataset_id, **kwargs)
