"""Request and response schemas, in one place.

The same schemas validate requests and generate the OpenAPI document. Arrays of numbers
(`features`, `targets`) are `Raw` fields documented as arrays: walking millions of numbers
through marshmallow fields would be slow, so `service.datasets` checks them with NumPy.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from core import preprocessing
from core.spec import (
    ACTIVATIONS,
    DEFAULT_LEARNING_RATE,
    DEFAULT_LR_SCHEDULE,
    DTYPES,
    EARLY_STOPPING_DEFAULTS,
    EARLY_STOPPING_SPLIT,
    LOSSES,
    LR_SCHEDULE_DEFAULTS,
    LR_SCHEDULES,
    MODEL_DEFAULTS,
    OPTIMIZERS,
    TRAINING_DEFAULTS,
    learning_rate,
)
from service.registry import NAME_PATTERN, NAME_RULE
from service.tables import JOB_KINDS, JOB_STATUSES, KEY_SCOPES, SWEEP_STATUSES

CELL_MATRIX = {
    "description": "Rows of equally many cells (at least one row and one column): numbers, "
    "strings or booleans (a categorical column), null or an empty string (a missing cell).",
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "array",
        "minItems": 1,
        "items": {"type": ["number", "string", "boolean", "null"]},
    },
    "example": [[0.1, "Biscoe"], [None, "Dream"]],
}
RECORDS = {
    "description": "One object per row, keyed by column name; a key left out is a missing cell.",
    "type": "array",
    "minItems": 1,
    "items": {"type": "object"},
    "example": [{"island": "Biscoe", "bill_length_mm": 41.2, "species": "Adelie"}],
}
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
MAX_PAGE = 1_000_000  # keeps OFFSET within what every database takes


NO_NUL = validate.Regexp(r"^[^\x00]*$", error="cannot hold NUL characters")


MAX_TAGS = 20
TAG_KEY = validate.Regexp(r"^[^:\x00]{1,64}$", error="1 to 64 characters, no colon")


def _tag_count(tags: dict[str, str] | None) -> None:
    if tags is not None and len(tags) > MAX_TAGS:
        raise ValidationError(f"at most {MAX_TAGS} tags")


def expires_at_field(**kwargs: Any) -> fields.AwareDateTime:
    """When a row expires: an ISO 8601 time (without an offset: UTC); null: never."""
    return fields.AwareDateTime(
        allow_none=True,
        default_timezone=UTC,
        metadata={"description": "When it is deleted, as by a DELETE (ISO 8601; null: never)."},
        **kwargs,
    )


def name_field(**kwargs: Any) -> fields.String:
    return fields.String(
        allow_none=True,
        validate=[validate.Length(min=1, max=200), NO_NUL],
        metadata={"description": "A name of your choosing (not unique)."},
        **kwargs,
    )


def tags_field(**kwargs: Any) -> fields.Dict:
    return fields.Dict(
        keys=fields.String(validate=TAG_KEY),
        values=fields.String(validate=[validate.Length(max=200), NO_NUL]),
        allow_none=True,
        validate=_tag_count,
        metadata={
            "description": f"`{{key: value}}` strings (at most {MAX_TAGS}); "
            "`GET /jobs?tag=key:value` filters by them.",
            "example": {"project": "penguins"},
        },
        **kwargs,
    )


def register_as_field() -> fields.String:
    return fields.String(
        allow_none=True,
        validate=validate.Regexp(rf"\A{NAME_PATTERN.pattern}\Z", error=f"must be {NAME_RULE}"),
        metadata={
            "description": "A registered model's name (created if new): the trained (best) "
            "model becomes its next version when this succeeds (`/registry`)."
        },
    )


COLUMN_TYPES_DOC = {
    "description": "Column name -> `numeric` or `categorical`, overriding the inferred type "
    "(a column is numeric when every present cell is a number).",
    "type": "object",
    "additionalProperties": {"type": "string", "enum": ["numeric", "categorical"]},
    "example": {"zip": "categorical"},
}


class DatasetInSchema(Schema):
    """`features` + `targets` (a matrix of cells, columns named x0, x1, ...), or `rows` +
    `target` (objects keyed by column name)."""

    name = fields.String(required=True, validate=[validate.Length(min=1, max=200), NO_NUL])
    features = fields.Raw(metadata=CELL_MATRIX)
    targets = fields.Raw(metadata=TARGETS)
    rows = fields.Raw(metadata=RECORDS)
    target = fields.String(
        validate=[validate.Length(min=1, max=200), NO_NUL],
        metadata={"description": "With `rows`: the target column's name."},
    )
    column_types = fields.Raw(metadata=COLUMN_TYPES_DOC)

    @validates_schema
    def _one_form(self, data: dict[str, Any], **_: Any) -> None:
        if ("features" in data) == ("rows" in data):
            raise ValidationError(
                "give either features and targets, or rows and target", field_name="features"
            )
        if "features" in data and "targets" not in data:
            raise ValidationError("Missing data for required field.", field_name="targets")
        if "rows" in data and "target" not in data:
            raise ValidationError(
                "Missing data for required field (the target column's name).",
                field_name="target",
            )


class DatasetCsvSchema(Schema):
    """`multipart/form-data`: a CSV file with a header row, or a Parquet or JSON-lines file
    (`*.parquet`, `*.jsonl`, `*.ndjson`)."""

    file = fields.Raw(required=True, metadata={"type": "string", "format": "binary"})
    name = fields.String(
        validate=[validate.Length(min=1, max=200), NO_NUL],
        metadata={"description": "Default: the file name without its extension."},
    )
    target = fields.String(
        metadata={"description": "The target column's name. Default: the last column."}
    )
    column_types = fields.String(
        metadata={
            "description": 'A JSON object such as `{"zip": "categorical"}` overriding the '
            "inferred column types."
        }
    )
    delimiter = fields.String(
        validate=validate.Length(min=1, max=9),
        metadata={
            "description": "The cell separator: one character, or `tab`, `comma`, "
            "`semicolon`, `pipe`. Default: detected from the first lines (`,` tab `;` `|`)."
        },
    )
    encoding = fields.String(
        validate=[validate.Length(min=1, max=40), NO_NUL],
        metadata={
            "description": "The text encoding (e.g. `latin-1`, `cp1252`, `utf-16`). Default: "
            "UTF-8; other text is refused with the encoding it looks like."
        },
    )
    drop_missing_target = fields.Boolean(
        metadata={
            "description": "Drop rows whose target is missing (the answer's `warnings` say how "
            "many) instead of refusing the file. Default: false."
        }
    )


class DatasetCsvQuerySchema(DatasetCsvSchema):
    """The options of a raw body (CSV: `text/csv`, `text/tab-separated-values`,
    `application/gzip`; Parquet: `application/vnd.apache.parquet`; JSON lines:
    `application/x-ndjson`) as query parameters."""

    # for any body (JSON, a form, a raw file): when the dataset is deleted (`service.deletion`)
    expires_at = expires_at_field()

    class Meta:
        exclude = ("file",)


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
    feature_names = fields.List(
        fields.String(),
        metadata={"description": "The feature columns in order (x0, x1, ... when unnamed)."},
    )
    columns = fields.List(
        fields.Dict(),
        metadata={
            "description": "One per feature column: `name`, `type` (`numeric` or "
            "`categorical`), `missing` (count); numeric: `min`, `max`, `mean`, `std`; "
            "categorical: `n_levels` and `top` (the most frequent levels with their `count`)."
        },
    )
    target = fields.Dict(
        metadata={
            "description": "`name` (null when unnamed), `kind` (`numeric`, `integers` or "
            "`labels`) and `classes` (sorted labels, or null)."
        }
    )
    storage = fields.Dict(
        metadata={
            "description": "Where the rows are stored: `format` (`parquet`), `bytes` (their size "
            "in the store) and `checksum` (SHA-256 over the parts' SHA-256 digests)."
        }
    )
    warnings = fields.List(
        fields.Dict(),
        metadata={
            "description": "What the reader noticed while storing the rows, e.g. a column that "
            "became categorical because of some text cells (`column`, `message`, ...), or rows "
            "dropped for a missing target."
        },
    )
    created_at = fields.DateTime()
    expires_at = fields.DateTime(allow_none=True)
    warnings = fields.List(
        fields.Dict(),
        metadata={
            "description": "What the upload changed or dropped: `code` "
            "(`column_became_categorical`, `target_became_labels`, `rows_dropped`), "
            "`message`, and `column`, `values` (`line`, `value`) or `count`, `lines`."
        },
    )


class DatasetRowsSchema(Schema):
    id = fields.String()
    features = fields.List(
        fields.List(fields.Raw()),
        metadata={"description": "One row each: numbers, strings, null for missing cells."},
    )
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
    activation = fields.String(
        load_default=MODEL_DEFAULTS["activation"], validate=validate.OneOf(ACTIVATIONS)
    )
    output_activation = fields.String(
        load_default=MODEL_DEFAULTS["output_activation"],
        allow_none=True,
        validate=validate.OneOf(ACTIVATIONS),
    )
    dropout = fields.Float(
        load_default=MODEL_DEFAULTS["dropout"],
        validate=validate.Range(min=0, max=1, max_inclusive=False),
        metadata={
            "description": "Probability of zeroing each hidden activation while training "
            "(inverted dropout; never at predict time). 0: none."
        },
    )


class EarlyStoppingSchema(Schema):
    patience = fields.Integer(
        strict=True,
        load_default=EARLY_STOPPING_DEFAULTS["patience"],
        validate=validate.Range(min=1, max=100_000),
        metadata={"description": "Epochs without improvement before stopping."},
    )
    min_delta = fields.Float(
        load_default=EARLY_STOPPING_DEFAULTS["min_delta"],
        validate=validate.Range(min=0),
        metadata={"description": "The least decrease of the validation loss that counts."},
    )
    restore_best = fields.Boolean(
        load_default=EARLY_STOPPING_DEFAULTS["restore_best"],
        metadata={"description": "Save the best epoch's weights, not the last epoch's."},
    )
    refit = fields.Boolean(
        load_default=EARLY_STOPPING_DEFAULTS["refit"],
        metadata={
            "description": "With restore_best: once the best epoch is known, train again from "
            "the same start on the training and validation rows together for that many epochs "
            "and save that model (the validation scores stay those of the selection run's "
            "best epoch, the rows they were held out from)."
        },
    )


class LRScheduleSchema(Schema):
    type = fields.String(load_default=DEFAULT_LR_SCHEDULE, validate=validate.OneOf(LR_SCHEDULES))
    step_size = fields.Integer(
        strict=True,
        validate=validate.Range(min=1),
        metadata={
            "description": f"step: epochs per step (default "
            f"{LR_SCHEDULE_DEFAULTS['step']['step_size']})."
        },
    )
    gamma = fields.Float(
        validate=validate.Range(min=0, max=1, min_inclusive=False),
        metadata={
            "description": f"step: the factor per step (default "
            f"{LR_SCHEDULE_DEFAULTS['step']['gamma']})."
        },
    )
    min_lr = fields.Float(
        validate=validate.Range(min=0),
        metadata={"description": "cosine: the last epoch's rate (default 0)."},
    )
    factor = fields.Float(
        validate=validate.Range(min=0, max=1, min_inclusive=False, max_inclusive=False),
        metadata={
            "description": f"plateau: the factor on a plateau (default "
            f"{LR_SCHEDULE_DEFAULTS['plateau']['factor']})."
        },
    )
    patience = fields.Integer(
        strict=True,
        validate=validate.Range(min=0),
        metadata={
            "description": f"plateau: epochs without improvement first (default "
            f"{LR_SCHEDULE_DEFAULTS['plateau']['patience']})."
        },
    )

    @validates_schema
    def _fields_of_type(self, data: dict[str, Any], **_: Any) -> None:
        kind = data.get("type", DEFAULT_LR_SCHEDULE)
        allowed = {"type", *LR_SCHEDULE_DEFAULTS[kind]}
        for key in data:
            if key not in allowed:
                raise ValidationError(
                    f"does not apply to the {kind!r} schedule",
                    field_name=key,
                )


class PreprocessingSchema(Schema):
    numeric = fields.String(
        load_default=preprocessing.DEFAULTS["numeric"],
        validate=validate.OneOf(preprocessing.CHOICES["numeric"]),
    )
    categorical = fields.String(
        load_default=preprocessing.DEFAULTS["categorical"],
        validate=validate.OneOf(preprocessing.CHOICES["categorical"]),
    )
    missing = fields.String(
        load_default=preprocessing.DEFAULTS["missing"],
        validate=validate.OneOf(preprocessing.CHOICES["missing"]),
        metadata={"description": "impute: the training rows' median / most frequent level."},
    )
    target = fields.String(
        load_default=preprocessing.DEFAULTS["target"],
        validate=validate.OneOf(preprocessing.CHOICES["target"]),
        metadata={
            "description": "mse only: standardize the target while training "
            "(predictions come back in its own units)."
        },
    )


class TrainingSpecSchema(Schema):
    loss = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.OneOf(LOSSES),
        metadata={
            "description": "Default: binary_cross_entropy for 2 classes, cross_entropy for more "
            "(string or boolean labels, or one column of integers with 2 values), mse for numbers."
        },
    )
    optimizer = fields.String(
        load_default=TRAINING_DEFAULTS["optimizer"], validate=validate.OneOf(OPTIMIZERS)
    )
    learning_rate = fields.Float(
        load_default=None,
        allow_none=True,
        validate=validate.Range(min=0, min_inclusive=False),
        metadata={
            "description": "Default: "
            + ", ".join(f"{lr} for {name}" for name, lr in DEFAULT_LEARNING_RATE.items())
            + "."
        },
    )
    momentum = fields.Float(
        load_default=TRAINING_DEFAULTS["momentum"],
        validate=validate.Range(min=0, max=1, max_inclusive=False),
    )
    weight_decay = fields.Float(
        load_default=TRAINING_DEFAULTS["weight_decay"], validate=validate.Range(min=0)
    )
    epochs = fields.Integer(
        strict=True, load_default=TRAINING_DEFAULTS["epochs"], validate=validate.Range(min=1)
    )
    batch_size = fields.Integer(
        strict=True,
        load_default=TRAINING_DEFAULTS["batch_size"],
        allow_none=True,
        validate=validate.Range(min=1),
        metadata={"description": "null: full batch."},
    )
    seed = fields.Integer(
        strict=True, load_default=TRAINING_DEFAULTS["seed"], validate=validate.Range(min=0)
    )
    validation_split = fields.Float(
        load_default=TRAINING_DEFAULTS["validation_split"],
        validate=validate.Range(min=0, max=1, max_inclusive=False),
        metadata={"description": f"With early_stopping and no split: {EARLY_STOPPING_SPLIT}."},
    )
    test_split = fields.Float(
        load_default=TRAINING_DEFAULTS["test_split"],
        validate=validate.Range(min=0, max=1, max_inclusive=False),
        metadata={
            "description": "Rows held out from training and early stopping, only "
            "scored (`evaluation.test`). Splits are seeded, stratified by class."
        },
    )
    early_stopping = fields.Nested(
        EarlyStoppingSchema,
        load_default=None,
        allow_none=True,
        metadata={
            "description": "null: train every epoch. Else stop when the validation loss "
            "has not improved for `patience` epochs."
        },
    )
    lr_schedule = fields.Nested(
        LRScheduleSchema, load_default=lambda: dict(TRAINING_DEFAULTS["lr_schedule"])
    )
    class_weight = fields.Raw(
        load_default=None,
        allow_none=True,
        metadata={
            "description": 'Classification: null, "balanced" (n / (k * count)) or {label: weight}.',
            "oneOf": [{"type": "string", "enum": ["balanced"]}, {"type": "object"}],
        },
    )
    dtype = fields.String(
        load_default=TRAINING_DEFAULTS["dtype"],
        validate=validate.OneOf(DTYPES),
        metadata={"description": "float32 trains about twice as fast."},
    )
    preprocessing = fields.Nested(
        PreprocessingSchema, load_default=lambda: dict(preprocessing.DEFAULTS)
    )

    @post_load
    def _fill_learning_rate(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        data["learning_rate"] = learning_rate(data)
        return data


class SpecDefaultsSchema(Schema):
    choices = fields.Dict(
        metadata={
            "description": "Field -> its allowed values: `loss`, `optimizer`, `activation`, "
            "`dtype`, `lr_schedule`, and `preprocessing` (step -> values)."
        }
    )
    model = fields.Dict(metadata={"description": "The model spec's defaults (not `layers`)."})
    training = fields.Dict(
        metadata={
            "description": "The training spec's defaults (`loss` null: picked from the targets; "
            "`learning_rate` is per optimizer)."
        }
    )
    learning_rate = fields.Dict(metadata={"description": "Optimizer -> its default rate."})
    optimizer_params = fields.Dict(
        metadata={"description": "Optimizer -> the spec fields it uses besides the rate."}
    )
    lr_schedule = fields.Dict(
        metadata={"description": "Schedule type -> its parameters' defaults."}
    )
    early_stopping = fields.Dict(metadata={"description": "`early_stopping`'s defaults."})
    early_stopping_split = fields.Float(
        metadata={"description": "The validation split of early stopping with none given."}
    )
    loss_applies = fields.Dict(
        metadata={"description": "Loss -> what it applies to the outputs itself (logits in)."}
    )


class JobInSchema(Schema):
    name = name_field()
    tags = tags_field()
    register_as = register_as_field()
    dataset_id = fields.String(metadata={"description": "An existing dataset; or `dataset`."})
    dataset = fields.Nested(DatasetInSchema, metadata={"description": "The data inline."})
    model = fields.Nested(ModelSpecSchema, required=True)
    training = fields.Nested(TrainingSpecSchema, load_default=lambda: TrainingSpecSchema().load({}))
    expires_at = expires_at_field()

    @validates_schema
    def _one_dataset(self, data: dict[str, Any], **_: Any) -> None:
        if ("dataset_id" in data) == ("dataset" in data):
            raise ValidationError(
                "give exactly one of dataset_id and dataset", field_name="dataset_id"
            )


class ProgressSchema(Schema):
    epoch = fields.Integer(metadata={"description": "Finished epochs (training jobs)."})
    epochs = fields.Integer()
    loss = fields.Float(
        allow_none=True, metadata={"description": "The last finished epoch's training loss."}
    )


class PredictProgressSchema(Schema):
    rows_done = fields.Integer(metadata={"description": "Rows predicted and written so far."})
    rows_total = fields.Integer(allow_none=True, metadata={"description": "The dataset's rows."})


class PredictResultSchema(Schema):
    rows = fields.Integer(metadata={"description": "Rows of predictions written."})
    bytes = fields.Integer(metadata={"description": "Size of the Parquet parts in the store."})
    location = fields.String(
        metadata={"description": "Their folder in the store (`.../predictions/{job_id}/...`)."}
    )


class _KindJobSchema(Schema):
    """The fields every job kind other than training shows (beside its own)."""

    id = fields.String()
    name = fields.String(allow_none=True)
    tags = fields.Dict(keys=fields.String(), values=fields.String())
    status = fields.String(metadata={"enum": list(JOB_STATUSES)})
    stop_reason = fields.String(allow_none=True, metadata={"enum": ["cancelled", "failed", None]})
    error = fields.String(allow_none=True)
    attempts = fields.Integer()
    cancel_requested = fields.Boolean()
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)


class PredictJobSchema(_KindJobSchema):
    """A job of kind `predict` (batch predictions; `POST /models/{id}/predictions`)."""

    kind = fields.String(metadata={"enum": ["predict"]})
    dataset_id = fields.String(metadata={"description": "The dataset whose rows it predicts."})
    model_id = fields.String(metadata={"description": "The model it uses."})
    progress = fields.Nested(PredictProgressSchema)
    result = fields.Nested(
        PredictResultSchema,
        allow_none=True,
        metadata={"description": "What was written, once succeeded (null before)."},
    )
    download_url = fields.String(
        metadata={
            "description": "`GET` it for the predictions once the job succeeded (409 before)."
        }
    )


class ImportProgressSchema(Schema):
    done = fields.Integer(metadata={"description": "Bytes (CSV) or rows (Parquet) read."})
    total = fields.Integer(allow_none=True, metadata={"description": "Of the source's."})
    unit = fields.String(metadata={"enum": ["bytes", "rows"]})


class ImportJobSchema(_KindJobSchema):
    """A job of kind `import` (a dataset by reference; `POST /datasets` with a `source`)."""

    kind = fields.String(metadata={"enum": ["import"]})
    source = fields.String(metadata={"description": "The source URL, normalised."})
    options = fields.Dict(
        metadata={"description": "`name`, `target`, `column_types`, `format` (csv, parquet)."}
    )
    dataset_id = fields.String(
        allow_none=True, metadata={"description": "The dataset it made, once succeeded."}
    )
    progress = fields.Nested(ImportProgressSchema)


class ImportInSchema(Schema):
    """`POST /datasets` by reference: the source's URL and the upload's options."""

    source = fields.String(
        required=True,
        validate=validate.Length(min=1, max=2000),
        metadata={
            "description": "`s3://bucket/key.csv`, `.parquet`, a folder of Parquet parts "
            "(`s3://bucket/folder/`), or `file:///path...`; under a prefix that "
            "`TRAINYARD_IMPORT_PREFIXES` lists."
        },
    )
    name = fields.String(validate=[validate.Length(min=1, max=200), NO_NUL])
    target = fields.String(validate=[validate.Length(min=1, max=200), NO_NUL])
    column_types = fields.Dict(keys=fields.String(), values=fields.String())
    tags = tags_field()


class JobSchema(Schema):
    """A job. Every job has `kind`; this is a training job (`train`). A predict job
    (`predict`) has the fields of `PredictJobSchema` instead: no training fields, the
    `model_id` it uses, `progress.rows_done`/`rows_total`, `result` and `download_url`; an
    import job (`import`) those of `ImportJobSchema`."""

    id = fields.String()
    kind = fields.String(metadata={"enum": list(JOB_KINDS)})
    name = fields.String(allow_none=True)
    tags = fields.Dict(keys=fields.String(), values=fields.String())
    register_as = fields.String(allow_none=True)
    status = fields.String(metadata={"enum": list(JOB_STATUSES)})
    dataset_id = fields.String()
    sweep_id = fields.String(
        allow_none=True, metadata={"description": "The sweep this job is a trial of."}
    )
    params = fields.Dict(
        allow_none=True,
        metadata={"description": "A trial's values: dotted spec path -> value."},
    )
    model = fields.Dict(metadata={"description": "The model spec with every default filled."})
    training = fields.Dict(metadata={"description": "The training spec, defaults filled."})
    progress = fields.Nested(ProgressSchema)
    loss_history = fields.List(
        fields.Float(),
        metadata={
            "description": "Per finished epoch (left out of `GET /jobs` items unless "
            "`include=history`)."
        },
    )
    val_loss_history = fields.List(fields.Float())
    metrics = fields.Dict(
        allow_none=True,
        metadata={
            "description": "`loss` and `accuracy` of the saved model on the training rows, "
            "`val_loss` / `val_accuracy` on the validation rows (the per-epoch `loss_history` "
            "is the mean over each epoch's mini-batches while the weights moved)."
        },
    )
    evaluation = fields.Dict(
        allow_none=True,
        metadata={
            "description": "The saved model scored on each split that exists (`train`, "
            "`validation`, `test`). Classification: `accuracy`, `balanced_accuracy`, "
            "`precision`/`recall`/`f1` (`macro`, `per_class`), `log_loss`, `roc_auc`, "
            "`confusion_matrix` (`labels`, `matrix`: rows true, columns predicted), `loss`, "
            "`n`. Regression: `mse`, `rmse`, `mae`, `r2` in the target's units, `loss`, `n`."
        },
    )
    best_epoch = fields.Integer(
        allow_none=True,
        metadata={"description": "The epoch with the lowest validation loss (1-based)."},
    )
    stopped_epoch = fields.Integer(allow_none=True, metadata={"description": "The last epoch."})
    stop_reason = fields.String(
        allow_none=True,
        metadata={
            "enum": [
                "completed",
                "early_stopping",
                "cancelled",
                "early_termination",
                "failed",
                None,
            ],
            "description": "`early_termination`: a sweep's median rule stopped this trial.",
        },
    )
    error = fields.String(allow_none=True)
    model_id = fields.String(allow_none=True)
    attempts = fields.Integer()
    cancel_requested = fields.Boolean()
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    expires_at = fields.DateTime(allow_none=True)


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
    evaluation = fields.Dict(allow_none=True, metadata={"description": "As the job's."})
    columns = fields.List(
        fields.Dict(),
        metadata={
            "description": "The input columns it was trained on: `name`, `type`, and for "
            "categorical columns the `levels` seen in training."
        },
    )
    created_at = fields.DateTime()
    expires_at = fields.DateTime(allow_none=True)
    dataset_deleted = fields.Boolean(
        metadata={"description": "The training dataset was deleted (the model still works)."}
    )
    registered = fields.List(
        fields.Dict(),
        metadata={
            "description": "Where it is registered: `{name, version, aliases}` each (`/registry`)."
        },
    )


class ModelSummarySchema(ModelSchema):
    class Meta:
        exclude = ("parameters", "registered")


class PredictInSchema(Schema):
    """`rows` (objects keyed by column name) or `features` (cells in the training column
    order); raw values: the model's preprocessing is applied."""

    features = fields.Raw(metadata=CELL_MATRIX)
    rows = fields.Raw(metadata=RECORDS)

    @validates_schema
    def _one_form(self, data: dict[str, Any], **_: Any) -> None:
        if ("features" in data) == ("rows" in data):
            raise ValidationError("give either features or rows", field_name="features")


