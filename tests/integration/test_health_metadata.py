"""Health, server and model metadata, model configuration: as tritonclient reads them."""

from __future__ import annotations

import pytest
import requests
from tritonclient.utils import InferenceServerException


def test_live_and_ready(client):
    assert client.is_server_live()
    assert client.is_server_ready()


def test_server_metadata(client):
    metadata = client.get_server_metadata()
    assert metadata["name"] == "triton"
    assert "binary_tensor_data" in metadata["extensions"]
    assert "classification" in metadata["extensions"]
    assert "model_configuration" in metadata["extensions"]


def test_model_ready(client):
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("add_sub", "1")
    assert not client.is_model_ready("add_sub", "7")
    assert not client.is_model_ready("no_such_model")


def test_model_metadata_batched(client):
    metadata = client.get_model_metadata("add_sub")
    assert metadata == {
        "name": "add_sub",
        "versions": ["1"],
        "platform": "python",
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "INPUT1", "datatype": "FP32", "shape": [-1, 4]},
        ],
        "outputs": [
            {"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "OUTPUT1", "datatype": "FP32", "shape": [-1, 4]},
        ],
    }


def test_model_metadata_unbatched_bytes(client):
    metadata = client.get_model_metadata("raiser")
    assert metadata["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [1]}]


def test_model_metadata_versions_follow_policy(client):
    metadata = client.get_model_metadata("versioned")
    assert metadata["versions"] == ["1", "3"]
    assert client.is_model_ready("versioned", "3")
    assert not client.is_model_ready("versioned", "2")


def test_unknown_model_metadata(client):
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("no_such_model")
    assert "Request for unknown model: 'no_such_model' is not found" in info.value.message()
    assert info.value.status() == "404"


def test_unknown_version_metadata(client):
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("add_sub", "7")
    assert "Request for unknown model: 'add_sub' version 7 is not found" in info.value.message()


def test_model_config_has_tritons_shape(client):
    config = client.get_model_config("add_sub")
    assert config["name"] == "add_sub"
    assert config["backend"] == "python"
    assert config["max_batch_size"] == 8
    assert config["input"][0]["dims"] == [4]
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    groups = config["instance_group"]
    assert [(g["name"], g["kind"], g["count"]) for g in groups] == [("add_sub_0", "KIND_CPU", 2)]


def test_auto_completed_config(client):
    config = client.get_model_config("auto_complete")
    assert config["max_batch_size"] == 4
    assert config["input"][0]["name"] == "X"
    assert config["output"][0]["dims"] == [2]


def test_unknown_route_is_404_json(url):
    reply = requests.get(f"{url}/v2/foo")
    assert reply.status_code == 404
    assert reply.json() == {"error": "Not Found"}


def test_wrong_method(url):
    reply = requests.get(f"{url}/v2/models/add_sub/infer")
    assert reply.status_code in (404, 405)
    assert "error" in reply.json()
