"""service.lifecycle's transitions one by one, on real databases (SQLite file and PostgreSQL).

The task and the maintenance loop are tested around them in tests/workers (a whole attempt,
re-delivery, the reaper, the reconciler); here: the fencing of each write of an attempt, the
outcomes of `claim`, `succeed` and `cancel`, publishing, the messages, and the webhook
deliveries every final transition records in its own transaction (`outbox.job_ended`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from service import lifecycle, outbox
from service.celery import celery_config
from service.config import Settings
from service.db import session_scope, utcnow
from service.lifecycle import CancelResult, Claim
from service.tables import DEFAULT_OWNER, Job, JobEpoch, Sweep, TrainedModel
from service.webhook_models import WEBHOOK_EVENTS, Webhook, WebhookDelivery
from tests.workers.test_tasks import add_job, job_row

SETTINGS = dataclasses.replace(
    Settings(), max_attempts=3, stale_after=30.0, task_soft_time_limit=5.0, task_time_limit=7.0
)
STALE = timedelta(minutes=10)


def broker(url: str) -> Celery:
    app = Celery("lifecycle-test", set_as_current=False)
    app.config_from_object(celery_config(dataclasses.replace(Settings(), broker_url=url)))
    return app


def running(factory: sessionmaker[Session], **fields: object) -> Claim:
    """A job claimed by this test (attempt 1)."""
    claim = lifecycle.claim(factory, add_job(factory, **fields), SETTINGS)
    assert isinstance(claim, Claim) and claim.attempt == 1
    return claim


def epochs_of(factory: sessionmaker[Session], job_id: str) -> list[int]:
    with session_scope(factory) as session:
        return list(
            session.scalars(
                sa.select(JobEpoch.epoch).where(JobEpoch.job_id == job_id).order_by(JobEpoch.epoch)
            )
        )


def models_of(factory: sessionmaker[Session], job_id: str) -> int:
    with session_scope(factory) as session:
        query = sa.select(sa.func.count()).select_from(TrainedModel)
        return int(session.scalar(query.where(TrainedModel.job_id == job_id)) or 0)


def set_fields(factory: sessionmaker[Session], job_id: str, **values: object) -> None:
    with session_scope(factory) as session:
        session.execute(sa.update(Job).where(Job.id == job_id).values(**values))


# -- the API side -------------------------------------------------------------------------------


def test_submit_adds_a_queued_job(factory: sessionmaker[Session]) -> None:
    dataset_id = job_row(factory, add_job(factory)).dataset_id
    training = {"epochs": 7, "loss": "mse"}
    with session_scope(factory) as session:
        job = lifecycle.submit(
            session,
            owner="carol",
            dataset_id=dataset_id,
            model_spec={"layers": [1]},
            training_spec=training,
        )
        job_id = job.id
    job = job_row(factory, job_id)
    assert (job.owner, job.status, job.epochs, job.attempts) == ("carol", "queued", 7, 0)
    assert job.published_at is None and job.cancel_requested is False


def test_publish_records_when_and_keeps_a_job_queued_when_the_broker_is_down(
    factory: sessionmaker[Session], tmp_path: Path
) -> None:
    job_id = add_job(factory)
    with factory() as session:
        assert lifecycle.publish(session, broker(f"filesystem://{tmp_path.as_posix()}"), job_id)
    assert job_row(factory, job_id).published_at is not None
    assert len(list((tmp_path / "queue").iterdir())) == 1

    down = add_job(factory)
    with factory() as session:
        assert not lifecycle.publish(session, broker("redis://127.0.0.1:9/0"), down)
    assert (job_row(factory, down).status, job_row(factory, down).published_at) == ("queued", None)


def test_publish_does_not_touch_a_job_that_left_the_queue(
    factory: sessionmaker[Session], tmp_path: Path
) -> None:
    job_id = running(factory).job_id  # a fast worker claimed it before the API's UPDATE
    with factory() as session:
        assert lifecycle.publish(session, broker(f"filesystem://{tmp_path.as_posix()}"), job_id)
    assert job_row(factory, job_id).published_at is None


def test_cancel_outcomes(factory: sessionmaker[Session]) -> None:
    queued = add_job(factory, owner="alice")
    claim = running(factory, owner="alice")
    finished = add_job(factory, owner="alice", status="succeeded")
    with factory() as session:
        assert lifecycle.cancel(session, queued, "alice") == CancelResult(True)
        assert lifecycle.cancel(session, claim.job_id, "alice") == CancelResult(True)
        assert lifecycle.cancel(session, finished, "alice") == CancelResult(False, "succeeded")
        assert lifecycle.cancel(session, queued, "alice") == CancelResult(False, "cancelled")
        assert lifecycle.cancel(session, queued, "bob") == CancelResult(False, None)
        assert lifecycle.cancel(session, "0" * 32, "alice") == CancelResult(False, None)
    job = job_row(factory, queued)
    assert (job.status, job.cancel_requested, job.attempts) == ("cancelled", True, 0)
    assert job.finished_at is not None
    job = job_row(factory, claim.job_id)  # asked to stop: the attempt ends it
    assert (job.status, job.cancel_requested, job.finished_at) == ("running", True, None)
    assert lifecycle.record_epoch(factory, claim, 1, 0.5, None) is True
    assert lifecycle.cancel_attempt(factory, claim) == "cancelled"
    assert job_row(factory, claim.job_id).status == "cancelled"


# -- a sweep's trials ---------------------------------------------------------------------------


def held_trials(factory: sessionmaker[Session], n: int) -> tuple[str, list[str]]:
    """A sweep of `owner` with `n` held trials (`lifecycle.submit`, as `create_sweep` does)."""
    dataset_id = job_row(factory, add_job(factory)).dataset_id
    with session_scope(factory) as session:
        sweep = Sweep(
            owner="dana",
            status="queued",
            dataset_id=dataset_id,
            base={},
            method="grid",
            parameters={},
            metric={"name": "loss", "goal": "minimize"},
            n_trials=n,
        )
        session.add(sweep)
        session.flush()
        ids = [
            lifecycle.submit(
                session,
                owner="dana",
                dataset_id=dataset_id,
                model_spec={"layers": [1]},
                training_spec={"epochs": 3, "loss": "mse"},
                trial={"sweep_id": sweep.id, "trial_index": i, "params": {}},
            ).id
            for i in range(n)
        ]
        return sweep.id, ids


def test_trials_start_in_order_and_a_failed_publish_is_undone(
    factory: sessionmaker[Session], tmp_path: Path
) -> None:
    sweep_id, ids = held_trials(factory, 4)
    assert all(job_row(factory, i).held for i in ids)
    assert lifecycle.claim(factory, ids[0], SETTINGS) == "held"
    now = utcnow()
    with session_scope(factory) as session:
        started = lifecycle.start_trials(session, sweep_id, 2, now)
    assert started == ids[:2]
    assert [job_row(factory, i).held for i in ids] == [False, False, True, True]
    lifecycle.send_trials(
        factory, broker(f"filesystem://{tmp_path.as_posix()}"), sweep_id, started, now
    )
    assert len(list((tmp_path / "queue").iterdir())) == 2
    assert all(job_row(factory, i).published_at is not None for i in started)

    later = utcnow()
    with session_scope(factory) as session:
        rest = lifecycle.start_trials(session, sweep_id, 5, later)
    assert rest == ids[2:]
    lifecycle.send_trials(factory, broker("redis://127.0.0.1:9/0"), sweep_id, rest, later)
    # the broker is down: `reconcile` publishes them once it is back
    assert [job_row(factory, i).published_at for i in rest] == [None, None]
    assert all(job_row(factory, i).status == "queued" for i in ids)


def test_cancel_trials(factory: sessionmaker[Session]) -> None:
    sweep_id, ids = held_trials(factory, 3)
    with session_scope(factory) as session:
        lifecycle.start_trials(session, sweep_id, 1, utcnow())
    assert isinstance(lifecycle.claim(factory, ids[0], SETTINGS), Claim)
    with session_scope(factory) as session:
        assert lifecycle.cancel_trials(session, sweep_id, utcnow()) == 1
    rows = [job_row(factory, i) for i in ids]
    assert [(r.status, r.cancel_requested) for r in rows] == [
        ("running", True),
        ("cancelled", True),
        ("cancelled", True),
    ]


# -- one attempt --------------------------------------------------------------------------------


def test_claim_starts_from_scratch(factory: sessionmaker[Session]) -> None:
    job_id = add_job(factory, status="queued", attempts=1, epoch=3, error="old", metrics={"a": 1})
    with session_scope(factory) as session:  # a handed-back attempt's history
        session.add_all([JobEpoch(job_id=job_id, epoch=e, loss=9.0) for e in (1, 2, 3)])
    assert lifecycle.claim(factory, job_id, SETTINGS) == Claim(job_id, 2)
    job = job_row(factory, job_id)
    assert (job.status, job.attempts, job.epoch, job.error, job.metrics) == (
        "running", 2, 0, None, None,
    )  # fmt: skip
    assert job.started_at is not None and job.heartbeat_at is not None
    assert epochs_of(factory, job_id) == []


def test_claim_outcomes_without_a_new_attempt(factory: sessionmaker[Session]) -> None:
    stale = utcnow() - STALE
    assert lifecycle.claim(factory, "0" * 32, SETTINGS) == "missing"
    done = add_job(factory, status="failed", attempts=1)
    assert lifecycle.claim(factory, done, SETTINGS) == "duplicate"
    alive = running(factory).job_id
    assert lifecycle.claim(factory, alive, SETTINGS) == "busy"
    flagged = add_job(
        factory, status="running", attempts=1, heartbeat_at=stale, cancel_requested=True
    )
    assert lifecycle.claim(factory, flagged, SETTINGS) == "cancelled"
    lost = add_job(factory, status="running", attempts=3, heartbeat_at=stale)
    assert lifecycle.claim(factory, lost, SETTINGS) == "failed"

    assert job_row(factory, alive).attempts == 1
    assert (job_row(factory, flagged).status, job_row(factory, flagged).attempts) == (
        "cancelled", 1,
    )  # fmt: skip
    job = job_row(factory, lost)
    assert (job.status, job.attempts) == ("failed", 3)
    assert job.error == lifecycle.lost_error(3, 3)
    assert job.error == "the worker running this job was lost 3 times (max attempts 3); giving up"


def test_take_over_fences_out_the_old_attempt(factory: sessionmaker[Session]) -> None:
    old = running(factory, epochs=5)
    assert lifecycle.record_epoch(factory, old, 1, 0.9, 1.0) is False
    set_fields(factory, old.job_id, heartbeat_at=utcnow() - STALE)  # its worker went silent
    new = lifecycle.claim(factory, old.job_id, SETTINGS)
    assert new == Claim(old.job_id, 2)
    assert epochs_of(factory, old.job_id) == []  # the new attempt starts from scratch

    # nothing the old attempt writes reaches the job any more
    assert lifecycle.record_epoch(factory, old, 2, 0.8, None) is None
    assert lifecycle.heartbeat(factory, old) is None
    lifecycle.fail(factory, old, "late")
    lifecycle.cancel_attempt(factory, old)
    model = {"dataset_id": job_row(factory, old.job_id).dataset_id, "architecture": {},
             "weights": b"", "graph_svg": "", "metrics": {}}  # fmt: skip
    assert lifecycle.succeed(factory, old, results={"epoch": 5}, model=model) == "lost"
    job = job_row(factory, old.job_id)
    assert (job.status, job.attempts, job.epoch, job.error) == ("running", 2, 0, None)
    assert epochs_of(factory, old.job_id) == [] and models_of(factory, old.job_id) == 0

    # a later delivery finds the new attempt alive
    assert lifecycle.claim(factory, old.job_id, SETTINGS) == "busy"


def test_record_epoch_and_heartbeat(factory: sessionmaker[Session]) -> None:
    claim = running(factory)
    set_fields(factory, claim.job_id, heartbeat_at=utcnow() - STALE)
    assert lifecycle.heartbeat(factory, claim) is False  # alive, and no cancel asked for
    beat = job_row(factory, claim.job_id).heartbeat_at
    assert beat is not None and utcnow() - beat.replace(tzinfo=utcnow().tzinfo) < STALE
    assert lifecycle.record_epoch(factory, claim, 1, 0.7, 0.8) is False
    # a retry after a commit whose answer was lost writes the same row again
    assert lifecycle.record_epoch(factory, claim, 1, 0.7, 0.8) is False
    assert lifecycle.record_epoch(factory, claim, 2, 0.6, None) is False
    assert job_row(factory, claim.job_id).epoch == 2
    assert epochs_of(factory, claim.job_id) == [1, 2]


def test_succeed_saves_the_model_in_the_same_transaction(factory: sessionmaker[Session]) -> None:
    claim = running(factory)
    dataset_id = job_row(factory, claim.job_id).dataset_id
    model = {"dataset_id": dataset_id, "architecture": {"layers": [8, 1]}, "weights": b"npz",
             "graph_svg": "<svg/>", "metrics": {"loss": 0.1}}  # fmt: skip
    results = {"epoch": 5, "metrics": {"loss": 0.1}}
    outcome = lifecycle.succeed(factory, claim, results=results, model=model)
    assert outcome == "succeeded"
    job = job_row(factory, claim.job_id)
    assert (job.status, job.epoch, job.metrics) == ("succeeded", 5, {"loss": 0.1})
    assert job.finished_at is not None
    with session_scope(factory) as session:
        row = session.scalars(sa.select(TrainedModel).where(TrainedModel.job_id == job.id)).one()
        assert (row.dataset_id, row.architecture, row.owner) == (
            dataset_id, {"layers": [8, 1]}, job.owner,
        )  # fmt: skip
    # a second save (a retry, a duplicate) finds the job finished: no second model
    assert lifecycle.succeed(factory, claim, results={"epoch": 5}, model=model) == "lost"
    assert models_of(factory, claim.job_id) == 1


def test_succeed_after_a_cancel_request_ends_cancelled(factory: sessionmaker[Session]) -> None:
    claim = running(factory)
    set_fields(factory, claim.job_id, cancel_requested=True)
    model = {"dataset_id": job_row(factory, claim.job_id).dataset_id, "architecture": {},
             "weights": b"", "graph_svg": "", "metrics": {}}  # fmt: skip
    assert lifecycle.succeed(factory, claim, results={"epoch": 5}, model=model) == "cancelled"
    assert job_row(factory, claim.job_id).status == "cancelled"
    assert models_of(factory, claim.job_id) == 0


def test_fail_keeps_the_history_and_cuts_the_message(factory: sessionmaker[Session]) -> None:
    claim = running(factory)
    assert lifecycle.record_epoch(factory, claim, 1, 0.5, None) is False
    lifecycle.fail(factory, claim, "x" * 5000)
    job = job_row(factory, claim.job_id)
    assert job.status == "failed" and job.error == "x" * lifecycle.MAX_ERROR_LENGTH
    assert job.finished_at is not None and epochs_of(factory, claim.job_id) == [1]


# -- the maintenance loop -----------------------------------------------------------------------


def test_reaper_hands_back_a_job_the_claim_then_restarts(factory: sessionmaker[Session]) -> None:
    lost = running(factory)
    assert lifecycle.record_epoch(factory, lost, 1, 0.5, None) is False
    set_fields(factory, lost.job_id, heartbeat_at=utcnow() - STALE)
    assert lifecycle.reap(factory, SETTINGS).get(lost.job_id) == "requeued"
    assert lifecycle.record_epoch(factory, lost, 2, 0.4, None) is None  # fenced out
    assert lifecycle.claim(factory, lost.job_id, SETTINGS) == Claim(lost.job_id, 2)
    assert epochs_of(factory, lost.job_id) == []


def test_fail_timed_out(factory: sessionmaker[Session]) -> None:
    claim = running(factory)
    assert lifecycle.fail_timed_out(factory, claim.job_id, SETTINGS)
    job = job_row(factory, claim.job_id)
    assert job.error == "time limit exceeded (hard limit 7 s); partial history kept"
    assert not lifecycle.fail_timed_out(factory, claim.job_id, SETTINGS)


# -- webhooks: every final transition records its deliveries in its own transaction -----------


def subscribe(factory: sessionmaker[Session], owner: str = DEFAULT_OWNER) -> str:
    """A webhook of `owner`'s subscribed to every event, made before any job here ends."""
    with session_scope(factory) as session:
        hook = Webhook(
            owner=owner,
            url="http://hooks.example/trainyard",
            events=sorted(WEBHOOK_EVENTS),
            secret="s" * 24,
            created_at=utcnow() - timedelta(minutes=1),
        )
        session.add(hook)
        session.flush()
        return hook.id


