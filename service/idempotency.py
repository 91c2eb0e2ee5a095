"""`Idempotency-Key` on `POST /jobs` and `POST /datasets`: a retried request gets the first answer.

The first successful answer under a key (status, body, `Location`) is stored in
`idempotent_requests`, unique per (owner, key), in the same transaction as the dataset or job
it created. Of concurrent requests with one key exactly one commits; the others hit the unique
constraint (PostgreSQL makes them wait for the first to commit; SQLite serialises writers),
roll back everything they did and replay the winner's answer. The same key with another request
(method, path, content type or body) is a 422. Error answers are not stored: a request that
failed validation may be corrected and sent again under the same key. Stored answers are kept
until `purge_expired` removes them (24 hours by default).
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db import utcnow
from service.problems import ApiError
from service.tables import IdempotentRequest

if TYPE_CHECKING:  # Flask is imported where a request is read: the workers' purge loads none
    from flask import Response

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255

HEADER_DOC = {
    "in": "header",
    "name": HEADER,
    "required": False,
    "description": "Make a retry safe: the same key (per owner) and the same request get the "
    "first answer again (with `Idempotent-Replayed: true`); the same key with another request "
    "gets 422. 1 to 255 printable ASCII characters, e.g. a UUID.",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
}


def request_key() -> str | None:
    """The request's idempotency key, or None; 422 if it is malformed."""
    from flask import request

    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all(" " <= c <= "~" for c in key):
        message = f"must be 1 to {MAX_KEY_LENGTH} printable ASCII characters"
        raise ApiError(422, f"{HEADER} {message}.", {HEADER: message})
    return key


def fingerprint() -> str:
    """What makes two requests 'the same': method, path, content type and body. A form's files
    and fields count, not its multipart boundary (which differs from one upload to the next)."""
    from flask import request

    h = hashlib.sha256()
    h.update(f"{request.method} {request.path} {request.mimetype}\n".encode())
    if request.mimetype == "multipart/form-data":
        for name, value in sorted(request.form.items(multi=True)):
            h.update(json.dumps(["field", name, value]).encode())
        for name, upload in sorted(request.files.items(multi=True), key=lambda kv: kv[0]):
            h.update(json.dumps(["file", name, upload.filename]).encode())
            h.update(hashlib.sha256(upload.stream.read()).digest())
            upload.stream.seek(0)
    else:
        h.update(request.get_data(cache=True))
    return h.hexdigest()


def _find(session: Session, owner: str, key: str) -> IdempotentRequest | None:
    return session.scalars(
        sa.select(IdempotentRequest).where(
            IdempotentRequest.owner == owner, IdempotentRequest.key == key
        )
    ).one_or_none()


def _replay(row: IdempotentRequest, fp: str) -> Response:
    from flask import Response

    if row.fingerprint != fp:
        message = "was used for another request; use a new key for a new request"
        raise ApiError(
            422, f"{HEADER} {message}.", {HEADER: message}, code="idempotency_key_reused"
        )
    response = Response(row.body, status=row.status_code, mimetype="application/json")
    if row.location:
        response.headers["Location"] = row.location
    response.headers["Idempotent-Replayed"] = "true"
    return response


class Idempotency:
    """One POST's idempotency: `replay()` before doing anything, `commit()` instead of
    `session.commit()` when done."""

    def __init__(self, session: Session, owner: str) -> None:
        self.session = session
        self.owner = owner
        self.key = request_key()
        self.fp = fingerprint() if self.key is not None else ""

    def replay(self) -> Response | None:
        """The stored answer to this key (422 if it was another request), or None."""
        if self.key is None:
            return None
        row = _find(self.session, self.owner, self.key)
        return None if row is None else _replay(row, self.fp)

    def commit(
        self, body: dict[str, Any], status: int, location: str | None = None
    ) -> tuple[Response, bool]:
        """Commit the request's work with its answer; `(answer, first)`. `first` is False when
        a concurrent request with the same key won: this one's work is rolled back and the
        winner's answer returned."""
        from flask import Response, current_app

        text = current_app.json.response(body).get_data(as_text=True)
        if self.key is not None:
            self.session.add(
                IdempotentRequest(
                    owner=self.owner,
                    key=self.key,
                    fingerprint=self.fp,
                    status_code=status,
                    body=text,
                    location=location,
                )
            )
        try:
            self.session.commit()
        except IntegrityError:
            self.session.rollback()
            row = _find(self.session, self.owner, self.key) if self.key else None
            if row is None:
                raise
            return _replay(row, self.fp), False
        response = Response(text, status=status, mimetype="application/json")
        if location:
            response.headers["Location"] = location
        return response, True


def purge_expired(session: Session, max_age_s: float = 86400.0) -> int:
    """Forget answers older than `max_age_s` (a retry after that makes a new job or dataset);
    for a periodic sweep, e.g. the reaper's. Commits; returns how many were deleted."""
    cutoff = utcnow() - timedelta(seconds=max_age_s)
    result = session.execute(
        sa.delete(IdempotentRequest).where(IdempotentRequest.created_at < cutoff)
    )
    session.commit()
    return int(result.rowcount or 0)
