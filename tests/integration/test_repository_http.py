"""Repository load over HTTP with Triton's ``config`` and ``file:<path>`` overrides."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .conftest import start_server
from .test_grpc import IDENTITY_PY


def test_http_load_with_config_and_file_overrides(repository: Path, tmp_path: Path) -> None:
    server = start_server(
        repository,
        "--model-control-mode=explicit",
        "--load-model=add_sub",
        log_path=tmp_path / "log",
    )
    try:
        client = httpclient.InferenceServerClient(server.url)
        deadline = time.monotonic() + 30
        while not client.is_server_ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        config = {
            "name": "tripler",
            "backend": "python",
            "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [2]}],
            "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [2]}],
        }
        client.load_model(
            "tripler", config=json.dumps(config), files={"file:1/model.py": IDENTITY_PY}
        )
        tensor = httpclient.InferInput("IN", [2], "FP32")
        tensor.set_data_from_numpy(np.array([1, 2], dtype=np.float32))
        np.testing.assert_array_equal(client.infer("tripler", [tensor]).as_numpy("OUT"), [3, 6])

        override = client.get_model_config("add_sub")
        override["max_batch_size"] = 2
        client.load_model("add_sub", config=json.dumps(override))
        assert client.get_model_config("add_sub")["max_batch_size"] == 2

        url = f"http://{server.url}/v2/repository/models/add_sub/load"
        bad_bodies = [
            (b"{", "failed to parse the request JSON buffer"),
            (b'{"parameters": {"bogus": true}}', "unrecognized load parameter 'bogus'."),
            (b'{"parameters": {"config": 5}}', "Unable to parse 'config'"),
            (b'{"parameters": {"config": "{}", "file:1/model.py": "%%%"}}', "base64"),
        ]
        for body, text in bad_bodies:
            reply = requests.post(url, data=body, timeout=30)
            assert reply.status_code == 400, body
            assert text in reply.json()["error"], body
        with pytest.raises(InferenceServerException):
            client.load_model(
                "escape", config=json.dumps(config), files={"file:../../escape.py": b"x"}
            )
        assert client.is_model_ready("add_sub")  # bad loads disturbed nothing
        client.close()
    finally:
        assert server.stop() == 0, server.log()
