"""An owner's API keys over the API (`/api/v1/keys`): list, create, rotate, revoke.

A key acts for its own owner only, and never gives more than it has: a new key's scope is at
most the caller's (`read` < `write`), and a caller with an expiry makes keys that expire no
later than it does (its own expiry unless one is given). Rotating makes a new key with the old
one's name, scope and expiry and revokes the old one in the same transaction: the new key has
a new id, so the audit log tells the two secrets apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.auth import SCOPES, create_api_key, hash_key, is_expired
from service.db import iso_utc, paginate, utcnow
from service.problems import ApiError, InputError
from service.tables import ApiKey, is_id


def serialize_key(key: ApiKey) -> dict[str, Any]:
    """A key as the API shows it: never its secret (nor its hash)."""
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "scope": key.scope,
        "created_at": iso_utc(key.created_at),
        "last_used_at": iso_utc(key.last_used_at),
        "expires_at": iso_utc(key.expires_at),
        "revoked_at": iso_utc(key.revoked_at),
    }


def list_keys(session: Session, owner: str, page: int, page_size: int) -> tuple[list[ApiKey], int]:
    query = sa.select(ApiKey).where(ApiKey.owner == owner).order_by(ApiKey.created_at, ApiKey.id)
    return paginate(session, query, page, page_size)


def get_key(session: Session, key_id: str, owner: str) -> ApiKey:
    key = session.get(ApiKey, key_id) if is_id(key_id) else None
    if key is None or key.owner != owner:
        raise ApiError(404, f"No API key with id {key_id!r}.")
    return key


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def new_key(
    session: Session,
    owner: str,
    caller: tuple[str, str, datetime | None],
    data: dict[str, Any],
) -> tuple[ApiKey, str]:
    """Make a key for `owner` as the calling key (`(id, scope, expires_at)`) may; committed.
    Returns the row and the plaintext key (shown once)."""
    caller_id, caller_scope, caller_expires = caller
    scope = data.get("scope") or caller_scope
    if SCOPES.index(scope) > SCOPES.index(caller_scope):
        raise ApiError(
            403,
            f"A key of scope `{caller_scope}` cannot make a key of scope `{scope}`.",
            code="forbidden",
        )
    expires_at, limit = _aware(data.get("expires_at")), _aware(caller_expires)
    if expires_at is not None and expires_at <= utcnow():
        raise InputError("expires_at", "is in the past")
    if limit is not None:
        if expires_at is not None and expires_at > limit:
            raise InputError("expires_at", f"is after the calling key's own expiry ({limit})")
        expires_at = expires_at or limit
    # the new key keeps the calling key's own quotas: a key cannot make itself a way around them
    parent = session.get(ApiKey, caller_id)
    secret = create_api_key(
        session, owner, data.get("name") or "", scope, expires_at, **_quotas(parent)
    )
    session.commit()
    return _by_secret(session, secret), secret


def _quotas(key: ApiKey | None) -> dict[str, int | None]:
    """A key's own quotas (`service.quotas`), for a key made from it."""
    if key is None:
        return {}
    return {"quota_bytes": key.quota_bytes, "max_active_jobs": key.max_active_jobs}


def rotate_key(session: Session, key: ApiKey) -> tuple[ApiKey, str]:
    """A new key with `key`'s owner, name, scope, expiry and quotas; `key` revoked. One transaction:
    committed. A revoked or expired key cannot be rotated (409)."""
    if key.revoked_at is not None or is_expired(key):
        state = "revoked" if key.revoked_at is not None else "expired"
        raise ApiError(409, f"The key is {state}: create a new one.", code="conflict")
    updated = session.execute(
        sa.update(ApiKey)
        .where(ApiKey.id == key.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if updated.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise ApiError(409, "The key was revoked meanwhile.", code="conflict")
    secret = create_api_key(session, key.owner, key.name, key.scope, key.expires_at, **_quotas(key))
    session.commit()
    return _by_secret(session, secret), secret


def revoke_key(session: Session, key: ApiKey) -> None:
    """Revoke (idempotent: a second revoke keeps the first time); committed."""
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.commit()


def _by_secret(session: Session, secret: str) -> ApiKey:
    return session.scalars(sa.select(ApiKey).where(ApiKey.key_hash == hash_key(secret))).one()
