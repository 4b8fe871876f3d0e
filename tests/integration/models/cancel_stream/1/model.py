import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


def record(path, line):
    with open(path, "a") as marker:
        marker.write(line + "\n")


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            path = pb_utils.get_input_tensor_by_name(request, "MARKER").as_numpy()[0].decode()
            seconds = float(pb_utils.get_input_tensor_by_name(request, "SECONDS").as_numpy()[0])
            sender = request.get_response_sender()
            threading.Thread(target=self.stream, args=(sender, path, seconds)).start()
        return None

    def stream(self, sender, path, seconds):
        record(path, "started")
        deadline = time.monotonic() + seconds
        index = 0
        while not sender.is_cancelled() and time.monotonic() < deadline:
            out = np.array([index], dtype=np.int32)
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("INDEX", out)]))
            index += 1
            time.sleep(0.01)
        record(path, "cancelled" if sender.is_cancelled() else "deadline")
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
