"""Webhook deliveries, sent by the workers (`service.webhook_delivery` has the rules,
`service.outbox` records and publishes them).

- The task `trainyard.deliver_webhook` (its only argument a delivery id) sends one attempt
  (`webhook_delivery.deliver`: claim, POST with a deadline, record) and, when it failed with
  attempts left, publishes the next one with the backoff as its countdown.
- `announce`, called by the training task once its job has ended: publishes the deliveries
  that the job's end recorded in its own transaction (`service.lifecycle`; and its sweep's
  end's), recording any that are missing (`outbox.job_ended`).
- The safety net is the maintenance loop's `outbox.scan` (`workers.maintenance`): deliveries
  whose publish was lost (a broker down, a process lost between the commit and the publish)
  are published, any that were never recorded are, and due attempts whose message was lost
  are published again. A job's final status
  reaches its webhooks however it ended and whichever process was lost on the way.
- `WaitingSender`, also driven by the maintenance loop: attempts still waiting a few seconds
  after they were due (their message is queued behind training jobs, and no worker is free)
  are sent from threads of the worker's main process.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import Celery, shared_task
from sqlalchemy.orm import Session, sessionmaker

from service import outbox, webhook_delivery
from service.config import Settings
from service.webhook_delivery import DELIVER_TASK
from workers.context import context_of
from workers.runtime import with_db_retry

log = logging.getLogger(__name__)

#: Threads of a worker's main process that send waiting attempts (`WaitingSender`).
SENDER_THREADS = 4


@shared_task(name=DELIVER_TASK, bind=True, ignore_result=True)
def deliver_webhook(self: Any, delivery_id: str) -> str:
    """Send delivery attempt `delivery_id`; the outcome is in the store."""
    context = context_of(self.app)
    return send(context.factory, self.app, delivery_id, context.settings)


def send(
    factory: sessionmaker[Session], celery: Celery, delivery_id: str, settings: Settings
) -> str:
    """Send one attempt (`webhook_delivery.deliver`) and publish the next one, if it failed with
    attempts left, with the backoff as its countdown; the attempt's outcome."""
    outcome = with_db_retry(
        lambda: webhook_delivery.deliver(factory, delivery_id, settings),
        f"delivery {delivery_id}",
    )
    if outcome.next_id is not None:
        outbox.publish(factory, celery, [outcome.next_id], countdown=outcome.countdown)
    return outcome.status


class WaitingSender:
    """In a worker's main process: sends the attempts that wait behind busy workers
    (`webhook_delivery.waiting`) from `SENDER_THREADS` threads, so that a receiver that hangs
    costs one of them one timeout and the maintenance loop that calls `send_waiting` never
    waits."""

    def __init__(self, factory: sessionmaker[Session], celery: Celery, settings: Settings) -> None:
        self.factory = factory
        self.celery = celery
        self.settings = settings
        self._pool = ThreadPoolExecutor(SENDER_THREADS, thread_name_prefix="trainyard-webhooks")
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()

    def send_waiting(self) -> list[str]:
        """Start sending every waiting attempt not already being sent here; their ids."""
        started = []
        for delivery_id in webhook_delivery.waiting(self.factory, self.settings):
            with self._lock:
                if delivery_id in self._in_flight:
                    continue
                self._in_flight.add(delivery_id)
            self._pool.submit(self._send, delivery_id)
            started.append(delivery_id)
        return started

    def _send(self, delivery_id: str) -> None:
        try:
            send(self.factory, self.celery, delivery_id, self.settings)
        except Exception:
            log.warning("webhook delivery %s: sending failed; left to the next pass", delivery_id,
                        exc_info=True)  # fmt: skip
        finally:
            with self._lock:
                self._in_flight.discard(delivery_id)

    def idle(self) -> bool:
        """Nothing is being sent (tests)."""
        with self._lock:
            return not self._in_flight

    def close(self) -> None:
        """Start nothing more; an attempt being sent ends within its timeout."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def announce(factory: sessionmaker[Session], celery: Celery, job_id: str) -> list[str]:
    """Right after this worker ended job `job_id`: record the deliveries of its final status
    (and of its sweep's end, if that came with it) and publish them. Never raises: whatever
    fails here, the maintenance loop's scan does later. Returns the delivery ids published."""
    try:
        made = with_db_retry(lambda: outbox.job_ended(factory, job_id), f"job {job_id} hooks")
        sent = outbox.publish(factory, celery, made)
        return made[:sent]
    except Exception:
        log.warning("job %s: webhook deliveries left to the scan", job_id, exc_info=True)
        return []
