"""Distributed mode end to end: PostgreSQL + Redis + a real S3 server (SeaweedFS) for the
datasets' rows, the API under gunicorn, TWO `celery worker` processes training jobs at the same
time; cancellation and divergence through the API.
"""

from __future__ import annotations

import csv
import io
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import datetime

import numpy as np
import pytest
import redis

from service.dataset_store import PREDICTIONS, DatasetStore, s3_filesystem
from tests.support import (
    REDIS_URL,
    STORE_URL,
    Api,
    Processes,
    api_cmd,
    base_env,
    check_model,
    free_port,
    fresh_pg_database,
    new_api_key,
    worker_cmd,
)
from tests.support.s3 import S3Server
from tests.workers.datasets import blobs, moons, regression

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

REDIS_DB = 15  # the shared fixture uses 8..14
IMPORTS = "e2e-imports"  # the folder of the bucket that the API lets import from


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A database of this module's own: its workers sweep (reap, republish) what they see."""
    with fresh_pg_database() as url:
        yield url


@pytest.fixture(scope="module")
def store_url(s3_server: S3Server) -> str:
    """This module's dataset store: a prefix of its own on the session's S3 server."""
    return s3_server.url()


@pytest.fixture(scope="module")
def api(
    database_url: str,
    store_url: str,
    s3_server: S3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Api]:
    broker = f"{REDIS_URL}/{REDIS_DB}"
    client = redis.Redis.from_url(broker)
    client.flushdb()
    env = base_env(
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=broker,
        TRAINYARD_STORE_URL=store_url,
        TRAINYARD_IMPORT_PREFIXES=f"s3://{s3_server.bucket}/{IMPORTS}/",
        **s3_server.env(),
    )
    procs = Processes(tmp_path_factory.mktemp("distributed"))
    try:
        workers = [procs.start(name, worker_cmd(name), env) for name in ("w1", "w2")]
        port = free_port()
        server = procs.start("api", api_cmd(port), env)
        client_api = Api(f"http://127.0.0.1:{port}", server, new_api_key(database_url))
        client_api.wait_ready(60)
        for worker in workers:
            worker.wait_for_output(" ready.", 60)
        yield client_api
    finally:
        procs.stop_all()
        client.flushdb()
        client.close()


def test_datasets_rows_live_in_the_object_store(api: Api, store_url: str) -> None:
    """The API streamed the rows into S3 and the workers read them from there: nothing in the
    local store, the description's size and checksum are the parts'."""
    x, y = regression(300)
    dataset_id = api.dataset(x, y.reshape(-1), "regression in S3")
    store = DatasetStore(store_url)
    parts = store.parts(dataset_id)
    assert parts and all(p.startswith(store.root + "/datasets/") for p in parts)
    assert not DatasetStore(STORE_URL).parts(dataset_id)
    described = api.get(f"/datasets/{dataset_id}").json()
    assert described["storage"]["bytes"] == store.size(dataset_id) > 0
    job_id = api.job(dataset_id, [8, 1], epochs=5, test_split=0.2, seed=0)
    job = api.wait(job_id, timeout=120)
    assert job["status"] == "succeeded", job
    assert job["evaluation"]["test"]["n"] == 60


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_two_workers_train_moons_and_three_classes_concurrently(api: Api) -> None:
    xm, ym = moons(500, noise=0.1, seed=1)
    xb, yb = blobs(300, classes=3, seed=2)
    moons_id = api.job(
        api.dataset(xm, ym, "moons"), [16, 16, 1], loss="binary_cross_entropy",
        optimizer="adam", learning_rate=0.02, epochs=60, batch_size=32, seed=0,
    )  # fmt: skip
    blobs_id = api.job(
        api.dataset(xb, yb, "blobs"), [16, 3], loss="cross_entropy",
        optimizer="sgd", momentum=0.9, learning_rate=0.05, epochs=60, batch_size=32,
    )  # fmt: skip
    a = api.wait(moons_id, timeout=150)
    b = api.wait(blobs_id, timeout=150)
    assert a["metrics"]["accuracy"] >= 0.95, a["metrics"]
    assert b["metrics"]["accuracy"] >= 0.95, b["metrics"]
    # each worker trains one job at a time, so overlapping runs mean two workers
    assert when(a["started_at"]) < when(b["finished_at"])
    assert when(b["started_at"]) < when(a["finished_at"])
    check_model(api, a, xm[:50])
    check_model(api, b, xb[:50])


