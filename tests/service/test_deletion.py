"""Deletes, retention and quotas (`service.deletion`, `service.quotas`): every rule of a
`DELETE`, the tombstone then the purge (a crash between them serves nothing), expiry through
the workers' real maintenance sweep, quotas' 413/429 answers, the bytes freed in the store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from service import datasets, deletion
from service.auth import create_api_key
from service.config import Settings
from service.dataset_store import PREDICTIONS, DatasetStore
from service.db import session_scope
from service.tables import ApiKey, Dataset, Job, JobEpoch, Sweep, TrainedModel
from service.webhook_models import Webhook, WebhookDelivery
from tests.service.helpers import assert_error, count_rows, keyed_client, post_dataset
from tests.service.test_models import add_model
from tests.service.test_stored_datasets import parsed
from tests.support.s3 import S3Server
from workers import maintenance

JOB = {"model": {"layers": [4, 1]}, "training": {"loss": "binary_cross_entropy", "epochs": 3}}


def store(app: Flask) -> DatasetStore:
    return DatasetStore(app.config["STORE_URL"])


def sweep_once(app: Flask) -> None:
    """One pass of the workers' maintenance loop, as a worker runs it."""
    settings = Settings.from_flask_config(app.config)
    maintenance.sweep(app.extensions["db_sessionmaker"], app.extensions["celery"], settings)


def submit(client: FlaskClient, dataset_id: str, **extra: Any) -> str:
    r = client.post("/api/v1/jobs", json={"dataset_id": dataset_id, **JOB, **extra})
    assert r.status_code == 202, r.get_json()
    return str(r.get_json()["id"])


def dataset_of(app: Flask, model_id: str) -> str:
    with app.extensions["db_sessionmaker"]() as session:
        return str(
            session.scalar(sa.select(TrainedModel.dataset_id).where(TrainedModel.id == model_id))
        )


def test_a_deleted_dataset_is_404_everywhere_and_its_parts_go(
    app: Flask, client: FlaskClient
) -> None:
    dataset_id = post_dataset(client)
    assert dataset_id in store(app).dataset_ids()
    r = client.delete(f"/api/v1/datasets/{dataset_id}")
    assert r.status_code == 204 and r.get_data() == b""
    for path in (f"/api/v1/datasets/{dataset_id}", f"/api/v1/datasets/{dataset_id}/data"):
        assert_error(client.get(path), 404)
    assert client.get("/api/v1/datasets").get_json()["pagination"]["total"] == 0
    assert_error(client.post("/api/v1/jobs", json={"dataset_id": dataset_id, **JOB}), 404)
    assert_error(client.delete(f"/api/v1/datasets/{dataset_id}"), 404)  # the second one
    # the tombstone is all until the sweep: the parts are still there, never served
    assert dataset_id in store(app).dataset_ids()
    sweep_once(app)
    assert dataset_id not in store(app).dataset_ids()
    assert count_rows(app, Dataset) == 0


def test_a_dataset_in_use_is_409_naming_the_jobs(app: Flask, client: FlaskClient) -> None:
    dataset_id = post_dataset(client)
    job_ids = {submit(client, dataset_id), submit(client, dataset_id)}
    error = assert_error(client.delete(f"/api/v1/datasets/{dataset_id}"), 409, "jobs")
    assert error["code"] == "dataset_in_use"
    assert all(j in error["message"] for j in job_ids)
    for job_id in job_ids:
        assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
    assert client.delete(f"/api/v1/datasets/{dataset_id}").status_code == 204
    # the cancelled jobs stay, naming the dataset (its row a tombstone until they go)
    for job_id in job_ids:
        assert client.get(f"/api/v1/jobs/{job_id}").status_code == 200
    sweep_once(app)
    assert count_rows(app, Dataset) == 1 and dataset_id not in store(app).dataset_ids()