class ExportQuerySchema(Schema):
    format = fields.String(
        required=True,
        validate=validate.OneOf(["onnx", "bundle"]),
        metadata={"description": "`onnx` or `bundle`."},
    )


class PredictCsvSchema(Schema):
    """`multipart/form-data`: a CSV file with a header row naming the model's columns."""

    file = fields.Raw(required=True, metadata={"type": "string", "format": "binary"})


class EvaluationSchema(Schema):
    model_id = fields.String()
    dataset_id = fields.String()
    evaluation = fields.Dict(metadata={"description": "As a job's `evaluation.test`."})


class EvaluateInSchema(Schema):
    dataset_id = fields.String(
        required=True,
        metadata={"description": "A dataset of yours with the model's columns and target."},
    )


class BatchPredictInSchema(Schema):
    dataset_id = fields.String(
        required=True,
        validate=validate.Length(max=64),
        metadata={
            "description": "A dataset of yours with (at least) the model's feature columns; "
            "its target, if any, is ignored."
        },
    )
    name = name_field()
    tags = tags_field()


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


TAG_FILTER = validate.Regexp(r"^[^:\x00]{1,64}:[^\x00]{0,200}$", error="must be key:value")


class JobPageQuerySchema(PageQuerySchema):
    status = fields.String(validate=validate.OneOf(JOB_STATUSES))
    kind = fields.String(validate=validate.OneOf(JOB_KINDS))
    include = fields.List(
        fields.String(validate=validate.OneOf(["history"])),
        metadata={
            "description": "`history`: the items carry `loss_history` and `val_loss_history` "
            "(left out otherwise; `GET /jobs/{id}/history` gives one job's)."
        },
    )
    tag = fields.List(
        fields.String(validate=TAG_FILTER),
        metadata={"description": "`key:value`; repeat for several (all must match)."},
    )
    dataset_id = fields.String(validate=[validate.Length(max=64), NO_NUL])
    sweep_id = fields.String(
        validate=[validate.Length(max=64), NO_NUL],
        metadata={"description": "A sweep's trials, in trial order."},
    )


