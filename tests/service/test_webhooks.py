"""Webhooks on SQLite and PostgreSQL: the API (create, list, get, delete, deliveries), the
refused URLs, and deliveries against a real HTTP server on 127.0.0.1 (private addresses allowed
for these): the deliveries recorded in the transaction that ends a job (or a sweep) and
published after its commit, the signature, retries with backoff, the timeout, the address check
at delivery time, idempotent creation, the scan that catches what a lost worker or broker left.

Deliveries are sent by calling `service.webhook_delivery.deliver` as the Celery task does; the
task itself runs in tests/e2e/test_events.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from service import lifecycle, outbox, webhook_delivery, webhook_signing, webhook_urls
from service.config import Settings
from service.db import utcnow
from service.lifecycle import Claim
from service.tables import Job
from service.webhook_models import Webhook, WebhookDelivery
from tests.service.helpers import assert_error, post_dataset

pytestmark = pytest.mark.timeout(60)

URL = "/api/v1/webhooks"
SECRET = "s3cret-s3cret-s3cret"
SPEC = {
    "model": {"layers": [4, 1], "activation": "tanh"},
    "training": {"epochs": 3, "loss": "binary_cross_entropy"},
}
ALLOW = pytest.mark.app_config({"WEBHOOKS_ALLOW_PRIVATE": "true"})
REFUSE = pytest.mark.app_config({"WEBHOOKS_ALLOW_PRIVATE": "false"})


# -- fixtures -------------------------------------------------------------------------------------


def _empty(app: Flask) -> None:
    with app.extensions["db_engine"].begin() as conn:
        conn.execute(sa.delete(WebhookDelivery))
        conn.execute(sa.delete(Webhook))


@pytest.fixture(autouse=True)
def _no_webhooks(app: Flask) -> Iterator[None]:
    _empty(app)
    yield
    _empty(app)


class Receiver:
    """An HTTP server on 127.0.0.1 that records every request and answers from `answers`
    (status codes; the last one repeats), after `delay` seconds."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: list[int] = [200]
        self.delay = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                time.sleep(receiver.delay)
                status = (
                    receiver.answers.pop(0) if len(receiver.answers) > 1 else (receiver.answers[0])
                )
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/trainyard?x=1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def factory_of(app: Flask) -> sessionmaker[Session]:
    return app.extensions["db_sessionmaker"]  # type: ignore[no-any-return]


def settings_of(app: Flask, **changes: Any) -> Settings:
    return dataclasses.replace(Settings.from_flask_config(app.config), **changes)


def create(client: FlaskClient, url: str, events: list[str] | None = None, **extra: Any) -> Any:
    body = {"url": url, "events": events or ["job.succeeded", "job.failed"], **extra}
    return client.post(URL, json=body)


def finished_job(app: Flask, client: FlaskClient, end: str = "succeeded") -> str:
    """A job of the client's owner that ran and ended `end` (the worker's writes, by the
    lifecycle's functions)."""
    r = client.post("/api/v1/jobs", json={"dataset_id": post_dataset(client), **SPEC})
    assert r.status_code == 202, r.get_json()
    job_id = str(r.get_json()["id"])
    factory = factory_of(app)
    if end == "cancelled":
        assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
        return job_id
    attempt = lifecycle.claim(factory, job_id, dataclasses.replace(Settings(), stale_after=30))
    assert isinstance(attempt, Claim)
    lifecycle.record_epoch(factory, attempt, 1, 0.5, None)
    if end == "succeeded":
        with factory() as session:
            dataset_id = session.get(Job, job_id).dataset_id  # type: ignore[union-attr]
        model = {"dataset_id": dataset_id, "architecture": {}, "weights": b"", "graph_svg": "",
                 "metrics": {"loss": 0.5}}  # fmt: skip
        assert lifecycle.succeed(factory, attempt, results={"epoch": 1}, model=model) == (
            "succeeded"
        )
    else:
        lifecycle.fail(factory, attempt, "it broke")
    return job_id


def deliveries(app: Flask, **where: Any) -> list[WebhookDelivery]:
    with factory_of(app)() as session:
        query = sa.select(WebhookDelivery).filter_by(**where)
        return list(session.scalars(query.order_by(WebhookDelivery.attempt)))


def recorded(app: Flask, subject_id: str) -> list[str]:
    """The first attempts recorded about a job (or sweep): the transaction that ended it wrote
    them."""
    return [d.id for d in deliveries(app, subject_id=subject_id, attempt=1)]