def recorded(factory: sessionmaker[Session], subject_id: str) -> list[WebhookDelivery]:
    """The deliveries recorded about a job (or sweep)."""
    with session_scope(factory) as session:
        query = sa.select(WebhookDelivery).where(WebhookDelivery.subject_id == subject_id)
        rows = list(session.scalars(query))
        session.expunge_all()
        return rows


def events_of(factory: sessionmaker[Session], subject_id: str) -> list[str]:
    """The events recorded about the subject: each a first attempt, `pending`, unpublished (the
    outbox: whoever made the change publishes them after its commit)."""
    rows = recorded(factory, subject_id)
    assert all((r.attempt, r.status, r.published_at) == (1, "pending", None) for r in rows)
    return sorted(r.event for r in rows)


def model_of(factory: sessionmaker[Session], job_id: str) -> dict[str, Any]:
    return {"dataset_id": job_row(factory, job_id).dataset_id, "architecture": {},
            "weights": b"", "graph_svg": "", "metrics": {}}  # fmt: skip


def test_an_attempts_end_records_its_deliveries(factory: sessionmaker[Session]) -> None:
    """`succeed`, `fail`, `cancel_attempt`: the job's final status and its `job.<status>`
    deliveries commit together; no announce or scan is needed for them to exist."""
    subscribe(factory)
    subscribe(factory, owner="someone else")  # not the jobs' owner: nothing for it
    done, broken, stopped, late = (running(factory) for _ in range(4))
    model = model_of(factory, done.job_id)
    assert lifecycle.succeed(factory, done, results={"epoch": 1}, model=model) == "succeeded"
    lifecycle.fail(factory, broken, "it broke")
    lifecycle.cancel_attempt(factory, stopped, "early_termination", 1)
    assert events_of(factory, done.job_id) == ["job.succeeded"]
    assert events_of(factory, broken.job_id) == ["job.failed"]
    assert events_of(factory, stopped.job_id) == ["job.cancelled"]
    # the body is the job as it ended, its model (inserted in the same transaction) named
    (row,) = recorded(factory, done.job_id)
    event = json.loads(row.payload)
    assert event["type"] == "job.succeeded" and event["data"]["job"]["status"] == "succeeded"
    assert event["data"]["job"]["model_id"] is not None
    (row,) = recorded(factory, broken.job_id)
    assert json.loads(row.payload)["data"]["job"]["error"] == "it broke"

    # a write that no longer owns the job ends nothing, and records nothing
    set_fields(factory, late.job_id, heartbeat_at=utcnow() - STALE)
    assert lifecycle.claim(factory, late.job_id, SETTINGS) == Claim(late.job_id, 2)
    lifecycle.fail(factory, late, "too late")
    model = model_of(factory, late.job_id)
    assert lifecycle.succeed(factory, late, results={}, model=model) == "lost"
    assert events_of(factory, late.job_id) == []
    # ending it twice records it once
    lifecycle.fail(factory, broken, "again")
    assert events_of(factory, broken.job_id) == ["job.failed"]


