"""What a delete frees (issue 23): a dataset uploaded as CSV, deleted with `DELETE
/api/v1/datasets/{id}`, then the workers' purge (`service.deletion.purge`); and SQLite's file
after models' weights are purged. Not a test; `.venv/bin/python bench/delete.py`.

1. **Store bytes** (`--store file` and `--store s3`, a SeaweedFS server of its own): the bytes
   of the dataset's Parquet parts before the delete, after the tombstone (unchanged: the API
   only marks it) and after the purge; the share freed.
2. **SQLite** (`--models N` models of `--weights-kb` KB of weights each, all deleted): the
   database file's size and free pages after the purge, with the default `auto_vacuum=NONE`
   (the file keeps its size; later writes reuse the free pages: the file does not grow while
   they are refilled) and with `auto_vacuum=INCREMENTAL` (set once with a `VACUUM`; the
   maintenance sweep then runs `PRAGMA incremental_vacuum` after each purge: the file shrinks).

    .venv/bin/python bench/delete.py [--rows 1000000] [--store file|s3|both] [--models 200]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from service import create_app, deletion  # noqa: E402
from service.auth import create_api_key  # noqa: E402
from service.dataset_store import DatasetStore  # noqa: E402
from service.db import make_engine, make_sessionmaker, utcnow  # noqa: E402
from service.tables import Dataset, Job, TrainedModel  # noqa: E402
from tests.support import migrate  # noqa: E402


def csv_body(rows: int, seed: int = 0) -> bytes:
    """Four numeric columns, a text column and a binary label."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    colour = np.array(["red", "green", "blue"])[rng.integers(0, 3, rows)]
    label = (x[:, 0] + x[:, 1] > 0).astype(int)
    out = io.StringIO()
    out.write("a,b,c,d,colour,label\n")
    for i in range(0, rows, 100_000):
        block = x[i : i + 100_000]
        lines = [
            f"{r[0]:.6f},{r[1]:.6f},{r[2]:.6f},{r[3]:.6f},{c},{k}"
            for r, c, k in zip(block, colour[i : i + 100_000], label[i : i + 100_000], strict=True)
        ]
        out.write("\n".join(lines) + "\n")
    return out.getvalue().encode()


@contextlib.contextmanager
def store_url(kind: str, folder: Path) -> Iterator[str]:
    if kind == "file":
        yield (folder / "store").as_uri()
        return
    from tests.support.s3 import start_s3_server

    with start_s3_server(folder / "s3") as server:
        os.environ.update(server.env())
        yield server.url()


def measure_store(kind: str, rows: int, body: bytes) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, store_url(kind, Path(tmp)) as url:
        database = f"sqlite:///{Path(tmp) / 'db.sqlite3'}"
        migrate(database)
        app = create_app(
            {"TESTING": True, "DATABASE_URL": database, "STORE_URL": url,
             "CELERY_BROKER_URL": f"filesystem://{Path(tmp) / 'broker'}"}
        )  # fmt: skip
        factory = app.extensions["db_sessionmaker"]
        with factory() as session:
            key = create_api_key(session, "bench")
            session.commit()
        client = app.test_client()
        auth = {"Authorization": f"Bearer {key}"}
        r = client.post(
            "/api/v1/datasets?target=label&name=big",
            data=body,
            headers={**auth, "Content-Type": "text/csv"},
        )
        assert r.status_code == 201, r.get_json()
        dataset_id = r.get_json()["id"]
        store = DatasetStore(url)
        before = store.size(dataset_id)
        assert client.delete(f"/api/v1/datasets/{dataset_id}", headers=auth).status_code == 204
        tombstoned = store.size(dataset_id)
        deletion.purge(factory)
        after = store.size(dataset_id)
        with factory() as session:
            rows_left = session.scalar(sa.select(sa.func.count()).select_from(Dataset))
        return {
            "store": kind,
            "rows": rows,
            "bytes_before": before,
            "bytes_after_tombstone": tombstoned,
            "bytes_after_purge": after,
            "freed": 1 - after / before,
            "dataset_rows_left": rows_left,
        }


def measure_sqlite(models: int, weights_kb: int, incremental: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "db.sqlite3"
        migrate(f"sqlite:///{path}")
        engine = make_engine(f"sqlite:///{path}")
        if incremental:
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA auto_vacuum=INCREMENTAL")
                conn.exec_driver_sql("VACUUM")
        factory = make_sessionmaker(engine)
        blob = os.urandom(weights_kb * 1024)
        add_models(factory, models, blob)
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        full = path.stat().st_size
        with factory() as session:
            session.execute(sa.update(TrainedModel).values(deleted_at=utcnow()))
            session.commit()
        deletion.purge(factory)
        deletion.vacuum(factory)
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            free = conn.exec_driver_sql("PRAGMA freelist_count").scalar()
            page = conn.exec_driver_sql("PRAGMA page_size").scalar()
        after = path.stat().st_size
        add_models(factory, models, blob)  # as many again: into the free pages, or the file grows
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        refilled = path.stat().st_size
        engine.dispose()
        return {
            "auto_vacuum": "INCREMENTAL" if incremental else "NONE",
            "weights_bytes": models * len(blob),
            "file_before": full,
            "file_after_purge": after,
            "free_pages_bytes": int(free or 0) * int(page or 0),
            "file_after_refill": refilled,
        }


def add_models(factory: Any, models: int, blob: bytes) -> None:
    with factory() as session:
        dataset = Dataset(name="d", n_samples=1, n_features=1, n_targets=1, target_kind="x")
        session.add(dataset)
        session.flush()
        for _ in range(models):
            job = Job(dataset_id=dataset.id, model_spec={}, training_spec={}, epochs=1)
            session.add(job)
            session.flush()
            session.add(
                    TrainedModel(job_id=job.id, dataset_id=dataset.id, architecture={},
                                 weights=blob, graph_svg="", metrics={})
                )  # fmt: skip
        session.commit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--store", choices=["file", "s3", "both"], default="both")
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--weights-kb", type=int, default=256)
    args = parser.parse_args()
    body = csv_body(args.rows)
    print(f"CSV body: {len(body) / 1e6:.1f} MB, {args.rows} rows")
    for kind in ("file", "s3") if args.store == "both" else (args.store,):
        print(measure_store(kind, args.rows, body))
    for incremental in (False, True):
        print(measure_sqlite(args.models, args.weights_kb, incremental))


if __name__ == "__main__":
    main()
