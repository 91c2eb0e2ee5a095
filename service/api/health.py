"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from flask import current_app, jsonify
from flask.typing import ResponseReturnValue

from service.api import Blueprint, db
from service.health import check_broker, check_database
from service.schemas import HealthSchema

blp = Blueprint("health", __name__, description="Liveness and readiness probes.")


@blp.route("/healthz")
@blp.response(200, HealthSchema)
def healthz() -> dict[str, Any]:
    """The process is alive."""
    return {"status": "ok", "checks": {}}


@blp.route("/readyz")
@blp.response(200, HealthSchema)
@blp.alt_response(503, schema=HealthSchema, description="The database or the broker is down.")
def readyz() -> ResponseReturnValue:
    """The database and the broker are reachable."""
    checks = {
        "database": check_database(db()),
        "broker": check_broker(current_app.extensions["celery"]),
    }
    if all(value == "ok" for value in checks.values()):
        return {"status": "ok", "checks": checks}
    down = ", ".join(name for name, value in checks.items() if value != "ok")
    body = {
        "status": "unavailable",
        "checks": checks,
        "error": {"code": "unavailable", "message": f"Not ready: {down} unreachable."},
    }
    response = jsonify(body)
    response.status_code = 503
    return response
