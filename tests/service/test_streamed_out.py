"""Issue 22, streamed out: `GET /datasets/{id}/data` as CSV, JSON lines or Parquet by `Accept`
(the columns as uploaded; a downloaded CSV uploads again as the same dataset), and `POST
/models/{id}/predict` streaming its CSV answer and scoring a labelled file."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.service.helpers import assert_error, post_dataset
from tests.service.test_tabular import penguins, store_trained_model, upload

URL = "/api/v1"
CSV_TYPE, JSONL_TYPE, PARQUET_TYPE = "text/csv", "application/x-ndjson", "application/x-parquet"
#: what describes a dataset's content (not its id, name, time, storage or upload warnings)
CONTENT_KEYS = ("n_samples", "n_features", "n_targets", "columns", "target", "feature_names")


def download(client: FlaskClient, dataset_id: str, accept: str) -> Any:
    r = client.get(f"{URL}/datasets/{dataset_id}/data", headers={"Accept": accept})
    assert r.status_code == 200, r.get_data(as_text=True)[:500]
    return r


def expected_records(client: FlaskClient, dataset_id: str) -> list[dict[str, Any]]:
    """The stored rows, from the JSON answer, as records with the download's column names."""
    description = client.get(f"{URL}/datasets/{dataset_id}").get_json()
    data = client.get(f"{URL}/datasets/{dataset_id}/data").get_json()
    names = description["feature_names"]
    target = description["target"]["name"] or "target"
    records = []
    for features, y in zip(data["features"], data["targets"], strict=True):
        record = dict(zip(names, features, strict=True))
        if isinstance(y, list):
            record.update({f"{target}_{j}": v for j, v in enumerate(y)})
        else:
            record[target] = y
        records.append(record)
    return records


