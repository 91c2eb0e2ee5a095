"""Datasets: submit (JSON or a CSV file), fetch, list."""

from __future__ import annotations

import hashlib
from pathlib import PurePath
from typing import Any, BinaryIO

import sqlalchemy as sa
from flask import Response, current_app, request, url_for
from flask.views import MethodView
from marshmallow import RAISE
from werkzeug.exceptions import RequestEntityTooLarge

from service import (
    dataset_files,
    datasets,
    deletion,
    imports,
    ingest,
    jobs,
    quotas,
    row_formats,
    table_stream,
)
from service.api import (
    Blueprint,
    db,
    json_only,
    limits,
    page,
    require_content_type,
    store_url,
    streamed_content,
)
from service.auth import current_owner
from service.csv_source import UploadTooLarge
from service.csv_stream import CsvOptions
from service.dataset_files import FORMAT_OF_TYPE, RAW_TYPES
from service.dataset_store import store_for
from service.idempotency import HEADER_DOC, Idempotency, request_key
from service.problems import InputError
from service.schemas import (
    DatasetCsvQuerySchema,
    DatasetCsvSchema,
    DatasetInSchema,
    DatasetPageSchema,
    DatasetRowsSchema,
    DatasetSchema,
    ErrorSchema,
    ExpiryInSchema,
    ImportInSchema,
    ImportJobSchema,
    PageQuerySchema,
)
from service.tables import Dataset, IdempotentRequest

blp = Blueprint("datasets", __name__, url_prefix="/datasets", description="Training data.")


def _json_too_large() -> UploadTooLarge:
    return UploadTooLarge(
        int(current_app.config["MAX_CONTENT_LENGTH"]), "TRAINYARD_MAX_CONTENT_LENGTH"
    )


def _parse_json() -> ingest.ParsedDataset:
    try:
        data = request.get_json()
    except RequestEntityTooLarge:
        raise _json_too_large() from None
    return ingest.parse_json_dataset(DatasetInSchema().load(data), limits())


def _by_reference() -> dict[str, Any] | None:
    """The body, when it asks for an import by reference (it has a `source`)."""
    try:
        data = request.get_json()
    except RequestEntityTooLarge:
        raise _json_too_large() from None
    return data if isinstance(data, dict) and "source" in data else None


def _import(session: Any, owner: str, idempotency: Idempotency, data: dict[str, Any]) -> Response:
    """`POST /datasets` by reference: an import job (`service.imports`), answered `202`."""
    loaded = ImportInSchema().load(data)
    prefixes = imports.prefixes_of(str(current_app.config["IMPORT_PREFIXES"]))
    job = imports.submit(session, loaded, owner, limits(), prefixes, store_url())
    body = jobs.serialize_job(session, job)
    response, first = idempotency.commit(body, 202, url_for("jobs.JobById", job_id=job.id))
    if first:
        jobs.publish(session, current_app.extensions["celery"], job.id, "import")
    return response


def _upload_limit() -> int:
    return int(current_app.config["MAX_UPLOAD_BYTES"])


FORM_SLACK = 1 << 20


def _form_format(filename: str, stream: BinaryIO) -> str:
    """The file's format: by its name's suffix (`.parquet`, `.jsonl`, `.ndjson`, also
    gzipped), else Parquet by its first bytes (`PAR1`), else CSV."""
    named = dataset_files.format_of_name(filename)
    if named is not None:
        return named
    if stream.seekable():
        head = stream.read(4)
        stream.seek(0)
        if head == table_stream.PARQUET_MAGIC:
            return table_stream.PARQUET
    return table_stream.CSV


def _form_upload() -> tuple[BinaryIO, CsvOptions, str]:
    """The file part of a form (werkzeug keeps a large one in a temporary file, not in
    memory), the form's options and the file's format."""
    try:
        upload = request.files.get("file")
        fields = request.form.to_dict()
    except RequestEntityTooLarge:
        raise UploadTooLarge(_upload_limit()) from None
    if upload is None:
        raise InputError(
            "file", "a CSV, Parquet or JSON-lines file is needed in the form field 'file'"
        )
    form = DatasetCsvSchema(exclude=("file",)).load(fields)
    filename = (upload.filename or "").replace("\x00", "")
    stem = PurePath(filename).stem
    fmt = _form_format(filename, upload.stream)
    return upload.stream, _options(form, form.get("name") or stem or "dataset"), fmt


