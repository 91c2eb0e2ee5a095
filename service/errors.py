"""JSON errors, in one place: the Flask side of `service.problems`' error types.

Every error answer, whatever its status and for unknown routes too, has the body
`{"error": {"code": "...", "message": "...", "fields": {"training.epochs": "..."}}}`, with
`fields` only where a field is at fault. Field names are dotted paths into the request body.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, Request, Response, jsonify
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from service.problems import CODES, ApiError, flatten_messages

log = logging.getLogger(__name__)


class JsonErrorRequest(Request):
    """`request.get_json()` answers a body that is not JSON (not UTF-8, truncated, a number
    with thousands of digits, nested thousands deep) with a `malformed_json` 400."""

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        head = self.get_data(cache=True)[:4]
        if (b"\x00" in head or head[:2] in (b"\xff\xfe", b"\xfe\xff")) and not silent:
            # UTF-16 or UTF-32, which json.loads would guess; JSON on the wire is UTF-8 (RFC 8259)
            raise ApiError(
                400, "The request body is not valid JSON: not UTF-8.", code="malformed_json"
            )
        try:
            return super().get_json(force=force, silent=silent, cache=cache)
        except RecursionError:
            raise ApiError(
                400, "The request body is not valid JSON: nested too deeply.", code="malformed_json"
            ) from None

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        if e is None:  # not a JSON content type
            return super().on_json_loading_failed(e)
        raise ApiError(400, f"The request body is not valid JSON: {e}", code="malformed_json")


def error_response(
    status: int, code: str, message: str, fields: Mapping[str, str] | None = None
) -> tuple[Response, int]:
    error: dict[str, Any] = {"code": code, "message": message}
    if fields:
        error["fields"] = dict(fields)
    return jsonify({"error": error}), status


def _summary(fields: Mapping[str, str]) -> str:
    first, text = next(iter(fields.items()))
    more = f" (and {len(fields) - 1} more)" if len(fields) > 1 else ""
    return f"{first}: {text}{more}"


def handle_api_error(err: ApiError) -> tuple[Response, int]:
    response, status = error_response(err.status, err.code, err.message, err.fields)
    response.headers.update(err.headers)
    return response, status


def handle_validation_error(err: ValidationError) -> tuple[Response, int]:
    fields = flatten_messages(err.messages)
    return error_response(422, "validation_error", _summary(fields), fields)


def handle_http_exception(err: HTTPException) -> tuple[Response, int]:
    status = err.code or 500
    data = getattr(err, "data", None) or {}
    messages = data.get("messages")
    if status == 400 and messages and "json" in messages:
        # webargs' answer to a body that is not JSON
        return error_response(400, "malformed_json", "The request body is not valid JSON.")
    if status == 422 and messages:
        fields = flatten_messages(messages)
        return error_response(422, "validation_error", _summary(fields), fields)
    if status == 413:
        message = "The request body is larger than the configured limit."
    else:
        message = err.description or err.name
    response, status = error_response(status, CODES.get(status, "error"), message)
    for name, value in err.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response, status


def handle_unexpected(err: Exception) -> tuple[Response, int]:
    log.exception("unhandled error", exc_info=err)
    return error_response(500, "internal_error", "Internal server error.")


def init_app(app: Flask) -> None:
    """Register the JSON error handlers (after flask-smorest's, which they replace)."""
    app.request_class = JsonErrorRequest
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(ValidationError, handle_validation_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
