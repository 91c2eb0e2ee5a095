"""Hyperparameter sweeps: submit, poll, list, cancel, label."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, url_for
from flask.views import MethodView
from marshmallow import RAISE

from service import deletion, sweeps
from service.api import Blueprint, db, json_only, limits, page
from service.auth import current_owner
from service.idempotency import HEADER_DOC, Idempotency
from service.schemas import (
    ErrorSchema,
    LabelInSchema,
    SweepInSchema,
    SweepPageQuerySchema,
    SweepPageSchema,
    SweepSchema,
)

blp = Blueprint(
    "sweeps",
    __name__,
    url_prefix="/sweeps",
    description="Hyperparameter sweeps: one spec and the values to try; the trials are jobs.",
)


@blp.route("")
class Sweeps(MethodView):
    @blp.arguments(SweepPageQuerySchema, location="query", unknown=RAISE)
    @blp.response(200, SweepPageSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """List sweeps, newest first (progress and best trial; `GET /sweeps/{id}` has the
        trials), optionally by `status` and `tag=key:value`. Paginated as `GET /jobs`."""
        session = db()
        rows, total = sweeps.list_sweeps(
            session,
            current_owner(),
            query["page"],
            query["page_size"],
            query.get("status"),
            query.get("tag"),
        )
        return page(sweeps.serialize_sweeps(session, rows, with_trials=False), total, query)

    @json_only
    @blp.arguments(SweepInSchema)
    @blp.doc(parameters=[HEADER_DOC])
    @blp.response(202, SweepSchema, headers={"Location": {"schema": {"type": "string"}}})
    @blp.alt_response(404, schema=ErrorSchema, description="No such dataset (`dataset_id`).")
    @blp.alt_response(413, schema=ErrorSchema, description="Over the stored-bytes quota.")
    @blp.alt_response(429, schema=ErrorSchema, description="At the active-jobs quota.")
    @blp.alt_response(
        422,
        schema=ErrorSchema,
        description="A parameter that is not a spec field, a trial the job API would refuse "
        "(the field named: `parameters.<path>` or `base.<path>`), a grid over the limit, random "
        "without `max_trials`, an unknown metric, or an `Idempotency-Key` reused.",
    )
    def post(self, data: dict[str, Any]) -> Response:
        """Submit a sweep: `base` (what `POST /jobs` takes) and the `parameters` to try.

        `grid` tries every combination of the `values` (at most `TRAINYARD_MAX_SWEEP_TRIALS`,
        or the first `max_trials`); `random` draws `max_trials` trials (`seed` for the same
        draws again). Every trial is validated as a job before anything is stored; the trials
        are stored as jobs (`GET /jobs?sweep_id=`), and up to `max_parallel` at a time are
        queued for the workers. The answer is `202` at once.
        """
        session, owner = db(), current_owner()
        idempotency = Idempotency(session, owner)
        replayed = idempotency.replay()
        if replayed is not None:
            return replayed
        sweep = sweeps.create_sweep(session, data, limits(), owner)
        location = url_for("sweeps.SweepById", sweep_id=sweep.id)
        body = sweeps.serialize_sweep(session, sweep)
        response, first = idempotency.commit(body, 202, location)
        if first:
            factory = current_app.extensions["db_sessionmaker"]
            sweeps.advance(factory, current_app.extensions["celery"], sweep.id, limits())
        return response


@blp.route("/<sweep_id>")
class SweepById(MethodView):
    @blp.response(200, SweepSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such sweep.")
    def get(self, sweep_id: str) -> dict[str, Any]:
        """Poll a sweep: status, progress, every trial with its metric, the best trial."""
        session = db()
        return sweeps.serialize_sweep(session, sweeps.get_sweep(session, sweep_id, current_owner()))

    @json_only
    @blp.arguments(LabelInSchema)
    @blp.response(200, SweepSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such sweep.")
    def patch(self, data: dict[str, Any], sweep_id: str) -> dict[str, Any]:
        """Set a sweep's `name` and/or `tags` (`tags` replaces all of them; null clears)."""
        session = db()
        sweep = sweeps.label_sweep(session, sweep_id, current_owner(), data)
        return sweeps.serialize_sweep(session, sweep)

    @blp.response(204)
    @blp.alt_response(404, schema=ErrorSchema, description="No such sweep (or deleted).")
    @blp.alt_response(
        409,
        schema=ErrorSchema,
        description="Queued or running (`still_active`: cancel it first), or a trial's model "
        "is registered (`model_registered`).",
    )
    def delete(self, sweep_id: str) -> Response:
        """Delete a finished sweep with its trials (jobs) and their models: `404` from then on
        for all of them. Webhooks get `model.deleted` for each model. A second `DELETE` is a
        `404`."""
        session = db()
        subjects = deletion.delete_sweep(session, sweep_id, current_owner())
        session.commit()
        deletion.publish(session, current_app.extensions.get("celery"), subjects)
        return Response(status=204)


@blp.route("/<sweep_id>/cancel", methods=["POST"])
@blp.response(200, SweepSchema, description="Cancelled, or its running trials asked to stop.")
@blp.alt_response(404, schema=ErrorSchema, description="No such sweep.")
@blp.alt_response(409, schema=ErrorSchema, description="The sweep is already finished.")
def cancel(sweep_id: str) -> dict[str, Any]:
    """Cancel a sweep: trials not started never start, running ones stop at their next epoch
    (`cancelled`); the sweep is `cancelled` once none runs."""
    session, celery = db(), current_app.extensions["celery"]
    sweep = sweeps.cancel_sweep(session, sweep_id, current_owner(), celery)
    return sweeps.serialize_sweep(session, sweep)


SWEEP_STREAM_DOC = (
    "`text/event-stream`: `event: status` (`data:` the sweep as `GET /sweeps/{id}` gives it) "
    "first and on every change of status; `event: trial.started` / `trial.finished` (`data: "
    '{"job_id", "index", "params", ...}`) as trials start and end; `event: best` when the best '
    "trial changes; `: keep-alive` comments when idle. The stream ends after the final status."
)


@blp.route("/<sweep_id>/events")
@blp.response(200, description=SWEEP_STREAM_DOC, content_type="text/event-stream")
@blp.alt_response(404, schema=ErrorSchema, description="No such sweep.")
def sweep_events(sweep_id: str) -> Response:
    """Stream a sweep's events (server-sent events) until it is finished.

    A finished sweep replays its trials, best and final status, then the stream ends; a client
    that reconnects gets the sweep's state again (events carry no ids). Read from the store
    every second, whichever workers run the trials.
    """
    from service.config import Settings
    from service.events import hub_for
    from service.sweep_events import sweep_stream

    session = db()
    sweep_id = sweeps.get_sweep(session, sweep_id, current_owner()).id  # 404 before streaming
    session.close()
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    settings = Settings.from_flask_config(app.config)
    stream = sweep_stream(
        app.extensions["db_sessionmaker"], sweep_id, settings,
        closing=hub_for(app.extensions, settings).closing,  # ends when the server stops
    )  # fmt: skip
    return Response(
        stream,
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
