"""LENGTH[i] = the byte length of TEXT[i] (BYTES in, INT64 out)."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            lengths = np.array([len(item) for item in text.reshape(-1)], dtype=np.int64)
            out = pb_utils.Tensor("LENGTH", lengths.reshape(text.shape))
            responses.append(pb_utils.InferenceResponse([out]))
        return responses
