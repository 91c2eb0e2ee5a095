"""The audit log of the caller's owner: who changed what, when, with which outcome."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE

from service import audit_log
from service.api import Blueprint, db, page
from service.auth import current_owner
from service.schemas import AuditPageSchema, AuditQuerySchema

blp = Blueprint("audit", __name__, url_prefix="/audit", description="The audit log.")


@blp.route("")
@blp.arguments(AuditQuerySchema, location="query", unknown=RAISE)
@blp.response(200, AuditPageSchema)
def list_audit(query: dict[str, Any]) -> dict[str, Any]:
    """Page through the owner's audit log, newest first: one entry per mutating request
    (`POST`, `PUT`, `PATCH`, `DELETE`), failed ones included, with its key, method, route
    pattern, `action` (`dataset.create`, `job.cancel`, `key.rotate`...), the resources' ids,
    `status_code` and `X-Request-Id`. A resumable upload's chunks are not entries: its
    creation, completion and termination are.

    Filters: `action` (exact, or a resource such as `job` for all of its actions), `key_id`,
    `since` and `until` (ISO 8601). Paginated with `page` and `page_size`. Another owner's
    entries are never shown.
    """
    rows, total = audit_log.list_entries(
        db(),
        current_owner(),
        query["page"],
        query["page_size"],
        action=query.get("action"),
        key_id=query.get("key_id"),
        since=query.get("since"),
        until=query.get("until"),
    )
    return page([audit_log.serialize_entry(r) for r in rows], total, query)
