"""The `trainyard` command: datasets, jobs, models and predictions from a shell.

    trainyard datasets upload penguins.csv --target species [--name penguins] [--resumable]
    trainyard datasets list | datasets show ID   (its columns: types, missing cells, stats)
    trainyard jobs submit --dataset ID --layers 16,16,3 --early-stopping --test-split 0.2 --watch
    trainyard jobs watch ID | jobs list [--status running] | jobs show ID | jobs cancel ID
    trainyard models show ID [--weights model.npz] [--bundle model.bundle.npz] | models list
    trainyard models export ID [--format onnx|bundle] [-o FILE]
    trainyard models graph ID -o graph.svg
    trainyard predict MODEL_ID data.csv [--csv | -o predictions.csv]  (header names columns)
    trainyard evaluate MODEL_ID --dataset ID
    trainyard models predict-dataset MODEL_ID --dataset ID [--wait] [-o predictions.csv|.parquet]
    trainyard predictions download JOB_ID -o predictions.csv|.parquet|.jsonl
    trainyard sweeps submit sweep.json [--watch] | sweeps watch ID | sweeps list | sweeps get ID
    trainyard sweeps cancel ID   (sweep.json: the body of POST /api/v1/sweeps)
    trainyard registry register NAME MODEL_ID | registry alias NAME ALIAS VERSION [--delete]
    trainyard registry show NAME | registry list
    (every MODEL_ID above may be a model id, NAME@ALIAS or NAME@vN)

`get` and `show` are the same command.

Global options (before the command): `--url` (default `$TRAINYARD_URL`, then
http://127.0.0.1:8000), `--api-key` (default `$TRAINYARD_API_KEY`, then the embedded mode's key
file `$TRAINYARD_VAR_DIR/api-key` or `./var/api-key`), `--json` (print the API's JSON on
stdout instead of tables; also accepted after the command). Progress bars and error messages
go to stderr.

Exit codes:
    0  success
    1  the job ended `failed` or `cancelled` (`jobs watch`, `jobs submit --watch`), or the
       sweep did (`sweeps watch`, `sweeps submit --watch`)
    2  usage error: bad arguments, unreadable local file
    3  the API refused the request (4xx other than 404: validation, conflict, auth, ...)
    4  not found (404: no such dataset, job or model)
    5  cannot reach the server (connection refused, DNS, timeout)
    6  server error (5xx)
   70  internal error of the client itself (a bug: please report it)
  130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from client.api import (
    DEFAULT_URL,
    DOWNLOAD_FORMATS,
    ApiError,
    Client,
    ConnectionFailed,
    Dataset,
    Job,
    NotFoundError,
    Sweep,
    api_key_locations,
    download_format,
    find_api_key,
)
from core import preprocessing
from core.spec import (
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
)

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_API_ERROR = 3
EXIT_NOT_FOUND = 4
EXIT_UNREACHABLE = 5
EXIT_SERVER_ERROR = 6
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

out = Console(highlight=False, soft_wrap=True, markup=False)  # user text: no markup
err = Console(stderr=True, highlight=False, markup=False)


class UsageError(Exception):
    """A problem with the command line or a local file (exit 2)."""


# -- output helpers ---------------------------------------------------------------------------


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def short_time(stamp: str | None) -> str:
    """`MM-DD HH:MM` (UTC): list rows stay within 80 columns next to a whole id."""
    return stamp[5:16].replace("T", " ") if stamp else "-"


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    # No vertical rules: a list with a whole 32-character id fits an 80-column terminal.
    t = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
        padding=(0, 1), collapse_padding=True, pad_edge=False,
    )  # fmt: skip
    for column in columns:
        # ids stay whole: people copy them into the next command
        t.add_column(column, no_wrap=column in ("id", "job", "status", "created"))
    for row in rows:
        t.add_row(*(fmt(cell) for cell in row))
    return t


def key_values(title: str, pairs: Sequence[tuple[str, Any]]) -> Table:
    t = Table(title=title, title_justify="left", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    for key, value in pairs:
        t.add_row(key, fmt(value))
    return t


def final_loss(job: Job) -> float | None:
    metrics = job.get("metrics") or {}
    if "loss" in metrics:
        return metrics["loss"]
    history = job.get("loss_history") or []
    if history:
        return history[-1]
    return (job.get("progress") or {}).get("loss")  # list items carry no history


def progress_text(job: Job) -> str:
    """`epoch/epochs` of a training job, `rows_done/rows_total rows` of a predict job."""
    if job.get("kind") == "predict":
        rows = job.get("progress") or {}
        return f"{rows.get('rows_done') or 0}/{rows.get('rows_total') or '?'} rows"
    p = job.get("progress") or {"epoch": 0, "epochs": 0}
    return f"{p['epoch']}/{p['epochs']}"


def show_predict_job(job: Job) -> None:
    result = job.get("result") or {}
    pairs: list[tuple[str, Any]] = [
        ("id", job["id"]),
        ("kind", "predict"),
        ("status", job["status"]),
        ("model", job.get("model_id")),
        ("dataset", job.get("dataset_id")),
        ("rows", progress_text(job)),
        ("created", short_time(job.get("created_at"))),
        ("finished", short_time(job.get("finished_at"))),
    ]
    if result:
        pairs += [("bytes", result.get("bytes")), ("download", job.get("download_url"))]
    if job.get("error"):
        pairs.append(("error", job["error"]))
    out.print(key_values(f"Job {job['id']}", pairs))


def show_job(job: Job) -> None:
    if job.get("kind") == "predict":
        show_predict_job(job)
        return
    progress = job.get("progress") or {"epoch": 0, "epochs": 0}
    model, training = job.get("model") or {}, job.get("training") or {}
    pairs: list[tuple[str, Any]] = [
        ("id", job["id"]),
        ("status", job["status"]),
        ("dataset", job.get("dataset_id")),
        ("layers", model.get("layers")),
        ("activation", model.get("activation")),
        ("loss", training.get("loss")),
        ("optimizer", training.get("optimizer")),
        ("learning rate", training.get("learning_rate")),
        ("epochs", f"{progress['epoch']}/{progress['epochs']}"),
        ("batch size", training.get("batch_size") or "full batch"),
    ]
    optional = [
        ("validation split", validation_split_text(training)),
        ("test split", training.get("test_split")),
        ("early stopping", training.get("early_stopping")),
        ("lr schedule", _schedule_text(training.get("lr_schedule"))),
        ("class weight", training.get("class_weight")),
        ("dtype", training.get("dtype")),
        ("preprocessing", _pairs_text(training.get("preprocessing"))),
    ]
    pairs += [(key, value) for key, value in optional if value not in (None, 0, 0.0)]
    pairs += [
        ("created", short_time(job.get("created_at"))),
        ("finished", short_time(job.get("finished_at"))),
        ("model", job.get("model_id")),
    ]
    pairs += stop_pairs(job)
    if job.get("error"):
        pairs.append(("error", job["error"]))
    out.print(key_values(f"Job {job['id']}", pairs))
    show_results(job)


def validation_split_text(training: dict[str, Any]) -> Any:
    split = training.get("validation_split")
    if training.get("early_stopping") is not None and not split:
        return f"{EARLY_STOPPING_SPLIT} (early stopping's default)"
    return split


def _schedule_text(schedule: dict[str, Any] | None) -> str | None:
    if not schedule:
        return None
    params = _pairs_text({k: v for k, v in schedule.items() if k != "type"})
    return f"{schedule.get('type')} ({params})" if params else str(schedule.get("type"))


def _pairs_text(mapping: dict[str, Any] | None) -> str | None:
    if not mapping:
        return None
    return ", ".join(f"{key}={fmt(value)}" for key, value in mapping.items())


def stop_pairs(job: dict[str, Any]) -> list[tuple[str, Any]]:
    """Best epoch, last epoch and why training stopped, those the job has."""
    keys = (("best epoch", "best_epoch"), ("stopped epoch", "stopped_epoch"),
            ("stop reason", "stop_reason"))  # fmt: skip
    return [(label, job[key]) for label, key in keys if job.get(key) is not None]


def show_results(job: dict[str, Any]) -> None:
    """The evaluation when the job (or model) has one, else the flat metrics."""
    if job.get("evaluation"):
        show_evaluation(job["evaluation"])
    else:
        show_metrics(job.get("metrics"))


METRIC_LABELS = {
    "loss": "loss, saved model, training rows",
    "accuracy": "accuracy, training rows",
    "val_loss": "loss, saved model, validation rows",
    "val_accuracy": "accuracy, validation rows",
}


def show_metrics(metrics: dict[str, Any] | None) -> None:
    """The saved model's flat metrics, named apart from the last epoch's loss (the mean over
    its mini-batches while the weights moved)."""
    if metrics:
        pairs = [(METRIC_LABELS.get(k, k), v) for k, v in sorted(metrics.items())]
        out.print(key_values("Metrics", pairs))


SPLITS = ("test", "validation", "train")  # the honest figure first
SUMMARY = (
    ("accuracy", "accuracy"),
    ("balanced accuracy", "balanced_accuracy"),
    ("precision (macro)", ("precision", "macro")),
    ("recall (macro)", ("recall", "macro")),
    ("f1 (macro)", ("f1", "macro")),
    ("log loss", "log_loss"),
    ("roc auc", "roc_auc"),
    ("mse", "mse"),
    ("rmse", "rmse"),
    ("mae", "mae"),
    ("r2", "r2"),
    ("loss", "loss"),
)


def _metric(metrics: dict[str, Any], key: str | tuple[str, str]) -> Any:
    if isinstance(key, tuple):
        value = metrics.get(key[0])
        return value.get(key[1]) if isinstance(value, dict) else None
    return metrics.get(key)


def show_evaluation(evaluation: dict[str, Any]) -> None:
    """A table per split (test first), then the per-class metrics and the confusion matrix of
    the first split shown (the test split when there is one)."""
    order = [s for s in SPLITS if evaluation.get(s)]
    order += [s for s in evaluation if s not in SPLITS and evaluation.get(s)]
    for split in order:
        metrics = evaluation[split]
        pairs = [(label, _metric(metrics, key)) for label, key in SUMMARY]
        pairs = [(label, value) for label, value in pairs if value is not None]
        rows = f" ({metrics['n']} rows)" if metrics.get("n") is not None else ""
        out.print(key_values(f"Evaluation: {split}{rows}", pairs))
    if order:
        show_per_class(evaluation[order[0]], order[0])


def show_per_class(metrics: dict[str, Any], split: str) -> None:
    matrix = metrics.get("confusion_matrix") or {}
    labels, counts = matrix.get("labels") or [], matrix.get("matrix") or []
    per_class = {
        key: (metrics.get(key) or {}).get("per_class") or {}
        for key in ("precision", "recall", "f1")
    }
    if per_class["f1"]:
        classes = labels or list(per_class["f1"])
        support = {str(label): sum(row) for label, row in zip(labels, counts, strict=False)}
        rows = [
            [label, *(per_class[key].get(str(label)) for key in ("precision", "recall", "f1")),
             support.get(str(label))]
            for label in classes
        ]  # fmt: skip
        columns = ["class", "precision", "recall", "f1", "rows"]
        out.print(table(f"Per class: {split}", columns, rows))
    if labels and counts:
        t = Table(
            title=f"Confusion matrix: {split} (rows: true class, columns: predicted)",
            title_justify="left",
        )
        t.add_column("true \\ predicted", style="bold")
        for label in labels:
            t.add_column(fmt(label), justify="right")
        for label, row in zip(labels, counts, strict=True):
            t.add_row(fmt(label), *(str(v) for v in row))
        out.print(t)


def job_rows(jobs: Sequence[Job]) -> list[list[Any]]:
    rows = []
    for job in jobs:
        rows.append(
            [
                job["id"],
                job["status"],
                progress_text(job),
                final_loss(job),
                short_time(job.get("created_at")),
            ]
        )
    return rows


def parse_layers(text: str) -> list[int]:
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        message = f"layers must be integers like 16,16,1: {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not layers:
        raise argparse.ArgumentTypeError("at least one layer width is needed")
    return layers


def batch_size(text: str) -> int | None:
    if text.lower() in ("full", "none", "all"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an integer or 'full': {text!r}") from None


# -- watching a job ---------------------------------------------------------------------------


def watch(api: Client, job_id: str, as_json: bool, poll_interval: float) -> int:
    """Follow a job to its end with a progress bar (epoch, current loss); print its metrics."""
    if as_json:
        job = api.wait(job_id, poll_interval=poll_interval)
    else:
        with Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("epochs  epoch loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            console=err,
        ) as progress:
            task = progress.add_task(f"job {job_id[:8]} queued", total=None, loss="-")

            def update(job: Job) -> None:
                p = job.get("progress") or {"epoch": 0, "epochs": 0}
                if job.get("kind") == "predict":  # rows, not epochs
                    progress.update(
                        task,
                        description=f"job {job_id[:8]} {job['status']}",
                        completed=p.get("rows_done") or 0,
                        total=p.get("rows_total") or None,
                        loss="- (rows)",
                    )
                    return
                history = job.get("loss_history") or []
                last = history[-1] if history else p.get("loss")
                loss = f"{last:.4g}" if last is not None else "-"
                progress.update(
                    task,
                    description=f"job {job_id[:8]} {job['status']}",
                    completed=p["epoch"],
                    total=p["epochs"] or None,
                    loss=loss,
                )

            job = api.wait(job_id, poll_interval=poll_interval, on_progress=update)
    if as_json:
        emit_json(job)
    else:
        out.print(f"job {job['id']} {job['status']}")
        if job.get("error"):
            out.print(f"error: {job['error']}")
        stops = stop_pairs(job)
        if stops:
            out.print(", ".join(f"{label} {fmt(value)}" for label, value in stops))
        if job.get("kind") == "predict":
            if job["status"] == "succeeded":
                rows = (job.get("result") or {}).get("rows")
                out.print(f"{rows} predictions; download: {job.get('download_url')}")
        else:
            show_results(job)
            if job.get("model_id"):
                out.print(f"model {job['model_id']}")
    return EXIT_OK if job["status"] == "succeeded" else EXIT_JOB_FAILED


# -- commands ---------------------------------------------------------------------------------


#: files larger than this are uploaded in chunks, resumably (tus); smaller ones in one request,
#: which is one round trip and leaves nothing behind to resume
RESUMABLE_OVER = 32 << 20


def cmd_datasets_upload(api: Client, args: argparse.Namespace) -> int:
    column_types = dict(args.column_type or [])
    try:
        size = os.path.getsize(args.file)
        if args.resumable or size > RESUMABLE_OVER:
            dataset = upload_resumable(api, args, column_types, quiet=args.json)
        else:
            dataset = api.upload_csv(
                args.file, target=args.target, name=args.name, column_types=column_types or None
            )
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from exc
    return show_dataset(dataset, args.json)


def upload_resumable(
    api: Client, args: argparse.Namespace, column_types: dict[str, str], quiet: bool
) -> Dataset:
    """A resumable upload with a progress bar on stderr (run again to resume)."""
    options: dict[str, Any] = {
        "target": args.target,
        "name": args.name,
        "column_types": column_types or None,
        "chunk_size": args.chunk_size,
    }
    if quiet:
        return api.upload_resumable(args.file, **options)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    ) as progress:
        task = progress.add_task(f"upload {os.path.basename(args.file)}", total=None)

        def update(sent: int, total: int) -> None:
            progress.update(task, completed=sent, total=total)

        return api.upload_resumable(args.file, on_progress=update, **options)


def byte_size(text: str) -> int:
    """`16M`, `512K`, `1048576`: a positive number of bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    scale = units.get(text[-1:].lower(), 1)
    try:
        value = int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 16M)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("a size is positive")
    return value


