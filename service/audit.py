"""The audit log: every mutating API request (POST, PUT, PATCH, DELETE under `/api/v1`) appends
one row to `audit_log` (`service.tables.AuditEntry`): who (key id, owner), what (method, route
pattern, action, the resources' ids), when, the outcome (status code) and the client's
`X-Request-Id`, if it sent one.

One hook (`record`, an `after_request` of the app) writes it, in a transaction of its own, so a
failed request is logged too and a failure to log never changes the answer. The action is named
from the route (`action_for`), so a new route is covered without a list to edit:
`<resource>.<verb>`, the resource the blueprint's name in the singular, the verb a function
view's name (`job.cancel`, `key.rotate`) or, for a method view, the method's
(`create`, `set`, `update`, `delete`: `dataset.create`, `webhook.delete`), with a method view's
own sub-resource in between (`registry.alias.set`).

Not logged: requests without a valid key (there is no owner to show them to), routes that do not
exist, views marked `@read_only` (a POST that changes nothing: `predict`, `evaluate`), and
tus `PATCH` chunks of a resumable upload, which would flood the log: an upload is logged at its
creation (`upload.create`), its completion (`upload.complete`, the chunk that makes the
dataset, whatever the outcome) and its termination (`upload.delete`).

Append-only: nothing in the service updates a row; `service.audit_log.purge_expired` (the
workers' maintenance, with `TRAINYARD_AUDIT_RETENTION_DAYS` set; off by default) deletes rows
past the retention. Reading the log is `service.audit_log`'s (no Flask: the workers import it).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Response, current_app, g, request
from sqlalchemy.orm import Session, sessionmaker

from service.tables import AuditEntry

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

API_PREFIX = "/api/v1/"
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
METHOD_VERBS = {"POST": "create", "PUT": "set", "PATCH": "update", "DELETE": "delete"}
REQUEST_ID_HEADER = "X-Request-Id"
#: views that log a request only when they say so (`note`): tus chunks
SILENT_UNLESS_NOTED = {("uploads.UploadById", "PATCH")}


def read_only(view: F) -> F:
    """Mark a POST view that changes nothing (it computes an answer): a `read` key may call
    it, and it is not logged."""
    view.audit_read_only = True  # type: ignore[attr-defined]
    return view


def note(action: str) -> None:
    """Name this request's action (a view that `SILENT_UNLESS_NOTED` lists, or any view that
    wants another name than the derived one)."""
    g.audit_action = action


def _singular(word: str) -> str:
    word = word.lower()
    if word.endswith("ses"):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _view_method(app: Flask, endpoint: str, method: str) -> Any:
    view = app.view_functions.get(endpoint)
    view_class = getattr(view, "view_class", None)
    if view_class is not None:
        return getattr(view_class, method.lower(), None)
    return view


def is_mutating(app: Flask, endpoint: str | None, path: str, method: str) -> bool:
    """Does a request change something (and so need a `write` key, and get logged)?"""
    if method not in MUTATING_METHODS or endpoint is None or not path.startswith(API_PREFIX):
        return False
    view = _view_method(app, endpoint, method)
    return view is not None and not getattr(view, "audit_read_only", False)


def action_for(app: Flask, endpoint: str, method: str) -> str:
    """The action a request to `endpoint` with `method` is logged as (see the module's text)."""
    blueprint, _, name = endpoint.rpartition(".")
    resource = _singular(blueprint or name)
    view = app.view_functions.get(endpoint)
    if getattr(view, "view_class", None) is None:
        return f"{resource}.{name.lower()}"
    sub = _singular(re.split(r"By[A-Z]", name)[0])
    middle = f"{sub}." if sub and sub != resource else ""
    return f"{resource}.{middle}{METHOD_VERBS[method]}"


def _created_id(response: Response) -> str | None:
    """The id of what a successful POST made: its `Location`'s last segment, or the JSON
    body's `id`."""
    location = response.headers.get("Location")
    if location:
        return location.rstrip("/").rsplit("/", 1)[-1][:64]
    if response.is_json and not response.is_streamed:
        body = response.get_json(silent=True)
        if isinstance(body, dict) and isinstance(body.get("id"), str | int):
            return str(body["id"])[:64]
    return None


def record(response: Response) -> Response:
    """`after_request`: append the request's row if it mutated (or tried to)."""
    try:
        _record(response)
    except Exception:  # logging must never break a request
        log.warning("could not write the audit log", exc_info=True)
    return response


def _record(response: Response) -> None:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    method = request.method
    rule = request.url_rule
    if "owner" not in g or rule is None:
        return
    if not is_mutating(app, request.endpoint, request.path, method):
        return
    action = g.get("audit_action")
    if action is None:
        if (request.endpoint, method) in SILENT_UNLESS_NOTED:
            return
        action = action_for(app, str(request.endpoint), method)
    ids = {k: str(v)[:200] for k, v in (request.view_args or {}).items()}
    if method == "POST" and 200 <= response.status_code < 300:
        created = _created_id(response)
        if created and created not in ids.values():
            ids["id"] = created
    request_session = g.get("db_session")
    if request_session is not None and not response.is_streamed:
        # what the view left uncommitted is dropped at teardown anyway; on SQLite it would
        # hold the write lock the row below waits for
        request_session.rollback()
    factory: sessionmaker[Session] = app.extensions["db_sessionmaker"]
    with factory() as session, session.begin():
        session.add(
            AuditEntry(
                owner=g.owner,
                key_id=g.get("api_key_id"),
                method=method,
                route=rule.rule[:300],
                action=action[:100],
                resource_ids=ids,
                status_code=response.status_code,
                request_id=request.headers.get(REQUEST_ID_HEADER, "")[:200] or None,
            )
        )


def init_app(app: Flask) -> None:
    app.after_request(record)
