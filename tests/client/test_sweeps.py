"""Sweeps from the client (`submit_sweep`, `wait_sweep`, list, cancel, labels) and the
`trainyard sweeps` command against the live embedded service."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client import ApiError, NotFoundError
from client.cli import EXIT_API_ERROR, EXIT_NOT_FOUND, EXIT_USAGE
from tests.client.test_cli import as_json, trainyard
from tests.support import LiveService
from tests.workers.datasets import moons

pytestmark = pytest.mark.slow

BASE = {
    "model": {"layers": [8, 1], "activation": "tanh"},
    "training": {"loss": "binary_cross_entropy", "optimizer": "adam", "epochs": 15,
                 "validation_split": 0.25, "batch_size": 32},
}  # fmt: skip


@pytest.fixture(scope="module")
def dataset_id(service: LiveService) -> str:
    x, y = moons(120)
    return service.client().upload_dataset(x, y, name="moons")["id"]


def test_submit_and_wait(service: LiveService, dataset_id: str) -> None:
    api = service.client()
    seen: list[str] = []
    sweep = api.submit_sweep(
        {"base": BASE, "parameters": {"training.learning_rate": {"values": [0.001, 0.05]}}},
        dataset_id=dataset_id,
        name="lr",
        tags={"suite": "client"},
    )
    assert sweep["status"] == "queued" and sweep["progress"]["trials"] == 2
    done = api.wait_sweep(
        sweep["id"], poll_interval=0.2, on_progress=lambda s: seen.append(s["status"])
    )
    assert done["status"] == "succeeded" and seen[-1] == "succeeded"
    assert done["best"] is not None
    assert done["best"]["params"] == {"training.learning_rate": 0.05}
    trials = api.list_jobs(sweep_id=sweep["id"])["items"]
    assert [j["id"] for j in trials] == [t["job_id"] for t in done["trials"]]
    assert api.list_jobs(tags={"suite": "client"})["pagination"]["total"] == 2
    job = api.label_job(trials[0]["id"], name="slow one", tags={"keep": "no"})
    assert (job["name"], job["tags"]) == ("slow one", {"keep": "no"})
    assert api.label_sweep(sweep["id"], name="renamed")["name"] == "renamed"
    assert sweep["id"] in [s["id"] for s in api.list_sweeps(tags={"suite": "client"})["items"]]
    with pytest.raises(ApiError) as info:
        api.cancel_sweep(sweep["id"])
    assert info.value.status == 409
    with pytest.raises(NotFoundError):
        api.get_sweep("0" * 32)
    with pytest.raises(ApiError) as info:
        api.submit_sweep({"base": BASE, "parameters": {"training.lr": {"values": [1]}}},
                         dataset_id=dataset_id)  # fmt: skip
    assert "parameters.training.lr" in info.value.fields


def test_the_command(service: LiveService, dataset_id: str, tmp_path: Path) -> None:
    spec = {
        "name": "cli sweep",
        "dataset_id": dataset_id,
        "base": BASE,
        "parameters": {
            "training.learning_rate": {"values": [0.003, 0.03]},
            "model.layers": {"values": [[8, 1], [16, 1]]},
        },
        "max_parallel": 2,
    }
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(spec))
    result = trainyard(service, "sweeps", "submit", str(path), "--watch", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "cli sweep succeeded" in result.stdout
    assert "best: job " in result.stdout and "model.layers" in result.stdout
    lines = [line for line in result.stdout.splitlines() if line.strip().startswith("best")]
    assert lines  # the best trial's row is marked
    listed = as_json(trainyard(service, "--json", "sweeps", "list", cwd=tmp_path))
    sweep = next(s for s in listed["items"] if s["name"] == "cli sweep")
    got = as_json(trainyard(service, "sweeps", "get", sweep["id"], "--json", cwd=tmp_path))
    assert got["status"] == "succeeded" and len(got["trials"]) == 4
    shown = trainyard(service, "sweeps", "show", sweep["id"], cwd=tmp_path)
    assert shown.returncode == 0 and "0.003" in shown.stdout
    assert trainyard(service, "sweeps", "cancel", sweep["id"], cwd=tmp_path).returncode == (
        EXIT_API_ERROR
    )
    assert trainyard(service, "sweeps", "get", "0" * 32, cwd=tmp_path).returncode == EXIT_NOT_FOUND
    (tmp_path / "bad.json").write_text("[1, 2]")
    bad = trainyard(service, "sweeps", "submit", str(tmp_path / "bad.json"), cwd=tmp_path)
    assert bad.returncode == EXIT_USAGE
    missing = trainyard(service, "sweeps", "submit", str(tmp_path / "nope.json"), cwd=tmp_path)
    assert missing.returncode == EXIT_USAGE

    # cancel while it runs: long trials, one at a time
    spec = {**spec, "name": "to cancel", "max_parallel": 1,
            "base": {**BASE, "training": {**BASE["training"], "epochs": 5000}}}  # fmt: skip
    path.write_text(json.dumps(spec))
    submitted = as_json(trainyard(service, "--json", "sweeps", "submit", str(path), cwd=tmp_path))
    cancelled = trainyard(service, "sweeps", "cancel", submitted["id"], cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    assert submitted["id"] in cancelled.stdout
    final = service.client().wait_sweep(submitted["id"], poll_interval=0.2, timeout=60)
    assert final["status"] == "cancelled"
