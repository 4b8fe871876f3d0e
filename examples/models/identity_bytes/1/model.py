"""Returns its BYTES input unchanged (strings of any length, any number of them)."""

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("OUTPUT0", request.inputs()[0].as_numpy())]
            )
            for request in requests
        ]
