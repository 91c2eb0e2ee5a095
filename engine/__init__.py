"""trainyard's autograd engine: N-dimensional tensors with reverse-mode gradients, a small
neural-network library (`engine.nn`), optimizers (`engine.optim`) and graph pictures
(`engine.viz`). Imports only NumPy and graphviz."""

from engine import nn, optim, viz
from engine.functions import concat, maximum, minimum, result_dtype, stack, where
from engine.gradcheck import GradcheckError, gradcheck
from engine.tensor import Tensor, Value, is_grad_enabled, no_grad, unbroadcast

__all__ = [
    "GradcheckError",
    "Tensor",
    "Value",
    "concat",
    "gradcheck",
    "is_grad_enabled",
    "maximum",
    "minimum",
    "nn",
    "no_grad",
    "optim",
    "result_dtype",
    "stack",
    "unbroadcast",
    "viz",
    "where",
]
