"""Load: 500 job submissions from 20 concurrent clients against the distributed mode (not a test).

A fresh PostgreSQL database (dropped afterwards), local Redis (db 4, flushed), the API under
gunicorn and 2 real `celery worker` processes (concurrency 1 each), as in `bench/service.py`.
Each client has its own API key (an owner of its own, with its own dataset: the per-key rate
limit and active-job cap apply as configured) and submits its share of the jobs back to back.
Reported:
- every job accounted for: all `succeeded`, one attempt each, exactly one model per job;
- `POST /jobs` latency under that load (p50, p99, max), and submissions per second;
- jobs per minute, from the first submission to the last job finished.

    .venv/bin/python bench/load.py [--jobs 500] [--clients 20] [--epochs 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import requests
import sqlalchemy as sa
from cluster import cluster

from service.auth import create_api_key
from service.db import make_engine, make_sessionmaker, session_scope
from service.tables import Job, TrainedModel
from tests.workers.datasets import moons

REDIS_DB = 4


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def client(
    base: str, key: str, jobs: int, epochs: int, latencies: list[float], errors: list[str]
) -> None:
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {key}"
    x, y = moons(200)
    r = http.post(
        f"{base}/api/v1/datasets",
        json={"name": "load", "features": x.tolist(), "targets": y.tolist()},
        timeout=60,
    )
    if r.status_code != 201:
        errors.append(f"dataset: {r.status_code} {r.text[:200]}")
        return
    body = {
        "dataset_id": r.json()["id"],
        "model": {"layers": [8, 1]},
        "training": {"loss": "binary_cross_entropy", "optimizer": "adam",
                     "learning_rate": 0.05, "epochs": epochs, "batch_size": 32},
    }  # fmt: skip
    for _ in range(jobs):
        t0 = time.monotonic()
        r = http.post(f"{base}/api/v1/jobs", json=body, timeout=60)
        latencies.append(time.monotonic() - t0)
        if r.status_code != 202:
            errors.append(f"job: {r.status_code} {r.text[:200]}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1200.0)
    args = parser.parse_args()

    with cluster("bench-load", REDIS_DB, workers=args.workers) as c:
        engine = make_engine(c.database_url)
        factory = make_sessionmaker(engine)
        api = c.api
        with session_scope(factory) as session:
            keys = [create_api_key(session, f"load-client-{i}") for i in range(args.clients)]

        share = [args.jobs // args.clients + (i < args.jobs % args.clients)
                 for i in range(args.clients)]  # fmt: skip
        latencies: list[float] = []
        errors: list[str] = []
        threads = [
            threading.Thread(
                target=client, args=(api.base, keys[i], share[i], args.epochs, latencies, errors)
            )
            for i in range(args.clients)
        ]
        print(
            f"{args.jobs} jobs from {args.clients} clients, {args.workers} workers; "
            f"moons 200 x 2, [8, 1], {args.epochs} epochs, batch 32"
        )
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        submitted = time.monotonic() - start
        print(
            f"submitted in {submitted:.1f} s ({len(latencies) / submitted:.1f} requests/s); "
            f"POST /jobs latency p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
            f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms, "
            f"max {max(latencies) * 1000:.0f} ms, mean {statistics.mean(latencies) * 1000:.0f} ms"
        )
        if errors:
            print(f"{len(errors)} failed submissions, e.g. {errors[:3]}")

        deadline = time.monotonic() + args.timeout
        while True:
            with session_scope(factory) as session:
                left = session.scalar(
                    sa.select(sa.func.count())
                    .select_from(Job)
                    .where(Job.status.in_(("queued", "running")))
                )
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - start

        with session_scope(factory) as session:
            by_status = dict(
                session.execute(sa.select(Job.status, sa.func.count()).group_by(Job.status)).all()
            )
            attempts = dict(
                session.execute(
                    sa.select(Job.attempts, sa.func.count()).group_by(Job.attempts)
                ).all()
            )
            models = session.scalar(sa.select(sa.func.count()).select_from(TrainedModel)) or 0
            model_jobs = (
                session.scalar(sa.select(sa.func.count(sa.distinct(TrainedModel.job_id)))) or 0
            )
            first_to_last = session.execute(
                sa.select(sa.func.min(Job.created_at), sa.func.max(Job.finished_at))
            ).one()
        total = sum(by_status.values())
        span = (first_to_last[1] - first_to_last[0]).total_seconds()
        print(f"jobs in the store: {total} {by_status}; attempts {attempts}")
        print(f"models: {models} for {model_jobs} distinct jobs")
        print(
            f"throughput: {by_status.get('succeeded', 0) / (elapsed / 60):.1f} jobs/min "
            f"(first submission to last job finished: {elapsed:.1f} s; "
            f"store timestamps: {span:.1f} s)"
        )
        ok = (
            not errors
            and total == args.jobs
            and by_status.get("succeeded", 0) == args.jobs
            and models == model_jobs == args.jobs
        )
        print("every job accounted for" if ok else "NOT every job accounted for")
        engine.dispose()
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
