"""A hyperparameter sweep in the distributed mode with 2 workers (not a test).

Uses bench/cluster.py (a fresh PostgreSQL database, Redis db 2 flushed, the API under gunicorn,
two `celery worker` processes of concurrency 1) and submits one 12-trial grid through the API,
`max_parallel` 2 (so every trial after the first two is started by the end of another, in the
worker that ran it), then again with `max_parallel` unset (every trial queued at once).
Reports from the store's timestamps:

- the sweep's wall time (its `created_at` to its `finished_at`) against the sum of its trials'
  own run times (`started_at` to `finished_at`): the ratio (2 workers: 0.5 at best);
- the gap from one trial's end to the start of the trial it made room for (the k-th start
  after the first `max_parallel` follows the k-th end): median and max.

    .venv/bin/python bench/sweep.py [--epochs 150] [--trials 12]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import cluster

from tests.support import Api
from tests.workers.datasets import moons

REDIS_DB = 2  # bench/load.py 4, bench/service.py 5


def stamp(value: str) -> datetime:
    return datetime.fromisoformat(value)


def run_sweep(
    api: Api, dataset_id: str, epochs: int, trials: int, max_parallel: int | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": f"bench max_parallel={max_parallel}",
        "dataset_id": dataset_id,
        "base": {
            "model": {"layers": [32, 32, 1], "activation": "tanh"},
            "training": {"loss": "binary_cross_entropy", "optimizer": "adam", "epochs": epochs,
                         "batch_size": 32, "validation_split": 0.2},
        },
        "parameters": {
            "training.learning_rate": {"values": [0.001, 0.003, 0.01, 0.03]},
            "training.seed": {"values": list(range(max(1, trials // 4)))},
        },
        "max_trials": trials,
    }  # fmt: skip
    if max_parallel is not None:
        body["max_parallel"] = max_parallel
    t0 = time.monotonic()
    sweep = api.post("/sweeps", body, 202)
    while sweep["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.2)
        sweep = api.get(f"/sweeps/{sweep['id']}").json()
    client_wall = time.monotonic() - t0
    jobs = api.get(f"/jobs?sweep_id={sweep['id']}&page_size=100").json()["items"]
    runs = [(stamp(j["started_at"]), stamp(j["finished_at"])) for j in jobs]
    starts = sorted(s for s, _ in runs)
    ends = sorted(e for _, e in runs)
    first = max_parallel or 2  # unset: as many as the workers take (2)
    gaps = [(starts[k + first] - ends[k]).total_seconds() for k in range(len(runs) - first)]
    wall = (stamp(sweep["finished_at"]) - stamp(sweep["created_at"])).total_seconds()
    busy = sum((e - s).total_seconds() for s, e in runs)
    return {
        "status": sweep["status"],
        "trials": len(runs),
        "wall": wall,
        "client_wall": client_wall,
        "busy": busy,
        "ratio": wall / busy,
        "gaps": gaps,
        "trial_median": statistics.median((e - s).total_seconds() for s, e in runs),
        "best": sweep["best"],
    }


def report(label: str, r: dict[str, Any]) -> None:
    gaps = r["gaps"]
    print(
        f"{label}: {r['trials']} trials {r['status']}, each {r['trial_median']:.2f} s (median)\n"
        f"  wall {r['wall']:.2f} s (client {r['client_wall']:.2f} s), sum of trial run times "
        f"{r['busy']:.2f} s: ratio {r['ratio']:.3f} (target <= 0.6; 0.5 is two workers never idle)"
    )
    if gaps:
        print(
            "  end of a trial -> start of the next: "
            f"median {statistics.median(gaps) * 1000:.0f} ms, max {max(gaps) * 1000:.0f} ms "
            f"over {len(gaps)} hand-offs (target median < 100 ms)"
        )
    best = r["best"] or {}
    print(f"  best: {best.get('params')} val_loss {best.get('metric_value')}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--trials", type=int, default=12)
    args = parser.parse_args()
    with cluster("bench-sweep", REDIS_DB, workers=2) as c:
        x, y = moons(400)
        dataset_id = c.api.dataset(x, y, "bench-moons")
        print(
            f"sweep of {args.trials} trials (grid: 4 learning rates x seeds), moons 400 x 2, "
            f"[32, 32, 1] tanh, adam, {args.epochs} epochs, batch 32; 2 workers"
        )
        report("max_parallel 2", run_sweep(c.api, dataset_id, args.epochs, args.trials, 2))
        report("max_parallel unset", run_sweep(c.api, dataset_id, args.epochs, args.trials, None))


if __name__ == "__main__":
    main()
