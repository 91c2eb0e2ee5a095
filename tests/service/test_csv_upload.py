"""CSV uploads streamed into the dataset store (service.csv_stream): gzip, delimiters, encodings,
spreadsheets refused, a column that turns to text, missing targets, the upload limit, and an
upload cut half way."""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from core.column_stats import CategoricalStats, NumericStats
from core.table import column_from_cells
from service.dataset_store import DatasetStore
from tests.service.helpers import assert_error

URL = "/api/v1/datasets"
CSV = b"a,b,y\n1,x,0\n2,y,1\n3,x,1\n"


def form(client: FlaskClient, raw: bytes, filename: str = "d.csv", **fields: str) -> Any:
    return client.post(
        URL,
        data={"file": (io.BytesIO(raw), filename), **fields},
        content_type="multipart/form-data",
    )


def body(client: FlaskClient, raw: bytes, content_type: str = "text/csv", **query: str) -> Any:
    return client.post(URL, data=raw, content_type=content_type, query_string=query)


def listed(client: FlaskClient) -> int:
    return client.get(URL).get_json()["pagination"]["total"]


def stored_ids(app: Flask) -> set[str]:
    """The datasets with parts in the store (the test session's store, shared by tests)."""
    return set(DatasetStore(app.config["STORE_URL"]).dataset_ids())


def rows(client: FlaskClient, dataset_id: str) -> dict[str, Any]:
    return client.get(f"{URL}/{dataset_id}/data").get_json()


def check_abc(r: Any) -> dict[str, Any]:
    assert r.status_code == 201, r.get_json()
    data = r.get_json()
    assert data["feature_names"] == ["a", "b"] and data["n_samples"] == 3
    assert [c["type"] for c in data["columns"]] == ["numeric", "categorical"]
    assert data["classes"] == [0, 1] and data["warnings"] == []
    return data


# ---- forms of the file ------------------------------------------------------------------------


def test_gzip_as_a_form_and_as_the_body(client: FlaskClient) -> None:
    check_abc(form(client, gzip.compress(CSV), "d.csv.gz"))
    check_abc(body(client, gzip.compress(CSV), "application/gzip"))


def test_raw_body_with_options_in_the_query(client: FlaskClient) -> None:
    data = check_abc(body(client, CSV, name="raw"))
    assert data["name"] == "raw"
    r = body(client, CSV, target="a", column_types='{"y": "categorical"}')
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["target"]["name"] == "a"
    assert [c["type"] for c in r.get_json()["columns"]] == ["categorical", "categorical"]


@pytest.mark.parametrize("separator", ["\t", ";", "|"])
def test_delimiter_detected(client: FlaskClient, separator: str) -> None:
    """(A semicolon-separated file was a 422 before the streamed reader: now it is read.)"""
    raw = CSV.replace(b",", separator.encode())
    check_abc(form(client, raw))


def test_tsv_body(client: FlaskClient) -> None:
    raw = b"a\tb\ty\n1\tx, with a comma\t0\n2\ty\t1\n3\tx, with a comma\t1\n"
    data = check_abc(body(client, raw, "text/tab-separated-values"))
    assert data["columns"][1]["top"][0] == {"value": "x, with a comma", "count": 2}


def test_delimiter_given(client: FlaskClient) -> None:
    # one column when split at commas; the pipe is named
    raw = b"a|b,c|y\n1|x,1|0\n2|z,2|1\n3|x,1|1\n"
    data = form(client, raw, delimiter="|").get_json()
    assert data["feature_names"] == ["a", "b,c"]
    assert form(client, CSV.replace(b",", b"\t"), delimiter="tab").status_code == 201
    assert_error(form(client, CSV, delimiter="ab"), 422, "delimiter")


def test_latin1_refused_naming_it_then_read_with_encoding(client: FlaskClient) -> None:
    raw = "café,ville,y\n1,Zürich,0\n2,Genève,1\n".encode("latin-1")
    message = assert_error(form(client, raw), 422, "file")["fields"]["file"]
    assert "Latin-1" in message and "encoding=" in message
    r = form(client, raw, encoding="latin-1")
    assert r.status_code == 201, r.get_json()
    data = r.get_json()
    assert data["feature_names"] == ["café", "ville"]
    assert sorted(t["value"] for t in data["columns"][1]["top"]) == ["Genève", "Zürich"]
    assert_error(form(client, raw, encoding="klingon"), 422, "encoding")


