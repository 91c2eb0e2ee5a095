"""service.row_formats: record batches as CSV, JSON lines, JSON and Parquet bytes, streamed;
the format chosen by `Accept`."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from flask import Flask

from service import row_formats as rf
from service.problems import ApiError

TEXTS = ["plain", 'say "hi"', "a,b", "two\nlines", "", None, "naïve ☃", "back\\slash", "tab\tx\x01"]


def sample(n: int = 9) -> pa.RecordBatch:
    """Numbers with nulls, a NaN and awkward magnitudes; texts that need quoting or escaping."""
    numbers = [0.1, 1 / 3, None, 1e20, -0.0, 3.0, float("nan"), 5e-324, 123456.789]
    return pa.record_batch(
        {
            "x": pa.array(numbers[:n], type=pa.float64()),
            "label text": pa.array(TEXTS[:n], type=pa.string()),
            "k": pa.array(list(range(n)), type=pa.int64()),
        }
    )


def joined(chunks: Iterator[bytes]) -> bytes:
    return b"".join(chunks)


def expected_cell(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# ---- negotiate -----------------------------------------------------------------------------------

OFFERED = [rf.CSV, rf.JSONL, rf.PARQUET]


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, rf.CSV),
        ("", rf.CSV),
        ("*/*", rf.CSV),
        ("text/csv", rf.CSV),
        ("application/x-ndjson", rf.JSONL),
        ("application/jsonl", rf.JSONL),
        ("application/vnd.apache.parquet", rf.PARQUET),
        ("application/x-parquet", rf.PARQUET),
        ("APPLICATION/X-PARQUET; charset=x", rf.PARQUET),
        ("text/*", rf.CSV),
        ("application/*", rf.JSONL),  # ties go to the order offered (after the default)
        ("text/csv;q=0.5, application/x-ndjson", rf.JSONL),
        ("text/csv;q=0.9, application/vnd.apache.parquet;q=0.95", rf.PARQUET),
        ("*/*;q=0.1, text/csv;q=0", rf.JSONL),  # q=0 refuses even what */* would allow
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", rf.CSV),  # browser
        ("application/x-parquet, text/csv", rf.CSV),  # equal q: the default
    ],
)
def test_negotiate_picks_by_q_values(accept: str | None, chosen: str) -> None:
    assert rf.negotiate(accept, OFFERED, rf.CSV) == chosen


def test_negotiate_default_may_be_json() -> None:
    offered = [rf.JSON, rf.CSV, rf.JSONL, rf.PARQUET]
    assert rf.negotiate("*/*", offered, rf.JSON) == rf.JSON
    assert rf.negotiate("application/json, text/csv", offered, rf.JSON) == rf.JSON
    assert rf.negotiate("text/csv", offered, rf.JSON) == rf.CSV


@pytest.mark.parametrize("accept", ["image/png", "application/json", "text/csv;q=0, image/*"])
def test_negotiate_refuses_with_406_naming_the_offered_types(accept: str) -> None:
    with pytest.raises(ApiError) as caught:
        rf.negotiate(accept, OFFERED, rf.CSV)
    assert caught.value.status == 406
    assert caught.value.code == "not_acceptable"
    for media in ("text/csv", "application/x-ndjson", "application/vnd.apache.parquet"):
        assert media in caught.value.message


def test_negotiate_rejects_unknown_formats() -> None:
    with pytest.raises(ValueError, match="xlsx"):
        rf.negotiate(None, ["xlsx"], rf.CSV)


# ---- encode --------------------------------------------------------------------------------------


def test_csv_quotes_as_rfc_4180_and_leaves_missing_cells_empty() -> None:
    batch = sample()
    names = pa.record_batch({'a "b", c': pa.array([1])})
    assert joined(rf.encode([names], rf.CSV)) == b'"a ""b"", c"\n1\n'
    text = joined(rf.encode([batch], rf.CSV)).decode()
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == ["x", "label text", "k"]
    assert len(rows) == 1 + batch.num_rows
    texts = [r[1] for r in rows[1:]]
    assert texts == [t if t is not None else "" for t in TEXTS]
    numbers = [r[0] for r in rows[1:]]
    assert numbers[2] == "" and numbers[6] == ""  # null and NaN: empty
    for cell, value in zip(numbers, batch.column(0).to_pylist(), strict=True):
        if cell:  # every number reads back exactly
            assert float(cell) == value
    assert numbers[5] == "3"
    assert '"say ""hi"""' in text and '"two\nlines"' in text and '"a,b"' in text
    assert text.startswith("x,label text,k\n0.1,plain,0\n")  # quotes only where needed


