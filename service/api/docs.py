"""Swagger UI's own files, served from the `swagger-ui-bundle` package (no CDN needed)."""

from __future__ import annotations

from flask import Blueprint, Response, send_from_directory
from swagger_ui_bundle import swagger_ui_path

STATIC_PATH = "/api/v1/docs/static/"

bp = Blueprint("docs_static", __name__)


@bp.route(f"{STATIC_PATH}<path:filename>")
def swagger_ui_static(filename: str) -> Response:
    """A file of the vendored Swagger UI (scripts, styles, icons)."""
    return send_from_directory(swagger_ui_path, filename, max_age=86400)
