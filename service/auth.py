"""API keys: create, verify, revoke; the bearer check on every `/api/v1` route; the `keys` CLI.

A key is `ty_` + 43 URL-safe characters from `secrets.token_urlsafe(32)` (256 random bits).
Only its SHA-256 is stored: a slow password hash (bcrypt, argon2) protects guessable passwords
against brute force, which a 256-bit random key does not need; a plain SHA-256 lets a request be
checked with one indexed lookup by hash. Whoever reads the table cannot use what is in it.
`prefix` (the first 11 characters) is stored to tell keys apart in lists and logs.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import sqlalchemy as sa
from flask import Flask, current_app, g, request
from flask.cli import AppGroup
from sqlalchemy.orm import Session

from service import audit
from service.db import iso_utc, session_scope, utcnow
from service.problems import ApiError
from service.tables import KEY_SCOPES, ApiKey

KEY_PREFIX = "ty_"
DISPLAY_PREFIX_LENGTH = len(KEY_PREFIX) + 8

# Under the API prefix, only the OpenAPI document and the docs page (with its static files)
# answer without a key. Everything outside it (probes, the dashboard's static shell) is public.
PUBLIC_API_PATHS = ("/api/v1/openapi.json", "/api/v1/docs")

BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key: `Authorization: Bearer ty_...`. Create one with "
    "`flask --app service keys create --owner NAME` or `POST /api/v1/keys`; the embedded "
    "mode writes one to `var/api-key` on first start. A key of scope `read` gets `403` on "
    "every operation that changes something (`POST`, `PUT`, `PATCH`, `DELETE`, but for "
    "`predict` and `evaluate`); an expired key is a `401`.",
}


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


# A key's scope: `read` keys make no mutating request (403); `write` keys (the default, and
# every key made before scopes existed) make any.
SCOPES = KEY_SCOPES
DEFAULT_SCOPE = "write"
# `last_used_at` is written at most this often per key, not on every request
LAST_USED_RESOLUTION = timedelta(minutes=1)


def create_api_key(
    session: Session,
    owner: str,
    name: str = "",
    scope: str = DEFAULT_SCOPE,
    expires_at: datetime | None = None,
    *,
    quota_bytes: int | None = None,
    max_active_jobs: int | None = None,
) -> str:
    """Add a key for `owner` (flushed, not committed); return the plaintext key, shown once.
    `quota_bytes` and `max_active_jobs`: the key's own quotas (`service.quotas`)."""
    if not owner or len(owner) > 200:
        raise ValueError("owner must be 1 to 200 characters")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKey(
            owner=owner,
            name=name[:200],
            key_hash=hash_key(key),
            prefix=key[:DISPLAY_PREFIX_LENGTH],
            scope=scope,
            expires_at=expires_at,
            quota_bytes=quota_bytes,
            max_active_jobs=max_active_jobs,
        )
    )
    session.flush()
    return key


