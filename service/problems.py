"""The errors the domain raises, without a web framework: `ApiError`, `InputError`.

`service.jobs`, `service.sweeps`, `service.datasets`, `service.ingest` and the other domain
modules raise these; a worker that imports them loads no Flask. `service.errors` turns them into
the JSON error answers of the API (`{"error": {"code", "message", "fields"?}}`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: the `code` of an error answer, by HTTP status
CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}

# webargs/flask-smorest nest messages under the request location; the client knows only paths
# into its body.
_LOCATIONS = {"json", "query", "form", "files", "view_args", "headers", "cookies", "json_or_form"}


class ApiError(Exception):
    """An error answer: raise it anywhere below a view."""

    def __init__(
        self,
        status: int,
        message: str,
        fields: Mapping[str, str] | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = dict(fields) if fields else None
        self.code = code or CODES.get(status, "error")
        self.headers = dict(headers) if headers else {}


class InputError(ApiError):
    """422 for one field: `InputError("training.epochs", "is 100000; the limit is 10000")`.

    The message names the field too (`training.epochs: is 100000; ...`), as marshmallow's
    validation errors do, so it reads on its own in a log or a terminal."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(422, f"{field}: {message}", {field: message})


def flatten_messages(messages: Any, prefix: str = "") -> dict[str, str]:
    """`{"training": {"epochs": ["Too big."]}}` -> `{"training.epochs": "Too big."}`."""
    if isinstance(messages, Mapping):
        out: dict[str, str] = {}
        for key, value in messages.items():
            key = str(key)
            if not prefix and key in _LOCATIONS:
                name = ""
            elif key == "_schema":
                name = prefix
            else:
                name = f"{prefix}.{key}" if prefix else key
            for field, text in flatten_messages(value, name).items():
                out[field] = f"{out[field]}; {text}" if field in out else text
        return out
    if isinstance(messages, list | tuple):
        if all(isinstance(m, str) for m in messages):
            return {prefix or "_body": " ".join(messages)}
        out = {}
        for value in messages:
            out.update(flatten_messages(value, prefix))
        return out
    return {prefix or "_body": str(messages)}