def test_deleting_a_dataset_keeps_its_models(app: Flask, client: FlaskClient) -> None:
    model_id, job_id, _ = add_model(app, [3, 1], "binary_cross_entropy", [0, 1])
    dataset_id = dataset_of(app, model_id)
    assert client.get(f"/api/v1/models/{model_id}").get_json()["dataset_deleted"] is False
    assert client.delete(f"/api/v1/datasets/{dataset_id}").status_code == 204
    sweep_once(app)
    model = client.get(f"/api/v1/models/{model_id}").get_json()
    assert model["dataset_deleted"] is True and model["dataset_id"] == dataset_id
    r = client.post(f"/api/v1/models/{model_id}/predict", json={"features": [[0.1, 0.2]]})
    assert r.status_code == 200, r.get_json()
    assert client.get(f"/api/v1/jobs/{job_id}").get_json()["model_id"] == model_id


def test_deleting_a_job_deletes_its_model_and_epochs(app: Flask, client: FlaskClient) -> None:
    model_id, job_id, _ = add_model(app, [3, 1], "binary_cross_entropy", [0, 1])
    with app.extensions["db_sessionmaker"]() as session:
        session.add(JobEpoch(job_id=job_id, epoch=1, loss=0.5))
        session.commit()
    assert client.delete(f"/api/v1/jobs/{job_id}").status_code == 204
    for path in (
        f"/api/v1/jobs/{job_id}",
        f"/api/v1/models/{model_id}",
        f"/api/v1/models/{model_id}/weights",
        f"/api/v1/models/{model_id}/bundle",
    ):
        assert_error(client.get(path), 404)
    assert_error(client.patch(f"/api/v1/jobs/{job_id}", json={"name": "x"}), 404)
    assert client.get("/api/v1/models").get_json()["items"] == []
    assert_error(client.delete(f"/api/v1/jobs/{job_id}"), 404)
    sweep_once(app)
    assert [count_rows(app, t) for t in (Job, JobEpoch, TrainedModel)] == [0, 0, 0]


def test_a_queued_job_is_409_until_cancelled(app: Flask, client: FlaskClient) -> None:
    job_id = submit(client, post_dataset(client))
    error = assert_error(client.delete(f"/api/v1/jobs/{job_id}"), 409)
    assert error["code"] == "still_active" and "cancel" in error["message"]
    client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert client.delete(f"/api/v1/jobs/{job_id}").status_code == 204


def test_deleting_a_model_keeps_its_job(app: Flask, client: FlaskClient) -> None:
    model_id, job_id, _ = add_model(app, [3, 1], "binary_cross_entropy", [0, 1])
    assert client.delete(f"/api/v1/models/{model_id}").status_code == 204
    assert_error(client.get(f"/api/v1/models/{model_id}"), 404)
    assert_error(
        client.post(f"/api/v1/models/{model_id}/predict", json={"features": [[0, 0]]}), 404
    )
    assert client.get(f"/api/v1/jobs/{job_id}").get_json()["model_id"] is None
    sweep_once(app)
    assert count_rows(app, TrainedModel) == 0 and count_rows(app, Job) == 1


def test_a_registered_model_is_409(app: Flask, client: FlaskClient) -> None:
    model_id, job_id, _ = add_model(app, [3, 1], "binary_cross_entropy", [0, 1])
    r = client.post("/api/v1/registry/churn/versions", json={"model_id": model_id})
    assert r.status_code in (200, 201), r.get_json()
    for path in (f"/api/v1/models/{model_id}", f"/api/v1/jobs/{job_id}"):
        error = assert_error(client.delete(path), 409)
        assert error["code"] == "model_registered" and model_id in error["message"]
    past = {"expires_at": "2000-01-01T00:00:00Z"}
    assert client.patch(f"/api/v1/jobs/{job_id}", json=past).status_code == 200
    sweep_once(app)  # a registered model's job does not expire
    assert client.get("/api/v1/models/churn@v1").get_json()["id"] == model_id
    # a deleted model cannot be registered
    other, _, _ = add_model(app, [3, 1], "binary_cross_entropy", [0, 1])
    assert client.delete(f"/api/v1/models/{other}").status_code == 204
    assert_error(client.post("/api/v1/registry/churn/versions", json={"model_id": other}), 404)


