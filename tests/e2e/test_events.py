"""Live events and webhooks end to end: PostgreSQL, a Redis server of this module's own, the API
under gunicorn (2 processes, `gthread`) and a real `celery worker`.

A client connected to the API streams a job the worker trains (every epoch once, in order, as
it is committed; the final status; then the stream ends), a reconnection with `Last-Event-ID`
sends nothing twice, and a webhook receiver on 127.0.0.1 (private addresses allowed for this
server) gets `job.succeeded`, signed, from the worker.
"""

from __future__ import annotations

import hmac
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from tests.support import (
    Api,
    Processes,
    RedisServer,
    api_cmd,
    base_env,
    free_port,
    fresh_pg_database,
    new_api_key,
    worker_cmd,
)
from tests.workers.datasets import moons

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(300)]

SECRET = "e2e-webhook-secret-0123"


class Receiver:
    """A webhook receiver on 127.0.0.1: records each request, answers from `answers` (the
    last one repeats)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers = [200]
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                answers = receiver.answers
                self.send_response(answers.pop(0) if len(answers) > 1 else answers[0])
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with fresh_pg_database() as url:
        yield url


@pytest.fixture(scope="module")
def api(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    folder = tmp_path_factory.mktemp("events")
    redis_server = RedisServer(folder)
    redis_server.start()
    procs = Processes(folder)
    try:
        env = base_env(
            DATABASE_URL=database_url,
            CELERY_BROKER_URL=redis_server.url,
            TRAINYARD_WEBHOOKS_ALLOW_PRIVATE="true",
            TRAINYARD_MAINTENANCE_INTERVAL="1",
            TRAINYARD_WEBHOOK_RETRY_BASE="0.5",
        )
        worker = procs.start("worker", worker_cmd("events"), env)
        port = free_port()
        server = procs.start("api", api_cmd(port, workers=2, threads=16), env)
        client = Api(f"http://127.0.0.1:{port}", server, new_api_key(database_url))
        client.wait_ready(60)
        worker.wait_for_output(" ready.", 60)
        yield client
    finally:
        procs.stop_all()
        redis_server.stop()


def stream(api: Api, job_id: str, **headers: str) -> Iterator[dict[str, Any]]:
    """The job's events as they arrive (`{"event", "id", "data", "at"}`)."""
    with api.http.get(
        f"{api.base}/api/v1/jobs/{job_id}/events", headers=headers, stream=True, timeout=(10, 60)
    ) as r:
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].startswith("text/event-stream")
        item: dict[str, Any] = {}
        for line in r.iter_lines(decode_unicode=True):
            if line == "":
                if "event" in item:
                    yield item
                item = {}
            elif line.startswith(("event: ", "id: ")):
                name, _, value = line.partition(": ")
                item[name] = value
            elif line.startswith("data: "):
                item["data"] = json.loads(line[6:])
                item["at"] = time.monotonic()


def submit(api: Api, epochs: int) -> str:
    x, y = moons(400, noise=0.1, seed=3)
    return api.job(
        api.dataset(x, y, "moons"), [32, 32, 1], loss="binary_cross_entropy",
        optimizer="adam", learning_rate=0.01, epochs=epochs, batch_size=16, seed=0,
    )  # fmt: skip


def test_a_client_streams_a_job_the_worker_trains(api: Api) -> None:
    job_id = submit(api, epochs=40)
    events = list(stream(api, job_id))
    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    epochs = [e["data"]["epoch"] for e in events if e["event"] == "epoch"]
    assert epochs == list(range(1, 41))
    assert [e["id"] for e in events if e["event"] == "epoch"] == [str(i) for i in epochs]
    assert statuses[-1] == "succeeded" and events[-1]["event"] == "status"
    assert "running" in statuses and statuses[0] in ("queued", "running")
    final = events[-1]["data"]
    assert final == api.get(f"/jobs/{job_id}").json()
    assert final["loss_history"] == [e["data"]["loss"] for e in events if e["event"] == "epoch"]
    # live: the epochs arrived over the training time, not all at the end
    epoch_times = [e["at"] for e in events if e["event"] == "epoch"]
    assert epoch_times[-1] - epoch_times[0] > 0.2


def test_reconnecting_with_last_event_id_resumes(api: Api) -> None:
    job_id = submit(api, epochs=60)
    first: list[int] = []
    for event in stream(api, job_id):
        if event["event"] == "epoch":
            first.append(event["data"]["epoch"])
            if len(first) == 5:
                break  # the connection drops
    rest = list(stream(api, job_id, **{"Last-Event-ID": str(first[-1])}))
    resumed = [e["data"]["epoch"] for e in rest if e["event"] == "epoch"]
    assert first + resumed == list(range(1, 61))
    assert rest[-1]["data"]["status"] == "succeeded"
    # a finished job replays and ends
    replay = list(stream(api, job_id))
    assert [e["data"]["epoch"] for e in replay if e["event"] == "epoch"] == list(range(1, 61))


def test_another_owner_gets_404(api: Api, database_url: str) -> None:
    job_id = submit(api, epochs=1)
    other = requests.get(
        f"{api.base}/api/v1/jobs/{job_id}/events",
        headers={"Authorization": f"Bearer {new_api_key(database_url, 'mallory')}"},
        timeout=10,
    )
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"


