"""Live events of a job: the server-sent-events stream of `GET /api/v1/jobs/{id}/events`.

What a stream sends comes from the store, never from the process that changed the job: a job
trained by any worker streams to a client of any API process. A stream reads the job row and
the `job_epochs` rows after the last epoch it sent whenever it is woken, and sends:

- `event: epoch`, `id: <epoch>`, `data: {"epoch", "loss", "val_loss"}` per finished epoch;
- `event: status`, `data: <the job as GET /jobs/{id} gives it>` when the job's status (or its
  attempt: a lost worker's job taken over starts again from epoch 1) differs from the one it
  last sent (the first read always sends one); a state that lasted less than one read (queued
  to running to succeeded in a blink) may be skipped, the final one never is;
- `event: progress`, `data: {"rows_done", "rows_total"}` (a predict job; an import job's is
  `{"done", "total"}`, bytes or rows as its `progress.unit` says) whenever its rows
  done moved since the last one sent (at most one per read: the worker records them about
  once a second);
- after the final status, nothing: the stream ends. A job that is already finished replays its
  epochs and its status and ends; `Last-Event-ID: N` (or `?last_event_id=N`) resumes after
  epoch N, so a client that reconnects gets nothing twice;
- `: keep-alive` comments after `events_keepalive` seconds of silence, so proxies and clients
  keep idle connections open (and a gone client is noticed).

**Wake-ups** (`ChangeHub`, one per API process, started by its first stream):

- PostgreSQL (the distributed mode): `LISTEN trainyard_jobs` on one connection of its own;
  triggers (migrations `b7d41e2c9a10`, `6b2c3d4e5f6a`) `pg_notify('trainyard_jobs', job_id)`
  after every insert into `job_epochs` and every change of a job's `status`, `attempts` or
  `rows_done`. NOTIFY is transactional
  (sent at commit, so the stream's read sees the change; no writer sends it, see
  `service.outbox`, where every event leaves from) and reaches every API process that
  listens, without another server; Redis pub/sub would need the workers to publish after each
  commit (a second write that can be lost between the two) and a Redis the embedded mode does
  not have.
- SQLite (the embedded mode: no server to listen to): one thread per API process reads the
  `status`, `attempts` and `epoch` of the streamed jobs every `events_poll_interval` seconds
  (one query for every stream) and wakes those that changed.
- Always, whatever woke it or not: every stream reads the store at least every
  `events_safety_interval` seconds, so a missed notification (the listener reconnecting, say)
  costs latency, never an event.

A stream holds no database connection while it waits (each read is a short session), so 100
open streams need no more than the pool; it does hold a server thread (gunicorn's `gthread`
workers, see the README).

**Shutdown** (`drain_streams`, called by the server's SIGTERM hook in `workers.gunicorn_conf`):
a stream never ends by itself before its job does, so gunicorn's graceful stop would wait its
whole `graceful_timeout` (30 s, longer than Docker's 10 s before SIGKILL) for them. A process
being stopped instead ends every open stream (job and sweep streams) at its next wait, after
what it had to send; new streams opened meanwhile send the state once and end. Clients
reconnect (`retry:`, or the client's own loop) with `Last-Event-ID`, to a process that is not
stopping, and miss nothing.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.tables import FINAL_STATUSES, Job, JobEpoch

log = logging.getLogger(__name__)

#: The PostgreSQL notification channel; the payload is the job id.
CHANNEL = "trainyard_jobs"
#: How long a client waits before reconnecting (the SSE `retry:` field), in milliseconds.
RETRY_MS = 2000
#: At most this many epochs are read (and sent) at once; the rest follow at once.
EPOCH_BATCH = 2000
#: The listener connection checks it is alive this often, and reconnects at most this slowly.
LISTEN_PING_S = 30.0
LISTEN_MAX_BACKOFF_S = 10.0


# -- wake-ups ------------------------------------------------------------------------------------


@dataclass(eq=False)
class Subscription:
    """One stream's interest in one job: `wait` returns when the job may have changed."""

    job_id: str
    event: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float) -> bool:
        """True if woken (a change, perhaps), False after `timeout` seconds."""
        woken = self.event.wait(timeout)
        self.event.clear()
        return woken


