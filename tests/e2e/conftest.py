"""Real processes for the end-to-end tests: the API server, Celery workers, the embedded runner.

Every process starts in its own session with its output in a log file under the test's
temporary folder (shown when a wait times out), and is stopped by SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from core.model import Model
from engine.nn import MLP
from service.auth import create_api_key
from service.db import make_engine, make_sessionmaker, session_scope

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "PORT") and not k.startswith("TRAINYARD_")
    }
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Proc:
    """A subprocess with its output in `log`; `stop()` terminates, then kills, its session."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.cmd = cmd
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{self.cmd} did not print {needle!r}:\n{self.text()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
                self.popen.wait(timeout=timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        code = self.popen.wait(timeout=10)
        self._out.close()
        return code


class Processes:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[Proc] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(cmd, env, self.folder / f"{name}-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


def worker_cmd(name: str, concurrency: int = 1) -> list[str]:
    return [
        str(VENV_BIN / "celery"), "-A", "workers.app", "worker", "--loglevel", "INFO",
        "--concurrency", str(concurrency), "--without-gossip", "--without-mingle",
        "--hostname", f"{name}-{os.getpid()}@%h",
    ]  # fmt: skip


def api_cmd(port: int, workers: int = 2, threads: int = 1) -> list[str]:
    return [
        str(VENV_BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
        "--threads", str(threads), "service:create_app()",
    ]  # fmt: skip


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