def long_job(api: Api) -> str:
    x, y = regression(16)
    return api.job(api.dataset(x, y[:, 0], "long"), [4, 1], loss="mse", epochs=10000,
                   batch_size=None)  # fmt: skip


def test_cancel_running_and_queued(api: Api) -> None:
    running = [long_job(api), long_job(api)]
    for job_id in running:
        api.wait(job_id, ("running",), timeout=30)
    queued = long_job(api)  # both workers are busy: it waits in the queue
    time.sleep(0.5)
    assert api.get(f"/jobs/{queued}").json()["status"] == "queued"
    r = api.http.post(f"{api.base}/api/v1/jobs/{queued}/cancel", timeout=10)
    assert r.status_code in (200, 202), r.text

    # wait until the running jobs have some history, then cancel them
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(api.get(f"/jobs/{j}").json()["progress"]["epoch"] >= 3 for j in running):
            break
        time.sleep(0.1)
    for job_id in running:
        r = api.http.post(f"{api.base}/api/v1/jobs/{job_id}/cancel", timeout=10)
        assert r.status_code in (200, 202), r.text
    for job_id in running:
        job = api.wait(job_id, ("cancelled",), timeout=30)
        assert 3 <= job["progress"]["epoch"] < 10000
        assert len(job["loss_history"]) == job["progress"]["epoch"]
        assert job["model_id"] is None

    job = api.wait(queued, ("cancelled",), timeout=10)
    time.sleep(1.0)  # a worker now receives its message, and must not start it
    job = api.get(f"/jobs/{queued}").json()
    assert job["status"] == "cancelled"
    assert job["attempts"] == 0 and job["started_at"] is None and job["loss_history"] == []
    r = api.http.post(f"{api.base}/api/v1/jobs/{queued}/cancel", timeout=10)
    assert r.status_code == 409


def test_diverging_job_fails_with_message(api: Api) -> None:
    x, y = regression(32)
    job_id = api.job(api.dataset(x, y[:, 0] * 1000, "wild"), [16, 16, 1], loss="mse",
                     optimizer="sgd", learning_rate=1e6, epochs=200, batch_size=8)  # fmt: skip
    job = api.wait(job_id, ("failed",), timeout=60)
    assert "NaN" in job["error"] or "inf" in job["error"]
    assert "learning_rate" in job["error"]
    assert job["model_id"] is None
    assert np.all(np.isfinite(job["loss_history"]))


def test_worker_logs_have_no_tracebacks(api: Api) -> None:
    # every failure above was a job failure, recorded in the store; no worker died
    assert api.proc is not None
    folder = api.proc.log.parent
    for log in folder.glob("w*.log"):
        text = log.read_text(errors="replace")
        assert "WorkerLostError" not in text and "Traceback" not in text, text[-3000:]


def test_hostile_text_never_reaches_the_graph_or_answers_unescaped(api: Api) -> None:
    """A dataset named like a script, with labels that try to break out of attributes, trained
    by a real worker: the graph SVG holds none of it, JSON answers escape `<` and `>`."""
    name = "<script>alert(1)</script>"
    labels = ['"><img src=x onerror=alert(1)>', "</svg><script>alert(2)</script>"]
    x, y = moons(40)
    dataset_id = api.dataset(x, [labels[int(v)] for v in y], name)
    assert b"<" not in api.get(f"/datasets/{dataset_id}").content
    job = api.wait(api.job(dataset_id, [4, 1], loss="binary_cross_entropy", epochs=3), timeout=60)
    svg = api.get(f"/models/{job['model_id']}/graph.svg")
    assert svg.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in svg.headers["Content-Security-Policy"]
    root = ET.fromstring(svg.content)
    assert not {e.tag.rsplit("}", 1)[-1] for e in root.iter()} & {"script", "img", "foreignObject"}
    assert not any(a.lower().startswith("on") for e in root.iter() for a in e.attrib)
    assert all(text not in svg.text for text in (name, *labels, "alert("))
    model = api.get(f"/models/{job['model_id']}")
    assert b"<" not in model.content and sorted(model.json()["architecture"]["classes"]) == sorted(
        labels
    )


