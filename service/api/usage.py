"""Usage: what the owner stores and runs, against its quotas."""

from __future__ import annotations

from typing import Any

from service import quotas
from service.api import Blueprint, db, limits
from service.auth import current_owner
from service.schemas import UsageSchema

blp = Blueprint("usage", __name__, url_prefix="/usage", description="Usage against quotas.")


@blp.route("")
@blp.response(200, UsageSchema)
def usage() -> dict[str, Any]:
    """The owner's stored bytes (datasets' Parquet parts, models' weights, unfinished
    resumable uploads) and queued + running jobs, each against its quota (`quota` null: none).
    The quotas are the API key's own (`keys create --quota-bytes --max-active-jobs`), else
    `TRAINYARD_QUOTA_BYTES` and `TRAINYARD_MAX_ACTIVE_JOBS`."""
    return quotas.usage(db(), current_owner(), limits())
