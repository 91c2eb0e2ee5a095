"""Quotas: what one owner may store and run at once, and how much of it is used.

Two quotas, each from the settings (`TRAINYARD_QUOTA_BYTES`, 0: none, the default;
`TRAINYARD_MAX_ACTIVE_JOBS`, 100 by default as before) unless the request's API key has its
own (`flask --app service keys create --quota-bytes 10GB --max-active-jobs 20`; the API's
`limits()` gives the key's `Limits`, `for_key`):

- **stored bytes**: the owner's datasets' Parquet parts in the store (`n_bytes`), its models'
  weights (SQL), its batch predictions' Parquet parts and the chunks of its unfinished
  resumable uploads. Tombstoned (deleted) rows do
  not count, though the maintenance sweep may not have freed their bytes yet.
- **active jobs**: queued plus running jobs (a sweep's held trials count once started).

`check` is the one test, made where datasets, uploads, jobs and sweeps are created: over the
bytes quota `413` (`quota_bytes_exceeded`), at the jobs quota `429` (`too_many_active_jobs`),
both naming the quota and the usage. A check before the write, not a lock: one upload whose size
is not known in advance may take an owner past the bytes quota once; the next is refused.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.config import Limits
from service.lifecycle import ACTIVE_STATUSES
from service.problems import ApiError
from service.tables import Dataset, Job, TrainedModel, Upload

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_size(text: str) -> int:
    """`10GB`, `500 MB`, `1.5GiB`, `1000` -> bytes (decimal units; `KiB`... binary)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size such as 10GB, 500MB or 1000")
    return int(float(match.group(1)) * _UNITS[unit])


def for_key(limits: Limits, quota_bytes: int | None, max_active_jobs: int | None) -> Limits:
    """`limits` with a key's own quotas (None: the settings')."""
    changes: dict[str, Any] = {}
    if quota_bytes is not None:
        changes["quota_bytes"] = quota_bytes
    if max_active_jobs is not None:
        changes["max_active_jobs"] = max_active_jobs
    return dataclasses.replace(limits, **changes) if changes else limits


def stored_bytes(session: Session, owner: str) -> dict[str, int]:
    """The owner's stored bytes by kind: `datasets`, `models`, `predictions` (batch
    predictions' Parquet parts), `uploads`."""
    datasets = session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(Dataset.n_bytes), 0)).where(
            Dataset.owner == owner, Dataset.deleted_at.is_(None)
        )
    )
    models = session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(sa.func.length(TrainedModel.weights)), 0)).where(
            TrainedModel.owner == owner, TrainedModel.deleted_at.is_(None)
        )
    )
    predictions = session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(Job.output_bytes), 0)).where(
            Job.owner == owner, Job.deleted_at.is_(None)
        )
    )
    uploads = session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(Upload.offset), 0)).where(
            Upload.owner == owner, Upload.dataset_id.is_(None), Upload.error.is_(None)
        )
    )
    return {
        "datasets": int(datasets or 0),
        "models": int(models or 0),
        "predictions": int(predictions or 0),
        "uploads": int(uploads or 0),
    }


def active_jobs(session: Session, owner: str) -> int:
    return int(
        session.scalar(
            sa.select(sa.func.count())
            .select_from(Job)
            .where(Job.owner == owner, Job.status.in_(ACTIVE_STATUSES), Job.held.is_(False))
        )
        or 0
    )


def usage(session: Session, owner: str, limits: Limits) -> dict[str, Any]:
    """`GET /usage`: stored bytes and active jobs against their quotas (null: no quota)."""
    by_kind = stored_bytes(session, owner)
    return {
        "owner": owner,
        "bytes": {"used": sum(by_kind.values()), "quota": limits.quota_bytes or None, **by_kind},
        "active_jobs": {"used": active_jobs(session, owner), "quota": limits.max_active_jobs},
    }


def check(
    session: Session, owner: str, limits: Limits, *, adding_bytes: int = 0, jobs: bool = False
) -> None:
    """413 if the owner's stored bytes plus `adding_bytes` pass its bytes quota (one already at
    it may add nothing more); with `jobs`, 429 if it has `max_active_jobs` queued or running."""
    if limits.quota_bytes > 0:
        used = sum(stored_bytes(session, owner).values())
        if used + adding_bytes > limits.quota_bytes or (used >= limits.quota_bytes):
            raise ApiError(
                413,
                f"Over the stored-bytes quota: {used} bytes stored"
                + (f" + {adding_bytes} asked for" if adding_bytes else "")
                + f", the quota is {limits.quota_bytes} bytes. Delete datasets or models "
                "to free space.",
                {"quota": "quota_bytes", "quota_bytes": str(limits.quota_bytes), "used": str(used)},
                code="quota_bytes_exceeded",
            )
    if jobs:
        active = active_jobs(session, owner)
        if active >= limits.max_active_jobs:
            raise ApiError(
                429,
                f"You have {active} queued or running jobs; the limit is "
                f"{limits.max_active_jobs} (max_active_jobs). Wait for some to finish, or cancel "
                "some.",
                {
                    "quota": "max_active_jobs",
                    "max_active_jobs": str(limits.max_active_jobs),
                    "used": str(active),
                },
                code="too_many_active_jobs",
                headers={"Retry-After": "10"},
            )
