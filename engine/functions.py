"""The ops: each primitive computes its output and, right below, the closure sending the gradient
back to its inputs (one gradient per input, None for an input that needs none). Closures may
return gradients of the broadcast shape: `Tensor.backward` reduces them with `unbroadcast`.
Closures never modify the incoming gradient `g` in place.
"""

from __future__ import annotations

import builtins
import warnings
from typing import Any

import numpy as np
from numpy.lib.array_utils import normalize_axis_tuple

from engine.tensor import Tensor, _result

Axis = int | tuple[int, ...] | None


def as_tensor(x: Any, like: Tensor | None = None, op: str = "op") -> Tensor:
    """`x` as a Tensor: Tensors pass through; Python numbers take `like`'s dtype (so float32
    stays float32); ndarrays, NumPy scalars and lists become constants (ints as float64)."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, bool | int | float):
        dtype = like.data.dtype if like is not None else np.float64
        return Tensor(np.asarray(x, dtype=dtype), requires_grad=False)
    if isinstance(x, np.ndarray | np.number | np.bool_ | list | tuple):
        return Tensor(x, requires_grad=False)
    raise TypeError(
        f"unsupported operand for {op}: expected a Tensor, ndarray, list or Python number, "
        f"got {type(x).__name__} ({x!r:.40})"
    )


def _pair(a: Any, b: Any, op: str) -> tuple[Tensor, Tensor]:
    like = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else None
    return as_tensor(a, like, op), as_tensor(b, like, op)


# --- elementwise binary ------------------------------------------------------------------------


def add(a: Any, b: Any) -> Tensor:
    a, b = _pair(a, b, "+")

    def backward(g: np.ndarray) -> tuple:
        return g, g

    return _result(a.data + b.data, (a, b), backward, "+")


def sub(a: Any, b: Any) -> Tensor:
    a, b = _pair(a, b, "-")

    def backward(g: np.ndarray) -> tuple:
        return g, (-g if b.requires_grad else None)

    return _result(a.data - b.data, (a, b), backward, "-")


def mul(a: Any, b: Any) -> Tensor:
    a, b = _pair(a, b, "*")
    ad, bd = a.data, b.data

    def backward(g: np.ndarray) -> tuple:
        return (g * bd if a.requires_grad else None), (g * ad if b.requires_grad else None)

    return _result(ad * bd, (a, b), backward, "*")


def div(a: Any, b: Any) -> Tensor:
    a, b = _pair(a, b, "/")
    bd = b.data
    out = a.data / bd

    def backward(g: np.ndarray) -> tuple:
        ga = g / bd
        return ga, (-ga * out if b.requires_grad else None)

    return _result(out, (a, b), backward, "/")


def pow(a: Any, b: Any) -> Tensor:
    """`a ** b`; d/db is `out * log(a)`, taken as 0 where a == 0 (as PyTorch)."""
    if isinstance(a, Tensor) and isinstance(b, int | float) and not isinstance(b, bool):
        return _pow_scalar(a, b)
    a, b = _pair(a, b, "**")
    ad, bd = a.data, b.data
    out = ad**bd

    def backward(g: np.ndarray) -> tuple:
        with np.errstate(divide="ignore", invalid="ignore"):
            ga = g * bd * ad ** (bd - 1) if a.requires_grad else None
            gb = g * np.where(ad == 0, 0, out * np.log(np.where(ad == 0, 1, ad)))
        return ga, (gb if b.requires_grad else None)

    return _result(out, (a, b), backward, "**")


def _pow_scalar(a: Tensor, e: float) -> Tensor:
    ad = a.data

    def backward(g: np.ndarray) -> tuple:
        if e == 2:
            return (g * (2 * ad),)
        return (g * (e * ad ** (e - 1)),)

    return _result(ad**e, (a,), backward, f"**{e:g}")


def neg(a: Tensor) -> Tensor:
    def backward(g: np.ndarray) -> tuple:
        return (-g,)

    return _result(-a.data, (a,), backward, "neg")


def matmul(a: Any, b: Any) -> Tensor:
    """`a @ b` with `np.matmul`'s rules (1-D, 2-D, batched with broadcast batch axes)."""
    a, b = _pair(a, b, "@")
    ad, bd = a.data, b.data

    def backward(g: np.ndarray) -> tuple:
        if ad.ndim == 2 and bd.ndim == 2:
            ga = g @ bd.T if a.requires_grad else None
            gb = ad.T @ g if b.requires_grad else None
            return ga, gb
        # Promote 1-D operands to matrices, as np.matmul does, and drop the added axes after.
        a2 = ad[None, :] if ad.ndim == 1 else ad
        b2 = bd[:, None] if bd.ndim == 1 else bd
        g2 = g[..., None] if bd.ndim == 1 else g
        g2 = g2[..., None, :] if ad.ndim == 1 else g2
        ga = gb = None
        if a.requires_grad:
            ga = g2 @ np.swapaxes(b2, -1, -2)
            ga = ga[..., 0, :] if ad.ndim == 1 else ga
        if b.requires_grad:
            gb = np.swapaxes(a2, -1, -2) @ g2
            gb = gb[..., 0] if bd.ndim == 1 else gb
        return ga, gb

    return _result(ad @ bd, (a, b), backward, "@")


