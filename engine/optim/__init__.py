"""Optimizers with PyTorch's update rules, changing `p.data` in place, and learning-rate
schedulers (`engine.optim.lr_scheduler`) that set an optimizer's `lr`.

Parameters whose gradient was never filled (`p.grad` reset to None and no backward since) are
skipped, as in PyTorch.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from engine.tensor import Tensor

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "lr_scheduler"]


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
    """torch.optim.SGD: `g = grad + weight_decay * p`; with momentum, `buf = g` at the first
    step, then `buf = momentum * buf + (1 - dampening) * g`, and `g = buf` (or, with
    `nesterov`, `g = g + momentum * buf`); `p -= lr * g`."""

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        *,
        dampening: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(params, lr)
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"invalid momentum {momentum} or weight_decay {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.dampening = dampening
        self.nesterov = nesterov
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
                    buf += g if not self.dampening else (1 - self.dampening) * g
                g = g + self.momentum * buf if self.nesterov else buf
            # One scratch array per parameter: no large temporary allocated per step.
            scratch = self.scratch[i]
            if scratch is None or scratch.dtype != np.result_type(g, p.data):
                scratch = self.scratch[i] = np.empty(p.data.shape, np.result_type(g, p.data))
            np.multiply(g, self.lr, out=scratch)
            p.data -= scratch


class Adam(Optimizer):
    """torch.optim.Adam: `g = grad + weight_decay * p` (L2); `m = b1 m + (1 - b1) g`,
    `v = b2 v + (1 - b2) g^2`; `p -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)`.
    With `amsgrad`, v in the denominator is the running maximum of v (as PyTorch's
    implementation keeps it: the maximum of the raw v, then bias-corrected)."""

    decoupled = False

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr)
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0) or eps < 0:
            raise ValueError(f"invalid betas {betas} or eps {eps}")
        if weight_decay < 0:
            raise ValueError(f"invalid weight_decay {weight_decay}")
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.amsgrad = amsgrad
        self.m = [np.zeros_like(p.data) for p in self.params]
        self.v = [np.zeros_like(p.data) for p in self.params]
        self.v_max = [np.zeros_like(p.data) for p in self.params] if amsgrad else []
        self.steps = [0] * len(self.params)

    def step(self) -> None:
        b1, b2 = self.betas
        for i, p in enumerate(self.params):
            g = p._grad
            if g is None:
                continue
            if self.weight_decay:
                if self.decoupled:
                    p.data *= 1 - self.lr * self.weight_decay
                else:
                    g = g + self.weight_decay * p.data
            self.steps[i] += 1
            t = self.steps[i]
            m, v = self.m[i], self.v[i]
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            if self.amsgrad:
                np.maximum(self.v_max[i], v, out=self.v_max[i])
                v = self.v_max[i]
            denom = np.sqrt(v)
            denom /= np.sqrt(1 - b2**t)
            denom += self.eps
            p.data -= (self.lr / (1 - b1**t)) * m / denom


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay, `p *= 1 - lr * weight_decay`
    before the Adam step (whose gradient carries no decay term); weight_decay defaults to
    0.01 as in PyTorch."""

    decoupled = True

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad=amsgrad)


from engine.optim import lr_scheduler  # noqa: E402  (it refers to Optimizer)