def parse_expiry(text: str, now: datetime | None = None) -> datetime:
    """`--expires`: a duration from now (`30d`, `12h`, `90m`) or an ISO 8601 date or time
    (UTC unless it names its offset). ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*([dhm])\s*", text)
    if match:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[match.group(2)]
        return (now or utcnow()) + timedelta(**{unit: int(match.group(1))})
    value = datetime.fromisoformat(text.strip())
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def is_expired(key: ApiKey, now: datetime | None = None) -> bool:
    if key.expires_at is None:
        return False
    expires = key.expires_at if key.expires_at.tzinfo else key.expires_at.replace(tzinfo=UTC)
    return expires <= (now or utcnow())


def find_api_key(session: Session, id_or_prefix: str) -> ApiKey:
    """The key with this id, display prefix or plaintext; LookupError if none or ambiguous."""
    rows = session.scalars(
        sa.select(ApiKey).where(
            sa.or_(
                ApiKey.id == id_or_prefix,
                ApiKey.prefix == id_or_prefix,
                ApiKey.key_hash == hash_key(id_or_prefix),
            )
        )
    ).all()
    if not rows:
        raise LookupError(f"no API key with id or prefix {id_or_prefix!r}")
    if len(rows) > 1:
        ids = ", ".join(r.id for r in rows)
        raise LookupError(f"{id_or_prefix!r} matches several keys ({ids}); use the id")
    return rows[0]


def revoke_api_key(session: Session, id_or_prefix: str) -> ApiKey:
    """Revoke a key (by id, display prefix or the key itself); flushed, not committed.

    Revoking twice keeps the first revocation time. Raises LookupError if no key matches.
    """
    key = find_api_key(session, id_or_prefix)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


def list_api_keys(session: Session, owner: str | None = None) -> list[ApiKey]:
    query = sa.select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if owner is not None:
        query = query.where(ApiKey.owner == owner)
    return list(session.scalars(query))


def verify_api_key(session: Session, key: str) -> ApiKey | None:
    """The live key row for a plaintext key, or None (unknown, revoked or expired)."""
    row = _key_row(session, key)
    if row is None or row.revoked_at is not None or is_expired(row):
        return None
    return row


def _key_row(session: Session, key: str) -> ApiKey | None:
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    return session.scalars(sa.select(ApiKey).where(ApiKey.key_hash == hash_key(key))).one_or_none()


def touch_last_used(session: Session, key: ApiKey) -> None:
    """Record the key's use, at most once per `LAST_USED_RESOLUTION`: a conditional UPDATE
    (so concurrent requests write it once), committed at once; most requests write nothing."""
    now = utcnow()
    last = key.last_used_at
    if last is not None and (last if last.tzinfo else last.replace(tzinfo=UTC)) > (
        now - LAST_USED_RESOLUTION
    ):
        return
    session.execute(
        sa.update(ApiKey)
        .where(ApiKey.id == key.id)
        .where(
            sa.or_(
                ApiKey.last_used_at.is_(None),
                ApiKey.last_used_at <= now - LAST_USED_RESOLUTION,
            )
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()


class Unauthorized(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(401, message, code="unauthorized")


class ScopeTooNarrow(ApiError):
    def __init__(self, scope: str) -> None:
        super().__init__(
            403,
            f"This API key has scope `{scope}`: this operation changes something and needs "
            "scope `write`.",
            code="forbidden",
        )


# tus clients (and browsers' preflights, which carry no key) ask these for the server's
# capabilities with OPTIONS: nothing private is in the answer.
PUBLIC_OPTIONS_PATHS = ("/api/v1/uploads",)


def is_public(path: str, method: str = "GET") -> bool:
    if method == "OPTIONS" and any(
        path == p or path.startswith(p + "/") for p in PUBLIC_OPTIONS_PATHS
    ):
        return True

    if not (path == "/api/v1" or path.startswith("/api/v1/")):
        return True
    return any(path == p or path.startswith(p + "/") for p in PUBLIC_API_PATHS)


def authenticate() -> None:
    """`before_request`: set `g.owner` and `g.api_key_id` from the bearer key, or answer 401."""
    if is_public(request.path, request.method):
        return
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if not header:
        raise Unauthorized("An API key is needed: send `Authorization: Bearer <key>`.")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("The Authorization header must be `Bearer <key>`.")
    session = current_app.extensions["auth_session"]()
    row = _key_row(session, key.strip())
    if row is None or row.revoked_at is not None:
        raise Unauthorized("The API key is not valid (unknown or revoked).")
    if is_expired(row):
        raise Unauthorized(f"The API key expired at {iso_utc(row.expires_at)}.")
    g.owner = row.owner
    g.api_key_id = row.id
    g.key_quotas = (row.quota_bytes, row.max_active_jobs)  # service.quotas.for_key
    g.api_key_scope = row.scope
    touch_last_used(session, row)
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if row.scope != "write" and audit.is_mutating(
        app, request.endpoint, request.path, request.method
    ):
        raise ScopeTooNarrow(row.scope)


def current_key() -> tuple[str, str, datetime | None]:
    """The request's key: its id, scope and expiry."""
    row = current_app.extensions["auth_session"]().get(ApiKey, g.api_key_id)
    return row.id, row.scope, row.expires_at


