"""A trained model as a framework-free ONNX graph description, and as a zip bundle.

`onnx_graph(model)` turns a `core.model.Model` into an `OnnxGraph`: nodes (operator, inputs,
outputs, attributes), constants as NumPy arrays, and the graph's typed inputs and outputs.
It holds everything `/predict` applies (opset 17 plus `ai.onnx.ml` 3):
- inputs, one per raw column, shape `[N, 1]`: a numeric column as `double` (NaN: missing), a
  categorical one as `string` (`""`: missing). A model trained before typed columns has one
  input, `features`, `double [N, nin]`.
- the fitted preprocessing: imputation (`IsNaN`/`Where` for numbers; for text, the imputed level
  is the `LabelEncoder`'s answer for `""`), standardize / min-max, one-hot (`Equal` of the codes
  against 0..k-1: an unseen level is all zeros) or ordinal (unseen: -1);
- the network (`Gemm` + activation per layer, in the model's dtype; each activation's operator
  from `core.spec.ACTIVATION_REGISTRY`);
- the outputs: classifiers give `label` `[N]` (the class labels, in their own type: string,
  int64 or bool) and `probabilities` `[N, k]`; regressors give `prediction` `[N, m]` in the
  target's own units.

Writing it as an ONNX file takes the `onnx` package, a server dependency
(`service.export.to_onnx`); this module needs NumPy only, as the rest of `core`.

`to_bundle`: a zip with `model.npz` (`core.model`'s file: weights plus architecture, what
`Model.from_bytes` reads), `weights.npz` (the bare `state_dict`), `model.json` (architecture,
preprocessing, classes, columns, metrics, evaluation, the job's spec) and a README.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.model import Model, model_dtype, weights_to_npz
from core.spec import ACTIVATION_REGISTRY, MODEL_DEFAULTS

OPSET = 17
ML_OPSET = 3
ML_DOMAIN = "ai.onnx.ml"
#: a graph value's type: a NumPy dtype, or "string"
STRING = "string"


class ExportError(ValueError):
    """A model this exporter cannot write faithfully (never a wrong model)."""


@dataclass
class OnnxNode:
    """An operator; `domain` None: the default domain, left unnamed."""

    op: str
    inputs: list[str]
    outputs: list[str]
    domain: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class OnnxValue:
    """A graph input or output: name, element type (`np.dtype` or `STRING`), shape."""

    name: str
    elem: Any
    shape: list[Any]


@dataclass
class OnnxGraph:
    """What an ONNX file holds, without the `onnx` package: build it with `node`/`const`."""

    dtype: np.dtype
    nodes: list[OnnxNode] = field(default_factory=list)
    #: name -> array (a string constant: an array of Python `str`, dtype object)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    inputs: list[OnnxValue] = field(default_factory=list)
    outputs: list[OnnxValue] = field(default_factory=list)
    _count: int = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count - 1}"

    def const(self, value: Any, dtype: Any = None) -> str:
        """A constant (strings stay strings); its name."""
        array = np.asarray(value, dtype=dtype)
        if array.dtype.kind in "US":
            array = array.astype(object)
        name = self._name("c")
        self.constants[name] = array
        return name

    def node(self, op: str, inputs: list[str], domain: str = "", **attrs: Any) -> str:
        """An operator with one output; the output's name."""
        out = self._name("t")
        self.nodes.append(OnnxNode(op, inputs, [out], domain, attrs))
        return out

    def output(self, name: str, source: str, elem: Any, shape: list[Any]) -> None:
        """Expose `source` as the graph output `name`."""
        self.nodes.append(OnnxNode("Identity", [source], [name]))
        self.outputs.append(OnnxValue(name, elem, shape))


def onnx_graph(model: Model) -> OnnxGraph:
    """The model's ONNX graph (see the module docstring); `ExportError` if it cannot be
    written faithfully."""
    graph = OnnxGraph(dtype=model_dtype(model.architecture))
    x = _inputs(graph, model)
    x = _network(graph, model, x)
    _outputs(graph, model, x)
    return graph


def _inputs(graph: OnnxGraph, model: Model) -> str:
    """The graph's inputs and the preprocessing: the network's input, in its dtype."""
    pre = model.preprocessor
    if pre is None:
        graph.inputs.append(
            OnnxValue("features", np.dtype(np.float64), ["N", model.architecture["nin"]])
        )
        return graph.node("Cast", ["features"], to=graph.dtype)
    if pre.config["missing"] == "error":
        raise ExportError(
            'a model trained with preprocessing.missing "error" refuses missing cells; '
            "ONNX has no way to raise, so it is not exported"
        )
    blocks = [
        _numeric_column(graph, column, step)
        if kind == "numeric"
        else _categorical_column(graph, column, step)
        for column, kind, step in zip(pre.names, pre.types, pre.steps, strict=True)
    ]
    return blocks[0] if len(blocks) == 1 else graph.node("Concat", blocks, axis=1)


def _numeric_column(graph: OnnxGraph, column: str, step: dict[str, Any]) -> str:
    """A numeric input: missing cells imputed, then centred and scaled."""
    graph.inputs.append(OnnxValue(column, np.dtype(np.float64), ["N", 1]))
    gap = graph.node("IsNaN", [column])
    filled = graph.node("Where", [gap, graph.const([[step["fill"]]], np.float64), column])
    centred = graph.node("Sub", [filled, graph.const([[step["center"]]], np.float64)])
    scaled = graph.node("Div", [centred, graph.const([[step["scale"]]], np.float64)])
    return graph.node("Cast", [scaled], to=graph.dtype)


