"""Embedded mode end to end: `python -m workers.embedded` (gunicorn + a real `celery worker` on
the server-less filesystem broker, SQLite under its var folder), then Ctrl-C stops both.
"""

from __future__ import annotations

import re
import signal
import stat
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.support import Processes, check_model, pid_alive, start_embedded
from tests.workers.datasets import moons, regression

pytestmark = pytest.mark.slow


def test_embedded_mode_trains_serves_and_stops_cleanly(
    processes: Processes, tmp_path: Path
) -> None:
    var = tmp_path / "var"
    api, proc = start_embedded(processes, var)
    assert (var / "trainyard.sqlite3").exists()
    assert (var / "broker" / "queue").is_dir()
    key_file = var / "api-key"
    key = key_file.read_text().strip()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key in proc.text() and str(key_file) in proc.text()  # printed once, with its place
    assert requests.get(f"{api.base}/api/v1/jobs", timeout=10).status_code == 401

    x, y = moons(120)
    dataset_id = api.dataset(x, [["no", "yes"][int(v)] for v in y], "moons")
    job_id = api.job(
        dataset_id,
        [8, 8, 1],
        loss="binary_cross_entropy",
        optimizer="adam",
        learning_rate=0.05,
        epochs=30,
        batch_size=32,
        validation_split=0.2,
    )
    job = api.wait(job_id, timeout=90)
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(job["metrics"])
    assert len(job["val_loss_history"]) == 30 and job["attempts"] == 1
    model = check_model(api, job, x[:20])
    assert model["architecture"]["classes"] == ["no", "yes"]

    # Ctrl-C: the supervisor stops the worker and the API and exits 0.
    pids = [int(p) for p in re.findall(r"pid (\d+)", proc.text())]
    assert len(pids) == 2
    proc.popen.send_signal(signal.SIGINT)
    assert proc.popen.wait(timeout=40) == 0
    assert not any(pid_alive(pid) for pid in pids)
    assert "stopped" in proc.text()

    # a second start reuses the key (says where it is, creates none, prints the dashboard's
    # one-click link again, as notebook servers do) and still serves the same data
    api2, proc2 = start_embedded(processes, var)
    assert key_file.read_text().strip() == key
    assert f"using the API key in {key_file}" in proc2.text()
    assert "created an API key" not in proc2.text()
    assert f"/#token={key}" in proc2.text()
    assert api2.get(f"/jobs/{job_id}").json()["status"] == "succeeded"


def test_embedded_soft_time_limit_fails_job_with_history(
    processes: Processes, tmp_path: Path
) -> None:
    api, _ = start_embedded(
        processes,
        tmp_path / "var",
        TRAINYARD_TASK_SOFT_TIME_LIMIT="3",
        TRAINYARD_TASK_TIME_LIMIT="20",
        TRAINYARD_VISIBILITY_TIMEOUT="60",
    )
    x, y = regression(32)
    dataset_id = api.dataset(x, y[:, 0], "reg")
    job_id = api.job(dataset_id, [4, 1], loss="mse", epochs=10000, batch_size=8)
    job = api.wait(job_id, ("failed",), timeout=60)
    assert "time limit exceeded" in job["error"]
    assert len(job["loss_history"]) == job["progress"]["epoch"] > 0
    assert np.all(np.isfinite(job["loss_history"]))