def show_dataset(dataset: dict[str, Any], as_json: bool) -> int:
    if as_json:
        emit_json(dataset)
        return EXIT_OK
    target = dataset.get("target") or {}
    pairs = [
        ("id", dataset["id"]),
        ("name", dataset["name"]),
        ("samples", dataset["n_samples"]),
        ("features", dataset["n_features"]),
        ("targets", dataset["n_targets"]),
    ]
    if target:
        pairs.append(("target", f"{target.get('name') or '-'} ({target.get('kind')})"))
    pairs.append(("classes", dataset.get("classes")))
    if not dataset.get("columns"):  # described before columns were
        pairs.append(("feature names", dataset.get("feature_names")))
    pairs.append(("created", short_time(dataset.get("created_at"))))
    out.print(key_values(f"Dataset {dataset['name']}", pairs))
    if dataset.get("columns"):
        rows = [
            [c.get("name"), c.get("type"), c.get("missing"), column_summary(c)]
            for c in dataset["columns"]
        ]
        out.print(table("Columns", ["column", "type", "missing", "values"], rows))
    return EXIT_OK


def column_summary(column: dict[str, Any]) -> str:
    """min/max/mean/std of a numeric column; the most frequent levels of a categorical one."""
    if column.get("type") == "categorical":
        top = column.get("top") or []
        levels = ", ".join(f"{fmt(t.get('value'))} ({t.get('count')})" for t in top)
        n = column.get("n_levels")
        more = ", ..." if n is not None and n > len(top) else ""
        return f"{n} levels: {levels}{more}" if n is not None else levels + more
    stats = [(key, column.get(key)) for key in ("min", "max", "mean", "std")]
    return ", ".join(f"{key} {fmt(value)}" for key, value in stats if value is not None) or "-"


