"""What a job's spec may hold: every choice and default (`core.spec`), for the client and the
dashboard, which write none of their own."""

from __future__ import annotations

from typing import Any

from core import spec
from service.api import Blueprint
from service.schemas import SpecDefaultsSchema

blp = Blueprint("spec", __name__, url_prefix="/spec", description="Spec choices and defaults.")


@blp.route("/defaults")
@blp.response(200, SpecDefaultsSchema)
def defaults() -> dict[str, Any]:
    """The choices (losses, optimizers, activations, dtypes, learning-rate schedules,
    preprocessing) and the default of every field of a job's `model` and `training` spec: what
    a field left out becomes. `training.loss` null: picked from the targets;
    `learning_rate`: per optimizer; `early_stopping_split`: the validation split early
    stopping uses when `validation_split` is 0."""
    return spec.defaults()
