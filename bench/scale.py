"""Tables of any size (issue 21, item 4): ingest speed, memory and training speed of the service
on generated tables of 1M, 5M and 20M rows, in both modes, side by side with a PyTorch
`DataLoader` script and LightGBM on the same rows. Not a test; `make bench-scale`.

The table: 22 columns, 20 numeric (about 2% missing cells each, 3 decimals), `color` (12 levels)
and `city` (200 levels, skewed) with about 2% missing cells, and a binary `target` that depends
on several numeric columns (one product, one sine, one square) and on both text columns, so that
a model can learn it (a perfect model scores a ROC AUC of about 0.85). It is written chunk by
chunk (131,072 rows, vectorized NumPy + pyarrow's CSV writer) to a CSV file in a temporary
folder, and the same chunks to a Parquet file (one row group per chunk) for the comparisons.

For each size and each mode (`embedded`: `python -m workers.embedded`, SQLite, the filesystem
broker, a `file://` store; `distributed`: gunicorn and a `celery worker` on a fresh PostgreSQL
database, Redis and a real S3 server, SeaweedFS from `tests/support/s3.py`), with a fresh
service each time:
- **ingest**: the CSV uploaded through the real API as a raw `text/csv` body (options in the
  query), streamed from disk by `requests` (a file object as the body); MB/s = the file's
  bytes (10^6) / the request's wall time until the `201`.
- **API memory**: RssAnon (anonymous memory, not page cache; `/proc/PID/status`) summed over
  gunicorn's master and workers, sampled every 50 ms: its idle value (the mean over 2 s before
  the upload) and its peak during the upload.
- **worker memory**: the same over the celery worker (main process and pool children) during a
  job on that dataset: `{"layers": [64, 32, 1]}`, 3 epochs, batch 256, Adam, `test_split` 0.1
  (the rest of the spec left to its defaults: tanh, float32, learning rate 0.01).
- **s/epoch/M**: seconds per epoch per million *training* rows (90% of the table). Ours: the
  mean interval between the commits of consecutive epochs (epochs 2..E; the job does not
  record when an epoch starts), seen by polling `GET /jobs/{id}` every 50 ms; a job too short
  for that falls back to (finished_at - started_at) / epochs and says so. `first_epoch_s`:
  from the job seen `running` to its first epoch seen (the one-time work of the split, fitting
  the preprocessing and encoding every row, plus the first epoch); `job_s`: its `started_at`
  to `finished_at` (with the evaluation and the saving of the model).
- **AUC**: the job's `evaluation.test.roc_auc` (and accuracy).

Beside them, once per size, each in a process of its own (its RssAnon sampled the same way):
- **PyTorch**: reads the Parquet file through a `torch.utils.data.DataLoader` over an
  `IterableDataset` of row groups (shuffled row groups, rows shuffled within each; numbers
  imputed with the medians and standardized, text one-hot, statistics from a seeded sample of
  at most 500,000 training rows as ours), the same MLP (tanh, Glorot init), Adam 0.01, batch
  256, 3 epochs, CPU; s/epoch/M = the mean of epochs 2..E (each epoch reads and encodes its row
  groups again, as a DataLoader does); the test-set AUC.
- **LightGBM**: `LGBMClassifier()` (100 rounds, every other option its default) on the training
  rows read from Parquet into pandas (text columns as pandas categories); fit time, peak
  RssAnon of its process, test-set AUC.

Threads: all three get one (`--threads 1`, the default; `0` leaves every library its own
default of one thread per core): PyTorch and LightGBM through their settings, the service's
processes through `OPENBLAS_NUM_THREADS`, `OMP_NUM_THREADS` and `MKL_NUM_THREADS` in their
environment (no code change). On this 2-core machine, shared with other work, a pool of 2
threads made the MLP's matrix products 4 (NumPy's OpenBLAS) to 25 (PyTorch's OpenMP) times
slower than one thread whenever the machine was busy.

All three use the service's own split (`core.training.split_indices`, seed 0, stratified), so
the test rows are the same rows. The goals of issue 21 are printed as a report, not asserted.

    .venv/bin/python bench/scale.py [--rows 1000000,5000000,20000000]
        [--modes embedded,distributed] [--quick] [--epochs 3] [--no-torch] [--no-lightgbm]
        [--threads 1] [--json var/bench/scale.json] [--folder DIR] [--keep] [--logs DIR]

`--quick`: 200,000 rows, the embedded mode only (`--rows`/`--modes` still win). Everything it
starts is stopped and its temporary folder removed at the end, on an error or Ctrl-C too.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

NUMERIC = 20
COLOR_LEVELS = 12
CITY_LEVELS = 200
CHUNK_ROWS = 131_072
MISSING = 0.02
TEST_SPLIT = 0.1
SEED = 0
LAYERS = [64, 32, 1]
BATCH = 256
SAMPLE_EVERY = 0.05
REDIS_DB = 11
#: bytes of a float32 one-hot encoded row (20 numbers + 12 + 200 levels), for the disk check
ENCODED_ROW_BYTES = (NUMERIC + COLOR_LEVELS + CITY_LEVELS) * 4
MiB = 1024 * 1024

# -- the table ------------------------------------------------------------------------------------


def column_names() -> list[str]:
    return [f"x{j:02d}" for j in range(NUMERIC)] + ["color", "city", "target"]


def generate(csv_path: Path, parquet_path: Path, rows: int, seed: int = SEED) -> dict[str, Any]:
    """Write the table to `csv_path` and `parquet_path`, one chunk at a time; returns sizes and
    the time it took."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    scales = np.array([10.0 ** (j % 4 - 1) for j in range(NUMERIC)])  # 0.1, 1, 10, 100
    offsets = rng.normal(0, 2, NUMERIC) * scales
    color_effect = rng.normal(0, 0.8, COLOR_LEVELS)
    city_effect = rng.normal(0, 0.6, CITY_LEVELS)
    city_p = 1.0 / np.arange(1, CITY_LEVELS + 1) ** 0.7
    city_p /= city_p.sum()
    colors = pa.array([f"color_{i:02d}" for i in range(COLOR_LEVELS)])
    cities = pa.array([f"city_{i:03d}" for i in range(CITY_LEVELS)])
    names = column_names()
    schema = pa.schema(
        [(n, pa.float64()) for n in names[:NUMERIC]]
        + [("color", pa.string()), ("city", pa.string()), ("target", pa.int8())]
    )
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    positives = 0
    with open(csv_path, "wb") as out:
        out.write((",".join(names) + "\n").encode())
        with (
            pacsv.CSVWriter(out, schema, write_options=options) as writer,
            pq.ParquetWriter(parquet_path, schema, compression="snappy") as parquet,
        ):
            for first in range(0, rows, CHUNK_ROWS):
                n = min(CHUNK_ROWS, rows - first)
                z = rng.standard_normal((n, NUMERIC))
                color = rng.integers(0, COLOR_LEVELS, n)
                city = rng.choice(CITY_LEVELS, n, p=city_p)
                logit = (
                    1.2 * z[:, 0] - 0.9 * z[:, 1] + 0.8 * z[:, 2] * z[:, 3]
                    + 0.7 * np.sin(2 * z[:, 4]) + 0.4 * (z[:, 5] ** 2 - 1) + 0.5 * z[:, 6]
                    + color_effect[color] + city_effect[city] - 0.3
                )  # fmt: skip
                target = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
                positives += int(target.sum())
                values = np.round(z * scales + offsets, 3)
                arrays = [
                    pa.array(values[:, j], mask=rng.random(n) < MISSING) for j in range(NUMERIC)
                ]
                for codes, levels in ((color, colors), (city, cities)):
                    indices = pa.array(codes.astype(np.int32), mask=rng.random(n) < MISSING)
                    arrays.append(pa.DictionaryArray.from_arrays(indices, levels).cast(pa.string()))
                arrays.append(pa.array(target))
                table = pa.Table.from_arrays(arrays, schema=schema)
                writer.write_table(table)
                parquet.write_table(table, row_group_size=CHUNK_ROWS)
    return {
        "rows": rows,
        "csv_bytes": csv_path.stat().st_size,
        "parquet_bytes": parquet_path.stat().st_size,
        "positive_rate": positives / rows,
        "generate_s": time.perf_counter() - start,
    }


