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
            # Perturb the array f reads, element by element in C order (the order of the
            # Jacobian's columns); a reshaped copy of a non-contiguous array would go unseen.
            data = t.data
            if not data.flags.writeable:
                t.data = data.copy()
            try:
                for k, where in enumerate(np.ndindex(t.shape)):
                    orig = t.data[where]
                    t.data[where] = orig + eps
                    plus = _output(f, inputs)
                    t.data[where] = orig - eps
                    minus = _output(f, inputs)
                    t.data[where] = orig
                    numeric = ((plus - minus) / (2 * eps)).reshape(-1)
                    excess = np.abs(jac[:, k] - numeric) - (atol + rtol * np.abs(numeric))
                    bad = int(np.argmax(excess)) if excess.size else 0
                    if excess.size and (excess[bad] > worst[0] or np.isnan(excess[bad])):
                        worst = (
                            np.inf if np.isnan(excess[bad]) else excess[bad],
                            f"input {i} element {where}, output element {bad}: backward "
                            f"{jac[bad, k]!r}, finite difference {numeric[bad]!r}",
                        )
            finally:
                t.data = data
    if worst[0] > 0:
        raise GradcheckError(f"gradcheck failed; worst at {worst[1]}")
    return True