def forget_deliveries(app: Flask) -> None:
    """Delete every delivery (the webhooks stay): as if the jobs had ended without them."""
    with app.extensions["db_engine"].begin() as conn:
        conn.execute(sa.delete(WebhookDelivery))


# -- the API --------------------------------------------------------------------------------------


@ALLOW
def test_create_list_get_delete(app: Flask, client: FlaskClient, bob: FlaskClient) -> None:
    r = create(
        client, "https://example.com/hook", ["job.succeeded", "sweep.finished"], secret=SECRET
    )
    assert r.status_code == 201, r.get_json()
    made = r.get_json()
    assert made["url"] == "https://example.com/hook"
    assert made["events"] == ["job.succeeded", "sweep.finished"]
    assert made["secret"] == SECRET
    assert r.headers["Location"].endswith(f"/api/v1/webhooks/{made['id']}")

    generated = create(client, "http://example.com/other").get_json()
    assert generated["secret"].startswith("whsec_") and len(generated["secret"]) > 40

    listed = client.get(URL).get_json()
    assert [w["id"] for w in listed["items"]] == [generated["id"], made["id"]]
    assert listed["pagination"]["total"] == 2
    assert all("secret" not in w for w in listed["items"])
    shown = client.get(f"{URL}/{made['id']}").get_json()
    assert shown == {k: v for k, v in made.items() if k != "secret"}
    page = client.get(f"{URL}/{made['id']}/deliveries").get_json()
    assert page["items"] == [] and page["pagination"]["total"] == 0

    # another owner sees none of it
    assert bob.get(URL).get_json()["items"] == []
    for path in (f"{URL}/{made['id']}", f"{URL}/{made['id']}/deliveries", f"{URL}/nope"):
        assert_error(bob.get(path), 404)
    assert_error(bob.delete(f"{URL}/{made['id']}"), 404)

    assert client.delete(f"{URL}/{made['id']}").status_code == 204
    assert_error(client.get(f"{URL}/{made['id']}"), 404)
    assert_error(client.delete(f"{URL}/{made['id']}"), 404)
    assert [w["id"] for w in client.get(URL).get_json()["items"]] == [generated["id"]]


@ALLOW
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.com/x", "events": ["job.failed"]}, "url"),
        ({"url": "file:///etc/passwd", "events": ["job.failed"]}, "url"),
        ({"url": "javascript:alert(1)", "events": ["job.failed"]}, "url"),
        ({"url": "http://user:pw@example.com/", "events": ["job.failed"]}, "url"),
        ({"url": "http:///nohost", "events": ["job.failed"]}, "url"),
        ({"url": "http://exa mple.com/", "events": ["job.failed"]}, "url"),
        ({"url": "http://example.com:99999/", "events": ["job.failed"]}, "url"),
        ({"url": "http://example.com/" + "a" * 2000, "events": ["job.failed"]}, "url"),
        ({"url": "http://example.com/", "events": []}, "events"),
        ({"url": "http://example.com/", "events": ["job.started"]}, "events.0"),
        ({"url": "http://example.com/"}, "events"),
        ({"events": ["job.failed"]}, "url"),
        ({"url": "http://example.com/", "events": ["job.failed"], "secret": "short"}, "secret"),
        ({"url": "http://example.com/", "events": ["job.failed"], "extra": 1}, "extra"),
    ],
)
def test_invalid_webhooks_are_422(
    app: Flask, client: FlaskClient, body: dict[str, Any], field: str
) -> None:
    assert_error(client.post(URL, json=body), 422, field)
    assert client.get(URL).get_json()["items"] == []


def test_content_type_and_malformed_json(client: FlaskClient) -> None:
    assert_error(client.post(URL, data="url=x"), 415)
    assert_error(client.post(URL, data="{", content_type="application/json"), 400)


@REFUSE
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://10.1.2.3/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[fe80::1]/",
        "http://[fd00::1]/",
        "http://224.0.0.1/",
        "https://2130706433/",  # 127.0.0.1 as a number
        "http://name-that-does-not-resolve.invalid/",
    ],
)
def test_private_and_unresolvable_hosts_are_refused(
    app: Flask, client: FlaskClient, url: str
) -> None:
    error = assert_error(create(client, url), 422, "url")
    assert "resolve" in error["fields"]["url"]


@REFUSE
def test_a_public_address_is_accepted_when_private_ones_are_refused(client: FlaskClient) -> None:
    assert create(client, "http://93.184.215.14/hook").status_code == 201  # a literal address