def cmd_datasets_get(api: Client, args: argparse.Namespace) -> int:
    return show_dataset(api.get_dataset(args.id), args.json)


def cmd_datasets_import(api: Client, args: argparse.Namespace) -> int:
    """Import an object of the object store by reference (an import job on a worker); with
    --wait follow it and show the dataset it made."""
    column_types = dict(args.column_type or [])
    job = api.import_dataset(
        args.source, name=args.name, target=args.target, column_types=column_types or None
    )
    if not args.wait:
        if args.json:
            emit_json(job)
        else:
            out.print(f"import job {job['id']} {job['status']} (trainyard jobs watch {job['id']})")
        return EXIT_OK
    code = watch(api, job["id"], True, args.poll_interval)
    if code != EXIT_OK:
        return code
    return show_dataset(api.get_dataset(api.get_job(job["id"])["dataset_id"]), args.json)


def cmd_datasets_download(api: Client, args: argparse.Namespace) -> int:
    """Stream the dataset's rows to a file (CSV, JSON lines or Parquet)."""
    fmt = args.format or (download_format(args.output) if args.output else "csv")
    output = args.output or f"dataset-{args.id}.{fmt}"
    try:
        path = api.download_dataset(args.id, output, format=fmt)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from exc
    size = path.stat().st_size
    if args.json:
        emit_json({"id": args.id, "format": fmt, "path": str(path), "bytes": size})
    else:
        out.print(f"dataset {args.id} written to {path} ({fmt}, {size:,} bytes)")
    return EXIT_OK


def cmd_datasets_list(api: Client, args: argparse.Namespace) -> int:
    page = api.list_datasets(args.page, args.page_size)
    if args.json:
        emit_json(page)
        return EXIT_OK
    rows = [
        [d["id"], d["name"], d["n_samples"], d["n_features"],
         f"{len(d['classes'])} classes" if d.get("classes") else "numbers",
         short_time(d.get("created_at"))]
        for d in page["items"]
    ]  # fmt: skip
    columns = ["id", "name", "rows", "cols", "target", "created"]
    out.print(table(page_title("Datasets", page), columns, rows))
    return EXIT_OK


def page_title(name: str, page: dict[str, Any]) -> str:
    p = page["pagination"]
    return f"{name} (page {p['page']} of {max(p['pages'], 1)}, {p['total']} in all)"


def cmd_jobs_submit(api: Client, args: argparse.Namespace) -> int:
    options: dict[str, Any] = {
        "activation": args.activation,
        "output_activation": args.output_activation,
        "loss": args.loss,
        "optimizer": args.optimizer,
        "learning_rate": args.lr,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "epochs": args.epochs,
        "seed": args.seed,
        "validation_split": args.validation_split,
        "test_split": args.test_split,
        "lr_schedule": args.lr_schedule,
        "class_weight": args.class_weight,
        "dtype": args.dtype,
        "preprocessing": dict(args.preprocessing) if args.preprocessing else None,
        "early_stopping": early_stopping(args),
    }
    if "batch_size" in vars(args):  # absent: the server's default; None: full batch
        options["batch_size"] = args.batch_size
    job = api.submit_job(args.dataset, args.layers, register_as=args.register_as, **options)
    if args.watch:
        if not args.json:
            err.print(f"submitted job {job['id']}")
        return watch(api, job["id"], args.json, args.poll_interval)
    if args.json:
        emit_json(job)
    else:
        out.print(f"submitted job {job['id']} ({job['status']})")
        out.print(f"follow it with: trainyard jobs watch {job['id']}")
    return EXIT_OK


def early_stopping(args: argparse.Namespace) -> dict[str, Any] | None:
    """`--early-stopping`, or any of its settings (which imply it)."""
    spec: dict[str, Any] = {}
    if args.patience is not None:
        spec["patience"] = args.patience
    if args.min_delta is not None:
        spec["min_delta"] = args.min_delta
    if args.no_restore_best:
        spec["restore_best"] = False
    return spec if args.early_stopping or spec else None


def cmd_jobs_watch(api: Client, args: argparse.Namespace) -> int:
    return watch(api, args.id, args.json, args.poll_interval)


def cmd_jobs_list(api: Client, args: argparse.Namespace) -> int:
    page = api.list_jobs(args.status, args.page, args.page_size, kind=args.kind)
    if args.json:
        emit_json(page)
        return EXIT_OK
    columns = ["id", "status", "epochs", "loss", "created"]
    out.print(table(page_title("Jobs", page), columns, job_rows(page["items"])))
    return EXIT_OK


def cmd_jobs_get(api: Client, args: argparse.Namespace) -> int:
    job = api.get_job(args.id)
    if args.json:
        emit_json(job)
    else:
        show_job(job)
    return EXIT_OK


def cmd_jobs_cancel(api: Client, args: argparse.Namespace) -> int:
    job = api.cancel_job(args.id)
    if args.json:
        emit_json(job)
    elif job["status"] == "cancelled":
        out.print(f"job {job['id']} cancelled")
    else:
        out.print(f"job {job['id']} asked to stop; it ends at its next epoch boundary")
    return EXIT_OK


