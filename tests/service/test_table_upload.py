"""Parquet and JSON-lines uploads (service.table_stream): the same table as CSV gives the same
answer and the same rows, as a raw body and as a form's file; missing targets, broken files,
nested values and the upload limit."""

from __future__ import annotations

import gzip
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.dataset_store import DatasetStore
from tests.service.helpers import assert_error

URL = "/api/v1/datasets"
PARQUET = "application/vnd.apache.parquet"
JSONL = "application/x-ndjson"

# one table in three formats: a number with a gap, text with a gap, booleans, integer classes
CSV = b"a,b,c,y\n1.5,x,true,0\n,y,false,1\n3,,TRUE,1\n-2,x,false,0\n"
TABLE = pa.table(
    {
        "a": [1.5, None, 3.0, -2.0],
        "b": ["x", "y", None, "x"],
        "c": [True, False, True, False],
        "y": [0, 1, 1, 0],
    }
)
LINES = [
    {"a": 1.5, "b": "x", "c": True, "y": 0},
    {"a": None, "b": "y", "c": False, "y": 1},
    {"a": 3, "c": True, "y": 1},
    {"a": -2, "b": "x", "c": False, "y": 0},
]


def parquet_bytes(table: pa.Table, **options: Any) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **options)
    return sink.getvalue()


