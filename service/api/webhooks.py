"""Webhooks: subscribe a URL to job (and sweep) events; see each delivery attempt.

The rules are `service.webhooks`' (and, for signatures, retries and which addresses may be
called, `service.webhook_signing`, `service.webhook_delivery` and `service.webhook_urls`).
"""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, url_for
from flask.views import MethodView
from marshmallow import RAISE, Schema, fields, validate

from service import webhooks
from service.api import Blueprint, db, json_only, page
from service.auth import current_owner
from service.config import Settings
from service.problems import ApiError, InputError
from service.schemas import NO_NUL, ErrorSchema, PageQuerySchema, page_of
from service.webhook_models import DELIVERY_STATUSES, WEBHOOK_EVENTS
from service.webhook_urls import MAX_URL_LENGTH, UrlRefused

blp = Blueprint(
    "webhooks",
    __name__,
    url_prefix="/webhooks",
    description="Webhooks: job, sweep and registry events POSTed to your URL, signed.",
)


class WebhookInSchema(Schema):
    url = fields.String(
        required=True,
        validate=[validate.Length(min=1, max=MAX_URL_LENGTH), NO_NUL],
        metadata={
            "description": "An `http://` or `https://` URL. Hosts that resolve to private, "
            "loopback or link-local addresses are refused unless "
            "`TRAINYARD_WEBHOOKS_ALLOW_PRIVATE` allows them (the embedded mode does).",
            "example": "https://example.com/hooks/trainyard",
        },
    )
    events = fields.List(
        fields.String(validate=validate.OneOf(WEBHOOK_EVENTS)),
        required=True,
        validate=validate.Length(min=1, max=len(WEBHOOK_EVENTS)),
        metadata={"example": ["job.succeeded", "job.failed"]},
    )
    secret = fields.String(
        validate=[validate.Length(min=16, max=200), NO_NUL],
        metadata={
            "description": "Signs every delivery (`X-Trainyard-Signature`); generated when "
            "left out. Shown only in the answer to this request."
        },
    )


class WebhookSchema(Schema):
    id = fields.String()
    url = fields.String()
    events = fields.List(fields.String(metadata={"enum": list(WEBHOOK_EVENTS)}))
    created_at = fields.DateTime()


class WebhookCreatedSchema(WebhookSchema):
    secret = fields.String(
        metadata={"description": "The signing secret (shown in this answer only)."}
    )


class DeliverySchema(Schema):
    id = fields.String()
    event = fields.String(metadata={"enum": list(WEBHOOK_EVENTS)})
    event_id = fields.String(
        metadata={"description": "The same for every attempt (`X-Trainyard-Event-Id`)."}
    )
    subject_id = fields.String(
        metadata={"description": "The job, sweep or (registry.alias_moved) alias move it is about."}
    )
    attempt = fields.Integer(metadata={"description": "From 1."})
    status = fields.String(metadata={"enum": list(DELIVERY_STATUSES)})
    status_code = fields.Integer(allow_none=True, metadata={"description": "The answer's."})
    error = fields.String(allow_none=True)
    duration_ms = fields.Float(allow_none=True)
    created_at = fields.DateTime()
    next_attempt_at = fields.DateTime(metadata={"description": "When it is (was) due."})
    sent_at = fields.DateTime(allow_none=True)


WebhookPageSchema = page_of(WebhookSchema, "WebhookPage")
DeliveryPageSchema = page_of(DeliverySchema, "DeliveryPage")


def _settings() -> Settings:
    return Settings.from_flask_config(current_app.config)


def _webhook(webhook_id: str) -> Any:
    webhook = webhooks.get_webhook(db(), webhook_id, current_owner())
    if webhook is None:
        raise ApiError(404, f"No webhook with id {webhook_id!r}.")
    return webhook


@blp.route("")
class Webhooks(MethodView):
    @blp.arguments(PageQuerySchema, location="query", unknown=RAISE)
    @blp.response(200, WebhookPageSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """List your webhooks, newest first (paginated with `page` and `page_size`)."""
        session = db()
        rows, total = webhooks.list_webhooks(
            session, current_owner(), query["page"], query["page_size"]
        )
        return page([webhooks.serialize_webhook(w) for w in rows], total, query)

    @json_only
    @blp.arguments(WebhookInSchema)
    @blp.response(201, WebhookCreatedSchema, headers={"Location": {"schema": {"type": "string"}}})
    @blp.alt_response(415, schema=ErrorSchema, description="The body is not JSON.")
    @blp.alt_response(422, schema=ErrorSchema, description="A URL that may not be called.")
    def post(self, data: dict[str, Any]) -> Response:
        """Subscribe `url` to `events` (`job.succeeded`, `job.failed`, `job.cancelled`,
        `sweep.finished`).

        Each event is POSTed as JSON (`{"id", "type", "created_at", "data"}`) by a worker, with
        `X-Trainyard-Timestamp` (unix seconds) and `X-Trainyard-Signature: sha256=<hex
        HMAC-SHA256 of "<timestamp>.<body>" with the secret>`; reject old timestamps to stop
        replays. A delivery that does not get a `2xx` within `TRAINYARD_WEBHOOK_TIMEOUT` seconds
        is tried again with exponential backoff, up to `TRAINYARD_WEBHOOK_MAX_ATTEMPTS` times.
        """
        session = db()
        try:
            webhook = webhooks.create_webhook(
                session,
                current_owner(),
                data["url"],
                data["events"],
                data.get("secret"),
                _settings(),
            )
        except UrlRefused as exc:
            raise InputError("url", str(exc)) from None
        session.commit()
        body = webhooks.serialize_webhook(webhook, with_secret=True)
        response = current_app.json.response(body)
        response.status_code = 201
        response.headers["Location"] = url_for("webhooks.WebhookById", webhook_id=webhook.id)
        return response


@blp.route("/<webhook_id>")
class WebhookById(MethodView):
    @blp.response(200, WebhookSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such webhook.")
    def get(self, webhook_id: str) -> dict[str, Any]:
        """A webhook (its secret is never shown again)."""
        return webhooks.serialize_webhook(_webhook(webhook_id))

    @blp.response(204)
    @blp.alt_response(404, schema=ErrorSchema, description="No such webhook.")
    def delete(self, webhook_id: str) -> Response:
        """Delete a webhook and its deliveries; nothing more is sent to it."""
        if not webhooks.delete_webhook(db(), webhook_id, current_owner()):
            raise ApiError(404, f"No webhook with id {webhook_id!r}.")
        return Response(status=204)


@blp.route("/<webhook_id>/deliveries")
@blp.arguments(PageQuerySchema, location="query", unknown=RAISE)
@blp.response(200, DeliveryPageSchema)
@blp.alt_response(404, schema=ErrorSchema, description="No such webhook.")
def deliveries(query: dict[str, Any], webhook_id: str) -> dict[str, Any]:
    """A webhook's delivery attempts, newest first: event, attempt, `pending` / `succeeded` /
    `failed`, the answer's status code or the error, how long it took."""
    webhook = _webhook(webhook_id)
    rows, total = webhooks.list_deliveries(db(), webhook.id, query["page"], query["page_size"])
    return page([webhooks.serialize_delivery(d) for d in rows], total, query)
