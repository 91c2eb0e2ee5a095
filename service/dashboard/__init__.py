"""The web dashboard, served by the API's Flask app at `/`."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static")
