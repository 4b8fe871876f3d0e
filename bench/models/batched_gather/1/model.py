"""OUTPUT0 = 2 * INPUT0 (FP32 [batch, 16]): the ``batched`` model, unchanged, as users write it.

Only config.pbtxt differs (``gather_requests``): under triton-kernel the loop below runs
once per batch, over one request holding every client's rows; under tritonserver, which
has no such option, it runs once per client request, as for ``batched``.
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
