"""Batch predictions' speed and memory (issue 22: at least 1M rows/s; a worker within 1.5 GB).

Stores a generated table (20 numeric columns, a 12-level text column, 2% missing cells, a
binary target; written a chunk at a time, never whole) in a file store with a SQLite database,
saves a `[64, 32, 1]` model (float32, its preprocessing fitted on the first chunk, weights as
initialised: the speed does not depend on them), and runs a predict job through the worker's
own code (`workers.tasks.run_job` with `workers.predicting.run_predict`, in this process, as
its Celery task does). Reports rows per second of the whole job (claim, read, predict, write,
progress, success) and the process's RssAnon: before the job, and its peak during it (sampled
every 10 ms).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/batch_predictions.py --rows 1000000

One BLAS thread, as bench/scale.py's `--threads 1` (set in the environment: it must be before
NumPy is imported); on a busy 2-core machine a pool of 2 threads is several times slower.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHUNK = 1 << 17


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()

    import numpy as np
    import pyarrow as pa

    from core.model import weights_to_npz
    from core.preprocessing import Preprocessor
    from core.table import Table, categorical_from_texts, numeric_column
    from engine.nn import MLP
    from service import lifecycle
    from service.config import Settings
    from service.dataset_store import TARGET, store_for
    from service.datasets import DatasetFacts, create_dataset
    from service.db import make_engine, make_sessionmaker, session_scope
    from service.migrate import upgrade
    from service.tables import Job, TrainedModel
    from workers import predicting
    from workers.tasks import run_job

    folder = Path(tempfile.mkdtemp(prefix="trainyard-bench-predict-"))
    store_url, database_url = folder.joinpath("store").as_uri(), f"sqlite:///{folder}/db.sqlite3"
    upgrade(database_url, store_url)
    factory = make_sessionmaker(make_engine(database_url))
    settings = dataclasses.replace(Settings(), store_url=store_url, heartbeat_interval=5.0)
    names = [f"n{j}" for j in range(20)] + ["color"]
    colors = np.array([f"c{k}" for k in range(12)], dtype=object)

    def chunk(seed: int, n: int) -> Table:
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(n, 20))
        x[rng.random(size=x.shape) < 0.02] = np.nan
        texts = colors[rng.integers(0, 12, size=n)]
        columns = [numeric_column(names[j], x[:, j]) for j in range(20)]
        return Table([*columns, categorical_from_texts("color", list(texts))])

    store = store_for(store_url)
    started = time.perf_counter()
    with store.writer("input") as writer:
        for i, start in enumerate(range(0, args.rows, CHUNK)):
            n = min(CHUNK, args.rows - start)
            table = chunk(i, n)
            arrays = [pa.array(c.values) for c in table.columns[:20]]
            arrays.append(pa.array(list(colors[table.columns[20].values])))
            arrays.append(pa.array(np.random.default_rng(i).integers(0, 2, n).astype(str)))
            writer.write(pa.table(arrays, names=[*names, TARGET]))
        stored = writer.commit()
    print(f"stored {args.rows:,} rows in {time.perf_counter() - started:.1f}s", flush=True)

    first = chunk(0, min(CHUNK, args.rows))
    pre = Preprocessor.fit(first, {"categorical": "onehot"})
    mlp = MLP(pre.n_outputs, [64, 32, 1], activation="relu", seed=0, dtype=np.float32)
    architecture = {
        "nin": pre.n_outputs, "layers": [64, 32, 1], "activation": "relu",
        "output_activation": None, "loss": "binary_cross_entropy", "target_kind": "labels",
        "classes": ["0", "1"], "dtype": "float32", "preprocessing": pre.to_dict(),
    }  # fmt: skip
    with session_scope(factory) as session:
        facts = DatasetFacts(
            name="bench", feature_names=names, columns=first.describe(), target_name="y",
            target_kind="labels", classes=["0", "1"],
        )  # fmt: skip
        dataset = create_dataset(session, facts, stored, "local", "input")
        train = Job(dataset_id=dataset.id, model_spec={}, training_spec={}, epochs=0,
                    status="succeeded")  # fmt: skip
        session.add(train)
        session.flush()
        model = TrainedModel(
            job_id=train.id, dataset_id=dataset.id, architecture=architecture,
            weights=weights_to_npz(mlp.state_dict()), graph_svg="", metrics={},
        )  # fmt: skip
        session.add(model)
        session.flush()
        job_id = lifecycle.submit_predict(
            session, owner="local", model_id=model.id, dataset_id=dataset.id,
            rows_total=args.rows,
        ).id  # fmt: skip

    before = rss_anon()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], rss_anon())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    outcome = run_job(
        factory,
        job_id,
        settings,
        lambda f, claim, limit: predicting.run_predict(f, claim, limit, settings),
    )
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    with session_scope(factory) as session:
        job = session.get(Job, job_id)
        assert job is not None
        rows, size = job.rows_done, job.output_bytes
    print(
        f"{outcome}: {rows:,} rows in {seconds:.2f}s = {args.rows / seconds:,.0f} rows/s; "
        f"{(size or 0) / 1e6:.0f} MB of predictions; RssAnon {before / 2**20:.0f} MiB before, "
        f"peak {peak[0] / 2**20:.0f} MiB (+{(peak[0] - before) / 2**20:.0f}); "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}"
    )
    return 0 if outcome == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
