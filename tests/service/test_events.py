"""`GET /api/v1/jobs/{id}/events` through the Flask test client, on SQLite and PostgreSQL.

The worker's writes are simulated with `service.lifecycle`'s own functions (claim, record_epoch,
succeed, fail), from another thread while a stream is open, so what a stream sends comes from
the store's state changes as in production: PostgreSQL's NOTIFY triggers wake the stream (the
safety-net interval is set far above the test's waits), SQLite's per-process poll does.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from service import lifecycle
from service.config import Settings
from service.events import ChangeHub, job_stream
from service.lifecycle import Claim
from tests.service.helpers import assert_error, post_dataset

pytestmark = [
    pytest.mark.timeout(60),
    # notifications (PostgreSQL) or a fast poll (SQLite) must carry the events: the safety-net
    # read comes far too late for these tests' waits
    pytest.mark.app_config(
        {"EVENTS_POLL_INTERVAL": 0.05, "EVENTS_SAFETY_INTERVAL": 60.0, "EVENTS_KEEPALIVE": 60.0}
    ),
]

SPEC = {
    "model": {"layers": [4, 1], "activation": "tanh"},
    "training": {"epochs": 5, "loss": "binary_cross_entropy"},
}
SETTINGS = dataclasses.replace(Settings(), stale_after=30.0)


@pytest.fixture(autouse=True)
def _close_hub(app: Flask) -> Iterator[None]:
    yield
    hub = app.extensions.get("event_hub")
    if hub is not None:
        hub.close()


def factory_of(app: Flask) -> sessionmaker[Session]:
    return app.extensions["db_sessionmaker"]  # type: ignore[no-any-return]


def submit(client: FlaskClient) -> str:
    r = client.post("/api/v1/jobs", json={"dataset_id": post_dataset(client), **SPEC})
    assert r.status_code == 202, r.get_json()
    return str(r.get_json()["id"])


def claim(app: Flask, job_id: str) -> Claim:
    claimed = lifecycle.claim(factory_of(app), job_id, SETTINGS)
    assert isinstance(claimed, Claim)
    return claimed


def succeed(app: Flask, attempt: Claim) -> None:
    with factory_of(app)() as session:
        from service.tables import Job

        dataset_id = session.get(Job, attempt.job_id).dataset_id  # type: ignore[union-attr]
    model = {"dataset_id": dataset_id, "architecture": {"layers": [4, 1]}, "weights": b"npz",
             "graph_svg": "<svg/>", "metrics": {"loss": 0.1}}  # fmt: skip
    outcome = lifecycle.succeed(
        factory_of(app), attempt, results={"epoch": 5, "metrics": {"loss": 0.1}}, model=model
    )
    assert outcome == "succeeded"


def trained(app: Flask, client: FlaskClient, epochs: int = 5, end: str = "succeeded") -> str:
    """A job that ran `epochs` epochs and ended `end`."""
    job_id = submit(client)
    attempt = claim(app, job_id)
    for epoch in range(1, epochs + 1):
        lifecycle.record_epoch(factory_of(app), attempt, epoch, 1.0 / epoch, 2.0 / epoch)
    if end == "succeeded":
        succeed(app, attempt)
    else:
        lifecycle.fail(factory_of(app), attempt, "it broke")
    return job_id


class Stream:
    """A streamed response read event by event (blocking: the test client runs the stream's
    generator in this thread)."""

    def __init__(self, client: FlaskClient, job_id: str, **headers: str) -> None:
        self.response = client.get(f"/api/v1/jobs/{job_id}/events", headers=headers, buffered=False)
        assert self.response.status_code == 200, self.response.get_data(as_text=True)
        assert self.response.mimetype == "text/event-stream"
        self._chunks = iter(self.response.response)
        self._buffer = ""
        self.ended = False

    def next(self) -> dict[str, Any] | None:
        """The next event or comment (`{"event", "data", "id"}` or `{"comment"}`), or None once
        the stream ended."""
        while "\n\n" not in self._buffer:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self.ended = True
                return None
            self._buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        block, self._buffer = self._buffer.split("\n\n", 1)
        out: dict[str, Any] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                out["comment"] = line[1:].strip()
            else:
                name, _, value = line.partition(": ")
                out[name] = json.loads(value) if name == "data" else value
        return out

    def events(self, until: str | None = None) -> list[dict[str, Any]]:
        """Events (comments and `retry:` skipped) until the stream ends, or until one of type
        `until`'s status... until a status event with status `until`."""
        got = []
        while (item := self.next()) is not None:
            if "event" not in item:
                continue
            got.append(item)
            if until is not None and item["event"] == "status" and item["data"]["status"] == until:
                break
        return got

    def close(self) -> None:
        self.response.close()