class LabelInSchema(Schema):
    """`PATCH`: the fields given are set (`tags` replaces all tags; null clears)."""

    name = name_field()
    tags = tags_field()

    @validates_schema
    def _something(self, data: dict[str, Any], **_: Any) -> None:
        if not data:
            raise ValidationError("give name and/or tags", field_name="name")


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


PARAMETER_DOC = {
    "description": "Dotted path into the job spec (`training.learning_rate`, `model.layers`, "
    '`training.early_stopping.patience`) -> `{"values": [...]}`, or for `random` also '
    '`{"min", "max", "log"?, "int"?}`.',
    "type": "object",
    "minProperties": 1,
    "additionalProperties": {
        "type": "object",
        "properties": {
            "values": {"type": "array", "minItems": 1, "items": {}},
            "min": {"type": "number"},
            "max": {"type": "number"},
            "log": {"type": "boolean"},
            "int": {"type": "boolean"},
        },
    },
    "example": {
        "training.learning_rate": {"values": [0.003, 0.01, 0.03]},
        "model.layers": {"values": [[16, 1], [32, 32, 1]]},
    },
}


class SweepMetricSchema(Schema):
    name = fields.String(
        validate=validate.Length(min=1, max=100),
        metadata={
            "description": "`val_loss` (the default with a validation split, else `loss`), "
            "`accuracy`, `val_accuracy`, or a split's evaluation score: "
            "`validation.accuracy`, `test.r2`, `test.f1.macro`, ..."
        },
    )
    goal = fields.String(
        validate=validate.OneOf(["minimize", "maximize"]),
        metadata={
            "description": "Default: maximize for accuracies, r2 and roc_auc; else minimize."
        },
    )