def _options(form: dict[str, Any], name: str) -> CsvOptions:
    return dataset_files.file_options(form, name, current_app.config.get("CSV_BLOCK_SIZE"))


def _store_csv(
    session: Any,
    owner: str,
    stream: BinaryIO,
    options: CsvOptions,
    expected: int | None = None,
    fmt: str = table_stream.CSV,
) -> tuple[Dataset, list[dict[str, Any]]]:
    return dataset_files.store_file(
        session,
        owner,
        stream,
        options,
        limits=limits(),
        store_url=store_url(),
        max_bytes=_upload_limit(),
        expected=expected,
        fmt=fmt,
    )


class _StreamedFingerprint:
    """An `Idempotency-Key` fingerprint of a raw body, hashed as it streams past (the body is
    never held): method, path, query, content type, then the bytes. Without the header nothing
    reads it, so the bytes are not hashed (`hashing` False): SHA-256 of a large upload costs
    about a second of CPU per 1.5 GB, taken from the parsing on the same cores."""

    def __init__(self, raw: BinaryIO, hashing: bool = True) -> None:
        self.raw = raw
        self.hashing = hashing
        self.hash = hashlib.sha256()
        self.hash.update(
            f"{request.method} {request.path}?{request.query_string.decode('latin-1')} "
            f"{request.mimetype}\n".encode()
        )

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if self.hashing:
            self.hash.update(data)
        return data

    def drain(self) -> str:
        while self.read(1 << 20):
            pass
        return self.hash.hexdigest()


class _StreamedIdempotency(Idempotency):
    """`Idempotency` for a raw body: its fingerprint is known once the body has passed."""

    def __init__(self, session: Any, owner: str, body: _StreamedFingerprint) -> None:
        self.session = session
        self.owner = owner
        self.key = request_key()
        self.body = body
        self.fp = ""

    def replay(self) -> Response | None:
        if self.key is None:
            return None
        held = sa.select(IdempotentRequest.key).where(
            IdempotentRequest.owner == self.owner, IdempotentRequest.key == self.key
        )
        if self.session.scalar(held) is not None:
            self.fp = self.body.drain()
            return super().replay()
        return None

    def commit(
        self, body: dict[str, Any], status: int, location: str | None = None
    ) -> tuple[Response, bool]:
        if self.key is not None:
            self.fp = self.body.hash.hexdigest()
        return super().commit(body, status, location)


