"""Trained models: look up, serialise, predict."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, undefer

from service import modelspec
from service.config import Limits
from service.datasets import parse_matrix
from service.errors import ApiError, InputError
from service.models import TrainedModel, is_id


def _not_found(model_id: str) -> ApiError:
    return ApiError(404, f"No model with id {model_id!r}.")


def _owned(model_id: str, owner: str) -> Any:
    """The WHERE clause for the owner's model with this id (404 for an id that cannot exist)."""
    if not is_id(model_id):
        raise _not_found(model_id)
    return sa.and_(TrainedModel.id == model_id, TrainedModel.owner == owner)


def get_model(
    session: Session, model_id: str, owner: str, *, with_weights: bool = False
) -> TrainedModel:
    query = sa.select(TrainedModel).where(_owned(model_id, owner))
    if with_weights:
        query = query.options(undefer(TrainedModel.weights))
    model = session.scalars(query).one_or_none()
    if model is None:
        raise _not_found(model_id)
    return model


def get_graph_svg(session: Session, model_id: str, owner: str) -> str:
    svg = session.scalar(sa.select(TrainedModel.graph_svg).where(_owned(model_id, owner)))
    if svg is None:
        raise _not_found(model_id)
    return svg


def get_weights(session: Session, model_id: str, owner: str) -> bytes:
    blob = session.scalar(sa.select(TrainedModel.weights).where(_owned(model_id, owner)))
    if blob is None:
        raise _not_found(model_id)
    return blob


def serialize_model(model: TrainedModel, *, parameters: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": model.id,
        "job_id": model.job_id,
        "dataset_id": model.dataset_id,
        "architecture": model.architecture,
        "metrics": model.metrics,
        "created_at": model.created_at,
    }
    if parameters:
        state = modelspec.weights_from_npz(model.weights)
        out["parameters"] = {name: array.tolist() for name, array in state.items()}
    return out


def list_models(
    session: Session, owner: str, page: int, page_size: int
) -> tuple[list[TrainedModel], int]:
    where = TrainedModel.owner == owner
    total = session.scalar(sa.select(sa.func.count()).select_from(TrainedModel).where(where)) or 0
    rows = session.scalars(
        sa.select(TrainedModel)
        .where(where)
        .order_by(TrainedModel.created_at.desc(), TrainedModel.id.desc())
        .limit(page_size)
        .offset((page - 1) * page_size)
    ).all()
    return list(rows), total


def predict(model: TrainedModel, features: Any, limits: Limits) -> dict[str, Any]:
    """Predictions for a JSON matrix of features, checked against the model's input width."""
    nin = model.architecture["nin"]
    array = parse_matrix(features, "features", limits)
    if array.shape[1] != nin:
        raise InputError(
            "features", f"rows have {array.shape[1]} values; the model takes {nin} features"
        )
    return modelspec.predict(model.architecture, modelspec.weights_from_npz(model.weights), array)
