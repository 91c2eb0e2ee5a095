"""Deletes and usage from the client and the `trainyard` command, against a live service."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from client import ApiError
from tests.support import VENV_BIN, LiveService
from tests.workers.datasets import moons

pytestmark = pytest.mark.slow


def test_client_deletes_a_job_its_model_and_a_dataset(service: LiveService) -> None:
    api = service.client()
    x, y = moons(60)
    dataset = api.upload_dataset(x, y, name="to-delete")
    # a job that cannot end before the delete below (10,000 epochs), cancelled after it
    long = api.submit_job(dataset["id"], layers=[4, 1], epochs=10_000, batch_size=4)
    with pytest.raises(ApiError) as in_use:
        api.delete_dataset(dataset["id"])
    assert in_use.value.status == 409 and long["id"] in str(in_use.value)
    api.cancel_job(long["id"])
    assert api.wait(long["id"], timeout=120)["status"] == "cancelled"
    job = api.submit_job(dataset["id"], layers=[4, 1], epochs=2)
    done = api.wait(job["id"], timeout=120)
    assert done["status"] == "succeeded" and done["model_id"]
    before = api.usage()
    assert before["bytes"]["datasets"] > 0 and before["bytes"]["models"] > 0
    api.delete_job(job["id"])
    for get, ref in ((api.get_job, job["id"]), (api.get_model, done["model_id"])):
        with pytest.raises(ApiError) as gone:
            get(ref)
        assert gone.value.status == 404
    api.delete_dataset(dataset["id"])
    after = api.usage()
    # the live service is shared with other tests: their models and datasets stay counted
    assert after["bytes"]["models"] < before["bytes"]["models"]
    assert after["bytes"]["datasets"] < before["bytes"]["datasets"]
    assert after["bytes"]["used"] < before["bytes"]["used"]


def test_cli_deletes_and_shows_usage(service: LiveService, tmp_path: Path) -> None:
    api = service.client()
    x, y = moons(30)
    dataset_id = api.upload_dataset(x, y, name="cli-delete")["id"]

    def trainyard(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / "trainyard"), *args],
            cwd=tmp_path, env=service.env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    usage = trainyard("usage", "--json")
    assert usage.returncode == 0, usage.stderr
    assert json.loads(usage.stdout)["bytes"]["datasets"] > 0
    assert "active jobs" in trainyard("usage").stdout
    deleted = trainyard("datasets", "delete", dataset_id)
    assert deleted.returncode == 0 and dataset_id in deleted.stdout
    again = trainyard("datasets", "delete", dataset_id)
    assert again.returncode == 4, again.stderr  # not found
    for kind in ("jobs", "models", "sweeps"):
        assert trainyard(kind, "delete", "0" * 32).returncode == 4
