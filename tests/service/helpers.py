"""Shared helpers for the API tests."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from service.auth import create_api_key
from service.tables import Dataset, Job


def assert_error(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    """The response is an error with the one body format; return its `error` object."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    error = body["error"]
    assert set(error) <= {"code", "message", "fields"}
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    if "fields" in error:
        assert error["fields"] and all(isinstance(v, str) for v in error["fields"].values())
    if field is not None:
        assert field in error.get("fields", {}), error
    return error


def count_rows(app: Flask, model: type) -> int:
    with app.extensions["db_sessionmaker"]() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(model))


def counts(app: Flask) -> tuple[int, int]:
    return count_rows(app, Dataset), count_rows(app, Job)


def binary_dataset(n: int = 10) -> dict[str, Any]:
    return {
        "name": "binary",
        "features": [[i / n, 1 - i / n] for i in range(n)],
        "targets": [i % 2 for i in range(n)],
    }


def post_dataset(client: FlaskClient, body: dict[str, Any] | None = None) -> str:
    r = client.post("/api/v1/datasets", json=body or binary_dataset())
    assert r.status_code == 201, r.get_json()
    return r.get_json()["id"]


def new_key(app: Flask, owner: str) -> str:
    """A fresh API key of `owner`, committed."""
    with app.extensions["db_sessionmaker"]() as session:
        key = create_api_key(session, owner, "test")
        session.commit()
    return key


def keyed_client(app: Flask, key: str) -> FlaskClient:
    """A test client that sends `Authorization: Bearer <key>` with every request."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client