class EarlyTerminationSchema(Schema):
    type = fields.String(required=True, validate=validate.OneOf(["median"]))
    min_epochs = fields.Integer(
        strict=True,
        load_default=10,
        validate=validate.Range(min=1),
        metadata={"description": "No trial is stopped before this epoch."},
    )
    min_trials = fields.Integer(
        strict=True,
        load_default=3,
        validate=validate.Range(min=1),
        metadata={"description": "Other trials that must have reached the epoch to compare."},
    )


class SweepInSchema(Schema):
    name = name_field()
    tags = tags_field()
    register_as = register_as_field()
    dataset_id = fields.String(required=True, validate=validate.Length(max=64))
    base = fields.Dict(
        required=True,
        metadata={
            "description": "What `POST /jobs` takes besides the dataset (`model`, `training`); "
            "each trial is this with its parameters' values set, validated as a job.",
            "example": {
                "model": {"layers": [32, 1], "activation": "relu"},
                "training": {"optimizer": "adam", "epochs": 100, "validation_split": 0.2},
            },
        },
    )
    method = fields.String(load_default="grid", validate=validate.OneOf(["grid", "random"]))
    parameters = fields.Dict(required=True, metadata=PARAMETER_DOC)
    metric = fields.Nested(SweepMetricSchema, load_default=dict)
    max_trials = fields.Integer(
        strict=True,
        validate=validate.Range(min=1),
        metadata={"description": "random: required; grid: the first ones only."},
    )
    max_parallel = fields.Integer(
        strict=True,
        allow_none=True,
        validate=validate.Range(min=1),
        metadata={"description": "Trials running at once. Default: as many as the workers take."},
    )
    seed = fields.Integer(
        strict=True,
        allow_none=True,
        validate=validate.Range(min=0, max=2**53),
        metadata={"description": "random: the draws' seed (drawn and shown when not given)."},
    )
    early_termination = fields.Nested(
        EarlyTerminationSchema,
        allow_none=True,
        metadata={
            "description": "`median`: stop a trial whose best validation loss so far is worse "
            "than the median of the other trials' at the same epoch (it ends `cancelled`, "
            "`stop_reason` `early_termination`)."
        },
    )


