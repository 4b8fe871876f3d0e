"""A running sum per sequence: START resets it, END forgets it."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            value = int(pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy().sum())
            start = pb_utils.get_input_tensor_by_name(request, "START").as_numpy().any()
            end = pb_utils.get_input_tensor_by_name(request, "END").as_numpy().any()
            corrid = int(pb_utils.get_input_tensor_by_name(request, "CORRID").as_numpy().flat[0])
            total = value if start else self.sums.get(corrid, 0) + value
            if end:
                self.sums.pop(corrid, None)
            else:
                self.sums[corrid] = total
            out = pb_utils.Tensor("OUTPUT", np.array([[total]], dtype=np.int32))
            responses.append(pb_utils.InferenceResponse([out]))
        return responses
