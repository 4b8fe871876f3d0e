"""Build the ONNX models of the framework example repository (no download, no randomness).

    python examples/frameworks/build_models.py [MODEL_REPOSITORY]

writes ``mlp_onnx/1/model.onnx`` (a 3-layer MLP made with the ``onnx`` helper API) into
the repository (default: ``models/`` next to this script) and creates the version
folder of the ``mlp_ensemble`` ensemble. The weights follow a fixed formula, so
:func:`mlp_reference` computes the same answer with numpy anywhere.
Needs the ``onnx`` package (building only; serving needs ``onnxruntime``).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np

MODELS = Path(__file__).resolve().parent / "models"
#: The MLP's layer widths: 64 features -> 256 -> 256 -> 10 classes.
LAYERS = (64, 256, 256, 10)
#: ONNX opset and IR version: old enough for the onnxruntime of a JetPack 6 box.
OPSET = 17
IR_VERSION = 8


def mlp_weights(layers: tuple[int, ...] = LAYERS) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight [in, out], bias [out]) per layer, from integer arithmetic: bit-identical anywhere."""
    weights = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(layers)):
        i = np.arange(fan_in, dtype=np.int64)[:, None]
        j = np.arange(fan_out, dtype=np.int64)[None, :]
        cells = ((i * 7 + j * 13 + index * 5) % 17 - 8).astype(np.float32)
        weight = cells / np.float32(4 * np.sqrt(fan_in))
        bias = ((np.arange(fan_out) * 3 + index) % 5 - 2).astype(np.float32) / np.float32(10)
        weights.append((weight, bias))
    return weights


def mlp_reference(features: np.ndarray, layers: tuple[int, ...] = LAYERS) -> np.ndarray:
    """The MLP in numpy: what the server must answer (within float32 rounding)."""
    x = features.astype(np.float32)
    weights = mlp_weights(layers)
    for index, (weight, bias) in enumerate(weights):
        x = x @ weight + bias
        if index < len(weights) - 1:
            x = np.maximum(x, 0)
    return x


def mlp_model(layers: tuple[int, ...] = LAYERS, *, input_name: str = "INPUT") -> object:
    """The MLP as an ``onnx.ModelProto``: ``INPUT`` [batch, 64] FP32 -> ``LOGITS`` [batch, 10]."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers, previous = [], [], input_name
    weights = mlp_weights(layers)
    for index, (weight, bias) in enumerate(weights):
        last = index == len(weights) - 1
        out = "LOGITS" if last else f"hidden{index}"
        initializers += [
            numpy_helper.from_array(weight, f"w{index}"),
            numpy_helper.from_array(bias, f"b{index}"),
        ]
        gemm_out = out if last else f"gemm{index}"
        nodes.append(helper.make_node("Gemm", [previous, f"w{index}", f"b{index}"], [gemm_out]))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        previous = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", layers[0]])],
        [helper.make_tensor_value_info("LOGITS", TensorProto.FLOAT, ["batch", layers[-1]])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def save(model: object, path: Path, *, external_data: bool = False) -> Path:
    """Write ``model``; with ``external_data`` as Triton's folder form: ``path/model.onnx``
    beside a ``weights.bin`` holding the initializers."""
    import onnx

    if external_data:
        path.mkdir(parents=True, exist_ok=True)
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # saving with external data rewrites the initializers it is given
        onnx.save_model(
            copy,
            str(path / "model.onnx"),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="weights.bin",
            size_threshold=0,
        )
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def build(repository: Path = MODELS) -> list[Path]:
    """Build every ONNX model of the example repository; returns the files written."""
    written = [save(mlp_model(), repository / "mlp_onnx" / "1" / "model.onnx")]
    (repository / "mlp_ensemble" / "1").mkdir(parents=True, exist_ok=True)  # ensembles need one
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else MODELS
    for path in build(target):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
