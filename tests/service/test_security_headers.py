"""User text never reaches an answer where it could run: JSON writes `<`, `>`, `&` as escapes,
the graph SVG holds no user text at all (and what graphviz writes is escaped), and every HTML and
SVG answer carries `nosniff` and a restrictive Content-Security-Policy."""

from __future__ import annotations

import base64
import hashlib
import re
import xml.etree.ElementTree as ET

from flask import Flask
from flask.testing import FlaskClient

from core import training
from core.model import weights_to_npz
from service.datasets import load_data
from service.security import HTML_CSP, SVG_CSP
from service.tables import Dataset, Job, TrainedModel

EVIL_NAME = "<script>alert(1)</script>"
EVIL_LABELS = ['"><img src=x onerror=alert(1)>', "</svg><script>alert(2)</script>"]

BRIEF_HTML_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)


def evil_dataset() -> dict[str, object]:
    x = [[i / 10, (i % 3) / 3] for i in range(12)]
    return {"name": EVIL_NAME, "features": x, "targets": [EVIL_LABELS[i % 2] for i in range(12)]}


def test_policies_are_the_agreed_ones() -> None:
    assert HTML_CSP == BRIEF_HTML_CSP
    assert SVG_CSP == "default-src 'none'; style-src 'unsafe-inline'; sandbox"


def test_user_text_in_json_answers_is_escaped(client: FlaskClient) -> None:
    r = client.post("/api/v1/datasets", json=evil_dataset())
    assert r.status_code == 201
    for raw in (r.get_data(), client.get(f"/api/v1/datasets/{r.get_json()['id']}").get_data()):
        assert b"<" not in raw and b">" not in raw and b"\\u003cscript\\u003e" in raw
    assert r.get_json()["name"] == EVIL_NAME  # the same text for any JSON parser
    assert sorted(r.get_json()["classes"]) == sorted(EVIL_LABELS)
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.mimetype == "application/json"
    listed = client.get("/api/v1/datasets")
    assert b"<" not in listed.get_data() and listed.get_json()["items"][0]["name"] == EVIL_NAME


def store_trained_model(app: Flask, dataset_id: str) -> str:
    """Train on the stored dataset with the workers' training module (graph included) and save
    the model as the task does."""
    with app.extensions["db_sessionmaker"]() as session:
        dataset = session.get(Dataset, dataset_id)
        assert dataset is not None
        x, y = load_data(session, dataset_id)
        model_spec = {"layers": [4, 1], "activation": "tanh", "output_activation": None}
        training_spec = {"loss": "binary_cross_entropy", "optimizer": "adam", "epochs": 5,
                         "learning_rate": 0.05, "batch_size": None, "seed": 0,
                         "validation_split": 0.0, "momentum": 0.0, "weight_decay": 0.0}  # fmt: skip
        kind, classes = dataset.target_kind, dataset.classes
        result = training.train(x, y, model_spec, training_spec, target_kind=kind, classes=classes)
        job = Job(dataset_id=dataset_id, status="succeeded", model_spec=model_spec,
                  training_spec=training_spec, epochs=5, epoch=5)  # fmt: skip
        session.add(job)
        session.flush()
        model = TrainedModel(
            job_id=job.id,
            dataset_id=dataset_id,
            architecture=result.architecture,
            weights=weights_to_npz(result.state_dict),
            graph_svg=result.graph_svg or "",
            metrics=result.metrics,
        )
        session.add(model)
        session.commit()
        return model.id


def test_graph_svg_of_a_model_trained_on_hostile_text(app: Flask, client: FlaskClient) -> None:
    dataset_id = client.post("/api/v1/datasets", json=evil_dataset()).get_json()["id"]
    model_id = store_trained_model(app, dataset_id)
    r = client.get(f"/api/v1/models/{model_id}/graph.svg")
    assert r.status_code == 200 and r.mimetype == "image/svg+xml"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Content-Security-Policy"] == SVG_CSP
    svg = r.get_data(as_text=True)
    root = ET.fromstring(svg)  # well-formed XML
    tags = {element.tag.rsplit("}", 1)[-1] for element in root.iter()}
    assert not tags & {"script", "img", "foreignObject", "iframe", "a"}, tags
    attributes = {name.lower() for element in root.iter() for name in element.attrib}
    assert not any(name.startswith("on") for name in attributes), attributes
    for text in (EVIL_NAME, *EVIL_LABELS, "alert("):
        assert text not in svg
    # the labels do reach the model's answers, as escaped JSON
    r = client.post(f"/api/v1/models/{model_id}/predict", json={"features": [[0.1, 0.2]]})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["predictions"][0] in EVIL_LABELS and b"<" not in r.get_data()
    model = client.get(f"/api/v1/models/{model_id}")
    assert b"<" not in model.get_data()
    assert sorted(model.get_json()["architecture"]["classes"]) == sorted(EVIL_LABELS)


def test_docs_page_allows_only_its_own_inline_script(client: FlaskClient) -> None:
    r = client.get("/api/v1/docs")
    assert r.status_code == 200 and r.mimetype == "text/html"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    csp = r.headers["Content-Security-Policy"]
    script_src = re.search(r"script-src ([^;]*)", csp).group(1).split()  # type: ignore[union-attr]
    assert "'unsafe-inline'" not in script_src and "'self'" in script_src
    inline = re.findall(rb"<script>(.*?)</script>", r.get_data(), re.DOTALL)
    assert inline
    for script in inline:
        digest = base64.b64encode(hashlib.sha256(script).digest()).decode()
        assert f"'sha256-{digest}'" in script_src
    assert "object-src 'none'" in csp and "frame-ancestors 'none'" in csp


def test_every_html_answer_gets_the_html_policy(app: Flask, client: FlaskClient) -> None:
    @app.route("/test-page")
    def page() -> str:
        return "<!doctype html><title>t</title>"

    r = client.get("/test-page")
    assert r.mimetype == "text/html"
    assert r.headers["Content-Security-Policy"] == BRIEF_HTML_CSP
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    shell = client.get("/")
    if shell.mimetype == "text/html":  # the dashboard's static shell, where it is installed
        assert shell.headers["Content-Security-Policy"] == BRIEF_HTML_CSP


def test_errors_are_not_sniffable(client: FlaskClient) -> None:
    r = client.get("/api/v1/models/" + "0" * 32 + "/weights")
    assert r.status_code == 404 and r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.mimetype == "application/json"
