"""Webhook deliveries, sent by the workers (`service.webhooks` has the rules).

- The task `trainyard.deliver_webhook` (its only argument a delivery id) sends one attempt
  (`webhooks.deliver`: claim, POST with a deadline, record) and, when it failed with attempts
  left, publishes the next one with the backoff as its countdown.
- `WebhookScan`, a daemon thread in every worker's main process (started on `worker_ready`, like
  the maintenance loop, every `TRAINYARD_MAINTENANCE_INTERVAL` seconds; 0 turns it off), runs
  `webhooks.scan`: records the deliveries of recently finished jobs that have none yet and
  publishes due attempts whose message was never sent, was lost, or whose worker was lost. A
  job's final status reaches its webhooks however it ended (its worker, the reaper, a cancel
  from the API) and whichever process was lost on the way.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Any

from celery import Celery, shared_task
from celery.signals import worker_ready, worker_shutdown
from flask import Flask, current_app
from sqlalchemy.orm import Session, sessionmaker

from service import webhooks
from service.config import Settings
from service.db import make_engine, make_sessionmaker
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


class WebhookScan:
    """The periodic `webhooks.scan` of one worker's main process (a daemon thread)."""

    def __init__(self, flask_app: Flask, celery: Celery) -> None:
        self.settings = Settings.from_flask_config(flask_app.config)
        self.celery = celery
        self._factory: sessionmaker[Session] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def factory(self) -> sessionmaker[Session]:
        if self._factory is None:
            self._factory = make_sessionmaker(make_engine(self.settings.database_url))
        return self._factory

    def scan(self) -> dict[str, int]:
        return webhooks.scan(self.factory, self.celery, self.settings)

    def start(self) -> None:
        if self.settings.maintenance_interval <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="trainyard-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        interval = self.settings.maintenance_interval
        wait = random.uniform(0.1, 0.5) * interval
        while not self._stop.wait(wait):
            try:
                done = self.scan()
                if any(done.values()):
                    log.info("webhooks: %s", done)
            except Exception:
                log.warning("webhook scan failed; trying again later", exc_info=True)
            wait = interval * random.uniform(0.8, 1.2)


def install(flask_app: Flask, celery: Celery) -> WebhookScan:
    """Run the scan in this worker's main process once it is ready."""
    scan = WebhookScan(flask_app, celery)

    def on_ready(**_: Any) -> None:
        scan.start()

    def on_shutdown(**_: Any) -> None:
        scan.stop()

    worker_ready.connect(on_ready, weak=False)
    worker_shutdown.connect(on_shutdown, weak=False)
    return scan
