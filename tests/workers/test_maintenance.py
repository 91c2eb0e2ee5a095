"""The maintenance loop's sweeps against real databases (SQLite file and PostgreSQL) and a real
broker (the filesystem transport of the embedded mode): the reaper, the reconciler (both in
`service.lifecycle`, as `workers.maintenance` runs them), hard time limits.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from service.celery import celery_config
from service.config import Settings
from service.db import session_scope, utcnow
from service.lifecycle import fail_timed_out, reap, reconcile
from service.tables import IdempotentRequest, Job
from tests.workers.test_tasks import add_job, job_row
from workers.maintenance import sweep

SETTINGS = dataclasses.replace(
    Settings(), maintenance_interval=1.0, stale_after=30.0, republish_after=60.0, max_attempts=3
)
LONG_AGO = timedelta(minutes=10)


def broker(url: str) -> Celery:
    settings = dataclasses.replace(Settings(), broker_url=url)
    app = Celery("maintenance-test", set_as_current=False)
    app.config_from_object(celery_config(settings))
    return app


def messages(folder: Path) -> int:
    return len(list((folder / "queue").iterdir()))


def test_reaper_hands_back_fails_or_cancels_stale_jobs(factory: sessionmaker[Session]) -> None:
    stale = utcnow() - LONG_AGO
    lost_once = add_job(factory, status="running", attempts=1, heartbeat_at=stale)
    lost_often = add_job(factory, status="running", attempts=3, heartbeat_at=stale)
    cancelled = add_job(
        factory, status="running", attempts=1, heartbeat_at=stale, cancel_requested=True
    )
    alive = add_job(factory, status="running", attempts=1, heartbeat_at=utcnow())
    queued = add_job(factory)

    # (the PostgreSQL database is shared with other tests: only this test's jobs are looked at)
    mine = {lost_once, lost_often, cancelled, alive, queued}
    outcomes = {k: v for k, v in reap(factory, SETTINGS).items() if k in mine}
    assert outcomes == {lost_once: "requeued", lost_often: "failed", cancelled: "cancelled"}
    job = job_row(factory, lost_once)
    assert (job.status, job.attempts, job.published_at, job.heartbeat_at) == (
        "queued", 1, None, None,
    )  # fmt: skip
    job = job_row(factory, lost_often)
    assert job.status == "failed" and "lost 3 times" in (job.error or "")
    assert job_row(factory, cancelled).status == "cancelled"
    assert job_row(factory, alive).status == "running"
    assert job_row(factory, queued).status == "queued"
    # a second sweep (another worker's) finds nothing left to do
    assert not set(reap(factory, SETTINGS)) & mine


def test_reaper_leaves_an_attempt_that_beat_again(factory: sessionmaker[Session]) -> None:
    stale = utcnow() - LONG_AGO
    job_id = add_job(factory, status="running", attempts=1, heartbeat_at=stale)
    later = dataclasses.replace(SETTINGS, stale_after=30.0)
    with session_scope(factory) as session:  # the attempt writes a heartbeat just in time
        session.execute(sa.update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow()))
    assert job_id not in reap(factory, later)
    assert job_row(factory, job_id).status == "running"


def test_reconciler_publishes_lost_and_unpublished_jobs(
    factory: sessionmaker[Session], tmp_path: Path
) -> None:
    celery = broker(f"filesystem://{tmp_path.as_posix()}")
    old = utcnow() - LONG_AGO
    never = add_job(factory, created_at=old)
    lost = add_job(factory, created_at=old, published_at=old)
    just_submitted = add_job(factory)
    recently = add_job(factory, created_at=old, published_at=utcnow())
    running = add_job(factory, status="running", created_at=old, heartbeat_at=utcnow())

    published = reconcile(factory, celery, SETTINGS)
    mine = {never, lost, just_submitted, recently, running}
    assert set(published) & mine == {never, lost}
    assert messages(tmp_path) == len(published)
    for job_id in (never, lost):
        at = job_row(factory, job_id).published_at
        assert at is not None and utcnow() - at.replace(tzinfo=utcnow().tzinfo) < timedelta(
            minutes=1
        )
    assert job_row(factory, just_submitted).published_at is None
    assert job_row(factory, running).status == "running"
    assert job_row(factory, recently).published_at is not None
    # the next sweep (this or another worker) does not publish them again
    assert not set(reconcile(factory, celery, SETTINGS)) & mine
    assert messages(tmp_path) == len(published)


def test_reconciler_with_the_broker_down_keeps_the_job_for_later(
    factory: sessionmaker[Session],
) -> None:
    celery = broker("redis://127.0.0.1:9/0")  # nothing listens on port 9
    job_id = add_job(factory, created_at=utcnow() - LONG_AGO)
    assert job_id not in reconcile(factory, celery, SETTINGS)
    assert job_row(factory, job_id).published_at is None  # tried again at the next sweep


def test_hard_time_limit_fails_a_running_job_only(factory: sessionmaker[Session]) -> None:
    running = add_job(factory, status="running", attempts=1, heartbeat_at=utcnow())
    finished = add_job(factory, status="succeeded", attempts=1)
    hard_limit = dataclasses.replace(SETTINGS, task_time_limit=2.0)
    assert fail_timed_out(factory, running, hard_limit)
    job = job_row(factory, running)
    assert job.status == "failed"
    assert job.error == "time limit exceeded (hard limit 2 s); partial history kept"
    assert not fail_timed_out(factory, finished, hard_limit)
    assert job_row(factory, finished).status == "succeeded"


def test_sweep_forgets_expired_idempotent_answers(
    factory: sessionmaker[Session], tmp_path: Path
) -> None:
    with session_scope(factory) as session:
        for key, age in (("old", timedelta(days=2)), ("new", timedelta(minutes=5))):
            session.add(
                IdempotentRequest(
                    owner="o", key=key, fingerprint="f" * 64, status_code=202, body="{}",
                    created_at=utcnow() - age,
                )
            )  # fmt: skip
    sweep(factory, broker(f"filesystem://{tmp_path.as_posix()}"), SETTINGS)
    with factory() as session:
        keys = session.scalars(sa.select(IdempotentRequest.key)).all()
    assert keys == ["new"]