def test_deleting_a_sweep_deletes_its_trials(app: Flask, client: FlaskClient) -> None:
    dataset_id = post_dataset(client)
    body = {
        "dataset_id": dataset_id,
        "base": JOB,
        "parameters": {"training.learning_rate": {"values": [0.01, 0.1]}},
        "max_parallel": 1,
    }
    r = client.post("/api/v1/sweeps", json=body)
    assert r.status_code == 202, r.get_json()
    sweep_id = r.get_json()["id"]
    assert assert_error(client.delete(f"/api/v1/sweeps/{sweep_id}"), 409)["code"] == "still_active"
    trials = [j["id"] for j in client.get(f"/api/v1/jobs?sweep_id={sweep_id}").get_json()["items"]]
    assert len(trials) == 2
    assert assert_error(client.delete(f"/api/v1/jobs/{trials[0]}"), 409)["code"] in (
        "still_active",
        "sweep_trial",
    )
    assert client.post(f"/api/v1/sweeps/{sweep_id}/cancel").status_code == 200
    assert assert_error(client.delete(f"/api/v1/jobs/{trials[0]}"), 409)["code"] == "sweep_trial"
    assert client.delete(f"/api/v1/sweeps/{sweep_id}").status_code == 204
    assert_error(client.get(f"/api/v1/sweeps/{sweep_id}"), 404)
    for trial in trials:
        assert_error(client.get(f"/api/v1/jobs/{trial}"), 404)
    assert client.get("/api/v1/sweeps").get_json()["items"] == []
    sweep_once(app)
    assert count_rows(app, Sweep) == 0 and count_rows(app, Job) == 0


def test_other_owners_get_404_on_every_new_route(
    app: Flask, client: FlaskClient, bob: FlaskClient
) -> None:
    model_id, job_id, _ = add_model(app, [3, 1], "binary_cross_entropy", [0, 1])
    dataset_id = dataset_of(app, model_id)
    later = {"expires_at": "2999-01-01T00:00:00Z"}
    for method, path, body in [
        ("DELETE", f"/api/v1/datasets/{dataset_id}", None),
        ("PATCH", f"/api/v1/datasets/{dataset_id}", later),
        ("DELETE", f"/api/v1/models/{model_id}", None),
        ("PATCH", f"/api/v1/models/{model_id}", later),
        ("DELETE", f"/api/v1/jobs/{job_id}", None),
        ("PATCH", f"/api/v1/jobs/{job_id}", later),
        ("DELETE", f"/api/v1/sweeps/{'0' * 32}", None),
    ]:
        assert_error(bob.open(path, method=method, json=body), 404)
    assert bob.get("/api/v1/usage").get_json()["bytes"]["used"] == 0
    assert client.get(f"/api/v1/models/{model_id}").get_json()["expires_at"] is None
    assert count_rows(app, Dataset) == 1  # nothing of alice's was touched
    assert client.get("/api/v1/usage").get_json()["bytes"]["used"] > 0


