"""OUTPUT0 = 2 * INPUT0 (FP32 [batch, 16]): a light per-request step, written as Triton users do.

The same file serves ``batched``, ``batched_delay`` and ``unbatched``; only config.pbtxt differs.
"""

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            output = pb_utils.Tensor("OUTPUT0", data * 2)
            responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
        return responses
