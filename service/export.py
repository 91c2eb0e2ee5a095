"""Models that leave the service: ONNX, and a self-describing zip bundle.

**ONNX** (`to_onnx`): opset 17 plus `ai.onnx.ml` 3, built with the `onnx` package's helpers; it
needs neither the engine nor this project at inference. It holds everything `/predict`
applies:
- inputs, one per raw column, shape `[N, 1]`: a numeric column as `double` (NaN: missing), a
  categorical one as `string` (`""`: missing). A model trained before typed columns has one
  input, `features`, `double [N, nin]`.
- the fitted preprocessing: imputation (`IsNaN`/`Where` for numbers; for text, the imputed level
  is the `LabelEncoder`'s answer for `""`), standardize / min-max, one-hot (`Equal` of the codes
  against 0..k-1: an unseen level is all zeros) or ordinal (unseen: -1);
- the network (`Gemm` + activation per layer, in the model's dtype);
- the outputs: classifiers give `label` `[N]` (the class labels, in their own type: string,
  int64 or bool) and `probabilities` `[N, k]`; regressors give `prediction` `[N, m]` in the
  target's own units.

**Bundle** (`to_bundle`): a zip with `model.npz` (`core.model`'s file: weights plus
architecture, what `Model.from_bytes` reads), `weights.npz` (the bare `state_dict`),
`model.json` (architecture, preprocessing, classes, columns, metrics, evaluation, the job's spec)
and a README on loading it.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np

from core.model import Model

OPSET = 17
ML_OPSET = 3
FORMATS = ("onnx", "bundle")


class ExportError(ValueError):
    """A model this exporter cannot write faithfully (never a wrong model)."""


def to_onnx(model: Model, name: str = "trainyard") -> bytes:
    """The model as an ONNX file (see the module docstring)."""
    from onnx import TensorProto, checker, helper, numpy_helper

    arch = model.architecture
    dtype = np.dtype(arch.get("dtype") or "float64")
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    nodes: list[Any] = []
    inits: list[Any] = []
    inputs: list[Any] = []
    counter = iter(range(1_000_000))

    def const(value: Any, dt: Any = None) -> str:
        array = np.asarray(value, dtype=dt)
        tname = f"c{next(counter)}"
        if array.dtype.kind in "US":
            tensor = helper.make_tensor(
                tname, TensorProto.STRING, array.shape, [s.encode() for s in array.ravel()]
            )
        else:
            tensor = numpy_helper.from_array(array, tname)
        inits.append(tensor)
        return tname

    def node(op: str, ins: list[str], domain: str = "", **attrs: Any) -> str:
        out = f"t{next(counter)}"
        nodes.append(helper.make_node(op, ins, [out], domain=domain, **attrs))
        return out

    pre = model.preprocessor
    if pre is None:
        inputs.append(
            helper.make_tensor_value_info("features", TensorProto.DOUBLE, ["N", arch["nin"]])
        )
        x = node("Cast", ["features"], to=elem)
    else:
        blocks = []
        missing = pre.config["missing"]
        if missing == "error":
            raise ExportError(
                'a model trained with preprocessing.missing "error" refuses missing cells; '
                "ONNX has no way to raise, so it is not exported"
            )
        for column, kind, step in zip(pre.names, pre.types, pre.steps, strict=True):
            if kind == "numeric":
                inputs.append(helper.make_tensor_value_info(column, TensorProto.DOUBLE, ["N", 1]))
                gap = node("IsNaN", [column])
                filled = node("Where", [gap, const([[step["fill"]]], np.float64), column])
                scaled = node(
                    "Div",
                    [
                        node("Sub", [filled, const([[step["center"]]], np.float64)]),
                        const([[step["scale"]]], np.float64),
                    ],
                )
                blocks.append(node("Cast", [scaled], to=elem))
                continue
            inputs.append(helper.make_tensor_value_info(column, TensorProto.STRING, ["N", 1]))
            levels = list(step["levels"])
            fill = levels.index(step["fill"]) if step.get("fill") in levels else -1
            keys = [*levels, ""]
            codes = node(
                "LabelEncoder",
                [column],
                domain="ai.onnx.ml",
                keys_strings=keys,
                values_int64s=[*range(len(levels)), fill],
                default_int64=-1,
            )
            if step["encoding"] == "onehot":
                hot = node("Equal", [codes, const([list(range(len(levels)))], np.int64)])
                blocks.append(node("Cast", [hot], to=elem))
            else:
                width = max(len(levels) - 1, 1)
                as_float = node("Cast", [codes], to=elem)
                unseen = node("Less", [codes, const([[0]], np.int64)])
                blocks.append(
                    node(
                        "Where",
                        [
                            unseen,
                            const([[-1.0]], dtype),
                            node("Div", [as_float, const([[width]], dtype)]),
                        ],
                    )
                )
        x = blocks[0] if len(blocks) == 1 else node("Concat", blocks, axis=1)

    n_layers = len(arch["layers"])
    for i in range(n_layers):
        weight = model.state[f"layers.{i}.weight"].astype(dtype)
        bias = model.state[f"layers.{i}.bias"].astype(dtype)
        x = node("Gemm", [x, const(weight), const(bias)], transB=1)
        activation = (
            arch.get("activation", "tanh") if i < n_layers - 1 else arch.get("output_activation")
        )
        if activation is not None:
            x = node({"tanh": "Tanh", "relu": "Relu", "sigmoid": "Sigmoid"}[activation], [x])

    outputs = []
    loss = arch["loss"]
    if loss == "mse":
        out = x
        if pre is not None and pre.target_center is not None:
            out = node(
                "Add",
                [
                    node("Mul", [out, const([pre.target_scale], dtype)]),
                    const([pre.target_center], dtype),
                ],
            )
        nodes.append(helper.make_node("Identity", [out], ["prediction"]))
        outputs.append(helper.make_tensor_value_info("prediction", elem, ["N", arch["layers"][-1]]))
    else:
        if loss == "binary_cross_entropy":
            p1 = node("Sigmoid", [x])
            probs = node("Concat", [node("Sub", [const([[1.0]], dtype), p1]), p1], axis=1)
        else:
            probs = node("Softmax", [x], axis=1)
        nodes.append(helper.make_node("Identity", [probs], ["probabilities"]))
        classes = list(arch.get("classes") or [])
        index = node("ArgMax", [probs], axis=1, keepdims=0)
        if all(isinstance(c, bool) for c in classes):
            table, label_type = const(classes, np.bool_), TensorProto.BOOL
        elif all(isinstance(c, int) for c in classes):
            table, label_type = const(classes, np.int64), TensorProto.INT64
        else:
            table, label_type = const([str(c) for c in classes]), TensorProto.STRING
        nodes.append(helper.make_node("Gather", [table, index], ["label"], axis=0))
        outputs.append(helper.make_tensor_value_info("label", label_type, ["N"]))
        outputs.append(helper.make_tensor_value_info("probabilities", elem, ["N", len(classes)]))

    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    onnx_model = helper.make_model(
        graph,
        producer_name="trainyard",
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
    )
    onnx_model.ir_version = 8
    checker.check_model(onnx_model, full_check=True)
    return onnx_model.SerializeToString()


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
    from core.model import weights_to_npz

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
