"""Fault 10: a cancel racing the job's completion, many times, through the API. Exactly one
final state each time, consistent with the answer: `200` means the job ends `cancelled` with no
model, `409` means it had already `succeeded` (one model); nothing changes afterwards.
"""

from __future__ import annotations

import random
import time

import pytest

from tests.support import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

TRIALS = 30


def test_cancel_racing_completion(cluster: Cluster) -> None:
    cluster.worker("w1")
    api = cluster.api()
    dataset_id = cluster.add_dataset()
    body = {
        "dataset_id": dataset_id,
        "model": {"layers": [4, 1]},
        "training": {"loss": "mse", "epochs": 40, "batch_size": None},
    }

    def submit() -> tuple[str, float]:
        t0 = time.monotonic()
        r = api.http.post(f"{api.base}/api/v1/jobs", json=body, timeout=30)
        assert r.status_code == 202, r.text
        return str(r.json()["id"]), t0

    # how long a job takes from submission to `succeeded`, on this machine now
    durations = []
    for _ in range(3):
        job_id, t0 = submit()
        api.wait(job_id, timeout=60)
        durations.append(time.monotonic() - t0)
    duration = sorted(durations)[1]

    rng = random.Random(0)
    outcomes: dict[str, int] = {}
    answers: dict[str, int] = {}
    # A staircase aims each cancel at the boundary between the two outcomes: later after a
    # cancel won, earlier after the job won. So the race really runs both ways on a fast or a
    # slow (loaded) machine alike, not only where a fixed guess of the timing happens to fit.
    scale = 1.0
    for _ in range(TRIALS):
        job_id, t0 = submit()
        delay = duration * scale * rng.uniform(0.9, 1.1)
        time.sleep(max(0.0, t0 + delay - time.monotonic()))
        r = api.http.post(f"{api.base}/api/v1/jobs/{job_id}/cancel", timeout=30)
        assert r.status_code in (200, 409), r.text
        answers[job_id] = r.status_code
        job = api.wait(job_id, ("cancelled", "succeeded"), timeout=60)
        outcomes[job["status"]] = outcomes.get(job["status"], 0) + 1
        scale *= 0.8 if job["status"] == "succeeded" else 1.25
        if r.status_code == 200:
            assert job["status"] == "cancelled" and job["model_id"] is None, job
        else:
            assert job["status"] == "succeeded" and job["model_id"], job
            assert cluster.models(job_id) == 1
    time.sleep(1.0)
    for job_id, code in answers.items():
        status = api.get(f"/jobs/{job_id}").json()["status"]
        assert status == ("cancelled" if code == 200 else "succeeded")
        assert cluster.models(job_id) == (0 if code == 200 else 1)
    # the race was really run both ways
    assert outcomes.get("cancelled", 0) >= 1 and outcomes.get("succeeded", 0) >= 1, outcomes