def summary(events: list[dict[str, Any]]) -> list[Any]:
    return [e["data"]["status"] if e["event"] == "status" else int(e["id"]) for e in events]


def test_a_finished_job_replays_and_ends(app: Flask, client: FlaskClient) -> None:
    job_id = trained(app, client)
    stream = Stream(client, job_id)
    events = stream.events()
    assert stream.ended
    assert summary(events) == [1, 2, 3, 4, 5, "succeeded"]
    assert events[0]["data"] == {"epoch": 1, "loss": 1.0, "val_loss": 2.0}
    assert events[0]["id"] == "1" and events[4]["data"]["loss"] == pytest.approx(0.2)
    # the status event carries the job as GET /jobs/{id} gives it
    assert events[-1]["data"] == client.get(f"/api/v1/jobs/{job_id}").get_json()
    assert events[-1]["data"]["model_id"] is not None
    assert app.extensions["event_hub"].streams() == 0


def test_a_failed_job_replays_its_partial_history(app: Flask, client: FlaskClient) -> None:
    job_id = trained(app, client, epochs=2, end="failed")
    events = Stream(client, job_id).events()
    assert summary(events) == [1, 2, "failed"]
    assert events[-1]["data"]["error"] == "it broke"


def test_last_event_id_resumes_after_that_epoch(app: Flask, client: FlaskClient) -> None:
    job_id = trained(app, client)
    assert summary(Stream(client, job_id, **{"Last-Event-ID": "3"}).events()) == [
        4,
        5,
        "succeeded",
    ]
    assert summary(Stream(client, job_id, **{"Last-Event-ID": "5"}).events()) == ["succeeded"]
    r = client.get(f"/api/v1/jobs/{job_id}/events?last_event_id=4", buffered=False)
    assert r.status_code == 200
    assert "id: 5\n" in r.get_data(as_text=True) and "id: 4\n" not in r.get_data(as_text=True)


@pytest.mark.parametrize("value", ["x", "-1", "1.5", "99999999999"])
def test_a_malformed_last_event_id_is_422(client: FlaskClient, value: str) -> None:
    job_id = submit(client)
    r = client.get(f"/api/v1/jobs/{job_id}/events", headers={"Last-Event-ID": value})
    assert_error(r, 422, "Last-Event-ID")


def test_another_owners_job_is_404_before_streaming(
    app: Flask, client: FlaskClient, bob: FlaskClient, anonymous: FlaskClient
) -> None:
    job_id = trained(app, client, epochs=1)
    r = bob.get(f"/api/v1/jobs/{job_id}/events", buffered=False)
    assert_error(r, 404)
    assert_error(client.get("/api/v1/jobs/" + "0" * 32 + "/events"), 404)
    assert_error(client.get("/api/v1/jobs/nope/events"), 404)
    assert_error(anonymous.get(f"/api/v1/jobs/{job_id}/events"), 401)
    assert app.extensions.get("event_hub") is None or app.extensions["event_hub"].streams() == 0


