"""Resumable uploads: the tus 1.0 protocol (core, creation, termination, checksum, expiration)
at `/api/v1/uploads`. The protocol's wire format is `service.tus`'s, uploads and their chunks
`service.uploads`'."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from flask import Response, current_app, request
from flask.views import MethodView
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from service import audit, dataset_files, quotas, tus, uploads
from service.api import Blueprint, db, limits, store_url
from service.auth import current_owner
from service.csv_source import UploadTooLarge
from service.problems import ApiError, InputError
from service.schemas import DatasetCsvSchema, ErrorSchema, UploadSchema
from service.tables import Upload
from service.upload_store import BodyCut

blp = Blueprint(
    "uploads",
    __name__,
    url_prefix="/uploads",
    description="Resumable uploads of dataset files (the tus 1.0 protocol).",
)

_STRING = {"type": "string"}
_INTEGER = {"type": "integer", "minimum": 0}
VERSION_DOC = {
    "in": "header",
    "name": "Tus-Resumable",
    "required": True,
    "description": "The protocol version: `1.0.0` (412 otherwise).",
    "schema": {"type": "string", "enum": [tus.VERSION]},
}
OFFSET_DOC = {
    "in": "header",
    "name": "Upload-Offset",
    "required": True,
    "description": "Where this chunk starts: the upload's offset (409 otherwise).",
    "schema": _INTEGER,
}
LENGTH_DOC = {
    "in": "header",
    "name": "Upload-Length",
    "required": True,
    "description": "The file's size in bytes (at most `Tus-Max-Size`).",
    "schema": {"type": "integer", "minimum": 1},
}
METADATA_DOC = {
    "in": "header",
    "name": "Upload-Metadata",
    "required": False,
    "description": "Comma-separated `key base64(value)` pairs: `name`, `target`, "
    "`column_types`, `delimiter`, `encoding`, `drop_missing_target` (the options of a raw "
    "`POST /datasets`), `filename` and `filetype` (CSV, Parquet or JSON lines by suffix or "
    "media type); other pairs are kept.",
    "schema": _STRING,
}
CHECKSUM_DOC = {
    "in": "header",
    "name": "Upload-Checksum",
    "required": False,
    "description": "`sha1 <base64 digest>` or `sha256 <base64 digest>` of this chunk: "
    "a chunk that does not match is not kept (460).",
    "schema": _STRING,
}
UPLOAD_HEADERS = {
    "Tus-Resumable": {"schema": _STRING},
    "Upload-Offset": {"schema": _INTEGER},
    "Upload-Length": {"schema": _INTEGER},
    "Upload-Expires": {"schema": _STRING, "description": "Unfinished uploads: when it expires."},
    "Upload-Dataset-Id": {"schema": _STRING, "description": "Once the dataset is made."},
    "Upload-Metadata": {"schema": _STRING, "description": "As the upload was created with."},
}
SERVER_HEADERS = {
    "Tus-Resumable": {"schema": _STRING},
    "Tus-Version": {"schema": _STRING},
    "Tus-Extension": {"schema": _STRING},
    "Tus-Max-Size": {"schema": _INTEGER},
    "Tus-Checksum-Algorithm": {"schema": _STRING},
}


@blp.after_request
def _protocol_headers(response: Response) -> Response:
    """Every answer names the protocol version and lets a browser's script read the
    protocol's headers; none is cached."""
    response.headers["Tus-Resumable"] = tus.VERSION
    response.headers["Access-Control-Expose-Headers"] = ", ".join(tus.EXPOSED_HEADERS)
    response.headers["Cache-Control"] = "no-store"
    return response


def _settings() -> tuple[float, int]:
    return float(current_app.config["UPLOAD_EXPIRE_HOURS"]), int(
        current_app.config["MAX_UPLOAD_BYTES"]
    )


