"""The client's errors: an API's error answer (`ApiError`, `NotFoundError`), a server that cannot
be reached (`ConnectionFailed`), a wait that ran out (`WaitTimeout`)."""

from __future__ import annotations

from collections.abc import Mapping


class TrainyardError(Exception):
    """Base of the client's errors."""


class ApiError(TrainyardError):
    """An error answer: `{"error": {"code", "message", "fields"?}}` and its HTTP status."""

    def __init__(
        self, status: int, code: str, message: str, fields: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.fields: dict[str, str] = dict(fields or {})


class NotFoundError(ApiError):
    """404: no such dataset, job or model (or route)."""


class ConnectionFailed(TrainyardError):
    """The server could not be reached (refused, DNS, timeout)."""


class WaitTimeout(TrainyardError):
    """`Client.wait` gave up before the job finished."""
