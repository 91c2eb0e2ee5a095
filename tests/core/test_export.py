"""core.export builds a model's ONNX graph with NumPy only (the `onnx` package writes it, in
the service); its operators come from core.spec's registries."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from core import training
from core.export import STRING, ExportError, onnx_graph
from core.model import Model
from core.spec import ACTIVATION_REGISTRY
from core.table import Table, categorical_column, numeric_column
from tests.support import ROOT


def trained(model_spec: dict, training_spec: dict) -> Model:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2))
    colour = [["red", "blue", None][i % 3] for i in range(40)]
    table = Table([numeric_column("a", x[:, 0]), categorical_column("colour", colour)])
    y = (x[:, 0] > 0).astype(np.int64)
    result = training.train(
        table, y, model_spec, {"epochs": 1, **training_spec},
        target_kind="integers", classes=[0, 1], graph=False,
    )  # fmt: skip
    return Model(result.architecture, result.state_dict)


@pytest.mark.parametrize("activation", sorted(ACTIVATION_REGISTRY))
def test_graph_inputs_outputs_and_activation_ops(activation: str) -> None:
    graph = onnx_graph(trained({"layers": [3, 1], "activation": activation}, {}))
    assert [(v.name, v.elem) for v in graph.inputs] == [("a", np.float64), ("colour", STRING)]
    assert [v.name for v in graph.outputs] == ["label", "probabilities"]
    ops = [n.op for n in graph.nodes]
    assert ops.count("Gemm") == 2 and ACTIVATION_REGISTRY[activation].onnx_op in ops
    assert graph.dtype == np.float32  # the spec's default dtype
    known = {v.name for v in graph.inputs} | set(graph.constants)
    for node in graph.nodes:
        assert set(node.inputs) <= known, node
        known.update(node.outputs)
    assert {v.name for v in graph.outputs} <= known


def test_missing_error_is_not_exported() -> None:
    model = trained({"layers": [1]}, {"preprocessing": {"missing": "impute"}})
    model.preprocessor.config["missing"] = "error"
    with pytest.raises(ExportError):
        onnx_graph(model)


def test_building_a_graph_loads_no_onnx() -> None:
    code = "import sys, core.export\nprint('onnx' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