def test_a_job_that_finishes_while_streaming(app: Flask, client: FlaskClient) -> None:
    """A queued job: the stream sends its status, then (written by "the worker" in another
    thread) running, each epoch once and in order as it is recorded, and succeeded; then it
    ends. Each step waits until the stream has sent the one before, so the events must have
    come from the store's notifications or the poll."""
    job_id = submit(client)
    stream = Stream(client, job_id)
    first = stream.events(until="queued")
    assert summary(first) == ["queued"]
    seen: list[Any] = []
    progress = threading.Condition()
    errors: list[BaseException] = []

    def wait_for(item: Any) -> None:
        with progress:
            assert progress.wait_for(lambda: item in seen, timeout=10), (item, seen)

    def worker() -> None:
        try:
            attempt = claim(app, job_id)
            wait_for("running")
            for epoch in range(1, 6):
                lifecycle.record_epoch(factory_of(app), attempt, epoch, 1.0 / epoch, None)
                wait_for(epoch)
            succeed(app, attempt)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    started = time.monotonic()
    events = []
    while (item := stream.next()) is not None:
        if "event" not in item:
            continue
        events.append(item)
        with progress:
            seen.append(summary([item])[0])
            progress.notify_all()
    thread.join(timeout=20)
    assert not errors, errors
    assert summary(events) == ["running", 1, 2, 3, 4, 5, "succeeded"]
    assert events[0]["data"]["attempts"] == 1
    assert events[-1]["data"]["progress"] == {"epoch": 5, "epochs": 5, "loss": 0.2}
    assert time.monotonic() - started < 15  # never the 60 s safety net
    assert app.extensions["event_hub"].streams() == 0


def test_reconnecting_with_last_event_id_sends_nothing_twice(
    app: Flask, client: FlaskClient
) -> None:
    job_id = submit(client)
    attempt = claim(app, job_id)
    for epoch in (1, 2, 3):
        lifecycle.record_epoch(factory_of(app), attempt, epoch, 0.5, None)
    first = Stream(client, job_id)
    got = [first.next() for _ in range(5)]  # retry, status, epochs 1..3
    assert summary([g for g in got if g and "event" in g]) == ["running", 1, 2, 3]
    first.close()
    assert app.extensions["event_hub"].streams() == 0  # a closed stream leaves the hub

    lifecycle.record_epoch(factory_of(app), attempt, 4, 0.4, None)
    second = Stream(client, job_id, **{"Last-Event-ID": "3"})
    assert summary(second.events(until="running")) == ["running"]
    threading.Timer(0.3, lambda: succeed(app, attempt)).start()
    assert summary(second.events()) == [4, "succeeded"]


def test_a_new_attempt_restarts_the_epochs(app: Flask, client: FlaskClient) -> None:
    """A lost worker's job taken over by a new attempt starts from epoch 1 again: the stream
    sends the new attempt's status first, then its epochs."""
    job_id = submit(client)
    first = claim(app, job_id)
    lifecycle.record_epoch(factory_of(app), first, 1, 0.9, None)
    lifecycle.record_epoch(factory_of(app), first, 2, 0.8, None)
    stream = Stream(client, job_id)
    assert summary(stream.events(until="running")) == ["running"]
    assert [stream.next()["id"], stream.next()["id"]] == ["1", "2"]  # type: ignore[index]
    # the reaper hands the job back, a new delivery claims it (attempt 2)
    from datetime import timedelta

    import sqlalchemy as sa

    from service.db import utcnow
    from service.tables import Job

    with factory_of(app)() as session:
        session.execute(
            sa.update(Job)
            .where(Job.id == job_id)
            .values(heartbeat_at=utcnow() - timedelta(minutes=5))
        )
        session.commit()
    second = claim(app, job_id)
    assert second.attempt == 2
    lifecycle.record_epoch(factory_of(app), second, 1, 0.7, None)
    events = stream.events(until="running")
    assert events[-1]["data"]["attempts"] == 2
    succeed(app, second)
    rest = stream.events()
    assert summary(rest)[-1] == "succeeded" and summary(rest)[:1] == [1]


def test_keep_alive_comments(app: Flask, client: FlaskClient) -> None:
    job_id = submit(client)
    settings = dataclasses.replace(
        Settings.from_flask_config(app.config), events_keepalive=0.1, events_safety_interval=0.05
    )
    hub = ChangeHub(app.extensions["db_engine"], settings)
    try:
        stream = job_stream(factory_of(app), hub, job_id, settings)
        assert next(stream).startswith("retry: ")
        assert "event: status" in next(stream)
        assert next(stream) == ": keep-alive\n\n"
        assert next(stream) == ": keep-alive\n\n"
        stream.close()
        assert hub.streams() == 0
    finally:
        hub.close()


