"""Export: the ONNX file, run by onnxruntime, predicts what /predict does; the zip bundle."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from flask import Flask
from flask.testing import FlaskClient

from core import training
from core.model import Model, weights_to_npz
from service.datasets import load_data
from service.tables import Dataset, Job, TrainedModel
from tests.service.helpers import assert_error
from tests.service.test_models import add_model

URL = "/api/v1"


def table_csv(target: str, n: int = 60, seed: int = 0, clean: bool = False) -> bytes:
    """Numeric and text columns with missing cells (none if `clean`); the target named by
    `target`."""
    rng = np.random.default_rng(seed)
    lines = ["colour,size,weight,member,label,flag,amount"]
    for i in range(n):
        colour = ["red", "green", "blue", "red" if clean else ""][i % 4]
        size = "" if i % 7 == 0 and not clean else f"{rng.normal() * 3 + 10:.3f}"
        weight = f"{rng.normal() * 100 + 500:.1f}"
        member = ["yes", "no", "no" if clean else "NA"][i % 3]
        label = ["a", "b", "c"][(i + (colour == "red")) % 3]
        flag = ["true", "false"][(i // 2) % 2]
        amount = f"{float(size or 10) * 2 + (colour == 'blue') * 5 + rng.normal():.3f}"
        lines.append(f"{colour},{size},{weight},{member},{label},{flag},{amount}")
    raw = "\n".join(lines) + "\n"
    header, *rows = raw.splitlines()
    names = header.split(",")
    keep = [j for j, h in enumerate(names) if h in ("colour", "size", "weight", "member")]
    keep.append(names.index(target))
    out = [",".join(names[j] for j in keep)]
    out += [",".join(row.split(",")[j] for j in keep) for row in rows]
    return ("\n".join(out) + "\n").encode()


def trained_model(
    app: Flask,
    client: FlaskClient,
    target: str,
    layers: list[int],
    clean: bool = False,
    **spec: Any,
) -> str:
    raw = table_csv(target, clean=clean)
    r = client.post(
        f"{URL}/datasets",
        data={"file": (io.BytesIO(raw), "t.csv"), "target": target},
        content_type="multipart/form-data",
    )
    assert r.status_code == 201, r.get_json()
    dataset_id = r.get_json()["id"]
    model_spec = {"layers": layers, "activation": "relu", "output_activation": None}
    training_spec = {"optimizer": "adam", "learning_rate": 0.02, "epochs": 20, "seed": 0, **spec}
    with app.extensions["db_sessionmaker"]() as session:
        dataset = session.get(Dataset, dataset_id)
        assert dataset is not None
        table, targets = load_data(session, dataset_id)
        result = training.train(
            table, targets, model_spec, training_spec, target_kind=dataset.target_kind,
            classes=dataset.classes, graph=False,
        )  # fmt: skip
        job = Job(dataset_id=dataset_id, status="succeeded", model_spec=model_spec,
                  training_spec=training_spec, epochs=20, epoch=20)  # fmt: skip
        session.add(job)
        session.flush()
        model = TrainedModel(job_id=job.id, dataset_id=dataset_id,
                             architecture=result.architecture,
                             weights=weights_to_npz(result.state_dict), graph_svg="",
                             metrics=result.metrics, evaluation=result.evaluation)  # fmt: skip
        session.add(model)
        session.commit()
        return model.id


ROWS: list[dict[str, Any]] = [
    {"colour": "red", "size": 9.5, "weight": 480.0, "member": "yes"},
    {"colour": "blue", "size": None, "weight": 610.0, "member": "no"},  # a missing number
    {"colour": None, "size": 12.0, "weight": 505.5},  # missing text, a left-out column
    {"colour": "purple", "size": 3.0, "weight": 20.0, "member": "maybe"},  # unseen levels
]


def feeds(session: ort.InferenceSession, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    out = {}
    for spec in session.get_inputs():
        values = [row.get(spec.name) for row in rows]
        if spec.type == "tensor(string)":
            out[spec.name] = np.array([["" if v is None else str(v)] for v in values], dtype=object)
        else:
            out[spec.name] = np.array([[np.nan if v is None else v] for v in values])
    return out


def run_onnx(client: FlaskClient, model_id: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    r = client.get(f"{URL}/models/{model_id}/export?format=onnx")
    assert r.status_code == 200, r.get_data(as_text=True)[:500]
    session = ort.InferenceSession(r.get_data(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds(session, rows)), strict=True))


@pytest.mark.parametrize(
    ("target", "layers", "spec"),
    [
        ("label", [16, 3], {}),  # string labels, cross_entropy, one-hot, standardize
        ("flag", [8, 1], {"preprocessing": {"categorical": "ordinal", "numeric": "minmax"}}),
        ("label", [8, 3], {"dtype": "float64", "preprocessing": {"numeric": "none"}}),
    ],
)
def test_onnx_classifier_predicts_as_the_api(
    app: Flask, client: FlaskClient, target: str, layers: list[int], spec: dict[str, Any]
) -> None:
    model_id = trained_model(app, client, target, layers, **spec)
    api = client.post(f"{URL}/models/{model_id}/predict", json={"rows": ROWS}).get_json()
    out = run_onnx(client, model_id, ROWS)
    labels = [v.decode() if isinstance(v, bytes) else v for v in out["label"].tolist()]
    assert [str(v).lower() for v in labels] == [str(v).lower() for v in api["predictions"]]
    np.testing.assert_allclose(out["probabilities"], api["probabilities"], atol=1e-5)


def test_onnx_regressor_predicts_in_the_target_units(app: Flask, client: FlaskClient) -> None:
    model_id = trained_model(app, client, "amount", [16, 1], loss="mse")
    api = client.post(f"{URL}/models/{model_id}/predict", json={"rows": ROWS}).get_json()
    out = run_onnx(client, model_id, ROWS)
    assert set(out) == {"prediction"}
    np.testing.assert_allclose(out["prediction"][:, 0], api["predictions"], rtol=1e-5)
    assert abs(np.mean(api["predictions"])) > 5  # in the target's units, not standardized


def test_onnx_of_a_model_stored_before_preprocessing(app: Flask, client: FlaskClient) -> None:
    model_id, _, _ = add_model(app, [4, 2], "cross_entropy", ["x", "y"], nin=3)
    x = np.random.default_rng(0).normal(size=(5, 3))
    api = client.post(f"{URL}/models/{model_id}/predict", json={"features": x.tolist()}).get_json()
    r = client.get(f"{URL}/models/{model_id}/export?format=onnx")
    assert r.status_code == 200
    session = ort.InferenceSession(r.get_data(), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"features": x})
    assert [v.decode() if isinstance(v, bytes) else v for v in label] == api["predictions"]
    np.testing.assert_allclose(probabilities, api["probabilities"], atol=1e-6)


def test_export_refuses_what_onnx_cannot_hold_and_unknown_formats(
    app: Flask, client: FlaskClient
) -> None:
    model_id = trained_model(
        app, client, "label", [4, 3], clean=True, preprocessing={"missing": "error"}
    )
    assert_error(client.get(f"{URL}/models/{model_id}/export?format=onnx"), 422, "format")
    assert_error(client.get(f"{URL}/models/{model_id}/export?format=pmml"), 422, "format")
    assert_error(client.get(f"{URL}/models/{model_id}/export"), 422, "format")
    assert client.get(f"{URL}/models/{'f' * 32}/export?format=onnx").status_code == 404


def test_bundle_zip_describes_the_model_and_loads(app: Flask, client: FlaskClient) -> None:
    model_id = trained_model(app, client, "label", [8, 3])
    r = client.get(f"{URL}/models/{model_id}/export?format=bundle")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.get_data())) as archive:
        assert sorted(archive.namelist()) == ["README.md", "model.json", "model.npz", "weights.npz"]
        meta = json.loads(archive.read("model.json"))
        model = Model.from_bytes(archive.read("model.npz"))
        weights = np.load(io.BytesIO(archive.read("weights.npz")))
        assert sorted(weights.files) == sorted(model.state)
    assert meta["classes"] == ["a", "b", "c"] and meta["model_id"] == model_id
    assert [c["name"] for c in meta["columns"]] == ["colour", "size", "weight", "member"]
    assert meta["spec"]["model"]["layers"] == [8, 3]
    assert "evaluation" in meta and "metrics" in meta
    api = client.post(f"{URL}/models/{model_id}/predict", json={"rows": ROWS}).get_json()
    assert model.predict(ROWS)["predictions"] == api["predictions"]
