"""The ops: each primitive computes its output and, right below, the closure sending the gradient
back to its inputs (one gradient per input, None for an input that needs none). Closures may
return gradients of the broadcast shape: `Tensor.backward` reduces them with `unbroadcast`.
Closures never modify the incoming gradient `g` in place.
"""

from __future__ import annotations

import builtins
import math
import operator
import warnings
from typing import Any

import numpy as np
from numpy.lib.array_utils import normalize_axis_index, normalize_axis_tuple

from engine.tensor import Tensor, _result, to_array

Axis = int | tuple[int, ...] | None
REDUCTIONS = ("mean", "sum", "none")


def _no_backward(g: np.ndarray) -> tuple:
    raise AssertionError("a constant has no backward")


def _constant(data: Any, op: str = "") -> Tensor:
    """A tensor outside any graph (comparisons, argmax, operands that are not tensors)."""
    out = Tensor.__new__(Tensor)
    out.data = data if type(data) is np.ndarray else np.asarray(data)
    out.requires_grad = False
    out.label = ""
    out._grad = None
    out._prev = ()
    out._op = op
    out._backward = None
    return out


# --- dtypes: PyTorch's promotion, in this one place ---------------------------------------------


def result_dtype(*operands: Any) -> np.dtype:
    """The floating dtype an op on `operands` computes in, by PyTorch's rule: dimensioned
    tensors and arrays decide; 0-d ones only when no dimensioned operand is floating; Python
    numbers, NumPy scalars and lists never widen a tensor (they take its dtype). Integer and
    boolean operands take the floating operands' dtype; with none, float64."""
    tier, found = -1, []
    for x in operands:
        if isinstance(x, Tensor | np.ndarray):
            arr = x.data if isinstance(x, Tensor) else x
            if arr.dtype.kind != "f":
                continue
            rank = 1 if arr.ndim else 0
            if rank > tier:
                tier, found = rank, [arr.dtype]
            elif rank == tier:
                found.append(arr.dtype)
        elif not isinstance(x, bool | int | float | np.generic | list | tuple):
            raise TypeError(
                f"unsupported operand: expected a Tensor, ndarray, list or number, "
                f"got {type(x).__name__} ({x!r:.40})"
            )
    if not found:
        return np.dtype(np.float64)
    return found[0] if len(found) == 1 else np.result_type(*found)


def cast(a: Tensor, dtype: Any) -> Tensor:
    """`a` in `dtype` (the gradient flows back cast to `a`'s dtype by `Tensor.backward`)."""
    dtype = np.dtype(dtype)
    if a.data.dtype == dtype:
        return a

    def backward(g: np.ndarray) -> tuple:
        return (g,)

    return _result(a.data.astype(dtype), (a,), backward, "cast")


def as_tensor(x: Any, dtype: Any = None, op: str = "op") -> Tensor:
    """`x` as a Tensor: Tensors pass through (cast to `dtype` if given); anything else becomes
    a constant in `dtype` (default: its own floating dtype, float64 for ints and bools)."""
    if isinstance(x, Tensor):
        return x if dtype is None else cast(x, dtype)
    if not isinstance(x, bool | int | float | np.generic | np.ndarray | list | tuple):
        raise TypeError(
            f"unsupported operand for {op}: expected a Tensor, ndarray, list or number, "
            f"got {type(x).__name__} ({x!r:.40})"
        )
    arr = to_array(x)
    if dtype is None:
        dtype = arr.dtype if arr.dtype.kind == "f" else np.float64
    return _constant(arr.astype(dtype, copy=False))


def promote(*operands: Any, op: str = "op") -> tuple[Tensor, ...]:
    """The operands as tensors of one floating dtype (`result_dtype`)."""
    if len(operands) == 2:
        # The common cases, cheaply: two tensors of one floating dtype, or such a tensor and a
        # Python number or an ndarray of its dtype (the result is that dtype in every tier).
        a, b = operands
        if type(a) is Tensor:
            dtype = a.data.dtype
            if type(b) is Tensor:
                if b.data.dtype == dtype and dtype.kind == "f":
                    return operands
            elif dtype.kind == "f":
                if type(b) is float or type(b) is int:
                    return a, _constant(np.asarray(b, dtype))
                if type(b) is np.ndarray and b.dtype == dtype:
                    return a, _constant(b)
        elif type(b) is Tensor and b.data.dtype.kind == "f":
            dtype = b.data.dtype
            if type(a) is float or type(a) is int:
                return _constant(np.asarray(a, dtype)), b
            if type(a) is np.ndarray and a.dtype == dtype:
                return _constant(a), b
    elif builtins.all(type(x) is Tensor for x in operands):
        dtype = operands[0].data.dtype
        if dtype.kind == "f" and builtins.all(x.data.dtype == dtype for x in operands):
            return operands
    dtype = result_dtype(*operands)
    return tuple(as_tensor(x, dtype, op) for x in operands)


