"""GET /api/v1/sweeps/{id}/events: a sweep's server-sent events, read from the store (trials
moved by hand here, as the workers move them), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from service import sweep_events
from service.tables import Job, Sweep
from tests.service.helpers import assert_error, binary_dataset, post_dataset
from tests.service.test_sweeps import URL, sweep_body


def parse(text: str) -> list[tuple[str, Any]]:
    """(event, data) pairs of a server-sent-events body (comments and retry: skipped)."""
    out = []
    for block in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":")
        )
        if "event" in fields:
            out.append((fields["event"], json.loads(fields["data"])))
    return out


def move(app: Flask, job_id: str, **values: Any) -> None:
    with app.extensions["db_sessionmaker"]() as session:
        session.execute(sa.update(Job).where(Job.id == job_id).values(**values))
        session.commit()


def set_sweep(app: Flask, sweep_id: str, status: str) -> None:
    with app.extensions["db_sessionmaker"]() as session:
        session.execute(sa.update(Sweep).where(Sweep.id == sweep_id).values(status=status))
        session.commit()


@pytest.fixture
def fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep_events, "SWEEP_POLL_S", 0.05)


def test_a_finished_sweep_replays_its_trials_and_ends(
    app: Flask, client: FlaskClient, bob: FlaskClient, fast_poll: None
) -> None:
    dataset_id = post_dataset(client, binary_dataset(40))
    sweep = client.post(URL, json=sweep_body(dataset_id, max_trials=3)).get_json()
    a, b, c = (t["job_id"] for t in sweep["trials"])
    move(app, a, status="succeeded", epoch=5, metrics={"loss": 0.1, "val_loss": 0.4})
    move(app, b, status="succeeded", epoch=5, metrics={"loss": 0.1, "val_loss": 0.2})
    move(app, c, status="cancelled", epoch=0)  # cancelled before it started
    set_sweep(app, sweep["id"], "succeeded")

    assert_error(bob.get(f"{URL}/{sweep['id']}/events"), 404)
    assert_error(client.get(f"{URL}/{'0' * 32}/events"), 404)
    r = client.get(f"{URL}/{sweep['id']}/events")
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    events = parse(r.get_data(as_text=True))
    names = [e for e, _ in events]
    assert names.count("trial.started") == 2 and names.count("trial.finished") == 3
    assert names[-1] == "status" and events[-1][1]["status"] == "succeeded"
    best = [data for name, data in events if name == "best"]
    assert best == [{"job_id": b, "model_id": None, "params": best[0]["params"],
                     "metric_value": 0.2}]  # fmt: skip
    finished = {d["job_id"]: d for n, d in events if n == "trial.finished"}
    assert finished[c]["status"] == "cancelled" and finished[a]["metric_value"] == 0.4
    started = [d["job_id"] for n, d in events if n == "trial.started"]
    assert c not in started


def test_a_running_sweep_streams_its_changes_until_it_ends(
    app: Flask, client: FlaskClient, fast_poll: None
) -> None:
    dataset_id = post_dataset(client, binary_dataset(40))
    sweep = client.post(URL, json=sweep_body(dataset_id, max_trials=2)).get_json()
    first, second = (t["job_id"] for t in sweep["trials"])
    set_sweep(app, sweep["id"], "running")

    def worker() -> None:  # what the workers would write, step by step
        time.sleep(0.3)
        move(app, first, status="running", epoch=1)
        time.sleep(0.3)
        move(app, first, status="succeeded", epoch=5, metrics={"loss": 0.1, "val_loss": 0.3})
        move(app, second, status="failed", epoch=2, error="diverged")
        time.sleep(0.3)
        set_sweep(app, sweep["id"], "succeeded")

    thread = threading.Thread(target=worker)
    thread.start()
    r = client.get(f"{URL}/{sweep['id']}/events", buffered=False)
    body = "".join(chunk.decode() for chunk in r.response)
    thread.join()
    names = [e for e, _ in parse(body)]
    assert names[0] == "status"  # the sweep as it was when the stream opened
    assert names.index("trial.started") < names.index("trial.finished") < names.index("best")
    assert names[-1] == "status" and parse(body)[-1][1]["status"] == "succeeded"
    assert names.count("trial.finished") == 2


def test_a_server_being_stopped_ends_the_stream(
    app: Flask, client: FlaskClient, fast_poll: None
) -> None:
    """SIGTERM's hook (`drain_streams`) ends a running sweep's open stream after what it had
    to send: gunicorn's graceful stop then waits for nothing."""
    from service.events import drain_streams

    dataset_id = post_dataset(client, binary_dataset(40))
    sweep = client.post(URL, json=sweep_body(dataset_id, max_trials=2)).get_json()
    set_sweep(app, sweep["id"], "running")
    r = client.get(f"{URL}/{sweep['id']}/events", buffered=False)
    chunks = iter(r.response)
    assert next(chunks).startswith(b"retry: ")
    assert parse(next(chunks).decode())[0][0] == "status"
    threading.Timer(0.2, drain_streams, args=(app.extensions,)).start()
    started = time.monotonic()
    rest = b"".join(chunks).decode()  # ends: the sweep itself is still running
    assert time.monotonic() - started < 5
    assert not any(name == "status" for name, _ in parse(rest))
    app.extensions["event_hub"].close()
