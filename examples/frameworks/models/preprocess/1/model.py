"""Scale raw 8-bit features to the MLP's inputs: ``(raw / 255 - mean) / std``.

A Triton Python-backend model, unchanged from what tritonserver would run; ``mean`` and
``std`` come from the ``parameters`` of its config.pbtxt.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        self.mean = np.float32(parameters["mean"]["string_value"])
        self.std = np.float32(parameters["std"]["string_value"])

    def execute(self, requests):
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "RAW").as_numpy()
            features = (raw.astype(np.float32) / np.float32(255) - self.mean) / self.std
            tensor = pb_utils.Tensor("FEATURES", features.astype(np.float32))
            responses.append(pb_utils.InferenceResponse([tensor]))
        return responses