def _floating(a: Any, op: str = "op") -> Tensor:
    if type(a) is Tensor and a.data.dtype.kind == "f":
        return a
    return as_tensor(a, result_dtype(a), op)


# --- axes: normalised once, here, for every op that takes them ---------------------------------


def _axes(axis: Axis, ndim: int) -> tuple[int, ...] | None:
    """`axis` (an int, a tuple, negatives allowed) as a tuple of distinct axes in range."""
    return None if axis is None else normalize_axis_tuple(axis, ndim)


def _axis(axis: int, ndim: int) -> int:
    return normalize_axis_index(operator.index(axis), ndim)


# --- elementwise binary ------------------------------------------------------------------------


def add(a: Any, b: Any) -> Tensor:
    a, b = promote(a, b, op="+")

    def backward(g: np.ndarray) -> tuple:
        return g, g

    return _result(a.data + b.data, (a, b), backward, "+")


def sub(a: Any, b: Any) -> Tensor:
    a, b = promote(a, b, op="-")

    def backward(g: np.ndarray) -> tuple:
        return g, (-g if b.requires_grad else None)

    return _result(a.data - b.data, (a, b), backward, "-")


def mul(a: Any, b: Any) -> Tensor:
    a, b = promote(a, b, op="*")
    ad, bd = a.data, b.data

    def backward(g: np.ndarray) -> tuple:
        return (g * bd if a.requires_grad else None), (g * ad if b.requires_grad else None)

    return _result(ad * bd, (a, b), backward, "*")


def div(a: Any, b: Any) -> Tensor:
    a, b = promote(a, b, op="/")
    bd = b.data
    out = a.data / bd

    def backward(g: np.ndarray) -> tuple:
        ga = g / bd
        return ga, (-ga * out if b.requires_grad else None)

    return _result(out, (a, b), backward, "/")


def pow(a: Any, b: Any) -> Tensor:
    """`a ** b`. d/da is `b * a ** (b - 1)`, taken as 0 where b == 0 (a constant); d/db is
    `out * log(a)`, taken as 0 where a == 0 (as PyTorch)."""
    if type(a) is Tensor and a.data.dtype.kind == "f":
        if type(b) is int or type(b) is float:
            return _pow_scalar(a, b)
        if isinstance(b, np.integer | np.floating):
            # A NumPy scalar as a Python number: it must not widen the tensor.
            return _pow_scalar(a, b.item())
    a, b = promote(a, b, op="**")
    ad, bd = a.data, b.data
    out = ad**bd

    def backward(g: np.ndarray) -> tuple:
        ga = gb = None
        with np.errstate(divide="ignore", invalid="ignore"):
            if a.requires_grad:
                ga = g * np.where(bd == 0, 0, bd * ad ** (bd - 1))
            if b.requires_grad:
                gb = g * np.where(ad == 0, 0, out * np.log(np.where(ad == 0, 1, ad)))
        return ga, gb

    return _result(out, (a, b), backward, "**")


def _pow_scalar(a: Tensor, e: float) -> Tensor:
    ad = a.data

    def backward(g: np.ndarray) -> tuple:
        if e == 0:
            return (np.zeros_like(ad),)
        if e == 2:
            return (g * (2 * ad),)
        return (g * (e * ad ** (e - 1)),)

    return _result(ad**e, (a,), backward, f"**{e:g}")


def maximum(a: Any, b: Any) -> Tensor:
    """Elementwise maximum; where a == b each receives half the gradient (as PyTorch)."""
    return _extremum(a, b, np.maximum, np.greater, "maximum")


def minimum(a: Any, b: Any) -> Tensor:
    """Elementwise minimum; where a == b each receives half the gradient (as PyTorch)."""
    return _extremum(a, b, np.minimum, np.less, "minimum")


def _extremum(a: Any, b: Any, pick: np.ufunc, wins: np.ufunc, op: str) -> Tensor:
    a, b = promote(a, b, op=op)
    ad, bd = a.data, b.data

    def backward(g: np.ndarray) -> tuple:
        share = np.where(wins(ad, bd), 1, np.where(ad == bd, 0.5, 0)).astype(g.dtype)
        return g * share, g * (1 - share)

    return _result(pick(ad, bd), (a, b), backward, op)


def where(condition: Any, a: Any, b: Any) -> Tensor:
    """`a` where `condition` (boolean, broadcast) holds, else `b`; each gets its part of the
    gradient."""
    cond = condition.data if isinstance(condition, Tensor) else to_array(condition)
    if cond.dtype != np.bool_:
        raise TypeError(f"where: condition must be boolean, got {cond.dtype}")
    a, b = promote(a, b, op="where")

    def backward(g: np.ndarray) -> tuple:
        ga = np.where(cond, g, 0) if a.requires_grad else None
        gb = np.where(cond, 0, g) if b.requires_grad else None
        return ga, gb

    return _result(np.where(cond, a.data, b.data), (a, b), backward, "where")