@pytest.mark.parametrize(
    ("setting", "database_url", "allowed"),
    [
        ("auto", "sqlite:///var/x.sqlite3", True),
        ("auto", "postgresql+psycopg://postgres@db/trainyard", False),
        ("true", "postgresql+psycopg://postgres@db/trainyard", True),
        ("1", "postgresql+psycopg://postgres@db/trainyard", True),
        ("false", "sqlite:///var/x.sqlite3", False),
        ("no", "sqlite:///var/x.sqlite3", False),
    ],
)
def test_allow_private_setting(setting: str, database_url: str, allowed: bool) -> None:
    settings = dataclasses.replace(
        Settings(), webhooks_allow_private=setting, database_url=database_url
    )
    assert webhook_urls.allow_private(settings) is allowed


def test_the_default_follows_the_mode(app: Flask, client: FlaskClient) -> None:
    """`auto`: the embedded mode (SQLite) may call 127.0.0.1; the distributed mode may not."""
    r = create(client, "http://127.0.0.1:9/hook")
    if app.config["DATABASE_URL"].startswith("sqlite"):
        assert r.status_code == 201, r.get_json()
    else:
        assert_error(r, 422, "url")


def test_the_api_is_documented(client: FlaskClient) -> None:
    paths = client.get("/api/v1/openapi.json").get_json()["paths"]
    assert set(paths["/api/v1/webhooks"]) == {"get", "post"}
    assert set(paths["/api/v1/webhooks/{webhook_id}"]) >= {"get", "delete"}
    assert "get" in paths["/api/v1/webhooks/{webhook_id}/deliveries"]


# -- creating deliveries ---------------------------------------------------------------------------


@ALLOW
def test_a_finished_job_makes_one_delivery_per_subscribed_webhook(
    app: Flask, client: FlaskClient, bob: FlaskClient, receiver: Receiver
) -> None:
    both = create(client, receiver.url, ["job.succeeded", "job.failed"]).get_json()
    only_failed = create(client, receiver.url, ["job.failed"]).get_json()
    create(bob, receiver.url, ["job.succeeded"])  # another owner's
    job_id = finished_job(app, client)
    factory = factory_of(app)

    assert len(recorded(app, job_id)) == 1  # by `lifecycle.succeed`, as it ended the job
    assert outbox.enqueue_for_job(factory, job_id, "succeeded") == []  # once only
    assert outbox.enqueue_for_job(factory, job_id, "failed") == []  # not its status
    (row,) = deliveries(app)
    assert (row.webhook_id, row.event, row.subject_id, row.attempt, row.status) == (
        both["id"], "job.succeeded", job_id, 1, "pending",
    )  # fmt: skip
    assert row.published_at is None
    event = json.loads(row.payload)
    assert event["type"] == "job.succeeded" and event["id"] == row.event_id
    job = event["data"]["job"]
    assert job["id"] == job_id and job["status"] == "succeeded" and job["model_id"]
    assert "loss_history" not in job
    expected = client.get(f"/api/v1/jobs/{job_id}").get_json()
    assert job == {k: v for k, v in expected.items() if not k.endswith("loss_history")}

    failed = finished_job(app, client, end="failed")
    assert len(recorded(app, failed)) == 2
    assert {d.webhook_id for d in deliveries(app, subject_id=failed)} == {
        both["id"],
        only_failed["id"],
    }
    # a webhook made after the job ended does not announce it
    cancelled = finished_job(app, client, end="cancelled")
    create(client, receiver.url, ["job.cancelled"])
    assert outbox.enqueue_for_job(factory, cancelled, "cancelled") == []


@ALLOW
def test_enqueue_inside_a_callers_session(
    app: Flask, client: FlaskClient, receiver: Receiver
) -> None:
    create(client, receiver.url)
    job_id = finished_job(app, client)
    forget_deliveries(app)
    with factory_of(app)() as session:
        made = outbox.enqueue_for_job(session, job_id, "succeeded")
        assert len(made) == 1
        session.rollback()  # the caller decides
    assert deliveries(app) == []


