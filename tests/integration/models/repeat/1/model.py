import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            count = int(pb_utils.get_input_tensor_by_name(request, "COUNT").as_numpy()[0])
            delay = pb_utils.get_input_tensor_by_name(request, "DELAY")
            seconds = float(delay.as_numpy()[0]) if delay is not None else 0.0
            sender = request.get_response_sender()
            # Respond from a thread after execute returns, as decoupled models may.
            threading.Thread(target=self.respond, args=(sender, count, seconds)).start()
        return None

    def respond(self, sender, count, seconds):
        if count < 0:
            error = pb_utils.TritonError("negative count", pb_utils.TritonError.INVALID_ARG)
            sender.send(pb_utils.InferenceResponse(error=error))
        for index in range(max(count, 0)):
            if sender.is_cancelled():
                break
            time.sleep(seconds)
            out = np.array([index], dtype=np.int32)
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out)]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
