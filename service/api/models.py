"""Trained models: fetch, download weights and graph, predict."""

from __future__ import annotations

from typing import Any

from flask import Response
from marshmallow import RAISE

from service import trained_models
from service.api import Blueprint, db, json_only, limits, page
from service.auth import current_owner
from service.schemas import (
    ErrorSchema,
    ModelPageSchema,
    ModelSchema,
    PageQuerySchema,
    PredictInSchema,
    PredictionSchema,
)

blp = Blueprint("models", __name__, url_prefix="/models", description="Trained models.")


@blp.route("")
@blp.arguments(PageQuerySchema, location="query", unknown=RAISE)
@blp.response(200, ModelPageSchema)
def list_models(query: dict[str, Any]) -> dict[str, Any]:
    """List models, newest first (without their parameters).

    Paginated with `page` (from 1) and `page_size` (1 to 100); the body holds the page's
    `items` and `pagination` (`page`, `page_size`, `total`, `pages`).
    """
    rows, total = trained_models.list_models(
        db(), current_owner(), query["page"], query["page_size"]
    )
    items = [trained_models.serialize_model(m, parameters=False) for m in rows]
    return page(items, total, query)


@blp.route("/<model_id>")
@blp.response(200, ModelSchema)
@blp.alt_response(404, schema=ErrorSchema, description="No such model.")
def get_model(model_id: str) -> dict[str, Any]:
    """Fetch a model: architecture, parameters as nested lists, metrics."""
    model = trained_models.get_model(db(), model_id, current_owner(), with_weights=True)
    return trained_models.serialize_model(model)


@blp.route("/<model_id>/weights")
@blp.response(
    200,
    description="`.npz` of the MLP's `state_dict`.",
    content_type="application/octet-stream",
)
@blp.alt_response(404, schema=ErrorSchema, description="No such model.")
def get_weights(model_id: str) -> Response:
    """Download the weights: `engine.nn.MLP(...).load_state_dict(dict(np.load(f)))`."""
    blob = trained_models.get_weights(db(), model_id, current_owner())
    return Response(
        blob,
        mimetype="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="model-{model_id}.npz"'},
    )


@blp.route("/<model_id>/graph.svg")
@blp.response(200, description="The computational graph.", content_type="image/svg+xml")
@blp.alt_response(404, schema=ErrorSchema, description="No such model.")
def get_graph(model_id: str) -> Response:
    """The computational graph of the forward pass and loss on a few samples, as SVG."""
    svg = trained_models.get_graph_svg(db(), model_id, current_owner())
    # service.security adds nosniff and a sandboxing CSP: no scripts, no loads, even when the
    # SVG is opened directly
    return Response(svg, mimetype="image/svg+xml")


@blp.route("/<model_id>/predict", methods=["POST"])
@json_only
@blp.arguments(PredictInSchema)
@blp.response(200, PredictionSchema)
@blp.alt_response(404, schema=ErrorSchema, description="No such model.")
@blp.alt_response(422, schema=ErrorSchema, description="Features of the wrong shape.")
def predict(data: dict[str, Any], model_id: str) -> dict[str, Any]:
    """Predict: values for regression; labels (as submitted) and probabilities otherwise."""
    model = trained_models.get_model(db(), model_id, current_owner(), with_weights=True)
    return trained_models.predict(model, data["features"], limits())
