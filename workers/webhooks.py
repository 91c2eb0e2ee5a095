"""Webhook deliveries, sent by the workers (`service.webhooks` has the rules).

- The task `trainyard.deliver_webhook` (its only argument a delivery id) sends one attempt
  (`webhooks.deliver`: claim, POST with a deadline, record) and, when it failed with attempts
  left, publishes the next one with the backoff as its countdown.
- `announce`, called by the training task once its job has ended: records the deliveries of
  the job's final status (and of its sweep's end) and publishes them at once.
- The safety net is the maintenance loop's `webhooks.scan` (`workers.maintenance`): jobs and
  sweeps that ended without deliveries (a lost worker, a cancel from the API, a sweep's end)
  get them, and due attempts whose message was lost are published again. A job's final status
  reaches its webhooks however it ended and whichever process was lost on the way.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from celery import Celery, shared_task
from flask import current_app
from sqlalchemy.orm import Session, sessionmaker

from service import webhooks
from service.config import Settings
from service.tables import FINAL_STATUSES, Job
from service.webhooks import DELIVER_TASK
from workers.runtime import session_factory, with_db_retry

log = logging.getLogger(__name__)


@shared_task(name=DELIVER_TASK, bind=True, ignore_result=True)
def deliver_webhook(self: Any, delivery_id: str) -> str:
    """Send delivery attempt `delivery_id`; the outcome is in the store."""
    settings = Settings.from_flask_config(current_app.config)
    factory = session_factory(settings.database_url)
    outcome = with_db_retry(
        lambda: webhooks.deliver(factory, delivery_id, settings), f"delivery {delivery_id}"
    )
    if outcome.next_id is not None:
        webhooks.publish(factory, self.app, [outcome.next_id], countdown=outcome.countdown)
    return outcome.status


def announce(factory: sessionmaker[Session], celery: Celery, job_id: str) -> list[str]:
    """Right after this worker ended job `job_id`: record the deliveries of its final status
    (and of its sweep's end, if that came with it) and publish them. Never raises: whatever
    fails here, the maintenance loop's scan does later. Returns the delivery ids published."""
    try:
        with factory() as session:
            row = session.execute(
                sa.select(Job.status, Job.sweep_id).where(Job.id == job_id)
            ).first()
        if row is None or row.status not in FINAL_STATUSES:
            return []
        made = with_db_retry(
            lambda: webhooks.enqueue_for_job(factory, job_id, row.status), f"job {job_id} hooks"
        )
        if row.sweep_id is not None:
            made += with_db_retry(
                lambda: webhooks.enqueue_for_sweep(factory, row.sweep_id), f"job {job_id} sweep"
            )
        webhooks.publish(factory, celery, made)
        return made
    except Exception:
        log.warning("job %s: webhook deliveries left to the scan", job_id, exc_info=True)
        return []
