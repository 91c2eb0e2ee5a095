"""Issue 13 through the API: typed columns with missing cells, predict on named rows / raw
features / a CSV, the model bundle, evaluate on another dataset, the loss picked from the
targets. Models are trained here with `core.training.train` on the stored data and saved as the
worker saves them."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from core import metrics, training
from core.model import Model, probabilities_from_logits, weights_to_npz
from service.datasets import load_data
from service.tables import Dataset, Job, TrainedModel
from tests.service.helpers import assert_error, post_dataset
from tests.service.test_models import add_model

URL = "/api/v1"
MISSING = ["", "NA", "na", "NaN", "nan", "NAN", "null", "NULL", "None", "none", "NONE", " NA "]
LEVELS = ["Biscoe", "Dream", "Torgersen"]


def penguins(n: int = 36, seed: int = 0) -> bytes:
    """A small CSV with a text column, a boolean column, a zip code, and missing cells in every
    spelling; the species follows the island and the bill length."""
    rng = np.random.default_rng(seed)
    lines = ["island,bill_length_mm,member,zip,species"]
    for i in range(n):
        island = LEVELS[i % 3]
        bill = 35 + 5 * (i % 3) + rng.normal()
        cell = MISSING[i // 3] if i % 3 == 0 and i // 3 < len(MISSING) else f"{bill:.1f}"
        member = ["true", "FALSE", "True", "false"][i % 4]
        species = ["Adelie", "Gentoo", "Chinstrap"][i % 3]
        lines.append(f"{island},{cell},{member},{'02139' if i % 2 else '10001'},{species}")
    return ("\n".join(lines) + "\n").encode()


def upload(client: FlaskClient, raw: bytes, **form: str) -> Any:
    return client.post(
        f"{URL}/datasets",
        data={"file": (io.BytesIO(raw), "penguins.csv"), **form},
        content_type="multipart/form-data",
    )


def store_trained_model(
    app: Flask,
    dataset_id: str,
    layers: list[int],
    loss: str,
    epochs: int = 30,
) -> tuple[str, Model]:
    """Train on the stored dataset (core.training) and save the model as the worker does."""
    model_spec = {"layers": layers, "activation": "tanh", "output_activation": None}
    spec = {"loss": loss, "optimizer": "adam", "learning_rate": 0.05, "epochs": epochs,
            "batch_size": None, "seed": 0}  # fmt: skip
    with app.extensions["db_sessionmaker"]() as session:
        dataset = session.get(Dataset, dataset_id)
        assert dataset is not None
        table, targets = load_data(session, dataset_id)
        result = training.train(
            table, targets, model_spec, spec, target_kind=dataset.target_kind,
            classes=dataset.classes, graph=False,
        )  # fmt: skip
        job = Job(dataset_id=dataset_id, status="succeeded", model_spec=model_spec,
                  training_spec=spec, epochs=epochs, epoch=epochs)  # fmt: skip
        session.add(job)
        session.flush()
        row = TrainedModel(
            job_id=job.id,
            dataset_id=dataset_id,
            architecture=result.architecture,
            weights=weights_to_npz(result.state_dict),
            graph_svg="<svg xmlns='http://www.w3.org/2000/svg'/>",
            metrics=result.metrics,
            evaluation=result.evaluation,
        )
        session.add(row)
        session.commit()
        return row.id, Model(result.architecture, result.state_dict)


@pytest.fixture
def trained(app: Flask, client: FlaskClient) -> tuple[str, str, Model]:
    """(dataset id, model id, the model) for the penguins CSV, three classes."""
    r = upload(
        client, penguins(), target="species", column_types=json.dumps({"zip": "categorical"})
    )
    assert r.status_code == 201, r.get_json()
    dataset_id = r.get_json()["id"]
    model_id, model = store_trained_model(app, dataset_id, [8, 3], "cross_entropy")
    return dataset_id, model_id, model


# ---- datasets ------------------------------------------------------------------------------


def test_csv_upload_types_columns_and_counts_missing_cells(client: FlaskClient) -> None:
    raw = penguins()
    r = upload(client, raw, target="species", column_types=json.dumps({"zip": "categorical"}))
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert client.get(f"{URL}/datasets/{body['id']}").get_json() == body
    assert body["feature_names"] == ["island", "bill_length_mm", "member", "zip"]
    columns = {c["name"]: c for c in body["columns"]}
    assert [c["type"] for c in body["columns"]] == ["categorical", "numeric"] + ["categorical"] * 2
    island = columns["island"]
    assert island["missing"] == 0 and island["n_levels"] == 3
    assert sorted((t["value"], t["count"]) for t in island["top"]) == [(v, 12) for v in LEVELS]
    bill = columns["bill_length_mm"]
    assert bill["missing"] == len(MISSING)  # every spelling, any case, spaces around
    values = [
        float(line.split(",")[1])
        for line in raw.decode().splitlines()[1:]
        if line.split(",")[1].strip().lower() not in {"", "na", "nan", "null", "none"}
    ]
    assert bill["min"] == min(values) and bill["max"] == max(values)
    assert bill["mean"] == pytest.approx(np.mean(values))
    member = columns["member"]  # booleans in any case are one categorical column
    assert member["missing"] == 0
    assert sorted((t["value"], t["count"]) for t in member["top"]) == [("false", 18), ("true", 18)]
    # column_types keeps the leading zero: "02139" is a level, not the number 2139
    assert sorted(t["value"] for t in columns["zip"]["top"]) == ["02139", "10001"]
    assert body["target"] == {
        "name": "species",
        "kind": "labels",
        "classes": ["Adelie", "Chinstrap", "Gentoo"],
    }
    rows = client.get(f"{URL}/datasets/{body['id']}/data").get_json()
    assert rows["features"][0] == ["Biscoe", None, "true", "10001"]
    assert rows["features"][1][0] == "Dream" and isinstance(rows["features"][1][1], float)
    assert sum(row[1] is None for row in rows["features"]) == len(MISSING)
    assert rows["targets"][:3] == ["Adelie", "Gentoo", "Chinstrap"]


def test_zip_codes_are_numbers_unless_column_types_says_otherwise(client: FlaskClient) -> None:
    body = upload(client, penguins(), target="species").get_json()
    zip_code = next(c for c in body["columns"] if c["name"] == "zip")
    assert zip_code["type"] == "numeric" and zip_code["min"] == 2139.0


def test_semicolon_and_tab_separated_csv_read_as_with_commas(client: FlaskClient) -> None:
    """(Before the streamed reader a semicolon-separated file was a 422 that said so: the
    delimiter is now detected.)"""
    described = upload(client, penguins(), target="species").get_json()
    for separator in (b";", b"\t"):
        body = upload(client, penguins().replace(b",", separator), target="species").get_json()
        assert body["columns"] == described["columns"] and body["classes"] == described["classes"]


def test_csv_target_missing_names_the_line(client: FlaskClient) -> None:
    raw = b"a,b,y\n1,x,yes\n2,y,\n3,z,no\n"
    assert "line 3" in assert_error(upload(client, raw), 422, "file")["fields"]["file"]


def test_json_rows_form(client: FlaskClient) -> None:
    rows = [
        {"island": "Biscoe", "bill": 41.2, "species": "Adelie"},
        {"island": "Dream", "species": "Gentoo"},  # a missing key is a missing cell
        {"island": None, "bill": 39.0, "species": "Adelie"},
    ]
    # the test client's json= sorts keys; a real client keeps the order, which names the columns
    ordered = json.dumps({"name": "p", "rows": rows, "target": "species"})
    r = client.post(f"{URL}/datasets", data=ordered, content_type="application/json")
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert body["feature_names"] == ["island", "bill"]
    assert [(c["type"], c["missing"]) for c in body["columns"]] == [
        ("categorical", 1),
        ("numeric", 1),
    ]
    assert body["target"] == {"name": "species", "kind": "labels", "classes": ["Adelie", "Gentoo"]}
    data = client.get(f"{URL}/datasets/{body['id']}/data").get_json()
    assert data["features"] == [["Biscoe", 41.2], ["Dream", None], [None, 39.0]]
    assert data["targets"] == ["Adelie", "Gentoo", "Adelie"]
    rows[1].pop("species")
    r = client.post(f"{URL}/datasets", json={"name": "p", "rows": rows, "target": "species"})
    assert "entry 1" in assert_error(r, 422, "rows")["fields"]["rows"]


def test_json_features_with_strings_and_nulls(client: FlaskClient) -> None:
    features = [["a", 1.5, None], ["b", None, True], [None, "2", False]]
    body = {"name": "f", "features": features, "targets": [1.0, 2.0, 3.0]}
    r = client.post(f"{URL}/datasets", json=body)
    assert r.status_code == 201, r.get_json()
    described = r.get_json()["columns"]
    assert [(c["name"], c["type"], c["missing"]) for c in described] == [
        ("x0", "categorical", 1),
        ("x1", "numeric", 1),
        ("x2", "categorical", 1),
    ]
    assert r.get_json()["target"]["kind"] == "numeric"
    data = client.get(f"{URL}/datasets/{r.get_json()['id']}/data").get_json()
    assert data["features"] == [["a", 1.5, None], ["b", None, "true"], [None, 2.0, "false"]]
    body["targets"] = [1.0, None, 3.0]
    assert (
        "entry 1"
        in assert_error(client.post(f"{URL}/datasets", json=body), 422, "targets")["fields"][
            "targets"
        ]
    )


def test_listing_datasets_does_not_read_their_data(app: Flask, client: FlaskClient) -> None:
    for _ in range(3):
        assert upload(client, penguins(), target="species").status_code == 201
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.lower())

    engine = app.extensions["db_engine"]
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        r = client.get(f"{URL}/datasets")
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert r.status_code == 200 and len(r.get_json()["items"]) == 3
    assert any("from datasets" in s for s in statements)
    assert not [s for s in statements if "dataset_data" in s]
    assert all("columns" in item for item in r.get_json()["items"])


# ---- predict ----------------------------------------------------------------------------------


def test_predict_rows_missing_key_unseen_category_and_unknown_key(
    client: FlaskClient, trained: tuple[str, str, Model]
) -> None:
    _, model_id, model = trained
    url = f"{URL}/models/{model_id}/predict"
    rows = [
        {"island": "Biscoe", "bill_length_mm": 36.0, "member": True, "zip": "02139"},
        {"island": "Dream", "member": "false"},  # missing keys: imputed
        {"island": "Atlantis", "bill_length_mm": 45.0, "member": None, "zip": "99999"},  # unseen
    ]
    r = client.post(url, json={"rows": rows})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    order = ["island", "bill_length_mm", "member", "zip"]
    expected = model.predict([[row.get(k) for k in order] for row in rows])
    assert body["predictions"] == expected["predictions"]
    np.testing.assert_allclose(body["probabilities"], expected["probabilities"], rtol=1e-6)
    assert set(body["predictions"]) <= {"Adelie", "Chinstrap", "Gentoo"}
    r = client.post(url, json={"rows": [{**rows[0], "flipper": 200}]})
    assert "flipper" in assert_error(r, 422, "rows")["fields"]["rows"]


def test_predict_features_raw_values_in_training_order(
    client: FlaskClient, trained: tuple[str, str, Model]
) -> None:
    _, model_id, model = trained
    features = [["Torgersen", 44.5, "TRUE", "10001"], ["Biscoe", None, None, None]]
    r = client.post(f"{URL}/models/{model_id}/predict", json={"features": features})
    assert r.status_code == 200, r.get_json()
    expected = model.predict(features)
    assert r.get_json()["predictions"] == expected["predictions"]
    np.testing.assert_allclose(r.get_json()["probabilities"], expected["probabilities"], rtol=1e-6)
    # the same rows by name give the same answer
    names = ["island", "bill_length_mm", "member", "zip"]
    rows = [dict(zip(names, f, strict=True)) for f in features]
    by_name = client.post(f"{URL}/models/{model_id}/predict", json={"rows": rows}).get_json()
    assert by_name == r.get_json()
    r = client.post(f"{URL}/models/{model_id}/predict", json={"features": [["Biscoe", 1.0]]})
    assert_error(r, 422, "features")
    r = client.post(f"{URL}/models/{model_id}/predict", json={"features": [["a", "long", 1, 2]]})
    assert "bill_length_mm" in assert_error(r, 422, "features")["fields"]["features"]


def test_predict_csv_upload_and_csv_answer(
    client: FlaskClient, trained: tuple[str, str, Model]
) -> None:
    _, model_id, model = trained
    raw = b"zip,island,bill_length_mm\n02139,Dream,40.1\n,Biscoe,NA\n10001,Torgersen,\n"
    url = f"{URL}/models/{model_id}/predict"
    r = client.post(
        url, data={"file": (io.BytesIO(raw), "new.csv")}, content_type="multipart/form-data"
    )
    assert r.status_code == 200, r.get_json()
    cells = [["Dream", 40.1, None, "02139"], ["Biscoe", None, None, None]]
    cells.append(["Torgersen", None, None, "10001"])
    expected = model.predict(cells)
    assert r.get_json()["predictions"] == expected["predictions"]
    np.testing.assert_allclose(r.get_json()["probabilities"], expected["probabilities"], rtol=1e-6)
    r = client.post(
        url,
        data={"file": (io.BytesIO(raw), "new.csv")},
        content_type="multipart/form-data",
        headers={"Accept": "text/csv"},
    )
    assert r.status_code == 200 and r.mimetype == "text/csv"
    table = list(csv.reader(io.StringIO(r.get_data(as_text=True))))
    assert table[0] == ["prediction", "p_Adelie", "p_Chinstrap", "p_Gentoo"]
    assert [row[0] for row in table[1:]] == expected["predictions"]
    np.testing.assert_allclose(
        [[float(v) for v in row[1:]] for row in table[1:]], expected["probabilities"], rtol=1e-6
    )
    bad = b"island,flipper\nDream,200\n"
    r = client.post(
        url, data={"file": (io.BytesIO(bad), "bad.csv")}, content_type="multipart/form-data"
    )
    assert "flipper" in assert_error(r, 422, "file")["fields"]["file"]


def test_csv_answer_of_a_regression_model(app: Flask, client: FlaskClient) -> None:
    features = [[float(i), "ab"[i % 2]] for i in range(20)]
    targets = [2.0 * i + (i % 2) for i in range(20)]
    dataset_id = post_dataset(client, {"name": "r", "features": features, "targets": targets})
    model_id, model = store_trained_model(app, dataset_id, [8, 1], "mse", epochs=50)
    r = client.post(
        f"{URL}/models/{model_id}/predict",
        json={"features": features[:3]},
        headers={"Accept": "text/csv"},
    )
    table = list(csv.reader(io.StringIO(r.get_data(as_text=True))))
    assert table[0] == ["prediction"]
    np.testing.assert_allclose(
        [float(row[0]) for row in table[1:]], model.predict(features[:3])["predictions"]
    )


def test_bundle_round_trips_and_predicts_as_the_api(
    client: FlaskClient, trained: tuple[str, str, Model]
) -> None:
    _, model_id, _ = trained
    r = client.get(f"{URL}/models/{model_id}/bundle")
    assert r.status_code == 200 and r.mimetype == "application/octet-stream"
    assert r.headers["Content-Disposition"].startswith("attachment;")
    loaded = Model.from_bytes(r.data)
    assert [c["name"] for c in loaded.columns] == ["island", "bill_length_mm", "member", "zip"]
    features = [["Dream", 39.0, "true", "02139"], [None, None, None, None]]
    api = client.post(f"{URL}/models/{model_id}/predict", json={"features": features}).get_json()
    local = loaded.predict(features)
    assert local["predictions"] == api["predictions"]
    np.testing.assert_allclose(local["probabilities"], api["probabilities"], rtol=1e-6)
    assert_error(client.get(f"{URL}/models/nope/bundle"), 404)


# ---- evaluate ---------------------------------------------------------------------------------


def test_evaluate_on_another_dataset(
    app: Flask, client: FlaskClient, bob: FlaskClient, trained: tuple[str, str, Model]
) -> None:
    _, model_id, model = trained
    other = upload(
        client, penguins(24, seed=5), target="species", column_types='{"zip": "categorical"}'
    ).get_json()["id"]
    r = client.post(f"{URL}/models/{model_id}/evaluate", json={"dataset_id": other})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["model_id"] == model_id and body["dataset_id"] == other
    with app.extensions["db_sessionmaker"]() as session:
        table, targets = load_data(session, other)
    probabilities = probabilities_from_logits("cross_entropy", model.outputs(model.encode(table)))
    classes = ["Adelie", "Chinstrap", "Gentoo"]
    expected = metrics.classification_metrics(targets.reshape(-1), probabilities, classes)
    assert set(body["evaluation"]) == set(expected)
    assert body["evaluation"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert body["evaluation"]["confusion_matrix"] == expected["confusion_matrix"]
    # other columns
    different = post_dataset(client)
    r = client.post(f"{URL}/models/{model_id}/evaluate", json={"dataset_id": different})
    assert "columns" in assert_error(r, 422, "dataset_id")["fields"]["dataset_id"]
    # unknown model, unknown dataset, another owner's model
    assert_error(client.post(f"{URL}/models/nope/evaluate", json={"dataset_id": other}), 404)
    r = client.post(f"{URL}/models/{model_id}/evaluate", json={"dataset_id": "0" * 32})
    assert_error(r, 404)
    assert_error(bob.post(f"{URL}/models/{model_id}/evaluate", json={"dataset_id": other}), 404)


def test_evaluate_regression(app: Flask, client: FlaskClient) -> None:
    features = [[float(i), "ab"[i % 2]] for i in range(20)]
    body = {"name": "r", "features": features, "targets": [2.0 * i for i in range(20)]}
    model_id, model = store_trained_model(app, post_dataset(client, body), [8, 1], "mse")
    body["targets"] = [2.0 * i + 1 for i in range(20)]
    other = post_dataset(client, body)
    r = client.post(f"{URL}/models/{model_id}/evaluate", json={"dataset_id": other})
    assert r.status_code == 200, r.get_json()
    predicted = model.predict(features)["predictions"]
    expected = metrics.regression_metrics(np.asarray(body["targets"]), np.asarray(predicted))
    assert set(r.get_json()["evaluation"]) == set(expected)
    assert r.get_json()["evaluation"]["mae"] == pytest.approx(expected["mae"])


@pytest.mark.parametrize(
    ("labels", "layers", "loss"),
    [([0, 1], [4, 1], "binary_cross_entropy"), ([0, 1, 2], [4, 3], "cross_entropy")],
)
def test_evaluate_integer_class_labels(
    app: Flask, client: FlaskClient, labels: list[int], layers: list[int], loss: str
) -> None:
    """JSON features with integer labels are numeric targets with classes: their class counts
    are taken as class indices (this answered 500: float targets given to the counts)."""
    features = [[float(i), "ab"[i % 2]] for i in range(30)]
    targets = [labels[i % len(labels)] for i in range(30)]
    dataset_id = post_dataset(client, {"name": "i", "features": features, "targets": targets})
    model_id, model = store_trained_model(app, dataset_id, layers, loss)
    r = client.post(f"{URL}/models/{model_id}/evaluate", json={"dataset_id": dataset_id})
    assert r.status_code == 200, r.get_json()
    with app.extensions["db_sessionmaker"]() as session:
        table, stored = load_data(session, dataset_id)
    probabilities = probabilities_from_logits(loss, model.outputs(model.encode(table)))
    expected = metrics.classification_metrics(
        stored.reshape(-1).astype(np.int64), probabilities, labels
    )
    assert r.get_json()["evaluation"]["confusion_matrix"] == expected["confusion_matrix"]
    assert r.get_json()["evaluation"]["accuracy"] == pytest.approx(expected["accuracy"])


# ---- older models, default losses -----------------------------------------------------------


def test_a_model_stored_before_preprocessing_still_predicts(
    app: Flask, client: FlaskClient
) -> None:
    model_id, _, mlp = add_model(app, [3, 1], "mse", None)  # no "preprocessing" in it
    x = [[0.5, -0.5], [1.0, 2.0]]
    r = client.post(f"{URL}/models/{model_id}/predict", json={"features": x})
    assert r.status_code == 200, r.get_json()
    from tests.service.test_models import forward

    np.testing.assert_allclose(r.get_json()["predictions"], forward(mlp, x).reshape(-1))
    by_name = client.post(
        f"{URL}/models/{model_id}/predict", json={"rows": [{"x0": 0.5, "x1": -0.5}]}
    )
    assert by_name.get_json()["predictions"][0] == pytest.approx(r.get_json()["predictions"][0])
    r = client.post(f"{URL}/models/{model_id}/predict", json={"features": [[0.5, None]]})
    assert "x1" in assert_error(r, 422, "features")["fields"]["features"]


@pytest.mark.parametrize(
    ("targets", "loss"),
    [
        (["no", "yes"] * 5, "binary_cross_entropy"),
        (["a", "b", "c", "a", "b"] * 2, "cross_entropy"),
        ([True, False] * 5, "binary_cross_entropy"),
        ([0.5 * i for i in range(10)], "mse"),
    ],
)
def test_a_job_without_loss_gets_one_from_the_targets(
    app: Flask, client: FlaskClient, targets: list[Any], loss: str
) -> None:
    features = [[float(i), "xy"[i % 2]] for i in range(10)]
    dataset_id = post_dataset(client, {"name": "d", "features": features, "targets": targets})
    width = 3 if loss == "cross_entropy" else 1
    r = client.post(f"{URL}/jobs", json={"dataset_id": dataset_id, "model": {"layers": [4, width]}})
    assert r.status_code == 202, r.get_json()
    assert r.get_json()["training"]["loss"] == loss
    with app.extensions["db_sessionmaker"]() as session:
        assert session.get(Job, r.get_json()["id"]).training_spec["loss"] == loss


def test_evaluate_refuses_a_dataset_that_does_not_fit(app: Flask, client: FlaskClient) -> None:
    features = [[float(i), "ab"[i % 2]] for i in range(10)]
    body = {"name": "a", "features": features, "targets": [i % 2 for i in range(10)]}
    model_id, _ = store_trained_model(app, post_dataset(client, body), [4, 1],
                                      "binary_cross_entropy", epochs=2)  # fmt: skip
    url = f"{URL}/models/{model_id}/evaluate"
    # the numeric column x0 as text
    text = post_dataset(client, {**body, "features": [[f"v{i}", "a"] for i in range(10)]})
    r = client.post(url, json={"dataset_id": text})
    assert "x0" in assert_error(r, 422, "dataset_id")["fields"]["dataset_id"]
    # numbers where the model has class labels; labels it does not know
    for targets in ([0.5 + i % 2 for i in range(10)], ["no", "yes"] * 5):
        other = post_dataset(client, {**body, "targets": targets})
        assert_error(client.post(url, json={"dataset_id": other}), 422, "dataset_id")


def test_a_csv_header_with_an_unnamed_column_is_refused(client: FlaskClient) -> None:
    body = {"file": (io.BytesIO(b"a,,c\n1,2,3\n"), "x.csv"), "target": "c"}
    r = client.post("/api/v1/datasets", data=body, content_type="multipart/form-data")
    assert r.status_code == 422
    assert "column 2 has no name" in r.get_json()["error"]["fields"]["file"]


def test_predict_csv_without_a_header_row_is_refused_not_shortened(
    app: Flask, client: FlaskClient
) -> None:
    model_id, _, _ = add_model(app, [3, 1], "mse", None)
    body = {"file": (io.BytesIO(b"0.5,-0.5\n1.0,2.0\n"), "rows.csv")}
    r = client.post(f"{URL}/models/{model_id}/predict", data=body,
                    content_type="multipart/form-data")  # fmt: skip
    message = assert_error(r, 422, "file")["fields"]["file"]
    assert "looks like data, not a header" in message and "['x0', 'x1']" in message
