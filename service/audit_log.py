"""The audit log's rows (`service.tables.AuditEntry`), read and aged out: an owner's page of
entries, an entry as the API shows it, the retention sweep. No Flask here (the workers' maintenance
imports it); the hook that writes the rows is `service.audit`'s."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.db import iso_utc, paginate, utcnow
from service.tables import AuditEntry


def list_entries(
    session: Session,
    owner: str,
    page: int,
    page_size: int,
    action: str | None = None,
    key_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[AuditEntry], int]:
    """One page of `owner`'s entries, newest first; `action` matches exactly or, ending in
    `.*` or naming a resource (`job`), every action of that resource."""
    query = sa.select(AuditEntry).where(AuditEntry.owner == owner)
    if action:
        prefix = action.removesuffix(".*").removesuffix(".")
        query = query.where(
            sa.or_(AuditEntry.action == action, AuditEntry.action.startswith(prefix + "."))
        )
    if key_id:
        query = query.where(AuditEntry.key_id == key_id)
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    if until is not None:
        query = query.where(AuditEntry.at < until)
    return paginate(session, query.order_by(AuditEntry.id.desc()), page, page_size)


def serialize_entry(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": iso_utc(entry.at),
        "owner": entry.owner,
        "key_id": entry.key_id,
        "method": entry.method,
        "route": entry.route,
        "action": entry.action,
        "resource_ids": entry.resource_ids or {},
        "status_code": entry.status_code,
        "request_id": entry.request_id,
    }


def purge_expired(session: Session, retention_days: float) -> int:
    """Delete entries older than `retention_days` (the only delete of this table); 0 days
    keeps them all. Returns how many went."""
    if retention_days <= 0:
        return 0
    cutoff = utcnow() - timedelta(days=retention_days)
    result = session.execute(sa.delete(AuditEntry).where(AuditEntry.at < cutoff))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
