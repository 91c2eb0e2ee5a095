"""`Idempotency-Key` on POST /jobs and POST /datasets: the same key and request get the first
answer again (and nothing new is stored or queued); the same key with another request is 422;
concurrent requests with one key make one job."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.tables import Dataset, IdempotentRequest, Job
from tests.service.helpers import assert_error, binary_dataset, count_rows, post_dataset

JOB = {"model": {"layers": [4, 1]}, "training": {"loss": "binary_cross_entropy", "epochs": 3}}


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


def test_same_key_same_job_body_replays_the_first_answer(
    app: Flask, client: FlaskClient, queued_messages: Callable[[], int]
) -> None:
    body = {"dataset_id": post_dataset(client), **JOB}
    first = client.post("/api/v1/jobs", json=body, headers=key("job-1"))
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    again = client.post("/api/v1/jobs", json=body, headers=key("job-1"))
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_data() == first.get_data()
    assert again.headers["Location"] == first.headers["Location"]
    assert first.headers["Location"] == f"/api/v1/jobs/{first.get_json()['id']}"
    assert count_rows(app, Job) == 1 and queued_messages() == 1
    # without a key, or with another key, the same body is a new job
    assert client.post("/api/v1/jobs", json=body).get_json()["id"] != first.get_json()["id"]
    other = client.post("/api/v1/jobs", json=body, headers=key("job-2"))
    assert other.get_json()["id"] != first.get_json()["id"]
    assert count_rows(app, Job) == 3 and queued_messages() == 3


def test_replay_is_the_first_answer_even_after_the_job_moved_on(client: FlaskClient) -> None:
    body = {"dataset_id": post_dataset(client), **JOB}
    first = client.post("/api/v1/jobs", json=body, headers=key("k"))
    client.post(f"/api/v1/jobs/{first.get_json()['id']}/cancel")
    again = client.post("/api/v1/jobs", json=body, headers=key("k"))
    assert again.get_json() == first.get_json() and again.get_json()["status"] == "queued"


def test_same_key_other_body_is_422(app: Flask, client: FlaskClient) -> None:
    dataset_id = post_dataset(client)
    r = client.post("/api/v1/jobs", json={"dataset_id": dataset_id, **JOB}, headers=key("k"))
    assert r.status_code == 202
    other = {"dataset_id": dataset_id, **JOB, "training": {"epochs": 4}}
    error = assert_error(client.post("/api/v1/jobs", json=other, headers=key("k")), 422)
    assert error["code"] == "idempotency_key_reused" and "Idempotency-Key" in error["fields"]
    # the same key on the other endpoint is another request too
    r = client.post("/api/v1/datasets", json=binary_dataset(), headers=key("k"))
    assert assert_error(r, 422)["code"] == "idempotency_key_reused"
    assert count_rows(app, Job) == 1


def test_keys_belong_to_one_owner(app: Flask, client: FlaskClient, bob: FlaskClient) -> None:
    mine = client.post("/api/v1/datasets", json=binary_dataset(), headers=key("shared"))
    theirs = bob.post("/api/v1/datasets", json=binary_dataset(), headers=key("shared"))
    assert mine.status_code == theirs.status_code == 201
    assert mine.get_json()["id"] != theirs.get_json()["id"]
    assert "Idempotent-Replayed" not in theirs.headers


def test_datasets_json_and_csv(app: Flask, client: FlaskClient) -> None:
    first = client.post("/api/v1/datasets", json=binary_dataset(), headers=key("d1"))
    again = client.post("/api/v1/datasets", json=binary_dataset(), headers=key("d1"))
    assert first.status_code == again.status_code == 201
    assert again.get_json() == first.get_json() and again.headers["Location"]

    def upload(boundary: str) -> Any:
        data = {"file": (io.BytesIO(b"a,b,y\n1,2,0\n3,4,1\n"), "d.csv"), "target": "y"}
        return client.post(
            "/api/v1/datasets",
            data=data,
            content_type=f"multipart/form-data; boundary={boundary}",
            headers=key("csv"),
        )

    one, two = upload("AaB03x"), upload("ZzY98w")  # another boundary, the same form
    assert one.status_code == two.status_code == 201, one.get_json()
    assert two.get_json()["id"] == one.get_json()["id"]
    assert count_rows(app, Dataset) == 2


def test_error_answers_are_not_kept(app: Flask, client: FlaskClient) -> None:
    dataset_id = post_dataset(client)
    bad = {"dataset_id": dataset_id, **JOB, "training": {"epochs": 0}}
    assert_error(client.post("/api/v1/jobs", json=bad, headers=key("fix-me")), 422)
    good = {"dataset_id": dataset_id, **JOB}
    assert client.post("/api/v1/jobs", json=good, headers=key("fix-me")).status_code == 202
    assert count_rows(app, IdempotentRequest) == 1


@pytest.mark.parametrize("value", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_malformed_key_is_422(app: Flask, client: FlaskClient, value: str) -> None:
    r = client.post("/api/v1/datasets", json=binary_dataset(), headers=key(value))
    assert "Idempotency-Key" in assert_error(r, 422)["fields"]
    assert count_rows(app, Dataset) == 0


@pytest.mark.parametrize("inline", [False, True], ids=["dataset_id", "inline"])
def test_twenty_concurrent_posts_make_one_job(
    app: Flask,
    client: FlaskClient,
    api_key: str,
    queued_messages: Callable[[], int],
    inline: bool,
) -> None:
    """20 threads through the WSGI app (each request its own app context and DB session)."""
    if inline:
        body: dict[str, Any] = {"dataset": binary_dataset(200), **JOB}
    else:
        body = {"dataset_id": post_dataset(client), **JOB}
    datasets_before = count_rows(app, Dataset)
    start = threading.Barrier(20)
    answers: list[Any] = [None] * 20

    def post(i: int) -> None:
        c = app.test_client()
        start.wait(timeout=30)
        answers[i] = c.post(
            "/api/v1/jobs",
            json=body,
            headers={"Authorization": f"Bearer {api_key}", **key("burst")},
        )

    threads = [threading.Thread(target=post, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(a is not None and a.status_code == 202 for a in answers), [
        (a.status_code, a.get_data()[:200]) for a in answers if a is not None
    ]
    assert len({a.get_json()["id"] for a in answers}) == 1
    assert sum("Idempotent-Replayed" not in a.headers for a in answers) == 1
    assert count_rows(app, Job) == 1 and queued_messages() == 1
    assert count_rows(app, Dataset) == datasets_before + (1 if inline else 0)


def test_purge_forgets_old_answers(app: Flask, client: FlaskClient) -> None:
    from service.idempotency import purge_expired

    client.post("/api/v1/datasets", json=binary_dataset(), headers=key("old"))
    with app.extensions["db_sessionmaker"]() as session:
        assert purge_expired(session, max_age_s=3600) == 0
        assert purge_expired(session, max_age_s=0) == 1
    again = client.post("/api/v1/datasets", json=binary_dataset(), headers=key("old"))
    assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers
    assert count_rows(app, Dataset) == 2
