import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.args = args

    def execute(self, requests):
        responses = []
        for request in requests:
            report = {
                "args": self.args,
                "request_id": request.request_id(),
                "parameters": json.loads(request.parameters()),
                "correlation_id": request.correlation_id(),
                "flags": request.flags(),
                "requested_output_names": request.requested_output_names(),
                "input_shape": list(request.inputs()[0].as_numpy().shape),
            }
            data = np.array([json.dumps(report).encode()], dtype=np.object_)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("ARGS", data)],
                    parameters={"echo": "yes", "count": 1},
                )
            )
        return responses
