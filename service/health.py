"""Readiness checks: is the database reachable, is the broker reachable."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from celery import Celery
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

BROKER_TIMEOUT_S = 2.0


def check_database(session: Session) -> str:
    try:
        session.execute(sa.text("SELECT 1"))
    except Exception as exc:
        log.warning("database check failed: %s", exc)
        session.rollback()
        return f"error: {type(exc).__name__}"
    return "ok"


def check_broker(celery: Celery) -> str:
    try:
        with celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT_S)
    except Exception as exc:
        log.warning("broker check failed: %s", exc)
        return f"error: {type(exc).__name__}"
    return "ok"
