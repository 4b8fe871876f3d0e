"""Call the example models with the unchanged tritonclient.http (``triton-kernel serve`` first)."""

from __future__ import annotations

import sys

import numpy as np
import tritonclient.http as httpclient


def main(url: str = "localhost:8000") -> None:
    client = httpclient.InferenceServerClient(url)
    print("ready:", client.is_server_ready())

    a = np.array([[1, 2, 3, 4]], dtype=np.float32)
    b = np.array([[1, 1, 1, 1]], dtype=np.float32)
    inputs = [
        httpclient.InferInput("INPUT0", list(a.shape), "FP32"),
        httpclient.InferInput("INPUT1", list(b.shape), "FP32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b, binary_data=True)
    result = client.infer("add_sub", inputs)
    print("add_sub:", result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1"))

    words = np.array([[b"hello", b"triton"]], dtype=np.object_)
    text = httpclient.InferInput("INPUT0", list(words.shape), "BYTES")
    text.set_data_from_numpy(words)
    print("identity_bytes:", client.infer("identity_bytes", [text]).as_numpy("OUTPUT0"))

    features = httpclient.InferInput("FEATURES", [1, 4], "FP32")
    features.set_data_from_numpy(np.array([[6.7, 3.0, 5.2, 2.3]], dtype=np.float32))
    top2 = [httpclient.InferRequestedOutput("SCORES", class_count=2)]
    print("classifier:", client.infer("classifier", [features], outputs=top2).as_numpy("SCORES"))


if __name__ == "__main__":
    main(*sys.argv[1:])
