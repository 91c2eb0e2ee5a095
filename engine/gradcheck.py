"""Finite-difference check of backward (the semantics of `torch.autograd.gradcheck`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from engine.tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    """Backward disagrees with central finite differences."""


def _output(f: Callable[..., Any], inputs: tuple[Any, ...]) -> np.ndarray:
    out = f(*inputs)
    return np.array(out.data if isinstance(out, Tensor) else out, dtype=np.float64)


def gradcheck(
    f: Callable[..., Tensor],
    *inputs: Any,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
) -> bool:
    """Compare the full Jacobian of `f` at `inputs` from backward with central differences
    over every element of every float64 input that requires grad. Returns True, or raises
    GradcheckError naming the worst element. Inputs' grads are left as they were."""
    checked = [(i, t) for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input Tensor requires grad")
    for i, t in checked:
        if t.data.dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} is {t.data.dtype}; use float64")
    saved = [t._grad for _, t in checked]
    out = f(*inputs)
    if not isinstance(out, Tensor) or not out.requires_grad:
        raise GradcheckError("gradcheck: f's output does not depend on any input")

    analytic = [np.zeros((out.size, t.size)) for _, t in checked]
    for j in range(out.size):
        for _, t in checked:
            t._grad = None
        seed = np.zeros(out.size, dtype=out.dtype)
        seed[j] = 1
        out.backward(seed.reshape(out.shape))
        for col, (_, t) in zip(analytic, checked, strict=True):
            if t._grad is not None:
                col[j] = t._grad.reshape(-1)
    for (_, t), g in zip(checked, saved, strict=True):
        t._grad = g

    worst = (-np.inf, "")
    with no_grad():
        for (i, t), jac in zip(checked, analytic, strict=True):
            flat = t.data.reshape(-1)
            for k in range(t.size):
                orig = flat[k]
                flat[k] = orig + eps
                plus = _output(f, inputs)
                flat[k] = orig - eps
                minus = _output(f, inputs)
                flat[k] = orig
                numeric = ((plus - minus) / (2 * eps)).reshape(-1)
                excess = np.abs(jac[:, k] - numeric) - (atol + rtol * np.abs(numeric))
                bad = int(np.argmax(excess)) if excess.size else 0
                if excess.size and (excess[bad] > worst[0] or np.isnan(excess[bad])):
                    where = np.unravel_index(k, t.shape)
                    worst = (
                        np.inf if np.isnan(excess[bad]) else excess[bad],
                        f"input {i} element {tuple(int(w) for w in where)}, output element "
                        f"{bad}: backward {jac[bad, k]!r}, finite difference {numeric[bad]!r}",
                    )
    if worst[0] > 0:
        raise GradcheckError(f"gradcheck failed; worst at {worst[1]}")
    return True