def _raw_upload(query: dict[str, Any]) -> tuple[BinaryIO, CsvOptions]:
    """The body and the query's options."""
    limit = _upload_limit()
    if request.content_length is not None and request.content_length > limit:
        raise UploadTooLarge(limit)
    return request.stream, _options(query, query.get("name") or "dataset")


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
                **{t: {"schema": {"type": "string", "format": "binary"}} for t in RAW_TYPES},
            },
        },
    )
    @blp.arguments(DatasetCsvQuerySchema, location="query", unknown=RAISE, as_kwargs=True)
    @blp.response(201, DatasetSchema, headers={"Location": {"schema": {"type": "string"}}})
    @blp.alt_response(
        413,
        schema=ErrorSchema,
        description="The body is larger than the configured limit, or the owner is over its "
        "stored-bytes quota (`quota_bytes_exceeded`).",
    )
    @blp.alt_response(415, schema=ErrorSchema, description="Neither JSON, a form nor CSV.")
    @blp.alt_response(
        422, schema=ErrorSchema, description="Invalid data, or an `Idempotency-Key` reused."
    )
    @blp.alt_response(
        202,
        schema=ImportJobSchema,
        description="By reference (`source`): the import job (`Location`: `/api/v1/jobs/{id}`).",
    )
    @blp.alt_response(
        403, schema=ErrorSchema, description="A `source` not under `TRAINYARD_IMPORT_PREFIXES`."
    )
    @blp.alt_response(503, schema=ErrorSchema, description="The dataset store is unavailable.")
    @require_content_type("application/json", "multipart/form-data", *RAW_TYPES)
    def post(self, **query: Any) -> Response:
        """Submit a dataset as JSON, or a CSV, Parquet or JSON-lines file as a form or as the
        raw body.

        JSON: `{"name", "features": [[...], ...], "targets": [...]}` or `{"name", "rows":
        [{"col": value, ...}, ...], "target": "col"}`. CSV (also gzipped; any size up to
        `TRAINYARD_MAX_UPLOAD_BYTES`, streamed into the dataset store): `multipart/form-data`
        with the field `file`, or the file itself as the body (`text/csv`,
        `text/tab-separated-values`, `application/gzip`) with the options as query parameters.
        Parquet (`application/vnd.apache.parquet` or `application/x-parquet`, or a form's
        file named `*.parquet` or starting with `PAR1`) and JSON lines (one object per line:
        `application/x-ndjson` or `application/jsonl`, or a form's file named `*.jsonl` or
        `*.ndjson`) are read the same way, a row group or a block of lines at a time, their
        numbers as numbers and other cells by the CSV rules. A CSV file has a header
        row; `target` names the target column (default: the last one), `name` defaults to the
        file name; the delimiter (`,` tab `;` `|`) is detected unless
        `delimiter` names it; the text is UTF-8 unless `encoding` names another. Feature
        columns are numeric or categorical (strings, booleans), inferred unless `column_types`
        says otherwise (a column that turns to text after numbers is categorical, with a
        warning); cells may be missing (empty, `NA`, `NaN`, `null`, `None`; JSON `null`),
        targets may not, unless `drop_missing_target` drops such rows. With an
        `Idempotency-Key`, a retry gets the first answer and stores nothing new. The query's
        `expires_at` (any body) is when the dataset is deleted; none while the owner is over its
        stored-bytes quota (`413`).

        By reference: JSON `{"source": "s3://bucket/key.csv", "name", "target",
        "column_types"}` (a `.csv`/`.tsv` object, also `.gz`; a `.parquet` object; or a folder
        of Parquet parts, `s3://bucket/folder/`; `file:///path` in the embedded mode) imports
        an object already in the object store without its bytes passing through the API, as a
        job of kind `import` on a worker: the answer is `202` with the job (progress in bytes
        or rows, cancel, events like any job); its `dataset_id` names the dataset once it has
        succeeded, the same dataset an upload of the file makes. Only sources under a prefix
        that `TRAINYARD_IMPORT_PREFIXES` lists are allowed (else `403`; empty, the default,
        allows none).
        """
        session, owner = db(), current_owner()
        quotas.check(session, owner, limits())  # 413 once over the stored-bytes quota
        mimetype = request.mimetype
        if mimetype == "application/json":
            try:
                idempotency = Idempotency(session, owner)  # reads the body with a key
            except RequestEntityTooLarge:
                raise _json_too_large() from None
            replayed = idempotency.replay()
            if replayed is not None:
                return replayed
            by_reference = _by_reference()
            if by_reference is not None:
                return _import(session, owner, idempotency, by_reference)
            dataset = datasets.new_dataset(session, _parse_json(), owner, store_url())
            warnings: list[dict[str, Any]] = []
        elif mimetype == "multipart/form-data":
            # the file itself may be as large as the limit: the form's other parts and
            # boundaries get FORM_SLACK more (the file part is counted exactly as it is read)
            request.max_content_length = _upload_limit() + FORM_SLACK
            try:
                idempotency = Idempotency(session, owner)
            except RequestEntityTooLarge:
                raise UploadTooLarge(_upload_limit()) from None
            replayed = idempotency.replay()
            if replayed is not None:
                return replayed
            stream, options, fmt = _form_upload()
            dataset, warnings = _store_csv(session, owner, stream, options, fmt=fmt)
        else:
            request.max_content_length = _upload_limit()
            stream, options = _raw_upload(query)
            body_stream = _StreamedFingerprint(stream, hashing=request_key() is not None)
            idempotency = _StreamedIdempotency(session, owner, body_stream)
            replayed = idempotency.replay()
            if replayed is not None:
                return replayed
            dataset, warnings = _store_csv(
                session,
                owner,
                body_stream,
                options,
                request.content_length,
                FORMAT_OF_TYPE[mimetype],
            )
        if query.get("expires_at") is not None:
            dataset.expires_at = query["expires_at"]
        body = datasets.describe(dataset)
        body["warnings"] = warnings or body.get("warnings") or []
        try:
            response, first = idempotency.commit(body, 201, f"{request.path}/{dataset.id}")
        except BaseException:
            if mimetype != "application/json":
                store_for(store_url()).delete(dataset.id)
            raise
        if not first and mimetype != "application/json":
            store_for(store_url()).delete(dataset.id)
        return response


