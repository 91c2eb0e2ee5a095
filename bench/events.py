"""Live event streams under load (not a test): 100 open `GET /jobs/{id}/events` streams and 20
clients polling, against the API as the compose file runs it (gunicorn with
`workers.gunicorn_conf`: 2 worker processes of 128 `gthread` threads) on PostgreSQL, with Redis
as the broker.

- A fresh PostgreSQL database (dropped afterwards) and a Redis server of the benchmark's own.
- 100 jobs submitted through the API, then "trained" by a writer thread that acts as the
  workers do (`service.lifecycle.claim` and `record_epoch`, one transaction per epoch, so the
  NOTIFY triggers fire as in production): `--rate` epochs per second in all, round robin.
- 100 streams, one per job, read by a separate process (100 threads), each epoch's arrival
  time recorded against the time it was committed.
- 20 polling clients (a third process, 20 threads, each with an API key of its own): half ask
  `GET /healthz`, half `GET /api/v1/jobs/{id}` (a job with its whole history), each every
  `--poll-interval` seconds (0.5, as the client's `wait` did; 0: back to back). Independent
  clients do not poll in step: each starts at a random moment of its first interval (seeded).
  `--lockstep` starts them all at once, so every interval begins with 20 requests together (the
  worst case).
- At the end every job is failed ("bench over"): every stream must have received every epoch
  exactly once and ended with the final status.

`--baseline` runs the same pollers and writes with no stream open, for comparison. Reported:
p50 / p99 / max of `/healthz` and `/jobs/{id}` as the clients saw them (the target: p99 <= 50
ms) and as the server spent them (its access log), the event latency from commit to arrival
(p50 / p99), and the streams' completeness.

    .venv/bin/python bench/events.py [--streams 100] [--pollers 20] [--seconds 20]
        [--rate 100] [--poll-interval 0.5] [--threads 128] [--workers 2] [--baseline]
        [--lockstep] [--seed 0]

`--threads 1` runs one thread per process (as gunicorn's default sync workers would): the first
two streams take both processes and nothing else is answered.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from service import lifecycle  # noqa: E402
from service.config import Settings  # noqa: E402
from service.db import make_engine, make_sessionmaker  # noqa: E402
from service.lifecycle import Claim  # noqa: E402
from tests.support import (  # noqa: E402
    Api,
    Processes,
    RedisServer,
    api_cmd,
    base_env,
    free_port,
    fresh_pg_database,
    new_api_key,
)
from tests.workers.datasets import moons  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    return (
        f"p50 {percentile(values, 0.5) * 1000:.1f} ms, p99 {percentile(values, 0.99) * 1000:.1f} "
        f"ms, max {max(values) * 1000:.1f} ms (n={len(values)})"
    )


#: The access log's lines: method, path, status and the server's own time in microseconds (from
#: its reading the request to its writing the last byte; the client's time adds the network and
#: its own scheduling).
ACCESS_FORMAT = "access %(m)s %(U)s %(s)s %(D)s"


def server_command(port: int, workers: int, threads: int) -> list[str]:
    """The compose file's `api` command, on `port`, with the access log's times."""
    return api_cmd(port, workers, threads, extra=["--access-logformat", ACCESS_FORMAT])


def server_times(log: Path, path: str) -> list[float]:
    """The server's own times (seconds) of the `GET path` answered 200, from its access log."""
    times = []
    for line in log.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[:4] == ["access", "GET", path, "200"]:
            times.append(int(parts[4]) / 1e6)
    return times


# -- the streams (a process of their own, so their parsing costs the pollers nothing) -------------


def read_stream(base: str, key: str, job_id: str, out: dict[str, Any]) -> None:
    epochs: list[tuple[int, float]] = []
    out.update(job_id=job_id, epochs=epochs, final=None, error=None, opened=None)
    try:
        with requests.get(
            f"{base}/api/v1/jobs/{job_id}/events",
            headers={"Authorization": f"Bearer {key}"},
            stream=True,
            timeout=(10, 120),
        ) as r:
            out["opened"] = r.status_code
            event = None
            for line in r.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    if event == "epoch":
                        epochs.append((data["epoch"], time.time()))
                    elif event == "status" and data["status"] in lifecycle.FINAL_STATUSES:
                        out["final"] = data["status"]
    except Exception as exc:
        out["error"] = repr(exc)