def sweep_table(sweep: Sweep) -> Table:
    """The trials of a sweep, one row each, its parameters as columns; the best one marked."""
    paths = list(sweep.get("parameters") or {})
    metric = (sweep.get("metric") or {}).get("name", "metric")
    best = (sweep.get("best") or {}).get("job_id")
    p = sweep.get("progress") or {}
    title = (
        f"Sweep {sweep['id'][:8]} {sweep.get('name') or ''} {sweep['status']}: "
        f"{p.get('succeeded', 0)} succeeded, {p.get('running', 0)} running, "
        f"{p.get('queued', 0)} queued, {p.get('failed', 0)} failed, "
        f"{p.get('cancelled', 0)} cancelled of {p.get('trials', 0)}"
    )
    rows = [
        [
            "best" if t["job_id"] == best else "",
            t["index"] + 1,
            t["job_id"][:8],
            *[json.dumps(t["params"].get(path)) for path in paths],
            t["status"] if t["status"] != "cancelled" else (t.get("stop_reason") or "cancelled"),
            f"{t['epoch']}/{t['epochs']}",
            t.get("metric_value"),
        ]
        for t in sweep.get("trials") or []
    ]
    return table(title, ["", "#", "job", *paths, "status", "epochs", metric], rows)


def watch_sweep(api: Client, sweep_id: str, as_json: bool, poll_interval: float) -> int:
    """Follow a sweep to its end with a live table of its trials; print the table and best."""
    if as_json:
        sweep = api.wait_sweep(sweep_id, poll_interval=poll_interval)
        emit_json(sweep)
    else:
        with Live(console=err, auto_refresh=False, transient=True) as live:
            sweep = api.wait_sweep(
                sweep_id,
                poll_interval=poll_interval,
                on_progress=lambda s: live.update(sweep_table(s), refresh=True),
            )
        out.print(sweep_table(sweep))
        show_best(sweep)
    return EXIT_OK if sweep["status"] == "succeeded" else EXIT_JOB_FAILED


def show_best(sweep: Sweep) -> None:
    best = sweep.get("best")
    if best:
        metric = sweep["metric"]
        out.print(
            f"best: job {best['job_id']} ({metric['name']} {fmt(best['metric_value'])}, "
            f"{metric['goal']}) {json.dumps(best['params'])}; model {best['model_id']}"
        )


