"""The REST API: one blueprint module per resource, thin views over the domain modules."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, TypeVar

import flask_smorest
from flask import Response, current_app, g, jsonify, request
from sqlalchemy.orm import Session
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request

from service import row_formats
from service.config import Limits
from service.problems import ApiError

F = TypeVar("F", bound=Callable[..., Any])


class JsonParser(FlaskParser):
    """webargs' parser, reading JSON bodies with `request.get_json()` (service.errors'
    JsonErrorRequest), so every unparsable body is the same `malformed_json` 400."""

    def _raw_load_json(self, req: Any) -> Any:
        if not is_json_request(req):
            return core.missing
        return req.get_json()


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's blueprint, with one rule for the JSON of a response: the domain module
    builds it (`serialize_*`, `describe`: plain JSON values, times as ISO 8601 strings), the
    view returns it as it is, and the response schema only documents it (the OpenAPI document;
    schemathesis checks that the answers match). The schema is never applied a second time."""

    ARGUMENTS_PARSER = JsonParser()

    def response(
        self,
        status_code: int,
        schema: Any = None,
        *,
        content_type: str | None = None,
        description: str | None = None,
        example: Any = None,
        examples: Any = None,
        headers: Any = None,
    ) -> Callable[[F], F]:
        document = self.alt_response(
            status_code,
            schema=schema,
            content_type=content_type,
            description=description,
            example=example,
            examples=examples,
            headers=headers,
            success=True,
        )

        def decorator(func: F) -> F:
            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                result = func(*args, **kwargs)
                if isinstance(result, Response):
                    return result
                response = jsonify(result)
                response.status_code = status_code
                return response

            return document(wrapper)  # type: ignore[no-any-return]

        return decorator


def db() -> Session:
    """The request's session (closed, and rolled back if uncommitted, at teardown)."""
    if "db_session" not in g:
        g.db_session = current_app.extensions["db_sessionmaker"]()
    return g.db_session


def close_db(_exc: BaseException | None = None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()


def limits() -> Limits:
    """The app's limits, with the request's API key's own quotas (`service.quotas.for_key`)."""
    from service.quotas import for_key

    return for_key(current_app.config["LIMITS"], *g.get("key_quotas", (None, None)))


def store_url() -> str:
    """Where new datasets' rows go (`TRAINYARD_STORE_URL`, or the app's `STORE_URL`)."""
    return str(current_app.config["STORE_URL"])


def page(items: list[Any], total: int, query: dict[str, Any]) -> dict[str, Any]:
    """A page of a list: `{"items": [...], "pagination": {page, page_size, total, pages}}`."""
    return {
        "items": items,
        "pagination": {
            "page": query["page"],
            "page_size": query["page_size"],
            "total": total,
            "pages": math.ceil(total / query["page_size"]),
        },
    }


def require_content_type(*types: str) -> Callable[[F], F]:
    """415 unless the request body has one of `types` (checked before the body is parsed)."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if request.mimetype not in types:
                raise ApiError(
                    415,
                    f"Content-Type must be {' or '.join(types)}, "
                    f"not {request.mimetype or 'missing'!r}.",
                )
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


json_only = require_content_type("application/json")


def streamed_content(description: str, json_schema: Any, formats: list[str]) -> dict[str, Any]:
    """An OpenAPI `responses` entry for a 200 answer in JSON (`json_schema`) or, by `Accept`,
    streamed in `formats`."""
    content: dict[str, Any] = {"application/json": {"schema": json_schema}}
    for fmt in formats:
        binary = fmt == row_formats.PARQUET
        content[row_formats.MEDIA_TYPES[fmt]] = {
            "schema": {"type": "string", **({"format": "binary"} if binary else {})}
        }
    return {"200": {"description": description, "content": content}}