@ALLOW
def test_a_finished_sweep_announces_sweep_finished(
    app: Flask, client: FlaskClient, receiver: Receiver, queued_messages: Callable[[], int]
) -> None:
    hook = create(client, receiver.url, ["sweep.finished"], secret=SECRET).get_json()
    body = {
        "dataset_id": post_dataset(client),
        "base": SPEC,
        "parameters": {"training.learning_rate": {"values": [0.01, 0.1]}},
    }
    r = client.post("/api/v1/sweeps", json=body)
    assert r.status_code == 202, r.get_json()
    sweep_id = r.get_json()["id"]
    factory = factory_of(app)
    assert outbox.enqueue_for_sweep(factory, sweep_id) == []  # not finished
    # its trials cancelled and the sweep with them: `sweep.finished` recorded in the cancel's
    # transaction and published after it
    before = queued_messages()
    assert client.post(f"/api/v1/sweeps/{sweep_id}/cancel").status_code == 200
    assert client.get(f"/api/v1/sweeps/{sweep_id}").get_json()["status"] == "cancelled"
    (row,) = deliveries(app)
    assert (row.webhook_id, row.event, row.subject_id) == (hook["id"], "sweep.finished", sweep_id)
    assert row.published_at is not None and queued_messages() == before + 1
    done = outbox.scan(factory, app.extensions["celery"], settings_of(app))
    assert done == {"created": 0, "published": 0}  # nothing left for the safety net
    assert outbox.enqueue_for_sweep(factory, sweep_id) == []  # once only
    assert webhook_delivery.deliver(factory, row.id, settings_of(app)).status == "succeeded"
    (request,) = receiver.requests
    check_signature(request, SECRET)
    event = json.loads(request["body"])
    assert event["type"] == "sweep.finished"
    assert event["data"]["sweep"] == client.get(f"/api/v1/sweeps/{sweep_id}").get_json()


@ALLOW
def test_a_sweep_cancelled_through_the_api_publishes_its_trials_and_its_end(
    app: Flask, client: FlaskClient, receiver: Receiver, queued_messages: Callable[[], int]
) -> None:
    create(client, receiver.url, ["job.cancelled", "sweep.finished"])
    body = {"dataset_id": post_dataset(client), "base": SPEC, "max_parallel": 1,
            "parameters": {"training.learning_rate": {"values": [0.01, 0.1, 0.2]}}}  # fmt: skip
    sweep_id = client.post("/api/v1/sweeps", json=body).get_json()["id"]
    before = queued_messages()
    assert client.post(f"/api/v1/sweeps/{sweep_id}/cancel").status_code == 200
    rows = deliveries(app)
    assert sorted(r.event for r in rows) == ["job.cancelled"] * 3 + ["sweep.finished"]
    assert all(r.published_at is not None for r in rows)
    assert queued_messages() == before + 4
    assert outbox.scan(factory_of(app), app.extensions["celery"], settings_of(app)) == {
        "created": 0,
        "published": 0,
    }


@ALLOW
def test_a_sweep_ended_by_its_last_trial_records_and_publishes_sweep_finished(
    app: Flask, client: FlaskClient, receiver: Receiver, queued_messages: Callable[[], int]
) -> None:
    """The last trial ends (its `job.succeeded` recorded with it); the advance that follows
    ends the sweep, records `sweep.finished` in that transaction and publishes it after."""
    from service import sweeps
    from workers.webhooks import announce

    create(client, receiver.url, ["job.succeeded", "sweep.finished"])
    body = {"dataset_id": post_dataset(client), "base": SPEC,
            "parameters": {"training.learning_rate": {"values": [0.1]}}}  # fmt: skip
    sweep_id = client.post("/api/v1/sweeps", json=body).get_json()["id"]
    factory, celery = factory_of(app), app.extensions["celery"]
    (trial,) = [
        j["id"] for j in client.get(f"/api/v1/jobs?sweep_id={sweep_id}").get_json()["items"]
    ]
    attempt = lifecycle.claim(factory, trial, dataclasses.replace(Settings(), stale_after=30))
    assert isinstance(attempt, Claim)
    with factory() as session:
        dataset_id = session.get(Job, trial).dataset_id  # type: ignore[union-attr]
    model = {"dataset_id": dataset_id, "architecture": {}, "weights": b"", "graph_svg": "",
             "metrics": {"loss": 0.5}}  # fmt: skip
    assert lifecycle.succeed(factory, attempt, results={"epoch": 1}, model=model) == "succeeded"
    assert [(d.event, d.published_at) for d in deliveries(app)] == [("job.succeeded", None)]

    before = queued_messages()
    assert sweeps.advance(factory, celery, sweep_id, settings_of(app).limits) == []
    (ended,) = deliveries(app, event="sweep.finished")
    assert ended.subject_id == sweep_id and ended.published_at is not None
    assert queued_messages() == before + 1
    assert json.loads(ended.payload)["data"]["sweep"]["status"] == "succeeded"
    # the trial's worker then publishes the job's (the sweep's is published already)
    (job_delivery,) = deliveries(app, event="job.succeeded")
    assert announce(factory, celery, trial) == [job_delivery.id]
    assert outbox.scan(factory, celery, settings_of(app)) == {"created": 0, "published": 0}