def test_the_api_cancel_records_job_cancelled_in_its_transaction(
    factory: sessionmaker[Session],
) -> None:
    subscribe(factory, owner="alice")
    queued = add_job(factory, owner="alice")
    claim = running(factory, owner="alice")
    with factory() as session:
        assert lifecycle.cancel(session, queued, "alice") == CancelResult(True)
        assert lifecycle.cancel(session, claim.job_id, "alice") == CancelResult(True)
    assert events_of(factory, queued) == ["job.cancelled"]
    assert events_of(factory, claim.job_id) == []  # still running: asked to stop
    assert lifecycle.cancel_attempt(factory, claim) == "cancelled"
    assert events_of(factory, claim.job_id) == ["job.cancelled"]
    # a cancelled job whose flag a delivery sees before it ever ran (`claim`)
    flagged = add_job(factory, owner="alice", cancel_requested=True)
    assert lifecycle.claim(factory, flagged, SETTINGS) == "cancelled"
    assert events_of(factory, flagged) == ["job.cancelled"]


def test_lost_and_timed_out_jobs_record_theirs_when_they_end(
    factory: sessionmaker[Session],
) -> None:
    """The reaper, a delivery that finds a lost worker's job (`claim`) and the hard time limit
    (`fail_timed_out`) end jobs in the maintenance loop or a new delivery: their deliveries are
    recorded in that transaction, not left for the scan."""
    subscribe(factory)
    stale = utcnow() - STALE
    lost = add_job(factory, status="running", attempts=3, heartbeat_at=stale)
    flagged = add_job(
        factory, status="running", attempts=1, heartbeat_at=stale, cancel_requested=True
    )
    requeued = add_job(factory, status="running", attempts=1, heartbeat_at=stale)
    outcomes = lifecycle.reap(factory, SETTINGS)
    assert [outcomes[i] for i in (lost, flagged, requeued)] == ["failed", "cancelled", "requeued"]
    assert events_of(factory, lost) == ["job.failed"]
    assert events_of(factory, flagged) == ["job.cancelled"]
    assert events_of(factory, requeued) == []  # back in the queue: it has not ended

    taken_over = add_job(factory, status="running", attempts=3, heartbeat_at=stale)
    assert lifecycle.claim(factory, taken_over, SETTINGS) == "failed"
    assert events_of(factory, taken_over) == ["job.failed"]

    timed_out = running(factory)
    assert lifecycle.fail_timed_out(factory, timed_out.job_id, SETTINGS)
    (row,) = recorded(factory, timed_out.job_id)
    assert row.event == "job.failed"
    assert json.loads(row.payload)["data"]["job"]["error"].startswith("time limit exceeded")


