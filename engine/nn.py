"""Neural-network library: modules with named parameters, the article's MLP, and losses.

Parameter names follow PyTorch's: an `MLP`'s state_dict holds `layers.{i}.weight` of shape
`(nout, nin)` and `layers.{i}.bias` of shape `(nout,)` for each layer `i`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from engine.functions import (
    binary_cross_entropy_with_logits,
    cross_entropy,
    linear,
    mse_loss,
)
from engine.tensor import Tensor, to_array

__all__ = [
    "MLP",
    "Dropout",
    "Layer",
    "Linear",
    "Module",
    "Neuron",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "mse_loss",
]

ACTIVATIONS = ("tanh", "relu", "sigmoid")
INITS = ("kaiming", "xavier", "glorot")


class Module:
    """Parameters are the Tensor attributes; submodules are Module attributes or lists of them.

    `training` (True until `eval()`) switches modules such as `Dropout`; `train()` and
    `eval()` set it on the module and every submodule, and return the module.
    """

    training: bool = True

    def children(self) -> Iterator[Module]:
        for value in vars(self).values():
            if isinstance(value, Module):
                yield value
            elif isinstance(value, list | tuple):
                yield from (item for item in value if isinstance(item, Module))

    def modules(self) -> Iterator[Module]:
        """This module and every submodule, each once."""
        seen: set[int] = set()
        stack: list[Module] = [self]
        while stack:
            module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield module
            stack.extend(reversed(list(module.children())))

    def train(self, mode: bool = True) -> Module:
        for module in self.modules():
            module.training = bool(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def named_parameters(
        self, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Tensor]]:
        """(name, parameter) pairs; a parameter shared by several modules (tied) is listed
        once, under its first name, unless `remove_duplicate` is False (as PyTorch)."""
        seen: set[int] = set()
        for name, p in self._all_parameters(prefix):
            if remove_duplicate:
                if id(p) in seen:
                    continue
                seen.add(id(p))
            yield name, p

    def _all_parameters(self, prefix: str) -> Iterator[tuple[str, Tensor]]:
        for name, value in vars(self).items():
            if isinstance(value, Tensor):
                yield prefix + name, value
            elif isinstance(value, Module):
                yield from value._all_parameters(f"{prefix}{name}.")
            elif isinstance(value, list | tuple):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield from item._all_parameters(f"{prefix}{name}.{i}.")

    def parameters(self) -> list[Tensor]:
        """Each parameter once, even when tied (so an optimizer steps it once)."""
        return [p for _, p in self.named_parameters()]

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameter name -> a copy of its data (a tied parameter under each of its names)."""
        return {name: p.data.copy() for name, p in self.named_parameters(remove_duplicate=False)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy `state` into the parameters in place (cast to their dtype). All keys must
        match, every value must be a finite numeric array of the parameter's shape (finite
        after the cast too); otherwise nothing is changed and ValueError says why."""
        params = dict(self.named_parameters(remove_duplicate=False))
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        problems = []
        if missing:
            problems.append(f"missing keys {missing}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected}")
        arrays = {}
        for name, p in params.items():
            if name not in state:
                continue
            value = state[name]
            try:
                arr = to_array(value.data if isinstance(value, Tensor) else value)
            except TypeError:
                problems.append(f"{name!r} is not numeric: {type(value).__name__}")
                continue
            if arr.shape != p.data.shape:
                problems.append(
                    f"shape mismatch for {name!r}: expected {p.data.shape}, got {arr.shape}"
                )
                continue
            with np.errstate(over="ignore", invalid="ignore"):
                arr = arr.astype(p.data.dtype)
            if not np.isfinite(arr).all():
                problems.append(f"{name!r} holds non-finite values (in {p.data.dtype})")
                continue
            arrays[name] = arr
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__}: " + "; ".join(problems))
        # Everything is converted and checked: the copies below cannot fail half-way.
        for name, p in params.items():
            np.copyto(p.data, arrays[name])

    def forward(self, x: Any) -> Tensor:
        raise NotImplementedError

    def __call__(self, x: Any) -> Tensor:
        return self.forward(x)


class Dropout(Module):
    """`Dropout(p)`: in training mode each element is zeroed with probability `p` and the
    others are scaled by 1 / (1 - p) (as `torch.nn.Dropout`); in eval mode the identity.
    `rng` (or `seed`) makes the masks reproducible."""

    def __init__(
        self, p: float = 0.5, *, rng: np.random.Generator | None = None, seed: int | None = None
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = float(p)
        self.rng = rng if rng is not None else np.random.default_rng(seed)

    def forward(self, x: Any) -> Tensor:
        x = x if isinstance(x, Tensor) else Tensor(x, requires_grad=False)
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return x * 0.0
        dtype = x.dtype if x.dtype.kind == "f" else np.float64
        keep = self.rng.random(x.shape, dtype=dtype) >= self.p
        mask = np.multiply(keep, 1.0 / (1.0 - self.p), dtype=dtype)
        return x * mask

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"


def _activate(x: Tensor, activation: str | None) -> Tensor:
    if activation is None:
        return x
    return getattr(x, activation)()


def _check_activation(activation: str | None) -> None:
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")


class Linear(Module):
    """`x @ weight.T + bias` with `weight` of shape (nout, nin) and `bias` of shape (nout,).

    `init`: "kaiming" (normal, std sqrt(2 / nin); biases zero), "xavier" (uniform within
    sqrt(6 / (nin + nout)); biases zero) or "glorot" (weights and biases uniform within that
    bound, as scikit-learn's MLP starts).
    """

    def __init__(
        self,
        nin: int,
        nout: int,
        bias: bool = True,
        *,
        init: str = "xavier",
        rng: np.random.Generator | None = None,
        dtype: Any = np.float64,
    ) -> None:
        rng = rng if rng is not None else np.random.default_rng()
        b = np.zeros(nout)
        if init == "kaiming":
            w = rng.normal(0.0, np.sqrt(2.0 / nin), size=(nout, nin))
        elif init in ("xavier", "glorot"):
            limit = np.sqrt(6.0 / (nin + nout))
            w = rng.uniform(-limit, limit, size=(nout, nin))
            if init == "glorot":
                b = rng.uniform(-limit, limit, size=nout)
        else:
            raise ValueError(f"unknown init {init!r}; expected one of {INITS}")
        self.weight = Tensor(w.astype(dtype), label="weight")
        self.bias = Tensor(b.astype(dtype), label="bias") if bias else None

    def forward(self, x: Any) -> Tensor:
        if not isinstance(x, Tensor):
            # Data arrive in the layer's dtype (ints and float64 data feed a float32 layer).
            x = Tensor(to_array(x).astype(self.weight.dtype, copy=False), requires_grad=False)
        return linear(x, self.weight, self.bias)


class Layer(Linear):
    """The article's layer of `nout` neurons, vectorised: a Linear plus an activation."""

    def __init__(
        self,
        nin: int,
        nout: int,
        activation: str | None = "tanh",
        *,
        init: str | None = None,
        rng: np.random.Generator | None = None,
        dtype: Any = np.float64,
    ) -> None:
        _check_activation(activation)
        if init is None:
            init = "kaiming" if activation == "relu" else "xavier"
        super().__init__(nin, nout, init=init, rng=rng, dtype=dtype)
        self.activation = activation

    def forward(self, x: Any) -> Tensor:
        return _activate(super().forward(x), self.activation)


class Neuron(Layer):
    """The article's neuron: a Layer of one unit whose output drops the unit axis."""

    def __init__(
        self,
        nin: int,
        activation: str | None = "tanh",
        *,
        rng: np.random.Generator | None = None,
        dtype: Any = np.float64,
    ) -> None:
        super().__init__(nin, 1, activation, rng=rng, dtype=dtype)

    def forward(self, x: Any) -> Tensor:
        out = super().forward(x)
        return out.reshape(out.shape[:-1])


class MLP(Module):
    """`MLP(nin, nouts)`: layers of widths `nouts`; hidden layers use `activation`, the last
    `output_activation` (linear if None). `init` (see `Linear`) sets every layer's
    initialisation; None: Kaiming for relu layers, Xavier otherwise. `dropout` p > 0 drops
    each hidden layer's outputs (after the activation) with probability p in training mode
    (`model.train()`, the default) and not in eval mode (`model.eval()`); its masks come from
    the same seeded generator as the weights. Input `(B, nin)` gives
    `(B, nout)`; a single sample `(nin,)` gives `(nout,)`, or a 0-d tensor when `nout == 1`
    (the article's usage)."""

    def __init__(
        self,
        nin: int,
        nouts: list[int],
        activation: str = "tanh",
        output_activation: str | None = None,
        seed: int | None = None,
        dtype: Any = np.float64,
        init: str | None = None,
        dropout: float = 0.0,
    ) -> None:
        if not nouts:
            raise ValueError("MLP needs at least one layer width in nouts")
        _check_activation(activation)
        _check_activation(output_activation)
        rng = np.random.default_rng(seed)
        sizes = [nin, *nouts]
        self.layers = [
            Layer(
                sizes[i],
                sizes[i + 1],
                activation if i < len(nouts) - 1 else output_activation,
                init=init,
                rng=rng,
                dtype=dtype,
            )
            for i in range(len(nouts))
        ]
        # No parameters, so the state_dict keys stay `layers.{i}.*`.
        self.dropout = Dropout(dropout, rng=rng) if dropout else None

    def forward(self, x: Any) -> Tensor:
        if not isinstance(x, Tensor):
            # Data arrive in the model's dtype (ints and float64 data feed a float32 model).
            x = Tensor(np.asarray(x, dtype=self.layers[0].weight.dtype), requires_grad=False)
        single = x.ndim == 1
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if self.dropout is not None and i < last:
                x = self.dropout(x)
        if single and x.shape == (1,):
            x = x.reshape(())
        return x