def test_csv_pieces_with_and_without_quotes_write_numbers_alike() -> None:
    """A piece with a text to quote is joined by compute functions, another written by
    pyarrow's CSV writer: their cells are the same."""
    rng = np.random.default_rng(2)
    values = pa.array(rng.normal(size=300) * 10.0 ** rng.integers(-8, 8, 300))
    flags = pa.array(rng.random(300) < 0.5)
    ints = pa.array(rng.integers(-5, 5, 300))
    plain = pa.record_batch({"v": values, "f": flags, "i": ints, "t": pa.array(["x"] * 300)})
    quoted = pa.record_batch({"v": values, "f": flags, "i": ints, "t": pa.array(["x,"] * 300)})
    lines_plain = joined(rf.encode([plain], rf.CSV)).decode().splitlines()
    lines_quoted = joined(rf.encode([quoted], rf.CSV)).decode().splitlines()
    assert [line.rsplit(",", 1)[0] for line in lines_plain[1:]] == [
        line.rsplit(",", 2)[0] for line in lines_quoted[1:]
    ]
    assert lines_quoted[1].endswith(',"x,"') and lines_plain[1].endswith(",x")


def test_csv_numbers_round_trip_through_pyarrows_reader() -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(size=500) * 10.0 ** rng.integers(-30, 30, 500), [0.1]])
    batch = pa.record_batch({"v": pa.array(values)})
    data = joined(rf.encode([batch], rf.CSV))
    back = pacsv.read_csv(io.BytesIO(data)).column("v").to_numpy()
    assert np.array_equal(back, values)


def test_csv_without_rows_is_its_header() -> None:
    schema = sample().schema
    assert joined(rf.encode([], rf.CSV, schema)) == b"x,label text,k\n"
    assert joined(rf.encode([], rf.CSV)) == b""


def test_json_lines_are_one_object_per_row_with_null_for_missing() -> None:
    batch = sample()
    lines = joined(rf.encode([batch], rf.JSONL)).decode().splitlines()
    assert len(lines) == batch.num_rows
    rows = [json.loads(line) for line in lines]
    assert [list(r) for r in rows] == [["x", "label text", "k"]] * batch.num_rows
    assert [r["label text"] for r in rows] == TEXTS
    assert [r["x"] for r in rows] == [expected_cell(v) for v in batch.column(0).to_pylist()]
    assert [r["k"] for r in rows] == list(range(batch.num_rows))


def test_json_lines_escape_texts_without_control_characters_too() -> None:
    texts = ['"quoted"', "back\\slash", "naïve", None]
    batch = pa.record_batch({'a "key"': pa.array(texts)})
    rows = [json.loads(line) for line in joined(rf.encode([batch], rf.JSONL)).splitlines()]
    assert rows == [{'a "key"': t} for t in texts]


def test_json_lines_write_infinities_and_booleans_as_json_has_them() -> None:
    batch = pa.record_batch(
        {"f": pa.array([math.inf, -math.inf, 1.5]), "b": pa.array([True, None, False])}
    )
    rows = [json.loads(line) for line in joined(rf.encode([batch], rf.JSONL)).splitlines()]
    assert rows == [{"f": None, "b": True}, {"f": None, "b": None}, {"f": 1.5, "b": False}]


def test_json_lines_of_a_category_escape_each_level_once_and_alike() -> None:
    """A text column with few distinct values goes through its dictionary: the same lines."""
    levels = ['say "hi"', "back\\slash", "tab\tx", "naïve", None]
    many = pa.array([levels[i % 5] for i in range(5000)])
    unique = pa.array([f"{levels[i % 4]}-{i}" if i % 5 else None for i in range(5000)])
    batch = pa.record_batch({"many": many, "unique": unique})
    rows = [json.loads(line) for line in joined(rf.encode([batch], rf.JSONL)).splitlines()]
    assert [r["many"] for r in rows] == many.to_pylist()
    assert [r["unique"] for r in rows] == unique.to_pylist()


def test_json_is_one_array_of_the_same_objects() -> None:
    batches = [sample(), sample(4)]
    body = json.loads(joined(rf.encode(batches, rf.JSON)))
    lines = joined(rf.encode(batches, rf.JSONL)).splitlines()
    assert body == [json.loads(line) for line in lines]
    assert json.loads(joined(rf.encode([], rf.JSON))) == []