def test_batch_predictions_live_in_s3_equal_predict_and_a_failed_job_frees_them(
    api: Api, store_url: str, database_url: str
) -> None:
    """A predict job on a worker reads its dataset from S3 and writes its predictions there
    (`predictions/{job_id}/{attempt}/`); they download equal to `POST /models/{id}/predict`. A
    job that fails half way (a missing cell in its second row group, for a model trained with
    `missing: "error"`) deletes the parts it wrote; another owner sees neither job."""
    x, y = moons(200, seed=3)
    trained = api.wait(
        api.job(api.dataset(x, y, "moons to learn"), [8, 1], loss="binary_cross_entropy",
                epochs=5, preprocessing={"missing": "error"}),
        timeout=120,
    )  # fmt: skip
    model_id = trained["model_id"]
    xs, ys = moons(70_000, seed=4)
    clean = api.dataset(xs[:5000], ys[:5000], "to score")
    job = api.post(f"/models/{model_id}/predictions", {"dataset_id": clean}, 202)
    done = api.wait(job["id"], timeout=120)
    assert done["result"]["rows"] == 5000
    store = DatasetStore(store_url)
    parts = store.parts(f"{job['id']}/1", PREDICTIONS)
    assert parts and all(p.startswith(f"{store.root}/predictions/{job['id']}/1/") for p in parts)
    assert done["result"]["bytes"] == store.size(f"{job['id']}/1", PREDICTIONS)
    answer = api.post(f"/models/{model_id}/predict", {"features": xs[:5000].tolist()}, 200)
    body = api.http.get(f"{api.base}{done['download_url']}", timeout=30)
    assert body.status_code == 200 and body.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(body.text)))
    assert rows[0] == ["prediction", "p_0", "p_1"]
    assert [int(r[0]) for r in rows[1:]] == answer["predictions"]
    np.testing.assert_allclose(
        [[float(v) for v in r[1:]] for r in rows[1:]], answer["probabilities"], rtol=1e-12
    )

    features: list[list[float | None]] = xs.round(4).tolist()
    features[69_000][1] = None  # in the second row group (65,536 rows each)
    gappy = api.post("/datasets", {"name": "gappy", "features": features,
                                   "targets": ys.tolist()}, 201)["id"]  # fmt: skip
    failing = api.post(f"/models/{model_id}/predictions", {"dataset_id": gappy}, 202)
    failed = api.wait(failing["id"], ("failed",), timeout=120)
    assert "row 69001" in failed["error"] and "'x1'" in failed["error"], failed["error"]
    assert store.parts(failing["id"], PREDICTIONS) == []
    assert store.parts(f"{failing['id']}/1", PREDICTIONS) == []
    r = api.http.get(f"{api.base}{failed['download_url']}", timeout=30)
    assert r.status_code == 409 and "failed" in r.json()["error"]["message"]

    other = {"Authorization": f"Bearer {new_api_key(database_url, owner='someone-else')}"}
    for path in (f"/jobs/{job['id']}", done["download_url"].removeprefix("/api/v1")):
        r = api.http.get(f"{api.base}/api/v1{path}", headers=other, timeout=30)
        assert r.status_code == 404, (path, r.text)


def test_a_csv_in_s3_imported_by_reference_on_a_worker_is_the_uploads_dataset(
    api: Api, s3_server: S3Server
) -> None:
    """`POST /datasets` with a `source`: a worker reads the object from S3 (its bytes never
    pass through the API) and makes the dataset an upload of the same file makes."""
    x, y = moons(3000, seed=5)
    text = "a,b,label\n" + "".join(
        f"{u:.5f},{v:.5f},{'up' if k else 'down'}\n" for (u, v), k in zip(x, y, strict=True)
    )
    key = f"{s3_server.bucket}/{IMPORTS}/moons.csv"
    with s3_filesystem().open_output_stream(key) as out:
        out.write(text.encode())
    job = api.post("/datasets", {"source": f"s3://{key}", "name": "moons", "target": "label"}, 202)
    assert job["kind"] == "import" and job["dataset_id"] is None
    done = api.wait(job["id"], timeout=120)
    assert done["progress"] == {"done": len(text), "total": len(text), "unit": "bytes"}
    imported = api.get(f"/datasets/{done['dataset_id']}").json()
    r = api.http.post(
        f"{api.base}/api/v1/datasets",
        files={"file": ("moons.csv", text.encode(), "text/csv")},
        data={"target": "label", "name": "moons"},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    uploaded = r.json()
    assert imported["storage"]["checksum"] == uploaded["storage"]["checksum"]
    assert imported["columns"] == uploaded["columns"] and imported["n_samples"] == 3000
    outside = {"source": f"s3://{s3_server.bucket}/elsewhere/moons.csv"}
    r = api.http.post(f"{api.base}/api/v1/datasets", json=outside, timeout=30)
    assert r.status_code == 403 and "TRAINYARD_IMPORT_PREFIXES" in r.json()["error"]["message"]
