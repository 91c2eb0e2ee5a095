"""The Tensor: an N-dimensional micrograd `Value`, with grad mode and the backward pass.

Each op (in `engine.functions`) computes its output and a small `backward(g)` closure that
returns one gradient per input, in the order of `_prev`. The closures capture their inputs and
the arrays they need, never their own output tensor, so a graph holds no reference cycle and is
freed by reference counting as soon as the last tensor of it goes away. Broadcasting is undone in
one place, `unbroadcast`, which `backward` applies to every gradient an op returns.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

_mode = threading.local()


def is_grad_enabled() -> bool:
    """Whether ops record a graph in this thread (False inside `no_grad`)."""
    return getattr(_mode, "enabled", True)


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Nothing computed inside records a graph (in this thread only)."""
    previous = is_grad_enabled()
    _mode.enabled = False
    try:
        yield
    finally:
        _mode.enabled = previous


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum `grad` over the axes that broadcasting expanded, giving an array of `shape`."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    if lead:
        grad = grad.sum(axis=tuple(range(lead)))
    ones = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if ones:
        grad = grad.sum(axis=ones, keepdims=True)
    # A full reduction gives a NumPy scalar; gradients are always arrays (accumulated in place).
    return grad if isinstance(grad, np.ndarray) else np.asarray(grad)


def to_array(data: Any, dtype: Any = None) -> np.ndarray:
    """`data` as an ndarray of numbers: floats, ints or bools (`dtype`, if given, must be a
    floating or boolean type). `None`, text, complex numbers and other objects are a TypeError
    (NumPy would turn `None` into NaN and "1.5" into 1.5)."""
    try:
        arr = np.asarray(data)
        if arr.dtype.kind == "O":
            for item in arr.flat:
                if isinstance(item, bool | int | float | np.bool_ | np.integer | np.floating):
                    continue
                raise TypeError
            arr = arr.astype(np.float64)
        if arr.dtype.kind not in "biuf":
            raise TypeError
    except (ValueError, TypeError):
        raise TypeError(
            f"Tensor data must be numbers, got {type(data).__name__}: {data!r:.60}"
        ) from None
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype.kind not in "fb":
            raise TypeError(f"Tensor dtype must be floating or bool, got {dtype}")
        arr = arr.astype(dtype, copy=False)
    return arr


def _summary(a: np.ndarray) -> str:
    text = np.array2string(a, precision=4, threshold=8, edgeitems=2, max_line_width=10**6)
    return " ".join(text.split())


