"""GET /api/v1/models (+ weights, graph, predict), with models stored as a worker saves them."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

import engine
from core.model import weights_to_npz
from engine.nn import MLP
from service.db import utcnow
from service.tables import Job, TrainedModel
from tests.service.helpers import assert_error
from tests.support import store_dataset

URL = "/api/v1/models"
SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><text>a</text></svg>'


def graph_svg(model: MLP, x: np.ndarray) -> str:
    try:
        from engine.viz import draw_dot
    except ImportError:  # engine.viz not there yet: any stored SVG will do
        return SVG
    return draw_dot(model(x).sum()).pipe(format="svg").decode()


def add_model(
    app: Flask,
    layers: list[int],
    loss: str,
    classes: list[Any] | None,
    nin: int = 2,
    owner: str = "alice",
) -> tuple[str, str, MLP]:
    """Store a dataset, a succeeded job and its model (the job's and the model's owner come
    from the dataset's, as when a worker saves a model); return (model id, job id, MLP)."""
    mlp = MLP(nin, layers, seed=1)
    architecture = {
        "nin": nin,
        "layers": layers,
        "activation": "tanh",
        "output_activation": None,
        "loss": loss,
        "classes": classes,
    }
    with app.extensions["db_sessionmaker"]() as session:
        dataset = store_dataset(
            session, np.zeros((1, nin)), np.zeros((1, 1)), name="d", owner=owner
        )
        job = Job(
            status="succeeded",
            dataset_id=dataset.id,
            model_spec={"layers": layers, "activation": "tanh", "output_activation": None},
            training_spec={"loss": loss, "epochs": 1},
            epochs=1,
            epoch=1,
            finished_at=utcnow(),
            metrics={"loss": 0.25},
        )
        session.add(job)
        session.flush()
        model = TrainedModel(
            job_id=job.id,
            dataset_id=dataset.id,
            architecture=architecture,
            weights=weights_to_npz(mlp.state_dict()),
            graph_svg=graph_svg(mlp, np.ones((2, nin))),
            metrics={"loss": 0.25},
        )
        session.add(model)
        session.commit()
        return model.id, job.id, mlp


def forward(mlp: MLP, x: list[list[float]]) -> np.ndarray:
    with engine.no_grad():
        return mlp(np.asarray(x, dtype=np.float64)).numpy()


def test_get_model(app: Flask, client: FlaskClient) -> None:
    model_id, job_id, mlp = add_model(app, [3, 1], "binary_cross_entropy", ["no", "yes"])
    r = client.get(f"{URL}/{model_id}")
    assert r.status_code == 200
    body = r.get_json()
    assert body["id"] == model_id and body["job_id"] == job_id
    assert body["architecture"]["nin"] == 2
    assert body["architecture"]["layers"] == [3, 1]
    assert body["architecture"]["activation"] == "tanh"
    assert body["metrics"] == {"loss": 0.25}
    state = mlp.state_dict()
    assert set(body["parameters"]) == set(state)
    for name, array in state.items():
        np.testing.assert_allclose(np.asarray(body["parameters"][name]), array)
    assert client.get(f"/api/v1/jobs/{job_id}").get_json()["model_id"] == model_id


def test_weights_download_loads_into_mlp(app: Flask, client: FlaskClient) -> None:
    model_id, _, mlp = add_model(app, [3, 1], "mse", None)
    r = client.get(f"{URL}/{model_id}/weights")
    assert r.status_code == 200
    assert r.mimetype == "application/octet-stream"
    assert r.headers["Content-Disposition"].startswith("attachment;")
    assert ".npz" in r.headers["Content-Disposition"]
    assert r.data == weights_to_npz(mlp.state_dict())
    loaded = MLP(2, [3, 1])
    loaded.load_state_dict(dict(np.load(io.BytesIO(r.data))))
    x = [[0.1, 0.2], [-1.0, 3.0]]
    np.testing.assert_allclose(forward(loaded, x), forward(mlp, x))


def test_graph_svg(app: Flask, client: FlaskClient) -> None:
    model_id, _, _ = add_model(app, [3, 1], "mse", None)
    r = client.get(f"{URL}/{model_id}/graph.svg")
    assert r.status_code == 200
    assert r.mimetype == "image/svg+xml"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "<svg" in r.get_data(as_text=True)


def test_predict_regression(app: Flask, client: FlaskClient) -> None:
    model_id, _, mlp = add_model(app, [3, 1], "mse", None)
    x = [[0.5, -0.5], [1.0, 2.0], [0.0, 0.0]]
    r = client.post(f"{URL}/{model_id}/predict", json={"features": x})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert "probabilities" not in body
    np.testing.assert_allclose(body["predictions"], forward(mlp, x).reshape(-1))


def test_predict_binary_labels(app: Flask, client: FlaskClient) -> None:
    model_id, _, mlp = add_model(app, [3, 1], "binary_cross_entropy", ["no", "yes"])
    x = [[0.5, -0.5], [1.0, 2.0], [-3.0, 0.0]]
    body = client.post(f"{URL}/{model_id}/predict", json={"features": x}).get_json()
    logits = forward(mlp, x).reshape(-1)
    assert body["predictions"] == ["yes" if z > 0 else "no" for z in logits]
    p = np.asarray(body["probabilities"])
    np.testing.assert_allclose(p[:, 1], 1 / (1 + np.exp(-logits)))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


def test_predict_cross_entropy_int_labels(app: Flask, client: FlaskClient) -> None:
    model_id, _, mlp = add_model(app, [4, 3], "cross_entropy", [2, 5, 7], nin=3)
    x = [[0.5, -0.5, 1.0], [1.0, 2.0, 3.0]]
    body = client.post(f"{URL}/{model_id}/predict", json={"features": x}).get_json()
    logits = forward(mlp, x)
    assert body["predictions"] == [[2, 5, 7][i] for i in logits.argmax(axis=1)]
    assert all(isinstance(label, int) for label in body["predictions"])
    assert np.asarray(body["probabilities"]).shape == (2, 3)


@pytest.mark.parametrize(
    "body",
    [
        {"features": [[1.0, 2.0], [3.0]]},  # ragged
        {"features": [[1.0, 2.0, 3.0]]},  # wrong width
        {"features": [[1.0]]},
        {"features": []},
        {"features": [["a", 1.0]]},
        {"features": [[1.0, None]]},
        {"features": [1.0, 2.0]},
        {},
        {"features": [[1.0, 2.0]], "extra": 1},
    ],
)
def test_predict_invalid_features(app: Flask, client: FlaskClient, body: dict[str, Any]) -> None:
    model_id, _, _ = add_model(app, [3, 1], "mse", None)
    field = "extra" if "extra" in body else "features"
    assert_error(client.post(f"{URL}/{model_id}/predict", json=body), 422, field)


def test_predict_non_finite_malformed_and_content_type(app: Flask, client: FlaskClient) -> None:
    model_id, _, _ = add_model(app, [3, 1], "mse", None)
    url = f"{URL}/{model_id}/predict"
    r = client.post(url, data='{"features": [[NaN, 1]]}', content_type="application/json")
    assert_error(r, 422, "features")
    r = client.post(url, data='{"features": [[1, Infinity]]}', content_type="application/json")
    assert_error(r, 422, "features")
    assert_error(client.post(url, data='{"features": [[1,', content_type="application/json"), 400)
    assert_error(client.post(url, data='{"features": [[1, 2]]}', content_type="text/csv"), 415)


def test_unknown_model(client: FlaskClient) -> None:
    for path in ("", "/weights", "/graph.svg"):
        assert assert_error(client.get(f"{URL}/nope{path}"), 404)["code"] == "not_found"
    r = client.post(f"{URL}/nope/predict", json={"features": [[1.0, 2.0]]})
    assert_error(r, 404)


def test_list_models(app: Flask, client: FlaskClient) -> None:
    ids = [add_model(app, [3, 1], "mse", None)[0] for _ in range(3)]
    body = client.get(f"{URL}?page_size=2").get_json()
    assert body["pagination"] == {"page": 1, "page_size": 2, "total": 3, "pages": 2}
    assert len(body["items"]) == 2
    assert "parameters" not in body["items"][0]
    rest = client.get(f"{URL}?page_size=2&page=2").get_json()["items"]
    assert {m["id"] for m in body["items"] + rest} == set(ids)
    assert_error(client.get(f"{URL}?page_size=500"), 422, "page_size")
