"""A user's view of the REST API for the end-to-end tests: keys, a small client, model checks."""

from __future__ import annotations

import io
import time
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np
import requests

from core.model import Model
from engine.nn import MLP
from service.auth import create_api_key
from service.db import make_engine, make_sessionmaker, session_scope
from tests.support.processes import Proc


def new_api_key(database_url: str, owner: str = "e2e") -> str:
    """Create an API key of `owner` in the (migrated) database, as `flask keys create` does."""
    engine = make_engine(database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            return create_api_key(session, owner, "e2e test")
    finally:
        engine.dispose()


class Api:
    """A small client of the REST API, as a user would write it; `key` is sent as a bearer
    token with every request (`authenticate` sets it later)."""

    def __init__(self, base: str, proc: Proc | None = None, key: str | None = None) -> None:
        self.base = base.rstrip("/")
        self.http = requests.Session()
        self.proc = proc
        if key is not None:
            self.authenticate(key)

    def authenticate(self, key: str) -> None:
        self.http.headers["Authorization"] = f"Bearer {key}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.http.get(f"{self.base}/readyz", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        log = self.proc.text()[-4000:] if self.proc else ""
        raise AssertionError(f"API at {self.base} not ready:\n{log}")

    def post(self, path: str, body: dict[str, Any], expect: int) -> dict[str, Any]:
        r = self.http.post(f"{self.base}/api/v1{path}", json=body, timeout=30)
        assert r.status_code == expect, r.text
        return r.json()

    def get(self, path: str) -> requests.Response:
        r = self.http.get(f"{self.base}/api/v1{path}", timeout=30)
        assert r.status_code == 200, r.text
        return r

    def dataset(self, x: np.ndarray, y: np.ndarray | list[Any], name: str = "data") -> str:
        targets = y.tolist() if isinstance(y, np.ndarray) else y
        body = {"name": name, "features": x.tolist(), "targets": targets}
        return str(self.post("/datasets", body, 201)["id"])

    def job(self, dataset_id: str, layers: list[int], **training: Any) -> str:
        activation = training.pop("activation", "tanh")
        body = {
            "dataset_id": dataset_id,
            "model": {"layers": layers, "activation": activation},
            "training": training,
        }
        return str(self.post("/jobs", body, 202)["id"])

    def wait(
        self, job_id: str, statuses: tuple[str, ...] = ("succeeded",), timeout: float = 120.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.get(f"/jobs/{job_id}").json()
            if job["status"] in statuses:
                return job
            if job["status"] in ("succeeded", "failed", "cancelled"):
                raise AssertionError(f"job ended {job['status']}, wanted {statuses}: {job}")
            time.sleep(0.1)
        raise AssertionError(f"job still {job.get('status')} after {timeout}s: {job}")


def check_model(api: Api, job: dict[str, Any], x: np.ndarray) -> dict[str, Any]:
    """Model, weights (into engine.nn.MLP), graph SVG and predict all agree; returns the model."""
    assert job["status"] == "succeeded" and job["model_id"]
    assert len(job["loss_history"]) == job["progress"]["epochs"] == job["progress"]["epoch"]
    model = api.get(f"/models/{job['model_id']}").json()
    assert model["job_id"] == job["id"] and model["dataset_id"] == job["dataset_id"]
    arch = model["architecture"]

    weights = api.get(f"/models/{model['id']}/weights").content
    mlp = MLP(arch["nin"], arch["layers"], activation=arch["activation"],
              output_activation=arch.get("output_activation"), dtype=arch["dtype"])  # fmt: skip
    mlp.load_state_dict(dict(np.load(io.BytesIO(weights))))
    # the stored preprocessing by hand: numeric columns standardized with the training rows'
    # statistics; for mse the target scaling undone
    pre = arch["preprocessing"]
    steps = pre["steps"]
    scaled = (x - [s["center"] for s in steps]) / [s["scale"] for s in steps]
    logits = mlp(scaled).numpy().reshape(len(x), -1).astype(np.float64)
    if pre["target"] is not None and job["training"]["loss"] == "mse":
        logits = logits * pre["target"]["scale"] + pre["target"]["center"]
    # the bundle holds the same model: it predicts what /predict does
    bundle = Model.from_bytes(api.get(f"/models/{model['id']}/bundle").content)

    svg = api.get(f"/models/{model['id']}/graph.svg")
    assert svg.headers["Content-Type"].startswith("image/svg+xml")
    assert ET.fromstring(svg.content).tag.endswith("svg")

    out = api.post(f"/models/{model['id']}/predict", {"features": x.tolist()}, 200)
    loss = job["training"]["loss"]
    if loss == "mse":
        predictions = np.asarray(out["predictions"]).reshape(logits.shape)
        np.testing.assert_allclose(predictions, logits, rtol=1e-4, atol=1e-6)
    else:
        classes = arch["classes"]
        if loss == "binary_cross_entropy":
            index = (logits[:, 0] > 0).astype(int)
            p1 = 1 / (1 + np.exp(-logits[:, 0]))
            np.testing.assert_allclose(np.asarray(out["probabilities"])[:, 1], p1, rtol=1e-5)
        else:
            index = logits.argmax(axis=1)
        assert out["predictions"] == [classes[i] for i in index]
    assert bundle.predict(x)["predictions"] == out["predictions"]
    return model
