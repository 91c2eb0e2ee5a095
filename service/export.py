"""Models that leave the service: the ONNX file and the zip bundle (`core.export`).

`core.export` builds the model's graph without the `onnx` package (a server dependency, which
`core` does not import); `to_onnx` writes that graph with `onnx`'s helpers and checks it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.export import (
    ML_DOMAIN,
    ML_OPSET,
    OPSET,
    STRING,
    ExportError,
    OnnxGraph,
    onnx_graph,
    to_bundle,
)
from core.model import Model

__all__ = ["FORMATS", "ExportError", "to_bundle", "to_onnx"]

FORMATS = ("onnx", "bundle")


def to_onnx(model: Model, name: str = "trainyard") -> bytes:
    """The model as an ONNX file (`core.export.onnx_graph`), checked by `onnx.checker`."""
    from onnx import checker, helper

    graph = onnx_graph(model)
    onnx_model = helper.make_model(
        _make_graph(graph, name),
        producer_name="trainyard",
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(ML_DOMAIN, ML_OPSET)],
    )
    onnx_model.ir_version = 8
    checker.check_model(onnx_model, full_check=True)
    return onnx_model.SerializeToString()


def _make_graph(graph: OnnxGraph, name: str) -> Any:
    from onnx import helper

    nodes = [
        helper.make_node(
            n.op,
            n.inputs,
            n.outputs,
            **({} if n.domain is None else {"domain": n.domain}),
            **{k: _attr(v) for k, v in n.attrs.items()},
        )
        for n in graph.nodes
    ]
    inits = [_tensor(tname, array) for tname, array in graph.constants.items()]
    inputs = [helper.make_tensor_value_info(v.name, _elem(v.elem), v.shape) for v in graph.inputs]
    outputs = [helper.make_tensor_value_info(v.name, _elem(v.elem), v.shape) for v in graph.outputs]
    return helper.make_graph(nodes, name, inputs, outputs, inits)


def _elem(elem: Any) -> int:
    """ONNX's element type of a NumPy dtype or `STRING`."""
    from onnx import TensorProto, helper

    if isinstance(elem, str) and elem == STRING:
        return TensorProto.STRING
    return helper.np_dtype_to_tensor_dtype(np.dtype(elem))


def _attr(value: Any) -> Any:
    return _elem(value) if isinstance(value, np.dtype) else value


def _tensor(tname: str, array: np.ndarray) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    if array.dtype == object:
        data = [str(s).encode() for s in array.ravel()]
        return helper.make_tensor(tname, TensorProto.STRING, array.shape, data)
    return numpy_helper.from_array(array, tname)