def cmd_sweeps_submit(api: Client, args: argparse.Namespace) -> int:
    try:
        with open(args.file, encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {args.file}: {exc}") from None
    if not isinstance(spec, dict):
        raise UsageError(f"{args.file}: not a JSON object (the body of POST /sweeps)")
    sweep = api.submit_sweep(spec, dataset_id=args.dataset, max_parallel=args.max_parallel)
    if args.watch:
        if not args.json:
            err.print(f"sweep {sweep['id']} submitted: {sweep['progress']['trials']} trials")
        return watch_sweep(api, sweep["id"], args.json, args.poll_interval)
    if args.json:
        emit_json(sweep)
    else:
        out.print(f"sweep {sweep['id']} {sweep['status']}: {sweep['progress']['trials']} trials")
    return EXIT_OK


def cmd_sweeps_watch(api: Client, args: argparse.Namespace) -> int:
    return watch_sweep(api, args.id, args.json, args.poll_interval)


def cmd_sweeps_list(api: Client, args: argparse.Namespace) -> int:
    page = api.list_sweeps(args.status, args.page, args.page_size)
    if args.json:
        emit_json(page)
        return EXIT_OK
    rows = [
        [
            s["id"],
            s.get("name") or "",
            s["status"],
            f"{s['progress']['succeeded']}/{s['progress']['trials']}",
            s["metric"]["name"],
            (s.get("best") or {}).get("metric_value"),
            short_time(s.get("created_at")),
        ]
        for s in page["items"]
    ]
    columns = ["id", "name", "status", "succeeded", "metric", "best", "created"]
    out.print(table(page_title("Sweeps", page), columns, rows))
    return EXIT_OK


def cmd_sweeps_get(api: Client, args: argparse.Namespace) -> int:
    sweep = api.get_sweep(args.id)
    if args.json:
        emit_json(sweep)
    else:
        out.print(sweep_table(sweep))
        show_best(sweep)
    return EXIT_OK


def cmd_sweeps_cancel(api: Client, args: argparse.Namespace) -> int:
    sweep = api.cancel_sweep(args.id)
    if args.json:
        emit_json(sweep)
    elif sweep["status"] == "cancelled":
        out.print(f"sweep {sweep['id']} cancelled")
    else:
        out.print(
            f"sweep {sweep['id']}: waiting trials cancelled; "
            f"{sweep['progress']['running']} running ones stop at their next epoch"
        )
    return EXIT_OK


def _deleter(kind: str) -> Callable[[Client, argparse.Namespace], int]:
    def command(api: Client, args: argparse.Namespace) -> int:
        getattr(api, f"delete_{kind}")(args.id)
        if args.json:
            emit_json({"id": args.id, "deleted": True})
        else:
            out.print(f"{kind} {args.id} deleted")
        return EXIT_OK

    return command


def _size(n: int | None) -> str:
    if n is None:
        return "no quota"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def cmd_usage(api: Client, args: argparse.Namespace) -> int:
    usage = api.usage()
    if args.json:
        emit_json(usage)
        return EXIT_OK
    b, jobs = usage["bytes"], usage["active_jobs"]
    out.print(f"stored:      {_size(b['used'])} of {_size(b['quota'])}")
    out.print(
        f"             datasets {_size(b['datasets'])}, models {_size(b['models'])}, "
        f"predictions {_size(b.get('predictions', 0))}, "
        f"unfinished uploads {_size(b['uploads'])}"
    )
    out.print(f"active jobs: {jobs['used']} of {jobs['quota']} (queued + running)")
    return EXIT_OK


def cmd_models_get(api: Client, args: argparse.Namespace) -> int:
    model = api.get_model(args.id)
    if args.weights:
        try:
            api.download_weights(args.id, args.weights)
        except OSError as exc:
            raise UsageError(f"cannot write {args.weights}: {exc.strerror or exc}") from exc
    if args.bundle:
        try:
            api.download_bundle(args.id, args.bundle)
        except OSError as exc:
            raise UsageError(f"cannot write {args.bundle}: {exc.strerror or exc}") from exc
    if args.json:
        emit_json(model)
        return EXIT_OK
    arch = model["architecture"]
    pairs = [
        ("id", model["id"]),
        ("job", model["job_id"]),
        ("dataset", model["dataset_id"]),
        ("inputs", arch.get("nin")),
        ("layers", arch.get("layers")),
        ("activation", arch.get("activation")),
        ("loss", arch.get("loss")),
        ("classes", arch.get("classes")),
        ("parameters", sum(_count(v) for v in (model.get("parameters") or {}).values())),
        ("columns", ", ".join(f"{c['name']} ({c['type']})" for c in model.get("columns") or [])),
        ("created", short_time(model.get("created_at"))),
        ("registered", registered_as(model.get("registered") or [])),
    ]
    out.print(key_values(f"Model {model['id']}", pairs))
    show_results(model)
    if args.weights:
        out.print(f"weights written to {args.weights}")
    if args.bundle:
        out.print(f"model (weights and preprocessing) written to {args.bundle}")
    return EXIT_OK


def cmd_models_export(api: Client, args: argparse.Namespace) -> int:
    output = args.output or f"model-{args.id}.{'onnx' if args.format == 'onnx' else 'zip'}"
    try:
        path = api.export(args.id, output, format=args.format)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from exc
    if args.json:
        emit_json({"id": args.id, "format": args.format, "path": str(path)})
    else:
        out.print(f"model {args.id} exported as {args.format} to {path}")
    return EXIT_OK


def _count(nested: Any) -> int:
    return sum(_count(v) for v in nested) if isinstance(nested, list) else 1


def cmd_models_list(api: Client, args: argparse.Namespace) -> int:
    page = api.list_models(args.page, args.page_size)
    if args.json:
        emit_json(page)
        return EXIT_OK
    rows = [
        [m["id"], ",".join(str(w) for w in (m.get("architecture") or {}).get("layers", [])),
         (m.get("metrics") or {}).get("loss"), (m.get("metrics") or {}).get("accuracy"),
         short_time(m.get("created_at"))]
        for m in page["items"]
    ]  # fmt: skip
    columns = ["id", "layers", "loss", "accuracy", "created"]
    out.print(table(page_title("Models", page), columns, rows))
    return EXIT_OK


def registered_as(entries: Sequence[dict[str, Any]]) -> str:
    """`churn@v2 (champion), other@v1`, or `-`."""
    return (
        ", ".join(
            f"{e['name']}@v{e['version']}"
            + (f" ({', '.join(e['aliases'])})" if e["aliases"] else "")
            for e in entries
        )
        or "-"
    )


def cmd_registry_register(api: Client, args: argparse.Namespace) -> int:
    version = api.register_model(args.name, args.model_id)
    if args.json:
        emit_json(version)
    else:
        out.print(f"{version['name']}@v{version['version']} is model {version['model_id']}")
    return EXIT_OK


def cmd_registry_alias(api: Client, args: argparse.Namespace) -> int:
    if args.delete:
        api.delete_alias(args.name, args.alias)
        if args.json:
            emit_json({"name": args.name, "alias": args.alias, "deleted": True})
        else:
            out.print(f"{args.name}@{args.alias} deleted")
        return EXIT_OK
    if args.version is None:
        raise UsageError("give the VERSION to point the alias at (or --delete)")
    alias = api.set_alias(args.name, args.alias, args.version)
    if args.json:
        emit_json(alias)
    else:
        out.print(
            f"{args.name}@{alias['alias']} -> v{alias['version']} (model {alias['model_id']})"
        )
    return EXIT_OK


def cmd_registry_get(api: Client, args: argparse.Namespace) -> int:
    got = api.get_registered(args.name)
    if args.json:
        emit_json(got)
        return EXIT_OK
    aliases_of: dict[int, list[str]] = {}
    for a in got["aliases"]:
        aliases_of.setdefault(a["version"], []).append(a["alias"])
    rows = [
        [f"v{v['version']}", v["model_id"], ", ".join(aliases_of.get(v["version"], [])) or "-",
         short_time(v["created_at"])]
        for v in got["versions"]
    ]  # fmt: skip
    out.print(
        table(f"Registered model {got['name']}", ["version", "model", "aliases", "created"], rows)
    )
    moves = [
        [a["alias"], fmt(h["from"]), fmt(h["to"]), short_time(h["at"]), fmt(h["key_id"])]
        for a in got["aliases"]
        for h in a["history"]
    ]
    if moves:
        out.print(table("Alias moves", ["alias", "from", "to", "at", "key"], moves))
    return EXIT_OK


def cmd_registry_list(api: Client, args: argparse.Namespace) -> int:
    page = api.list_registry(args.page, args.page_size)
    if args.json:
        emit_json(page)
        return EXIT_OK
    rows = [
        [r["name"], f"v{r['latest_version']}",
         ", ".join(f"{a}->v{v}" for a, v in r["aliases"].items()) or "-",
         short_time(r["created_at"])]
        for r in page["items"]
    ]  # fmt: skip
    out.print(
        table(page_title("Registered models", page), ["name", "latest", "aliases", "created"], rows)
    )
    return EXIT_OK


def cmd_models_graph(api: Client, args: argparse.Namespace) -> int:
    svg = api.graph_svg(args.id)
    if args.output in (None, "-"):
        sys.stdout.write(svg)
        return EXIT_OK
    try:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(svg)
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
    if args.json:
        emit_json({"model_id": args.id, "output": args.output, "bytes": len(svg.encode())})
    else:
        out.print(f"graph written to {args.output}")
    return EXIT_OK


def cmd_predict(api: Client, args: argparse.Namespace) -> int:
    """Post the CSV file as it is; print the predictions (table, JSON or the server's CSV), or
    stream them to a file."""
    if args.output not in (None, "-"):
        return _predict_to_file(api, args)
    try:
        answer = api.predict_csv(args.id, args.file, as_csv=args.csv or args.output == "-")
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from exc
    if isinstance(answer, str):
        sys.stdout.write(answer)
        return EXIT_OK
    if args.json:
        emit_json(answer)
        return EXIT_OK
    out.print(prediction_table(api, args.id, answer))
    return EXIT_OK


def _predict_to_file(api: Client, args: argparse.Namespace) -> int:
    """The server's answer streamed to `--output`: CSV, or JSON lines / Parquet by its suffix
    or `--format`."""
    fmt = args.format or download_format(args.output)
    try:
        path = api.predict_csv(args.id, args.file, out=args.output, format=fmt)
    except OSError as exc:
        reading = str(exc.filename) == str(args.file)
        what = f"read {args.file}" if reading else f"write {args.output}"
        raise UsageError(f"cannot {what}: {exc.strerror or exc}") from exc
    size = path.stat().st_size
    rows = None
    if fmt != "parquet":  # one line a row (labels hold no line breaks)
        with path.open("rb") as f:
            rows = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        rows -= fmt == "csv"  # the header
    if args.json:
        emit_json(
            {"model_id": args.id, "output": str(path), "format": fmt, "rows": rows, "bytes": size}
        )
    elif rows is not None:
        out.print(f"{rows} predictions written to {path}")
    else:
        out.print(f"predictions written to {path} ({fmt}, {size:,} bytes)")
    return EXIT_OK


MAX_PROBABILITY_COLUMNS = 6


def prediction_table(api: Client, model_id: str, answer: dict[str, Any]) -> Table:
    predictions = answer["predictions"]
    probabilities = answer.get("probabilities")
    classes: list[Any] = []
    if probabilities:
        classes = (api.get_model(model_id).get("architecture") or {}).get("classes") or []
    per_class = probabilities and 0 < len(classes) <= MAX_PROBABILITY_COLUMNS
    if predictions and isinstance(predictions[0], list):
        columns = ["row", *(f"prediction {j}" for j in range(len(predictions[0])))]
    else:
        columns = ["row", "prediction"]
    if per_class:
        columns += [f"p({fmt(label)})" for label in classes]
    elif probabilities:
        columns.append("probability")
    rows = []
    for i, prediction in enumerate(predictions):
        cells: list[Any] = [i + 1, *(prediction if isinstance(prediction, list) else [prediction])]
        if per_class:
            cells += probabilities[i]
        elif probabilities:
            cells.append(max(probabilities[i]))
        rows.append(cells)
    return table(f"Predictions of model {model_id}", columns, rows)


def cmd_models_predict_dataset(api: Client, args: argparse.Namespace) -> int:
    """Submit a batch prediction; with --wait (or -o) follow it, then download its output."""
    job = api.predict_dataset(args.id, args.dataset)
    if not (args.wait or args.output):
        if args.json:
            emit_json(job)
        else:
            out.print(f"predict job {job['id']} {job['status']} (trainyard jobs watch {job['id']})")
        return EXIT_OK
    if args.output:
        _check_writable(args.output)
    code = watch(api, job["id"], args.json and not args.output, args.poll_interval)
    if code != EXIT_OK or not args.output:
        return code
    return _download(api, job["id"], args.output, args.format, args.json)


def _check_writable(path: str) -> None:
    """A usage error now, not after the job ran, if `path` cannot be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write {path}: no writable folder {folder}")


def _download(api: Client, job_id: str, output: str, fmt: str | None, as_json: bool) -> int:
    try:
        path = api.download_predictions(job_id, output, fmt)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from exc
    if as_json:
        emit_json({"job_id": job_id, "output": str(path), "bytes": path.stat().st_size})
    else:
        out.print(f"predictions of job {job_id} written to {path}")
    return EXIT_OK


def cmd_predictions_download(api: Client, args: argparse.Namespace) -> int:
    _check_writable(args.output)
    return _download(api, args.id, args.output, args.format, args.json)


def cmd_evaluate(api: Client, args: argparse.Namespace) -> int:
    result = api.evaluate(args.id, args.dataset)
    if args.json:
        emit_json(result)
        return EXIT_OK
    out.print(f"model {result['model_id']} on dataset {result['dataset_id']}")
    show_evaluation({"dataset": result["evaluation"]})
    return EXIT_OK


# -- argument parsing -------------------------------------------------------------------------


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"KEY=VALUE expected: {text!r}")
    return key.strip(), value.strip()


def preprocessing_option(text: str) -> tuple[str, str]:
    """`numeric=minmax`: a key and a value of `training.preprocessing`."""
    key, value = key_value(text)
    if key not in preprocessing.CHOICES:
        keys = ", ".join(preprocessing.CHOICES)
        raise argparse.ArgumentTypeError(f"unknown preprocessing key {key!r} (one of: {keys})")
    if value not in preprocessing.CHOICES[key]:
        choices = ", ".join(preprocessing.CHOICES[key])
        raise argparse.ArgumentTypeError(f"{key} is one of: {choices} (not {value!r})")
    return key, value


def column_type(text: str) -> tuple[str, str]:
    key, value = key_value(text)
    if value not in ("numeric", "categorical"):
        raise argparse.ArgumentTypeError(f"a column is numeric or categorical, not {value!r}")
    return key, value


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def lr_schedule(text: str) -> dict[str, Any]:
    """`cosine`, or `step:step_size=10,gamma=0.5`: the type, then its parameters."""
    kind, _, params = text.partition(":")
    kind = kind.strip()
    if kind not in LR_SCHEDULES:
        raise argparse.ArgumentTypeError(
            f"the schedule is one of {', '.join(LR_SCHEDULES)}, not {kind!r}"
        )
    schedule: dict[str, Any] = {"type": kind}
    for part in filter(None, (p.strip() for p in params.split(","))):
        key, value = key_value(part)
        try:
            schedule[key] = _number(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{key} must be a number: {value!r}") from None
    return schedule


def class_weight(text: str) -> str | dict[str, float]:
    """`balanced`, or `LABEL=WEIGHT,LABEL=WEIGHT`."""
    if text.strip() == "balanced":
        return "balanced"
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        label, value = key_value(part)
        try:
            weights[label] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"a weight is a number: {value!r}") from None
    if not weights:
        raise argparse.ArgumentTypeError("'balanced' or LABEL=WEIGHT,... expected")
    return weights


def _schedule_help() -> str:
    params = "; ".join(
        f"{kind}: " + ", ".join(f"{k}={v}" for k, v in defaults.items())
        for kind, defaults in LR_SCHEDULE_DEFAULTS.items()
        if defaults
    )
    return (
        f"learning-rate schedule: TYPE[:KEY=VALUE,...], TYPE one of {', '.join(LR_SCHEDULES)} "
        f"(default: {DEFAULT_LR_SCHEDULE}; parameters and their defaults: {params}); e.g. "
        "--lr-schedule step:step_size=10,gamma=0.5"
    )


def _preprocessing_help() -> str:
    keys = "; ".join(
        f"{key}={'|'.join(choices)} (default {preprocessing.DEFAULTS[key]})"
        for key, choices in preprocessing.CHOICES.items()
    )
    return (
        f"KEY=VALUE, repeatable: {keys}. Fitted on the training rows, stored with the model "
        "(target: mse only)"
    )


@dataclass(frozen=True)
class Arg:
    """One `add_argument(*flags, **options)` of a command."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


def cmd_keys_list(api: Client, args: argparse.Namespace) -> int:
    page = api.list_keys(args.page, args.page_size)
    if args.json:
        emit_json(page)
        return EXIT_OK
    rows = [
        [k["id"], k["prefix"], k["name"], k["scope"], short_time(k.get("created_at")),
         short_time(k.get("last_used_at")), short_time(k.get("expires_at")),
         short_time(k.get("revoked_at"))]
        for k in page["items"]
    ]  # fmt: skip
    columns = ["id", "prefix", "name", "scope", "created", "used", "expires", "revoked"]
    out.print(table(page_title("API keys", page), columns, rows))
    return EXIT_OK


def _show_new_key(key: dict[str, Any], as_json: bool, what: str) -> int:
    if as_json:
        emit_json(key)
    else:
        out.print(key["key"])
        err.print(
            f"{what} key {key['id']} ({key['scope']}). Store it now: it cannot be shown again."
        )
    return EXIT_OK


def cmd_keys_create(api: Client, args: argparse.Namespace) -> int:
    key = api.create_key(args.name or "", args.scope, args.expires_at)
    return _show_new_key(key, args.json, "Created")


def cmd_keys_rotate(api: Client, args: argparse.Namespace) -> int:
    key = api.rotate_key(args.id)
    return _show_new_key(key, args.json, f"Revoked {args.id}; new")


def cmd_keys_revoke(api: Client, args: argparse.Namespace) -> int:
    api.revoke_key(args.id)
    if args.json:
        emit_json({"id": args.id, "revoked": True})
    else:
        out.print(f"key {args.id} revoked")
    return EXIT_OK


def cmd_audit(api: Client, args: argparse.Namespace) -> int:
    page = api.audit(args.action, args.key_id, args.since, args.until, args.page, args.page_size)
    if args.json:
        emit_json(page)
        return EXIT_OK
    rows = [
        [short_time(e["at"]), e["action"], e["status_code"],
         " ".join(e["resource_ids"].values()), (e.get("key_id") or "")[:8]]
        for e in page["items"]
    ]  # fmt: skip
    columns = ["at", "action", "status", "resources", "key"]
    out.print(table(page_title("Audit log", page), columns, rows))
    return EXIT_OK


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True)
class Command:
    """A command of the table `build_parser` reads: `group` ("jobs", ...; "" for a top-level
    command), its `name`, handler, help, arguments, aliases, and `paged` (`--page`,
    `--page-size` after its own arguments)."""

    group: str
    name: str
    func: Callable[..., int]
    help: str
    args: tuple[Arg, ...] = ()
    aliases: tuple[str, ...] = ()
    paged: bool = False