class ChangeHub:
    """Wakes the streams of one API process when their jobs change (module docstring)."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.postgres = engine.dialect.name == "postgresql"
        self._lock = threading.Lock()
        self._subs: dict[str, set[Subscription]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: set when the process is being stopped: every stream ends at its next wait
        self.closing = threading.Event()
        #: set while the PostgreSQL listener is connected (tests wait for it)
        self.listening = threading.Event()

    # subscriptions

    def subscribe(self, job_id: str) -> Subscription:
        sub = Subscription(job_id)
        with self._lock:
            self._subs.setdefault(job_id, set()).add(sub)
            self._start_locked()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.job_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[sub.job_id]

    def streams(self) -> int:
        """How many streams are open in this process."""
        with self._lock:
            return sum(len(s) for s in self._subs.values())

    def wake(self, job_id: str) -> None:
        with self._lock:
            subs = list(self._subs.get(job_id, ()))
        for sub in subs:
            sub.event.set()

    def wake_all(self) -> None:
        with self._lock:
            subs = [sub for s in self._subs.values() for sub in s]
        for sub in subs:
            sub.event.set()

    def drain(self) -> None:
        """End every open stream of this process (at its next wait) and every stream opened
        from now on, after its first read: the process is being stopped."""
        self.closing.set()
        self.wake_all()

    def close(self) -> None:
        """Stop the thread (tests; a server process just exits)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    # the thread

    def _start_locked(self) -> None:
        if self._thread is not None or self._stop.is_set():
            return
        target = self._listen if self.postgres else self._poll
        self._thread = threading.Thread(target=target, name="trainyard-events", daemon=True)
        self._thread.start()

    def _conninfo(self) -> str:
        url = self.engine.url.set(drivername="postgresql")
        return url.render_as_string(hide_password=False)

    def _listen(self) -> None:
        """PostgreSQL: LISTEN, and wake the streams of each notified job; reconnect when the
        connection breaks (waking every stream: notifications may have been missed)."""
        import psycopg

        delay = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self._conninfo(),
                    autocommit=True,
                    connect_timeout=10,
                    keepalives=1,
                    keepalives_idle=30,
                    keepalives_interval=10,
                    keepalives_count=3,
                    application_name="trainyard-events",
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    self.wake_all()
                    delay = 0.5
                    pinged = time.monotonic()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self.wake(note.payload)
                        if time.monotonic() - pinged > LISTEN_PING_S:
                            conn.execute("SELECT 1")
                            pinged = time.monotonic()
            except Exception as exc:
                if self._stop.is_set():
                    break
                log.warning("events: the LISTEN connection failed (%s); reconnecting", exc)
            finally:
                self.listening.clear()
            self._stop.wait(delay)
            delay = min(delay * 2, LISTEN_MAX_BACKOFF_S)

    def _poll(self) -> None:
        """SQLite: read the streamed jobs' state every `events_poll_interval` seconds (one
        query for all of them) and wake the streams of those that changed."""
        seen: dict[str, tuple[Any, ...] | None] = {}
        factory = sessionmaker(bind=self.engine)
        while not self._stop.wait(self.settings.events_poll_interval):
            with self._lock:
                ids = list(self._subs)
            if not ids:
                seen.clear()
                continue
            try:
                with factory() as session:
                    rows = session.execute(
                        sa.select(Job.id, Job.status, Job.attempts, Job.epoch, Job.rows_done).where(
                            Job.id.in_(ids)
                        )
                    ).all()
            except Exception as exc:
                log.warning("events: could not poll the jobs (%s)", exc)
                continue
            current = {row.id: tuple(row[1:]) for row in rows}
            for job_id in ids:
                # a job seen for the first time wakes its streams too: it may have changed
                # between their own first read and this one
                if job_id not in seen or seen[job_id] != current.get(job_id):
                    self.wake(job_id)
            seen = {job_id: current.get(job_id) for job_id in ids}


