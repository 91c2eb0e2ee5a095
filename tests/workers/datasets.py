"""Small seeded datasets shared by the worker and end-to-end tests."""

from __future__ import annotations

import numpy as np


def moons(n: int = 200, noise: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles: features (n, 2), integer labels 0/1 (n,)."""
    rng = np.random.default_rng(seed)
    n_out = n // 2
    n_in = n - n_out
    t_out = np.linspace(0, np.pi, n_out)
    t_in = np.linspace(0, np.pi, n_in)
    outer = np.stack([np.cos(t_out), np.sin(t_out)], axis=1)
    inner = np.stack([1 - np.cos(t_in), 1 - np.sin(t_in) - 0.5], axis=1)
    x = np.concatenate([outer, inner]) + rng.normal(scale=noise, size=(n, 2))
    y = np.concatenate([np.zeros(n_out, dtype=np.int64), np.ones(n_in, dtype=np.int64)])
    order = rng.permutation(n)
    return x[order], y[order]


def blobs(
    n: int = 150, classes: int = 3, seed: int = 0, spread: float = 0.6
) -> tuple[np.ndarray, np.ndarray]:
    """`classes` Gaussian blobs around the unit circle: features (n, 2), labels 0..k-1 (n,)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    angles = 2 * np.pi * y / classes
    centres = 3 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    x = centres + rng.normal(scale=spread, size=(n, 2))
    return x, y.astype(np.int64)


def regression(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """y = sin(x0) + 0.5 x1 (one column), features (n, 2)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=(n, 2))
    y = (np.sin(x[:, 0]) + 0.5 * x[:, 1]).reshape(-1, 1)
    return x, y
