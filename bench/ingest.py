"""Dataset ingestion: how long a large CSV (or the same data as JSON) takes to be stored, and
whether listing datasets stays fast once large ones exist. Not a test; `make bench-ingest`.

In-process, on SQLite in a temporary directory, through the Flask test client (the whole
request path: parsing, typing the columns, compressing, the insert and the commit), one core.
A ~50 MB CSV of 200,000 rows: 26 numeric columns, 4 categorical ones, ~2% missing cells.
The same data as JSON twice: typed cells (numbers as numbers, text as strings, null for a
missing cell: what the Python client sends) and every cell as the CSV's text.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

NUMERIC = 26


def make_csv(rows: int, seed: int = 0) -> tuple[bytes, dict, dict]:
    """The CSV, the same as JSON of typed cells, and as JSON of the CSV's text."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {}
    typed: dict[str, list] = {}
    for j in range(NUMERIC):
        values = rng.normal(size=rows) * 10 ** (j % 5)
        text = np.char.mod("%.6f", values).astype(object)
        missing = rng.random(rows) < 0.02
        text[missing] = ""
        cols[f"num{j}"] = text
        typed[f"num{j}"] = [None if m else float(t) for t, m in zip(text, missing, strict=True)]
    levels = [["red", "green", "blue"], ["a", "b", "c", "d", "e"], ["yes", "no"], ["x", "y"]]
    for j, options in enumerate(levels):
        text = rng.choice(options, size=rows).astype(object)
        text[rng.random(rows) < 0.02] = "NA"
        cols[f"cat{j}"] = text
        typed[f"cat{j}"] = [None if t == "NA" else t for t in text]
    cols["target"] = rng.choice(["p", "q", "r"], size=rows).astype(object)
    header = ",".join(cols)
    body = "\n".join(",".join(row) for row in zip(*cols.values(), strict=True))
    csv = (header + "\n" + body + "\n").encode()
    targets = list(cols["target"])
    as_text = {
        "features": [list(r) for r in zip(*(cols[k] for k in cols if k != "target"), strict=True)],
        "targets": targets,
    }
    as_typed = {
        "features": [list(r) for r in zip(*typed.values(), strict=True)],
        "targets": targets,
    }
    return csv, as_typed, as_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="trainyard-ingest-")
    os.environ["DATABASE_URL"] = f"sqlite:///{tmp}/bench.sqlite3"
    os.environ["TRAINYARD_MAX_CONTENT_LENGTH"] = str(256 * 1024 * 1024)
    os.environ.setdefault("TRAINYARD_RATE_LIMIT", "100000/minute")
    import subprocess

    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, check=True, env=os.environ
    )
    from service import create_app
    from service.auth import create_api_key

    app = create_app()
    with app.extensions["db_sessionmaker"]() as session:
        key = create_api_key(session, "bench", "bench")
        session.commit()
    client = app.test_client()
    auth = {"Authorization": f"Bearer {key}"}

    csv, typed, text = make_csv(args.rows)
    print(f"CSV: {len(csv) / 1e6:.1f} MB, {args.rows} rows, {NUMERIC + 4} feature columns")
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        r = client.post(
            "/api/v1/datasets",
            data={"file": (io.BytesIO(csv), "big.csv"), "target": "target"},
            headers=auth,
            content_type="multipart/form-data",
        )
        times.append(time.perf_counter() - start)
        assert r.status_code == 201, r.get_data(as_text=True)[:500]
    print(f"CSV upload stored: best {min(times):.2f} s, median {np.median(times):.2f} s")

    for what, records in (("typed cells", typed), ("every cell as text", text)):
        body = json.dumps({"name": "big", **records}).encode()
        start = time.perf_counter()
        r = client.post(
            "/api/v1/datasets", data=body, headers=auth, content_type="application/json"
        )
        json_time = time.perf_counter() - start
        assert r.status_code == 201, r.get_data(as_text=True)[:500]
        print(f"JSON body, {what} ({len(body) / 1e6:.1f} MB) stored: {json_time:.2f} s")

    from service.tables import DatasetData

    with app.extensions["db_sessionmaker"]() as session:
        stored = session.get(DatasetData, r.get_json()["id"])
        assert stored is not None
        size = len(stored.features) + len(stored.targets)
    print(f"stored size of one dataset: {size / 1e6:.1f} MB")

    times = []
    for _ in range(20):
        start = time.perf_counter()
        r = client.get("/api/v1/datasets", headers=auth)
        times.append(time.perf_counter() - start)
        assert r.status_code == 200
    print(
        f"GET /datasets with {args.repeats + 1} large datasets: median "
        f"{np.median(times) * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
