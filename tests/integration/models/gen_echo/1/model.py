import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [self.answer(request) for request in requests]

    def answer(self, request):
        text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
        numbers = pb_utils.get_input_tensor_by_name(request, "NUMBERS")
        numbers = numbers.as_numpy() if numbers is not None else np.zeros(0, np.float32)
        report = {
            "id": request.request_id(),
            "parameters": json.loads(request.parameters()),
            "inputs": {
                t.name(): [str(t.as_numpy().dtype), list(t.as_numpy().shape)]
                for t in request.inputs()
            },
        }
        outputs = [
            pb_utils.Tensor("TEXT_OUT", text.reshape(-1)[:1]),
            pb_utils.Tensor("NUMBERS_OUT", numbers.reshape(-1).astype(np.float32)),
            pb_utils.Tensor("REQUEST", np.array([json.dumps(report).encode()], dtype=np.object_)),
        ]
        parameters = {"greeting": "hi", "answer": 42, "ready": True}
        try:
            return pb_utils.InferenceResponse(outputs, parameters=parameters)
        except TypeError:  # Triton 2.51's Python backend has no response parameters
            return pb_utils.InferenceResponse(outputs)