_COMPARISONS = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}


def compare(a: Any, b: Any, op: str) -> Tensor:
    """`a op b` for op in <, <=, >, >=, ==, != as a boolean tensor without gradient.
    NotImplemented for an operand that is not a number (so `t == None` is False)."""
    try:
        a, b = promote(a, b, op=op)
    except TypeError:
        return NotImplemented
    return _constant(_COMPARISONS[op](a.data, b.data), op)


def matmul(a: Any, b: Any) -> Tensor:
    """`a @ b` with `np.matmul`'s rules (1-D, 2-D, batched with broadcast batch axes)."""
    a, b = promote(a, b, op="@")
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
    if bias is None:
        x, weight = promote(x, weight, op="linear")
    else:
        x, weight, bias = promote(x, weight, bias, op="linear")
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


def neg(a: Any) -> Tensor:
    a = _floating(a, "neg")

    def backward(g: np.ndarray) -> tuple:
        return (-g,)

    return _result(-a.data, (a,), backward, "neg")


def exp(a: Any) -> Tensor:
    a = _floating(a, "exp")
    out = np.exp(a.data)

    def backward(g: np.ndarray) -> tuple:
        return (g * out,)

    return _result(out, (a,), backward, "exp")


def log(a: Any) -> Tensor:
    a = _floating(a, "log")
    ad = a.data

    def backward(g: np.ndarray) -> tuple:
        return (g / ad,)

    return _result(np.log(ad), (a,), backward, "log")


def sqrt(a: Any) -> Tensor:
    a = _floating(a, "sqrt")
    out = np.sqrt(a.data)

    def backward(g: np.ndarray) -> tuple:
        return (g * 0.5 / out,)

    return _result(out, (a,), backward, "sqrt")


def abs(a: Any) -> Tensor:
    """|a|; the gradient at 0 is 0 (as PyTorch)."""
    a = _floating(a, "abs")
    ad = a.data

    def backward(g: np.ndarray) -> tuple:
        return (g * np.sign(ad),)

    return _result(np.abs(ad), (a,), backward, "abs")


def clip(a: Any, min: Any = None, max: Any = None) -> Tensor:
    """`a` limited to [min, max] (constant bounds, numbers or arrays that broadcast); the
    gradient passes where min <= a <= max (as `torch.clamp`)."""
    if min is None and max is None:
        raise ValueError("clip: at least one of min and max must be given")
    a = _floating(a, "clip")
    ad = a.data
    lo = None if min is None else as_tensor(min, ad.dtype, "clip").data
    hi = None if max is None else as_tensor(max, ad.dtype, "clip").data
    out = np.clip(ad, lo, hi)

    def backward(g: np.ndarray) -> tuple:
        inside = np.ones(out.shape, dtype=bool)
        if lo is not None:
            inside &= ad >= lo
        if hi is not None:
            inside &= ad <= hi
        return (g * inside,)

    return _result(out, (a,), backward, "clip")


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


def tanh(a: Any) -> Tensor:
    a = _floating(a, "tanh")
    out = _tanh(a.data)

    def backward(g: np.ndarray) -> tuple:
        ga = out * out
        ga = np.subtract(1, ga, out=ga) if ga.ndim else 1 - ga
        ga *= g
        return (ga,)

    return _result(out, (a,), backward, "tanh")