def test_utf8_with_bom(client: FlaskClient) -> None:
    check_abc(form(client, b"\xef\xbb\xbf" + CSV))


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le"])
def test_utf16_refused_naming_it(client: FlaskClient, codec: str) -> None:
    raw = CSV.decode().encode(codec)
    message = assert_error(form(client, raw), 422, "file")["fields"]["file"]
    assert "UTF-16" in message
    check_abc(form(client, raw, encoding=codec))


def test_spreadsheets_refused_as_such(client: FlaskClient) -> None:
    xlsx = io.BytesIO()
    with zipfile.ZipFile(xlsx, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/workbook.xml", "<workbook/>")
    message = assert_error(form(client, xlsx.getvalue(), "d.xlsx"), 422, "file")["message"]
    assert "Excel spreadsheet" in message and "export it as CSV" in message
    xls = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 504
    assert "Excel spreadsheet" in assert_error(form(client, xls, "d.xls"), 422, "file")["message"]


# ---- types learned as the chunks pass --------------------------------------------------------


@pytest.mark.app_config({"CSV_BLOCK_SIZE": 64})
def test_a_numeric_column_that_turns_to_text_later(client: FlaskClient) -> None:
    lines = [f"{i}.0,{i % 7},{i % 2}" for i in range(60)]
    lines[45] = "n/a (broken sensor),3,1"
    lines[50] = "7.5 kg,3,0"
    raw = ("a,b,y\n" + "\n".join(lines) + "\n").encode()
    r = form(client, raw)
    assert r.status_code == 201, r.get_json()
    data = r.get_json()
    a, b = data["columns"]
    assert a["type"] == "categorical" and b["type"] == "numeric"
    (warning,) = data["warnings"]
    assert warning["code"] == "column_became_categorical" and warning["column"] == "a"
    assert warning["values"][0] == {"line": 47, "value": "n/a (broken sensor)"}
    assert "line 47" in warning["message"]
    # the levels include the numbers stored before the text came, as their shortest text
    cells = ["n/a (broken sensor)" if i == 45 else "7.5 kg" if i == 50 else i for i in range(60)]
    assert a == column_from_cells("a", cells, "categorical").describe()
    assert a["n_levels"] == 60 and a["missing"] == 0
    features = rows(client, data["id"])["features"]
    assert [row[0] for row in features[:3]] == ["0", "1", "2"]
    assert features[45][0] == "n/a (broken sensor)"
    # column_types refuses the text instead, naming the line
    r = form(client, raw, column_types='{"a": "numeric"}')
    assert "line 47" in assert_error(r, 422, "file")["message"]


@pytest.mark.app_config({"CSV_BLOCK_SIZE": 64})
def test_statistics_over_many_chunks_match_the_whole_column(client: FlaskClient) -> None:
    values = [((i * 37) % 101) / 7 for i in range(300)]
    cells = [None if i % 11 == 0 else v for i, v in enumerate(values)]
    levels = ["NA" if i % 13 == 0 else f"k{i % 17}" for i in range(300)]
    lines = [
        f"{'' if c is None else c},{t},{i % 3}"
        for i, (c, t) in enumerate(zip(cells, levels, strict=True))
    ]
    r = form(client, ("x,k,y\n" + "\n".join(lines) + "\n").encode())
    assert r.status_code == 201, r.get_json()
    x, k = r.get_json()["columns"]
    expected = column_from_cells("x", cells).describe()
    assert x.keys() == expected.keys() and x["missing"] == expected["missing"]
    for key in ("min", "max", "mean", "std"):
        assert x[key] == pytest.approx(expected[key], rel=1e-12)
    assert k == column_from_cells("k", [None if t == "NA" else t for t in levels]).describe()


def test_column_stats_merge_exactly() -> None:
    rng = [float((i * 7919) % 1000) / 3 for i in range(1000)]
    whole, merged = NumericStats(), NumericStats()
    import numpy as np

    whole.add(np.array(rng))
    for start in range(0, 1000, 97):
        part = NumericStats()
        part.add(np.array(rng[start : start + 97]))
        merged.merge(part)
    assert merged.count == 1000 and merged.min == min(rng) and merged.max == max(rng)
    assert merged.mean == pytest.approx(np.mean(rng), rel=1e-13)
    assert merged.std == pytest.approx(np.std(rng), rel=1e-12)
    counts = CategoricalStats()
    counts.add(["b", "a", None, "b"])
    counts.add_counts(["c", "a"], [2, 1], missing=3)
    assert (
        counts.describe("k")
        == column_from_cells("k", ["b", "a", None, "b", "c", "c", "a", None, None, None]).describe()
    )


# ---- targets ----------------------------------------------------------------------------------


def missing_targets() -> bytes:
    lines = [f"{i},{'' if i % 4 == 1 else 'NA' if i % 4 == 2 else i % 2}" for i in range(20)]
    return ("a,y\n" + "\n".join(lines) + "\n").encode()


@pytest.mark.app_config({"CSV_BLOCK_SIZE": 64})
def test_missing_targets_are_counted_and_named(app: Flask, client: FlaskClient) -> None:
    before = stored_ids(app)
    message = assert_error(form(client, missing_targets()), 422, "file")["message"]
    assert "missing in 10 rows" in message
    assert "lines 3, 4, 7, 8, 11, ..." in message and "drop_missing_target" in message
    assert listed(client) == 0 and stored_ids(app) == before


@pytest.mark.app_config({"CSV_BLOCK_SIZE": 64})
def test_drop_missing_target(client: FlaskClient) -> None:
    r = form(client, missing_targets(), drop_missing_target="true")
    assert r.status_code == 201, r.get_json()
    data = r.get_json()
    assert data["n_samples"] == 10
    (warning,) = data["warnings"]
    assert warning["code"] == "rows_dropped" and warning["count"] == 10
    assert warning["lines"] == [3, 4, 7, 8, 11] and "10 rows" in warning["message"]
    assert rows(client, data["id"])["features"] == [
        [float(i)] for i in range(20) if i % 4 in (0, 3)
    ]
    assert client.get(f"{URL}/{data['id']}").get_json()["n_samples"] == 10


def test_target_kinds(client: FlaskClient) -> None:
    data = form(client, b"a,y\n1,true\n2,FALSE\n3,True\n").get_json()
    assert data["classes"] == [False, True] and data["target"]["kind"] == "labels"
    assert rows(client, data["id"])["targets"] == [True, False, True]
    data = form(client, b"a,y\n1,1.5\n2,2\n").get_json()
    assert "classes" not in data and data["target"]["kind"] == "numeric"
    data = form(client, b"a,y\n1,1.0\n2,2.0\n").get_json()
    assert "classes" not in data  # written as decimals: numbers, as pandas read them
    data = form(client, b"a,y\n1,b\n2, a \n3,b\n").get_json()
    assert data["classes"] == ["a", "b"]
    assert_error(form(client, b"a,y\n1,inf\n"), 422, "file")


# ---- limits and failures ----------------------------------------------------------------------


@pytest.mark.app_config({"MAX_UPLOAD_BYTES": 1000})
def test_upload_limit_names_itself(app: Flask, client: FlaskClient) -> None:
    raw = b"a,y\n" + b"1.25,1\n" * 200
    for r in (form(client, raw), body(client, raw), body(client, gzip.compress(raw) + raw)):
        error = assert_error(r, 413)
        assert error["code"] == "payload_too_large"
        assert "TRAINYARD_MAX_UPLOAD_BYTES" in error["message"] and "1000" in error["message"]
    # a gzipped body counts its compressed bytes
    assert body(client, gzip.compress(raw), "application/gzip").status_code == 201
    # exactly the limit is allowed
    exact = b"a,y\n" + b"1.25,1\n" * 100
    exact += b"9" * (1000 - len(exact) - 3) + b",1\n"
    assert len(exact) == 1000
    assert body(client, exact).status_code == 201, body(client, exact).get_json()
    assert form(client, exact).status_code == 201  # the file, not the form around it
    assert assert_error(form(client, exact + b"1,0\n"), 413)["code"] == "payload_too_large"
    assert listed(client) == 3


@pytest.mark.app_config({"CSV_BLOCK_SIZE": 64})
def test_an_upload_cut_half_way_leaves_nothing(app: Flask, client: FlaskClient) -> None:
    raw = b"a,y\n" + b"".join(f"{i},{i % 2}\n".encode() for i in range(500))
    half = raw[: len(raw) // 2]
    before = stored_ids(app)
    r = client.post(
        URL,
        input_stream=io.BytesIO(half),
        content_type="text/csv",
        environ_overrides={"CONTENT_LENGTH": str(len(raw))},  # the client went away
    )
    assert_error(r, 400)  # werkzeug: ClientDisconnected (else our own incomplete_upload)
    assert listed(client) == 0
    assert stored_ids(app) == before
    # a bad row far into the file: the parts already written are deleted too
    broken = raw + b"1,2,3\n"
    assert_error(form(client, broken), 422, "file")
    assert listed(client) == 0 and stored_ids(app) == before


def test_errors_keep_their_fields(client: FlaskClient) -> None:
    assert_error(form(client, b""), 422, "file")
    assert_error(form(client, b"a,y\n"), 422, "file")
    assert_error(form(client, b"a,,y\n1,2,3\n"), 422, "file")
    assert_error(body(client, CSV, target="nope"), 422, "target")
    assert_error(body(client, CSV, colour="red"), 422, "colour")


def test_store_down_is_503(tmp_path: Path, app: Flask, client: FlaskClient) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    app.config["STORE_URL"] = (blocker / "store").as_uri()
    r = form(client, CSV)
    assert r.status_code == 503, r.get_json()
    assert listed(client) == 0


def test_idempotency_key_on_a_raw_body(client: FlaskClient) -> None:
    headers = {"Idempotency-Key": "raw-1"}
    first = client.post(URL, data=CSV, content_type="text/csv", headers=headers)
    assert first.status_code == 201, first.get_json()
    again = client.post(URL, data=CSV, content_type="text/csv", headers=headers)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["id"] == first.get_json()["id"]
    other = client.post(URL, data=CSV + b"4,y,0\n", content_type="text/csv", headers=headers)
    assert assert_error(other, 422)["code"] == "idempotency_key_reused"
    options = client.post(
        URL, data=CSV, content_type="text/csv", headers=headers, query_string={"target": "a"}
    )
    assert assert_error(options, 422)["code"] == "idempotency_key_reused"
    assert listed(client) == 1


@pytest.mark.app_config({"CSV_BLOCK_SIZE": 64})
def test_a_target_that_turns_to_labels_later(client: FlaskClient) -> None:
    lines = [f"{i},{i % 3}" for i in range(40)] + ["41,many"]
    r = form(client, ("a,y\n" + "\n".join(lines) + "\n").encode())
    assert r.status_code == 201, r.get_json()
    data = r.get_json()
    assert data["classes"] == ["0", "1", "2", "many"] and data["target"]["kind"] == "labels"
    assert [w["code"] for w in data["warnings"]] == ["target_became_labels"]


@pytest.mark.app_config({"CSV_BLOCK_SIZE": 64})
def test_the_rows_of_a_target_that_turned_to_labels(client: FlaskClient) -> None:
    lines = [f"{i},{i % 3}" for i in range(40)] + ["41,many"]
    data = form(client, ("a,y\n" + "\n".join(lines) + "\n").encode()).get_json()
    targets = rows(client, data["id"])["targets"]
    assert targets == [str(i % 3) for i in range(40)] + ["many"]


def test_text_that_stops_being_utf8_past_the_head(app: Flask, client: FlaskClient) -> None:
    raw = b"a,b,y\n" + b"1,x,0\n" * 200_000 + b"2,caf\xe9,1\n"  # 1.2 MB: past the sniffed MiB
    before = stored_ids(app)
    message = assert_error(body(client, raw), 422, "file")["message"]
    assert "not UTF-8" in message and "Latin-1" in message
    assert listed(client) == 0 and stored_ids(app) == before


def test_a_column_with_both_infinities_is_refused_not_a_500(client: FlaskClient) -> None:
    message = assert_error(form(client, b"a,y\ninf,0\n-inf,1\n2,0\n"), 422, "file")["message"]
    assert "line 2, column 'a'" in message and "not a finite number" in message