def test_cancel_trials_records_each_cancelled_trial(factory: sessionmaker[Session]) -> None:
    subscribe(factory, owner="dana")
    sweep_id, ids = held_trials(factory, 3)
    with session_scope(factory) as session:
        lifecycle.start_trials(session, sweep_id, 1, utcnow())
    assert isinstance(lifecycle.claim(factory, ids[0], SETTINGS), Claim)
    with factory() as session:
        assert lifecycle.cancel_trials(session, sweep_id, utcnow()) == 1
        session.rollback()  # the caller's transaction: nothing of it stays
    assert [events_of(factory, i) for i in ids] == [[], [], []]
    assert all(job_row(factory, i).status != "cancelled" for i in ids)
    with session_scope(factory) as session:
        assert lifecycle.cancel_trials(session, sweep_id, utcnow()) == 1
    assert [events_of(factory, i) for i in ids] == [[], ["job.cancelled"], ["job.cancelled"]]


def _fail_after(real: Callable[..., Any]) -> Callable[..., Any]:
    """`real`, then a database error: the transaction fails after the deliveries were written."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise sa.exc.OperationalError("COMMIT", {}, Exception("the database went away"))

    return broken


def test_a_final_transition_rolled_back_leaves_no_delivery(
    factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deliveries are written in the transaction of the change: when it rolls back, so do
    they (and a retry, or the scan, records them once the change is made)."""
    subscribe(factory)
    subscribe(factory, owner="alice")
    claim = running(factory)
    stale = running(factory)
    set_fields(factory, stale.job_id, heartbeat_at=utcnow() - STALE, attempts=3)
    queued = add_job(factory, owner="alice")
    monkeypatch.setattr(lifecycle, "job_ended", _fail_after(lifecycle.job_ended))

    with pytest.raises(sa.exc.OperationalError):
        lifecycle.fail(factory, claim, "it broke")
    with pytest.raises(sa.exc.OperationalError):
        lifecycle.fail_timed_out(factory, claim.job_id, SETTINGS)
    with pytest.raises(sa.exc.OperationalError):
        lifecycle.reap(factory, SETTINGS)
    with factory() as session, pytest.raises(sa.exc.OperationalError):
        lifecycle.cancel(session, queued, "alice")
    assert [job_row(factory, i).status for i in (claim.job_id, stale.job_id, queued)] == [
        "running", "running", "queued",
    ]  # fmt: skip
    with session_scope(factory) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(WebhookDelivery)) == 0

    monkeypatch.undo()  # the retry: ends it, and records its deliveries with it
    lifecycle.fail(factory, claim, "it broke")
    assert events_of(factory, claim.job_id) == ["job.failed"]