def _server_info() -> Response:
    _hours, max_size = _settings()
    response = Response(status=204, mimetype="text/plain")
    response.headers.update(
        {
            "Tus-Version": tus.VERSION,
            "Tus-Extension": ",".join(tus.EXTENSIONS),
            "Tus-Max-Size": str(max_size),
            "Tus-Checksum-Algorithm": ",".join(tus.CHECKSUM_ALGORITHMS),
            "Access-Control-Allow-Methods": "POST, GET, HEAD, PATCH, DELETE, OPTIONS",
            "Access-Control-Allow-Headers": ", ".join(tus.ALLOWED_HEADERS),
            "Access-Control-Max-Age": "86400",
        }
    )
    return response


def _options_of(meta: dict[str, str]) -> dict[str, Any]:
    """The metadata's dataset options, checked as the raw upload's query is (and `filename`,
    `filetype`: at most 255 characters, none a control character)."""
    for key in ("filename", "filetype"):
        value = meta.get(key) or ""
        if len(value) > 255 or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise InputError(key, "must be at most 255 characters, none a control character")
    given = {key: meta[key] for key in uploads.OPTION_KEYS if key in meta}
    form = DatasetCsvSchema(exclude=("file",)).load(given)
    dataset_files.column_types(form.get("column_types"))
    return dict(form)


def _dataset_name(meta: dict[str, str]) -> str:
    return meta.get("name") or PurePath(meta.get("filename") or "").stem[:200] or "dataset"


def _upload_headers(upload: Upload, response: Response) -> Response:
    response.headers["Upload-Offset"] = str(upload.offset)
    response.headers["Upload-Length"] = str(upload.length)
    if upload.meta:
        response.headers["Upload-Metadata"] = tus.encode_metadata(upload.meta)
    if upload.dataset_id:
        response.headers["Upload-Dataset-Id"] = upload.dataset_id
    elif not uploads.is_finished(upload):
        response.headers["Upload-Expires"] = uploads.http_date(upload.expires_at)
    return response


class _Body:
    """The request body; a connection cut before its end is `BodyCut`."""

    def read(self, size: int) -> bytes:
        try:
            return request.stream.read(size)
        except (ClientDisconnected, ConnectionError) as exc:
            raise BodyCut() from exc


@blp.route("")
class Uploads(MethodView):
    @blp.response(204, headers=SERVER_HEADERS)
    def options(self) -> Response:
        """The server's tus capabilities (no API key needed): `Tus-Version`, `Tus-Extension`
        (`creation,termination,checksum,expiration`), `Tus-Max-Size`
        (`TRAINYARD_MAX_UPLOAD_BYTES`), `Tus-Checksum-Algorithm` (`sha1,sha256`)."""
        return _server_info()

    @blp.doc(parameters=[VERSION_DOC, LENGTH_DOC, METADATA_DOC])
    @blp.response(
        201,
        headers={
            "Location": {"schema": _STRING},
            "Tus-Resumable": {"schema": _STRING},
            "Upload-Expires": {"schema": _STRING},
        },
        description="Created: send the bytes to `Location` with PATCH.",
    )
    @blp.alt_response(400, schema=ErrorSchema, description="A header is malformed or missing.")
    @blp.alt_response(412, schema=ErrorSchema, description="Tus-Resumable is not `1.0.0`.")
    @blp.alt_response(413, schema=ErrorSchema, description="Upload-Length is over Tus-Max-Size.")
    @blp.alt_response(422, schema=ErrorSchema, description="An option in the metadata is invalid.")
    def post(self) -> Response:
        """Start a resumable upload of a dataset file (tus creation): `Upload-Length` says its
        size, `Upload-Metadata` its options. The answer's `Location` takes the bytes (PATCH);
        once the last byte is there, the dataset is made as `POST /datasets` makes it from the
        same file, and the upload's `Upload-Dataset-Id` names it. Unfinished uploads expire
        `TRAINYARD_UPLOAD_EXPIRE_HOURS` after their last chunk (`Upload-Expires`)."""
        tus.check_version(request.headers.get("Tus-Resumable"))
        if "Upload-Defer-Length" in request.headers:
            raise ApiError(400, "Upload-Defer-Length is not supported: send Upload-Length.")
        if "Upload-Concat" in request.headers:
            raise ApiError(400, "Upload-Concat is not supported: send the file as one upload.")
        length = tus.non_negative("Upload-Length", request.headers.get("Upload-Length"))
        expire_hours, max_size = _settings()
        if length > max_size:
            raise UploadTooLarge(max_size)
        if length == 0:
            raise InputError("Upload-Length", "is 0: an empty file holds no dataset")
        meta = tus.parse_metadata(request.headers.get("Upload-Metadata"))
        _options_of(meta)
        session = db()
        quotas.check(session, current_owner(), limits(), adding_bytes=length)
        upload = uploads.create_upload(
            session, current_owner(), length, meta, store_url(), expire_hours
        )
        session.commit()
        response = Response(status=201, mimetype="text/plain")
        response.headers["Location"] = f"{request.path.rstrip('/')}/{upload.id}"
        response.headers["Upload-Expires"] = uploads.http_date(upload.expires_at)
        return response


