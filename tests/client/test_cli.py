"""The `trainyard` command (the installed console script) against a live service: tables,
`--json`, files it writes, and its exit codes."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client.cli import (
    EXIT_API_ERROR,
    EXIT_JOB_FAILED,
    EXIT_NOT_FOUND,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from engine.nn import MLP
from tests.client.live import LiveService
from tests.e2e.conftest import VENV_BIN, free_port
from tests.workers.datasets import moons

pytestmark = pytest.mark.slow


def trainyard(
    service: LiveService, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "trainyard"), *args],
        cwd=cwd, env=env or service.env(COLUMNS="200"), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def moons_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x, y = moons(160)
    path = tmp_path_factory.mktemp("csv") / "moons.csv"
    rows = [f"{a},{b},{'upper' if k == 0 else 'lower'}" for (a, b), k in zip(x, y, strict=True)]
    path.write_text("x1,x2,label\n" + "\n".join(rows) + "\n")
    return path


def test_upload_submit_watch_models_graph_predict(
    service: LiveService, moons_csv: Path, tmp_path: Path
) -> None:
    run = lambda *a: trainyard(service, *a, cwd=tmp_path)  # noqa: E731
    dataset = as_json(run("--json", "datasets", "upload", str(moons_csv), "--target", "label"))
    assert dataset["name"] == "moons" and dataset["classes"] == ["lower", "upper"]
    shown = run("datasets", "get", dataset["id"])
    assert shown.returncode == 0 and "moons" in shown.stdout and "feature names" in shown.stdout
    listed = as_json(run("--json", "datasets", "list", "--page-size", "100"))
    assert dataset["id"] in [d["id"] for d in listed["items"]]

    # submit --watch: a progress bar on stderr, the metrics on stdout, exit 0
    watched = run(
        "jobs", "submit", "--dataset", dataset["id"], "--layers", "8,8,1",
        "--loss", "binary_cross_entropy", "--optimizer", "adam", "--lr", "0.05",
        "--epochs", "30", "--batch-size", "32", "--seed", "1", "--validation-split", "0.25",
        "--watch",
    )  # fmt: skip
    assert watched.returncode == 0, watched.stderr
    assert "succeeded" in watched.stdout and "val_accuracy" in watched.stdout
    assert "30/30" in watched.stderr and "loss" in watched.stderr

    jobs = as_json(run("--json", "jobs", "list", "--status", "succeeded", "--page-size", "100"))
    job = next(j for j in jobs["items"] if j["dataset_id"] == dataset["id"])
    assert job["training"]["validation_split"] == 0.25 and job["training"]["seed"] == 1
    table = run("jobs", "list", "--status", "succeeded")
    assert table.returncode == 0 and job["id"] in table.stdout and "final loss" in table.stdout
    again = as_json(run("--json", "jobs", "watch", job["id"]))  # finished: returns at once
    assert again["status"] == "succeeded" and again["model_id"] == job["model_id"]
    assert job["id"] in run("jobs", "get", job["id"]).stdout

    model_id = job["model_id"]
    got = run("models", "get", model_id, "--weights", "model.npz")
    assert got.returncode == 0 and "binary_cross_entropy" in got.stdout
    model = as_json(run("--json", "models", "get", model_id))
    mlp = MLP(2, [8, 8, 1])
    mlp.load_state_dict(dict(np.load(tmp_path / "model.npz")))
    assert model_id in [m["id"] for m in as_json(run("--json", "models", "list"))["items"]]
    np.testing.assert_allclose(mlp.state_dict()["layers.0.weight"],
                               model["parameters"]["layers.0.weight"])  # fmt: skip

    assert run("models", "graph", model_id, "-o", "graph.svg").returncode == 0
    assert ET.parse(tmp_path / "graph.svg").getroot().tag.endswith("svg")

    x = np.array([[0.0, 1.0], [1.0, -0.5], [2.0, 0.2]])
    (tmp_path / "points.csv").write_text("x1,x2\n" + "\n".join(f"{a},{b}" for a, b in x) + "\n")
    predicted = as_json(run("--json", "predict", model_id, "points.csv"))
    logits = mlp(x).numpy().reshape(-1)
    assert predicted["predictions"] == [["lower", "upper"][int(v > 0)] for v in logits]
    human = run("predict", model_id, "points.csv")
    assert human.returncode == 0 and "prediction" in human.stdout and "upper" in human.stdout


def test_exit_codes(service: LiveService, moons_csv: Path, tmp_path: Path) -> None:
    run = lambda *a: trainyard(service, *a, cwd=tmp_path)  # noqa: E731
    assert run("jobs", "get", "no-such-job").returncode == EXIT_NOT_FOUND
    assert run("models", "graph", "no-such-model").returncode == EXIT_NOT_FOUND

    dataset = as_json(run("--json", "datasets", "upload", str(moons_csv)))
    bad = run("jobs", "submit", "--dataset", dataset["id"], "--layers", "4,1", "--epochs", "0")
    assert bad.returncode == EXIT_API_ERROR
    assert "training.epochs" in bad.stderr and "422" in bad.stderr

    assert run("jobs", "submit", "--dataset", "x", "--layers", "a,b").returncode == EXIT_USAGE
    assert run("jobs", "frobnicate").returncode == EXIT_USAGE
    missing = run("datasets", "upload", "nope.csv")
    assert missing.returncode == EXIT_USAGE and "nope.csv" in missing.stderr

    down = trainyard(service, "--url", f"http://127.0.0.1:{free_port()}", "jobs", "list",
                     cwd=tmp_path)  # fmt: skip
    assert down.returncode == EXIT_UNREACHABLE and "cannot reach" in down.stderr

    # a job that ends cancelled: watch exits 1
    long = as_json(run("--json", "jobs", "submit", "--dataset", dataset["id"], "--layers",
                       "32,32,1", "--loss", "binary_cross_entropy", "--epochs", "5000",
                       "--batch-size", "4"))  # fmt: skip
    assert as_json(run("--json", "jobs", "cancel", long["id"]))["id"] == long["id"]
    watched = run("--json", "jobs", "watch", long["id"])
    assert watched.returncode == EXIT_JOB_FAILED
    assert json.loads(watched.stdout)["status"] == "cancelled"
    # a finished job cannot be cancelled: 409, exit 3
    assert run("jobs", "cancel", long["id"]).returncode == EXIT_API_ERROR


def test_help_documents_the_exit_codes(tmp_path: Path, service: LiveService) -> None:
    result = trainyard(service, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "Exit codes" in result.stdout and "5 cannot reach server" in result.stdout