def _sigmoids(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sigmoid(x), sigmoid(-x)), each within a few ulps over the whole range: exp(-|x|)
    never overflows, and neither value is computed as 1 minus the other."""
    e = np.exp(-np.abs(x))
    d = 1 + e
    big = 1 / d  # sigmoid(|x|)
    small = e / d  # sigmoid(-|x|)
    positive = x >= 0
    return np.where(positive, big, small), np.where(positive, small, big)


def sigmoid(a: Any) -> Tensor:
    a = _floating(a, "sigmoid")
    out, complement = _sigmoids(a.data)

    def backward(g: np.ndarray) -> tuple:
        return (g * out * complement,)

    return _result(out, (a,), backward, "sigmoid")


def relu(a: Any) -> Tensor:
    a = _floating(a, "relu")
    out = np.maximum(a.data, 0)

    def backward(g: np.ndarray) -> tuple:
        return (g * (out > 0),)

    return _result(out, (a,), backward, "relu")


# --- reductions -------------------------------------------------------------------------------


def _expand(
    g: np.ndarray, shape: tuple[int, ...], axes: tuple[int, ...] | None, keepdims: bool
) -> np.ndarray:
    """Broadcast a reduced gradient back over the reduced (normalised) axes: a read-only view."""
    if axes is not None and not keepdims:
        g = np.expand_dims(g, axes)
    elif axes is None and not keepdims:
        g = np.reshape(g, (1,) * len(shape))
    return np.broadcast_to(g, shape)


def sum(a: Any, axis: Axis = None, keepdims: bool = False) -> Tensor:
    a = _floating(a, "sum")
    shape = a.data.shape
    axes = _axes(axis, a.data.ndim)

    def backward(g: np.ndarray) -> tuple:
        return (_expand(g, shape, axes, keepdims),)

    return _result(a.data.sum(axis=axes, keepdims=keepdims), (a,), backward, "sum")


def mean(a: Any, axis: Axis = None, keepdims: bool = False) -> Tensor:
    a = _floating(a, "mean")
    shape = a.data.shape
    axes = _axes(axis, a.data.ndim)
    out = a.data.mean(axis=axes, keepdims=keepdims)
    count = a.data.size // builtins.max(np.asarray(out).size, 1) if a.data.size else 1

    def backward(g: np.ndarray) -> tuple:
        return (_expand(g / count, shape, axes, keepdims),)

    return _result(out, (a,), backward, "mean")


def _extreme(a: Any, axis: Axis, keepdims: bool, pick: Any, op: str) -> Tensor:
    """max or min; ties share the gradient equally."""
    a = a if isinstance(a, Tensor) else as_tensor(a, op=op)
    ad = a.data
    axes = _axes(axis, ad.ndim)
    top = pick(ad, axis=axes, keepdims=True)

    def backward(g: np.ndarray) -> tuple:
        mask = (ad == top).astype(ad.dtype)
        mask /= mask.sum(axis=axes, keepdims=True)
        mask *= _expand(g, ad.shape, axes, keepdims)
        return (mask,)

    out = top if keepdims else (top.reshape(()) if axes is None else np.squeeze(top, axes))
    return _result(out, (a,), backward, op)


def max(a: Any, axis: Axis = None, keepdims: bool = False) -> Tensor:
    """The maximum; ties share the gradient equally."""
    return _extreme(a, axis, keepdims, np.max, "max")


def min(a: Any, axis: Axis = None, keepdims: bool = False) -> Tensor:
    """The minimum; ties share the gradient equally."""
    return _extreme(a, axis, keepdims, np.min, "min")


def argmax(a: Any, axis: int | None = None, keepdims: bool = False) -> Tensor:
    """Indices of the maxima (int64, no gradient); the first one on ties."""
    ad = a.data if isinstance(a, Tensor) else to_array(a)
    ax = None if axis is None else _axis(axis, ad.ndim)
    return _constant(np.argmax(ad, axis=ax, keepdims=keepdims).astype(np.int64), "argmax")


def argmin(a: Any, axis: int | None = None, keepdims: bool = False) -> Tensor:
    """Indices of the minima (int64, no gradient); the first one on ties."""
    ad = a.data if isinstance(a, Tensor) else to_array(a)
    ax = None if axis is None else _axis(axis, ad.ndim)
    return _constant(np.argmin(ad, axis=ax, keepdims=keepdims).astype(np.int64), "argmin")


def _shifted(x: np.ndarray, axes: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """(x - max, max) over `axes`; a slice that is all -inf (or inf) is shifted by 0."""
    top = x.max(axis=axes, keepdims=True)
    top = np.where(np.isfinite(top), top, 0)
    return x - top, top


def logsumexp(a: Any, axis: Axis = None, keepdims: bool = False) -> Tensor:
    """log(sum(exp(a))), shifted by the maximum so that large logits stay finite."""
    a = _floating(a, "logsumexp")
    ad = a.data
    axes = _axes(axis, ad.ndim)
    z, top = _shifted(ad, axes)
    e = np.exp(z)
    total = e.sum(axis=axes, keepdims=True)
    out = np.log(total) + top

    def backward(g: np.ndarray) -> tuple:
        ga = e / total
        ga *= _expand(g, ad.shape, axes, keepdims)
        return (ga,)

    if not keepdims:
        out = out.reshape(()) if axes is None else np.squeeze(out, axes)
    return _result(out, (a,), backward, "logsumexp")


def log_softmax(a: Any, axis: Axis = -1) -> Tensor:
    """`a - logsumexp(a)` computed from `a - max` (exact), not from a rounded logsumexp."""
    a = _floating(a, "log_softmax")
    axes = _axes(axis, a.data.ndim)
    z, _ = _shifted(a.data, axes)
    out = z - np.log(np.exp(z).sum(axis=axes, keepdims=True))

    def backward(g: np.ndarray) -> tuple:
        return (g - np.exp(out) * g.sum(axis=axes, keepdims=True),)

    return _result(out, (a,), backward, "log_softmax")


def softmax(a: Any, axis: Axis = -1) -> Tensor:
    a = _floating(a, "softmax")
    axes = _axes(axis, a.data.ndim)
    z, _ = _shifted(a.data, axes)
    e = np.exp(z)
    out = e / e.sum(axis=axes, keepdims=True)

    def backward(g: np.ndarray) -> tuple:
        ga = out * g
        ga -= out * ga.sum(axis=axes, keepdims=True)
        return (ga,)

    return _result(out, (a,), backward, "softmax")


# --- shape ------------------------------------------------------------------------------------


def reshape(a: Tensor, shape: tuple[int, ...]) -> Tensor:
    in_shape = a.data.shape

    def backward(g: np.ndarray) -> tuple:
        return (g.reshape(in_shape),)

    return _result(a.data.reshape(shape), (a,), backward, "reshape")


def transpose(a: Tensor, axes: tuple[int, ...] | None = None) -> Tensor:
    """Permute the axes (reverse them when None); negative axes count from the end."""
    if axes is not None:
        axes = _axes(axes, a.data.ndim)
        if len(axes) != a.data.ndim:
            raise ValueError(f"transpose: axes {axes} do not permute {a.data.ndim} axes")
    inverse = None if axes is None else tuple(int(i) for i in np.argsort(axes))

    def backward(g: np.ndarray) -> tuple:
        return (g.transpose(inverse),)

    return _result(a.data.transpose(axes), (a,), backward, "T")


def flatten(a: Tensor, start_axis: int = 0, end_axis: int = -1) -> Tensor:
    """Merge axes `start_axis..end_axis` (inclusive) into one, as `torch.flatten`."""
    shape = a.data.shape
    if not shape:
        return reshape(a, (1,))
    start, end = _axis(start_axis, len(shape)), _axis(end_axis, len(shape))
    if start > end:
        raise ValueError(f"flatten: start axis {start_axis} comes after end axis {end_axis}")
    merged = int(np.prod(shape[start : end + 1]))
    return reshape(a, (*shape[:start], merged, *shape[end + 1 :]))


def squeeze(a: Tensor, axis: Axis = None) -> Tensor:
    """Drop axes of length 1: all of them, or those of `axis` that have length 1 (others are
    kept, as `torch.squeeze`)."""
    shape = a.data.shape
    axes = _axes(axis, len(shape))
    drop = {i for i, n in enumerate(shape) if n == 1 and (axes is None or i in axes)}
    return reshape(a, tuple(n for i, n in enumerate(shape) if i not in drop))


def unsqueeze(a: Tensor, axis: int) -> Tensor:
    """Insert an axis of length 1 at `axis` (counted in the result's axes)."""
    shape = a.data.shape
    ax = _axis(axis, len(shape) + 1)
    return reshape(a, (*shape[:ax], 1, *shape[ax:]))


def _index_part(index: Any) -> Any:
    if isinstance(index, Tensor):
        index = index.data
    if isinstance(index, np.ndarray) and index.dtype.kind not in "biu":
        raise TypeError(
            f"index arrays must be integers or booleans, got {index.dtype} "
            "(a float tensor is not an index; index with ints or a boolean mask)"
        )
    return index


def _is_integer_array(index: Any) -> bool:
    if isinstance(index, tuple):
        return builtins.any(_is_integer_array(i) for i in index)
    if isinstance(index, np.ndarray | list):
        return np.asarray(index).dtype.kind in "iu"
    return False


def getitem(a: Tensor, index: Any) -> Tensor:
    """`a[index]`: ints, slices, None, Ellipsis, boolean masks and integer arrays (ndarrays,
    lists or tensors: a boolean tensor is a mask, an int64 one a gather)."""
    index = tuple(map(_index_part, index)) if isinstance(index, tuple) else _index_part(index)
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
    ts = promote(*tensors, op="concat")
    axis = _axis(axis, ts[0].data.ndim)
    ends = np.cumsum([t.data.shape[axis] for t in ts])[:-1]

    def backward(g: np.ndarray) -> tuple:
        return tuple(np.split(g, ends, axis=axis))

    return _result(np.concatenate([t.data for t in ts], axis=axis), ts, backward, "concat")


def stack(tensors: list[Any], axis: int = 0) -> Tensor:
    """Join tensors along a new axis."""
    ts = promote(*tensors, op="stack")
    axis = _axis(axis, ts[0].data.ndim + 1)

    def backward(g: np.ndarray) -> tuple:
        return tuple(np.moveaxis(g, axis, 0))

    return _result(np.stack([t.data for t in ts], axis=axis), ts, backward, "stack")


# --- losses: PyTorch's definitions and reductions ---------------------------------------------


def _target(target: Any, like: Tensor, op: str) -> Tensor:
    """A target in the prediction's dtype (a Tensor target keeps its gradient)."""
    return as_tensor(target, like.data.dtype, op)


def _check_shapes(pred: Tensor, target: Tensor, op: str) -> None:
    if pred.data.shape != target.data.shape:
        shape = np.broadcast_shapes(pred.data.shape, target.data.shape)
        if shape != pred.data.shape:
            warnings.warn(
                f"{op}: target shape {target.data.shape} broadcasts prediction shape "
                f"{pred.data.shape} to {shape}; this is probably not intended",
                stacklevel=3,
            )


def _check_reduction(reduction: str, op: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _loss(
    terms: np.ndarray,
    prev: tuple[Tensor, ...],
    grads: Any,
    reduction: str,
    op: str,
    count: Any = None,
) -> Tensor:
    """Reduce per-element loss `terms`: "none" keeps them, "sum" adds them, "mean" divides the
    sum by `count` (default: their number; NaN when it is 0, as PyTorch). `grads(s)` returns
    the inputs' gradients for a gradient `s` of the terms (an array of their shape, or 0-d)."""
    _check_reduction(reduction, op)
    if reduction == "none":
        return _result(terms, prev, grads, op)
    total = terms.sum()
    scale = 1.0
    if reduction == "mean":
        n = terms.size if count is None else float(count)
        scale = 1.0 / n if n else math.nan
        with np.errstate(invalid="ignore", divide="ignore"):
            total = total / n if n else total * math.nan

    def backward(g: np.ndarray) -> tuple:
        return grads(g * scale)

    return _result(np.asarray(total, dtype=terms.dtype), prev, backward, op)


def mse_loss(pred: Any, target: Any, reduction: str = "mean") -> Tensor:
    """(pred - target) ** 2, reduced by `reduction` ("mean", "sum" or "none")."""
    pred = _floating(pred, "mse_loss")
    target = _target(target, pred, "mse_loss")
    _check_shapes(pred, target, "mse_loss")
    diff = pred.data - target.data

    def grads(s: np.ndarray) -> tuple:
        gp = diff * (2 * s)
        return gp, (-gp if target.requires_grad else None)

    return _loss(diff * diff, (pred, target), grads, reduction, "mse_loss")


def _constant_array(x: Any, like: np.ndarray) -> np.ndarray:
    return (x.data if isinstance(x, Tensor) else to_array(x)).astype(like.dtype, copy=False)


def binary_cross_entropy_with_logits(
    logits: Any,
    target: Any,
    weight: Any = None,
    pos_weight: Any = None,
    reduction: str = "mean",
) -> Tensor:
    """-w [p y log(sigmoid(x)) + (1 - y) log(1 - sigmoid(x))] (PyTorch's definition), stable
    for any logits; `weight` w (per element) and `pos_weight` p (per class, the last axis) are
    constants that broadcast; reduced by `reduction`."""
    logits = _floating(logits, "binary_cross_entropy_with_logits")
    target = _target(target, logits, "binary_cross_entropy_with_logits")
    _check_shapes(logits, target, "binary_cross_entropy_with_logits")
    x, y = logits.data, target.data
    w = None if weight is None else _constant_array(weight, x)
    p = None if pos_weight is None else _constant_array(pos_weight, x)
    softplus_neg = np.maximum(-x, 0) + np.log1p(np.exp(-np.abs(x)))  # -log(sigmoid(x))
    if p is None:
        terms = (1 - y) * x + softplus_neg
    else:
        lw = 1 + (p - 1) * y
        terms = (1 - y) * x + lw * softplus_neg
    if w is not None:
        terms = terms * w

    def grads(s: np.ndarray) -> tuple:
        if w is not None:
            s = s * w
        gx = gy = None
        if logits.requires_grad:
            sig, _ = _sigmoids(x)
            gx = (sig - y if p is None else sig * lw - p * y) * s
        if target.requires_grad:
            gy = (-x if p is None else (p - 1) * softplus_neg - x) * s
            gy = np.broadcast_to(gy, terms.shape)  # the target may be wider than the logits
        return gx, gy

    return _loss(terms, (logits, target), grads, reduction, "bce_with_logits")


def cross_entropy(
    logits: Any,
    target: Any,
    weight: Any = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """PyTorch's cross entropy of `logits` (C,), (N, C) or (N, C, d1, ...) (the class axis
    second) against class indices of shape (), (N,) or (N, d1, ...), or class probabilities: a
    floating target of the logits' shape. `weight` (C,): per-class weights (the mean divides by
    the targets' total weight for indices, by the number of samples for probabilities);
    `ignore_index`: a class index that contributes nothing, not even to the mean's count;
    `label_smoothing` e: the target is mixed with the uniform distribution, (1 - e) target +
    e / C. The weight is a constant (no gradient)."""
    op = "cross_entropy"
    logits = _floating(logits, op)
    label_smoothing = float(label_smoothing)
    _check_reduction(reduction, op)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing}")
    x = logits.data
    if x.ndim == 0:
        raise ValueError(f"{op}: logits need a class axis, got a 0-d tensor")
    caxis = 0 if x.ndim == 1 else 1
    n_classes = x.shape[caxis]
    w = None
    if weight is not None:
        w = _constant_array(weight, x)
        if w.shape != (n_classes,):
            raise ValueError(f"{op}: weight must have shape ({n_classes},), got {w.shape}")
    tdata = target.data if isinstance(target, Tensor) else to_array(target)
    if tdata.dtype.kind == "f" and tdata.shape == x.shape:
        if ignore_index is not None:
            raise ValueError(f"{op}: ignore_index needs class-index targets, not probabilities")
        return _cross_entropy_probabilities(
            logits, _target(target, logits, op), w, caxis, label_smoothing, reduction
        )
    return _cross_entropy_indices(logits, tdata, w, caxis, ignore_index, label_smoothing, reduction)


def _cross_entropy_probabilities(
    logits: Tensor,
    probs: Tensor,
    w: np.ndarray | None,
    caxis: int,
    smoothing: float,
    reduction: str,
) -> Tensor:
    n_classes = logits.data.shape[caxis]
    if smoothing:
        probs = probs * (1 - smoothing) + smoothing / n_classes
    prod = log_softmax(logits, caxis) * probs
    if w is not None:
        prod = prod * w.reshape((n_classes,) + (1,) * (logits.data.ndim - caxis - 1))
    terms = -sum(prod, axis=caxis)
    if reduction == "none":
        return terms
    total = sum(terms)
    if reduction == "sum":
        return total
    return total * (1.0 / terms.data.size if terms.data.size else math.nan)


def _cross_entropy_indices(
    logits: Tensor,
    target: np.ndarray,
    w: np.ndarray | None,
    caxis: int,
    ignore_index: int | None,
    smoothing: float,
    reduction: str,
) -> Tensor:
    op = "cross_entropy"
    x = logits.data
    n_classes = x.shape[caxis]
    if target.dtype.kind == "f" and np.any(target != np.round(target)):
        raise TypeError(f"{op}: class indices must be integers")
    if target.dtype.kind not in "iuf":
        raise TypeError(f"{op}: class indices must be integers, got {target.dtype}")
    expected = x.shape[:caxis] + x.shape[caxis + 1 :]
    # (N, 1) targets for (N, C) logits are accepted, as they always were.
    if target.shape != expected and not (x.ndim == 2 and target.shape == (x.shape[0], 1)):
        raise ValueError(
            f"{op}: logits {x.shape} need class indices of shape {expected}, got {target.shape}"
        )
    t = target.reshape(-1).astype(np.intp)
    # Rows of classes: (M, C) with the class axis last.
    x2 = x.reshape(1, -1) if x.ndim == 1 else x if x.ndim == 2 else np.moveaxis(x, 1, -1)
    x2 = x2.reshape(-1, n_classes)
    valid = None if ignore_index is None else t != ignore_index
    if valid is not None:
        t = np.where(valid, t, 0)
    if t.size and (t.min() < 0 or t.max() >= n_classes):
        raise IndexError(f"{op}: class index out of range [0, {n_classes})")
    rows = np.arange(x2.shape[0])
    z, _ = _shifted(x2, (1,))
    e = np.exp(z)
    total = e.sum(axis=1, keepdims=True)
    log_total = np.log(total)
    # Per-row weight of the target term: w[t], 0 where ignored.
    wt: Any = 1.0 if w is None else w[t]
    if valid is not None:
        wt = np.where(valid, wt, 0).astype(x.dtype)
    terms = (log_total[:, 0] - z[rows, t]) * wt
    if valid is not None:
        terms = np.where(valid, terms, 0)  # an ignored row's logits may be infinite
    if smoothing:
        logp = z - log_total
        smooth = -(logp.sum(axis=1) if w is None else logp @ w)
        keep = 1.0 if valid is None else valid
        terms = (1 - smoothing) * terms + (smoothing / n_classes) * np.where(keep, smooth, 0)
    count = None
    if w is not None:
        count = wt.sum()
    elif valid is not None:
        count = valid.sum()

    def grads(s: np.ndarray) -> tuple:
        s = s.reshape(-1, 1) if s.ndim else s
        probs = e / total
        a = (1 - smoothing) * wt
        gx = probs * (a[:, None] if np.ndim(a) else a)
        gx[rows, t] -= a
        if smoothing:
            b = np.where(valid, smoothing / n_classes, 0) if valid is not None else None
            spread = probs * (n_classes if w is None else w.sum()) - (1 if w is None else w)
            gx += spread * (smoothing / n_classes if b is None else b[:, None])
        gx *= s
        if x.ndim == 1:
            return (gx[0],)
        if x.ndim > 2:
            gx = np.moveaxis(gx.reshape(*expected, n_classes), -1, 1)
        return (gx,)

    return _loss(
        terms.reshape(expected).astype(x.dtype, copy=False),
        (logits,),
        grads,
        reduction,
        op,
        count,
    )


# --- Tensor's operators and math methods --------------------------------------------------------


class TensorMethods:
    """What `Tensor` answers to besides its data and gradient: each method is one of the ops
    above. They are attached to `Tensor` (below) rather than written in `engine.tensor`, so that
    this module depends on that one and not the other way round."""

    def __add__(self, other: Any) -> Tensor:
        return add(self, other)

    def __radd__(self, other: Any) -> Tensor:
        return add(other, self)

    def __sub__(self, other: Any) -> Tensor:
        return sub(self, other)

    def __rsub__(self, other: Any) -> Tensor:
        return sub(other, self)

    def __mul__(self, other: Any) -> Tensor:
        return mul(self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return mul(other, self)

    def __truediv__(self, other: Any) -> Tensor:
        return div(self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return div(other, self)

    def __pow__(self, other: Any) -> Tensor:
        return pow(self, other)

    def __rpow__(self, other: Any) -> Tensor:
        return pow(other, self)

    def __matmul__(self, other: Any) -> Tensor:
        return matmul(self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return matmul(other, self)

    def __neg__(self) -> Tensor:
        return neg(self)

    def __getitem__(self, index: Any) -> Tensor:
        return getitem(self, index)

    def __abs__(self) -> Tensor:
        return abs(self)

    # Comparisons give boolean tensors without gradient, as in PyTorch.
    def __lt__(self, other: Any) -> Tensor:
        return compare(self, other, "<")

    def __le__(self, other: Any) -> Tensor:
        return compare(self, other, "<=")

    def __gt__(self, other: Any) -> Tensor:
        return compare(self, other, ">")

    def __ge__(self, other: Any) -> Tensor:
        return compare(self, other, ">=")

    def __eq__(self, other: Any) -> Tensor:  # type: ignore[override]
        return compare(self, other, "==")

    def __ne__(self, other: Any) -> Tensor:  # type: ignore[override]
        return compare(self, other, "!=")

    def exp(self) -> Tensor:
        return exp(self)

    def log(self) -> Tensor:
        return log(self)

    def tanh(self) -> Tensor:
        return tanh(self)

    def relu(self) -> Tensor:
        return relu(self)

    def sigmoid(self) -> Tensor:
        return sigmoid(self)

    def sqrt(self) -> Tensor:
        return sqrt(self)

    def abs(self) -> Tensor:
        return abs(self)

    def clip(self, min: Any = None, max: Any = None) -> Tensor:
        return clip(self, min, max)

    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        return sum(self, axis, keepdims)

    def mean(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        return mean(self, axis, keepdims)

    def max(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        return max(self, axis, keepdims)

    def min(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        return min(self, axis, keepdims)

    def argmax(self, axis: int | None = None, keepdims: bool = False) -> Tensor:
        return argmax(self, axis, keepdims)

    def argmin(self, axis: int | None = None, keepdims: bool = False) -> Tensor:
        return argmin(self, axis, keepdims)

    def logsumexp(
        self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False
    ) -> Tensor:
        return logsumexp(self, axis, keepdims)

    def softmax(self, axis: int = -1) -> Tensor:
        return softmax(self, axis)

    def log_softmax(self, axis: int = -1) -> Tensor:
        return log_softmax(self, axis)

    def reshape(self, *shape: Any) -> Tensor:
        if len(shape) == 1 and isinstance(shape[0], tuple | list):
            shape = tuple(shape[0])
        return reshape(self, shape)

    def transpose(self, *axes: Any) -> Tensor:
        if len(axes) == 1 and isinstance(axes[0], tuple | list):
            axes = tuple(axes[0])
        return transpose(self, axes or None)

    def permute(self, *axes: Any) -> Tensor:
        if len(axes) == 1 and isinstance(axes[0], tuple | list):
            axes = tuple(axes[0])
        return transpose(self, axes)

    def flatten(self, start_axis: int = 0, end_axis: int = -1) -> Tensor:
        return flatten(self, start_axis, end_axis)

    def squeeze(self, axis: int | tuple[int, ...] | None = None) -> Tensor:
        return squeeze(self, axis)

    def unsqueeze(self, axis: int) -> Tensor:
        return unsqueeze(self, axis)

    @property
    def T(self) -> Tensor:
        return transpose(self, None)


for _name, _member in vars(TensorMethods).items():
    if callable(_member) or isinstance(_member, property):
        _function = _member.fget if isinstance(_member, property) else _member
        _function.__qualname__ = f"Tensor.{_name}"  # as tracebacks and help() name it
        setattr(Tensor, _name, _member)
