"""Service throughput and queue overhead in the distributed mode (not a test).

Uses the local PostgreSQL (a fresh database, dropped afterwards) and Redis (db 5, flushed), the
API under gunicorn and N real `celery worker` processes (concurrency 1 each), and reports:
- jobs per minute for 50 small jobs with 1 and with 2 workers (submit all, wait for all);
- submit -> `running` latency for an idle worker (median and max over a few jobs), and
  submit -> `succeeded` for the same tiny jobs.

    .venv/bin/python bench/service.py [--jobs 50] [--epochs 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import cluster

from tests.support import Api
from tests.workers.datasets import moons

REDIS_DB = 5


def throughput(api: Api, dataset_id: str, jobs: int, epochs: int) -> float:
    start = time.monotonic()
    ids = [
        api.job(
            dataset_id,
            [8, 1],
            loss="binary_cross_entropy",
            optimizer="adam",
            learning_rate=0.05,
            epochs=epochs,
            batch_size=32,
        )
        for _ in range(jobs)
    ]
    for job_id in ids:
        api.wait(job_id, timeout=600)
    return jobs / ((time.monotonic() - start) / 60)


def latency(api: Api, dataset_id: str, samples: int) -> tuple[list[float], list[float]]:
    to_running, db_gap = [], []
    for _ in range(samples):
        time.sleep(1.0)  # the worker is idle, polling its queue
        t0 = time.monotonic()
        job_id = api.job(dataset_id, [8, 1], loss="binary_cross_entropy", epochs=2000,
                         batch_size=None)  # fmt: skip
        api.wait(job_id, ("running", "succeeded"), timeout=60)
        to_running.append(time.monotonic() - t0)
        job = api.wait(job_id, timeout=120)
        db_gap.append(
            (
                datetime.fromisoformat(job["started_at"])
                - datetime.fromisoformat(job["created_at"])
            ).total_seconds()
        )
    return to_running, db_gap


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--latency-samples", type=int, default=5)
    args = parser.parse_args()

    with cluster("bench-service", REDIS_DB) as c:
        api = c.api
        x, y = moons(200)
        dataset_id = api.dataset(x, y, "bench-moons")
        print(f"{args.jobs} jobs, moons 200 x 2, [8, 1], {args.epochs} epochs, batch 32")

        for n in (1, 2):
            c.scale(n)
            rate = throughput(api, dataset_id, args.jobs, args.epochs)
            print(f"  {n} worker(s): {rate:7.1f} jobs/min")

        to_running, db_gap = latency(api, dataset_id, args.latency_samples)
        print(
            "submit -> running (idle workers, client-side, incl. polling every 0.1 s): "
            f"median {statistics.median(to_running) * 1000:.0f} ms, "
            f"max {max(to_running) * 1000:.0f} ms"
        )
        print(
            "created_at -> started_at (store timestamps): "
            f"median {statistics.median(db_gap) * 1000:.0f} ms, max {max(db_gap) * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
