"""The Celery task of an import job (a dataset by reference): thin glue between the job row and
`service.imports`.

It runs through `workers.tasks.run_job` like every job (claim, take-over, heartbeat thread,
soft time limit, failure), with `run_import` in place of training: the source is read into the
store as a new dataset (`service.imports.ingest`, the uploads' own typing and storing), the
bytes or rows read recorded at most every `PROGRESS_EVERY_S` seconds (which also reads the
cancel flag: a cancel stops the read there, and nothing stays stored), and the dataset's row
is added in the transaction that ends the job `succeeded` with its `dataset_id`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

from celery import shared_task
from sqlalchemy.orm import Session, sessionmaker

from service import datasets, imports, lifecycle
from service.config import Settings
from service.dataset_store import store_for
from service.db import session_scope
from service.lifecycle import IMPORT_TASK, Claim
from service.problems import ApiError
from service.tables import Job, new_id
from workers import tasks
from workers.runtime import SoftLimit, with_db_retry

log = logging.getLogger(__name__)

#: Progress is recorded (and the cancel flag read) at most this often, in seconds.
PROGRESS_EVERY_S = 1.0


class _Stop(Exception):
    """The attempt must stop reading: "cancelled", or "lost" (it no longer owns the job)."""


@shared_task(name=IMPORT_TASK, bind=True, ignore_result=True, max_retries=None)
def import_dataset(self: Any, job_id: str) -> str:
    """Run import job `job_id`; the outcome is in the store (the return value is for logs)."""
    return tasks.run_task(self, job_id, run_import)


def run_import(
    factory: sessionmaker[Session], claim: Claim, soft_limit: SoftLimit, settings: Settings
) -> str:
    """One attempt at an import job (see the module's docstring); returns the outcome."""
    job_id = claim.job_id

    def load() -> dict[str, Any]:
        with session_scope(factory) as session:
            job = session.get(Job, job_id)
            if job is None or job.kind != "import" or job.source is None:
                raise ValueError(f"job {job_id} is not an import job")
            return {"source": job.source, "import_options": job.import_options, "owner": job.owner}

    job = with_db_retry(load, f"job {job_id} load")
    looked = time.monotonic()
    seen = [0]  # the source's total (bytes or rows), once known

    def on_progress(done: int, total: int) -> None:
        nonlocal looked
        seen[0] = total
        tasks._exit_if_stopping(claim)
        soft_limit.check()
        if time.monotonic() - looked < PROGRESS_EVERY_S:
            return
        looked = time.monotonic()
        cancel = with_db_retry(
            lambda: lifecycle.record_progress(factory, claim, done, total),
            f"job {job_id} progress",
        )
        if cancel is not False:
            raise _Stop("lost" if cancel is None else "cancelled")

    store = store_for(settings.store_url)
    dataset_id = new_id()
    try:
        facts, stored = imports.ingest(job, settings.limits, store, dataset_id, on_progress)
    except _Stop as stop:  # the ingest deleted what it had stored
        if str(stop) == "lost":
            return "lost"
        return with_db_retry(
            lambda: lifecycle.cancel_attempt(factory, claim), f"job {job_id} cancel"
        )
    except ApiError as exc:  # the source's fault: the job fails with the message
        detail = "; ".join(f"{k}: {v}" for k, v in (exc.fields or {}).items())
        raise tasks.JobError(detail or exc.message) from None

    def made(session: Session) -> None:
        facts_of = datasets.DatasetFacts(**asdict(facts))
        datasets.create_dataset(session, facts_of, stored, job["owner"], dataset_id)

    results = {"dataset_id": dataset_id, "rows_done": seen[0], "rows_total": seen[0]}
    outcome = with_db_retry(
        lambda: lifecycle.succeed(factory, claim, results=results, made=made),
        f"job {job_id} save",
    )
    if outcome != "succeeded":  # cancelled meanwhile, or lost: the rows are no one's
        store.delete(dataset_id)
    log.info("job %s: %s rows imported as dataset %s: %s", job_id, stored.n_rows, dataset_id,
             outcome)  # fmt: skip
    return outcome