def streams_process(base: str, key: str, job_ids: list[str], results: Any, ready: Any) -> None:
    outs: list[dict[str, Any]] = [{} for _ in job_ids]
    threads = [
        threading.Thread(target=read_stream, args=(base, key, job_id, out), daemon=True)
        for job_id, out in zip(job_ids, outs, strict=True)
    ]
    for t in threads:
        t.start()
    ready.set()
    for t in threads:
        t.join(timeout=600)
    results.put(outs)


# -- the pollers (a process of their own: real clients share no interpreter with the workers) ----


def poller(
    base: str, key: str, path: str, interval: float, delay: float, stop: threading.Event,
    out: list[float], errors: list[str],
) -> None:  # fmt: skip
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {key}"
    stop.wait(delay)
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            r = http.get(f"{base}{path}", timeout=10)
            if r.status_code != 200:
                errors.append(f"{path}: {r.status_code}")
        except requests.RequestException as exc:
            errors.append(f"{path}: {exc!r}")
        out.append(time.monotonic() - t0)
        if interval:
            stop.wait(max(0.0, interval - (time.monotonic() - t0)))


def pollers_process(
    base: str, keys: list[str], job_path: str, interval: float, seconds: float, lockstep: bool,
    seed: int, results: Any,
) -> None:  # fmt: skip
    """Half the keys poll `/healthz`, half `job_path`, for `seconds`; puts (health times, job
    times, errors) on `results`."""
    rng = random.Random(seed)
    stop = threading.Event()
    health: list[float] = []
    job: list[float] = []
    errors: list[str] = []
    threads = []
    for i, key in enumerate(keys):
        path, out = ("/healthz", health) if i % 2 == 0 else (job_path, job)
        delay = 0.0 if lockstep else rng.uniform(0.0, interval)
        args = (base, key, path, interval, delay, stop, out, errors)
        threads.append(threading.Thread(target=poller, args=args))
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    results.put((health, job, errors))


# -- the "workers" --------------------------------------------------------------------------------


