"""Batch predictions through the API (SQLite and PostgreSQL): submit (202, the job, checks),
the job among the jobs (kind, filter), the download before and after the job ran (its attempt
run in this process by the worker's own code), owners, formats."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.config import Settings
from service.schemas import JobSchema, PredictJobSchema
from tests.service.helpers import assert_error, post_dataset
from tests.service.test_models import add_model
from tests.service.test_response_shapes import check
from tests.support import STORE_URL
from workers import predicting
from workers.tasks import run_job

URL = "/api/v1"
SETTINGS = dataclasses.replace(Settings(), store_url=STORE_URL, heartbeat_interval=5.0)


def rows(n: int = 30) -> dict[str, object]:
    rng = np.random.default_rng(0)
    return {
        "name": "to score",
        "features": rng.normal(size=(n, 2)).round(3).tolist(),
        "targets": [i % 2 for i in range(n)],
    }


def submit(client: FlaskClient, model_id: str, dataset_id: str) -> dict[str, object]:
    r = client.post(f"{URL}/models/{model_id}/predictions", json={"dataset_id": dataset_id})
    assert r.status_code == 202, r.get_json()
    job = r.get_json()
    assert r.headers["Location"].endswith(f"/api/v1/jobs/{job['id']}")
    return job


def run(app: Flask, job_id: str) -> str:
    factory = app.extensions["db_sessionmaker"]
    return run_job(
        factory,
        job_id,
        SETTINGS,
        lambda f, claim, limit: predicting.run_predict(f, claim, limit, SETTINGS),
    )


def test_a_batch_prediction_runs_as_a_job_and_downloads_as_predict_answers(
    app: Flask, client: FlaskClient, queued_messages: object
) -> None:
    model_id, train_id, _ = add_model(app, [4, 1], "binary_cross_entropy", ["no", "yes"])
    body = rows()
    dataset_id = post_dataset(client, body)
    job = submit(client, model_id, dataset_id)
    check(PredictJobSchema(), job, "submitted")
    assert (job["kind"], job["status"], job["model_id"]) == ("predict", "queued", model_id)
    assert job["progress"] == {"rows_done": 0, "rows_total": 30}
    assert job["download_url"] == f"/api/v1/predictions/{job['id']}/data"
    assert queued_messages() == 1  # type: ignore[operator]

    # 409 before it succeeded, naming its status
    early = assert_error(client.get(job["download_url"]), 409)
    assert "queued" in early["message"]

    # among the jobs: its kind, and the filter by kind; a training job keeps its fields
    listed = client.get(f"{URL}/jobs?kind=predict").get_json()["items"]
    assert [j["id"] for j in listed] == [job["id"]]
    trained = client.get(f"{URL}/jobs?kind=train").get_json()["items"]
    assert [j["id"] for j in trained] == [train_id]
    check(JobSchema(), client.get(f"{URL}/jobs/{train_id}").get_json(), "training job")
    assert client.get(f"{URL}/jobs/{train_id}").get_json()["kind"] == "train"

    assert run(app, str(job["id"])) == "succeeded"
    done = client.get(f"{URL}/jobs/{job['id']}").get_json()
    check(PredictJobSchema(), done, "succeeded")
    assert done["status"] == "succeeded" and done["progress"]["rows_done"] == 30
    assert done["result"]["rows"] == 30 and done["result"]["bytes"] > 0
    assert f"/predictions/{job['id']}/1" in done["result"]["location"]

    answer = client.post(
        f"{URL}/models/{model_id}/predict", json={"features": body["features"]}
    ).get_json()
    r = client.get(done["download_url"])
    assert r.status_code == 200 and r.mimetype == "text/csv"
    assert f"predictions-{job['id']}.csv" in r.headers["Content-Disposition"]
    table = pacsv.read_csv(io.BytesIO(r.data))
    assert table.column_names == ["prediction", "p_no", "p_yes"]
    assert table.column("prediction").to_pylist() == answer["predictions"]
    probabilities = np.column_stack([table.column(1), table.column(2)])
    np.testing.assert_allclose(probabilities, answer["probabilities"], rtol=1e-12)

    parquet = client.get(done["download_url"], headers={"Accept": "application/vnd.apache.parquet"})
    out = pq.read_table(io.BytesIO(parquet.data))
    assert out.column("prediction").to_pylist() == answer["predictions"]
    assert out.column("p_yes").to_pylist() == [p[1] for p in answer["probabilities"]]
    lines = client.get(done["download_url"], headers={"Accept": "application/x-ndjson"})
    first = json.loads(lines.data.decode().splitlines()[0])
    assert list(first) == ["prediction", "p_no", "p_yes"]
    assert first["prediction"] == answer["predictions"][0]
    # the streamed answer of POST /predict for the same rows: the same bytes
    streamed = client.post(
        f"{URL}/models/{model_id}/predict",
        json={"features": body["features"]},
        headers={"Accept": "text/csv"},
    )
    assert streamed.data == r.data
    assert_error(client.get(done["download_url"], headers={"Accept": "image/png"}), 406)


def test_regression_predictions_match_the_predict_answer(app: Flask, client: FlaskClient) -> None:
    model_id, _, _ = add_model(app, [4, 1], "mse", None)
    body = rows(12)
    job = submit(client, model_id, post_dataset(client, body))
    assert run(app, str(job["id"])) == "succeeded"
    table = pacsv.read_csv(io.BytesIO(client.get(str(job["download_url"])).data))
    answer = client.post(
        f"{URL}/models/{model_id}/predict", json={"features": body["features"]}
    ).get_json()
    assert table.column_names == ["prediction"]
    np.testing.assert_allclose(table.column(0).to_numpy(), answer["predictions"], rtol=1e-12)


def test_a_dataset_without_a_column_of_the_model_is_refused_naming_it(
    app: Flask, client: FlaskClient
) -> None:
    model_id, _, _ = add_model(app, [4, 1], "mse", None, nin=3)  # takes x0, x1, x2
    dataset_id = post_dataset(client, rows())  # has x0, x1
    r = client.post(f"{URL}/models/{model_id}/predictions", json={"dataset_id": dataset_id})
    body = assert_error(r, 422, "dataset_id")
    assert "'x2'" in body["fields"]["dataset_id"]
    assert client.get(f"{URL}/jobs?kind=predict").get_json()["items"] == []


def test_another_owners_model_dataset_job_and_download_are_404(
    app: Flask, client: FlaskClient, bob: FlaskClient
) -> None:
    model_id, _, _ = add_model(app, [4, 1], "mse", None)
    dataset_id = post_dataset(client, rows())
    bobs_dataset = post_dataset(bob, rows())
    assert_error(
        bob.post(f"{URL}/models/{model_id}/predictions", json={"dataset_id": bobs_dataset}), 404
    )
    r = client.post(f"{URL}/models/{model_id}/predictions", json={"dataset_id": bobs_dataset})
    assert_error(r, 404, "dataset_id")
    job = submit(client, model_id, dataset_id)
    assert run(app, str(job["id"])) == "succeeded"
    assert_error(bob.get(f"{URL}/jobs/{job['id']}"), 404)
    assert_error(bob.get(str(job["download_url"])), 404)
    assert_error(bob.post(f"{URL}/jobs/{job['id']}/cancel"), 404)
    # a training job has no predictions to download
    trained = client.get(f"{URL}/jobs?kind=train").get_json()["items"][0]
    assert_error(client.get(f"{URL}/predictions/{trained['id']}/data"), 404)
    assert_error(client.get(f"{URL}/predictions/nope/data"), 404)


def test_a_queued_predict_job_is_cancelled_by_the_jobs_cancel(
    app: Flask, client: FlaskClient
) -> None:
    model_id, _, _ = add_model(app, [4, 1], "mse", None)
    job = submit(client, model_id, post_dataset(client, rows()))
    r = client.post(f"{URL}/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.get_json()["status"] == "cancelled"
    assert run(app, str(job["id"])) == "duplicate"  # its message, delivered late, runs nothing
    body = assert_error(client.get(str(job["download_url"])), 409)
    assert "cancelled" in body["message"]


@pytest.mark.parametrize("body", [{}, {"dataset_id": 3}, {"dataset_id": "x", "extra": 1}])
def test_a_malformed_request_is_422(app: Flask, client: FlaskClient, body: dict) -> None:
    model_id, _, _ = add_model(app, [4, 1], "mse", None)
    assert_error(client.post(f"{URL}/models/{model_id}/predictions", json=body), 422)