# -- the stream ----------------------------------------------------------------------------------


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def finite_epochs(epochs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Epoch rows with a non-finite loss as null (JSON has no NaN)."""
    return [{**e, "loss": _finite(e["loss"]), "val_loss": _finite(e["val_loss"])} for e in epochs]


def _json(value: Any) -> str:
    """JSON on one line, `<`, `>`, `&` escaped as every JSON answer of the API has them."""
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def format_event(event: str, data: Any, event_id: int | None = None) -> str:
    """One server-sent event (`data` as JSON on one line)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {_json(data)}\n\n"


def job_view(session: Session, job: Job) -> dict[str, Any]:
    """The job as `GET /jobs/{id}` answers it."""
    from service.jobs import serialize_job

    return serialize_job(session, job)


@dataclass
class Snapshot:
    status: str
    attempts: int
    epochs: list[tuple[int, float, float | None]]
    job: dict[str, Any] | None
    #: a predict job's (rows_done, rows_total), an import job's (done, total); None for a
    #: training job
    rows: tuple[int, int | None] | None = None
    kind: str = "train"


def read(
    factory: sessionmaker[Session],
    job_id: str,
    after_epoch: int,
    sent: tuple[str, int] | None,
) -> Snapshot | None:
    """The job's status and attempt, its epochs after `after_epoch` (of the attempt it is on)
    and, if its (status, attempts) is not `sent`, the whole job; None if it is gone. The job
    is read first, then its epochs: a final status read here comes with every epoch (they are
    committed before it). Usually only the status and attempt are read: the whole job only
    when they changed."""
    with factory() as session:
        row = session.execute(
            sa.select(Job.status, Job.attempts, Job.kind, Job.rows_done, Job.rows_total).where(
                Job.id == job_id
            )
        ).first()
        rows = None if row is None or row.rows_done is None else (row.rows_done, row.rows_total)
        job = None
        if row is not None and (row.status, row.attempts) != sent:
            job = session.get(Job, job_id)
            row = job
        if row is None:
            return None
        if sent is not None and sent[1] != row.attempts:
            after_epoch = 0  # a new attempt: its epochs start again from 1
        epochs = session.execute(
            sa.select(JobEpoch.epoch, JobEpoch.loss, JobEpoch.val_loss)
            .where(JobEpoch.job_id == job_id, JobEpoch.epoch > after_epoch)
            .order_by(JobEpoch.epoch)
            .limit(EPOCH_BATCH)
        ).all()
        view = None if job is None else job_view(session, job)
        epoch_rows = [(e[0], e[1], e[2]) for e in epochs]
        return Snapshot(row.status, row.attempts, epoch_rows, view, rows, row.kind)


def job_stream(
    factory: sessionmaker[Session],
    hub: ChangeHub,
    job_id: str,
    settings: Settings,
    last_event_id: int = 0,
) -> Iterator[str]:
    """The event stream of job `job_id` (already checked to be the client's), from the epoch
    after `last_event_id` until its final status."""
    sub = hub.subscribe(job_id)
    try:
        yield f"retry: {RETRY_MS}\n\n"
        last_epoch = last_event_id
        sent: tuple[str, int] | None = None
        sent_rows: int | None = None
        last_write = time.monotonic()
        while True:
            snap = read(factory, job_id, last_epoch, sent)
            if snap is None:
                return  # no such job any more
            state = (snap.status, snap.attempts)
            final = snap.status in FINAL_STATUSES
            chunks: list[str] = []
            if sent is not None and sent[1] != snap.attempts:
                last_epoch = 0
            if snap.job is not None and not final:
                chunks.append(format_event("status", snap.job))
                sent = state
            for epoch, loss, val_loss in snap.epochs:
                chunks.append(
                    format_event(
                        "epoch",
                        {"epoch": epoch, "loss": _finite(loss), "val_loss": _finite(val_loss)},
                        epoch,
                    )
                )
                last_epoch = epoch
            if snap.rows is not None and snap.rows[0] != sent_rows and not final:
                done, total = snap.rows
                keys = ("done", "total") if snap.kind == "import" else ("rows_done", "rows_total")
                chunks.append(format_event("progress", dict(zip(keys, (done, total), strict=True))))
                sent_rows = done
            more = len(snap.epochs) >= EPOCH_BATCH
            if final and not more:
                if snap.job is not None:
                    chunks.append(format_event("status", snap.job))
                yield "".join(chunks)
                return
            if chunks:
                yield "".join(chunks)
                last_write = time.monotonic()
            if more:
                continue
            # wait for a change, the safety-net read, or the keep-alive (or end: shutdown)
            while True:
                if hub.closing.is_set():
                    return
                silent = time.monotonic() - last_write
                keepalive_in = settings.events_keepalive - silent
                if keepalive_in <= 0:
                    yield ": keep-alive\n\n"
                    last_write = time.monotonic()
                    continue
                if sub.wait(min(settings.events_safety_interval, keepalive_in)):
                    break
                if time.monotonic() - last_write < settings.events_keepalive:
                    break  # the safety-net read
    finally:
        hub.unsubscribe(sub)


_hub_lock = threading.Lock()


def drain_streams(extensions: dict[str, Any]) -> None:
    """End the open streams of the app whose `extensions` these are (`ChangeHub.drain`); none
    is open if no hub was made."""
    hub = extensions.get("event_hub")
    if hub is not None:
        hub.drain()


def hub_for(extensions: dict[str, Any], settings: Settings) -> ChangeHub:
    """The app's hub (`extensions["event_hub"]`), made on first use: in the server process
    that serves the stream, after gunicorn forked it."""
    with _hub_lock:
        hub = extensions.get("event_hub")
        if hub is None:
            hub = extensions["event_hub"] = ChangeHub(extensions["db_engine"], settings)
        return hub  # type: ignore[no-any-return]