def test_the_safety_net_read_delivers_without_any_wake_up(app: Flask, client: FlaskClient) -> None:
    """A hub whose thread never runs (no notification, no poll): the stream still gets every
    event, `events_safety_interval` later."""
    job_id = submit(client)
    settings = dataclasses.replace(
        Settings.from_flask_config(app.config), events_safety_interval=0.2
    )
    hub = ChangeHub(app.extensions["db_engine"], settings)
    hub.close()  # stopped before any stream: no listener, no poller
    stream = job_stream(factory_of(app), hub, job_id, settings)
    assert next(stream).startswith("retry: ")
    assert '"status":"queued"' in next(stream)
    attempt = claim(app, job_id)
    lifecycle.record_epoch(factory_of(app), attempt, 1, 0.5, None)
    succeed(app, attempt)
    started = time.monotonic()
    rest = "".join(stream)
    # running came and went between two reads: the final status is never skipped
    assert '"status":"running"' not in rest
    assert rest.index("id: 1\n") < rest.index('"status":"succeeded"')
    assert time.monotonic() - started < 5


def test_a_server_being_stopped_ends_its_open_streams(app: Flask, client: FlaskClient) -> None:
    """`drain_streams` (SIGTERM's hook in the server) ends a running job's open stream at its
    next wait, and a stream opened afterwards after its first read; a client resumes with
    `Last-Event-ID` elsewhere and misses nothing."""
    from service.events import drain_streams

    job_id = submit(client)
    attempt = claim(app, job_id)
    lifecycle.record_epoch(factory_of(app), attempt, 1, 0.5, None)
    stream = Stream(client, job_id)
    assert summary(stream.events(until="running")) == ["running"]
    assert stream.next() == {"id": "1", "event": "epoch", "data": {"epoch": 1, "loss": 0.5,
                                                                    "val_loss": None}}  # fmt: skip
    threading.Timer(0.2, drain_streams, args=(app.extensions,)).start()
    started = time.monotonic()
    assert stream.events() == []  # it ends, with the job still running
    assert stream.ended and time.monotonic() - started < 5
    lifecycle.record_epoch(factory_of(app), attempt, 2, 0.25, None)
    late = Stream(client, job_id, **{"Last-Event-ID": "1"})  # opened while stopping
    assert summary(late.events()) == ["running", 2]  # the state once, then the end


def test_the_stream_is_documented(app: Flask, client: FlaskClient) -> None:
    doc = client.get("/api/v1/openapi.json").get_json()
    op = doc["paths"]["/api/v1/jobs/{job_id}/events"]["get"]
    assert "text/event-stream" in op["responses"]["200"]["content"]
    assert {"404", "401", "422"} <= set(op["responses"])
    assert any(p["name"] == "Last-Event-ID" for p in op["parameters"])


def test_history_since_an_epoch(app: Flask, client: FlaskClient, bob: FlaskClient) -> None:
    job_id = trained(app, client, epochs=4)
    whole = client.get(f"/api/v1/jobs/{job_id}/history").get_json()
    assert whole["job_id"] == job_id and whole["attempts"] == 1
    assert [e["epoch"] for e in whole["epochs"]] == [1, 2, 3, 4]
    assert whole["epochs"][1] == {"epoch": 2, "loss": 0.5, "val_loss": 1.0}
    since = client.get(f"/api/v1/jobs/{job_id}/history?since_epoch=2").get_json()
    assert [e["epoch"] for e in since["epochs"]] == [3, 4]
    assert client.get(f"/api/v1/jobs/{job_id}/history?since_epoch=4").get_json()["epochs"] == []
    assert_error(client.get(f"/api/v1/jobs/{job_id}/history?since_epoch=-1"), 422, "since_epoch")
    assert_error(bob.get(f"/api/v1/jobs/{job_id}/history"), 404)
    assert_error(client.get("/api/v1/jobs/nope/history"), 404)


