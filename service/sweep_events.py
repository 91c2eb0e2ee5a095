"""Live events of a sweep: the server-sent-events stream of `GET /api/v1/sweeps/{id}/events`.

Like a job's stream (`service.events`), it is read from the store, so a sweep whose trials run
on any workers streams to a client of any API process. It reads the sweep as
`GET /sweeps/{id}` gives it every `SWEEP_POLL_S` seconds and sends what changed:

- `event: status`, `data: <the sweep>` first, and whenever the sweep's status changes; the
  stream ends after the final status (a finished sweep replays its trials, then ends);
- `event: trial.started`, `data: {"job_id", "index", "params"}` once a trial has started
  (it runs, or it ended after at least one epoch);
- `event: trial.finished`, `data: {"job_id", "index", "params", "status", "metric_value",
  "stop_reason"}` once a trial has ended (a trial cancelled before it started only finishes);
- `event: best`, `data: <the best trial: "job_id", "model_id", "params", "metric_value">` when
  the best trial changes;
- `: keep-alive` comments after `events_keepalive` seconds of silence.

Events carry no ids: a client that reconnects gets the sweep's state again (a `status` event,
then every trial that started or finished), which is what it needs to redraw.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.events import RETRY_MS, format_event
from service.tables import FINAL_STATUSES, Sweep

#: How often a sweep stream reads its sweep (trial steps take seconds, not milliseconds).
SWEEP_POLL_S = 1.0


def sweep_view(session: Session, sweep_id: str) -> dict[str, Any] | None:
    """The sweep as `GET /sweeps/{id}` answers it, or None if it is gone."""
    from service.sweeps import serialize_sweep

    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        return None
    return serialize_sweep(session, sweep)


def _started(trial: dict[str, Any]) -> bool:
    return trial["status"] == "running" or (
        trial["status"] in FINAL_STATUSES and (trial.get("epoch") or 0) > 0
    )


class SweepChanges:
    """What a stream has sent so far; `events(view)` gives what is new in `view`."""

    def __init__(self) -> None:
        self.status: str | None = None
        self.best: Any = ...
        self.started: set[str] = set()
        self.finished: set[str] = set()

    def events(self, view: dict[str, Any]) -> list[str]:
        out = []
        if view["status"] != self.status and view["status"] not in FINAL_STATUSES:
            out.append(format_event("status", view))
        for trial in view.get("trials") or []:
            job_id = trial["job_id"]
            brief = {"job_id": job_id, "index": trial["index"], "params": trial["params"]}
            if job_id not in self.started and _started(trial):
                self.started.add(job_id)
                out.append(format_event("trial.started", brief))
            if job_id not in self.finished and trial["status"] in FINAL_STATUSES:
                self.finished.add(job_id)
                out.append(
                    format_event(
                        "trial.finished",
                        {
                            **brief,
                            "status": trial["status"],
                            "metric_value": trial.get("metric_value"),
                            "stop_reason": trial.get("stop_reason"),
                        },
                    )
                )
        if view["best"] != self.best and view["best"] is not None:
            out.append(format_event("best", view["best"]))
        self.best = view["best"]
        if view["status"] in FINAL_STATUSES:
            out.append(format_event("status", view))
        self.status = view["status"]
        return out


def sweep_stream(
    factory: sessionmaker[Session],
    sweep_id: str,
    settings: Settings,
    poll: float | None = None,
    closing: threading.Event | None = None,
) -> Iterator[str]:
    """The event stream of sweep `sweep_id` (already checked to be the client's) until its
    final status, or until `closing` is set (the process is being stopped: the hub's
    `closing`, `service.events`)."""
    stop = closing if closing is not None else threading.Event()
    yield f"retry: {RETRY_MS}\n\n"
    changes = SweepChanges()
    last_write = time.monotonic()
    while True:
        with factory() as session:
            view = sweep_view(session, sweep_id)
        if view is None:
            return
        chunks = changes.events(view)
        if chunks:
            yield "".join(chunks)
            last_write = time.monotonic()
        if view["status"] in FINAL_STATUSES:
            return
        if time.monotonic() - last_write >= settings.events_keepalive:
            yield ": keep-alive\n\n"
            last_write = time.monotonic()
        if stop.wait(SWEEP_POLL_S if poll is None else poll):
            return