def test_a_fault_in_the_recording_never_keeps_a_job_from_ending(
    factory: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not the database but the webhooks' own code fails (a bug, a row it cannot render): the
    recording alone is undone (a savepoint), the jobs end, the reaper finishes its pass, and
    the outbox's scan records the deliveries later."""
    subscribe(factory)
    subscribe(factory, owner="alice")
    claim = running(factory)
    stale = [running(factory) for _ in range(2)]
    for lost in stale:
        set_fields(factory, lost.job_id, heartbeat_at=utcnow() - STALE, attempts=3)
    queued = add_job(factory, owner="alice")

    def broken(session: Session, job_id: str) -> list[str]:
        outbox.job_ended(session, job_id)  # writes its rows, then fails: they are undone
        raise ValueError("cannot render the event")

    monkeypatch.setattr(lifecycle, "job_ended", broken)
    lifecycle.fail(factory, claim, "it broke")
    assert lifecycle.reap(factory, SETTINGS) == {lost.job_id: "failed" for lost in stale}
    with factory() as session:
        assert lifecycle.cancel(session, queued, "alice").done
        session.commit()
    ids = [claim.job_id, *(lost.job_id for lost in stale), queued]
    assert [job_row(factory, i).status for i in ids] == ["failed", "failed", "failed", "cancelled"]
    assert [events_of(factory, i) for i in ids] == [[], [], [], []]
    assert caplog.text.count("left to the outbox scan") == 4

    monkeypatch.undo()
    assert outbox.scan(factory, Celery("t", broker="memory://"), SETTINGS)["created"] == 4
    assert [sorted(r.event for r in recorded(factory, i)) for i in ids] == [
        ["job.failed"], ["job.failed"], ["job.failed"], ["job.cancelled"],
    ]  # fmt: skip


# -- messages and settings ----------------------------------------------------------------------


def test_time_limit_messages() -> None:
    assert lifecycle.time_limit_error(5.0) == "time limit exceeded (5 s); partial history kept"
    assert lifecycle.time_limit_error(7.5, hard=True) == (
        "time limit exceeded (hard limit 7.5 s); partial history kept"
    )
    assert lifecycle.time_limit_error(None) == "time limit exceeded; partial history kept"
    assert lifecycle.time_limit_error(0, hard=True) == "time limit exceeded; partial history kept"


def test_settings_round_trip_through_the_flask_config() -> None:
    settings = dataclasses.replace(Settings(), stale_after=2.0, max_attempts=5)
    config = {**settings.as_flask_config(), "MAX_ATTEMPTS": 7, "OTHER": "ignored"}
    assert Settings.from_flask_config(config) == dataclasses.replace(settings, max_attempts=7)


def test_succeed_leaves_the_state_columns_to_the_lifecycle(
    factory: sessionmaker[Session],
) -> None:
    claim = running(factory)
    with pytest.raises(ValueError, match="attempts"):
        lifecycle.succeed(factory, claim, results={"attempts": 9}, model={})
    assert job_row(factory, claim.job_id).status == "running"