#: the command groups, in the order `--help` lists them (top-level commands come after)
GROUPS = {
    "datasets": "upload and list datasets",
    "jobs": "submit, follow and cancel jobs (training; batch predictions too)",
    "sweeps": "hyperparameter sweeps: many trials, one request",
    "models": "fetch trained models, batch predictions",
    "predictions": "download batch predictions",
    "registry": "named models: numbered versions, movable aliases (NAME@ALIAS, NAME@vN)",
    "keys": "list, create, rotate and revoke this owner's API keys",
}
PREDICTION_FORMAT = arg(
    "--format", choices=["csv", "parquet", "jsonl"],
    help="file format (default: from the file's extension, else csv)",
)  # fmt: skip
STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"]
#: the global options, before the command or after it
GLOBAL_ARGS = (
    arg("--url", help=f"server URL (default: $TRAINYARD_URL or {DEFAULT_URL})"),
    arg("--api-key", help="API key (default: $TRAINYARD_API_KEY or var/api-key)"),
    arg("--json", action="store_true", help="print JSON instead of tables"),
    arg("--timeout", type=float, default=30.0, help="seconds per request (default: %(default)s)"),
)
#: each command takes them too; SUPPRESS keeps one given before the command
COMMAND_GLOBAL_ARGS = (
    arg("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON"),
    arg("--url", default=argparse.SUPPRESS, help="server URL (as before COMMAND)"),
    arg("--api-key", default=argparse.SUPPRESS, help="API key (as before COMMAND)"),
    arg("--timeout", type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS),
)
PAGED_ARGS = (
    arg("--page", type=int, default=1, help="from 1 (default: %(default)s)"),
    arg("--page-size", type=int, default=20, help="1 to 100 (default: %(default)s)"),
)
ID = arg("id")
_T = TRAINING_DEFAULTS
_ES = EARLY_STOPPING_DEFAULTS
_LR_DEFAULTS = ", ".join(f"{v} for {k}" for k, v in DEFAULT_LEARNING_RATE.items())