class SweepProgressSchema(Schema):
    trials = fields.Integer()
    queued = fields.Integer()
    running = fields.Integer()
    succeeded = fields.Integer()
    failed = fields.Integer()
    cancelled = fields.Integer()


class TrialSchema(Schema):
    job_id = fields.String()
    index = fields.Integer()
    params = fields.Dict()
    status = fields.String(metadata={"enum": list(JOB_STATUSES)})
    metric_value = fields.Float(
        allow_none=True, metadata={"description": "The sweep's metric, once succeeded."}
    )
    epoch = fields.Integer()
    epochs = fields.Integer()
    stop_reason = fields.String(allow_none=True)
    model_id = fields.String(allow_none=True)


class BestTrialSchema(Schema):
    job_id = fields.String()
    model_id = fields.String(allow_none=True)
    params = fields.Dict()
    metric_value = fields.Float()


class SweepSchema(Schema):
    id = fields.String()
    name = fields.String(allow_none=True)
    tags = fields.Dict(keys=fields.String(), values=fields.String())
    register_as = fields.String(allow_none=True)
    status = fields.String(metadata={"enum": list(SWEEP_STATUSES)})
    dataset_id = fields.String()
    method = fields.String()
    base = fields.Dict()
    parameters = fields.Dict()
    metric = fields.Nested(SweepMetricSchema)
    max_trials = fields.Integer(allow_none=True)
    max_parallel = fields.Integer(allow_none=True)
    seed = fields.Integer(allow_none=True)
    early_termination = fields.Dict(allow_none=True)
    progress = fields.Nested(SweepProgressSchema)
    trials = fields.List(fields.Nested(TrialSchema), metadata={"description": "In trial order."})
    best = fields.Nested(
        BestTrialSchema,
        allow_none=True,
        metadata={
            "description": "The succeeded trial with the best metric (ties: the first trial); "
            "failed and cancelled trials never are. Final once the sweep is."
        },
    )
    cancel_requested = fields.Boolean()
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)


