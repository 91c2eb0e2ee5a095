"""Benchmark: train the same MLPs with `engine` and with PyTorch CPU; print per-step times.

    pip install -r bench/requirements.txt
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/engine.py [--steps N] [--tiny]

Cases: (1) the article's example, (2) two half-moons (1024 points, [2, 64, 64, 1], tanh, mse,
full batch), (3) 784 features, batch 256, [784, 256, 128, 10], relu, cross_entropy. A step is
zero_grad + forward + loss + backward + SGD step. Times are medians over `--steps` steps after a
warm-up. PyTorch runs at 1 and 2 threads and at its default thread count; the ratio is the
engine's time over PyTorch's best of those; the engine runs with NumPy's default BLAS threads
(both counts are printed). The matmul floor is the step's GEMM FLOPs divided by NumPy's
throughput measured on those same GEMMs. Memory: RSS before and after 1,000 engine steps with the
cyclic garbage collector disabled (flat means graphs are freed by reference counting alone).
Without torch (or with --no-torch) only the engine side is measured, and the output says so.
`--tiny` shrinks the data and the step counts so that the whole script runs in seconds (the
smoke test in tests/bench runs it so); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import engine
from engine import nn, optim


def moons(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half-circles with a little noise; labels -1 and 1."""
    t = rng.uniform(0, np.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(t), 1 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    X = np.stack([x, y], axis=1) + rng.normal(0, 0.1, (n, 2))
    return X, np.where(upper, 1.0, -1.0)[:, None]


def median_time(step: Callable[[], Any], steps: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def engine_step(model: nn.MLP, X: np.ndarray, y: np.ndarray, loss_name: str, lr: float):
    opt = optim.SGD(model.parameters(), lr=lr)
    x = engine.Tensor(X, requires_grad=False)
    loss_fn = {"mse": nn.mse_loss, "ce": nn.cross_entropy, "sse": None}[loss_name]

    def step() -> float:
        opt.zero_grad()
        out = model(x)
        loss = ((out - y) ** 2).sum() if loss_fn is None else loss_fn(out, y)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def torch_step(model: nn.MLP, X: np.ndarray, y: np.ndarray, loss_name: str, lr: float, act: str):
    import torch

    state = model.state_dict()
    layers: list[torch.nn.Module] = []
    n = len(model.layers)
    for i in range(n):
        w = state[f"layers.{i}.weight"]
        lin = torch.nn.Linear(w.shape[1], w.shape[0], dtype=torch.from_numpy(w).dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(state[f"layers.{i}.bias"]))
        layers.append(lin)
        if i < n - 1:
            layers.append({"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[act]())
    tmodel = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(tmodel.parameters(), lr=lr)
    x = torch.from_numpy(X)
    t = torch.from_numpy(y)

    def step() -> float:
        opt.zero_grad()
        out = tmodel(x)
        if loss_name == "ce":
            loss = torch.nn.functional.cross_entropy(out, t)
        elif loss_name == "mse":
            loss = torch.nn.functional.mse_loss(out, t)
        else:
            loss = ((out - t) ** 2).sum()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def gemm_floor(sizes: list[int], batch: int, dtype: Any, repeats: int = 30) -> tuple[float, float]:
    """(FLOPs per step, seconds per step at NumPy's GEMM throughput on the step's GEMMs)."""
    rng = np.random.default_rng(0)
    flops = 0.0
    gemms = []
    for i, (nin, nout) in enumerate(itertools.pairwise(sizes)):
        x = rng.normal(size=(batch, nin)).astype(dtype)
        w = rng.normal(size=(nout, nin)).astype(dtype)
        g = rng.normal(size=(batch, nout)).astype(dtype)
        gemms.append(lambda x=x, w=w: x @ w.T)  # forward
        gemms.append(lambda x=x, g=g: g.T @ x)  # weight gradient
        flops += 4.0 * batch * nin * nout
        if i > 0:  # the input's gradient (the data need none)
            gemms.append(lambda w=w, g=g: g @ w)
            flops += 2.0 * batch * nin * nout
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for f in gemms:
            f()
        best = min(best, time.perf_counter() - t0)
    return flops, best


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def memory_check(step: Callable[[], Any], steps: int = 1000) -> tuple[float, float, int]:
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            step()
        before = rss_mb()
        for _ in range(steps):
            step()
        after = rss_mb()
    finally:
        gc.enable()
    return before, after, gc.collect()


def run_case(name: str, sizes, act, loss, X, y, dtype, lr, steps, torch_threads) -> dict:
    X = X.astype(dtype)
    y = y.astype(dtype) if loss != "ce" else y
    model = nn.MLP(sizes[0], sizes[1:], activation=act, seed=0, dtype=dtype)
    row = {"case": name, "dtype": np.dtype(dtype).name}
    if torch_threads:
        import torch

        for threads in torch_threads:
            torch.set_num_threads(threads)
            tstep = torch_step(model, X, y, loss, lr, act)
            row[f"torch{threads}"] = median_time(tstep, steps)
        row["torch"] = min(row[f"torch{t}"] for t in torch_threads)
    row["engine"] = median_time(engine_step(model, X, y, loss, lr), steps)
    row["flops"], row["floor"] = gemm_floor(sizes, X.shape[0], dtype)
    return row


def ms(seconds: float | None, width: int) -> str:
    return f"{seconds * 1e3:{width}.3f}" if seconds is not None else f"{'-':>{width}}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per measurement")
    parser.add_argument("--memory-steps", type=int, default=1000)
    parser.add_argument("--no-torch", action="store_true", help="measure the engine only")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny data and step counts (a smoke run)"
    )
    args = parser.parse_args()
    if args.tiny:
        args.steps, args.memory_steps = min(args.steps, 3), min(args.memory_steps, 20)
    torch_threads: tuple[int, ...] = ()
    if args.no_torch:
        print("--no-torch: measuring the engine only (no PyTorch times, no ratios)")
    else:
        try:
            import torch

            default = torch.get_num_threads()
            torch_threads = tuple(sorted({1, 2, default}))
            print(f"torch {torch.__version__} (threads {torch_threads}), numpy {np.__version__}")
        except ImportError:
            print(
                "torch is not installed (pip install -r bench/requirements.txt): measuring the "
                "engine only (no PyTorch times, no ratios)"
            )
    print(f"engine: NumPy with its default BLAS threads; {os.cpu_count()} CPUs")

    rng = np.random.default_rng(0)
    n_moons, batch = (64, 16) if args.tiny else (1024, 256)
    Xa = np.array([[2, 3, -1], [3, -1, 0.5], [0.5, 1, 1], [1, 1, -1]], dtype=np.float64)
    ya = np.array([[1.0], [-1.0], [-1.0], [1.0]])
    Xm, ym = moons(n_moons, rng)
    Xd = rng.normal(size=(batch, 784))
    yd = rng.integers(0, 10, batch)
    digits = f"(3) 784x{batch} [784,256,128,10]"
    cases = [
        ("(1) article [3,4,4,1]", [3, 4, 4, 1], "tanh", "sse", Xa, ya, np.float64, 0.05),
        (f"(2) moons{n_moons} [2,64,64,1]", [2, 64, 64, 1], "tanh", "mse", Xm, ym, np.float64, 0.1),
        (f"(2) moons{n_moons} [2,64,64,1]", [2, 64, 64, 1], "tanh", "mse", Xm, ym, np.float32, 0.1),
        (digits, [784, 256, 128, 10], "relu", "ce", Xd, yd, np.float32, 0.01),
        (digits, [784, 256, 128, 10], "relu", "ce", Xd, yd, np.float64, 0.01),
    ]
    header = f"{'case':34} {'dtype':8} {'engine ms':>9} {'torch ms':>8} {'ratio':>6}"
    print(header + f" {'floor ms':>8} {'GFLOP/s':>8}  per thread count")
    for case in cases:
        r = run_case(*case, steps=args.steps, torch_threads=torch_threads)
        torch_best = r.get("torch")
        ratio = f"{r['engine'] / torch_best:6.2f}" if torch_best else f"{'-':>6}"
        threads = " ".join(f"torch{t}={r[f'torch{t}'] * 1e3:.3f}" for t in torch_threads)
        print(
            f"{r['case']:34} {r['dtype']:8} {ms(r['engine'], 9)} {ms(torch_best, 8)} {ratio} "
            f"{ms(r['floor'], 8)} {r['flops'] / r['floor'] / 1e9:8.1f}  {threads}",
            flush=True,
        )
    if torch_threads:
        print("ratio = engine / PyTorch's best; targets: (2) <= 0.8, (3) <= 1.0 in both dtypes")

    for name, sizes, act, loss, X, y, dtype, lr in (cases[1], cases[3]):
        model = nn.MLP(sizes[0], sizes[1:], activation=act, seed=0, dtype=dtype)
        Xc, yc = X.astype(dtype), (y.astype(dtype) if loss != "ce" else y)
        before, after, cycles = memory_check(
            engine_step(model, Xc, yc, loss, lr), args.memory_steps
        )
        print(
            f"memory {name} {np.dtype(dtype).name}: RSS {before:.1f} MB -> {after:.1f} MB over "
            f"{args.memory_steps} steps with gc disabled; {cycles} objects left for the cyclic gc"
        )


if __name__ == "__main__":
    main()
