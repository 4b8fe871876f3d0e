import time

import numpy as np
import triton_python_backend_utils as pb_utils


def record(path, line):
    with open(path, "a") as marker:
        marker.write(line + "\n")


class TritonPythonModel:
    def execute(self, requests):
        return [self.watch(request) for request in requests]

    def watch(self, request):
        path = pb_utils.get_input_tensor_by_name(request, "MARKER").as_numpy()[0].decode()
        seconds = float(pb_utils.get_input_tensor_by_name(request, "SECONDS").as_numpy()[0])
        record(path, "started")
        deadline = time.monotonic() + seconds
        while not request.is_cancelled() and time.monotonic() < deadline:
            time.sleep(0.01)
        outcome = "cancelled" if request.is_cancelled() else "deadline"
        record(path, outcome)
        out = np.array([outcome.encode()], dtype=np.object_)
        return pb_utils.InferenceResponse([pb_utils.Tensor("OUTCOME", out)])
