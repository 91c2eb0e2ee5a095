"""Request and response schemas, in one place.

The same schemas validate requests and generate the OpenAPI document. Arrays of numbers
(`features`, `targets`) are `Raw` fields documented as arrays: walking millions of numbers
through marshmallow fields would be slow, so `service.datasets` checks them with NumPy.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from service.models import JOB_STATUSES
from service.modelspec import ACTIVATIONS, LOSSES, OPTIMIZERS

NUMBER_MATRIX = {
    "description": "Rows of equally many finite numbers (at least one row and one column).",
    "type": "array",
    "minItems": 1,
    "items": {"type": "array", "minItems": 1, "items": {"type": "number"}},
    "example": [[0.1, 0.5], [0.9, -0.2]],
}
TARGETS = {
    "description": "One target per row: a number (regression), a list of numbers (several "
    "outputs), or a class label (all integers, all strings or all booleans).",
    "type": "array",
    "minItems": 1,
    "items": {
        "oneOf": [
            {"type": "number"},
            {"type": "string"},
            {"type": "boolean"},
            {"type": "array", "items": {"type": "number"}},
        ]
    },
    "example": [1, 0],
}
DEFAULT_LEARNING_RATE = {"sgd": 0.05, "adam": 0.01}
MAX_PAGE = 1_000_000  # keeps OFFSET within what every database takes


class UTCDateTime(fields.DateTime):
    """ISO 8601 with an offset; SQLite hands back naive datetimes, which are UTC."""

    def _serialize(self, value: Any, attr: Any, obj: Any, **kwargs: Any) -> Any:
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return super()._serialize(value, attr, obj, **kwargs)


NO_NUL = validate.Regexp(r"^[^\x00]*$", error="cannot hold NUL characters")


class DatasetInSchema(Schema):
    name = fields.String(required=True, validate=[validate.Length(min=1, max=200), NO_NUL])
    features = fields.Raw(required=True, metadata=NUMBER_MATRIX)
    targets = fields.Raw(required=True, metadata=TARGETS)


class DatasetCsvSchema(Schema):
    """`multipart/form-data`: a CSV file with a header row."""

    file = fields.Raw(required=True, metadata={"type": "string", "format": "binary"})
    name = fields.String(
        validate=[validate.Length(min=1, max=200), NO_NUL],
        metadata={"description": "Default: the file name without its extension."},
    )
    target = fields.String(
        metadata={"description": "The target column's name. Default: the last column."}
    )


class DatasetSchema(Schema):
    id = fields.String()
    name = fields.String()
    n_samples = fields.Integer()
    n_features = fields.Integer()
    n_targets = fields.Integer()
    classes = fields.List(
        fields.Raw(),
        metadata={"description": "Sorted distinct labels, when the targets are labels."},
    )
    feature_names = fields.List(fields.String(), metadata={"description": "From a CSV header."})
    created_at = UTCDateTime()


class DatasetRowsSchema(Schema):
    id = fields.String()
    features = fields.List(fields.List(fields.Float()), metadata={"description": "One row each."})
    targets = fields.List(
        fields.Raw(),
        metadata={
            "description": "As submitted: numbers, a list per row for several outputs, or "
            "labels (ints or strings)."
        },
    )


class ModelSpecSchema(Schema):
    layers = fields.List(
        fields.Integer(strict=True, validate=validate.Range(min=1)),
        required=True,
        validate=validate.Length(min=1),
        metadata={
            "description": "Widths of the layers (`nouts` of `MLP(nin, nouts)`); the "
            "last one is the output width.",
            "example": [16, 16, 1],
        },
    )
    activation = fields.String(load_default="tanh", validate=validate.OneOf(ACTIVATIONS))
    output_activation = fields.String(
        load_default=None, allow_none=True, validate=validate.OneOf(ACTIVATIONS)
    )


class TrainingSpecSchema(Schema):
    loss = fields.String(load_default="mse", validate=validate.OneOf(LOSSES))
    optimizer = fields.String(load_default="sgd", validate=validate.OneOf(OPTIMIZERS))
    learning_rate = fields.Float(
        load_default=None,
        allow_none=True,
        validate=validate.Range(min=0, min_inclusive=False),
        metadata={"description": "Default 0.05 for sgd, 0.01 for adam."},
    )
    momentum = fields.Float(
        load_default=0.0, validate=validate.Range(min=0, max=1, max_inclusive=False)
    )
    weight_decay = fields.Float(load_default=0.0, validate=validate.Range(min=0))
    epochs = fields.Integer(strict=True, load_default=100, validate=validate.Range(min=1))
    batch_size = fields.Integer(
        strict=True,
        load_default=32,
        allow_none=True,
        validate=validate.Range(min=1),
        metadata={"description": "null: full batch."},
    )
    seed = fields.Integer(strict=True, load_default=0, validate=validate.Range(min=0))
    validation_split = fields.Float(
        load_default=0.0, validate=validate.Range(min=0, max=1, max_inclusive=False)
    )

    @post_load
    def _fill_learning_rate(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        if data.get("learning_rate") is None:
            data["learning_rate"] = DEFAULT_LEARNING_RATE[data["optimizer"]]
        return data


class JobInSchema(Schema):
    dataset_id = fields.String(metadata={"description": "An existing dataset; or `dataset`."})
    dataset = fields.Nested(DatasetInSchema, metadata={"description": "The data inline."})
    model = fields.Nested(ModelSpecSchema, required=True)
    training = fields.Nested(TrainingSpecSchema, load_default=lambda: TrainingSpecSchema().load({}))

    @validates_schema
    def _one_dataset(self, data: dict[str, Any], **_: Any) -> None:
        if ("dataset_id" in data) == ("dataset" in data):
            raise ValidationError(
                "give exactly one of dataset_id and dataset", field_name="dataset_id"
            )


class ProgressSchema(Schema):
    epoch = fields.Integer(metadata={"description": "Finished epochs."})
    epochs = fields.Integer()


class JobSchema(Schema):
    id = fields.String()
    status = fields.String(metadata={"enum": list(JOB_STATUSES)})
    dataset_id = fields.String()
    model = fields.Dict(metadata={"description": "The model spec with every default filled."})
    training = fields.Dict(metadata={"description": "The training spec, defaults filled."})
    progress = fields.Nested(ProgressSchema)
    loss_history = fields.List(fields.Float(), metadata={"description": "Per finished epoch."})
    val_loss_history = fields.List(fields.Float())
    metrics = fields.Dict(allow_none=True)
    error = fields.String(allow_none=True)
    model_id = fields.String(allow_none=True)
    attempts = fields.Integer()
    cancel_requested = fields.Boolean()
    created_at = UTCDateTime()
    started_at = UTCDateTime(allow_none=True)
    finished_at = UTCDateTime(allow_none=True)


class ModelSchema(Schema):
    id = fields.String()
    job_id = fields.String()
    dataset_id = fields.String()
    architecture = fields.Dict(
        metadata={
            "description": "`nin`, `layers`, `activation`, `output_activation`, `loss`, `classes`."
        }
    )
    parameters = fields.Dict(
        keys=fields.String(),
        values=fields.Raw(),
        metadata={"description": "name -> nested lists (the `state_dict` of the MLP)."},
    )
    metrics = fields.Dict()
    created_at = UTCDateTime()


class ModelSummarySchema(ModelSchema):
    class Meta:
        exclude = ("parameters",)


class PredictInSchema(Schema):
    features = fields.Raw(required=True, metadata=NUMBER_MATRIX)


class PredictionSchema(Schema):
    predictions = fields.List(
        fields.Raw(), metadata={"description": "Values (regression) or labels, one per row."}
    )
    probabilities = fields.List(
        fields.List(fields.Float()),
        metadata={"description": "Classification: one probability per class, in `classes` order."},
    )


class PageQuerySchema(Schema):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=MAX_PAGE))
    page_size = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))


class JobPageQuerySchema(PageQuerySchema):
    status = fields.String(validate=validate.OneOf(JOB_STATUSES))


class PaginationSchema(Schema):
    page = fields.Integer()
    page_size = fields.Integer()
    total = fields.Integer(metadata={"description": "Items in all pages."})
    pages = fields.Integer()


def page_of(item_schema: type[Schema], name: str) -> type[Schema]:
    """A page of items: `{"items": [...], "pagination": {...}}`."""
    return Schema.from_dict(
        {
            "items": fields.List(fields.Nested(item_schema)),
            "pagination": fields.Nested(PaginationSchema),
        },
        name=name,
    )


DatasetPageSchema = page_of(DatasetSchema, "DatasetPage")
JobPageSchema = page_of(JobSchema, "JobPage")
ModelPageSchema = page_of(ModelSummarySchema, "ModelPage")


class HealthSchema(Schema):
    status = fields.String()
    checks = fields.Dict(keys=fields.String(), values=fields.String())


class ErrorBodySchema(Schema):
    code = fields.String()
    message = fields.String()
    fields_ = fields.Dict(
        data_key="fields",
        keys=fields.String(),
        values=fields.String(),
        metadata={
            "description": "Dotted paths into the request body -> what is wrong there.",
            "example": {"training.epochs": "Must be greater than or equal to 1."},
        },
    )


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBodySchema)