@blp.route("/<dataset_id>")
class DatasetById(MethodView):
    @blp.response(200, DatasetSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such dataset.")
    def get(self, dataset_id: str) -> dict[str, Any]:
        """Fetch a dataset's description (not its data)."""
        return datasets.describe(datasets.get_dataset(db(), dataset_id, current_owner()))

    @blp.response(204)
    @blp.alt_response(404, schema=ErrorSchema, description="No such dataset (or deleted).")
    @blp.alt_response(409, schema=ErrorSchema, description="Queued or running jobs use it.")
    def delete(self, dataset_id: str) -> Response:
        """Delete a dataset: at once it is `404` here and under it; its Parquet parts are
        removed from the store by the workers' maintenance sweep (`service.deletion`).

        `409` (`dataset_in_use`) naming the queued or running jobs that use it (cancel them
        first). The jobs and models trained on it stay (a model carries its preprocessing;
        it says `dataset_deleted: true`). Webhooks get `dataset.deleted`. A second `DELETE` is
        a `404`."""
        session = db()
        subjects = deletion.delete_dataset(session, dataset_id, current_owner())
        session.commit()
        deletion.publish(session, current_app.extensions.get("celery"), subjects)
        return Response(status=204)

    @json_only
    @blp.arguments(ExpiryInSchema)
    @blp.response(200, DatasetSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such dataset.")
    def patch(self, data: dict[str, Any], dataset_id: str) -> dict[str, Any]:
        """Set when the dataset expires (`expires_at`; null: never): the maintenance sweep
        deletes it then, as a `DELETE` would (not while queued or running jobs use it)."""
        session = db()
        dataset = datasets.get_dataset(session, dataset_id, current_owner())
        dataset.expires_at = data["expires_at"]
        session.commit()
        return datasets.describe(dataset)


#: the formats `GET /datasets/{id}/data` answers in; JSON (`{features, targets}`) by default
DATA_FORMATS = [row_formats.JSON, row_formats.CSV, row_formats.JSONL, row_formats.PARQUET]


@blp.route("/<dataset_id>/data")
class DatasetRows(MethodView):
    @blp.doc(
        responses=streamed_content(
            "The rows: JSON `{id, features, targets}` by default; streamed CSV, JSON lines or "
            "Parquet by `Accept`, the columns as uploaded.",
            DatasetRowsSchema,
            [row_formats.CSV, row_formats.JSONL, row_formats.PARQUET],
        )
    )
    @blp.response(200, DatasetRowsSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such dataset.")
    @blp.alt_response(406, schema=ErrorSchema, description="An `Accept` nothing here matches.")
    @blp.alt_response(503, schema=ErrorSchema, description="The dataset store is unavailable.")
    def get(self, dataset_id: str) -> Response:
        """Fetch a dataset's rows, streamed from the store a row group at a time.

        By `Accept`: `application/json` (also no `Accept`, or `*/*`): `{"id", "features",
        "targets"}` with the features and targets as they were submitted. `text/csv`,
        `application/x-ndjson` (or `application/jsonl`), `application/vnd.apache.parquet` (or
        `application/x-parquet`): the table as it was uploaded, as a file
        (`<name>.csv`, ...): the feature columns by name, then the target under its own name
        (`<target>_0`, `<target>_1`, ... for several outputs); a missing cell is empty
        (CSV) or null. A CSV downloaded this way, uploaded again, gives the same dataset.
        """
        dataset = datasets.get_dataset(db(), dataset_id, current_owner())
        fmt = row_formats.negotiate(request.headers.get("Accept"), DATA_FORMATS, row_formats.JSON)
        if fmt == row_formats.JSON:
            return Response(datasets.dataset_rows(dataset), mimetype="application/json")
        schema, batches = datasets.uploaded_batches(dataset)
        return row_formats.stream_response(batches, fmt, dataset.name or dataset.id, schema)