def test_a_crash_between_tombstone_and_purge_serves_nothing(
    app: Flask, client: FlaskClient
) -> None:
    """The API commits the tombstone and dies; then a purge is cut after the store's objects
    went and before the SQL rows did; the next pass finishes, and a further one finds nothing."""
    model_id, job_id, _ = add_model(app, [3, 1], "binary_cross_entropy", [0, 1])
    other = post_dataset(client)
    factory = app.extensions["db_sessionmaker"]
    with factory() as session:  # the tombstones, committed, nothing else done
        deletion.delete_dataset(session, other, "alice")
        deletion.delete_job(session, job_id, "alice")
        session.commit()
    assert other in store(app).dataset_ids() and count_rows(app, Job) == 1
    assert_error(client.get(f"/api/v1/datasets/{other}"), 404)
    assert_error(client.get(f"/api/v1/models/{model_id}"), 404)
    assert client.get("/api/v1/jobs").get_json()["items"] == []
    store(app).delete(other)  # the purge got this far, then died
    assert deletion.purge(factory)["datasets"] == 1
    assert count_rows(app, Dataset) == 1  # the job's dataset: live, untouched
    assert count_rows(app, Job) == 0 and count_rows(app, TrainedModel) == 0
    assert not any(deletion.purge(factory).values())  # idempotent: nothing is left to do


def test_deleted_events_reach_webhooks(app: Flask, client: FlaskClient) -> None:
    with app.extensions["db_sessionmaker"]() as session:
        hook = Webhook(
            owner="alice",
            url="https://example.com/hook",
            events=["dataset.deleted", "model.deleted"],
            secret="whsec_x",
            created_at=datetime.now(UTC) - timedelta(minutes=1),
        )
        session.add(hook)
        session.commit()
    model_id, job_id, _ = add_model(app, [3, 1], "binary_cross_entropy", [0, 1])
    dataset_id = post_dataset(client)
    client.delete(f"/api/v1/datasets/{dataset_id}")
    client.delete(f"/api/v1/jobs/{job_id}")
    with app.extensions["db_sessionmaker"]() as session:
        rows = session.execute(sa.select(WebhookDelivery.event, WebhookDelivery.subject_id)).all()
    assert sorted(rows) == [("dataset.deleted", dataset_id), ("model.deleted", model_id)]


# -- retention ---------------------------------------------------------------------------------


def test_expired_rows_go_through_the_maintenance_sweep(app: Flask, client: FlaskClient) -> None:
    model_id, job_id, _ = add_model(app, [3, 1], "binary_cross_entropy", [0, 1])
    in_use = post_dataset(client)
    queued = submit(client, in_use)
    past = {"expires_at": (datetime.now(UTC) - timedelta(seconds=1)).isoformat()}
    r = client.patch(f"/api/v1/jobs/{job_id}", json=past)
    assert r.status_code == 200 and r.get_json()["expires_at"] is not None
    assert client.patch(f"/api/v1/datasets/{in_use}", json=past).status_code == 200
    sweep_once(app)
    assert_error(client.get(f"/api/v1/jobs/{job_id}"), 404)
    assert_error(client.get(f"/api/v1/models/{model_id}"), 404)
    # a dataset used by a queued job waits for it, as a DELETE would
    assert client.get(f"/api/v1/datasets/{in_use}").status_code == 200
    client.post(f"/api/v1/jobs/{queued}/cancel")
    sweep_once(app)
    assert_error(client.get(f"/api/v1/datasets/{in_use}"), 404)
    assert in_use not in store(app).dataset_ids()


def test_a_model_expires_on_its_own(app: Flask, client: FlaskClient) -> None:
    model_id, job_id, _ = add_model(app, [3, 1], "binary_cross_entropy", [0, 1])
    r = client.patch(f"/api/v1/models/{model_id}", json={"expires_at": "2000-01-01T00:00:00"})
    assert r.status_code == 200 and r.get_json()["expires_at"].startswith("2000-01-01T00:00:00")
    sweep_once(app)
    assert_error(client.get(f"/api/v1/models/{model_id}"), 404)
    assert client.get(f"/api/v1/jobs/{job_id}").status_code == 200


