"""Batch predictions' output: the download of a predict job's predictions (the job itself is
made by `POST /models/{id}/predictions` and followed under `/jobs`)."""

from __future__ import annotations

from flask import Response, request

from service import predictions, row_formats
from service.api import Blueprint, db
from service.auth import current_owner
from service.schemas import ErrorSchema

blp = Blueprint(
    "predictions",
    __name__,
    url_prefix="/predictions",
    description="Batch predictions' output (`POST /models/{id}/predictions` makes the job).",
)

OFFERED = (row_formats.CSV, row_formats.PARQUET, row_formats.JSONL)


@blp.route("/<job_id>/data")
@blp.response(
    200,
    description="The predictions, streamed: CSV (default, `text/csv`), Parquet "
    "(`application/vnd.apache.parquet`) or JSON lines (`application/x-ndjson`) by `Accept`.",
    content_type="text/csv",
)
@blp.alt_response(404, schema=ErrorSchema, description="No such predict job.")
@blp.alt_response(406, schema=ErrorSchema, description="None of the offered formats accepted.")
@blp.alt_response(409, schema=ErrorSchema, description="The job has not succeeded (yet).")
@blp.alt_response(503, schema=ErrorSchema, description="The dataset store is unavailable.")
def download(job_id: str) -> Response:
    """Download a predict job's predictions once it has succeeded: one row per row of its
    dataset, in order, the columns of `POST /models/{id}/predict`'s streamed answer: for
    classification `prediction` (the class, as text) and one `p_<class>` per class, for
    regression `prediction` (or `prediction_0`, ...). The rows stream from the store a
    row group at a time (the answer has no `Content-Length`). Before the job has succeeded the
    answer is `409`, naming its status."""
    fmt = row_formats.negotiate(request.headers.get("Accept"), OFFERED, row_formats.CSV)
    schema, batches = predictions.output(db(), job_id, current_owner())
    return row_formats.stream_response(batches, fmt, f"predictions-{job_id}", schema)
