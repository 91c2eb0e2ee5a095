"""Trained models: fetch, download weights and graph, predict.

Every `{model_id}` below is a reference: a model id, `NAME@vN` or `NAME@ALIAS` (the model
registry's), resolved at request time by `service.trained_models`."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, request, url_for
from marshmallow import RAISE

from service import deletion, jobs, predictions, row_formats, trained_models
from service.api import (
    Blueprint,
    db,
    json_only,
    limits,
    page,
    require_content_type,
    streamed_content,
)
from service.audit import read_only
from service.auth import current_owner
from service.idempotency import HEADER_DOC, Idempotency
from service.problems import InputError
from service.registry import registrations
from service.schemas import (
    BatchPredictInSchema,
    ErrorSchema,
    EvaluateInSchema,
    EvaluationSchema,
    ExpiryInSchema,
    ExportQuerySchema,
    ModelPageSchema,
    ModelSchema,
    ModelSummarySchema,
    PageQuerySchema,
    PredictCsvSchema,
    PredictInSchema,
    PredictionSchema,
    PredictJobSchema,
)

blp = Blueprint(
    "models",
    __name__,
    url_prefix="/models",
    description="Trained models. Wherever a route takes `{model_id}`, a registered model's "
    "`NAME@vN` (version N) or `NAME@ALIAS` (the version the alias points at now) works too.",
)


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
    """Fetch a model: architecture, parameters as nested lists, metrics, and where it is
    registered (`registered`)."""
    session = db()
    model = trained_models.get_model(session, model_id, current_owner(), with_weights=True)
    return {**trained_models.serialize_model(model), "registered": registrations(session, model.id)}


@blp.route("/<model_id>", methods=["DELETE"])
@blp.response(204)
@blp.alt_response(404, schema=ErrorSchema, description="No such model (or deleted).")
@blp.alt_response(409, schema=ErrorSchema, description="Registered (`model_registered`).")
def delete(model_id: str) -> Response:
    """Delete a model (its weights): `404` from then on for it and everything under it; its
    job stays, with `model_id` null. Webhooks get `model.deleted`. A second `DELETE` is a
    `404`."""
    session = db()
    subjects = deletion.delete_model(session, model_id, current_owner())
    session.commit()
    deletion.publish(session, current_app.extensions.get("celery"), subjects)
    return Response(status=204)


@blp.route("/<model_id>", methods=["PATCH"])
@json_only
@blp.arguments(ExpiryInSchema)
@blp.response(200, ModelSummarySchema)
@blp.alt_response(404, schema=ErrorSchema, description="No such model.")
def update(data: dict[str, Any], model_id: str) -> dict[str, Any]:
    """Set when the model expires (`expires_at`; null: never): the maintenance sweep deletes
    it then, as a `DELETE` would (not while it is registered)."""
    session = db()
    model = trained_models.get_model(session, model_id, current_owner())
    model.expires_at = data["expires_at"]
    session.commit()
    return trained_models.serialize_model(model, parameters=False)


@blp.route("/<model_id>/weights")
@blp.response(
    200,
    description="`.npz` of the MLP's `state_dict`.",
    content_type="application/octet-stream",
)
@blp.alt_response(404, schema=ErrorSchema, description="No such model.")
def get_weights(model_id: str) -> Response:
    """Download the weights: `engine.nn.MLP(...).load_state_dict(dict(np.load(f)))`.

    These are the network's weights only: it takes the preprocessed inputs. `GET .../bundle`
    has the weights together with the fitted preprocessing.
    """
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


@blp.route("/<model_id>/bundle")
@blp.response(
    200,
    description="`.npz`: the weights under their `state_dict` names plus `__model__.json` "
    "(the architecture with the fitted preprocessing, UTF-8 JSON as a uint8 array).",
    content_type="application/octet-stream",
)
@blp.alt_response(404, schema=ErrorSchema, description="No such model.")
def get_bundle(model_id: str) -> Response:
    """Download the whole model, preprocessing included: `core.model.Model.from_bytes(blob)`
    (or `client.Client.load_model`) predicts on raw rows."""
    model = trained_models.get_model(db(), model_id, current_owner(), with_weights=True)
    return Response(
        trained_models.bundle(model),
        mimetype="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="model-{model_id}.bundle.npz"'},
    )


@blp.route("/<model_id>/export")
@blp.arguments(ExportQuerySchema, location="query", unknown=RAISE)
@blp.response(
    200,
    description="`format=onnx`: an ONNX model (opset 17 + ai.onnx.ml 3) with the preprocessing, "
    "the network and the outputs (`label` and `probabilities`, or `prediction`); one input "
    "per raw column, `double [N, 1]` (NaN: missing) or `string [N, 1]` (empty: missing). "
    "`format=bundle`: a zip with `model.npz`, `weights.npz`, `model.json` and a README.",
    content_type="application/octet-stream",
)
@blp.alt_response(404, schema=ErrorSchema, description="No such model.")
@blp.alt_response(422, schema=ErrorSchema, description="A model this format cannot hold.")
def export(query: dict[str, Any], model_id: str) -> Response:
    """Export the model for other runtimes: ONNX (onnxruntime serves it with no Python of ours)
    or a self-describing zip bundle."""
    session = db()
    model = trained_models.get_model(session, model_id, current_owner(), with_weights=True)
    body, mimetype, filename = trained_models.export(session, model, query["format"])
    return Response(
        body,
        mimetype=mimetype,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


#: the formats `POST /models/{id}/predict` answers in; JSON by default
PREDICT_FORMATS = [row_formats.JSON, row_formats.CSV, row_formats.JSONL, row_formats.PARQUET]


@blp.route("/<model_id>/predict", methods=["POST"])
@read_only  # computes an answer: a `read` key may call it; not audited
@blp.doc(
    requestBody={
        "required": True,
        "content": {
            "application/json": {"schema": PredictInSchema},
            "multipart/form-data": {"schema": PredictCsvSchema},
        },
    },
    responses=streamed_content(
        "JSON; or, by `Accept`, streamed CSV (`prediction`, then `p_<label>` per class; "
        "`prediction_0`, ... for several outputs), JSON lines or Parquet with those columns.",
        PredictionSchema,
        [row_formats.CSV, row_formats.JSONL, row_formats.PARQUET],
    ),
)
@blp.response(200, PredictionSchema)
@blp.alt_response(404, schema=ErrorSchema, description="No such model.")
@blp.alt_response(406, schema=ErrorSchema, description="An `Accept` nothing here matches.")
@blp.alt_response(415, schema=ErrorSchema, description="Neither JSON nor a form.")
@blp.alt_response(422, schema=ErrorSchema, description="Rows that do not fit the model.")
@require_content_type("application/json", "multipart/form-data")
def predict(model_id: str) -> Any:
    """Predict on raw rows: the model's preprocessing (scaling, one-hot, imputing) is applied.

    JSON `{"rows": [{"col": value, ...}]}` (a missing key is a missing cell; an unknown key is a
    422) or `{"features": [[...]]}` (cells in the training column order); or a CSV file
    (`multipart/form-data`, field `file`) with a header naming the columns, in any order (a
    column the training dataset's target was under is left out, so a labelled file can be
    scored; another unknown column is a 422). Values for regression; labels (as submitted)
    and probabilities otherwise. A category never seen in training encodes as all zeros; a
    missing cell is imputed. `Accept: text/csv` (or `application/x-ndjson`,
    `application/vnd.apache.parquet`) streams the answer as a file, a piece of 65,536 rows
    at a time; every row is predicted first, so a row that cannot be is still a 422.
    """
    session = db()
    model = trained_models.get_model(session, model_id, current_owner(), with_weights=True)
    fmt = row_formats.negotiate(request.headers.get("Accept"), PREDICT_FORMATS, row_formats.JSON)
    if request.mimetype == "application/json":
        data = PredictInSchema().load(request.get_json())
        table = trained_models.input_table(model, data, limits())
        field = "rows" if "rows" in data else "features"
    else:
        upload = request.files.get("file")
        if upload is None:
            raise InputError("file", "a CSV file is needed in the form field 'file'")
        table = trained_models.csv_table(session, model, upload.read(), limits())
        field = "file"
    if fmt == row_formats.JSON:
        return trained_models.predict(model, table, field)
    outputs = trained_models.prediction_outputs(model, table, field)
    return row_formats.stream_response(
        trained_models.prediction_batches(model, outputs),
        fmt,
        f"predictions-{model.id}",
        trained_models.prediction_schema(model),
    )


@blp.route("/<model_id>/evaluate", methods=["POST"])
@read_only  # computes an answer: a `read` key may call it; not audited
@json_only
@blp.arguments(EvaluateInSchema)
@blp.response(200, EvaluationSchema)
@blp.alt_response(404, schema=ErrorSchema, description="No such model or dataset.")
@blp.alt_response(422, schema=ErrorSchema, description="A dataset that does not fit the model.")
def evaluate(data: dict[str, Any], model_id: str) -> dict[str, Any]:
    """Score the model on another dataset with the same columns and target: the metrics of the
    job's `evaluation` (classification or regression)."""
    session, owner = db(), current_owner()
    model = trained_models.get_model(session, model_id, owner, with_weights=True)
    return trained_models.evaluate(session, model, data["dataset_id"], owner)