@blp.route("/<upload_id>")
class UploadById(MethodView):
    @blp.response(204, headers=SERVER_HEADERS)
    def options(self, upload_id: str) -> Response:
        """The server's tus capabilities (as `OPTIONS /uploads`)."""
        return _server_info()

    @blp.doc(parameters=[VERSION_DOC])
    @blp.response(200, headers=UPLOAD_HEADERS, description="The upload's offset and length.")
    @blp.alt_response(404, description="No such upload (or another owner's).")
    @blp.alt_response(410, description="The upload expired unfinished.")
    @blp.alt_response(412, description="Tus-Resumable is not `1.0.0`.")
    def head(self, upload_id: str) -> Response:
        """Where an upload stands (tus core): `Upload-Offset` (bytes received: resume from
        there), `Upload-Length`, `Upload-Expires`, and `Upload-Dataset-Id` once its dataset
        is made."""
        tus.check_version(request.headers.get("Tus-Resumable"))
        upload = uploads.find_upload(db(), upload_id, current_owner())
        return _upload_headers(upload, Response(status=200, mimetype="text/plain"))

    @blp.response(200, UploadSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such upload.")
    @blp.alt_response(410, schema=ErrorSchema, description="The upload expired unfinished.")
    def get(self, upload_id: str) -> Response:
        """An upload as JSON: its length, offset, metadata, status and, once made, its
        `dataset_id` (or the `error` that refused its data)."""
        upload = uploads.find_upload(db(), upload_id, current_owner())
        response = current_app.json.response(uploads.describe(upload))
        return _upload_headers(upload, response)

    @blp.doc(
        parameters=[VERSION_DOC, OFFSET_DOC, CHECKSUM_DOC],
        requestBody={
            "required": True,
            "content": {
                tus.OFFSET_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}
            },
        },
    )
    @blp.response(204, headers=UPLOAD_HEADERS, description="The chunk is stored.")
    @blp.alt_response(400, schema=ErrorSchema, description="A header is malformed or missing.")
    @blp.alt_response(404, schema=ErrorSchema, description="No such upload.")
    @blp.alt_response(409, schema=ErrorSchema, description="Upload-Offset is not the offset.")
    @blp.alt_response(410, schema=ErrorSchema, description="The upload expired unfinished.")
    @blp.alt_response(412, schema=ErrorSchema, description="Tus-Resumable is not `1.0.0`.")
    @blp.alt_response(413, schema=ErrorSchema, description="The chunk goes past Upload-Length.")
    @blp.alt_response(415, schema=ErrorSchema, description="Not `application/offset+octet-stream`.")
    @blp.alt_response(422, schema=ErrorSchema, description="The completed file was refused.")
    @blp.alt_response(460, schema=ErrorSchema, description="Upload-Checksum does not match.")
    @blp.alt_response(503, schema=ErrorSchema, description="The dataset store is unavailable.")
    def patch(self, upload_id: str) -> Response:
        """Send bytes from `Upload-Offset` on (tus core; `application/offset+octet-stream`).
        With `Upload-Checksum` a chunk is kept only if it matches (460 otherwise); without
        one, a chunk whose connection is cut keeps the bytes that arrived (HEAD says how
        many). The chunk that completes the file makes the dataset (as `POST /datasets`, from
        the metadata's options) before the answer: its id is in `Upload-Dataset-Id`; a file
        that cannot be read is a 4xx naming the problem, recorded on the upload (`GET`)."""
        tus.check_version(request.headers.get("Tus-Resumable"))
        session = db()
        upload = uploads.find_upload(session, upload_id, current_owner())
        start = tus.non_negative("Upload-Offset", request.headers.get("Upload-Offset"))
        if request.mimetype != tus.OFFSET_CONTENT_TYPE:
            raise ApiError(415, f"Content-Type must be {tus.OFFSET_CONTENT_TYPE}.")
        checksum = tus.parse_checksum(request.headers.get("Upload-Checksum"))
        expire_hours, max_size = _settings()
        if start == upload.offset == upload.length and upload.dataset_id:
            return _upload_headers(upload, Response(status=204, mimetype="text/plain"))
        if start == upload.offset == upload.length and not uploads.is_finished(upload):
            # the completion failed for want of the store: try again
            return self._complete(upload, expire_hours, max_size)
        remaining = upload.length - upload.offset
        if start == upload.offset and (request.content_length or 0) > remaining:
            raise ApiError(413, f"The chunk goes past the upload's length ({upload.length}).")
        request.max_content_length = max_size
        try:
            offset, cut = uploads.accept_chunk(
                session, upload, start, _Body(), checksum, expire_hours
            )
        except RequestEntityTooLarge:
            raise UploadTooLarge(max_size) from None
        if cut:
            raise ApiError(
                400,
                f"The body ended early; {offset} bytes of the upload are stored.",
                code="incomplete_upload",
                headers={"Upload-Offset": str(offset)},
            )
        if offset == upload.length:
            return self._complete(upload, expire_hours, max_size)
        return _upload_headers(upload, Response(status=204, mimetype="text/plain"))

    @staticmethod
    def _complete(upload: Upload, expire_hours: float, max_size: int) -> Response:
        audit.note("upload.complete")  # the one chunk of an upload that the audit log shows
        meta = upload.meta or {}
        options = dataset_files.file_options(
            _options_of(meta), _dataset_name(meta), current_app.config.get("CSV_BLOCK_SIZE")
        )
        completion = uploads.Completion(options, limits(), store_url(), max_size)
        done = uploads.complete(db(), upload, completion, expire_hours)
        return _upload_headers(done, Response(status=204, mimetype="text/plain"))

    @blp.doc(parameters=[VERSION_DOC])
    @blp.response(204, headers={"Tus-Resumable": {"schema": _STRING}})
    @blp.alt_response(404, schema=ErrorSchema, description="No such upload.")
    @blp.alt_response(410, schema=ErrorSchema, description="The upload expired unfinished.")
    @blp.alt_response(409, schema=ErrorSchema, description="Its dataset is being made.")
    @blp.alt_response(412, schema=ErrorSchema, description="Tus-Resumable is not `1.0.0`.")
    @blp.alt_response(503, schema=ErrorSchema, description="The dataset store is unavailable.")
    def delete(self, upload_id: str) -> Response:
        """Cancel an upload (tus termination): the upload and its bytes are deleted (a dataset
        it made stays); `409` while its dataset is being made (status `completing`)."""
        tus.check_version(request.headers.get("Tus-Resumable"))
        session = db()
        upload = uploads.find_upload(session, upload_id, current_owner())
        uploads.terminate(session, upload)
        return Response(status=204, mimetype="text/plain")
