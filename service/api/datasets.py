"""Datasets: submit (JSON or a CSV file), fetch, list."""

from __future__ import annotations

import json
from pathlib import PurePath
from typing import Any

from flask import Response, request
from flask.views import MethodView
from marshmallow import RAISE

from service import datasets, ingest
from service.api import Blueprint, db, limits, page, require_content_type
from service.auth import current_owner
from service.errors import InputError
from service.idempotency import HEADER_DOC, Idempotency
from service.schemas import (
    DatasetCsvSchema,
    DatasetInSchema,
    DatasetPageSchema,
    DatasetRowsSchema,
    DatasetSchema,
    ErrorSchema,
    PageQuerySchema,
)

blp = Blueprint("datasets", __name__, url_prefix="/datasets", description="Training data.")


def _column_types(raw: str | None) -> Any:
    if raw is None or raw == "":
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise InputError(
            "column_types", 'must be a JSON object such as {"zip": "categorical"}'
        ) from None


def _parse_upload() -> ingest.ParsedDataset:
    if request.mimetype == "application/json":
        data = DatasetInSchema().load(request.get_json())
        return ingest.parse_json_dataset(data, limits())
    upload = request.files.get("file")
    if upload is None:
        raise InputError("file", "a CSV file is needed in the form field 'file'")
    form = DatasetCsvSchema(exclude=("file",)).load(request.form.to_dict())
    stem = PurePath((upload.filename or "").replace("\x00", "")).stem
    name = form.get("name") or stem or "dataset"
    return ingest.parse_csv_dataset(
        upload.read(),
        name[:200],
        form.get("target"),
        limits(),
        column_types=_column_types(form.get("column_types")),
    )


@blp.route("")
class Datasets(MethodView):
    @blp.arguments(PageQuerySchema, location="query", unknown=RAISE)
    @blp.response(200, DatasetPageSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """List datasets, newest first.

        Paginated with `page` (from 1) and `page_size` (1 to 100); the body holds the page's
        `items` and `pagination` (`page`, `page_size`, `total`, `pages`).
        """
        rows, total = datasets.list_datasets(
            db(), current_owner(), query["page"], query["page_size"]
        )
        return page([datasets.describe(d) for d in rows], total, query)

    @blp.doc(
        parameters=[HEADER_DOC],
        requestBody={
            "required": True,
            "content": {
                "application/json": {"schema": DatasetInSchema},
                "multipart/form-data": {"schema": DatasetCsvSchema},
            },
        },
    )
    @blp.response(201, DatasetSchema, headers={"Location": {"schema": {"type": "string"}}})
    @blp.alt_response(415, schema=ErrorSchema, description="Neither JSON nor a form.")
    @blp.alt_response(
        422, schema=ErrorSchema, description="Invalid data, or an `Idempotency-Key` reused."
    )
    @require_content_type("application/json", "multipart/form-data")
    def post(self) -> Response:
        """Submit a dataset as JSON, or as a CSV file (`multipart/form-data`).

        JSON: `{"name", "features": [[...], ...], "targets": [...]}` or `{"name", "rows":
        [{"col": value, ...}, ...], "target": "col"}`. CSV: field `file` with a header row;
        `target` names the target column (default: the last one), `name` defaults to the file
        name. Feature columns are numeric or categorical (strings, booleans), inferred unless
        `column_types` says otherwise; cells may be missing (empty, `NA`, `NaN`, `null`,
        `None`; JSON `null`), targets may not. With an `Idempotency-Key`, a retry gets
        the first answer and stores nothing new.
        """
        session, owner = db(), current_owner()
        idempotency = Idempotency(session, owner)
        replayed = idempotency.replay()
        if replayed is not None:
            return replayed
        dataset = datasets.create_dataset(session, _parse_upload(), owner)
        body = datasets.describe(dataset)
        response, _ = idempotency.commit(body, 201, f"{request.path}/{dataset.id}")
        return response


@blp.route("/<dataset_id>")
class DatasetById(MethodView):
    @blp.response(200, DatasetSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such dataset.")
    def get(self, dataset_id: str) -> dict[str, Any]:
        """Fetch a dataset's description (not its data)."""
        return datasets.describe(datasets.get_dataset(db(), dataset_id, current_owner()))


@blp.route("/<dataset_id>/data")
class DatasetRows(MethodView):
    @blp.response(200, DatasetRowsSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such dataset.")
    def get(self, dataset_id: str) -> dict[str, Any]:
        """Fetch a dataset's rows: `features` and `targets` as they were submitted."""
        session = db()
        return datasets.dataset_rows(
            session, datasets.get_dataset(session, dataset_id, current_owner())
        )
