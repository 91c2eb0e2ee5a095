"""Live events: `GET /jobs/{id}/events`, a job's server-sent-events stream (`service.events`),
and `GET /jobs/{id}/history?since_epoch=N`, the epochs a client is missing."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app
from marshmallow import EXCLUDE, RAISE, Schema, fields, validate

from service import events, jobs
from service.api import Blueprint, db
from service.auth import current_owner
from service.config import Settings
from service.schemas import ErrorSchema

blp = Blueprint("events", __name__, url_prefix="/jobs", description="Live events of jobs.")

MAX_EVENT_ID = 1_000_000_000

STREAM_DOC = (
    '`text/event-stream`: `event: epoch` (`id:` the epoch, `data: {"epoch", "loss", '
    '"val_loss"}`) per finished epoch; `event: status` (`data:` the job as `GET /jobs/{id}` '
    "gives it) on every change of status; `: keep-alive` comments when idle. The stream ends "
    "after the final status."
)


class EventsQuerySchema(Schema):
    last_event_id = fields.Integer(
        validate=validate.Range(min=0, max=MAX_EVENT_ID),
        metadata={"description": "As the `Last-Event-ID` header (which wins when both are set)."},
    )


class EventsHeaderSchema(Schema):
    last_event_id = fields.Integer(
        data_key="Last-Event-ID",
        validate=validate.Range(min=0, max=MAX_EVENT_ID),
        metadata={
            "description": "Resume after this epoch (what a reconnecting `EventSource` sends)."
        },
    )


@blp.route("/<job_id>/events")
@blp.arguments(EventsQuerySchema, location="query", unknown=RAISE)
@blp.arguments(EventsHeaderSchema, location="headers", unknown=EXCLUDE)
@blp.doc(
    responses={
        "200": {
            "description": STREAM_DOC,
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    },
)
@blp.response(200, description=STREAM_DOC, content_type="text/event-stream")
@blp.alt_response(404, schema=ErrorSchema, description="No such job.")
@blp.alt_response(422, schema=ErrorSchema, description="A malformed `Last-Event-ID`.")
def job_events(query: dict[str, Any], headers: dict[str, Any], job_id: str) -> Response:
    """Stream a job's events (server-sent events) until it is finished.

    One `epoch` event per finished epoch (its `id` is the epoch) and a `status` event on every
    status change, carrying the whole job; the stream ends after the final status. A finished
    job replays its epochs and final status, then the stream ends. With `Last-Event-ID: N` the
    stream resumes after epoch N (nothing is sent twice). Comments (`: keep-alive`) keep idle
    connections open. Events come from the store, whichever worker trains the job.
    """
    after = int(headers.get("last_event_id", query.get("last_event_id", 0)))
    session = db()
    job = jobs.get_job(session, job_id, current_owner())  # 404 before anything streams
    job_id = job.id
    session.close()
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    settings = Settings.from_flask_config(app.config)
    hub = events.hub_for(app.extensions, settings)
    stream = events.job_stream(
        app.extensions["db_sessionmaker"], hub, job_id, settings, last_event_id=after
    )
    return Response(
        stream,
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class HistoryQuerySchema(Schema):
    since_epoch = fields.Integer(
        load_default=0,
        validate=validate.Range(min=0, max=MAX_EVENT_ID),
        metadata={"description": "Only the epochs after this one (0: all)."},
    )


class EpochSchema(Schema):
    epoch = fields.Integer()
    loss = fields.Float(allow_none=True)
    val_loss = fields.Float(allow_none=True)


class HistorySchema(Schema):
    job_id = fields.String()
    attempts = fields.Integer(
        metadata={"description": "The attempt these epochs belong to (a new one starts over)."}
    )
    epochs = fields.List(fields.Nested(EpochSchema))


@blp.route("/<job_id>/history")
@blp.arguments(HistoryQuerySchema, location="query", unknown=RAISE)
@blp.response(200, HistorySchema)
@blp.alt_response(404, schema=ErrorSchema, description="No such job.")
def job_history(query: dict[str, Any], job_id: str) -> dict[str, Any]:
    """A job's finished epochs after `since_epoch` (`{"epoch", "loss", "val_loss"}` each): what a
    client that has the first N is missing, without the whole job."""
    session = db()
    job = jobs.get_job(session, job_id, current_owner())
    epochs = jobs.history_since(session, job.id, query["since_epoch"])
    return {"job_id": job.id, "attempts": job.attempts, "epochs": events.finite_epochs(epochs)}
