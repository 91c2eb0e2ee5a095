"""Optimizers with PyTorch's update rules, changing `p.data` in place.

Parameters whose gradient was never filled (`p.grad` reset to None and no backward since) are
skipped, as in PyTorch.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from engine.tensor import Tensor


class Optimizer:
    def __init__(self, params: Iterable[Tensor], lr: float) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}")
        self.lr = lr

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """`buf = momentum * buf + (g + weight_decay * p)` (buf = g at the first step);
    `p -= lr * buf`."""

    def __init__(
        self, params: Iterable[Tensor], lr: float, momentum: float = 0.0, weight_decay: float = 0.0
    ) -> None:
        super().__init__(params, lr)
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.buffers: list[np.ndarray | None] = [None] * len(self.params)
        self.scratch: list[np.ndarray | None] = [None] * len(self.params)

    def step(self) -> None:
        for i, p in enumerate(self.params):
            g = p._grad
            if g is None:
                continue
            if self.weight_decay:
                g = g + self.weight_decay * p.data
            if self.momentum:
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = np.array(g, dtype=p.data.dtype)
                else:
                    buf *= self.momentum
                    buf += g
                g = buf
            # One scratch array per parameter: no large temporary allocated per step.
            scratch = self.scratch[i]
            if scratch is None or scratch.dtype != np.result_type(g, p.data):
                scratch = self.scratch[i] = np.empty(p.data.shape, np.result_type(g, p.data))
            np.multiply(g, self.lr, out=scratch)
            p.data -= scratch


class Adam(Optimizer):
    """Adam (Kingma and Ba) with bias correction; `weight_decay` adds `wd * p` to the gradient
    (L2, as `torch.optim.Adam`)."""

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr)
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.m = [np.zeros_like(p.data) for p in self.params]
        self.v = [np.zeros_like(p.data) for p in self.params]
        self.steps = [0] * len(self.params)

    def step(self) -> None:
        b1, b2 = self.betas
        for i, p in enumerate(self.params):
            g = p._grad
            if g is None:
                continue
            if self.weight_decay:
                g = g + self.weight_decay * p.data
            self.steps[i] += 1
            t = self.steps[i]
            m, v = self.m[i], self.v[i]
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            denom = np.sqrt(v / (1 - b2**t))
            denom += self.eps
            p.data -= (self.lr / (1 - b1**t)) * m / denom