@pytest.mark.app_config({"RETENTION_DAYS": 2.0})
def test_retention_days_set_new_jobs_expiry(client: FlaskClient) -> None:
    dataset_id = post_dataset(client)
    job = client.get(f"/api/v1/jobs/{submit(client, dataset_id)}").get_json()
    expires = datetime.fromisoformat(job["expires_at"])
    assert timedelta(days=1.99) < expires - datetime.now(UTC) < timedelta(days=2)
    kept = client.get(f"/api/v1/jobs/{submit(client, dataset_id, expires_at=None)}").get_json()
    assert kept["expires_at"] is None


def test_retention_is_off_by_default(client: FlaskClient) -> None:
    job = client.get(f"/api/v1/jobs/{submit(client, post_dataset(client))}").get_json()
    assert job["expires_at"] is None


# -- quotas ------------------------------------------------------------------------------------


def quota_client(app: Flask, **quotas: Any) -> FlaskClient:
    with app.extensions["db_sessionmaker"]() as session:
        key = create_api_key(session, "carol", "quota", **quotas)
        session.commit()
    return keyed_client(app, key)


def test_over_the_bytes_quota_is_413_naming_it(app: Flask) -> None:
    carol = quota_client(app, quota_bytes=1000)
    dataset_id = post_dataset(carol)  # 0 bytes stored: taken (it takes carol past the quota)
    used = carol.get("/api/v1/usage").get_json()["bytes"]
    assert used["used"] == used["datasets"] > 1000 and used["quota"] == 1000
    error = assert_error(
        carol.post("/api/v1/datasets", json={"name": "x", "features": [[1]], "targets": [1]}), 413
    )
    assert error["code"] == "quota_bytes_exceeded"
    assert error["fields"]["quota"] == "quota_bytes" and error["fields"]["used"] == str(
        used["used"]
    )
    assert "1000" in error["message"]
    r = carol.post("/api/v1/uploads", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "10"})
    assert_error(r, 413)
    assert_error(carol.post("/api/v1/jobs", json={"dataset_id": dataset_id, **JOB}), 413)
    # deleting frees it: the usage drops at once
    assert carol.delete(f"/api/v1/datasets/{dataset_id}").status_code == 204
    assert carol.get("/api/v1/usage").get_json()["bytes"]["used"] == 0
    assert (
        carol.post(
            "/api/v1/datasets", json={"name": "x", "features": [[1]], "targets": [1]}
        ).status_code
        == 201
    )


def test_at_the_jobs_quota_is_429_naming_it(app: Flask) -> None:
    carol = quota_client(app, max_active_jobs=1)
    dataset_id = post_dataset(carol)
    submit(carol, dataset_id)
    error = assert_error(carol.post("/api/v1/jobs", json={"dataset_id": dataset_id, **JOB}), 429)
    assert error["code"] == "too_many_active_jobs"
    assert error["fields"] == {"quota": "max_active_jobs", "max_active_jobs": "1", "used": "1"}
    usage = carol.get("/api/v1/usage").get_json()
    assert usage["active_jobs"] == {"used": 1, "quota": 1} and usage["owner"] == "carol"


def test_quotas_are_off_by_default(client: FlaskClient) -> None:
    usage = client.get("/api/v1/usage").get_json()
    assert usage["bytes"]["quota"] is None and usage["active_jobs"]["quota"] == 100


def test_keys_create_takes_quotas(app: Flask) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=[
            "keys",
            "create",
            "--owner",
            "dave",
            "--quota-bytes",
            "10GB",
            "--max-active-jobs",
            "20",
        ]
    )
    assert result.exit_code == 0, result.output
    with app.extensions["db_sessionmaker"]() as session:
        key = session.scalars(sa.select(ApiKey).where(ApiKey.owner == "dave")).one()
    assert (key.quota_bytes, key.max_active_jobs) == (10 * 10**9, 20)
    bad = runner.invoke(args=["keys", "create", "--owner", "dave", "--quota-bytes", "ten"])
    assert bad.exit_code != 0 and "10GB" in bad.output