def test_dictionary_columns_are_written_as_their_values() -> None:
    column = pa.array(["a", "b", None, "a"]).dictionary_encode()
    batch = pa.record_batch({"d": column})
    assert joined(rf.encode([batch], rf.CSV)) == b"d\na\nb\n\na\n"
    rows = [json.loads(line) for line in joined(rf.encode([batch], rf.JSONL)).splitlines()]
    assert [r["d"] for r in rows] == ["a", "b", None, "a"]


def test_parquet_reads_back_equal() -> None:
    batches = [sample(), sample(5)]
    data = joined(rf.encode(batches, rf.PARQUET))
    back = pq.read_table(io.BytesIO(data))
    sent = pa.Table.from_batches(batches)
    assert back.schema.equals(sent.schema)
    assert back.drop_columns(["x"]).equals(sent.drop_columns(["x"]))
    assert back.column("x").null_count == 2
    assert np.array_equal(back.column("x").to_numpy(), sent.column("x").to_numpy(), equal_nan=True)


def test_parquet_without_rows_keeps_its_schema() -> None:
    schema = sample().schema
    back = pq.read_table(io.BytesIO(joined(rf.encode([], rf.PARQUET, schema))))
    assert back.num_rows == 0 and back.schema.equals(schema)


def test_a_schema_casts_the_batches() -> None:
    schema = pa.schema([("k", pa.float64()), ("x", pa.float64())])
    data = joined(rf.encode([sample(3)], rf.PARQUET, schema))
    back = pq.read_table(io.BytesIO(data))
    assert back.schema.equals(schema)
    assert back.column("k").to_pylist() == [0.0, 1.0, 2.0]


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="xlsx"):
        rf.encode([], "xlsx")


def counted(n_batches: int, rows: int) -> tuple[Iterator[pa.RecordBatch], list[int]]:
    """Batches that record how many were read."""
    read = [0]

    def batches() -> Iterator[pa.RecordBatch]:
        for i in range(n_batches):
            read[0] += 1
            yield pa.record_batch({"i": pa.array(np.arange(rows) + i * rows, type=pa.int64())})

    return batches(), read


@pytest.mark.parametrize("fmt", [rf.CSV, rf.JSONL, rf.JSON, rf.PARQUET])
def test_bytes_flow_before_the_last_batch_is_read(fmt: str) -> None:
    n_batches = 3 * (rf.THREADS + 2)
    batches, read = counted(n_batches, rf.ROW_GROUP_ROWS)
    chunks = rf.encode(batches, fmt)
    size = 0
    while size < 1000:  # the first row group's bytes (past a header or Parquet's magic)
        size += len(next(chunks))
    assert read[0] < n_batches
    rest = joined(chunks)
    assert read[0] == n_batches
    assert size + len(rest) > 0


def test_a_large_batch_is_encoded_in_pieces() -> None:
    rows = 2 * rf.ROW_GROUP_ROWS + 5
    batch = pa.record_batch({"i": pa.array(np.arange(rows))})
    chunks = list(rf.encode([batch], rf.JSONL))
    assert len(chunks) == 3
    assert joined(iter(chunks)).count(b"\n") == rows
    parquet = pq.ParquetFile(io.BytesIO(joined(rf.encode([batch], rf.PARQUET))))
    assert parquet.metadata.num_rows == rows
    assert parquet.num_row_groups == 3


def test_pieces_come_back_in_order_from_the_threads() -> None:
    batches, _ = counted(20, 1000)
    lines = joined(rf.encode(batches, rf.CSV)).splitlines()
    assert [int(v) for v in lines[1:]] == list(range(20_000))


# ---- stream_response -----------------------------------------------------------------------------


def test_stream_response_is_a_streamed_attachment() -> None:
    with Flask(__name__).app_context():
        response = rf.stream_response(iter([sample()]), rf.PARQUET, 'my "data"/set')
        assert response.is_streamed
        assert response.content_length is None
        assert response.mimetype == "application/vnd.apache.parquet"
        assert (
            response.headers["Content-Disposition"] == 'attachment; filename="my_data_set.parquet"'
        )
        back = pq.read_table(io.BytesIO(b"".join(response.response)))
        assert back.num_rows == 9
        csv_response = rf.stream_response(iter([sample()]), rf.CSV, "d")
        assert csv_response.headers["Content-Type"] == "text/csv; charset=utf-8"
        assert csv_response.headers["Content-Disposition"].endswith('filename="d.csv"')
