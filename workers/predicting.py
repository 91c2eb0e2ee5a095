"""The Celery task of a predict job (batch predictions): thin glue between the job row, the
dataset store and `service.predictions` (its `BatchPredictor`).

It runs through `workers.tasks.run_job` like a training job (claim, take-over of a lost
worker's job, the heartbeat thread, the soft time limit, a failure ending the job `failed`),
with `run_predict` in place of training:

1. Reads the model and where the dataset is (`service.predictions.load`), and deletes the
   parts earlier attempts of the job left (a lost worker's).
2. Reads the dataset's feature columns a row group at a time, predicts each (float32 network,
   NumPy and Arrow only: no Python per row) and writes the predictions as Parquet parts under
   `{store}/predictions/{job_id}/{attempt}/` (`DatasetWriter`, prefix `PREDICTIONS`): memory
   holds a row group or two, whatever the table's size.
3. At most every `PROGRESS_EVERY_S` seconds, between chunks, records the rows done
   (`lifecycle.record_progress`, which also beats the heart and reads the cancel flag): a
   cancel stops the attempt there, and so does a lost claim (taken over, handed back).
4. Ends `succeeded` with the rows, the parts' folder and size (`lifecycle.succeed`), or
   `cancelled`; a cancelled, failed or lost attempt deletes the parts it wrote.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import shared_task
from sqlalchemy.orm import Session, sessionmaker

from core.preprocessing import MissingValueError
from core.table import TableError
from service import lifecycle, predictions
from service.config import Settings
from service.dataset_store import PREDICTIONS, store_for
from service.db import session_scope
from service.lifecycle import PREDICT_TASK, Claim
from service.predictions import BatchPredictor
from workers import tasks
from workers.runtime import SoftLimit, with_db_retry

log = logging.getLogger(__name__)

#: Rows done are recorded (and the cancel flag read) at most this often, in seconds.
PROGRESS_EVERY_S = 1.0


@shared_task(name=PREDICT_TASK, bind=True, ignore_result=True, max_retries=None)
def predict_job(self: Any, job_id: str) -> str:
    """Run predict job `job_id`; the outcome is in the store (the return value is for logs)."""
    return tasks.run_task(self, job_id, run_predict)


def run_predict(
    factory: sessionmaker[Session], claim: Claim, soft_limit: SoftLimit, settings: Settings
) -> str:
    """One attempt at a predict job (see the module's docstring); returns the outcome."""
    job_id = claim.job_id

    def load() -> predictions.PredictInput:
        with session_scope(factory) as session:
            return predictions.load(session, job_id)

    source = with_db_retry(load, f"job {job_id} load")
    store = store_for(settings.store_url)
    store.delete(job_id, PREDICTIONS)  # what earlier attempts left
    predict = BatchPredictor(source.model)
    writer = store.writer(predictions.output_key(job_id, claim.attempt), PREDICTIONS)
    done, looked = 0, time.monotonic()
    try:
        with writer:
            for table in predictions.read_input(source):
                tasks._exit_if_stopping(claim)
                soft_limit.check()
                try:
                    writer.write(predict(table))
                except MissingValueError as exc:
                    raise tasks.JobError(
                        f"row {done + exc.row + 1}, column {exc.column!r} is missing, and the "
                        'model was trained with preprocessing.missing "error"'
                    ) from None
                except TableError as exc:
                    raise tasks.JobError(f"the dataset does not fit the model: {exc}") from None
                done += table.n_rows
                if time.monotonic() - looked >= PROGRESS_EVERY_S:
                    looked = time.monotonic()
                    cancel = with_db_retry(
                        lambda rows=done: lifecycle.record_progress(factory, claim, rows),
                        f"job {job_id} progress",
                    )
                    if cancel is not False:
                        writer.abort()
                        if cancel is None:  # taken over or handed back: write nothing more
                            return "lost"
                        return with_db_retry(
                            lambda: lifecycle.cancel_attempt(factory, claim), f"job {job_id} cancel"
                        )
            stored = writer.commit()
    except BaseException:
        writer.abort()  # a failed attempt frees its parts (the `with` did, unless it committed)
        raise
    results = {
        "rows_done": stored.n_rows,
        "output_location": stored.location,
        "output_bytes": stored.n_bytes,
    }
    outcome = with_db_retry(
        lambda: lifecycle.succeed(factory, claim, results=results), f"job {job_id} save"
    )
    if outcome != "succeeded":  # cancelled meanwhile, or lost: its parts are no one's
        writer.abort()
    log.info("job %s: %s rows predicted: %s", job_id, stored.n_rows, outcome)
    return outcome
