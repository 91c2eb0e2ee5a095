"""A training job's own memory as the rows grow (issue 21: the worker's memory flat).

Trains through `core.training.train` on a generated `core.rows` source shaped as
`bench/scale.py`'s table (20 numbers, a 12-level and a 200-level text column, 2% missing
cells, a binary target; `[64, 32, 1]`, batch 256, Adam, `test_split` 0.1, seed 0) and samples
the training process's RssAnon (anonymous memory, page cache not counted; `/proc/PID/status`)
every 10 ms from this process, in a thread. The rows are generated chunk by chunk (131,072 rows
a chunk, each chunk from its own seed), never held whole, so what grows with them is training's
own per-row state. With `--target-chunks` the targets come as `service.datasets.StoredSource`
gives them now, a chunk at a time (`target_chunks`); without, as one whole float64 array (as
it gave them before, and as a source without `target_chunks` does). Reports the peak
before the first epoch, during the epochs and after the last one (evaluation), and seconds per
epoch (the mean of epochs 2.., the first is warm-up).

    .venv/bin/python bench/worker_memory.py --rows 1000000,5000000
    .venv/bin/python bench/worker_memory.py --rows 1000000 --root /tmp/base   # another checkout

`--root` trains with the `core`/`engine` packages of another folder (e.g. `git archive HEAD`
unpacked there), for a before/after comparison on the same machine. One thread for BLAS, as
bench/scale.py's `--threads 1`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NUMERIC = 20
COLOR_LEVELS = 12
CITY_LEVELS = 200
CHUNK_ROWS = 131_072
MISSING = 0.02
SAMPLE_EVERY = 0.01
MiB = 1 << 20


# -- the child: one training job -------------------------------------------------------------


class Generated:
    """bench/scale.py's table, generated chunk by chunk (the same rows on every pass)."""

    def __init__(self, rows: int, seed: int = 0) -> None:
        import numpy as np

        self.rows = rows
        self.seed = seed
        rng = np.random.default_rng(seed)
        self.scales = np.array([10.0 ** (j % 4 - 1) for j in range(NUMERIC)])
        self.offsets = rng.normal(0, 2, NUMERIC) * self.scales
        self.color_effect = rng.normal(0, 0.8, COLOR_LEVELS)
        self.city_effect = rng.normal(0, 0.6, CITY_LEVELS)
        city_p = 1.0 / np.arange(1, CITY_LEVELS + 1) ** 0.7
        self.city_p = city_p / city_p.sum()

    @property
    def n_rows(self) -> int:
        return self.rows

    def _chunk(self, index: int, features: bool) -> tuple[Any, Any]:
        import numpy as np

        from core.table import CATEGORICAL, Column, Table, numeric_column

        n = min(CHUNK_ROWS, self.rows - index * CHUNK_ROWS)
        rng = np.random.default_rng([self.seed, index])
        z = rng.standard_normal((n, NUMERIC))
        color = rng.integers(0, COLOR_LEVELS, n)
        city = rng.choice(CITY_LEVELS, n, p=self.city_p)
        logit = (
            1.2 * z[:, 0] - 0.9 * z[:, 1] + 0.8 * z[:, 2] * z[:, 3]
            + 0.7 * np.sin(2 * z[:, 4]) + 0.4 * (z[:, 5] ** 2 - 1) + 0.5 * z[:, 6]
            + self.color_effect[color] + self.city_effect[city] - 0.3
        )  # fmt: skip
        target = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float64).reshape(-1, 1)
        if not features:
            return None, target
        values = np.round(z * self.scales + self.offsets, 3)
        values[rng.random((n, NUMERIC)) < MISSING] = np.nan
        columns = [numeric_column(f"x{j:02d}", values[:, j]) for j in range(NUMERIC)]
        for name, codes, levels in (
            ("color", color, [f"color_{i:02d}" for i in range(COLOR_LEVELS)]),
            ("city", city, [f"city_{i:03d}" for i in range(CITY_LEVELS)]),
        ):
            codes = codes.astype(np.int32)
            codes[rng.random(n) < MISSING] = -1
            columns.append(Column(name, CATEGORICAL, codes, levels))
        return Table(columns), target

    def chunks(self) -> Iterator[tuple[Any, Any]]:
        for index in range((self.rows + CHUNK_ROWS - 1) // CHUNK_ROWS):
            yield self._chunk(index, True)

    def targets(self) -> Any:
        import numpy as np

        # as service.datasets.StoredSource: the parts read, then concatenated
        parts = [
            self._chunk(i, False)[1] for i in range((self.rows + CHUNK_ROWS - 1) // CHUNK_ROWS)
        ]
        return np.concatenate(parts)


class GeneratedTargetChunks(Generated):
    """The same rows, with `target_chunks` (`core.rows.target_chunks`): the targets a chunk at a
    time, not one whole array."""

    def target_chunks(self) -> Iterator[Any]:
        for i in range((self.rows + CHUNK_ROWS - 1) // CHUNK_ROWS):
            yield self._chunk(i, False)[1]


def child(rows: int, epochs: int, out: Path, target_chunks: bool) -> None:
    from core.training import train

    marks: dict[str, Any] = {"start": time.monotonic(), "epochs": []}

    def on_epoch(epoch: int, loss: float, val_loss: float | None) -> bool:
        marks["epochs"].append(time.monotonic())
        return True

    result = train(
        (GeneratedTargetChunks if target_chunks else Generated)(rows),
        None,
        {"layers": [64, 32, 1]},
        {"epochs": epochs, "batch_size": 256, "optimizer": "adam", "test_split": 0.1, "seed": 0},
        target_kind="numeric",
        classes=[0, 1],
        on_epoch=on_epoch,
        graph=False,
    )
    marks["end"] = time.monotonic()
    marks["evaluation"] = {
        split: {k: report[k] for k in ("n", "loss", "accuracy", "roc_auc", "log_loss")}
        for split, report in result.evaluation.items()
    }
    marks["loss_history"] = result.loss_history
    out.write_text(json.dumps(marks))


# -- the parent: runs the child, samples its memory ------------------------------------------


def measure(rows: int, epochs: int, root: Path, target_chunks: bool) -> dict[str, Any]:
    # bench/scale.py's reading of /proc (here, not at the top: the child runs with -P, and
    # bench/ is not on its path)
    from scale import rss_anon

    env = dict(os.environ)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(ROOT)])
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "marks.json"
        # -P: bench/ (with its engine.py) not first on the path
        command = [sys.executable, "-P", __file__, "--child", str(rows), "--epochs", str(epochs)]
        samples: list[tuple[float, int]] = []
        if target_chunks:
            command.append("--target-chunks")
        proc = subprocess.Popen([*command, "--out", str(out)], env=env)
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.monotonic(), rss_anon(proc.pid)))
                stop.wait(SAMPLE_EVERY)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        code = proc.wait()
        stop.set()
        thread.join()
        if code:
            raise RuntimeError(f"the training process exited {code}")
        marks = json.loads(out.read_text())

    def peak(start: float, end: float) -> float:
        inside = [v for t, v in samples if start <= t < end]
        return max(inside, default=0) / MiB

    first, last = marks["epochs"][0], marks["epochs"][-1]
    intervals = [b - a for a, b in zip(marks["epochs"], marks["epochs"][1:], strict=False)]
    n_train = marks["evaluation"]["train"]["n"]
    return {
        "rows": rows,
        "root": str(root),
        "target_chunks": target_chunks,
        "peak_mib": max(v for _, v in samples) / MiB,
        "before_first_epoch_mib": peak(marks["start"], first - 1.0),
        "epochs_mib": peak(first, last),
        "after_last_epoch_mib": peak(last, marks["end"] + 1),
        "s_per_epoch": sum(intervals) / len(intervals) if intervals else None,
        "s_per_epoch_per_million_train_rows": (
            sum(intervals) / len(intervals) / (n_train / 1e6) if intervals else None
        ),
        "setup_s": marks["epochs"][0] - marks["start"],
        "evaluation_s": marks["end"] - last,
        "evaluation": marks["evaluation"],
        "loss_history": marks["loss_history"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1000000,5000000", help="comma-separated row counts")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to train with")
    parser.add_argument("--json", type=Path, help="write the reports here too")
    parser.add_argument(
        "--target-chunks",
        action="store_true",
        help="the source gives its targets a chunk at a time (`target_chunks`), not as one array",
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.epochs, args.out, args.target_chunks)
        return
    reports = []
    for rows in (int(r) for r in args.rows.split(",")):
        report = measure(rows, args.epochs, args.root.resolve(), args.target_chunks)
        reports.append(report)
        speed = "s/epoch not measured (one epoch)"
        if report["s_per_epoch"] is not None:
            speed = (
                f"{report['s_per_epoch']:.2f} s/epoch "
                f"({report['s_per_epoch_per_million_train_rows']:.2f} per M training rows)"
            )
        print(
            f"{rows:>11,} rows: peak RssAnon {report['peak_mib']:.0f} MiB (before the first "
            f"epoch {report['before_first_epoch_mib']:.0f}, epochs {report['epochs_mib']:.0f}, "
            f"after {report['after_last_epoch_mib']:.0f}); {speed}; setup "
            f"{report['setup_s']:.1f} s, evaluation {report['evaluation_s']:.1f} s; test AUC "
            f"{report['evaluation']['test']['roc_auc']:.4f}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))


if __name__ == "__main__":
    main()
