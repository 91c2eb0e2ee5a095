"""The app as a whole: probes, unknown routes, the OpenAPI document and its docs page."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient

from service import create_app
from tests.service.helpers import assert_error


def test_healthz(client: FlaskClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.get_json()["status"] == "ok"


def test_readyz(client: FlaskClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["checks"] == {"database": "ok", "broker": "ok"}


@pytest.mark.app_config({"CELERY_BROKER_URL": "redis://127.0.0.1:1/0"})
def test_readyz_broker_down(client: FlaskClient) -> None:
    r = client.get("/readyz")
    error = assert_error(r, 503)
    assert error["code"] == "unavailable"
    assert r.get_json()["checks"]["database"] == "ok"
    assert r.get_json()["checks"]["broker"] != "ok"


def test_readyz_database_down(tmp_path: Path) -> None:
    app = create_app(
        {
            "DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/none",
            "CELERY_BROKER_URL": f"filesystem://{tmp_path.as_posix()}/broker",
        }
    )
    r = app.test_client().get("/readyz")
    assert_error(r, 503)
    assert r.get_json()["checks"]["database"] != "ok"


@pytest.mark.parametrize("path", ["/nope", "/api/v1/nope", "/api/v1/jobs/a/b/c"])
def test_unknown_route(client: FlaskClient, path: str) -> None:
    assert assert_error(client.get(path), 404)["code"] == "not_found"


def test_wrong_method(client: FlaskClient) -> None:
    assert assert_error(client.delete("/api/v1/jobs"), 405)["code"] == "method_not_allowed"
    assert_error(client.get("/api/v1/jobs/x/cancel"), 405)


def test_openapi_document(client: FlaskClient) -> None:
    r = client.get("/api/v1/openapi.json")
    assert r.status_code == 200
    spec = r.get_json()
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for path, method in [
        ("/api/v1/datasets", "post"),
        ("/api/v1/datasets", "get"),
        ("/api/v1/datasets/{dataset_id}", "get"),
        ("/api/v1/datasets/{dataset_id}/data", "get"),
        ("/api/v1/jobs", "post"),
        ("/api/v1/jobs", "get"),
        ("/api/v1/jobs/{job_id}", "get"),
        ("/api/v1/jobs/{job_id}/cancel", "post"),
        ("/api/v1/models", "get"),
        ("/api/v1/models/{model_id}", "get"),
        ("/api/v1/models/{model_id}/weights", "get"),
        ("/api/v1/models/{model_id}/graph.svg", "get"),
        ("/api/v1/models/{model_id}/predict", "post"),
        ("/api/v1/models/{model_id}/bundle", "get"),
        ("/api/v1/models/{model_id}/export", "get"),
        ("/api/v1/models/{model_id}/evaluate", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    ]:
        assert method in paths[path], (path, method)
    schemas = spec["components"]["schemas"]
    # generated from the schemas that validate the requests
    training = schemas["TrainingSpec"]["properties"]
    # null: picked from the targets (core.spec.default_loss)
    assert training["loss"]["enum"] == ["mse", "binary_cross_entropy", "cross_entropy", None]
    assert training["loss"]["nullable"] is True
    assert training["epochs"]["minimum"] == 1
    post_job = paths["/api/v1/jobs"]["post"]
    assert "202" in post_job["responses"]
    content = paths["/api/v1/datasets"]["post"]["requestBody"]["content"]
    # a CSV file also comes as the body itself (raw, tab-separated or gzipped), streamed;
    # so do Parquet and JSON-lines files
    assert set(content) == {
        "application/json",
        "multipart/form-data",
        "text/csv",
        "text/tab-separated-values",
        "application/gzip",
        "application/x-gzip",
        "application/vnd.apache.parquet",
        "application/x-parquet",
        "application/x-ndjson",
        "application/jsonl",
    }
    assert "pagination" in schemas["JobPage"]["properties"]
    assert schemas["Error"]["properties"]["error"]["$ref"].endswith("/ErrorBody")
    assert set(schemas["ErrorBody"]["properties"]) == {"code", "message", "fields"}


def test_docs_page(client: FlaskClient) -> None:
    r = client.get("/api/v1/docs")
    assert r.status_code == 200
    assert "openapi.json" in r.get_data(as_text=True)


def test_docs_page_loads_swagger_ui_from_this_app(client: FlaskClient) -> None:
    page = client.get("/api/v1/docs").get_data(as_text=True)
    assert "cdn." not in page
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/api/v1/docs/static/{asset}" in page
        r = client.get(f"/api/v1/docs/static/{asset}")
        assert r.status_code == 200
        assert len(r.get_data()) > 10_000
    assert client.get("/api/v1/docs/static/../../config.py").status_code == 404