class SweepSummarySchema(SweepSchema):
    class Meta:
        exclude = ("trials",)


class SweepPageQuerySchema(PageQuerySchema):
    status = fields.String(validate=validate.OneOf(SWEEP_STATUSES))
    tag = fields.List(
        fields.String(validate=TAG_FILTER),
        metadata={"description": "`key:value`; repeat for several (all must match)."},
    )


SweepPageSchema = page_of(SweepSummarySchema, "SweepPage")


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


class UploadSchema(Schema):
    """A resumable (tus) upload, as `GET /api/v1/uploads/{id}` shows it."""

    id = fields.String()
    length = fields.Integer(metadata={"description": "The file's size in bytes."})
    offset = fields.Integer(metadata={"description": "How many bytes were received."})
    metadata = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        metadata={"description": "The decoded `Upload-Metadata` pairs."},
    )
    status = fields.String(
        validate=validate.OneOf(("receiving", "completing", "completed", "failed")),
        metadata={
            "description": "`receiving` until the last byte; `completing` while the dataset "
            "is made; then `completed` (`dataset_id`) or `failed` (the data was refused: "
            "`error`)."
        },
    )
    dataset_id = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    created_at = fields.String()
    expires_at = fields.String(
        metadata={"description": "When the upload and its bytes are deleted (ISO 8601)."}
    )