def jsonl_bytes(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def form(client: FlaskClient, raw: bytes, filename: str, **fields: str) -> Any:
    return client.post(
        URL,
        data={"file": (io.BytesIO(raw), filename), **fields},
        content_type="multipart/form-data",
    )


def body(client: FlaskClient, raw: bytes, content_type: str, **query: str) -> Any:
    return client.post(URL, data=raw, content_type=content_type, query_string=query)


def created(r: Any) -> dict[str, Any]:
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def same_part(data: dict[str, Any]) -> dict[str, Any]:
    """What must not depend on the format."""
    return {k: data[k] for k in ("n_samples", "feature_names", "columns", "target", "classes")}


def rows(client: FlaskClient, dataset_id: str) -> dict[str, Any]:
    data = client.get(f"{URL}/{dataset_id}/data").get_json()
    return {"features": data["features"], "targets": data["targets"]}


def stored_ids(app: Flask) -> set[str]:
    return set(DatasetStore(app.config["STORE_URL"]).dataset_ids())


def listed(client: FlaskClient) -> int:
    return client.get(URL).get_json()["pagination"]["total"]


def test_parquet_and_jsonl_answer_as_the_same_csv(client: FlaskClient) -> None:
    expected = created(body(client, CSV, "text/csv"))
    assert [c["type"] for c in expected["columns"]] == ["numeric", "categorical", "categorical"]
    assert expected["classes"] == [0, 1] and expected["warnings"] == []
    expected_rows = rows(client, expected["id"])
    raw_parquet, raw_jsonl = parquet_bytes(TABLE), jsonl_bytes(LINES)
    uploads = [
        body(client, raw_parquet, PARQUET),
        body(client, raw_parquet, "application/x-parquet"),
        form(client, raw_parquet, "t.parquet"),
        form(client, raw_parquet, "no-suffix"),  # known by its first bytes, PAR1
        body(client, raw_jsonl, JSONL),
        body(client, raw_jsonl, "application/jsonl"),
        body(client, gzip.compress(raw_jsonl), JSONL),
        form(client, raw_jsonl, "t.jsonl"),
        form(client, gzip.compress(raw_jsonl), "t.ndjson.gz"),
    ]
    for r in uploads:
        data = created(r)
        assert same_part(data) == same_part(expected), r.request.headers
        assert data["warnings"] == []
        assert rows(client, data["id"]) == expected_rows
    assert created(uploads[2])["name"] == "t"


def test_parquet_row_groups_and_types(client: FlaskClient) -> None:
    n = 5000
    table = pa.table(
        {
            "i": pa.array(range(n), pa.int32()),
            "f": pa.array([i / 7 if i % 9 else float("nan") for i in range(n)]),
            "k": pa.array([f"k{i % 5}" for i in range(n)]).dictionary_encode(),
            "big": pa.array([f"t{i % 3}" for i in range(n)], pa.large_string()),
            "y": pa.array([f"c{i % 2}" for i in range(n)]),
        }
    )
    data = created(body(client, parquet_bytes(table, row_group_size=700), PARQUET))
    assert data["n_samples"] == n
    i, f, k, big = data["columns"]
    assert i["type"] == "numeric" and i["max"] == n - 1 and i["missing"] == 0
    assert f["type"] == "numeric" and f["missing"] == len(range(0, n, 9))  # NaN: missing
    assert k["type"] == "categorical" and k["n_levels"] == 5
    assert big["type"] == "categorical" and big["n_levels"] == 3
    assert data["classes"] == ["c0", "c1"]
    # a float target is numbers, an int one classes; column_types makes numbers levels
    table = pa.table({"a": [1, 2, 3], "y": [0.5, 1.0, 2.0]})
    data = created(body(client, parquet_bytes(table), PARQUET, column_types='{"a": "categorical"}'))
    assert data["target"]["kind"] == "numeric" and "classes" not in data
    assert [t["value"] for t in data["columns"][0]["top"]] == ["1", "2", "3"]


def test_parquet_missing_target(app: Flask, client: FlaskClient) -> None:
    table = pa.table({"a": [1.0, 2.0, 3.0, 4.0], "y": pa.array([0, None, 1, None], pa.int64())})
    raw = parquet_bytes(table)
    before = stored_ids(app)
    message = assert_error(body(client, raw, PARQUET), 422, "file")["message"]
    assert "missing in 2 rows (rows 2, 4)" in message and "drop_missing_target" in message
    assert listed(client) == 0 and stored_ids(app) == before
    data = created(body(client, raw, PARQUET, drop_missing_target="true"))
    assert data["n_samples"] == 2
    (warning,) = data["warnings"]
    assert warning["code"] == "rows_dropped" and warning["lines"] == [2, 4]
    assert rows(client, data["id"])["features"] == [[1.0], [3.0]]


def test_broken_parquet_is_422_naming_the_file(app: Flask, client: FlaskClient) -> None:
    before = stored_ids(app)
    raw = parquet_bytes(TABLE)
    for broken in (raw[: len(raw) // 2], b"PAR1" + b"\x00" * 100, b"a,y\n1,0\n", b""):
        assert_error(body(client, broken, PARQUET), 422, "file")
    assert_error(form(client, raw[:-10], "t.parquet"), 422, "file")
    nested = pa.table({"a": [[1, 2], [3]], "y": [0, 1]})
    message = assert_error(body(client, parquet_bytes(nested), PARQUET), 422, "file")["message"]
    assert "'a'" in message
    one = pa.table({"y": [0, 1]})
    assert_error(body(client, parquet_bytes(one), PARQUET), 422, "file")
    assert_error(body(client, raw, PARQUET, target="nope"), 422, "target")
    assert_error(body(client, raw, PARQUET, delimiter=";"), 422, "delimiter")
    assert listed(client) == 0 and stored_ids(app) == before


@pytest.mark.app_config({"MAX_UPLOAD_BYTES": 2000})
def test_over_the_limit_is_413(client: FlaskClient) -> None:
    big = pa.table({"a": [float(i) * 1.37 for i in range(2000)], "y": [i % 2 for i in range(2000)]})
    raw = parquet_bytes(big, compression="none")
    assert len(raw) > 2000
    for r in (body(client, raw, PARQUET), form(client, raw, "t.parquet")):
        error = assert_error(r, 413)
        assert "TRAINYARD_MAX_UPLOAD_BYTES" in error["message"]
    lines = jsonl_bytes([{"a": i, "y": i % 2} for i in range(200)])
    assert_error(body(client, lines, JSONL), 413)
    assert listed(client) == 0


@pytest.mark.app_config({"CSV_BLOCK_SIZE": 64})
def test_jsonl_blocks_mixed_types_and_a_column_that_turns_to_text(client: FlaskClient) -> None:
    lines = [{"a": i, "b": i % 3, "y": i % 2} for i in range(40)]
    lines[30]["a"] = "n/a"
    lines[3]["b"] = "three"  # a number and a string in one block: read again as text
    data = created(body(client, jsonl_bytes(lines), JSONL))
    a, b = data["columns"]
    assert a["type"] == "categorical" and b["type"] == "categorical", data["warnings"]
    turned = {w["column"]: w for w in data["warnings"]}
    assert {w["code"] for w in data["warnings"]} == {"column_became_categorical"}
    assert turned["a"]["values"] == [{"line": 31, "value": "n/a"}]
    assert turned["b"]["values"] == [{"line": 4, "value": "three"}]
    assert a["n_levels"] == 40
    features = rows(client, data["id"])["features"]
    assert features[0] == ["0", "0"] and features[30][0] == "n/a"
    # a key that the first block of lines did not have
    late_key = jsonl_bytes([{"a": i, "y": 0} for i in range(20)] + [{"a": 2, "z": 3, "y": 1}])
    assert "'z'" in assert_error(body(client, late_key, JSONL), 422, "file")["message"]


def test_jsonl_refusals(client: FlaskClient) -> None:
    assert_error(body(client, b'{"a": 1, "y": 0}\n[1, 2]\n', JSONL), 422, "file")
    message = assert_error(body(client, b'{"a": 1, "y": 0}\n{"a": 2\n', JSONL), 422, "file")
    assert "line 2" in message["message"]
    assert_error(body(client, b'{"a": {"b": 1}, "y": 0}\n', JSONL), 422, "file")
    assert_error(body(client, b"", JSONL), 422, "file")
    assert_error(body(client, jsonl_bytes(LINES), JSONL, encoding="latin-1"), 422, "encoding")
    missing = jsonl_bytes([{"a": 1, "y": 0}, {"a": 2, "y": None}, {"a": 3}])
    message = assert_error(body(client, missing, JSONL), 422, "file")["message"]
    assert "lines 2, 3" in message
    assert listed(client) == 0