def test_a_job_never_shows_more_history_than_its_progress(app: Flask, client: FlaskClient) -> None:
    """A worker commits an epoch between a poll's read of the job row and its read of the
    epochs: the view is the row's state (the client's stream and polls rely on it)."""
    from service.jobs import serialize_jobs
    from service.tables import Job

    job_id = submit(client)
    attempt = claim(app, job_id)
    for epoch in (1, 2, 3):
        lifecycle.record_epoch(factory_of(app), attempt, epoch, 1.0 / epoch, None)
    with factory_of(app)() as session:
        job = session.get(Job, job_id)  # the row, at epoch 3
        assert job is not None and job.epoch == 3
        lifecycle.record_epoch(factory_of(app), attempt, 4, 0.25, None)  # meanwhile
        (full,) = serialize_jobs(session, [job])
        (brief,) = serialize_jobs(session, [job], history=False)
    assert full["loss_history"] == pytest.approx([1.0, 0.5, 1 / 3])
    assert full["progress"] == brief["progress"] == {
        "epoch": 3, "epochs": 5, "loss": pytest.approx(1 / 3)
    }  # fmt: skip
    assert client.get(f"/api/v1/jobs/{job_id}").get_json()["progress"]["epoch"] == 4


def test_job_lists_leave_out_histories_unless_asked(app: Flask, client: FlaskClient) -> None:
    job_id = trained(app, client, epochs=3)
    submit(client)  # one with no epoch yet
    items = client.get("/api/v1/jobs").get_json()["items"]
    assert all("loss_history" not in j and "val_loss_history" not in j for j in items)
    assert [j["progress"] for j in items] == [
        {"epoch": 0, "epochs": 5, "loss": None},
        {"epoch": 5, "epochs": 5, "loss": pytest.approx(1 / 3)},  # the results' epoch
    ]
    full = client.get("/api/v1/jobs?include=history").get_json()["items"]
    assert full[1]["loss_history"] == pytest.approx([1.0, 0.5, 1 / 3])
    assert full[1]["val_loss_history"] == pytest.approx([2.0, 1.0, 2 / 3])
    one = client.get(f"/api/v1/jobs/{job_id}").get_json()
    assert one["loss_history"] == full[1]["loss_history"] and one["progress"] == full[1]["progress"]


def test_a_predict_jobs_rows_stream_as_progress_events(app: Flask, client: FlaskClient) -> None:
    """A predict job's rows done wake its streams (on PostgreSQL, the trigger on `rows_done`
    of migration 6b2c3d4e5f6a) and go out as `progress` events, one per change."""
    from tests.service.test_models import add_model

    model_id, _, _ = add_model(app, [4, 1], "mse", None)
    r = client.post(
        f"/api/v1/models/{model_id}/predictions", json={"dataset_id": post_dataset(client)}
    )
    assert r.status_code == 202, r.get_json()
    job_id = r.get_json()["id"]
    attempt = claim(app, job_id)
    stream = Stream(client, job_id)
    try:
        first = [stream.next(), stream.next(), stream.next()]
        events = [e for e in first if e and "event" in e]
        assert [e["event"] for e in events] == ["status", "progress"]
        assert events[0]["data"]["status"] == "running" and events[0]["data"]["kind"] == "predict"
        assert events[1]["data"] == {"rows_done": 0, "rows_total": 10}
        assert lifecycle.record_progress(factory_of(app), attempt, 6) is False
        item = stream.next()
        while item is not None and "event" not in item:  # the retry field, keep-alives
            item = stream.next()
        assert item == {"event": "progress", "data": {"rows_done": 6, "rows_total": 10}}
    finally:
        stream.close()


def test_an_import_jobs_progress_events_say_done_and_total(app: Flask, client: FlaskClient) -> None:
    with factory_of(app)() as session:
        job_id = lifecycle.submit_import(
            session,
            owner="alice",
            source="s3://bucket/folder/data.csv",
            options={"name": "data", "format": "csv", "unit": "bytes"},
        ).id
        session.commit()
    attempt = claim(app, job_id)
    assert lifecycle.record_progress(factory_of(app), attempt, 10, 100) is False
    stream = Stream(client, job_id)
    try:
        item = stream.next()
        seen = []
        while item is not None and len(seen) < 2:
            if "event" in item:
                seen.append(item)
            if len(seen) < 2:
                item = stream.next()
        assert seen[0]["data"]["kind"] == "import" and seen[0]["data"]["progress"] == {
            "done": 10,
            "total": 100,
            "unit": "bytes",
        }
        assert seen[1] == {"event": "progress", "data": {"done": 10, "total": 100}}
    finally:
        stream.close()