# -- deletes, retention, quotas (service.deletion, service.quotas) ----------------------------


class ExpiryInSchema(Schema):
    """`PATCH` of a dataset or a model: when it expires (null: never)."""

    expires_at = expires_at_field(required=True)


class JobLabelInSchema(LabelInSchema):
    """`PATCH /jobs/{id}`: `name`, `tags` and/or `expires_at` (null: never)."""

    expires_at = expires_at_field()


class UsageBytesSchema(Schema):
    used = fields.Integer(metadata={"description": "datasets + models + uploads"})
    quota = fields.Integer(allow_none=True, metadata={"description": "null: no quota"})
    datasets = fields.Integer(metadata={"description": "The datasets' Parquet parts."})
    models = fields.Integer(metadata={"description": "The models' weights."})
    predictions = fields.Integer(metadata={"description": "Batch predictions' Parquet parts."})
    uploads = fields.Integer(metadata={"description": "Unfinished resumable uploads' chunks."})


class UsageCountSchema(Schema):
    used = fields.Integer()
    quota = fields.Integer()


class UsageSchema(Schema):
    owner = fields.String()
    bytes = fields.Nested(UsageBytesSchema)
    active_jobs = fields.Nested(UsageCountSchema, metadata={"description": "queued + running"})


class ApiKeySchema(Schema):
    """An API key as `GET /api/v1/keys` shows it: never its secret."""

    id = fields.String()
    name = fields.String()
    prefix = fields.String(metadata={"description": "The key's first characters."})
    scope = fields.String(validate=validate.OneOf(KEY_SCOPES))
    created_at = fields.String()
    last_used_at = fields.String(
        allow_none=True, metadata={"description": "To the minute: written at most once a minute."}
    )
    expires_at = fields.String(allow_none=True)
    revoked_at = fields.String(allow_none=True)


