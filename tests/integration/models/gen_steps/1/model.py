import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            for step in pb_utils.get_input_tensor_by_name(request, "STEPS").as_numpy():
                sender.send(self.answer(int(step)))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    def answer(self, step):
        if step < 0:
            error = pb_utils.TritonError(f"step {step} failed", pb_utils.TritonError.UNAVAILABLE)
            return pb_utils.InferenceResponse(error=error)
        value = np.array([step], dtype=np.int32)
        return pb_utils.InferenceResponse([pb_utils.Tensor("VALUE", value)])