def current_owner() -> str:
    return str(g.owner)


def current_key_id() -> str | None:
    """The id of the API key the request came with (None outside a keyed request)."""
    return g.get("api_key_id")


def add_www_authenticate(response: Any) -> Any:
    """`after_request`: a 401 names the scheme it wants."""
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="trainyard"'
    return response


keys_cli = AppGroup("keys", help="Create, list and revoke API keys.")


def _sessions() -> Any:
    return current_app.extensions["db_sessionmaker"]


@keys_cli.command("create")
@click.option("--owner", required=True, help="Who the key's datasets, jobs and models belong to.")
@click.option("--name", default="", help="A note to tell keys apart, e.g. 'laptop'.")
@click.option(
    "--scope",
    type=click.Choice(SCOPES),
    default=DEFAULT_SCOPE,
    show_default=True,
    help="`read`: no request that changes something.",
)
@click.option(
    "--expires",
    default=None,
    help="When the key stops working: a duration (30d, 12h, 90m) or an ISO 8601 date/time.",
)
@click.option(
    "--quota-bytes", default=None, help="Bytes its owner may store through it: 10GB, 500MB, ..."
)
@click.option(
    "--max-active-jobs", type=click.IntRange(min=0), default=None, help="Queued + running jobs."
)
def create_command(
    owner: str,
    name: str,
    scope: str,
    expires: str | None,
    quota_bytes: str | None,
    max_active_jobs: int | None,
) -> None:
    """Create a key and print it (it is shown this once; only its hash is stored)."""
    from service.quotas import parse_size

    try:
        expires_at = parse_expiry(expires) if expires else None
    except ValueError:
        raise click.BadParameter(
            "a duration (30d, 12h, 90m) or an ISO 8601 date/time", param_hint="--expires"
        ) from None
    try:
        size = None if quota_bytes is None else parse_size(quota_bytes)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--quota-bytes") from None
    with session_scope(_sessions()) as session:
        key = create_api_key(
            session,
            owner,
            name,
            scope,
            expires_at,
            quota_bytes=size,
            max_active_jobs=max_active_jobs,
        )
    click.echo(key)
    click.echo(
        f"Created an API key for owner {owner!r}. Store it now: it cannot be shown again.",
        err=True,
    )


@keys_cli.command("list")
@click.option("--owner", default=None, help="Only this owner's keys.")
def list_command(owner: str | None) -> None:
    """List keys (id, prefix, owner, name, created, revoked); never the keys themselves."""
    with session_scope(_sessions()) as session:
        rows = list_api_keys(session, owner)
        click.echo(
            f"{'id':32}  {'prefix':11}  {'owner':16}  {'name':16}  {'scope':5}  created / revoked"
        )
        for r in rows:
            revoked = r.revoked_at.isoformat(timespec="seconds") if r.revoked_at else "-"
            click.echo(
                f"{r.id:32}  {r.prefix:11}  {r.owner:16}  {r.name:16}  {r.scope:5}  "
                f"{r.created_at.isoformat(timespec='seconds')} / {revoked}"
            )


@keys_cli.command("revoke")
@click.argument("id_or_prefix")
def revoke_command(id_or_prefix: str) -> None:
    """Revoke a key by its id or its prefix (as `keys list` shows them)."""
    try:
        with session_scope(_sessions()) as session:
            key = revoke_api_key(session, id_or_prefix)
            click.echo(f"Revoked {key.prefix}... (id {key.id}, owner {key.owner!r}).")
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None


def init_app(app: Flask, session: Callable[[], Session]) -> None:
    """Check every request's key, with `session()` the request's database session (the API
    layer's, `service.api.db`: given here, so this module never imports upward)."""
    app.extensions["auth_session"] = session
    app.before_request(authenticate)
    app.after_request(add_www_authenticate)
    app.cli.add_command(keys_cli)