def csv_records(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def assert_csv_matches(text: str, expected: list[dict[str, Any]]) -> None:
    rows = csv_records(text)
    assert len(rows) == len(expected)
    assert list(rows[0]) == list(expected[0])
    for row, want in zip(rows, expected, strict=True):
        for name, value in want.items():
            cell = row[name]
            if value is None:
                assert cell == "", (name, cell)
            elif isinstance(value, bool | str):
                assert cell == str(value), (name, cell)
            else:  # every number reads back exactly
                assert float(cell) == value, (name, cell, value)


def assert_every_format_holds(client: FlaskClient, dataset_id: str) -> list[dict[str, Any]]:
    expected = expected_records(client, dataset_id)
    assert_csv_matches(download(client, dataset_id, CSV_TYPE).get_data(as_text=True), expected)
    lines = download(client, dataset_id, JSONL_TYPE).get_data(as_text=True).splitlines()
    assert [json.loads(line) for line in lines] == expected
    assert [list(json.loads(line)) for line in lines[:1]] == [list(expected[0])]
    table = pq.read_table(io.BytesIO(download(client, dataset_id, PARQUET_TYPE).data))
    assert table.column_names == list(expected[0])
    assert table.to_pylist() == expected
    return expected


def rounded(value: Any) -> Any:
    """Statistics to 12 digits: merged block by block, their last bit depends on the blocks."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def content(description: dict[str, Any]) -> dict[str, Any]:
    return rounded({key: description[key] for key in CONTENT_KEYS})


# ---- GET /datasets/{id}/data -----------------------------------------------------------------


def test_each_format_holds_the_stored_rows_and_csv_uploads_again_as_the_same_dataset(
    client: FlaskClient,
) -> None:
    types = json.dumps({"zip": "categorical"})  # "02139": text, as a number would lose its 0
    r = upload(client, penguins(), target="species", column_types=types)
    assert r.status_code == 201, r.get_json()
    first = r.get_json()
    expected = assert_every_format_holds(client, first["id"])
    # categorical text, booleans as their text, missing cells, labels
    assert expected[0] == {
        "island": "Biscoe",
        "bill_length_mm": None,
        "member": "true",
        "zip": "10001",
        "species": "Adelie",
    }
    r = download(client, first["id"], CSV_TYPE)
    assert r.headers["Content-Disposition"] == 'attachment; filename="penguins.csv"'
    assert r.mimetype == "text/csv"
    again = upload(client, r.data, column_types=types)  # the target: the last column
    assert again.status_code == 201, again.get_json()
    assert content(again.get_json()) == content(first)
    assert expected_records(client, again.get_json()["id"]) == expected
    # Parquet uploads again as the same dataset too
    parquet = download(client, first["id"], PARQUET_TYPE).data
    r = client.post(
        f"{URL}/datasets?column_types={types}",
        data=parquet,
        content_type="application/vnd.apache.parquet",
    )
    assert r.status_code == 201, r.get_json()
    assert content(r.get_json()) == content(first)


def test_a_csv_without_number_like_categories_needs_no_options_to_come_back(
    client: FlaskClient,
) -> None:
    lines = ["colour,size,weight,label"]
    for i in range(40):
        colour = ["red", 'dark "navy" blue', "green, light", ""][i % 4]
        weight = "" if i % 5 == 0 else f"{i * 0.1:.1f}"
        lines.append(f'"{colour.replace(chr(34), chr(34) * 2)}",{i % 3},{weight},{i % 2}')
    r = upload(client, ("\n".join(lines) + "\n").encode())
    assert r.status_code == 201, r.get_json()
    first = r.get_json()
    assert first["target"]["kind"] == "integers"
    expected = assert_every_format_holds(client, first["id"])
    assert {type(record["label"]) for record in expected} == {int}
    schema = pq.read_schema(io.BytesIO(download(client, first["id"], PARQUET_TYPE).data))
    assert schema.field("label").type == pa.int64()
    assert schema.field("colour").type == pa.string()
    assert schema.field("size").type == pa.float64()
    text = download(client, first["id"], CSV_TYPE).data
    assert b'"dark ""navy"" blue"' in text and b'"green, light"' in text
    again = upload(client, text)
    assert again.status_code == 201, again.get_json()
    assert content(again.get_json()) == content(first)


def test_multi_output_targets_come_out_one_column_each(client: FlaskClient) -> None:
    rows = [{"a": float(i), "b": ["x", "y"][i % 2], "y": [i * 0.5, -i, None]} for i in range(6)]
    for row in rows:
        row["y"] = row["y"][:2]
    r = client.post(f"{URL}/datasets", json={"name": "two outputs", "rows": rows, "target": "y"})
    assert r.status_code == 201, r.get_json()
    dataset_id = r.get_json()["id"]
    expected = assert_every_format_holds(client, dataset_id)
    assert list(expected[1]) == ["a", "b", "y_0", "y_1"]
    assert expected[1] == {"a": 1.0, "b": "y", "y_0": 0.5, "y_1": -1.0}
    r = download(client, dataset_id, CSV_TYPE)
    assert r.headers["Content-Disposition"] == 'attachment; filename="two_outputs.csv"'
    # a bare features matrix: columns x0, x1, ..., the target "target"
    dataset_id = post_dataset(client)
    records = assert_every_format_holds(client, dataset_id)
    assert list(records[0]) == ["x0", "x1", "target"]


@pytest.mark.app_config({"CSV_BLOCK_SIZE": 64})
def test_a_column_stored_as_numbers_before_its_first_text_comes_out_as_text(
    client: FlaskClient,
) -> None:
    lines = [f"{i}.0,{i % 7},{i % 2}" for i in range(60)]
    lines[45] = "n/a (broken sensor),3,1"
    r = upload(client, ("a,b,y\n" + "\n".join(lines) + "\n").encode())
    assert r.status_code == 201, r.get_json()
    first = r.get_json()
    assert first["columns"][0]["type"] == "categorical" and first["warnings"]
    expected = assert_every_format_holds(client, first["id"])
    assert [record["a"] for record in expected[:3]] == ["0", "1", "2"]
    table = pq.read_table(io.BytesIO(download(client, first["id"], PARQUET_TYPE).data))
    assert table.schema.field("a").type == pa.string()
    again = upload(client, download(client, first["id"], CSV_TYPE).data)
    assert again.status_code == 201, again.get_json()
    assert content(again.get_json()) == content(first)


def test_the_json_answer_stays_the_default(client: FlaskClient) -> None:
    dataset_id = post_dataset(client)
    legacy = client.get(f"{URL}/datasets/{dataset_id}/data")
    assert legacy.mimetype == "application/json"
    assert set(legacy.get_json()) == {"id", "features", "targets"}
    for accept in ("*/*", "application/json", "application/json, text/csv", "text/html, */*"):
        r = client.get(f"{URL}/datasets/{dataset_id}/data", headers={"Accept": accept})
        assert r.mimetype == "application/json" and r.get_json() == legacy.get_json(), accept
    r = client.get(f"{URL}/datasets/{dataset_id}/data", headers={"Accept": "text/*"})
    assert r.mimetype == "text/csv"


def test_an_accept_nothing_matches_is_406(client: FlaskClient) -> None:
    dataset_id = post_dataset(client)
    r = client.get(f"{URL}/datasets/{dataset_id}/data", headers={"Accept": "image/png"})
    error = assert_error(r, 406)
    assert error["code"] == "not_acceptable"
    for media in ("application/json", "text/csv", "application/x-ndjson", "parquet"):
        assert media in error["message"]
    r = client.get(f"{URL}/datasets/{'0' * 32}/data", headers={"Accept": "text/csv"})
    assert_error(r, 404)


def streamed_chunks(response: Any) -> list[bytes]:
    """The pieces the answer left the app in (a body built whole is one piece, with a
    Content-Length)."""
    assert response.status_code == 200
    assert "Content-Length" not in response.headers
    return list(response.response)


def test_downloads_stream(client: FlaskClient) -> None:
    dataset_id = post_dataset(client)
    for accept in (CSV_TYPE, PARQUET_TYPE):  # header (or magic) and rows: pieces apart
        r = client.get(f"{URL}/datasets/{dataset_id}/data", headers={"Accept": accept})
        assert len(streamed_chunks(r)) >= 2, accept
        assert r.headers["Content-Disposition"].startswith("attachment; filename=")
    r = client.get(f"{URL}/datasets/{dataset_id}/data", headers={"Accept": JSONL_TYPE})
    assert b"".join(streamed_chunks(r)).count(b"\n") == 10


def test_many_row_groups_come_out_in_order(client: FlaskClient) -> None:
    """More rows than a row group (65,536): the pieces are encoded on threads, in order."""
    n = 70_000
    body = "x,y\n" + "".join(f"{i},{i % 3}\n" for i in range(n))
    r = client.post(f"{URL}/datasets", data=body, content_type="text/csv")
    assert r.status_code == 201, r.get_json()
    dataset_id = r.get_json()["id"]
    text = download(client, dataset_id, CSV_TYPE).get_data(as_text=True)
    lines = text.splitlines()
    assert lines[0] == "x,y" and len(lines) == n + 1
    assert [int(line.split(",")[0]) for line in lines[1:]] == list(range(n))
    table = pq.read_table(io.BytesIO(download(client, dataset_id, PARQUET_TYPE).data))
    assert table.column("x").to_pylist() == [float(i) for i in range(n)]


# ---- POST /models/{id}/predict ---------------------------------------------------------------


@pytest.fixture
def trained_penguins(app: Flask, client: FlaskClient) -> tuple[str, str]:
    r = upload(
        client, penguins(), target="species", column_types=json.dumps({"zip": "categorical"})
    )
    assert r.status_code == 201, r.get_json()
    dataset_id = r.get_json()["id"]
    model_id, _ = store_trained_model(app, dataset_id, [8, 3], "cross_entropy")
    return dataset_id, model_id


def predict_file(client: FlaskClient, model_id: str, raw: bytes, accept: str | None) -> Any:
    return client.post(
        f"{URL}/models/{model_id}/predict",
        data={"file": (io.BytesIO(raw), "new.csv")},
        content_type="multipart/form-data",
        headers={"Accept": accept} if accept else {},
    )


def without_column(raw: bytes, name: str) -> bytes:
    rows = list(csv.reader(io.StringIO(raw.decode(), newline="")))
    keep = [j for j, h in enumerate(rows[0]) if h != name]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([[r[j] for j in keep] for r in rows])
    return out.getvalue().encode()


def test_a_labelled_csv_is_scored_and_its_csv_answer_streams(
    client: FlaskClient, trained_penguins: tuple[str, str]
) -> None:
    _, model_id = trained_penguins
    labelled = penguins()  # carries the target column, species
    unlabelled = without_column(labelled, "species")
    plain = predict_file(client, model_id, unlabelled, None)
    assert plain.status_code == 200, plain.get_json()
    r = predict_file(client, model_id, labelled, None)
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == plain.get_json()
    r = predict_file(client, model_id, labelled, "text/csv")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    rows = csv_records(r.get_data(as_text=True))
    assert list(rows[0]) == ["prediction", "p_Adelie", "p_Chinstrap", "p_Gentoo"]
    assert [row["prediction"] for row in rows] == plain.get_json()["predictions"]
    np.testing.assert_allclose(
        [[float(row[k]) for k in list(row)[1:]] for row in rows],
        plain.get_json()["probabilities"],
        rtol=1e-6,
    )
    r = predict_file(client, model_id, labelled, "text/csv")
    assert len(streamed_chunks(r)) == 2  # the header, then the rows
    r = predict_file(client, model_id, labelled, "application/vnd.apache.parquet")
    table = pq.read_table(io.BytesIO(r.data))
    assert table.column("prediction").to_pylist() == plain.get_json()["predictions"]
    assert r.headers["Content-Disposition"] == (
        f'attachment; filename="predictions-{model_id}.parquet"'
    )


def test_a_downloaded_dataset_can_be_scored_as_it_is(
    client: FlaskClient, trained_penguins: tuple[str, str]
) -> None:
    dataset_id, model_id = trained_penguins
    raw = download(client, dataset_id, CSV_TYPE).data
    r = predict_file(client, model_id, raw, "text/csv")
    assert r.status_code == 200, r.get_data(as_text=True)
    assert len(csv_records(r.get_data(as_text=True))) == 36


def test_unknown_columns_are_still_refused(
    client: FlaskClient, trained_penguins: tuple[str, str]
) -> None:
    _, model_id = trained_penguins
    r = predict_file(client, model_id, b"island,flipper,species\nDream,200,Adelie\n", "text/csv")
    message = assert_error(r, 422, "file")["fields"]["file"]
    assert "unknown column 'flipper'" in message
    r = predict_file(client, model_id, b"island\nDream\n", "image/png")
    assert assert_error(r, 406)["code"] == "not_acceptable"


def test_a_multi_output_model_streams_one_column_per_output(
    app: Flask, client: FlaskClient
) -> None:
    rows = [{"a": float(i), "b": ["x", "y"][i % 2], "y": [i * 0.5, -i]} for i in range(20)]
    r = client.post(f"{URL}/datasets", json={"name": "two", "rows": rows, "target": "y"})
    dataset_id = r.get_json()["id"]
    model_id, model = store_trained_model(app, dataset_id, [4, 2], "mse", epochs=5)
    labelled = download(client, dataset_id, CSV_TYPE).data  # a, b, y_0, y_1
    r = predict_file(client, model_id, labelled, "text/csv")
    assert r.status_code == 200, r.get_data(as_text=True)
    out = csv_records(r.get_data(as_text=True))
    assert list(out[0]) == ["prediction_0", "prediction_1"]
    expected = model.predict([[row["a"], row["b"]] for row in rows])["predictions"]
    np.testing.assert_allclose([[float(v) for v in row.values()] for row in out], expected)
    json_rows = [{"a": 1.0, "b": "x"}]
    r = client.post(
        f"{URL}/models/{model_id}/predict",
        json={"rows": json_rows},
        headers={"Accept": "application/x-ndjson"},
    )
    (line,) = b"".join(streamed_chunks(r)).decode().splitlines()
    assert list(json.loads(line)) == ["prediction_0", "prediction_1"]


def test_a_binary_model_streams_both_classes_probabilities(app: Flask, client: FlaskClient) -> None:
    lines = ["a,b,label"] + [f"{i},{'xy'[i % 2]},{'yes' if i % 3 else 'no'}" for i in range(30)]
    r = upload(client, ("\n".join(lines) + "\n").encode())
    dataset_id = r.get_json()["id"]
    model_id, _ = store_trained_model(app, dataset_id, [4, 1], "binary_cross_entropy", epochs=5)
    labelled = download(client, dataset_id, CSV_TYPE).data
    plain = predict_file(client, model_id, labelled, None).get_json()
    r = predict_file(client, model_id, labelled, "text/csv")
    rows = csv_records(r.get_data(as_text=True))
    assert list(rows[0]) == ["prediction", "p_no", "p_yes"]
    assert [row["prediction"] for row in rows] == plain["predictions"]
    np.testing.assert_allclose(
        [[float(row["p_no"]), float(row["p_yes"])] for row in rows], plain["probabilities"]
    )
