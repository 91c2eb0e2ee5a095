"""POST/GET /api/v1/datasets: JSON and CSV uploads, validation, pagination."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from core.model import array_from_bytes, array_to_bytes
from service.datasets import load_data
from service.tables import Dataset
from tests.service.helpers import assert_error

URL = "/api/v1/datasets"


def stored(app: Flask, dataset_id: str) -> SimpleNamespace:
    """The stored dataset: its row's fields, `table` (the feature columns), `features` (an
    all-numeric table as `.npy` bytes of its matrix) and `targets` (`.npy` bytes)."""
    with app.extensions["db_sessionmaker"]() as session:
        row = session.get(Dataset, dataset_id)
        table, targets = load_data(session, dataset_id)
        numeric = all(t == "numeric" for t in table.types)
        matrix = np.stack([c.values for c in table.columns], axis=1) if numeric else None
        return SimpleNamespace(
            target_kind=row.target_kind,
            classes=row.classes,
            table=table,
            features=array_to_bytes(matrix) if numeric else None,
            targets=array_to_bytes(targets),
        )


def count(app: Flask) -> int:
    with app.extensions["db_sessionmaker"]() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(Dataset))


def test_json_regression_dataset(app: Flask, client: FlaskClient) -> None:
    body = {"name": "line", "features": [[0.0, 1.0], [2.0, 3.5], [4, 5]], "targets": [1.5, 2, -3]}
    r = client.post(URL, json=body)
    assert r.status_code == 201
    data = r.get_json()
    assert r.headers["Location"] == f"{URL}/{data['id']}"
    assert data["name"] == "line"
    assert (data["n_samples"], data["n_features"], data["n_targets"]) == (3, 2, 1)
    assert "classes" not in data
    assert data["created_at"].endswith("+00:00")
    row = stored(app, data["id"])
    assert row.target_kind == "numeric"
    np.testing.assert_array_equal(array_from_bytes(row.features), [[0, 1], [2, 3.5], [4, 5]])
    np.testing.assert_array_equal(array_from_bytes(row.targets), [[1.5], [2], [-3]])
    assert client.get(f"{URL}/{data['id']}").get_json() == data


def test_json_int_targets_are_numeric_with_classes(app: Flask, client: FlaskClient) -> None:
    r = client.post(URL, json={"name": "b", "features": [[0], [1], [2]], "targets": [3, 1, 3]})
    assert r.status_code == 201
    assert r.get_json()["classes"] == [1, 3]
    row = stored(app, r.get_json()["id"])
    assert row.target_kind == "numeric"
    np.testing.assert_array_equal(array_from_bytes(row.targets), [[3], [1], [3]])


def test_json_string_labels(app: Flask, client: FlaskClient) -> None:
    body = {"name": "c", "features": [[0], [1], [2], [3]], "targets": ["b", "a", "c", "a"]}
    r = client.post(URL, json=body)
    assert r.status_code == 201
    assert r.get_json()["classes"] == ["a", "b", "c"]
    row = stored(app, r.get_json()["id"])
    assert row.target_kind == "labels"
    targets = array_from_bytes(row.targets)
    assert targets.dtype == np.int64
    np.testing.assert_array_equal(targets, [1, 0, 2, 0])


def test_json_several_outputs(app: Flask, client: FlaskClient) -> None:
    body = {"name": "m", "features": [[0], [1]], "targets": [[1, 2, 3], [4, 5, 6.5]]}
    r = client.post(URL, json=body)
    assert r.status_code == 201
    assert r.get_json()["n_targets"] == 3
    assert "classes" not in r.get_json()
    np.testing.assert_array_equal(
        array_from_bytes(stored(app, r.get_json()["id"]).targets), [[1, 2, 3], [4, 5, 6.5]]
    )


def test_csv_upload_default_target_is_last_column(app: Flask, client: FlaskClient) -> None:
    csv = b"x1,x2,label\n0.5,1,yes\n-1,2e-1,no\n3,4,yes\n"
    r = client.post(
        URL,
        data={"file": (io.BytesIO(csv), "animals.csv")},
        content_type="multipart/form-data",
    )
    assert r.status_code == 201, r.get_json()
    data = r.get_json()
    assert data["name"] == "animals"
    assert (data["n_samples"], data["n_features"], data["n_targets"]) == (3, 2, 1)
    assert data["classes"] == ["no", "yes"]
    assert data["feature_names"] == ["x1", "x2"]
    row = stored(app, data["id"])
    np.testing.assert_array_equal(array_from_bytes(row.features), [[0.5, 1], [-1, 0.2], [3, 4]])
    np.testing.assert_array_equal(array_from_bytes(row.targets), [1, 0, 1])


def test_csv_upload_named_target(app: Flask, client: FlaskClient) -> None:
    csv = b"y,a,b\n1,2,3\n0,5,6\n"
    r = client.post(
        URL,
        data={"file": (io.BytesIO(csv), "d.csv"), "target": "y", "name": "named"},
        content_type="multipart/form-data",
    )
    assert r.status_code == 201, r.get_json()
    data = r.get_json()
    assert data["name"] == "named"
    assert data["classes"] == [0, 1]
    assert data["feature_names"] == ["a", "b"]
    row = stored(app, data["id"])
    np.testing.assert_array_equal(array_from_bytes(row.features), [[2, 3], [5, 6]])
    np.testing.assert_array_equal(array_from_bytes(row.targets), [[1], [0]])


@pytest.mark.parametrize(
    ("csv", "form", "field"),
    [
        (b"a,b,c\n1,x,1\n", {"column_types": '{"b": "numeric"}'}, "file"),  # text, numeric
        (b"a,b\n1,2\n3\n", {}, "file"),  # ragged: short
        (b"y,a,b\n1,2\n0,3,4\n", {"target": "y"}, "file"),  # short, the target present
        (b"a,b\n1,2,3\n4,5,6\n", {}, "file"),  # every row longer than the header
        (b"a,b\n1,2\n3,4,5\n", {}, "file"),
        (b"a,b\n", {}, "file"),  # header only
        (b"", {}, "file"),
        (b"a,b\ninf,1\n", {}, "file"),
        (b"a,b\n1,NaN\n", {}, "file"),  # a missing target
        (b"a,a,b\n1,2,3\n", {}, "file"),  # a column named twice
        (b"a,b\n1,2\n", {"target": "nope"}, "target"),
        (b"a,b\n1,2\n", {"column_types": '{"zip": "categorical"}'}, "column_types"),
        (b"a,b\n1,2\n", {"column_types": '{"a": "text"}'}, "column_types.a"),
        (b"a,b\n1,2\n", {"column_types": "zip=categorical"}, "column_types"),
        (b"a,b\n1,2\n", {"column_types": '["a"]'}, "column_types"),
        (b"a,b\n1,2\n", {"column_types": '{"b": "categorical"}'}, "column_types"),  # target
        (b"\xff\xfe\x00a", {}, "file"),
        (b"a,b\nx\x00y,1\n", {}, "file"),
    ],
)
def test_csv_errors(
    app: Flask, client: FlaskClient, csv: bytes, form: dict[str, str], field: str
) -> None:
    r = client.post(
        URL,
        data={"file": (io.BytesIO(csv), "d.csv"), **form},
        content_type="multipart/form-data",
    )
    assert_error(r, 422, field)
    assert count(app) == 0


@pytest.mark.parametrize(
    ("csv", "columns"),
    [
        # these were 422s before typed columns: text is a categorical column, NaN a missing cell
        (
            b"a,b,c\n1,x,1\n2,y,0\n3,x,1\n",
            [("a", "numeric", 0, None), ("b", "categorical", 0, ["x", "y"])],
        ),
        (b"a,b\nx,1\n", [("a", "categorical", 0, ["x"])]),
        (b"a,b\nnan,1\n2,0\n", [("a", "numeric", 1, None)]),
    ],
)
def test_csv_text_and_nan_cells(
    app: Flask, client: FlaskClient, csv: bytes, columns: list[tuple[Any, ...]]
) -> None:
    r = client.post(
        URL, data={"file": (io.BytesIO(csv), "d.csv")}, content_type="multipart/form-data"
    )
    assert r.status_code == 201, r.get_json()
    described = r.get_json()["columns"]
    assert [(c["name"], c["type"], c["missing"]) for c in described] == [c[:3] for c in columns]
    table = stored(app, r.get_json()["id"]).table
    for column, (_, _, _, levels) in zip(table.columns, columns, strict=True):
        assert column.levels == levels


@pytest.mark.parametrize(
    ("features", "types", "rows"),
    [
        ([[1, "2"]], ["numeric", "numeric"], [[1.0, 2.0]]),  # a string that is a number
        ([[1, None], [2, 3]], ["numeric", "numeric"], [[1.0, None], [2.0, 3.0]]),
        ([[1, True], [2, False]], ["numeric", "categorical"], [[1.0, "true"], [2.0, "false"]]),
        ([[1, "b"], [2, "NA"]], ["numeric", "categorical"], [[1.0, "b"], [2.0, None]]),
    ],
)
def test_json_string_bool_and_null_cells(
    client: FlaskClient, features: list[list[Any]], types: list[str], rows: list[list[Any]]
) -> None:
    r = client.post(URL, json={"name": "x", "features": features, "targets": [1] * len(rows)})
    assert r.status_code == 201, r.get_json()
    assert [c["type"] for c in r.get_json()["columns"]] == types
    assert client.get(f"{URL}/{r.get_json()['id']}/data").get_json()["features"] == rows


def test_a_missing_target_names_the_line(app: Flask, client: FlaskClient) -> None:
    csv = b"a,b\n1,0\n2,\n3,1\n"
    r = client.post(
        URL, data={"file": (io.BytesIO(csv), "d.csv")}, content_type="multipart/form-data"
    )
    assert "line 3" in assert_error(r, 422, "file")["fields"]["file"]
    r = client.post(URL, json={"name": "x", "features": [[1], [2]], "targets": [0, None]})
    assert "entry 1" in assert_error(r, 422, "targets")["fields"]["targets"]
    assert count(app) == 0


def test_csv_missing_file(client: FlaskClient) -> None:
    r = client.post(URL, data={"target": "y"}, content_type="multipart/form-data")
    assert_error(r, 422, "file")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "features": [[1, 2], [3]], "targets": [0, 1]}, "features"),
        ({"name": "x", "features": [], "targets": []}, "features"),
        ({"name": "x", "features": [[]], "targets": [1]}, "features"),
        ({"name": "x", "features": [[1, {"a": 2}]], "targets": [1]}, "features"),
        ({"name": "x", "features": [[1, [2]]], "targets": [1]}, "features"),
        ({"name": "x", "features": [[1, "a\x00b"]], "targets": [1]}, "features"),
        ({"name": "x", "features": [[1, 10**400]], "targets": [1]}, "features"),
        (
            {"name": "x", "features": [[1, 2]], "targets": [1], "column_types": {"z": "numeric"}},
            "column_types",
        ),
        (
            {
                "name": "x",
                "features": [[1, "a"]],
                "targets": [1],
                "column_types": {"x1": "numeric"},
            },
            "features",
        ),
        ({"name": "x", "features": [1, 2], "targets": [1, 2]}, "features"),
        ({"name": "x", "features": "1,2", "targets": [1]}, "features"),
        ({"name": "x", "features": [[1], [2]], "targets": [1]}, "targets"),
        ({"name": "x", "features": [[1], [2]], "targets": [1, "a"]}, "targets"),
        ({"name": "x", "features": [[1], [2]], "targets": [[1], [2, 3]]}, "targets"),
        ({"name": "x", "features": [[1], [2]], "targets": [None, 1]}, "targets"),
        ({"name": "x", "features": [[1]], "targets": 1}, "targets"),
        ({"features": [[1]], "targets": [1]}, "name"),
        ({"name": "", "features": [[1]], "targets": [1]}, "name"),
        ({"name": "x", "targets": [1]}, "features"),
        ({"name": "x", "features": [[1]], "targets": [1], "extra": 1}, "extra"),
    ],
)
def test_json_validation_errors(
    app: Flask, client: FlaskClient, body: dict[str, Any], field: str
) -> None:
    assert_error(client.post(URL, json=body), 422, field)
    assert count(app) == 0


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers(app: Flask, client: FlaskClient, bad: str) -> None:
    # Python's json module reads these; they must not reach the store.
    features = f'{{"name": "x", "features": [[1.0, {bad}]], "targets": [1]}}'
    r = client.post(URL, data=features, content_type="application/json")
    assert "finite" in assert_error(r, 422, "features")["fields"]["features"]
    targets = f'{{"name": "x", "features": [[1.0]], "targets": [{bad}]}}'
    r = client.post(URL, data=targets, content_type="application/json")
    assert_error(r, 422, "targets")
    assert count(app) == 0


@pytest.mark.app_config({"LIMITS": None})
def test_limits(app: Flask, client: FlaskClient) -> None:
    from service.config import Limits

    app.config["LIMITS"] = Limits(max_rows=3, max_features=2, max_classes=2)
    r = client.post(URL, json={"name": "x", "features": [[1]] * 4, "targets": [1] * 4})
    assert "limit" in assert_error(r, 422, "features")["message"]
    r = client.post(URL, json={"name": "x", "features": [[1, 2, 3]], "targets": [1]})
    assert_error(r, 422, "features")
    r = client.post(URL, json={"name": "x", "features": [[1]] * 3, "targets": ["a", "b", "c"]})
    assert_error(r, 422, "targets")
    assert count(app) == 0
    r = client.post(URL, json={"name": "x", "features": [[1, 2]] * 3, "targets": ["a", "b", "a"]})
    assert r.status_code == 201


def test_malformed_json(app: Flask, client: FlaskClient) -> None:
    r = client.post(URL, data='{"name": "x", "features": [[1]', content_type="application/json")
    assert assert_error(r, 400)["code"] == "malformed_json"
    assert count(app) == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type(app: Flask, client: FlaskClient, content_type: str | None) -> None:
    body = '{"name": "x", "features": [[1]], "targets": [1]}'
    r = client.post(URL, data=body, content_type=content_type)
    assert assert_error(r, 415)["code"] == "unsupported_media_type"
    assert count(app) == 0


@pytest.mark.app_config({"MAX_CONTENT_LENGTH": 2000, "MAX_UPLOAD_BYTES": 8000})
def test_body_over_limit(app: Flask, client: FlaskClient) -> None:
    """JSON bodies keep TRAINYARD_MAX_CONTENT_LENGTH; CSV files (streamed) have their own
    TRAINYARD_MAX_UPLOAD_BYTES; each 413 names its limit, and a body of exactly the limit is
    taken."""
    body = {"name": "big", "features": [[0.123456789]] * 400, "targets": [1.0] * 400}
    error = assert_error(client.post(URL, json=body), 413)
    assert error["code"] == "payload_too_large"
    assert "TRAINYARD_MAX_CONTENT_LENGTH" in error["message"] and "2000" in error["message"]
    exact = b'{"name": "x", "features": [[1]], "targets": [1]}'
    exact = exact[:-1] + b" " * (2000 - len(exact)) + b"}"
    assert len(exact) == 2000
    assert client.post(URL, data=exact, content_type="application/json").status_code == 201
    csv = b"a,b\n" + b"1.23456789,1\n" * 400  # 5,204 bytes: over the JSON limit, under 8000
    r = client.post(
        URL, data={"file": (io.BytesIO(csv), "d.csv")}, content_type="multipart/form-data"
    )
    assert r.status_code == 201, r.get_json()
    r = client.post(
        URL, data={"file": (io.BytesIO(csv * 2), "d.csv")}, content_type="multipart/form-data"
    )
    assert "TRAINYARD_MAX_UPLOAD_BYTES" in assert_error(r, 413)["message"]
    assert count(app) == 2


def test_unknown_dataset(client: FlaskClient) -> None:
    r = client.get(f"{URL}/doesnotexist")
    assert assert_error(r, 404)["code"] == "not_found"


def test_list_paginated_newest_first(client: FlaskClient) -> None:
    ids = []
    for i in range(5):
        r = client.post(URL, json={"name": f"d{i}", "features": [[i]], "targets": [i]})
        ids.append(r.get_json()["id"])
    r = client.get(f"{URL}?page=1&page_size=2")
    assert r.status_code == 200
    body = r.get_json()
    assert body["pagination"] == {"page": 1, "page_size": 2, "total": 5, "pages": 3}
    assert [d["id"] for d in body["items"]] == ids[::-1][:2]
    last = client.get(f"{URL}?page=3&page_size=2").get_json()
    assert [d["id"] for d in last["items"]] == [ids[0]]
    assert client.get(f"{URL}?page=4&page_size=2").get_json()["items"] == []
    default = client.get(URL).get_json()
    assert default["pagination"]["page_size"] == 20
    assert len(default["items"]) == 5


@pytest.mark.parametrize("query", ["page=0", "page_size=0", "page_size=101", "page=x"])
def test_list_bad_pagination(client: FlaskClient, query: str) -> None:
    field = query.split("=")[0]
    assert_error(client.get(f"{URL}?{query}"), 422, field)


@pytest.mark.parametrize(
    "targets",
    [
        [1.5, 2.0, -3.0],  # regression
        [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],  # several outputs
        [3, 1, 3],  # integer labels stay ints
        ["cat", "dog", "cat"],  # string labels stay strings
    ],
)
def test_rows_come_back_as_submitted(client: FlaskClient, targets: list[Any]) -> None:
    features = [[0.0, 1.0], [2.0, 3.5], [4.0, -5.0]]
    r = client.post(URL, json={"name": "d", "features": features, "targets": targets})
    assert r.status_code == 201, r.get_json()
    dataset_id = r.get_json()["id"]
    rows = client.get(f"{URL}/{dataset_id}/data")
    assert rows.status_code == 200
    assert rows.get_json() == {"id": dataset_id, "features": features, "targets": targets}
    assert [type(t) for t in rows.get_json()["targets"]] == [type(t) for t in targets]


def test_rows_of_a_csv_upload(client: FlaskClient) -> None:
    csv = b"x1,x2,label\n0.5,1,yes\n-1,2e-1,no\n"
    r = client.post(
        URL, data={"file": (io.BytesIO(csv), "a.csv")}, content_type="multipart/form-data"
    )
    rows = client.get(f"{URL}/{r.get_json()['id']}/data").get_json()
    assert rows["features"] == [[0.5, 1.0], [-1.0, 0.2]] and rows["targets"] == ["yes", "no"]


def test_rows_of_an_unknown_dataset(client: FlaskClient) -> None:
    assert_error(client.get(f"{URL}/{'0' * 32}/data"), 404)