SUBMIT_ARGS = (
    arg("--dataset", required=True, help="dataset id"),
    arg(
        "--layers",
        required=True,
        type=parse_layers,
        help="widths, the last one the output width, e.g. 16,16,1 (1 for 2 classes with "
        "binary_cross_entropy, k for k classes with cross_entropy)",
    ),
    arg("--activation", help=f"hidden activation (default: {MODEL_DEFAULTS['activation']})"),
    arg("--output-activation", help="(default: none; the loss applies its own)"),
    arg(
        "--loss",
        choices=LOSSES,
        help="(default: the server picks from the targets: binary_cross_entropy for 2 "
        "classes, cross_entropy for more, mse for numbers)",
    ),
    arg("--optimizer", choices=OPTIMIZERS, help=f"(default: {_T['optimizer']})"),
    arg("--lr", type=float, help=f"learning rate (default: {_LR_DEFAULTS})"),
    arg("--momentum", type=float, help=f"sgd (default: {_T['momentum']})"),
    arg("--weight-decay", type=float, help=f"(default: {_T['weight_decay']})"),
    arg("--epochs", type=int, help=f"(default: {_T['epochs']})"),
    arg(
        "--batch-size",
        type=batch_size,
        default=argparse.SUPPRESS,
        help=f"an integer or 'full' (default: {_T['batch_size']})",
    ),
    arg("--seed", type=int, help=f"seeds the weights and the splits (default: {_T['seed']})"),
    arg(
        "--validation-split",
        type=float,
        metavar="F",
        help=f"fraction of the rows that validate (default: {_T['validation_split']}; "
        f"{EARLY_STOPPING_SPLIT} with --early-stopping)",
    ),
    arg(
        "--test-split",
        type=float,
        metavar="F",
        help=f"fraction of the rows held out and only scored, the evaluation's test split "
        f"(default: {_T['test_split']})",
    ),
    arg(
        "--early-stopping",
        action="store_true",
        help="stop when the validation loss stops improving and keep the best epoch's "
        "weights (default: off)",
    ),
    arg(
        "--patience",
        type=int,
        metavar="N",
        help=f"early stopping: epochs without improvement (default: {_ES['patience']}; "
        "implies --early-stopping)",
    ),
    arg(
        "--min-delta",
        type=float,
        metavar="F",
        help=f"early stopping: the least improvement that counts (default: {_ES['min_delta']})",
    ),
    arg(
        "--no-restore-best",
        action="store_true",
        help="early stopping: save the last epoch's weights, not the best epoch's",
    ),
    arg("--lr-schedule", type=lr_schedule, metavar="TYPE[:K=V,...]", help=_schedule_help()),
    arg(
        "--class-weight",
        type=class_weight,
        metavar="balanced|LABEL=W,...",
        help="classification: 'balanced' (n / (k * count)) or per-label weights (default: none)",
    ),
    arg("--dtype", choices=DTYPES, help=f"(default: {_T['dtype']})"),
    arg(
        "--preprocessing",
        type=preprocessing_option,
        action="append",
        metavar="KEY=VALUE",
        help=_preprocessing_help(),
    ),
    arg(
        "--register-as",
        metavar="NAME",
        help="register the model as NAME's next version when the job succeeds",
    ),
    arg("--watch", action="store_true", help="follow the job to its end"),
    arg("--poll-interval", type=float, default=0.5, help=argparse.SUPPRESS),
)

