"""A tiny linear classifier over 4 features: softmax scores for 3 classes.

Ask for ``classification`` on SCORES to get the top classes with their labels.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

WEIGHTS = np.array(
    [[0.4, -0.3, -0.1], [0.9, 0.1, -1.0], [-1.6, 0.2, 1.4], [-0.7, -0.2, 0.9]],
    dtype=np.float32,
)


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            features = pb_utils.get_input_tensor_by_name(request, "FEATURES").as_numpy()
            logits = features @ WEIGHTS
            exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
            scores = (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("SCORES", scores)]))
        return responses
