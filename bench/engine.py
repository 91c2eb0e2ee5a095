"""Benchmark: train the same MLPs with `engine` and with PyTorch CPU; print per-step times.

    pip install -r bench/requirements.txt
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/engine.py [--steps N]

Cases: (1) the article's example, (2) two half-moons (1024 points, [2, 64, 64, 1], tanh, mse,
full batch), (3) 784 features, batch 256, [784, 256, 128, 10], relu, cross_entropy. A step is
zero_grad + forward + loss + backward + SGD step. PyTorch runs at 1 and 2 threads, the engine
with NumPy's default BLAS threads. The matmul floor is the step's GEMM FLOPs divided by NumPy's
throughput measured on those same GEMMs. Memory: RSS before and after 1,000 engine steps with the
cyclic garbage collector disabled (flat means graphs are freed by reference counting alone).
"""

from __future__ import annotations

import argparse
import gc
import itertools
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


def run_case(name: str, sizes, act, loss, X, y, dtype, lr, steps, torch_ok) -> dict:
    X = X.astype(dtype)
    y = y.astype(dtype) if loss != "ce" else y
    model = nn.MLP(sizes[0], sizes[1:], activation=act, seed=0, dtype=dtype)
    row = {"case": name, "dtype": np.dtype(dtype).name}
    if torch_ok:
        import torch

        for threads in (1, 2):
            torch.set_num_threads(threads)
            tstep = torch_step(model, X, y, loss, lr, act)
            row[f"torch{threads}"] = median_time(tstep, steps)
    row["engine"] = median_time(engine_step(model, X, y, loss, lr), steps)
    row["flops"], row["floor"] = gemm_floor(sizes, X.shape[0], dtype)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per measurement")
    parser.add_argument("--memory-steps", type=int, default=1000)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    torch_ok = not args.no_torch
    if torch_ok:
        try:
            import torch

            print(f"torch {torch.__version__}, numpy {np.__version__}")
        except ImportError:
            print("torch is not installed (pip install -r bench/requirements.txt): engine only")
            torch_ok = False

    rng = np.random.default_rng(0)
    Xa = np.array([[2, 3, -1], [3, -1, 0.5], [0.5, 1, 1], [1, 1, -1]], dtype=np.float64)
    ya = np.array([[1.0], [-1.0], [-1.0], [1.0]])
    Xm, ym = moons(1024, rng)
    Xd = rng.normal(size=(256, 784))
    yd = rng.integers(0, 10, 256)
    cases = [
        ("(1) article [3,4,4,1]", [3, 4, 4, 1], "tanh", "sse", Xa, ya, np.float64, 0.05),
        ("(2) moons [2,64,64,1]", [2, 64, 64, 1], "tanh", "mse", Xm, ym, np.float64, 0.1),
        ("(2) moons [2,64,64,1]", [2, 64, 64, 1], "tanh", "mse", Xm, ym, np.float32, 0.1),
        (
            "(3) 784x256 [784,256,128,10]",
            [784, 256, 128, 10],
            "relu",
            "ce",
            Xd,
            yd,
            np.float32,
            0.01,
        ),
        (
            "(3) 784x256 [784,256,128,10]",
            [784, 256, 128, 10],
            "relu",
            "ce",
            Xd,
            yd,
            np.float64,
            0.01,
        ),
    ]
    header = f"{'case':31} {'dtype':8} {'engine ms':>9} {'torch1':>8} {'torch2':>8} {'ratio':>6}"
    print(header + f" {'floor ms':>8} {'GFLOP/s':>8}")
    for case in cases:
        r = run_case(*case, steps=args.steps, torch_ok=torch_ok)
        best = min(r.get("torch1", np.nan), r.get("torch2", np.nan))
        print(
            f"{r['case']:31} {r['dtype']:8} {r['engine'] * 1e3:9.3f} "
            f"{r.get('torch1', np.nan) * 1e3:8.3f} {r.get('torch2', np.nan) * 1e3:8.3f} "
            f"{r['engine'] / best:6.2f} {r['floor'] * 1e3:8.3f} "
            f"{r['flops'] / r['floor'] / 1e9:8.1f}",
            flush=True,
        )
    print("ratio = engine / PyTorch's best; targets: (2) <= 2.0, (3) <= 1.2")

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
