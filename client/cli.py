"""The `trainyard` command: datasets, jobs, models and predictions from a shell.

    trainyard datasets upload moons.csv --target label [--name moons]
    trainyard datasets list | datasets get ID
    trainyard jobs submit --dataset ID --layers 16,16,1 --loss binary_cross_entropy --watch
    trainyard jobs watch ID | jobs list [--status running] | jobs get ID | jobs cancel ID
    trainyard models get ID [--weights model.npz] | models list | models graph ID -o graph.svg
    trainyard predict MODEL_ID data.csv        (CSV of features with a header row)

Global options (before the command): `--url` (default `$TRAINYARD_URL`, then
http://127.0.0.1:8000), `--api-key` (default `$TRAINYARD_API_KEY`, then the embedded mode's key
file `$TRAINYARD_VAR_DIR/api-key` or `./var/api-key`), `--json` (print the API's JSON on
stdout instead of tables). Progress bars and error messages go to stderr.

Exit codes:
    0  success
    1  the job ended `failed` or `cancelled` (`jobs watch`, `jobs submit --watch`)
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
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from client.api import (
    ApiError,
    Client,
    ConnectionFailed,
    Job,
    NotFoundError,
    read_features_csv,
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

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


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
    return stamp[:16].replace("T", " ") if stamp else "-"


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for column in columns:
        # ids stay whole: people copy them into the next command
        t.add_column(column, no_wrap=column in ("id", "job", "status"))
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
    return history[-1] if history else None


def show_job(job: Job) -> None:
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
        ("created", short_time(job.get("created_at"))),
        ("finished", short_time(job.get("finished_at"))),
        ("model", job.get("model_id")),
    ]
    if job.get("error"):
        pairs.append(("error", job["error"]))
    out.print(key_values(f"Job {job['id']}", pairs))
    show_metrics(job.get("metrics"))


def show_metrics(metrics: dict[str, Any] | None) -> None:
    if metrics:
        out.print(key_values("Metrics", sorted(metrics.items())))


def job_rows(jobs: Sequence[Job]) -> list[list[Any]]:
    rows = []
    for job in jobs:
        p = job.get("progress") or {"epoch": 0, "epochs": 0}
        rows.append(
            [
                job["id"],
                job["status"],
                f"{p['epoch']}/{p['epochs']}",
                final_loss(job),
                ",".join(str(w) for w in (job.get("model") or {}).get("layers", [])),
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
            TextColumn("epochs  loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            console=err,
        ) as progress:
            task = progress.add_task(f"job {job_id[:8]} queued", total=None, loss="-")

            def update(job: Job) -> None:
                p = job.get("progress") or {"epoch": 0, "epochs": 0}
                history = job.get("loss_history") or []
                loss = f"{history[-1]:.4g}" if history else "-"
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
        show_metrics(job.get("metrics"))
        if job.get("model_id"):
            out.print(f"model {job['model_id']}")
    return EXIT_OK if job["status"] == "succeeded" else EXIT_JOB_FAILED


# -- commands ---------------------------------------------------------------------------------


def cmd_datasets_upload(api: Client, args: argparse.Namespace) -> int:
    try:
        dataset = api.upload_csv(args.file, target=args.target, name=args.name)
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from exc
    return show_dataset(dataset, args.json)


def show_dataset(dataset: dict[str, Any], as_json: bool) -> int:
    if as_json:
        emit_json(dataset)
        return EXIT_OK
    pairs = [
        ("id", dataset["id"]),
        ("name", dataset["name"]),
        ("samples", dataset["n_samples"]),
        ("features", dataset["n_features"]),
        ("targets", dataset["n_targets"]),
        ("classes", dataset.get("classes")),
        ("feature names", dataset.get("feature_names")),
        ("created", short_time(dataset.get("created_at"))),
    ]
    out.print(key_values(f"Dataset {dataset['name']}", pairs))
    return EXIT_OK


def cmd_datasets_get(api: Client, args: argparse.Namespace) -> int:
    return show_dataset(api.get_dataset(args.id), args.json)


def cmd_datasets_list(api: Client, args: argparse.Namespace) -> int:
    page = api.list_datasets(args.page, args.page_size)
    if args.json:
        emit_json(page)
        return EXIT_OK
    rows = [
        [d["id"], d["name"], d["n_samples"], d["n_features"], d.get("classes"),
         short_time(d.get("created_at"))]
        for d in page["items"]
    ]  # fmt: skip
    columns = ["id", "name", "samples", "features", "classes", "created"]
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
        "epochs": args.epochs,
        "seed": args.seed,
        "validation_split": args.validation_split,
    }
    if "batch_size" in vars(args):  # absent: the server's default; None: full batch
        options["batch_size"] = args.batch_size
    job = api.submit_job(args.dataset, args.layers, **options)
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


def cmd_jobs_watch(api: Client, args: argparse.Namespace) -> int:
    return watch(api, args.id, args.json, args.poll_interval)


def cmd_jobs_list(api: Client, args: argparse.Namespace) -> int:
    page = api.list_jobs(args.status, args.page, args.page_size)
    if args.json:
        emit_json(page)
        return EXIT_OK
    columns = ["id", "status", "epochs", "final loss", "layers", "created"]
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


def cmd_models_get(api: Client, args: argparse.Namespace) -> int:
    model = api.get_model(args.id)
    if args.weights:
        try:
            api.download_weights(args.id, args.weights)
        except OSError as exc:
            raise UsageError(f"cannot write {args.weights}: {exc.strerror or exc}") from exc
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
        ("created", short_time(model.get("created_at"))),
    ]
    out.print(key_values(f"Model {model['id']}", pairs))
    show_metrics(model.get("metrics"))
    if args.weights:
        out.print(f"weights written to {args.weights}")
    return EXIT_OK


def _count(nested: Any) -> int:
    return sum(_count(v) for v in nested) if isinstance(nested, list) else 1


def cmd_models_list(api: Client, args: argparse.Namespace) -> int:
    page = api.list_models(args.page, args.page_size)
    if args.json:
        emit_json(page)
        return EXIT_OK
    rows = [
        [m["id"], m["job_id"], (m.get("architecture") or {}).get("layers"),
         (m.get("metrics") or {}).get("loss"), (m.get("metrics") or {}).get("accuracy"),
         short_time(m.get("created_at"))]
        for m in page["items"]
    ]  # fmt: skip
    columns = ["id", "job", "layers", "loss", "accuracy", "created"]
    out.print(table(page_title("Models", page), columns, rows))
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
    try:
        features = read_features_csv(args.file)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read features: {exc}") from exc
    answer = api.predict(args.id, features)
    if args.json:
        emit_json(answer)
        return EXIT_OK
    probabilities = answer.get("probabilities")
    columns = ["row", "features", "prediction"] + (["probability"] if probabilities else [])
    rows = []
    for i, (row, prediction) in enumerate(zip(features, answer["predictions"], strict=True)):
        cells: list[Any] = [i + 1, ", ".join(f"{v:g}" for v in row), prediction]
        if probabilities:
            cells.append(max(probabilities[i]))
        rows.append(cells)
    out.print(table(f"Predictions of model {args.id}", columns, rows))
    return EXIT_OK


# -- argument parsing -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainyard",
        description="Train MLPs on a trainyard server and use the trained models.",
        epilog="Exit codes: 0 ok, 1 job failed/cancelled, 2 usage, 3 API error, 4 not found, "
        "5 cannot reach server, 6 server error.",
    )
    parser.add_argument("--url", help="server URL (default: $TRAINYARD_URL or %(default)s)")
    parser.add_argument("--api-key", help="API key (default: $TRAINYARD_API_KEY or var/api-key)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def paged(p: argparse.ArgumentParser) -> None:
        p.add_argument("--page", type=int, default=1)
        p.add_argument("--page-size", type=int, default=20)

    def add(group: Any, name: str, func: Callable[..., int], help: str) -> argparse.ArgumentParser:
        p = group.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    datasets = commands.add_parser("datasets", help="upload and list datasets")
    ds = datasets.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = add(ds, "upload", cmd_datasets_upload, "upload a CSV file (header row)")
    p.add_argument("file")
    p.add_argument("--target", help="target column (default: the last one)")
    p.add_argument("--name", help="dataset name (default: the file name)")
    paged(add(ds, "list", cmd_datasets_list, "list datasets, newest first"))
    add(ds, "get", cmd_datasets_get, "show a dataset").add_argument("id")

    jobs = commands.add_parser("jobs", help="submit, follow and cancel training jobs")
    js = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = add(js, "submit", cmd_jobs_submit, "submit a training job")
    p.add_argument("--dataset", required=True, help="dataset id")
    p.add_argument("--layers", required=True, type=parse_layers, help="widths, e.g. 16,16,1")
    p.add_argument("--activation", default="tanh", help="hidden activation (default: tanh)")
    p.add_argument("--output-activation")
    p.add_argument("--loss", help="mse, binary_cross_entropy or cross_entropy")
    p.add_argument("--optimizer", help="sgd or adam")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--momentum", type=float)
    p.add_argument("--epochs", type=int)
    p.add_argument(
        "--batch-size", type=batch_size, default=argparse.SUPPRESS, help="an integer or 'full'"
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--validation-split", type=float)
    p.add_argument("--watch", action="store_true", help="follow the job to its end")
    p.add_argument("--poll-interval", type=float, default=0.5, help=argparse.SUPPRESS)
    p = add(js, "watch", cmd_jobs_watch, "follow a job with a progress bar to its end")
    p.add_argument("id")
    p.add_argument("--poll-interval", type=float, default=0.5)
    p = add(js, "list", cmd_jobs_list, "list jobs, newest first")
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    paged(p)
    add(js, "get", cmd_jobs_get, "show a job").add_argument("id")
    add(js, "cancel", cmd_jobs_cancel, "cancel a job").add_argument("id")

    models = commands.add_parser("models", help="fetch trained models")
    ms = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = add(ms, "get", cmd_models_get, "show a model")
    p.add_argument("id")
    p.add_argument("--weights", metavar="FILE.npz", help="also download its weights")
    paged(add(ms, "list", cmd_models_list, "list models, newest first"))
    p = add(ms, "graph", cmd_models_graph, "download the computational graph (SVG)")
    p.add_argument("id")
    p.add_argument("-o", "--output", help="file to write (default: stdout)")

    p = add(commands, "predict", cmd_predict, "predict with a model on a CSV of features")
    p.add_argument("id", help="model id")
    p.add_argument("file", help="CSV file of features with a header row")
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