@ALLOW
def test_the_worker_that_ended_a_job_announces_it_at_once(
    app: Flask, client: FlaskClient, receiver: Receiver, queued_messages: Callable[[], int]
) -> None:
    from workers.webhooks import announce

    create(client, receiver.url, ["job.succeeded"])
    celery = app.extensions["celery"]
    running = client.post("/api/v1/jobs", json={"dataset_id": post_dataset(client), **SPEC})
    assert announce(factory_of(app), celery, running.get_json()["id"]) == []  # not ended
    job_id = finished_job(app, client)
    (recorded_with_it,) = deliveries(app)  # by `lifecycle.succeed`, in its transaction
    assert recorded_with_it.published_at is None
    before = queued_messages()
    (made,) = announce(factory_of(app), celery, job_id)  # publishes it
    assert queued_messages() == before + 1
    (row,) = deliveries(app)
    assert row.id == made == recorded_with_it.id and row.published_at is not None
    assert announce(factory_of(app), celery, job_id) == []  # once
    assert outbox.scan(factory_of(app), celery, settings_of(app)) == {
        "created": 0,
        "published": 0,
    }


@ALLOW
def test_a_job_cancelled_through_the_api_is_announced_by_the_cancel(
    app: Flask, client: FlaskClient, receiver: Receiver, queued_messages: Callable[[], int]
) -> None:
    """No worker ever runs a queued job that is cancelled: the cancel records its `job.cancelled`
    deliveries in its own transaction and publishes them once it is committed; no scan needed."""
    hook = create(client, receiver.url, ["job.cancelled"], secret=SECRET).get_json()
    r = client.post("/api/v1/jobs", json={"dataset_id": post_dataset(client), **SPEC})
    job_id = r.get_json()["id"]
    before = queued_messages()
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
    (row,) = deliveries(app)
    assert (row.webhook_id, row.event, row.subject_id, row.attempt, row.status) == (
        hook["id"], "job.cancelled", job_id, 1, "pending",
    )  # fmt: skip
    assert row.published_at is not None and queued_messages() == before + 1
    assert outbox.scan(factory_of(app), app.extensions["celery"], settings_of(app)) == {
        "created": 0,
        "published": 0,
    }
    # the message sends it: the job as the cancel left it
    assert webhook_delivery.deliver(factory_of(app), row.id, settings_of(app)).status == (
        "succeeded"
    )
    (request,) = receiver.requests
    check_signature(request, SECRET)
    event = json.loads(request["body"])
    assert event["type"] == "job.cancelled"
    assert event["data"]["job"]["status"] == "cancelled" and event["data"]["job"]["id"] == job_id
    # a second cancel is a 409 and records nothing
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 409
    assert len(deliveries(app)) == 1


@ALLOW
def test_a_running_job_cancelled_through_the_api_is_announced_when_it_stops(
    app: Flask, client: FlaskClient, receiver: Receiver
) -> None:
    create(client, receiver.url, ["job.cancelled"])
    r = client.post("/api/v1/jobs", json={"dataset_id": post_dataset(client), **SPEC})
    job_id = r.get_json()["id"]
    factory = factory_of(app)
    attempt = lifecycle.claim(factory, job_id, dataclasses.replace(Settings(), stale_after=30))
    assert isinstance(attempt, Claim)
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").get_json()["cancel_requested"] is True
    assert deliveries(app) == []  # asked to stop: it has not ended
    assert lifecycle.record_epoch(factory, attempt, 1, 0.5, None) is True
    assert lifecycle.cancel_attempt(factory, attempt) == "cancelled"
    (row,) = deliveries(app)  # recorded as the attempt ended it; its worker announces it
    assert (row.event, row.subject_id, row.published_at) == ("job.cancelled", job_id, None)


@pytest.mark.app_config(
    {"WEBHOOKS_ALLOW_PRIVATE": "true", "CELERY_BROKER_URL": "redis://127.0.0.1:1/0"}
)
def test_a_cancel_with_the_broker_down_leaves_its_delivery_to_the_scan(
    app: Flask, client: FlaskClient, receiver: Receiver
) -> None:
    """The cancel is committed whatever happens to the publish: its delivery stays recorded,
    unpublished, and the scan publishes it once the broker is back."""
    create(client, receiver.url, ["job.cancelled"])
    r = client.post("/api/v1/jobs", json={"dataset_id": post_dataset(client), **SPEC})
    job_id = r.get_json()["id"]
    started = time.monotonic()
    r = client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.get_json()["status"] == "cancelled"
    assert time.monotonic() - started < 5
    (row,) = deliveries(app)
    assert (row.event, row.subject_id, row.published_at) == ("job.cancelled", job_id, None)