def test_a_webhook_receiver_gets_job_succeeded_signed(api: Api) -> None:
    # the other tests' jobs end first: a webhook announces every job that ends after it is made
    for status in ("queued", "running"):
        for job in api.get(f"/jobs?status={status}&page_size=100").json()["items"]:
            api.wait(job["id"], timeout=120)
    receiver = Receiver()
    try:
        receiver.answers = [500, 200]  # the first attempt fails: the worker tries again
        hook = api.post(
            "/webhooks",
            {"url": receiver.url, "events": ["job.succeeded", "job.failed"], "secret": SECRET},
            201,
        )
        job_id = submit(api, epochs=5)
        api.wait(job_id, timeout=120)

        def ours() -> list[dict[str, Any]]:
            # jobs of the other tests that end after the webhook was made are announced too
            return [
                r for r in receiver.requests if json.loads(r["body"])["data"]["job"]["id"] == job_id
            ]

        deadline = time.monotonic() + 60
        while len(ours()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        requests_ = ours()
        assert len(requests_) == 2, receiver.requests
        for request in requests_:
            headers = request["headers"]
            timestamp = headers["X-Trainyard-Timestamp"]
            mac = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + request["body"], "sha256")
            assert headers["X-Trainyard-Signature"] == "sha256=" + mac.hexdigest()
            assert abs(int(timestamp) - time.time()) < 120
            event = json.loads(request["body"])
            assert (
                event["type"] == "job.succeeded" and headers["X-Trainyard-Event"] == event["type"]
            )
            assert event["data"]["job"]["id"] == job_id
            assert event["data"]["job"]["status"] == "succeeded"
        assert [r["headers"]["X-Trainyard-Attempt"] for r in requests_] == ["1", "2"]
        assert requests_[0]["body"] == requests_[1]["body"]
        deliveries = [
            d
            for d in api.get(f"/webhooks/{hook['id']}/deliveries").json()["items"]
            if d["subject_id"] == job_id
        ]
        assert [(d["attempt"], d["status"], d["status_code"]) for d in deliveries] == [
            (2, "succeeded", 200),
            (1, "failed", 500),
        ]
    finally:
        receiver.close()


def test_a_webhook_does_not_wait_behind_a_training_job(api: Api, database_url: str) -> None:
    """The only worker (one pool process) trains a long job, and a queued job is cancelled from
    the API: its `job.cancelled` delivery's message is queued behind nothing the worker can
    take, yet the receiver gets it within seconds (the worker's main process sends attempts that
    wait), while the long job is still running."""
    owner = Api(api.base, None, new_api_key(database_url, "busy-owner"))
    receiver = Receiver()
    long_job = submit(owner, epochs=10_000)
    try:
        owner.post("/webhooks", {"url": receiver.url, "events": ["job.cancelled"],
                                 "secret": SECRET}, 201)  # fmt: skip
        owner.wait(long_job, ("running",), timeout=120)
        queued = submit(owner, epochs=5)
        cancelled = time.monotonic()
        assert owner.post(f"/jobs/{queued}/cancel", {}, 200)["status"] == "cancelled"
        deadline = cancelled + 45
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.2)
        took = time.monotonic() - cancelled
        assert receiver.requests, "no webhook while the worker trains"
        event = json.loads(receiver.requests[0]["body"])
        assert event["type"] == "job.cancelled" and event["data"]["job"]["id"] == queued
        assert owner.get(f"/jobs/{long_job}").json()["status"] == "running", took
    finally:
        owner.post(f"/jobs/{long_job}/cancel", {}, 200)
        owner.wait(long_job, ("cancelled", "succeeded"), timeout=120)
        receiver.close()


def test_stopping_the_server_ends_open_streams_instead_of_waiting_for_them(
    pg_database_url: str, redis_url: str, processes: Processes
) -> None:
    """SIGTERM to gunicorn's arbiter (what Docker sends): the open streams of queued jobs that no
    worker will train end at once, and the server exits well before gunicorn's 30 s graceful
    timeout (Docker would SIGKILL it at 10 s, cutting every other request with it)."""
    port = free_port()
    env = base_env(DATABASE_URL=pg_database_url, CELERY_BROKER_URL=redis_url)
    server = processes.start("api", api_cmd(port, workers=2), env)
    api = Api(f"http://127.0.0.1:{port}", server, new_api_key(pg_database_url))
    api.wait_ready(60)
    job_ids = [submit(api, epochs=5) for _ in range(4)]
    opened = threading.Barrier(len(job_ids) + 1)
    ended: dict[str, list[str]] = {}

    def follow(job_id: str) -> None:
        got: list[str] = []
        for event in stream(api, job_id):
            got.append(event["data"]["status"])
            if len(got) == 1:
                opened.wait(30)
        ended[job_id] = got

    readers = [threading.Thread(target=follow, args=(j,), daemon=True) for j in job_ids]
    for t in readers:
        t.start()
    opened.wait(30)  # every stream sent its first status
    started = time.monotonic()
    os.kill(server.popen.pid, signal.SIGTERM)
    server.popen.wait(timeout=25)
    took = time.monotonic() - started
    for t in readers:
        t.join(timeout=5)
    assert took < 8, f"the server took {took:.1f} s to stop"
    assert server.popen.returncode == 0
    assert sorted(ended) == sorted(job_ids)  # every stream ended cleanly (no error)
    assert all(statuses == ["queued"] for statuses in ended.values()), ended