COMMANDS: tuple[Command, ...] = (
    Command("datasets", "upload", cmd_datasets_upload, "upload a CSV file (header row), as it is", (
        arg("file", help="text columns and missing cells (empty, NA, NaN, null) are fine"),
        arg("--target", help="target column (default: the last one)"),
        arg("--name", help="dataset name (default: the file name)"),
        arg(
            "--column-type", type=column_type, action="append", metavar="NAME=TYPE",
            help="override the inferred type: numeric or categorical (repeatable), "
            "e.g. --column-type zip=categorical",
        ),
        arg(
            "--resumable", action="store_true",
            help=f"upload in chunks that survive a broken connection (always for files over "
            f"{RESUMABLE_OVER >> 20} MiB); running the command again resumes an interrupted "
            "upload",
        ),
        arg("--chunk-size", type=byte_size, metavar="SIZE",
            help="bytes per chunk of a resumable upload, e.g. 4M (default: 16M)"),
    )),
    Command("datasets", "import", cmd_datasets_import,
            "import a CSV or Parquet object already in the object store (no bytes sent)", (
        arg("source", help="s3://bucket/key.csv, .parquet, or a folder of Parquet parts "
            "ending in / (under a prefix the server's TRAINYARD_IMPORT_PREFIXES allows)"),
        arg("--target", help="target column (default: the last one)"),
        arg("--name", help="dataset name (default: the object's name)"),
        arg("--column-type", type=column_type, action="append", metavar="NAME=TYPE",
            help="override the inferred type: numeric or categorical (repeatable)"),
        arg("--wait", action="store_true", help="follow the import job and show the dataset"),
        arg("--poll-interval", type=float, default=0.5, help=argparse.SUPPRESS),
    )),
    Command("datasets", "list", cmd_datasets_list, "list datasets, newest first", paged=True),
    Command("datasets", "get", cmd_datasets_get, "show a dataset and its columns", (ID,),
            ("show",)),
    Command("datasets", "download", cmd_datasets_download,
            "download a dataset's rows as uploaded (streamed to a file)", (
        ID,
        arg("-o", "--output", metavar="FILE",
            help="file to write (default: dataset-ID.csv, or the --format's suffix)"),
        arg("--format", choices=list(DOWNLOAD_FORMATS),
            help="csv, jsonl or parquet (default: by the file's suffix, else csv)"),
    )),
    Command("jobs", "submit", cmd_jobs_submit, "submit a training job", SUBMIT_ARGS),
    Command("jobs", "watch", cmd_jobs_watch, "follow a job with a progress bar to its end", (
        ID, arg("--poll-interval", type=float, default=0.5, help="(default: %(default)s s)"),
    )),
    Command("jobs", "list", cmd_jobs_list, "list jobs, newest first",
            (arg("--status", choices=STATUSES),
             arg("--kind", choices=["train", "predict", "import"])),
            paged=True),
    Command("jobs", "get", cmd_jobs_get, "show a job and its evaluation", (ID,), ("show",)),
    Command("jobs", "cancel", cmd_jobs_cancel, "cancel a job", (ID,)),
    Command("jobs", "delete", _deleter("job"), "delete a finished job and its model", (ID,)),
    Command("sweeps", "submit", cmd_sweeps_submit, "submit a sweep from a JSON file", (
        arg("file", help="the body of POST /api/v1/sweeps (base, parameters, ...)"),
        arg("--dataset", help="dataset id (overrides the file's dataset_id)"),
        arg("--max-parallel", type=int, help="trials at once (overrides the file's)"),
        arg("--watch", action="store_true", help="follow it: a live table of trials"),
        arg("--poll-interval", type=float, default=1.0, help=argparse.SUPPRESS),
    )),
    Command("sweeps", "watch", cmd_sweeps_watch, "follow a sweep to its end", (
        ID, arg("--poll-interval", type=float, default=1.0, help=argparse.SUPPRESS),
    )),
    Command("sweeps", "list", cmd_sweeps_list, "list sweeps, newest first",
            (arg("--status", choices=STATUSES),), paged=True),
    Command("sweeps", "get", cmd_sweeps_get, "show a sweep's trials and its best", (ID,),
            ("show",)),
    Command("sweeps", "cancel", cmd_sweeps_cancel, "cancel a sweep", (ID,)),
    Command("sweeps", "delete", _deleter("sweep"), "delete a finished sweep and its trials",
            (ID,)),
    Command("datasets", "delete", _deleter("dataset"), "delete a dataset (frees its rows)",
            (ID,)),
    Command("models", "delete", _deleter("model"), "delete a model", (ID,)),
    Command("", "usage", cmd_usage, "stored bytes and active jobs against the quotas"),
    Command("models", "get", cmd_models_get, "show a model", (
        ID,
        arg(
            "--weights", metavar="FILE.npz",
            help="also download its weights (the network only: it takes preprocessed inputs)",
        ),
        arg(
            "--bundle", metavar="FILE.npz",
            help="also download the whole model, weights and preprocessing "
            "(core.model.Model.from_bytes reads it)",
        ),
    ), ("show",)),
    Command("models", "list", cmd_models_list, "list models, newest first", paged=True),
    Command("models", "export", cmd_models_export, "export a model for other runtimes", (
        ID,
        arg(
            "--format", choices=["onnx", "bundle"], default="onnx",
            help="onnx: preprocessing and network in one ONNX file; bundle: a zip with the "
            "model file, the bare weights, model.json and a README (default: onnx)",
        ),
        arg("-o", "--output", help="file to write (default: model-ID.onnx / .zip)"),
    )),
    Command("models", "graph", cmd_models_graph, "download the computational graph (SVG)", (
        ID, arg("-o", "--output", help="file to write (default: stdout)"),
    )),
    Command("models", "predict-dataset", cmd_models_predict_dataset,
            "batch predictions: a job predicting every row of a stored dataset", (
        ID,
        arg("--dataset", required=True, help="dataset id (with the model's feature columns)"),
        arg("--wait", action="store_true", help="follow the job to its end"),
        arg("-o", "--output", metavar="FILE", help="wait, then write the predictions here"),
        PREDICTION_FORMAT,
        arg("--poll-interval", type=float, default=0.5, help=argparse.SUPPRESS),
    )),
    Command("predictions", "download", cmd_predictions_download,
            "download a succeeded predict job's predictions", (
        arg("id", help="predict job id"),
        arg("-o", "--output", required=True, metavar="FILE", help="file to write"),
        PREDICTION_FORMAT,
    )),
    Command("registry", "register", cmd_registry_register,
            "register a model as a name's next version (the first one creates the name)", (
        arg("name", help="the registered model's name"),
        arg("model_id", help="model id (or NAME@ALIAS, NAME@vN)"),
    )),
    Command("registry", "alias", cmd_registry_alias, "point an alias at a version (or delete it)", (
        arg("name"), arg("alias", help="e.g. champion (v<digits> is reserved)"),
        arg("version", nargs="?", type=int, help="the version number"),
        arg("--delete", action="store_true", help="delete the alias instead"),
    )),
    Command("registry", "get", cmd_registry_get, "show a name's versions, aliases and moves",
            (arg("name"),), ("show",)),
    Command("registry", "list", cmd_registry_list, "list registered models", paged=True),
    Command("", "predict", cmd_predict, "predict with a model on a CSV file", (
        arg("id", help="model id, NAME@ALIAS or NAME@vN"),
        arg(
            "file",
            help="CSV file with a header naming the model's columns (any order; text, missing "
            "cells and unseen categories are fine), posted as it is",
        ),
        arg("--csv", action="store_true", help="print the server's CSV instead"),
        arg("-o", "--output", metavar="FILE",
            help="stream the predictions to a file: CSV, or JSON lines / Parquet by its suffix "
            "(.jsonl, .parquet) or --format"),
        arg("--format", choices=list(DOWNLOAD_FORMATS),
            help="with --output: csv, jsonl or parquet (default: by the suffix, else csv)"),
    )),
    Command("", "evaluate", cmd_evaluate, "score a model on a dataset with its columns", (
        arg("id", help="model id, NAME@ALIAS or NAME@vN"),
        arg("--dataset", required=True, help="dataset id (same columns and target)"),
    )),
    Command("keys", "list", cmd_keys_list, "list the owner's API keys (never the secrets)",
            paged=True),
    Command("keys", "create", cmd_keys_create, "create an API key (printed this once)", (
        arg("--name", help="a note to tell keys apart"),
        arg("--scope", choices=["read", "write"],
            help="read: no request that changes something (default: this key's scope)"),
        arg("--expires-at", metavar="ISO8601", help="when it stops working (default: never, "
            "or this key's own expiry)"),
    )),
    Command("keys", "rotate", cmd_keys_rotate,
            "replace a key by a new one (same name, scope, expiry); the old one is revoked",
            (ID,)),
    Command("keys", "revoke", cmd_keys_revoke, "revoke a key", (ID,)),
    Command("", "audit", cmd_audit, "the owner's audit log, newest first", (
        arg("--action", help="one action (job.cancel) or a resource's (job)"),
        arg("--key-id", help="only this key's requests"),
        arg("--since", metavar="ISO8601"),
        arg("--until", metavar="ISO8601"),
    ), paged=True),
)  # fmt: skip


def _add_args(parser: argparse.ArgumentParser, args: Sequence[Arg]) -> None:
    for a in args:
        parser.add_argument(*a.flags, **a.options)


def build_parser() -> argparse.ArgumentParser:
    """The `trainyard` parser, built from `GLOBAL_ARGS`, `GROUPS` and `COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="trainyard",
        description="Train MLPs on a trainyard server and use the trained models.",
        epilog="Exit codes: 0 ok, 1 job failed/cancelled, 2 usage, 3 API error, 4 not found, "
        "5 cannot reach server, 6 server error.",
    )
    _add_args(parser, GLOBAL_ARGS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, Any] = {"": commands}
    for command in COMMANDS:
        if command.group not in groups:
            group = commands.add_parser(command.group, help=GROUPS[command.group])
            groups[command.group] = group.add_subparsers(
                dest="action", required=True, metavar="ACTION"
            )
        p = groups[command.group].add_parser(
            command.name, help=command.help, description=command.help,
            aliases=list(command.aliases),
        )  # fmt: skip
        p.set_defaults(func=command.func)
        _add_args(p, COMMAND_GLOBAL_ARGS)
        _add_args(p, command.args)
        if command.paged:
            _add_args(p, PAGED_ARGS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors
    api = Client(args.url, args.api_key, timeout=args.timeout)
    try:
        return int(args.func(api, args))
    except UsageError as exc:
        err.print(f"trainyard: {exc}")
        return EXIT_USAGE
    except NotFoundError as exc:
        err.print(f"trainyard: not found: {exc.message}")
        return EXIT_NOT_FOUND
    except ApiError as exc:
        err.print(f"trainyard: the API answered {exc.status} {exc.code}: {exc.message}")
        for field, message in exc.fields.items():
            if f"{field}: {message}" not in exc.message:
                err.print(f"  {field}: {message}")
        if exc.status == 401:
            if args.api_key is None and find_api_key() is None:
                looked = ", ".join(str(p) for p in api_key_locations())
                err.print(f"  no API key found: looked in --api-key, $TRAINYARD_API_KEY, {looked}")
            err.print("  (give a key with --api-key or $TRAINYARD_API_KEY)")
        return EXIT_SERVER_ERROR if exc.status >= 500 else EXIT_API_ERROR
    except ConnectionFailed as exc:
        err.print(f"trainyard: {exc}")
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        err.print("trainyard: interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug here must not read as "the job failed" (1)
        err.print(f"trainyard: internal error: {type(exc).__name__}: {exc}")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