class Writer:
    """Claims every job and records epochs round robin at `rate` per second, as workers do;
    `written[(job, epoch)]` is when each was committed."""

    def __init__(self, database_url: str, job_ids: list[str], rate: float) -> None:
        self.factory = make_sessionmaker(make_engine(database_url))
        self.settings = dataclasses.replace(Settings(), stale_after=3600.0)
        self.job_ids = job_ids
        self.rate = rate
        self.claims: dict[str, Claim] = {}
        self.written: dict[tuple[str, int], float] = {}
        self.epoch: dict[str, int] = dict.fromkeys(job_ids, 0)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def claim_all(self) -> None:
        for job_id in self.job_ids:
            claim = lifecycle.claim(self.factory, job_id, self.settings)
            assert isinstance(claim, Claim), claim
            self.claims[job_id] = claim

    def run(self) -> None:
        start = time.monotonic()
        n = 0
        while not self.stop.is_set():
            job_id = self.job_ids[n % len(self.job_ids)]
            epoch = self.epoch[job_id] + 1
            lifecycle.record_epoch(self.factory, self.claims[job_id], epoch, 1.0 / epoch, None)
            self.written[(job_id, epoch)] = time.time()
            self.epoch[job_id] = epoch
            n += 1
            ahead = start + n / self.rate - time.monotonic()
            if ahead > 0:
                self.stop.wait(ahead)

    def finish(self) -> None:
        for claim in self.claims.values():
            lifecycle.fail(self.factory, claim, "bench over")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--pollers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=100.0, help="epochs per second in all")
    parser.add_argument("--poll-interval", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=128)
    parser.add_argument("--baseline", action="store_true", help="the same load without the streams")
    parser.add_argument("--lockstep", action="store_true", help="every poller starts at once")
    parser.add_argument("--seed", type=int, default=0, help="the pollers' start times")
    args = parser.parse_args()

    folder = ROOT / "var" / "bench-events"
    folder.mkdir(parents=True, exist_ok=True)
    redis_server = RedisServer(folder)
    redis_server.start()
    procs = Processes(folder)
    try:
        with fresh_pg_database() as database_url:
            env = base_env(DATABASE_URL=database_url, CELERY_BROKER_URL=redis_server.url)
            port = free_port()
            server = procs.start("api", server_command(port, args.workers, args.threads), env)
            key = new_api_key(database_url, "bench-events")
            api = Api(f"http://127.0.0.1:{port}", server, key)
            api.wait_ready(60)
            print(" ".join(server.cmd[1:]))

            x, y = moons(200)
            dataset_id = api.dataset(x, y, "events")
            job_ids = [
                api.job(dataset_id, [8, 1], loss="binary_cross_entropy", epochs=10_000)
                for _ in range(args.streams)
            ]
            writer = Writer(database_url, job_ids, args.rate)
            writer.claim_all()
            for epoch in range(1, 101):  # a history for the polled job
                lifecycle.record_epoch(writer.factory, writer.claims[job_ids[0]], epoch, 0.5, 0.6)
            writer.epoch[job_ids[0]] = 100

            ctx = mp.get_context("spawn")
            results = ctx.Queue()
            ready = ctx.Event()
            reader = ctx.Process(
                target=streams_process, args=(api.base, key, job_ids, results, ready)
            )
            if not args.baseline:
                reader.start()
                ready.wait(60)
                time.sleep(2.0)  # every stream connected and sent its first status
            print(
                f"{0 if args.baseline else args.streams} streams open; "
                f"{args.pollers} pollers every {args.poll_interval:g} s "
                f"({'in lockstep' if args.lockstep else 'at random phases'}); "
                f"epochs written at {args.rate:g}/s for {args.seconds:g} s"
            )

            # each polling client has a key of its own (the rate limit is per key)
            keys = [new_api_key(database_url, "bench-events") for _ in range(args.pollers)]
            job_path = f"/api/v1/jobs/{job_ids[0]}"
            polled = ctx.Queue()
            pollers = ctx.Process(
                target=pollers_process,
                args=(
                    api.base, keys, job_path, args.poll_interval, args.seconds, args.lockstep,
                    args.seed, polled,
                ),
            )  # fmt: skip
            writer.thread.start()
            pollers.start()
            health, job, errors = polled.get(timeout=args.seconds + 120)
            pollers.join(timeout=60)
            writer.stop.set()
            writer.thread.join()
            writer.finish()
            outs = [] if args.baseline else results.get(timeout=120)
            if not args.baseline:
                reader.join(timeout=60)

            print(f"GET /healthz:    {ms(health)}")
            print(f"GET /jobs/{{id}}: {ms(job)}")
            print(f"  in the server: /healthz {ms(server_times(server.log, '/healthz'))}")
            print(f"  in the server: /jobs/{{id}} {ms(server_times(server.log, job_path))}")
            if errors:
                print(f"{len(errors)} poll errors, e.g. {errors[:3]}")
            latencies = []
            complete = 0
            problems = []
            for out in outs:
                got = [e for e, _ in out["epochs"]]
                expected = list(range(1, writer.epoch[out["job_id"]] + 1))
                if got == expected and out["final"] == "failed":
                    complete += 1
                else:
                    problems.append(
                        f"{out['job_id'][:8]}: {len(got)}/{len(expected)} epochs, "
                        f"final {out['final']}, error {out['error']}"
                    )
                for epoch, arrived in out["epochs"]:
                    written = writer.written.get((out["job_id"], epoch))
                    if written is not None:
                        latencies.append(arrived - written)
            print(f"event latency, commit to client: {ms(latencies)}")
            print(
                f"streams complete (every epoch once, in order, then the final status): "
                f"{complete}/{len(outs)}; {len(writer.written)} epochs written"
            )
            for line in problems[:5]:
                print("  ", line)
            p99 = max(percentile(health, 0.99), percentile(job, 0.99)) if health and job else 1e9
            ok = complete == len(outs) and not errors and p99 <= 0.050
            print(
                f"p99 {'within' if p99 <= 0.050 else 'OVER'} the 50 ms target; "
                f"{'OK' if ok else 'NOT OK'}"
            )
            return 0 if ok else 1
    finally:
        procs.stop_all()
        redis_server.stop()


if __name__ == "__main__":
    sys.exit(main())