@blp.route("/<model_id>/predictions", methods=["POST"])
@json_only
@blp.arguments(BatchPredictInSchema)
@blp.doc(parameters=[HEADER_DOC])
@blp.response(202, PredictJobSchema, headers={"Location": {"schema": {"type": "string"}}})
@blp.alt_response(404, schema=ErrorSchema, description="No such model or dataset.")
@blp.alt_response(415, schema=ErrorSchema, description="The body is not JSON.")
@blp.alt_response(
    422,
    schema=ErrorSchema,
    description="The dataset lacks a column the model takes, or an `Idempotency-Key` reused.",
)
@blp.alt_response(429, schema=ErrorSchema, description="Too many queued or running jobs.")
def predict_dataset(data: dict[str, Any], model_id: str) -> Response:
    """Batch predictions: the model's predictions for every row of one of your datasets,
    made by a job of kind `predict` on a worker.

    The dataset must hold every feature column the model takes (else `422` naming the first
    missing one); its target and other columns are ignored. The answer is the job (`Location`:
    `/api/v1/jobs/{job_id}`), which runs like any job: poll it, stream its events (`progress`
    events carry `rows_done`), cancel it. Once it has `succeeded`, its `download_url`
    (`/api/v1/predictions/{job_id}/data`) streams the predictions, one row per dataset row,
    in order, with the columns of this model's `POST .../predict` streamed answer: for
    classification `prediction` (the class, as text) and one `p_<class>` per class, for
    regression `prediction` (or `prediction_0`, ...). With an `Idempotency-Key`, a retry gets
    the first answer and makes no second job.
    """
    session, owner = db(), current_owner()
    idempotency = Idempotency(session, owner)
    replayed = idempotency.replay()
    if replayed is not None:
        return replayed
    job = predictions.submit(session, model_id, data, owner, limits())
    location = url_for("jobs.JobById", job_id=job.id)
    body = jobs.serialize_job(session, job)
    response, first = idempotency.commit(body, 202, location)
    if first:
        jobs.publish(session, current_app.extensions["celery"], job.id, "predict")
    return response