def linear(x: Any, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`x @ weight.T + bias` as one op (weight is (nout, nin), as in PyTorch)."""
    x = as_tensor(x, weight, "linear")
    xd, wd = x.data, weight.data
    out = xd @ wd.T
    if bias is not None:
        out += bias.data  # `out` is fresh from the matmul: add in place

    def backward(g: np.ndarray) -> tuple:
        gx = None
        if x.requires_grad:
            # With one output unit the GEMM is an outer product, faster as a broadcast.
            gx = g * wd[0] if wd.shape[0] == 1 else g @ wd
        gw = None
        if weight.requires_grad:
            if xd.ndim == 1:
                gw = np.outer(g, xd)
            else:
                gw = g.reshape(-1, g.shape[-1]).T @ xd.reshape(-1, xd.shape[-1])
        if bias is None:
            return gx, gw
        gb = None
        if bias.requires_grad:
            gb = g.sum(axis=tuple(range(g.ndim - 1))) if g.ndim > 1 else g
        return gx, gw, gb

    prev = (x, weight) if bias is None else (x, weight, bias)
    return _result(out, prev, backward, "linear")


# --- elementwise unary ------------------------------------------------------------------------


def exp(a: Tensor) -> Tensor:
    out = np.exp(a.data)

    def backward(g: np.ndarray) -> tuple:
        return (g * out,)

    return _result(out, (a,), backward, "exp")


def log(a: Tensor) -> Tensor:
    ad = a.data

    def backward(g: np.ndarray) -> tuple:
        return (g / ad,)

    return _result(np.log(ad), (a,), backward, "log")


def sqrt(a: Tensor) -> Tensor:
    out = np.sqrt(a.data)

    def backward(g: np.ndarray) -> tuple:
        return (g * 0.5 / out,)

    return _result(out, (a,), backward, "sqrt")


def _tanh(x: np.ndarray) -> np.ndarray:
    if x.dtype != np.float64 or x.size < 1024:
        return np.tanh(x)
    # NumPy's float64 tanh is scalar code; 2 / (1 + exp(-2x)) - 1 uses its SIMD exp.
    t = np.multiply(x, -2.0)
    with np.errstate(over="ignore"):
        np.exp(t, out=t)
    t += 1
    np.divide(2.0, t, out=t)
    t -= 1
    return t


def tanh(a: Tensor) -> Tensor:
    out = _tanh(a.data)

    def backward(g: np.ndarray) -> tuple:
        ga = out * out
        ga = np.subtract(1, ga, out=ga) if ga.ndim else 1 - ga
        ga *= g
        return (ga,)

    return _result(out, (a,), backward, "tanh")


def sigmoid(a: Tensor) -> Tensor:
    # 1 / (1 + exp(-x)) written through tanh: no overflow for large |x|.
    out = np.tanh(a.data * 0.5)
    out += 1
    out *= 0.5

    def backward(g: np.ndarray) -> tuple:
        ga = 1 - out
        ga *= out
        ga *= g
        return (ga,)

    return _result(out, (a,), backward, "sigmoid")


def relu(a: Tensor) -> Tensor:
    out = np.maximum(a.data, 0)

    def backward(g: np.ndarray) -> tuple:
        return (g * (out > 0),)

    return _result(out, (a,), backward, "relu")


# --- reductions -------------------------------------------------------------------------------


def _expand(g: np.ndarray, shape: tuple[int, ...], axis: Axis, keepdims: bool) -> np.ndarray:
    """Broadcast a reduced gradient back over the reduced axes (a read-only view)."""
    if axis is not None and not keepdims:
        g = np.expand_dims(g, normalize_axis_tuple(axis, len(shape)))
    elif axis is None and not keepdims:
        g = np.reshape(g, (1,) * len(shape))
    return np.broadcast_to(g, shape)


def sum(a: Tensor, axis: Axis = None, keepdims: bool = False) -> Tensor:
    shape = a.data.shape

    def backward(g: np.ndarray) -> tuple:
        return (_expand(g, shape, axis, keepdims),)

    return _result(a.data.sum(axis=axis, keepdims=keepdims), (a,), backward, "sum")


def mean(a: Tensor, axis: Axis = None, keepdims: bool = False) -> Tensor:
    shape = a.data.shape
    out = a.data.mean(axis=axis, keepdims=keepdims)
    count = a.data.size // builtins.max(np.asarray(out).size, 1) if a.data.size else 1

    def backward(g: np.ndarray) -> tuple:
        return (_expand(g / count, shape, axis, keepdims),)

    return _result(out, (a,), backward, "mean")


def max(a: Tensor, axis: Axis = None, keepdims: bool = False) -> Tensor:
    """The maximum; ties share the gradient equally."""
    ad = a.data
    top = ad.max(axis=axis, keepdims=True)

    def backward(g: np.ndarray) -> tuple:
        mask = (ad == top).astype(ad.dtype)
        mask /= mask.sum(axis=axis, keepdims=True)
        mask *= _expand(g, ad.shape, axis, keepdims)
        return (mask,)

    out = top if keepdims else (top.reshape(()) if axis is None else np.squeeze(top, axis))
    return _result(out, (a,), backward, "max")


def logsumexp(a: Tensor, axis: Axis = None, keepdims: bool = False) -> Tensor:
    """log(sum(exp(a))), shifted by the maximum so that large logits stay finite."""
    ad = a.data
    top = ad.max(axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0)
    e = np.exp(ad - top)
    total = e.sum(axis=axis, keepdims=True)
    out = np.log(total) + top

    def backward(g: np.ndarray) -> tuple:
        ga = e / total
        ga *= _expand(g, ad.shape, axis, keepdims)
        return (ga,)

    if not keepdims:
        out = out.reshape(()) if axis is None else np.squeeze(out, axis)
    return _result(out, (a,), backward, "logsumexp")


def log_softmax(a: Tensor, axis: int = -1) -> Tensor:
    return a - logsumexp(a, axis=axis, keepdims=True)


def softmax(a: Tensor, axis: int = -1) -> Tensor:
    return exp(log_softmax(a, axis))


# --- shape ------------------------------------------------------------------------------------


def reshape(a: Tensor, shape: tuple[int, ...]) -> Tensor:
    in_shape = a.data.shape

    def backward(g: np.ndarray) -> tuple:
        return (g.reshape(in_shape),)

    return _result(a.data.reshape(shape), (a,), backward, "reshape")


def transpose(a: Tensor, axes: tuple[int, ...] | None = None) -> Tensor:
    inverse = None if axes is None else tuple(np.argsort(axes))

    def backward(g: np.ndarray) -> tuple:
        return (g.transpose(inverse),)

    return _result(a.data.transpose(axes), (a,), backward, "T")


def _is_integer_array(index: Any) -> bool:
    if isinstance(index, tuple):
        return builtins.any(_is_integer_array(i) for i in index)
    if isinstance(index, np.ndarray | list):
        return np.asarray(index).dtype.kind in "iu"
    return False


def getitem(a: Tensor, index: Any) -> Tensor:
    """`a[index]`: ints, slices, None, Ellipsis, boolean masks and integer arrays."""
    if isinstance(index, Tensor):
        index = index.data.astype(np.intp) if index.data.dtype.kind == "f" else index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    ad = a.data
    accumulate = _is_integer_array(index)

    def backward(g: np.ndarray) -> tuple:
        ga = np.zeros_like(ad)
        if accumulate:
            np.add.at(ga, index, g)  # repeated indices add up
        else:
            ga[index] = g
        return (ga,)

    return _result(ad[index], (a,), backward, "[]")


def concat(tensors: list[Any], axis: int = 0) -> Tensor:
    """Join tensors along an existing axis."""
    ts = tuple(as_tensor(t, op="concat") for t in tensors)
    ends = np.cumsum([t.data.shape[axis] for t in ts])[:-1]

    def backward(g: np.ndarray) -> tuple:
        return tuple(np.split(g, ends, axis=axis))

    return _result(np.concatenate([t.data for t in ts], axis=axis), ts, backward, "concat")


def stack(tensors: list[Any], axis: int = 0) -> Tensor:
    """Join tensors along a new axis."""
    ts = tuple(as_tensor(t, op="stack") for t in tensors)

    def backward(g: np.ndarray) -> tuple:
        return tuple(np.moveaxis(g, axis, 0))

    return _result(np.stack([t.data for t in ts], axis=axis), ts, backward, "stack")


# --- losses (means over all elements, as PyTorch's default reduction) -------------------------


def _target(target: Any, like: Tensor, op: str) -> Tensor:
    if isinstance(target, Tensor):
        return target
    t = as_tensor(target, like, op)
    return Tensor(t.data.astype(like.data.dtype, copy=False), requires_grad=False)


def _check_shapes(pred: Tensor, target: Tensor, op: str) -> None:
    if pred.data.shape != target.data.shape:
        shape = np.broadcast_shapes(pred.data.shape, target.data.shape)
        if shape != pred.data.shape:
            warnings.warn(
                f"{op}: target shape {target.data.shape} broadcasts prediction shape "
                f"{pred.data.shape} to {shape}; this is probably not intended",
                stacklevel=3,
            )


def mse_loss(pred: Tensor, target: Any) -> Tensor:
    """mean((pred - target) ** 2)."""
    pred = as_tensor(pred, op="mse_loss")
    target = _target(target, pred, "mse_loss")
    _check_shapes(pred, target, "mse_loss")
    diff = pred.data - target.data
    n = diff.size

    def backward(g: np.ndarray) -> tuple:
        gp = diff * (g * (2 / n))
        return gp, (-gp if target.requires_grad else None)

    return _result(np.mean(diff * diff), (pred, target), backward, "mse_loss")


def binary_cross_entropy_with_logits(logits: Tensor, target: Any) -> Tensor:
    """mean(-y log(sigmoid(x)) - (1 - y) log(1 - sigmoid(x))), stable for any logits."""
    logits = as_tensor(logits, op="binary_cross_entropy_with_logits")
    target = _target(target, logits, "binary_cross_entropy_with_logits")
    _check_shapes(logits, target, "binary_cross_entropy_with_logits")
    x, y = logits.data, target.data
    terms = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
    n = terms.size

    def backward(g: np.ndarray) -> tuple:
        scale = g * (1 / n)
        sig = np.tanh(x * 0.5)
        sig += 1
        sig *= 0.5
        gx = (sig - y) * scale if logits.requires_grad else None
        gy = np.broadcast_to(x * -scale, terms.shape) if target.requires_grad else None
        return gx, gy

    return _result(np.mean(terms), (logits, target), backward, "bce_with_logits")


def cross_entropy(logits: Tensor, target: Any) -> Tensor:
    """Mean cross entropy of logits `(N, C)` (or `(C,)`) against class indices `(N,)` (or a
    single index); a floating target of the logits' shape is read as class probabilities."""
    logits = as_tensor(logits, op="cross_entropy")
    if isinstance(target, Tensor) or np.asarray(target).dtype.kind == "f":
        probs = _target(target, logits, "cross_entropy")
        if probs.data.shape == logits.data.shape:
            axis = -1 if logits.data.ndim == 1 else 1
            return -(probs * log_softmax(logits, axis)).sum(axis=axis).mean()
        target = probs.data
    idx = np.asarray(target)
    if idx.dtype.kind == "f" and np.any(idx != np.round(idx)):
        raise TypeError("cross_entropy: class indices must be integers")
    idx = idx.astype(np.intp)
    x = logits.data
    x2 = x[None, :] if x.ndim == 1 else x
    idx2 = idx.reshape(-1)
    if x2.ndim != 2 or idx2.shape[0] != x2.shape[0]:
        raise ValueError(
            f"cross_entropy: logits {x.shape} need class indices of shape {x.shape[:-1]}, "
            f"got {idx.shape}"
        )
    if idx2.size and (idx2.min() < 0 or idx2.max() >= x2.shape[1]):
        raise IndexError(f"cross_entropy: class index out of range [0, {x2.shape[1]})")
    rows = np.arange(x2.shape[0])
    shifted = x2 - x2.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    total = e.sum(axis=1, keepdims=True)
    n = x2.shape[0]
    loss = (np.log(total[:, 0]) - shifted[rows, idx2]).mean()

    def backward(g: np.ndarray) -> tuple:
        gx = e / total
        gx[rows, idx2] -= 1
        gx *= g * (1 / n)
        return (gx.reshape(x.shape),)

    return _result(loss.astype(x.dtype, copy=False), (logits,), backward, "cross_entropy")