class NewApiKeySchema(ApiKeySchema):
    key = fields.String(metadata={"description": "The key itself: shown this once."})


class ApiKeyInSchema(Schema):
    name = fields.String(load_default="", validate=validate.Length(max=200))
    scope = fields.String(
        validate=validate.OneOf(KEY_SCOPES),
        metadata={"description": "`read` or `write`; the calling key's own scope if left out."},
    )
    expires_at = fields.AwareDateTime(
        default_timezone=UTC,
        allow_none=True,
        metadata={"description": "ISO 8601; none: the calling key's own expiry (if any)."},
    )


class AuditEntrySchema(Schema):
    id = fields.Integer()
    at = fields.String()
    owner = fields.String()
    key_id = fields.String(allow_none=True)
    method = fields.String()
    route = fields.String(
        metadata={"description": "The route's pattern, e.g. `/api/v1/jobs/<job_id>`."}
    )
    action = fields.String(metadata={"description": "e.g. `dataset.create`, `job.cancel`."})
    resource_ids = fields.Dict(keys=fields.String(), values=fields.String())
    status_code = fields.Integer()
    request_id = fields.String(allow_none=True, metadata={"description": "`X-Request-Id`."})


class AuditQuerySchema(PageQuerySchema):
    action = fields.String(
        validate=validate.Length(max=100),
        metadata={"description": "An action, or a resource (`job`, `job.*`) for all of its."},
    )
    key_id = fields.String(validate=validate.Length(max=32))
    since = fields.AwareDateTime(
        default_timezone=UTC,
        metadata={"description": "Entries at or after (ISO 8601)."},
    )
    until = fields.AwareDateTime(
        default_timezone=UTC,
        metadata={"description": "Entries before (ISO 8601)."},
    )


ApiKeyPageSchema = page_of(ApiKeySchema, "ApiKeyPage")
AuditPageSchema = page_of(AuditEntrySchema, "AuditPage")
