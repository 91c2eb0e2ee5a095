"""Training jobs: submit, poll, list, cancel."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, url_for
from flask.views import MethodView
from marshmallow import RAISE

from service import deletion, jobs
from service.api import Blueprint, db, json_only, limits, page, store_url
from service.auth import current_owner
from service.idempotency import HEADER_DOC, Idempotency
from service.schemas import (
    ErrorSchema,
    JobInSchema,
    JobLabelInSchema,
    JobPageQuerySchema,
    JobPageSchema,
    JobSchema,
)

blp = Blueprint(
    "jobs", __name__, url_prefix="/jobs", description="Jobs: training and batch predictions."
)


@blp.route("")
class Jobs(MethodView):
    @blp.arguments(JobPageQuerySchema, location="query", unknown=RAISE)
    @blp.response(200, JobPageSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """List jobs, newest first, optionally only those with one `status`, `kind` (`train`,
        `predict`), `dataset_id`, `sweep_id` (a sweep's trials, in trial order) or
        `tag=key:value` (repeatable).

        Items leave out `loss_history` and `val_loss_history` unless `include=history`
        (`progress.loss` is the last epoch's loss either way).

        Paginated with `page` (from 1) and `page_size` (1 to 100); the body holds the page's
        `items` and `pagination` (`page`, `page_size`, `total`, `pages`).
        """
        session = db()
        rows, total = jobs.list_jobs(
            session,
            current_owner(),
            query["page"],
            query["page_size"],
            query.get("status"),
            tags=query.get("tag"),
            dataset_id=query.get("dataset_id"),
            sweep_id=query.get("sweep_id"),
            kind=query.get("kind"),
        )
        history = "history" in (query.get("include") or [])
        return page(jobs.serialize_jobs(session, rows, history=history), total, query)

    @json_only
    @blp.arguments(JobInSchema)
    @blp.doc(parameters=[HEADER_DOC])
    @blp.response(202, JobSchema, headers={"Location": {"schema": {"type": "string"}}})
    @blp.alt_response(404, schema=ErrorSchema, description="No such dataset (`dataset_id`).")
    @blp.alt_response(413, schema=ErrorSchema, description="Over the stored-bytes quota.")
    @blp.alt_response(429, schema=ErrorSchema, description="At the active-jobs quota.")
    @blp.alt_response(415, schema=ErrorSchema, description="The body is not JSON.")
    @blp.alt_response(
        422,
        schema=ErrorSchema,
        description="Invalid spec or data, or an `Idempotency-Key` reused.",
    )
    def post(self, data: dict[str, Any]) -> Response:
        """Submit a training job (`dataset_id`, or the data inline as `dataset`).

        Everything is validated before the job is stored. The job is committed as `queued`,
        then its id is published to the broker. If the broker cannot be reached the answer is
        still `202`: the job stays `queued` in the store until it is published again.
        With an `Idempotency-Key`, a retry gets the first answer and makes no second job.
        An owner may have `TRAINYARD_MAX_ACTIVE_JOBS` queued or running jobs (else `429`),
        and none while over its stored-bytes quota (`413`). `expires_at` (default: now +
        `TRAINYARD_RETENTION_DAYS` when set) is when the maintenance sweep deletes the job.
        """
        session, owner = db(), current_owner()
        idempotency = Idempotency(session, owner)
        replayed = idempotency.replay()
        if replayed is not None:
            return replayed
        if "expires_at" not in data:
            data["expires_at"] = deletion.default_expiry(current_app.config["RETENTION_DAYS"])
        job = jobs.create_job(session, data, limits(), owner, store_url())
        location = url_for("jobs.JobById", job_id=job.id)
        body = jobs.serialize_job(session, job)
        response, first = idempotency.commit(body, 202, location)
        if first:
            jobs.publish(session, current_app.extensions["celery"], job.id)
        return response


@blp.route("/<job_id>")
class JobById(MethodView):
    @blp.response(200, JobSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such job.")
    def get(self, job_id: str) -> dict[str, Any]:
        """Poll a job: status, progress and the loss of every finished epoch (a predict job: the
        rows done, and its `result` and `download_url` once it succeeded)."""
        session = db()
        return jobs.serialize_job(session, jobs.get_job(session, job_id, current_owner()))

    @json_only
    @blp.arguments(JobLabelInSchema)
    @blp.response(200, JobSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such job.")
    def patch(self, data: dict[str, Any], job_id: str) -> dict[str, Any]:
        """Set a job's `name`, `tags` (`tags` replaces all of them; null clears) and/or
        `expires_at` (when the maintenance sweep deletes it and its model; null: never)."""
        session = db()
        return jobs.serialize_job(session, jobs.label_job(session, job_id, current_owner(), data))

    @blp.response(204)
    @blp.alt_response(404, schema=ErrorSchema, description="No such job (or deleted).")
    @blp.alt_response(
        409,
        schema=ErrorSchema,
        description="Queued or running (`still_active`: cancel it first), a sweep's trial "
        "(`sweep_trial`: delete the sweep) or its model is registered (`model_registered`).",
    )
    def delete(self, job_id: str) -> Response:
        """Delete a finished job with its model, its epochs and its events: `404` from then on
        for the job, its model and everything under them. Webhooks get `model.deleted`. A
        second `DELETE` is a `404`."""
        session = db()
        subjects = deletion.delete_job(session, job_id, current_owner())
        session.commit()
        deletion.publish(session, current_app.extensions.get("celery"), subjects)
        return Response(status=204)


@blp.route("/<job_id>/cancel", methods=["POST"])
@blp.response(200, JobSchema, description="Cancelled (it was queued) or asked to stop.")
@blp.alt_response(404, schema=ErrorSchema, description="No such job.")
@blp.alt_response(409, schema=ErrorSchema, description="The job is already finished.")
def cancel(job_id: str) -> dict[str, Any]:
    """Cancel a job.

    A queued job is `cancelled` at once and never starts. A running one gets
    `cancel_requested: true` and stops at its next epoch boundary (a predict job: between two
    chunks of rows, its parts deleted), ending `cancelled`.
    """
    session, celery = db(), current_app.extensions["celery"]
    return jobs.serialize_job(session, jobs.cancel_job(session, job_id, current_owner(), celery))