class Tensor:
    """An array with a gradient. `Tensor(data, requires_grad=True, dtype=None, label="")`.

    Integer data becomes float64; floating data keeps its dtype; boolean data stays boolean (a
    mask, which never requires grad). `None`, text and other non-numbers are a TypeError. An
    ndarray of the final dtype is used as is, not copied. Comparisons (`<`, `==`, ...) give
    boolean tensors without gradient; hashing is by identity, as in PyTorch.
    """

    __slots__ = (
        "__weakref__",
        "_backward",
        "_grad",
        "_op",
        "_prev",
        "data",
        "label",
        "requires_grad",
    )
    # Make NumPy defer to our reflected operators: `ndarray + Tensor` is `Tensor.__radd__`.
    __array_ufunc__ = None
    # `__eq__` gives a tensor, so the identity hash must be restated (graphs live in dicts).
    __hash__ = object.__hash__

    def __init__(
        self, data: Any, requires_grad: bool = True, dtype: Any = None, label: str = ""
    ) -> None:
        if isinstance(data, Tensor):
            data = data.data
        arr = to_array(data, dtype)
        if arr.dtype.kind in "iu":
            arr = arr.astype(np.float64)
        self.data: np.ndarray = arr
        self.requires_grad = bool(requires_grad) and arr.dtype.kind == "f"
        self.label = label
        self._grad: np.ndarray | None = None
        self._prev: tuple[Tensor, ...] = ()
        self._op = ""
        self._backward: Callable[[np.ndarray], tuple[np.ndarray | None, ...]] | None = None

    # --- gradient ---------------------------------------------------------------------------

    @property
    def grad(self) -> np.ndarray:
        """The gradient, an array of `data`'s shape and dtype (zeros until backward fills it)."""
        if self._grad is None:
            self._grad = np.zeros_like(self.data)
        return self._grad

    @grad.setter
    def grad(self, value: Any) -> None:
        # `p.grad = 0.0` (the article's zeroing) and `p.grad = None` both reset it.
        if value is None or (isinstance(value, int | float) and value == 0):
            self._grad = None
            return
        g = np.array(value.data if isinstance(value, Tensor) else value, dtype=self.data.dtype)
        self._grad = np.broadcast_to(g, self.data.shape).copy()

    def backward(self, grad: Any = None) -> None:
        """Accumulate d(self)/d(t) into `t.grad` for every tensor `t` of the graph.

        The seed defaults to ones (as in the article). The order is an iterative topological
        sort, so graphs of any depth work. Each pass adds only its own contribution, so calling
        backward twice doubles every gradient.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad")
        if grad is None:
            seed = np.ones_like(self.data)
        else:
            g = np.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.data.dtype)
            seed = np.broadcast_to(g, self.data.shape).copy()
        pending: dict[Tensor, np.ndarray] = {self: seed}
        for node in reversed(_topological_order(self)):
            g = pending.pop(node, None)
            if g is None:
                continue
            assert g.shape == node.data.shape, (
                f"grad {g.shape} for {node._op or 'leaf'} {node.shape}"
            )
            if node._grad is None:
                node._grad = g
            else:
                node._grad += g
            if node._backward is None:
                continue
            for parent, pg in zip(node._prev, node._backward(g), strict=True):
                if pg is None or not parent.requires_grad:
                    continue
                pg = unbroadcast(np.asarray(pg), parent.data.shape)
                if pg.dtype != parent.data.dtype:
                    pg = pg.astype(parent.data.dtype)
                elif pg is g or pg.base is not None:
                    # `g` itself or a view (of it or of a broadcast): never share grad arrays.
                    pg = pg.copy()
                held = pending.get(parent)
                if held is None:
                    pending[parent] = pg
                else:
                    held += pg

    # --- conversion and introspection ---------------------------------------------------------

    def detach(self) -> Tensor:
        """The same data (not copied) as a new leaf that does not require grad."""
        return Tensor(self.data, requires_grad=False)

    def item(self) -> float:
        return self.data.item()

    def numpy(self) -> np.ndarray:
        """The data array itself (not a copy)."""
        return self.data

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    def __len__(self) -> int:
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return len(self.data)

    def __iter__(self) -> Iterator[Tensor]:
        """The sub-tensors along the first axis (each `self[i]`, so gradients flow back)."""
        if self.data.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(len(self.data)))

    def _one_value(self, what: str) -> Any:
        # PyTorch's rule: only a one-element tensor (of any shape) converts to a Python value.
        if self.data.size != 1:
            raise RuntimeError(
                f"{what} of a tensor with {self.data.size} elements is ambiguous; "
                "reduce it first (.sum(), .max(), ...) or index one element"
            )
        return self.data.reshape(()).item()

    def __bool__(self) -> bool:
        return bool(self._one_value("bool()"))

    def __float__(self) -> float:
        return float(self._one_value("float()"))

    def __int__(self) -> int:
        return int(self._one_value("int()"))

    def __repr__(self) -> str:
        label = f", label={self.label!r}" if self.label else ""
        grad = ", requires_grad=True" if self.requires_grad else ""
        shape = f"shape={self.data.shape}, dtype={self.data.dtype}"
        return f"Tensor({_summary(self.data)}, {shape}{grad}{label})"

    # --- operators and math methods: `+`, `a[i]`, `<`, `sum`, `reshape`, `T`, ... ------------
    # Each one is an op of `engine.functions`, which attaches them here when it is imported (as
    # tinygrad registers its ops on its Tensor), so this module imports nothing from there.
    # `engine` imports it with the package: every Tensor has them.


Value = Tensor


def _result(
    data: Any,
    prev: tuple[Tensor, ...],
    backward: Callable[[np.ndarray], tuple[np.ndarray | None, ...]],
    op: str,
) -> Tensor:
    """The output tensor of an op; it records the graph only when grad mode and inputs ask."""
    out = Tensor.__new__(Tensor)
    out.data = data if type(data) is np.ndarray else np.asarray(data)
    out.label = ""
    out._grad = None
    out._op = op
    if is_grad_enabled() and any(p.requires_grad for p in prev):
        out.requires_grad = True
        out._prev = prev
        out._backward = backward
    else:
        out.requires_grad = False
        out._prev = ()
        out._backward = None
    return out


def _topological_order(root: Tensor) -> list[Tensor]:
    """Inputs before outputs, over the tensors that require grad; iterative, not recursive."""
    order: list[Tensor] = []
    seen: set[Tensor] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if node in seen:
            continue
        seen.add(node)
        stack.append((node, True))
        for parent in node._prev:
            if parent.requires_grad and parent not in seen:
                stack.append((parent, False))
    return order
