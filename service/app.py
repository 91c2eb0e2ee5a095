"""The Flask application: `create_app(test_config=None)`, the factory (`service.create_app`
imports this module when it is called, so `import service` loads no Flask).

Settings come from the environment (`service.config.Settings`); `test_config` overrides any
Flask config key, including `DATABASE_URL`, `CELERY_BROKER_URL` (or a whole `CELERY` dict) and
`LIMITS`. The factory binds the database engine and sessionmaker (`app.extensions["db_engine"]`,
`app.extensions["db_sessionmaker"]`) and Celery (`app.extensions["celery"]`) to the app.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from apispec import BasePlugin
from flask import Flask
from flask_smorest import Api

from service import audit, auth, errors, ratelimit, security
from service.celery import celery_config, celery_init_app
from service.config import Settings
from service.db import make_engine, make_sessionmaker
from service.schemas import ErrorSchema
from service.tus import MethodOverride

API_PREFIX = "/api/v1"

OPENAPI_CONFIG: dict[str, Any] = {
    "API_TITLE": "trainyard",
    "API_VERSION": "v1",
    "OPENAPI_VERSION": "3.0.3",
    "OPENAPI_URL_PREFIX": API_PREFIX,
    "OPENAPI_JSON_PATH": "openapi.json",
    # Swagger UI's page; its scripts and styles are served by this app (service.api.docs) from
    # the swagger-ui-bundle package, so the page works with no internet access.
    "OPENAPI_SWAGGER_UI_PATH": "docs",
    "OPENAPI_SWAGGER_UI_URL": "/api/v1/docs/static/",
    "API_SPEC_OPTIONS": {
        "info": {
            "description": "Submit datasets and MLP specs; workers train them; fetch and use "
            "the trained models. Every error has the body "
            '`{"error": {"code", "message", "fields"?}}`. Every `/api/v1` operation needs '
            "`Authorization: Bearer <key>` (an API key); each key's owner sees only its own "
            "datasets, jobs and models."
        },
        "security": [{"bearerAuth": []}],
        "components": {"securitySchemes": {"bearerAuth": auth.BEARER_SCHEME}},
    },
}

_ERROR_CONTENT = {"application/json": {"schema": "Error"}}
_AUTH_RESPONSES = {
    "401": {
        "description": "No API key, or an unknown, revoked or expired one.",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
        "content": _ERROR_CONTENT,
    },
    "429": {
        "description": "Rate limit (or, for new jobs, the cap on active jobs) exceeded.",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        "content": _ERROR_CONTENT,
    },
}


_BODY_RESPONSES = {
    "400": {
        "description": "The body is not valid JSON (`malformed_json`).",
        "content": _ERROR_CONTENT,
    },
    "413": {"description": "The body is over the configured limit.", "content": _ERROR_CONTENT},
    "415": {
        "description": "The body is not of a content type this operation takes.",
        "content": _ERROR_CONTENT,
    },
}


class AuthDocPlugin(BasePlugin):
    """Documents authentication per operation: public ones get `security: []`, the others
    their 401 and 429 answers (and 400, 413, 415 where they take a body)."""

    def operation_helper(
        self, path: str | None = None, operations: dict[str, Any] | None = None, **_: Any
    ) -> None:
        for method, operation in (operations or {}).items():
            if auth.is_public(path or "", method.upper()):
                operation["security"] = []
            else:
                responses = operation.setdefault("responses", {})
                for status, response in _AUTH_RESPONSES.items():
                    responses.setdefault(status, response)
                if "requestBody" in operation:
                    for status, response in _BODY_RESPONSES.items():
                        responses.setdefault(status, response)


class TrainyardApi(Api):
    # documents the default error responses with the body every error really has
    ERROR_SCHEMA = ErrorSchema


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    app = Flask("service")  # the package's name and folder, as when the factory lived there
    settings = Settings()
    app.config.from_mapping(settings.as_flask_config())
    app.config.from_mapping(OPENAPI_CONFIG)
    app.config["JSON_SORT_KEYS"] = False
    if test_config is not None:
        app.config.from_mapping(test_config)
    if "CELERY" not in app.config:
        effective = dataclasses.replace(
            settings,
            database_url=app.config["DATABASE_URL"],
            broker_url=app.config.get("CELERY_BROKER_URL") or app.config["BROKER_URL"],
        )
        app.config["CELERY"] = celery_config(effective)
    app.config["BROKER_URL"] = app.config["CELERY"]["broker_url"]

    engine = make_engine(app.config["DATABASE_URL"])
    app.extensions["db_engine"] = engine
    app.extensions["db_sessionmaker"] = make_sessionmaker(engine)
    celery_init_app(app)
    app.extensions["rate_limiter"] = ratelimit.limiter_for(
        app.config["RATE_LIMIT"], app.config["RATE_LIMIT_STORAGE_URL"], app.config["BROKER_URL"]
    )

    from service import dashboard
    from service.api import close_db, datasets, db, docs, health, jobs, models, spec, sweeps

    app.teardown_appcontext(close_db)
    auth.init_app(app, db)  # before the rate limit: it counts per authenticated key
    app.before_request(ratelimit.enforce)
    security.init_app(app)
    api = TrainyardApi(app, spec_kwargs={"extra_plugins": [AuthDocPlugin()]})
    for blp in (datasets.blp, jobs.blp, models.blp, sweeps.blp, spec.blp):
        api.register_blueprint(blp, url_prefix=f"{API_PREFIX}{blp.url_prefix}")
    from service.api import (  # live events, webhooks, tus uploads, the registry, downloads
        events,
        predictions,
        registry,
        uploads,
        webhooks,
    )

    for blp in (events.blp, webhooks.blp, uploads.blp, registry.blp, predictions.blp):
        api.register_blueprint(blp, url_prefix=f"{API_PREFIX}{blp.url_prefix}")
    from service.api import usage  # usage against quotas (deletes are in each resource's module)

    api.register_blueprint(usage.blp, url_prefix=f"{API_PREFIX}{usage.blp.url_prefix}")
    from service.api import audit as audit_api
    from service.api import keys  # API keys and the audit log

    for blp in (keys.blp, audit_api.blp):
        api.register_blueprint(blp, url_prefix=f"{API_PREFIX}{blp.url_prefix}")
    audit.init_app(app)
    api.register_blueprint(health.blp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(dashboard.bp)
    errors.init_app(app)
    app.wsgi_app = MethodOverride(app.wsgi_app, f"{API_PREFIX}{uploads.blp.url_prefix}")  # type: ignore[method-assign]
    return app
