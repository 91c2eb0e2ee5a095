"""The Celery task: thin glue between a job row in the SQL store and `core.training`.

The store, not Celery, holds the job's state, and every change of it is a function of
`service.lifecycle` (whose docstring is the job's state diagram). The task receives only the job
id and:

1. **Claims** the job (`lifecycle.claim`): a queued job becomes this delivery's running attempt;
   a second delivery of the same message finds nothing to claim. A job found `running` with a
   stale heartbeat (its worker was lost) is taken over as a fresh attempt, or failed after
   `MAX_ATTEMPTS`; one with a fresh heartbeat ("busy": a duplicate of a live attempt, or a
   worker that died seconds ago) is not run: the task re-schedules itself (`retry` after
   `STALE_AFTER` seconds) and looks again, until the job is finished or the heartbeat is stale.
2. Loads the dataset and trains (`workers.training.train`); per epoch, `lifecycle.record_epoch`
   appends the epoch, moves the heartbeat forward and reads the cancel flag. A heartbeat thread
   (`workers.runtime.Heartbeat`) keeps the job alive between epochs. An attempt that was taken
   over (fenced by `attempts`) stops at its next epoch. During early stopping's refit (no
   epoch is recorded) the task looks for a cancel every `REFIT_LOOK_S` seconds
   (`lifecycle.heartbeat`), and the soft time limit stops the refit: the model early stopping
   selected is saved.
3. Saves the trained model and `succeeded` in one transaction (`lifecycle.succeed`). Every
   failure (bad data, divergence, soft time limit, any exception) ends the job `failed` with a
   message (`lifecycle.fail`); the task itself never raises. The one exception: a pool process
   told to stop (a cold shutdown's SIGTERM) fails nothing, since the error may be the stop
   itself; it exits, and the job's message goes back to the queue (`runtime.stopping`).
   The attempt also exits at its next epoch (or refit step) once the process was told to stop:
   a library can swallow the stop's `SystemExit` (pyarrow's lazy import of pandas did).
4. Retries every store write whose database connection broke (`workers.runtime.with_db_retry`),
   so a cut connection costs a pause, not the job.
5. For a sweep's trial (`service.sweeps`): marks the sweep running when it starts, applies the
   sweep's median rule after each epoch (a trial worse than the median stops, `cancelled`
   with `stop_reason` `early_termination`), and once the trial has ended starts the sweep's
   next trials at once (`sweeps.advance`, published from this process); a worker lost before
   that step leaves it to every worker's maintenance loop.
6. Once the job (and perhaps its sweep) has ended, publishes the webhook deliveries its end
   recorded in the same transaction (`workers.webhooks.announce`; the maintenance loop's scan
   catches any it could not).

Lost workers whose message never comes back, hard time limits and lost messages are handled by
`workers.maintenance` (reaper, reconciler) in the worker's main process.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.orm import Session, sessionmaker

from core.model import weights_to_npz
from core.training import TrainingError, TrainResult, train
from service import lifecycle, sweeps
from service.config import Settings
from service.datasets import StoredSource
from service.db import session_scope
from service.lifecycle import TRAIN_TASK, Claim
from service.tables import Dataset, Job, Sweep
from workers import webhooks
from workers.context import context_of
from workers.runtime import Heartbeat, SoftLimit, stopping, with_db_retry

log = logging.getLogger(__name__)

#: During a refit (no epoch is recorded) the attempt looks for a cancel this often, in seconds.
REFIT_LOOK_S = 1.0


class _Busy(Exception):
    """The job runs elsewhere with a fresh heartbeat: look again later."""


class JobError(Exception):
    """An attempt cannot go on for a reason its message says in full (the job fails with it,
    with no exception type in front)."""


@shared_task(name=TRAIN_TASK, bind=True, ignore_result=True, max_retries=None)
def train_job(self: Any, job_id: str) -> str:
    """Train job `job_id`; the outcome is in the store (the return value is for logs)."""
    return run_task(self, job_id, after=after_trial)


def run_task(
    task: Any,
    job_id: str,
    attempt: Attempt | None = None,
    after: Callable[[sessionmaker[Session], Any, str, Settings], None] | None = None,
) -> str:
    """The body of every job task: run the job (`attempt`, by default training), retried
    later when another worker holds it; then `after` (a sweep's next trials) and the
    announcement of its end."""
    context = context_of(task.app)
    settings, factory = context.settings, context.factory
    run: Runner | None = None
    if attempt is not None:

        def run(factory: sessionmaker[Session], claim: Claim, soft_limit: SoftLimit) -> str:
            return attempt(factory, claim, soft_limit, settings)

    try:
        outcome = run_job(factory, job_id, settings, run)
    except _Busy:
        log.info("job %s is running elsewhere; looking again in %ss", job_id, settings.stale_after)
        raise task.retry(countdown=settings.stale_after) from None
    if after is not None:
        after(factory, task.app, job_id, settings)
    webhooks.announce(factory, task.app, job_id)
    return outcome


def after_trial(
    factory: sessionmaker[Session], celery: Any, job_id: str, settings: Settings
) -> None:
    """If the job is a sweep's trial, start the sweep's next trials now (or end the sweep)."""
    try:
        trial = with_db_retry(lambda: sweeps.trial_of(factory, job_id), f"job {job_id} sweep")
        if trial is not None:
            sweeps.advance(factory, celery, trial[0], settings.limits)
    except Exception:
        # the maintenance loop advances the sweep later
        log.warning("job %s: could not advance its sweep", job_id, exc_info=True)


#: What runs a claimed attempt (`_run_claimed` trains; `workers.predicting` predicts).
Runner = Callable[[sessionmaker[Session], Claim, SoftLimit], str]
#: A kind's attempt (`workers.predicting.run_predict`, ...): a `Runner` given the settings.
Attempt = Callable[[sessionmaker[Session], Claim, SoftLimit, Settings], str]


def run_job(
    factory: sessionmaker[Session],
    job_id: str,
    settings: Settings,
    run: Runner | None = None,
) -> str:
    """Claim and run one job (`run`, by default training); returns the outcome. Raises
    `_Busy` only (see module doc). Every kind of job goes through here: the claim, the
    heartbeat thread, the soft time limit and the failure of an attempt are the same."""
    try:
        claim = with_db_retry(lambda: claim_job(factory, job_id, settings), f"job {job_id} claim")
    except _Busy:
        raise
    except Exception:
        log.exception("job %s: could not claim", job_id)
        return "error"
    if isinstance(claim, str):
        log.info("job %s: %s", job_id, claim)
        return claim

    heartbeat = Heartbeat(factory, claim, settings.heartbeat_interval)
    heartbeat.start()
    try:
        with SoftLimit() as soft_limit:
            return (run or _run_claimed)(factory, claim, soft_limit)
    except SoftTimeLimitExceeded:
        return _fail(factory, claim, lifecycle.time_limit_error(settings.task_soft_time_limit))
    except (TrainingError, JobError) as exc:
        return _fail(factory, claim, str(exc))
    except Exception as exc:
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        return _fail(factory, claim, f"{type(exc).__name__}: {exc}")
    finally:
        heartbeat.stop()


def claim_job(factory: sessionmaker[Session], job_id: str, settings: Settings) -> Claim | str:
    """`lifecycle.claim`, with "busy" raised as `_Busy` (the task retries later)."""
    claim = lifecycle.claim(factory, job_id, settings)
    if claim == "busy":
        raise _Busy(job_id)
    return claim


def _load(factory: sessionmaker[Session], claim: Claim) -> dict[str, Any]:
    """The job's specs and its dataset, as `_train` takes them."""
    with session_scope(factory) as session:
        job = session.get(Job, claim.job_id)
        assert job is not None
        dataset = session.get(Dataset, job.dataset_id)
        if dataset is None:
            raise ValueError(f"dataset {job.dataset_id} does not exist")
        model_spec, training_spec = dict(job.model_spec), dict(job.training_spec)
        source = StoredSource(dataset)  # the rows stream from the store as training reads them
        sweep = session.get(Sweep, job.sweep_id) if job.sweep_id else None
        return {
            "sweep_id": job.sweep_id,
            "early_termination": sweep.early_termination if sweep else None,
            "model_spec": model_spec,
            "training_spec": training_spec,
            "dataset_id": dataset.id,
            "source": source,
            "target_kind": dataset.target_kind,
            "classes": dataset.classes,
        }


def _train(
    loaded: dict[str, Any],
    on_epoch: Callable[[int, float, float | None], bool],
    on_refit_epoch: Callable[[int], bool] | None = None,
) -> TrainResult:
    """Run the training loop on what `_load` returned; `on_epoch` False stops it,
    `on_refit_epoch` False stops a refit (the early-stopped model is kept)."""
    return train(
        loaded["source"],
        None,
        loaded["model_spec"],
        loaded["training_spec"],
        target_kind=loaded["target_kind"],
        classes=loaded["classes"],
        on_epoch=on_epoch,
        on_refit_epoch=on_refit_epoch,
    )


def _job_results(result: TrainResult) -> dict[str, Any]:
    """What a successful run writes on the job row besides its status."""
    return {
        "epoch": len(result.loss_history),
        "metrics": result.metrics,
        "evaluation": result.evaluation,
        "best_epoch": result.best_epoch,
        "stopped_epoch": result.stopped_epoch,
        "stop_reason": result.stop_reason,
    }


def _model_row(loaded: dict[str, Any], result: TrainResult) -> dict[str, Any]:
    """The fields of the job's `TrainedModel` row (besides `job_id`)."""
    return {
        "dataset_id": loaded["dataset_id"],
        "architecture": result.architecture,
        "weights": weights_to_npz(result.state_dict),
        "graph_svg": result.graph_svg or "",
        "metrics": result.metrics,
        "evaluation": result.evaluation,
    }


def _run_claimed(factory: sessionmaker[Session], claim: Claim, soft_limit: SoftLimit) -> str:
    loaded = with_db_retry(lambda: _load(factory, claim), f"job {claim.job_id} load")
    sweep_id, rule = loaded["sweep_id"], loaded["early_termination"]
    if sweep_id is not None:
        with_db_retry(lambda: sweeps.mark_running(factory, sweep_id), f"sweep {sweep_id} running")
    lost = False
    terminated: int | None = None

    def on_epoch(epoch: int, loss: float, val_loss: float | None) -> bool:
        nonlocal lost, terminated
        _exit_if_stopping(claim)
        soft_limit.check()
        cancel = with_db_retry(
            lambda: lifecycle.record_epoch(factory, claim, epoch, loss, val_loss),
            f"job {claim.job_id} epoch {epoch}",
        )
        if cancel is None:  # taken over or handed back: write nothing more
            lost = True
        if cancel is False and sweep_id is not None and rule:
            why = with_db_retry(
                lambda: sweeps.should_terminate(factory, claim.job_id, sweep_id, epoch, rule),
                f"job {claim.job_id} median rule",
            )
            if why is not None:
                log.info("job %s: early termination: %s", claim.job_id, why)
                terminated = epoch
                return False
        return cancel is False

    refit_cancelled = False
    looked = time.monotonic()

    def on_refit_epoch(epoch: int) -> bool:
        nonlocal lost, refit_cancelled, looked
        _exit_if_stopping(claim)
        # The soft time limit during a refit: the model early stopping selected is complete
        # and evaluated; keep it rather than fail the job (or reach the hard limit: the refit
        # records no epoch, so nothing else checks the limit).
        if soft_limit.fired:
            return False
        # A refit lasts as long as the training did: a cancel (or a lost claim) is looked for
        # at most every REFIT_LOOK_S, one small UPDATE that also beats the heart.
        if time.monotonic() - looked < REFIT_LOOK_S:
            return True
        looked = time.monotonic()
        cancel = with_db_retry(
            lambda: lifecycle.heartbeat(factory, claim), f"job {claim.job_id} refit"
        )
        lost = lost or cancel is None
        refit_cancelled = cancel is True
        return cancel is False

    result = _train(loaded, on_epoch, on_refit_epoch)
    if result.refit_stopped_at is not None and soft_limit.fired:
        log.warning(
            "job %s: soft time limit during the refit (epoch %s of %s): saving the model early "
            "stopping selected", claim.job_id, result.refit_stopped_at, result.best_epoch,
        )  # fmt: skip
    if lost:
        return "lost"
    if refit_cancelled:
        return with_db_retry(
            lambda: lifecycle.cancel_attempt(factory, claim), f"job {claim.job_id} cancel"
        )
    if terminated is not None:
        stopped = terminated
        return with_db_retry(
            lambda: lifecycle.cancel_attempt(factory, claim, "early_termination", stopped),
            f"job {claim.job_id} early termination",
        )
    if not result.completed:
        return with_db_retry(
            lambda: lifecycle.cancel_attempt(factory, claim), f"job {claim.job_id} cancel"
        )
    results, model = _job_results(result), _model_row(loaded, result)
    return with_db_retry(
        lambda: lifecycle.succeed(factory, claim, results=results, model=model),
        f"job {claim.job_id} save",
    )


def _exit_if_stopping(claim: Claim) -> None:
    """Exit if this pool process was told to stop (a cold shutdown's terminate signal) and
    is still training: the signal's `SystemExit` was swallowed on its way (`runtime.preload`).
    The job stays the running attempt of a lost worker, for the next delivery or the reaper."""
    if stopping():
        log.warning(
            "job %s: the worker is stopping; leaving the job to the next attempt", claim.job_id
        )
        raise SystemExit(1)


def _fail(factory: sessionmaker[Session], claim: Claim, message: str) -> str:
    if stopping():
        # the error may be the stop itself (see `runtime.stopping`): the job stays the running
        # attempt of a lost worker, for the next delivery or the reaper
        log.warning("job %s: the worker is stopping; not failing it (%s)", claim.job_id, message)
        raise SystemExit(1)
    log.info("job %s failed: %s", claim.job_id, message)
    try:
        with_db_retry(
            lambda: lifecycle.fail(factory, claim, message), f"job {claim.job_id} failure"
        )
    except Exception:
        # The store is unreachable: the heartbeat goes stale and a later delivery takes over.
        log.exception("job %s: could not record the failure", claim.job_id)
        return "error"
    return "failed"