@pytest.mark.slow
def test_the_bytes_are_freed_in_an_s3_store(
    factory: sessionmaker[Session], s3_server: S3Server
) -> None:
    url = s3_server.url()
    with session_scope(factory) as session:
        dataset_id = datasets.new_dataset(session, parsed(), "alice", url).id
    s3 = DatasetStore(url)
    assert s3.size(dataset_id) > 0
    with factory() as session:
        deletion.delete_dataset(session, dataset_id, "alice")
        session.commit()
    assert s3.size(dataset_id) > 0  # the tombstone alone frees nothing
    assert deletion.purge(factory)["dataset_parts"] == 1
    assert s3.parts(dataset_id) == [] and dataset_id not in s3.dataset_ids()


def test_sqlite_gives_freed_pages_back_with_incremental_auto_vacuum(
    sqlite_database_url: str,
) -> None:
    from service.db import make_engine, make_sessionmaker

    engine = make_engine(sqlite_database_url)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA auto_vacuum=INCREMENTAL")
        conn.exec_driver_sql("VACUUM")
        conn.exec_driver_sql("CREATE TABLE filler (b BLOB)")
        conn.exec_driver_sql("INSERT INTO filler VALUES (zeroblob(2000000))")
        conn.commit()
        conn.exec_driver_sql("DELETE FROM filler")
        conn.commit()
        assert conn.exec_driver_sql("PRAGMA freelist_count").scalar() > 400
    deletion.vacuum(make_sessionmaker(engine))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA freelist_count").scalar() == 0
    engine.dispose()


def test_a_dataset_takes_its_expiry_at_creation(client: FlaskClient) -> None:
    body = {"name": "x", "features": [[1], [2]], "targets": [1, 2]}
    r = client.post("/api/v1/datasets?expires_at=2030-01-02T03:04:05Z", json=body)
    assert r.status_code == 201 and r.get_json()["expires_at"].startswith("2030-01-02T03:04:05")
    r = client.post(
        "/api/v1/datasets?name=csv&expires_at=2031-01-01T00:00:00",
        data=b"a,y\n1,2\n3,4\n",
        headers={"Content-Type": "text/csv"},
    )
    assert r.status_code == 201 and r.get_json()["expires_at"].startswith("2031-01-01T00:00:00")
    assert_error(client.post("/api/v1/datasets?expires_at=soon", json=body), 422, "expires_at")


def test_a_predict_job_frees_its_parts_and_holds_its_model(app: Flask, client: FlaskClient) -> None:
    from tests.service.test_predictions import rows, run
    from tests.service.test_predictions import submit as submit_predict

    model_id, _, _ = add_model(app, [4, 1], "binary_cross_entropy", ["no", "yes"])
    job = submit_predict(client, model_id, post_dataset(client, rows()))
    error = assert_error(client.delete(f"/api/v1/models/{model_id}"), 409, "jobs")
    assert error["code"] == "model_in_use" and job["id"] in error["message"]
    run(app, str(job["id"]))
    with app.extensions["db_sessionmaker"]() as session:
        location = session.scalar(sa.select(Job.output_location).where(Job.id == job["id"]))
    preds, _ = DatasetStore.at(location, PREDICTIONS)
    assert job["id"] in preds.dataset_ids(PREDICTIONS)
    assert client.get("/api/v1/usage").get_json()["bytes"]["predictions"] > 0
    assert client.delete(f"/api/v1/jobs/{job['id']}").status_code == 204
    assert_error(client.get(f"/api/v1/predictions/{job['id']}/data"), 404)
    assert client.get("/api/v1/usage").get_json()["bytes"]["predictions"] == 0
    assert job["id"] in preds.dataset_ids(PREDICTIONS)  # until the sweep
    sweep_once(app)
    assert job["id"] not in preds.dataset_ids(PREDICTIONS)
    assert count_rows(app, Job) == 1  # the model's training job alone
    assert client.delete(f"/api/v1/models/{model_id}").status_code == 204
