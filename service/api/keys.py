"""The caller's owner's API keys: list, create, rotate, revoke."""

from __future__ import annotations

from typing import Any

from flask import Response
from flask.views import MethodView
from marshmallow import RAISE

from service import api_keys, audit
from service.api import Blueprint, db, json_only, page
from service.auth import current_key, current_owner
from service.schemas import (
    ApiKeyInSchema,
    ApiKeyPageSchema,
    ErrorSchema,
    NewApiKeySchema,
    PageQuerySchema,
)

blp = Blueprint("keys", __name__, url_prefix="/keys", description="API keys of the caller's owner.")


@blp.route("")
class Keys(MethodView):
    @blp.arguments(PageQuerySchema, location="query", unknown=RAISE)
    @blp.response(200, ApiKeyPageSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """List the owner's keys, oldest first, revoked ones included: id, name, prefix,
        scope, created_at, last_used_at (to the minute), expires_at, revoked_at; never a
        secret. Paginated with `page` and `page_size`."""
        rows, total = api_keys.list_keys(db(), current_owner(), query["page"], query["page_size"])
        return page([api_keys.serialize_key(r) for r in rows], total, query)

    @json_only
    @blp.arguments(ApiKeyInSchema)
    @blp.response(201, NewApiKeySchema)
    @blp.alt_response(403, schema=ErrorSchema, description="A scope wider than the caller's.")
    @blp.alt_response(422, schema=ErrorSchema, description="An expiry in the past or too late.")
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """Create a key for the caller's owner; the answer's `key` is shown this once.

        Its `scope` is at most the calling key's (a `read` key makes no keys at all: 403); a
        calling key with an expiry makes keys expiring no later (its own expiry by default).
        """
        row, secret = api_keys.new_key(db(), current_owner(), current_key(), data)
        return {**api_keys.serialize_key(row), "key": secret}


@blp.route("/<key_id>")
class KeyById(MethodView):
    @blp.response(204)
    @blp.alt_response(404, schema=ErrorSchema, description="No such key (or another owner's).")
    def delete(self, key_id: str) -> Response:
        """Revoke a key (the calling one too): every later request with it is a 401. Revoking
        a revoked key is a 204 again and keeps the first `revoked_at`."""
        audit.note("key.revoke")
        session = db()
        api_keys.revoke_key(session, api_keys.get_key(session, key_id, current_owner()))
        return Response(status=204)


@blp.route("/<key_id>/rotate", methods=["POST"])
@blp.response(201, NewApiKeySchema)
@blp.alt_response(404, schema=ErrorSchema, description="No such key (or another owner's).")
@blp.alt_response(409, schema=ErrorSchema, description="The key is revoked or expired.")
def rotate(key_id: str) -> dict[str, Any]:
    """Rotate a key: a new key (a new id and secret, shown this once) with the old one's name,
    scope and expiry, and the old one revoked, in one transaction."""
    session = db()
    row, secret = api_keys.rotate_key(session, api_keys.get_key(session, key_id, current_owner()))
    return {**api_keys.serialize_key(row), "key": secret}