def _categorical_column(graph: OnnxGraph, column: str, step: dict[str, Any]) -> str:
    """A text input: its level's code (missing: the imputed level's; unseen: -1), one-hot
    or ordinal."""
    graph.inputs.append(OnnxValue(column, STRING, ["N", 1]))
    levels = list(step["levels"])
    fill = levels.index(step["fill"]) if step.get("fill") in levels else -1
    codes = graph.node(
        "LabelEncoder",
        [column],
        domain=ML_DOMAIN,
        keys_strings=[*levels, ""],
        values_int64s=[*range(len(levels)), fill],
        default_int64=-1,
    )
    if step["encoding"] == "onehot":
        hot = graph.node("Equal", [codes, graph.const([list(range(len(levels)))], np.int64)])
        return graph.node("Cast", [hot], to=graph.dtype)
    width = max(len(levels) - 1, 1)
    as_float = graph.node("Cast", [codes], to=graph.dtype)
    unseen = graph.node("Less", [codes, graph.const([[0]], np.int64)])
    minus_one = graph.const([[-1.0]], graph.dtype)
    scaled = graph.node("Div", [as_float, graph.const([[width]], graph.dtype)])
    return graph.node("Where", [unseen, minus_one, scaled])


def _network(graph: OnnxGraph, model: Model, x: str) -> str:
    """`Gemm` and activation per layer (the last one's: `output_activation`)."""
    arch = model.architecture
    n_layers = len(arch["layers"])
    for i in range(n_layers):
        weight = model.state[f"layers.{i}.weight"].astype(graph.dtype)
        bias = model.state[f"layers.{i}.bias"].astype(graph.dtype)
        x = graph.node("Gemm", [x, graph.const(weight), graph.const(bias)], transB=1)
        if i < n_layers - 1:
            activation = arch.get("activation", MODEL_DEFAULTS["activation"])
        else:
            activation = arch.get("output_activation")
        if activation is not None:
            x = graph.node(ACTIVATION_REGISTRY[activation].onnx_op, [x])
    return x


def _outputs(graph: OnnxGraph, model: Model, x: str) -> None:
    """`prediction` (regression, in the target's units) or `label` and `probabilities`."""
    arch = model.architecture
    pre = model.preprocessor
    if arch["loss"] == "mse":
        out = x
        if pre is not None and pre.target_center is not None:
            scaled = graph.node("Mul", [out, graph.const([pre.target_scale], graph.dtype)])
            out = graph.node("Add", [scaled, graph.const([pre.target_center], graph.dtype)])
        graph.output("prediction", out, graph.dtype, ["N", arch["layers"][-1]])
        return
    if arch["loss"] == "binary_cross_entropy":
        p1 = graph.node("Sigmoid", [x])
        p0 = graph.node("Sub", [graph.const([[1.0]], graph.dtype), p1])
        probs = graph.node("Concat", [p0, p1], axis=1)
    else:
        probs = graph.node("Softmax", [x], axis=1)
    classes = list(arch.get("classes") or [])
    graph.output("probabilities", probs, graph.dtype, ["N", len(classes)])
    index = graph.node("ArgMax", [probs], axis=1, keepdims=0)
    if all(isinstance(c, bool) for c in classes):
        table, label_type = graph.const(classes, np.bool_), np.dtype(np.bool_)
    elif all(isinstance(c, int) for c in classes):
        table, label_type = graph.const(classes, np.int64), np.dtype(np.int64)
    else:
        table, label_type = graph.const([str(c) for c in classes]), STRING
    graph.nodes.append(OnnxNode("Gather", [table, index], ["label"], attrs={"axis": 0}))
    graph.outputs.insert(0, OnnxValue("label", label_type, ["N"]))


BUNDLE_README = """# A trainyard model

- `model.npz`: weights and architecture in one file (`__model__.json` inside). With this
  project's `core` package (NumPy only):

      from pathlib import Path
      from core.model import Model
      model = Model.from_bytes(Path("model.npz").read_bytes())
      model.predict([{"column": value, ...}])   # raw rows; preprocessing applied

- `weights.npz`: the network's bare `state_dict` (`layers.{i}.weight` of shape (nout, nin),
  `layers.{i}.bias`); it takes the preprocessed inputs described in `model.json`.
- `model.json`: the architecture, the fitted preprocessing (per column: imputed value, centre
  and scale, or levels), the classes, the input columns, the metrics and the job's spec.
- The same model as ONNX (no Python needed): `GET /api/v1/models/{id}/export?format=onnx`,
  then `onnxruntime.InferenceSession(path).run(None, {column: array of shape [N, 1]})`.
"""


def to_bundle(model: Model, info: dict[str, Any]) -> bytes:
    """The zip bundle (see the module docstring); `info` adds metrics, evaluation and spec."""
    description = {
        "architecture": model.architecture,
        "columns": model.columns,
        "classes": model.architecture.get("classes"),
        **info,
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.npz", model.to_bytes())
        archive.writestr("weights.npz", weights_to_npz(model.state))
        archive.writestr("model.json", json.dumps(description, indent=2, default=str))
        archive.writestr("README.md", BUNDLE_README)
    return buf.getvalue()