def split(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The service's own (train, test) rows for this job spec: seed 0, no validation rows,
    `test_split` 0.1, stratified by class."""
    from core.training import split_indices

    train, _, test = split_indices(
        len(targets), 0.0, np.random.default_rng(SEED), test_split=TEST_SPLIT, strata=targets
    )
    return train, test


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Binary ROC AUC (ties counted half), from the ranks of the scores."""
    y = np.asarray(y).astype(bool)
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    pos = int(y.sum())
    neg = len(y) - pos
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


# -- memory ----------------------------------------------------------------------------------------


def rss_anon(pid: int) -> int:
    """A process's RssAnon in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                out.extend(int(p) for p in text.split())
    return out


def tree(pid: int) -> list[int]:
    """`pid` and every process below it."""
    found, stack = [], [pid]
    while stack:
        p = stack.pop()
        found.append(p)
        stack.extend(children(p))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def tree_rss_anon(root: int) -> int:
    return sum(rss_anon(p) for p in tree(root))


class Sampler:
    """Samples `measure()` (bytes) every `SAMPLE_EVERY` seconds in a thread while the block
    runs; `peak` and `mean` afterwards."""

    def __init__(self, measure: Callable[[], int]) -> None:
        self.measure = measure
        self.values: list[int] = []
        self.times: list[float] = []  # time.monotonic() of each value
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.values.append(self.measure())
            self.times.append(time.monotonic())
            if self._stop.wait(SAMPLE_EVERY):
                break

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.values.append(self.measure())
        self.times.append(time.monotonic())

    @property
    def peak(self) -> int:
        return max(self.values, default=0)

    def peak_between(self, start: float, end: float) -> int | None:
        """The peak of the values sampled in [start, end), None if none was."""
        inside = [v for v, t in zip(self.values, self.times, strict=True) if start <= t < end]
        return max(inside, default=None)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values) if self.values else 0.0


def idle(measure: Callable[[], int], seconds: float = 2.0) -> float:
    with Sampler(measure) as s:
        time.sleep(seconds)
    return s.mean


# -- the services ----------------------------------------------------------------------------------


@dataclass
class Service:
    """A running service: its base URL, API key, and the root PIDs of the API (gunicorn's
    master) and of the worker (celery's main process)."""

    mode: str
    base: str
    key: str
    api_pid: int
    worker_pid: int
    notes: list[str] = field(default_factory=list)

    def api_memory(self) -> int:
        return tree_rss_anon(self.api_pid)

    def worker_memory(self) -> int:
        return tree_rss_anon(self.worker_pid)


def _child_matching(parent: int, needle: str, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in children(parent):
            if needle in cmdline(pid):
                return pid
        time.sleep(0.1)
    raise RuntimeError(f"no child process of {parent} runs {needle!r}")


@contextlib.contextmanager
def embedded(folder: Path, logs: Path, extra: dict[str, str]) -> Iterator[Service]:
    """`python -m workers.embedded` on a var folder of its own (SQLite, the filesystem broker,
    the default `file://` store under it)."""
    from tests.support import Processes, start_embedded

    var = folder / "var"
    tmp = folder / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    processes = Processes(logs)
    try:
        env = {"TRAINYARD_STORE_URL": (var / "store").as_uri(), "TMPDIR": str(tmp), **extra}
        api, proc = start_embedded(processes, var, **env)
        runner = proc.popen.pid
        key = api.http.headers["Authorization"].removeprefix("Bearer ")
        yield Service(
            "embedded",
            api.base,
            key,
            _child_matching(runner, "gunicorn"),
            _child_matching(runner, "celery"),
        )
    finally:
        processes.stop_all()


@contextlib.contextmanager
def distributed(folder: Path, logs: Path, extra: dict[str, str]) -> Iterator[Service]:
    """gunicorn (2 processes) and one `celery worker` (concurrency 1) on a fresh PostgreSQL
    database, Redis (a database of its own, flushed) and a SeaweedFS S3 server
    (`bench/cluster.py`'s cluster, the S3 server's variables added)."""
    from bench.cluster import cluster
    from tests.support.s3 import start_s3_server

    tmp = folder / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    with start_s3_server(folder / "s3", bucket="trainyard-bench") as s3:
        env = {"TRAINYARD_STORE_URL": s3.url("scale"), "TMPDIR": str(tmp), **s3.env(), **extra}
        with cluster("scale", REDIS_DB, workers=1, logs=logs, env=env) as c:
            assert c.api.proc is not None
            yield Service(
                "distributed",
                c.api.base,
                c.key,
                c.api.proc.popen.pid,
                c.workers[0].popen.pid,
            )


SERVICES = {"embedded": embedded, "distributed": distributed}


# -- our side -------------------------------------------------------------------------------------


def upload(service: Service, csv_path: Path, name: str) -> tuple[dict[str, Any], float]:
    """The CSV as a raw `text/csv` body streamed from disk; (the 201's body, seconds)."""
    import requests

    with open(csv_path, "rb") as body:
        start = time.perf_counter()
        r = requests.post(
            f"{service.base}/api/v1/datasets",
            params={"name": name, "target": "target"},
            data=body,
            headers={"Authorization": f"Bearer {service.key}", "Content-Type": "text/csv"},
            timeout=(10, 6 * 3600),
        )
        seconds = time.perf_counter() - start
    if r.status_code != 201:
        raise RuntimeError(f"upload answered {r.status_code}: {r.text[:1000]}")
    return r.json(), seconds


def train_job(service: Service, dataset_id: str, epochs: int) -> dict[str, Any]:
    """Submit the job, poll it every 50 ms noting when each epoch is first seen; the job and
    those times."""
    import requests

    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {service.key}"
    body = {
        "dataset_id": dataset_id,
        "model": {"layers": LAYERS},
        "training": {"epochs": epochs, "batch_size": BATCH, "optimizer": "adam",
                     "test_split": TEST_SPLIT},
    }  # fmt: skip
    r = http.post(f"{service.base}/api/v1/jobs", json=body, timeout=30)
    if r.status_code != 202:
        raise RuntimeError(f"job answered {r.status_code}: {r.text[:1000]}")
    job_id = r.json()["id"]
    seen: dict[int, float] = {}
    running_at = None
    while True:
        job = http.get(f"{service.base}/api/v1/jobs/{job_id}", timeout=60).json()
        now = time.monotonic()
        if job["status"] == "running" and running_at is None:
            running_at = now
        epoch = int(job["progress"]["epoch"] or 0)
        for e in range(1, epoch + 1):
            seen.setdefault(e, now)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(SAMPLE_EVERY)
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
    job["_seen"] = seen
    job["_running_at"] = running_at
    return job


def _seconds(a: str, b: str) -> float:
    return (dt.datetime.fromisoformat(b) - dt.datetime.fromisoformat(a)).total_seconds()


def epoch_seconds(job: dict[str, Any], epochs: int) -> tuple[float, str, float | None]:
    """(seconds per epoch, how it was measured, seconds from running to the first epoch)."""
    seen: dict[int, float] = job["_seen"]
    total = _seconds(job["started_at"], job["finished_at"])
    gaps = [seen[e] - seen[e - 1] for e in range(2, epochs + 1) if e in seen and e - 1 in seen]
    first = None
    if job["_running_at"] is not None and 1 in seen:
        first = seen[1] - job["_running_at"]
    if gaps and min(gaps) >= 2 * SAMPLE_EVERY:
        per_epoch = sum(gaps) / len(gaps)
        basis = f"mean interval between epochs 2..{epochs} (polled every 50 ms)"
        return per_epoch, basis, first
    return total / epochs, "(finished_at - started_at) / epochs (job too short to poll)", first


def thread_env(threads: int) -> dict[str, str]:
    """The variables that set the BLAS and OpenMP thread pools of the service's processes
    (none for 0: their defaults, every core)."""
    if not threads:
        return {}
    return {name: str(threads) for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                            "MKL_NUM_THREADS")}  # fmt: skip


def measure_service(
    mode: str, folder: Path, logs: Path, csv_path: Path, rows: int, epochs: int, threads: int
) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    with SERVICES[mode](folder, logs, thread_env(threads)) as service:
        api_idle = idle(service.api_memory)
        with Sampler(service.api_memory) as api_mem:
            described, ingest_s = upload(service, csv_path, f"scale-{rows}")
        if described["n_samples"] != rows:
            raise RuntimeError(f"stored {described['n_samples']} rows of {rows}")
        worker_idle = idle(service.worker_memory)
        with Sampler(service.worker_memory) as worker_mem:
            job = train_job(service, described["id"], epochs)
        per_epoch, basis, first_epoch = epoch_seconds(job, epochs)
        # where the worker's peak falls: before the first epoch is seen (split, preprocessing,
        # encoding), up to the last one, or after it (evaluation on every split, saving)
        seen = job["_seen"]
        bounds = [-math.inf, seen.get(1, math.inf), seen.get(epochs, math.inf), math.inf]
        phases = {}
        for name, lo, hi in zip(("prepare", "epochs", "after"), bounds, bounds[1:], strict=False):
            peak = worker_mem.peak_between(lo, hi)
            phases[name] = None if peak is None else peak / MiB
        test = (job.get("evaluation") or {}).get("test") or {}
        train_rows = rows - int(test.get("n") or round(rows * TEST_SPLIT))
        size = csv_path.stat().st_size
        return {
            "mode": mode,
            "rows": rows,
            "csv_mb": size / 1e6,
            "ingest_s": ingest_s,
            "ingest_mb_s": size / 1e6 / ingest_s,
            "api_idle_mib": api_idle / MiB,
            "api_peak_mib": api_mem.peak / MiB,
            "api_above_idle_mib": (api_mem.peak - api_idle) / MiB,
            "worker_idle_mib": worker_idle / MiB,
            "worker_peak_mib": worker_mem.peak / MiB,
            "worker_peak_by_phase_mib": phases,
            "train_rows": train_rows,
            "epoch_s": per_epoch,
            "s_per_epoch_per_m": per_epoch / (train_rows / 1e6),
            "epoch_basis": basis,
            "first_epoch_s": first_epoch,
            "job_s": _seconds(job["started_at"], job["finished_at"]),
            "auc": test.get("roc_auc"),
            "accuracy": test.get("accuracy"),
            "n_test": test.get("n"),
            "warnings": described.get("warnings") or [],
            # the 1-minute load average before and after (the machine may be shared)
            "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        }


# -- the comparisons (each in a process of its own) ---------------------------------------------


def have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def run_child(
    kind: str, parquet: Path, out: Path, epochs: int, threads: int, logs: Path
) -> dict[str, Any]:
    """`bench/scale.py --child KIND` on the Parquet file, its RssAnon sampled; its report."""
    cmd = [sys.executable, __file__, "--child", kind, "--parquet", str(parquet),
           "--child-out", str(out), "--epochs", str(epochs), "--threads", str(threads)]  # fmt: skip
    log = logs / f"{kind}.log"
    with open(log, "wb") as output:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            with Sampler(lambda: tree_rss_anon(proc.pid)) as mem:
                code = proc.wait()
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if code != 0:
        raise RuntimeError(f"{kind} exited {code}:\n{log.read_text(errors='replace')[-3000:]}")
    report = json.loads(out.read_text())
    report["peak_mib"] = mem.peak / MiB
    report["load"] = round(os.getloadavg()[0], 2)
    return report


def _read_fit_sample(parquet: Path, train: np.ndarray) -> dict[str, Any]:
    """Medians, means, standard deviations and levels from a seeded sample of at most 500,000
    training rows (as the service fits its preprocessing)."""
    import pyarrow.parquet as pq

    from core.rows import fit_rows

    rows = fit_rows(train, SEED)
    pf = pq.ParquetFile(parquet)
    numeric, color, city = [], [], []
    offset = 0
    for g in range(pf.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        lo, hi = np.searchsorted(rows, [offset, offset + n])
        if hi > lo:
            t = pf.read_row_group(g).take(rows[lo:hi] - offset)
            numeric.append(
                np.column_stack(
                    [t.column(j).to_numpy(zero_copy_only=False) for j in range(NUMERIC)]
                )
            )
            color.extend(t.column("color").to_pylist())
            city.extend(t.column("city").to_pylist())
        offset += n
    x = np.concatenate(numeric)
    medians = np.nanmedian(x, axis=0)
    filled = np.where(np.isnan(x), medians, x)
    stats: dict[str, Any] = {
        "median": medians,
        "mean": filled.mean(axis=0),
        "std": np.where(filled.std(axis=0) > 1e-12, filled.std(axis=0), 1.0),
    }
    for name, values in (("color", color), ("city", city)):
        present = [v for v in values if v is not None]
        levels, counts = np.unique(np.array(present, dtype=object), return_counts=True)
        stats[name] = {"levels": list(levels), "fill": levels[int(np.argmax(counts))]}
    return stats


def encode_table(table: Any, stats: dict[str, Any]) -> np.ndarray:
    """Numbers imputed with the medians and standardized, text one-hot (a missing cell takes
    the most frequent level, an unseen one is all zeros): float32 rows."""
    x = np.column_stack([table.column(j).to_numpy(zero_copy_only=False) for j in range(NUMERIC)])
    x = np.where(np.isnan(x), stats["median"], x)
    parts = [((x - stats["mean"]) / stats["std"]).astype(np.float32)]
    n = table.num_rows
    for name in ("color", "city"):
        levels = stats[name]["levels"]
        index = {level: i for i, level in enumerate(levels)}
        column = table.column(name).combine_chunks()
        if not hasattr(column, "dictionary"):
            column = column.dictionary_encode()
        mapping = np.array(
            [index.get(v, -1) for v in column.dictionary.to_pylist()] + [index[stats[name]["fill"]]]
        )
        codes = mapping[column.indices.fill_null(-1).to_numpy(zero_copy_only=False)]
        onehot = np.zeros((n, len(levels)), dtype=np.float32)
        rows = np.nonzero(codes >= 0)[0]
        onehot[rows, codes[rows]] = 1.0
        parts.append(onehot)
    return np.concatenate(parts, axis=1)


def torch_child(parquet: Path, out: Path, epochs: int, threads: int) -> None:
    """The PyTorch script: a DataLoader over the Parquet file's row groups."""
    import pyarrow.parquet as pq
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    pf = pq.ParquetFile(parquet, read_dictionary=["color", "city"])
    targets = pf.read(columns=["target"]).column(0).to_numpy().astype(np.int64)
    train, test = split(targets)
    stats = _read_fit_sample(parquet, train)
    sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    in_train = np.zeros(len(targets), dtype=bool)
    in_train[train] = True
    del targets

    class RowGroups(IterableDataset):  # type: ignore[type-arg]
        def __init__(self, mask: np.ndarray, shuffle: bool) -> None:
            self.mask = mask
            self.shuffle = shuffle
            self.epoch = 0

        def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            rng = np.random.default_rng(SEED + self.epoch)
            groups = rng.permutation(len(sizes)) if self.shuffle else np.arange(len(sizes))
            info = get_worker_info()
            if info is not None:
                groups = groups[info.id :: info.num_workers]
            reader = pq.ParquetFile(parquet, read_dictionary=["color", "city"])
            for g in groups:
                keep = self.mask[starts[g] : starts[g + 1]]
                if not keep.any():
                    continue
                table = reader.read_row_group(int(g))
                x = encode_table(table, stats)[keep]
                y = table.column("target").to_numpy().astype(np.float32)[keep]
                order = rng.permutation(len(x)) if self.shuffle else np.arange(len(x))
                step = BATCH if self.shuffle else 65_536
                for s in range(0, len(x), step):
                    idx = order[s : s + step]
                    yield torch.from_numpy(x[idx]), torch.from_numpy(y[idx])

    width = NUMERIC + len(stats["color"]["levels"]) + len(stats["city"]["levels"])
    model = nn.Sequential(
        nn.Linear(width, LAYERS[0]), nn.Tanh(), nn.Linear(LAYERS[0], LAYERS[1]), nn.Tanh(),
        nn.Linear(LAYERS[1], LAYERS[2]),
    )  # fmt: skip
    for layer in model:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            bound = math.sqrt(6 / (layer.in_features + layer.out_features))
            nn.init.uniform_(layer.bias, -bound, bound)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = nn.BCEWithLogitsLoss()
    data = RowGroups(in_train, shuffle=True)
    loader = DataLoader(data, batch_size=None, num_workers=0)
    times = []
    for epoch in range(epochs):
        data.epoch = epoch
        start = time.perf_counter()
        model.train()
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(xb).squeeze(1), yb)
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - start)

    in_test = np.zeros(len(in_train), dtype=bool)
    in_test[test] = True
    scores, labels = [], []
    model.eval()
    with torch.no_grad():
        for xb, yb in DataLoader(RowGroups(in_test, shuffle=False), batch_size=None):
            scores.append(model(xb).squeeze(1).numpy())
            labels.append(yb.numpy())
    score, label = np.concatenate(scores), np.concatenate(labels)
    per_epoch = sum(times[1:]) / len(times[1:]) if len(times) > 1 else times[0]
    out.write_text(
        json.dumps(
            {
                "epoch_times": times,
                "epoch_s": per_epoch,
                "s_per_epoch_per_m": per_epoch / (len(train) / 1e6),
                "train_rows": len(train),
                "auc": roc_auc(label, score),
                "accuracy": float(((score > 0) == (label > 0.5)).mean()),
                "n_test": len(label),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            }
        )
    )


def lightgbm_child(parquet: Path, out: Path, threads: int) -> None:
    """LightGBM's fit (defaults: 100 rounds) on the training rows, scored on the test rows."""
    import lightgbm
    import pyarrow.parquet as pq

    frame = pq.read_table(parquet, read_dictionary=["color", "city"]).to_pandas()
    targets = frame.pop("target").to_numpy().astype(np.int64)
    train, test = split(targets)
    model = lightgbm.LGBMClassifier(n_estimators=100, verbose=-1, n_jobs=threads or None)
    x_train = frame.iloc[train]
    y_train = targets[train]
    start = time.perf_counter()
    model.fit(x_train, y_train)
    fit_s = time.perf_counter() - start
    del x_train
    score = model.predict_proba(frame.iloc[test])[:, 1]
    label = targets[test]
    out.write_text(
        json.dumps(
            {
                "fit_s": fit_s,
                "train_rows": len(train),
                "auc": roc_auc(label, score),
                "accuracy": float(((score > 0.5) == (label == 1)).mean()),
                "n_test": len(label),
                "lightgbm": lightgbm.__version__,
                "threads": threads or os.cpu_count(),
            }
        )
    )


# -- the report ------------------------------------------------------------------------------------


GOALS = {
    "api_above_idle_mib": 300.0,
    "worker_peak_mib": 1536.0,
    "flat": 1.3,
    "ingest_mb_s": 100.0,
    "epoch_ratio": 1.2,
}


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| mode | rows | CSV MB | ingest MB/s | API peak above idle (MiB) | worker peak (MiB) "
            "| s/epoch/M ours | PyTorch | ratio | AUC ours | PyTorch | LightGBM |")  # fmt: skip
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        cells = [
            r["mode"], f"{r['rows']:,}", _fmt(r["csv_mb"]), _fmt(r["ingest_mb_s"]),
            _fmt(r["api_above_idle_mib"], 0), _fmt(r["worker_peak_mib"], 0),
            _fmt(r["s_per_epoch_per_m"], 2), _fmt(r.get("torch_s_per_epoch_per_m"), 2),
            _fmt(r.get("epoch_ratio"), 2), _fmt(r["auc"], 3), _fmt(r.get("torch_auc"), 3),
            _fmt(r.get("lightgbm_auc"), 3),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode: each goal of issue 21 with the figure that decides it and whether it holds
    (None when this run cannot tell)."""
    out: dict[str, Any] = {}
    for mode in sorted({r["mode"] for r in rows}):
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["rows"])
        small, large = mine[0], mine[-1]
        api = max(r["api_above_idle_mib"] for r in mine)
        worker = max(r["worker_peak_mib"] for r in mine)
        ingest = min(r["ingest_mb_s"] for r in mine)
        ratios = [r["epoch_ratio"] for r in mine if r.get("epoch_ratio") is not None]
        checks: dict[str, Any] = {
            "api_above_idle_mib <= 300": {"value": api, "holds": api <= 300},
            "worker_peak_mib <= 1536": {"value": worker, "holds": worker <= 1536},
            "ingest_mb_s >= 100": {"value": ingest, "holds": ingest >= 100},
            "epoch_ratio <= 1.2": {
                "value": max(ratios) if ratios else None,
                "holds": max(ratios) <= 1.2 if ratios else None,
            },
        }
        for name in ("api_above_idle_mib", "worker_peak_mib"):
            growth = None
            if len(mine) > 1 and small[name] > 0:
                growth = large[name] / small[name]
            checks[f"{name} flat (largest / smallest <= 1.3)"] = {
                "value": growth,
                "holds": growth <= 1.3 if growth is not None else None,
            }
        out[mode] = checks
    return out


def print_goals(report: dict[str, Any]) -> None:
    print("\nissue 21's goals (a report, not assertions):")
    for mode, checks in report.items():
        for name, check in checks.items():
            holds = {True: "holds", False: "MISSED", None: "n/a"}[check["holds"]]
            print(f"  {mode:11s} {name:52s} {_fmt(check['value'], 2):>9s}  {holds}")


# -- main -----------------------------------------------------------------------------------------


def check_disk(folder: Path, rows: int, modes: list[str]) -> None:
    """Enough free space for the CSV, the Parquet copy, one store copy per mode and the
    worker's encoded matrix (a memory map in its TMPDIR, inside `folder`)."""
    need = rows * (200 + 120 + 120 * len(modes) + ENCODED_ROW_BYTES)
    free = shutil.disk_usage(folder).free
    if free < need * 1.1:
        raise SystemExit(
            f"{rows:,} rows need about {need / 1e9:.1f} GB in {folder}; "
            f"{free / 1e9:.1f} GB are free (--folder elsewhere, or fewer --rows)"
        )


def machine() -> dict[str, Any]:
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(int(mem) / MiB, 1),
        "python": platform.python_version(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(s) for s in args.rows.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    for mode in modes:
        if mode not in SERVICES:
            raise SystemExit(f"unknown mode {mode!r}: {', '.join(SERVICES)}")
    notes: list[str] = []
    use_torch = not args.no_torch and have("torch")
    use_lightgbm = not args.no_lightgbm and have("lightgbm")
    missing = "is not installed (pip install -r bench/requirements.txt)"
    if not use_torch:
        why = "--no-torch" if args.no_torch else f"torch {missing}"
        notes.append(f"PyTorch columns skipped: {why}")
    if not use_lightgbm:
        why = "--no-lightgbm" if args.no_lightgbm else f"lightgbm {missing}"
        notes.append(f"LightGBM columns skipped: {why}")
    parent = Path(args.folder) if args.folder else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="trainyard-scale-", dir=parent))
    logs = Path(args.logs)
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    tables: list[dict[str, Any]] = []
    try:
        for rows in sizes:
            check_disk(folder, rows, modes)
            data = folder / f"rows-{rows}"
            data.mkdir()
            csv_path, parquet_path = data / "table.csv", data / "table.parquet"
            made = generate(csv_path, parquet_path, rows)
            tables.append(made)
            print(f"\n{rows:,} rows: CSV {made['csv_bytes'] / 1e6:.1f} MB, Parquet "
                  f"{made['parquet_bytes'] / 1e6:.1f} MB, written in {made['generate_s']:.1f} s "
                  f"({made['positive_rate']:.1%} positive)", flush=True)  # fmt: skip
            torch_report = lgb_report = None
            if use_torch:
                torch_report = run_child(
                    "torch", parquet_path, data / "torch.json", args.epochs, args.threads, logs
                )
                print(f"  PyTorch: {torch_report['s_per_epoch_per_m']:.2f} s/epoch/M, AUC "
                      f"{torch_report['auc']:.3f}, peak RssAnon {torch_report['peak_mib']:.0f} "
                      f"MiB", flush=True)  # fmt: skip
            if use_lightgbm:
                lgb_report = run_child(
                    "lightgbm",
                    parquet_path,
                    data / "lightgbm.json",
                    args.epochs,
                    args.threads,
                    logs,
                )
                print(f"  LightGBM: fit {lgb_report['fit_s']:.1f} s, AUC "
                      f"{lgb_report['auc']:.3f}, peak RssAnon {lgb_report['peak_mib']:.0f} MiB",
                      flush=True)  # fmt: skip
            for mode in modes:
                r = measure_service(
                    mode,
                    data / mode,
                    logs / f"{rows}-{mode}",
                    csv_path,
                    rows,
                    args.epochs,
                    args.threads,
                )
                if torch_report is not None:
                    r["torch_s_per_epoch_per_m"] = torch_report["s_per_epoch_per_m"]
                    r["torch_auc"] = torch_report["auc"]
                    r["torch_peak_mib"] = torch_report["peak_mib"]
                    r["epoch_ratio"] = r["s_per_epoch_per_m"] / torch_report["s_per_epoch_per_m"]
                if lgb_report is not None:
                    r["lightgbm_auc"] = lgb_report["auc"]
                    r["lightgbm_fit_s"] = lgb_report["fit_s"]
                    r["lightgbm_peak_mib"] = lgb_report["peak_mib"]
                results.append(r)
                print(f"  {mode}: ingest {r['ingest_mb_s']:.1f} MB/s ({r['ingest_s']:.1f} s), "
                      f"API +{r['api_above_idle_mib']:.0f} MiB over {r['api_idle_mib']:.0f} idle, "
                      f"worker peak {r['worker_peak_mib']:.0f} MiB (idle "
                      f"{r['worker_idle_mib']:.0f}; by phase "
                      f"{'/'.join(_fmt(v, 0) for v in r['worker_peak_by_phase_mib'].values())}"
                      f" prepare/epochs/after), {r['s_per_epoch_per_m']:.2f} s/epoch/M, "
                      f"first epoch after {_fmt(r['first_epoch_s'])} s, job {r['job_s']:.1f} s, "
                      f"AUC {_fmt(r['auc'], 3)}", flush=True)  # fmt: skip
            shutil.rmtree(data, ignore_errors=True)
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "epochs": args.epochs,
        "layers": LAYERS,
        "batch_size": BATCH,
        "threads": args.threads,
        "modes": modes,
        "tables": tables,
        "results": results,
        "torch": torch_report if use_torch else None,
        "lightgbm": lgb_report if use_lightgbm else None,
        "notes": notes,
        "goals": goals(results),
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", help="table sizes, comma-separated (default 1M,5M,20M)")
    parser.add_argument("--modes", help="embedded,distributed (default both)")
    parser.add_argument("--quick", action="store_true", help="200,000 rows, embedded only")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads of the service's BLAS, PyTorch and LightGBM (default 1; 0: their "
        "defaults, every core)",
    )
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-lightgbm", action="store_true")
    parser.add_argument("--json", default=str(ROOT / "var" / "bench" / "scale.json"))
    parser.add_argument("--folder", help="where the temporary folder goes (default: TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--logs", default=str(ROOT / "var" / "bench" / "scale-logs"), help="the processes' logs"
    )
    parser.add_argument("--child", choices=("torch", "lightgbm"), help=argparse.SUPPRESS)
    parser.add_argument("--parquet", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "torch":
        torch_child(Path(args.parquet), Path(args.child_out), args.epochs, args.threads)
        return
    if args.child == "lightgbm":
        lightgbm_child(Path(args.parquet), Path(args.child_out), args.threads)
        return
    args.rows = args.rows or ("200000" if args.quick else "1000000,5000000,20000000")
    args.modes = args.modes or ("embedded" if args.quick else "embedded,distributed")

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in background
    report = run(args)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print("\n" + table(report["results"]))
    print("MiB = 2^20 bytes of RssAnon; s/epoch/M = seconds per epoch per million training rows")
    for note in report["notes"]:
        print("note:", note)
    print_goals(report["goals"])
    print(f"\nreport: {out}")


if __name__ == "__main__":
    main()
