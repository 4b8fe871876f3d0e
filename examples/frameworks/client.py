"""Call the framework example models with the unchanged ``tritonclient`` (HTTP and gRPC).

    python examples/frameworks/build_models.py
    triton-kernel serve --model-repository examples/frameworks/models
    python examples/frameworks/client.py [HTTP_URL] [GRPC_URL]

Each answer is checked against the same network computed with numpy.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_models import mlp_reference

MEAN, STD = 0.5, 0.25  # the preprocess model's parameters (its config.pbtxt)


def run(http_url: str = "localhost:8000", grpc_url: str = "localhost:8001") -> dict[str, float]:
    """Run each model once per protocol; returns the largest error seen against numpy."""
    raw = (np.arange(4 * 64).reshape(4, 64) * 37 % 256).astype(np.uint8)
    features = ((raw / 255 - MEAN) / STD).astype(np.float32)
    worst = {"mlp_onnx": 0.0, "mlp_ensemble": 0.0}
    with httpclient.InferenceServerClient(http_url) as http:
        print("mlp_onnx config inputs:", http.get_model_config("mlp_onnx")["input"])
    for module, url in ((httpclient, http_url), (grpcclient, grpc_url)):
        client = module.InferenceServerClient(url)
        try:
            logits = _infer(client, module, "mlp_onnx", "INPUT", features, "LOGITS")
            worst["mlp_onnx"] = max(worst["mlp_onnx"], _error(logits, mlp_reference(features)))
            scores = _infer(client, module, "mlp_ensemble", "RAW", raw, "SCORES")
            worst["mlp_ensemble"] = max(
                worst["mlp_ensemble"], _error(scores, mlp_reference(features))
            )
            print(f"{module.__name__}: classes {scores.argmax(axis=1).tolist()}")
        finally:
            client.close()
    print("largest difference from numpy:", worst)
    return worst


def _infer(client, module, model: str, name: str, data: np.ndarray, output: str) -> np.ndarray:
    datatype = "UINT8" if data.dtype == np.uint8 else "FP32"
    tensor = module.InferInput(name, list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return client.infer(model, [tensor]).as_numpy(output)


def _error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.max(np.abs(actual - expected)) / max(1.0, float(np.max(np.abs(expected)))))


if __name__ == "__main__":
    run(*sys.argv[1:])