# -- sending --------------------------------------------------------------------------------------


def check_signature(request: dict[str, Any], secret: str) -> None:
    headers = request["headers"]
    timestamp = headers["X-Trainyard-Timestamp"]
    assert abs(int(timestamp) - time.time()) < 60
    expected = hmac.new(
        secret.encode(), timestamp.encode() + b"." + request["body"], hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(headers["X-Trainyard-Signature"], f"sha256={expected}")


@ALLOW
def test_a_delivery_is_signed_and_recorded(
    app: Flask, client: FlaskClient, receiver: Receiver
) -> None:
    hook = create(client, receiver.url, secret=SECRET).get_json()
    job_id = finished_job(app, client)
    (delivery_id,) = recorded(app, job_id)

    outcome = webhook_delivery.deliver(factory_of(app), delivery_id, settings_of(app))
    assert outcome == webhook_delivery.DeliveryOutcome("succeeded")
    (request,) = receiver.requests
    assert request["path"] == "/hooks/trainyard?x=1"
    headers = request["headers"]
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Trainyard-Event"] == "job.succeeded"
    assert headers["X-Trainyard-Attempt"] == "1"
    assert headers["Host"] == receiver.url.split("/")[2]
    check_signature(request, SECRET)
    event = json.loads(request["body"])
    assert event["type"] == "job.succeeded" and event["data"]["job"]["id"] == job_id
    assert headers["X-Trainyard-Event-Id"] == event["id"]

    # a second message for the same attempt sends nothing
    assert (
        webhook_delivery.deliver(factory_of(app), delivery_id, settings_of(app)).status == "skipped"
    )
    assert len(receiver.requests) == 1

    page = client.get(f"{URL}/{hook['id']}/deliveries").get_json()
    (shown,) = page["items"]
    assert shown["status"] == "succeeded" and shown["status_code"] == 200
    assert shown["error"] is None and shown["attempt"] == 1 and shown["subject_id"] == job_id
    assert 0 <= shown["duration_ms"] < 5000 and shown["sent_at"]


@ALLOW
def test_failures_are_retried_with_backoff_until_the_limit(
    app: Flask, client: FlaskClient, receiver: Receiver
) -> None:
    hook = create(client, receiver.url, secret=SECRET).get_json()
    job_id = finished_job(app, client, end="failed")
    (first,) = recorded(app, job_id)
    receiver.answers = [500, 302, 200]
    settings = settings_of(app, webhook_retry_base=0.4, webhook_max_attempts=5)

    one = webhook_delivery.deliver(factory_of(app), first, settings)
    assert one.status == "failed" and one.next_id is not None
    assert one.countdown == pytest.approx(0.4)
    # not due yet: a message that comes early sends nothing, and says when to come back
    early = webhook_delivery.deliver(factory_of(app), one.next_id, settings)
    assert (early.status, early.next_id) == ("early", one.next_id)
    assert 0.1 < early.countdown <= 0.4
    time.sleep(early.countdown + 0.05)
    two = webhook_delivery.deliver(factory_of(app), one.next_id, settings)
    assert two.status == "failed" and two.countdown == pytest.approx(0.8)
    time.sleep(0.85)
    three = webhook_delivery.deliver(factory_of(app), two.next_id, settings)  # type: ignore[arg-type]
    assert three == webhook_delivery.DeliveryOutcome("succeeded")

    assert len(receiver.requests) == 3
    for request in receiver.requests:
        check_signature(request, SECRET)
    ids = {r["headers"]["X-Trainyard-Event-Id"] for r in receiver.requests}
    assert len(ids) == 1  # one event, three attempts
    assert [r["headers"]["X-Trainyard-Attempt"] for r in receiver.requests] == ["1", "2", "3"]
    assert len({r["body"] for r in receiver.requests}) == 1

    items = client.get(f"{URL}/{hook['id']}/deliveries").get_json()["items"]
    assert [(d["attempt"], d["status"], d["status_code"]) for d in items] == [
        (3, "succeeded", 200),
        (2, "failed", 302),
        (1, "failed", 500),
    ]
    assert "redirects are not followed" in items[1]["error"]
    assert items[2]["error"] == "answered HTTP 500"


@ALLOW
def test_the_last_attempt_records_no_next_one(
    app: Flask, client: FlaskClient, receiver: Receiver
) -> None:
    create(client, receiver.url)
    job_id = finished_job(app, client)
    (first,) = recorded(app, job_id)
    receiver.answers = [503]
    settings = settings_of(app, webhook_retry_base=0.01, webhook_max_attempts=2)
    one = webhook_delivery.deliver(factory_of(app), first, settings)
    time.sleep(0.05)
    two = webhook_delivery.deliver(factory_of(app), one.next_id, settings)  # type: ignore[arg-type]
    assert two == webhook_delivery.DeliveryOutcome("failed")
    assert [(d.attempt, d.status) for d in deliveries(app)] == [(1, "failed"), (2, "failed")]


def test_backoff_doubles_up_to_an_hour() -> None:
    assert [webhook_delivery.backoff(n, 10.0) for n in (1, 2, 3, 4)] == [10.0, 20.0, 40.0, 80.0]
    assert webhook_delivery.backoff(30, 10.0) == 3600.0


@ALLOW
def test_a_receiver_that_hangs_costs_one_timeout(
    app: Flask, client: FlaskClient, receiver: Receiver
) -> None:
    create(client, receiver.url)
    job_id = finished_job(app, client)
    (first,) = recorded(app, job_id)
    receiver.delay = 3.0
    started = time.monotonic()
    outcome = webhook_delivery.deliver(
        factory_of(app), first, settings_of(app, webhook_timeout=0.5)
    )
    assert time.monotonic() - started < 2.0
    assert outcome.status == "failed" and outcome.next_id is not None
    (row, _next) = deliveries(app)
    assert row.status == "failed" and row.status_code is None
    assert "0.5 s" in (row.error or "") and (row.duration_ms or 0) < 2000


@ALLOW
def test_a_closed_port_fails_the_attempt(app: Flask, client: FlaskClient) -> None:
    create(client, "http://127.0.0.1:9/hook")  # discard: nothing listens
    job_id = finished_job(app, client)
    (first,) = recorded(app, job_id)
    assert webhook_delivery.deliver(factory_of(app), first, settings_of(app)).status == "failed"
    assert "refused" in (deliveries(app)[0].error or "").lower()


@ALLOW
def test_the_address_is_checked_again_at_delivery(
    app: Flask, client: FlaskClient, receiver: Receiver
) -> None:
    """A URL accepted once (here: while private addresses were allowed; in life, a name whose
    DNS answer changed) is checked again when it is called: no request reaches the address."""
    create(client, receiver.url.replace("127.0.0.1", "localhost"))
    job_id = finished_job(app, client)
    (first,) = recorded(app, job_id)
    strict = settings_of(app, webhooks_allow_private="false", webhook_retry_base=0.01)
    outcome = webhook_delivery.deliver(factory_of(app), first, strict)
    assert outcome.status == "failed"
    assert receiver.requests == []
    error = deliveries(app)[0].error or ""
    assert error.startswith("URL refused") and "loopback" in error


# -- the scan: what a lost worker or broker left ---------------------------------------------------


@ALLOW
def test_scan_records_and_publishes_what_is_missing(
    app: Flask, client: FlaskClient, receiver: Receiver, queued_messages: Callable[[], int]
) -> None:
    create(client, receiver.url, ["job.succeeded", "job.failed", "job.cancelled"])
    done = [finished_job(app, client), finished_job(app, client, end="failed")]
    cancelled = finished_job(app, client, end="cancelled")
    celery = app.extensions["celery"]
    settings = settings_of(app)
    # recorded as they ended; the API published its cancel's, while the other two were never
    # announced (their worker was lost after the commit, or the broker was down)
    assert {r.subject_id: r.published_at is None for r in deliveries(app)} == {
        done[0]: True, done[1]: True, cancelled: False,
    }  # fmt: skip
    before = queued_messages()
    assert outbox.scan(factory_of(app), celery, settings) == {"created": 0, "published": 2}
    assert queued_messages() - before == 2
    assert all(r.published_at is not None for r in deliveries(app))
    # a second scan finds nothing to do
    assert outbox.scan(factory_of(app), celery, settings) == {"created": 0, "published": 0}

    # jobs that ended without their deliveries (ended before they were recorded with the job):
    # recorded and published
    forget_deliveries(app)
    before = queued_messages()
    assert outbox.scan(factory_of(app), celery, settings) == {"created": 3, "published": 3}
    assert queued_messages() - before == 3
    rows = deliveries(app)
    assert {r.subject_id for r in rows} == {*done, cancelled}
    assert all(r.published_at is not None for r in rows)
    assert outbox.scan(factory_of(app), celery, settings) == {"created": 0, "published": 0}

    # a message lost (broker restart), long ago: published again
    with factory_of(app)() as session:
        session.execute(
            sa.update(WebhookDelivery).values(
                published_at=utcnow() - timedelta(hours=1),
                next_attempt_at=utcnow() - timedelta(hours=1),
            )
        )
        session.commit()
    assert outbox.scan(factory_of(app), celery, settings)["published"] == 3


@ALLOW
def test_a_worker_lost_mid_delivery_leaves_it_for_another(
    app: Flask, client: FlaskClient, receiver: Receiver
) -> None:
    """The attempt was recorded and claimed, then its worker died: once the lease expires the
    scan publishes it again and a delivery sends it (the receiver may see it twice; the event
    id lets it tell)."""
    create(client, receiver.url)
    job_id = finished_job(app, client)
    (first,) = recorded(app, job_id)
    long_ago = utcnow() - timedelta(hours=1)
    with factory_of(app)() as session:
        session.execute(
            sa.update(WebhookDelivery).values(claimed_at=utcnow(), published_at=long_ago)
        )
        session.commit()
    settings = settings_of(app)
    # claimed a moment ago: its worker may be sending it right now
    assert webhook_delivery.deliver(factory_of(app), first, settings).status == "skipped"
    assert outbox.scan(factory_of(app), app.extensions["celery"], settings)["published"] == 0
    with factory_of(app)() as session:
        session.execute(
            sa.update(WebhookDelivery).values(claimed_at=long_ago, next_attempt_at=long_ago)
        )
        session.commit()
    assert outbox.scan(factory_of(app), app.extensions["celery"], settings)["published"] == 1
    assert webhook_delivery.deliver(factory_of(app), first, settings).status == "succeeded"
    assert len(receiver.requests) == 1


def set_due(app: Flask, delivery_id: str, seconds_ago: float, **values: Any) -> None:
    with factory_of(app)() as session:
        session.execute(
            sa.update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .values(next_attempt_at=utcnow() - timedelta(seconds=seconds_ago), **values)
        )
        session.commit()


@ALLOW
def test_attempts_waiting_behind_busy_workers_are_sent_by_a_main_process(
    app: Flask, client: FlaskClient, receiver: Receiver
) -> None:
    """Every worker is training: the message of a due attempt waits in the queue. A worker's
    main process (`WaitingSender`, driven by the maintenance loop) sends what has waited more
    than `WAITING_AFTER_S`, once, and the queued message then sends nothing twice."""
    from workers.webhooks import WaitingSender

    create(client, receiver.url, secret=SECRET)
    fresh, waited, held, lost = (recorded(app, finished_job(app, client))[0] for _ in range(4))
    settings = settings_of(app)
    slack = webhook_delivery.WAITING_AFTER_S
    set_due(app, fresh, slack / 2)  # a free worker is about to take it
    set_due(app, waited, slack + 1)
    set_due(app, held, slack + 1, claimed_at=utcnow())  # being sent right now
    set_due(app, lost, slack + 1, claimed_at=utcnow() - timedelta(hours=1))  # its worker died
    assert sorted(webhook_delivery.waiting(factory_of(app), settings)) == sorted([waited, lost])

    sender = WaitingSender(factory_of(app), app.extensions["celery"], settings)
    try:
        assert sorted(sender.send_waiting()) == sorted([waited, lost])
        deadline = time.monotonic() + 10
        while not sender.idle() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sender.idle()
        sent = {json.loads(r["body"])["id"] for r in receiver.requests}
        assert len(receiver.requests) == 2 and len(sent) == 2
        for request in receiver.requests:
            check_signature(request, SECRET)
        status = {d.id: d.status for d in deliveries(app)}
        assert status[waited] == status[lost] == "succeeded"
        assert status[fresh] == status[held] == "pending"
        assert sender.send_waiting() == []  # nothing waits any more
        # the queued message, when a worker finally takes it: sent already
        assert webhook_delivery.deliver(factory_of(app), waited, settings).status == "skipped"
        assert len(receiver.requests) == 2
    finally:
        sender.close()


@ALLOW
def test_deleting_a_webhook_drops_its_pending_deliveries(
    app: Flask, client: FlaskClient, receiver: Receiver
) -> None:
    hook = create(client, receiver.url).get_json()
    job_id = finished_job(app, client)
    (first,) = recorded(app, job_id)
    assert client.delete(f"{URL}/{hook['id']}").status_code == 204
    assert deliveries(app) == []
    assert webhook_delivery.deliver(factory_of(app), first, settings_of(app)).status == "skipped"
    assert receiver.requests == []


def test_sign_matches_the_documented_formula() -> None:
    body = b'{"type":"job.succeeded"}'
    mac = hmac.new(b"key", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert webhook_signing.sign("key", "1700000000", body) == f"sha256={mac}"
