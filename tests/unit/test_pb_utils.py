"""``triton_python_backend_utils`` (pb_utils) as Triton's Python models use it."""

from __future__ import annotations

import copy
import json
import logging
import struct
import sys
from typing import Any

import numpy as np
import pytest

from triton_kernel.kernel.config import config_to_json, parse_config_text
from triton_kernel.kernel.errors import ErrorCode, KernelError
from triton_kernel.plugins.backends.python import triton_python_backend_utils as pb_utils

# --- module --------------------------------------------------------------------------

#: What a strict xfail raises when ``pytest.raises`` sees no exception.
_DID_NOT_RAISE = pytest.fail.Exception


def test_reachable_by_tritons_import_name() -> None:
    assert sys.modules["triton_python_backend_utils"] is pb_utils


def test_constants_match_triton() -> None:
    assert pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL == 1
    assert pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START == 1
    assert pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END == 2
    assert pb_utils.TRITONSERVER_REQUEST_RELEASE_ALL == 1
    assert pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE == 2


# --- datatypes -------------------------------------------------------------------------

TYPES = [
    ("TYPE_BOOL", 1, np.bool_),
    ("TYPE_UINT8", 2, np.uint8),
    ("TYPE_UINT16", 3, np.uint16),
    ("TYPE_UINT32", 4, np.uint32),
    ("TYPE_UINT64", 5, np.uint64),
    ("TYPE_INT8", 6, np.int8),
    ("TYPE_INT16", 7, np.int16),
    ("TYPE_INT32", 8, np.int32),
    ("TYPE_INT64", 9, np.int64),
    ("TYPE_FP16", 10, np.float16),
    ("TYPE_FP32", 11, np.float32),
    ("TYPE_FP64", 12, np.float64),
    ("TYPE_STRING", 13, np.object_),
]


@pytest.mark.parametrize(("name", "number", "numpy_type"), TYPES)
def test_type_conversions(name: str, number: int, numpy_type: type) -> None:
    assert np.dtype(pb_utils.triton_string_to_numpy(name)) == np.dtype(numpy_type)
    assert pb_utils.triton_to_numpy_type(number) is numpy_type
    assert pb_utils.numpy_to_triton_type(numpy_type) == number
    assert pb_utils.numpy_to_triton_type(np.dtype(numpy_type)) == number


def test_numpy_to_triton_type_of_strings_and_unknown_types() -> None:
    assert pb_utils.numpy_to_triton_type(np.bytes_) == 13
    assert pb_utils.numpy_to_triton_type(np.str_) == 13
    assert pb_utils.numpy_to_triton_type(bool) == 1
    assert pb_utils.numpy_to_triton_type(np.complex64) is None


def test_model_code_builds_arrays_from_config_types() -> None:
    # The way Triton's examples use it: the output dtype from the model configuration.
    config = {"output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [2]}]}
    output_config = pb_utils.get_output_config_by_name(config, "OUT")
    dtype = pb_utils.triton_string_to_numpy(output_config["data_type"])
    assert np.zeros(2, dtype=dtype).dtype == np.float32


def test_unknown_type_names_raise_key_error() -> None:
    with pytest.raises(KeyError):
        pb_utils.triton_string_to_numpy("TYPE_NOPE")
    with pytest.raises(KeyError):
        pb_utils.triton_to_numpy_type(99)


# --- BYTES serialization ---------------------------------------------------------------


def test_serialize_byte_tensor_layout() -> None:
    array = np.array([[b"ab"], [b""]], dtype=np.object_)
    encoded = pb_utils.serialize_byte_tensor(array)
    assert bytes(encoded) == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0)


def test_serialize_byte_tensor_encodes_str_and_other_objects_as_utf8() -> None:
    array = np.array(["é", 12, b"\xff"], dtype=np.object_)
    assert pb_utils.deserialize_bytes_tensor(pb_utils.serialize_byte_tensor(array)).tolist() == [
        "é".encode(),
        b"12",
        b"\xff",
    ]


@pytest.mark.parametrize(
    "items", [[b"hello", b"", b"world"], [b""], [bytes(range(256)), b"\x00\x00"]]
)
def test_byte_tensor_round_trip(items: list[bytes]) -> None:
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    encoded = pb_utils.serialize_byte_tensor(array)
    decoded = pb_utils.deserialize_bytes_tensor(encoded)
    assert decoded.dtype == np.object_
    assert decoded.tolist() == items
    assert pb_utils.deserialize_bytes_tensor(bytes(encoded)).tolist() == items


def test_deserialize_bytes_tensor_of_nothing() -> None:
    assert pb_utils.deserialize_bytes_tensor(b"").tolist() == []


@pytest.mark.xfail(
    reason="triton_python_backend_utils.py deserialize_bytes_tensor silently returns a "
    "short element when a length prefix runs past the data (Triton raises struct.error)",
    raises=_DID_NOT_RAISE,
    strict=True,
)
def test_deserialize_bytes_tensor_rejects_truncated_data() -> None:
    with pytest.raises(struct.error):
        pb_utils.deserialize_bytes_tensor(struct.pack("<I", 5) + b"ab")


# --- errors ------------------------------------------------------------------------------


def test_triton_error_codes_match_triton() -> None:
    codes = {
        "UNKNOWN": 0,
        "INTERNAL": 1,
        "NOT_FOUND": 2,
        "INVALID_ARG": 3,
        "UNAVAILABLE": 4,
        "UNSUPPORTED": 5,
        "ALREADY_EXISTS": 6,
        "CANCELLED": 7,
    }
    for name, number in codes.items():
        assert getattr(pb_utils.TritonError, name) == number
    assert {v: k for k, v in codes.items()} == pb_utils.TritonError.CODE_NAMES


def test_triton_error_code_names_are_kernel_codes() -> None:
    for number, name in pb_utils.TritonError.CODE_NAMES.items():
        error = KernelError.from_code(name, "message")
        assert error.code is ErrorCode(name)
        assert pb_utils.TritonError("m", number).code() == number


def test_triton_error_accessors() -> None:
    error = pb_utils.TritonError("model failed")
    assert error.message() == "model failed"
    assert error.code() == pb_utils.TritonError.INTERNAL
    invalid = pb_utils.TritonError("bad input", pb_utils.TritonError.INVALID_ARG)
    assert invalid.code() == 3
    invalid = pb_utils.TritonError("bad input", code=pb_utils.TritonError.NOT_FOUND)
    assert invalid.code() == 2
    assert str(invalid) == "bad input"


# --- tensors -------------------------------------------------------------------------------


def test_tensor_accessors() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = pb_utils.Tensor("OUTPUT0", array)
    assert tensor.name() == "OUTPUT0"
    assert tensor.as_numpy() is array
    assert tensor.shape() == [2, 3]
    assert tensor.triton_dtype() == 11
    assert tensor.is_cpu() is True
    assert "OUTPUT0" in repr(tensor)


def test_tensor_of_strings_becomes_an_object_array() -> None:
    tensor = pb_utils.Tensor("S", np.array([b"a", b"bc"]))
    assert tensor.as_numpy().dtype == np.object_
    assert tensor.as_numpy().tolist() == [b"a", b"bc"]
    assert tensor.triton_dtype() == 13
    assert pb_utils.Tensor("U", np.array(["x"])).triton_dtype() == 13


def test_tensor_needs_a_numpy_array() -> None:
    with pytest.raises(pb_utils.TritonModelException, match="data must be a numpy array"):
        pb_utils.Tensor("X", [1, 2, 3])


def test_tensor_dlpack_from_an_object_implementing_dlpack() -> None:
    array = np.arange(4, dtype=np.int32)
    tensor = pb_utils.Tensor.from_dlpack("X", array)
    assert tensor.name() == "X"
    np.testing.assert_array_equal(tensor.as_numpy(), array)
    assert np.shares_memory(tensor.as_numpy(), array)


def test_tensor_from_a_dlpack_capsule() -> None:
    tensor = pb_utils.Tensor("X", np.arange(4, dtype=np.float32))
    copy = pb_utils.Tensor.from_dlpack("Y", tensor.to_dlpack())
    np.testing.assert_array_equal(copy.as_numpy(), tensor.as_numpy())


def test_tensor_implements_the_dlpack_protocol() -> None:
    tensor = pb_utils.Tensor("X", np.arange(4, dtype=np.float32))
    np.testing.assert_array_equal(np.from_dlpack(tensor), tensor.as_numpy())


# --- requests and responses --------------------------------------------------------------


def _request(**kwargs: Any) -> pb_utils.InferenceRequest:
    inputs = [
        pb_utils.Tensor("INPUT0", np.ones(3, np.float32)),
        pb_utils.Tensor("INPUT1", np.zeros(3, np.int32)),
    ]
    return pb_utils.InferenceRequest(
        request_id="req-1",
        correlation_id=17,
        inputs=inputs,
        requested_output_names=["OUTPUT0"],
        model_name="add_sub",
        model_version=2,
        flags=pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START,
        timeout=1000,
        **kwargs,
    )


def test_inference_request_accessors() -> None:
    request = _request(parameters={"key": "value", "n": 3})
    assert [t.name() for t in request.inputs()] == ["INPUT0", "INPUT1"]
    assert request.request_id() == "req-1"
    assert request.correlation_id() == 17
    assert request.requested_output_names() == ["OUTPUT0"]
    assert request.model_name() == "add_sub"
    assert request.model_version() == 2
    assert request.flags() == 1
    assert request.timeout() == 1000
    assert isinstance(request.parameters(), str)
    assert json.loads(request.parameters()) == {"key": "value", "n": 3}
    assert request.is_cancelled() is False


def test_inference_request_defaults() -> None:
    request = pb_utils.InferenceRequest(inputs=[], requested_output_names=[], model_name="m")
    assert request.request_id() == ""
    assert request.correlation_id() == 0
    assert request.model_version() == -1
    assert request.flags() == 0
    assert request.parameters() == "{}"


def test_inference_request_parameters_given_as_json_text() -> None:
    assert _request(parameters='{"a": 1}').parameters() == '{"a": 1}'


def test_string_correlation_id() -> None:
    request = pb_utils.InferenceRequest(correlation_id="seq-a", inputs=[])
    assert request.correlation_id() == "seq-a"


def test_input_lookup_by_name() -> None:
    request = _request()
    found = pb_utils.get_input_tensor_by_name(request, "INPUT1")
    assert found is not None
    assert found.name() == "INPUT1"
    assert found.as_numpy().dtype == np.int32
    assert request.get_input_tensor_by_name("INPUT0") is request.inputs()[0]
    assert pb_utils.get_input_tensor_by_name(request, "MISSING") is None


def test_response_sender_only_for_decoupled_models() -> None:
    with pytest.raises(pb_utils.TritonModelException, match="decoupled"):
        _request().get_response_sender()


def test_bls_outside_a_worker_execute_is_refused_with_tritons_text() -> None:
    with pytest.raises(
        pb_utils.TritonModelException, match="BLS is only supported during the 'execute'"
    ):
        _request().exec()


def test_inference_response_with_outputs() -> None:
    out = pb_utils.Tensor("OUTPUT0", np.array([1.0], np.float32))
    response = pb_utils.InferenceResponse(output_tensors=[out], parameters={"p": 1})
    assert response.output_tensors() == [out]
    assert response.has_error() is False
    assert response.error() is None
    assert json.loads(response.parameters()) == {"p": 1}
    assert pb_utils.get_output_tensor_by_name(response, "OUTPUT0") is out
    assert pb_utils.get_output_tensor_by_name(response, "OTHER") is None


def test_inference_response_with_error() -> None:
    error = pb_utils.TritonError("no such thing", pb_utils.TritonError.NOT_FOUND)
    response = pb_utils.InferenceResponse(output_tensors=[], error=error)
    assert response.has_error() is True
    assert response.error() is error
    assert response.error().code() == pb_utils.TritonError.NOT_FOUND
    assert response.error().message() == "no such thing"


def test_inference_response_error_given_as_text() -> None:
    response = pb_utils.InferenceResponse(error="failed")
    assert response.has_error() is True
    assert response.error().message() == "failed"
    assert response.error().code() == pb_utils.TritonError.INTERNAL
    assert response.output_tensors() == []
    assert response.parameters() == "{}"


def test_response_sender_sends_until_final() -> None:
    sent: list[tuple[Any, int]] = []
    sender = pb_utils.InferenceResponseSender(lambda r, f: sent.append((r, f)), lambda: False)
    first = pb_utils.InferenceResponse([])
    sender.send(first)
    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    assert sent == [(first, 0), (None, 1)]
    assert sender.is_cancelled() is False
    with pytest.raises(pb_utils.TritonModelException, match="Response sender has been closed"):
        sender.send(first)


# --- config lookups ----------------------------------------------------------------------


def test_config_lookups() -> None:
    config = {
        "input": [{"name": "A", "data_type": "TYPE_FP32"}, {"name": "B"}],
        "output": [{"name": "C", "data_type": "TYPE_INT8"}],
    }
    assert pb_utils.get_input_config_by_name(config, "B") == {"name": "B"}
    assert pb_utils.get_output_config_by_name(config, "C")["data_type"] == "TYPE_INT8"
    assert pb_utils.get_input_config_by_name(config, "C") is None
    assert pb_utils.get_output_config_by_name({}, "C") is None


# --- ModelConfig (auto_complete_config) -------------------------------------------------------


def _model_config(text: str = "") -> pb_utils.ModelConfig:
    """The configuration as the Python backend hands it to ``auto_complete_config``."""
    document = config_to_json(parse_config_text('name: "m"\nbackend: "python"\n' + text))
    return pb_utils.ModelConfig(json.dumps(document))


INPUT = {"name": "IN", "data_type": "TYPE_FP32", "dims": [4]}
OUTPUT = {"name": "OUT", "data_type": "TYPE_FP32", "dims": [4]}


def test_model_config_accepts_json_text_and_dicts() -> None:
    assert pb_utils.ModelConfig('{"name": "m"}').as_dict() == {"name": "m"}
    assert pb_utils.ModelConfig({"name": "m"}).as_dict() == {"name": "m"}


def test_auto_complete_an_empty_config() -> None:
    config = _model_config()
    config.add_input(INPUT)
    config.add_output(OUTPUT)
    config.set_max_batch_size(8)
    config.set_dynamic_batching()
    config.set_model_transaction_policy({"decoupled": True})
    document = config.as_dict()
    assert document["input"] == [INPUT]
    assert document["output"] == [OUTPUT]
    assert document["max_batch_size"] == 8
    assert config.max_batch_size() == 8
    assert document["dynamic_batching"] == {}
    assert document["model_transaction_policy"] == {"decoupled": True}


def test_add_input_copies_dims_to_a_list() -> None:
    config = _model_config()
    config.add_input({"name": "IN", "data_type": "TYPE_INT32", "dims": (2, 3)})
    assert config.as_dict()["input"][0]["dims"] == [2, 3]


def test_add_input_that_matches_the_config_changes_nothing() -> None:
    config = _model_config('input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]')
    before = copy.deepcopy(config.as_dict())
    config.add_input(INPUT)
    assert config.as_dict() == before


@pytest.mark.parametrize("missing", ["name", "data_type", "dims"])
@pytest.mark.parametrize("kind", ["input", "output"])
def test_add_tensor_missing_a_property(kind: str, missing: str) -> None:
    config = _model_config()
    tensor = {k: v for k, v in INPUT.items() if k != missing}
    with pytest.raises(ValueError, match=f"is missing '{missing}' property") as info:
        getattr(config, f"add_{kind}")(tensor)
    assert "in auto-complete-config function for model 'm'" in str(info.value)
    assert config.as_dict()[kind] == []


def test_add_input_conflicting_with_the_config() -> None:
    config = _model_config('input [ { name: "IN" data_type: TYPE_INT32 dims: [ 4 ] } ]')
    with pytest.raises(ValueError, match="data_type"):
        config.add_input(INPUT)
    config = _model_config('output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 2, 2 ] } ]')
    with pytest.raises(ValueError, match=r"the model expects dims \[4\]"):
        config.add_output(OUTPUT)


def test_add_input_fills_a_missing_data_type() -> None:
    config = _model_config('input [ { name: "IN" dims: [ 4 ] } ]')
    config.add_input(INPUT)
    assert config.as_dict()["input"][0]["data_type"] == "TYPE_FP32"


def test_add_output_fills_missing_dims() -> None:
    config = _model_config('output [ { name: "OUT" data_type: TYPE_FP32 } ]')
    config.add_output(OUTPUT)
    assert config.as_dict()["output"][0]["dims"] == [4]


@pytest.mark.xfail(
    reason="triton_python_backend_utils.py ModelConfig.add_input ignores a conflicting "
    "'optional' and accepts properties other than name/data_type/dims/optional; "
    "Triton raises ValueError for both",
    raises=_DID_NOT_RAISE,
    strict=True,
)
def test_add_input_rejects_conflicting_optional_and_unknown_properties() -> None:
    config = _model_config('input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]')
    with pytest.raises(ValueError, match="optional"):
        config.add_input({**INPUT, "optional": True})
    with pytest.raises(ValueError, match="contains property other than"):
        _model_config().add_input({**INPUT, "format": "FORMAT_NCHW"})


def test_set_max_batch_size() -> None:
    config = _model_config()
    assert config.max_batch_size() == 0
    config.set_max_batch_size(4)
    assert config.as_dict()["max_batch_size"] == 4
    same = _model_config(
        'max_batch_size: 4\ninput [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]'
    )
    same.set_max_batch_size(4)
    assert same.max_batch_size() == 4


def test_set_max_batch_size_below_the_configured_one_fails() -> None:
    config = _model_config(
        'max_batch_size: 8\ninput [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]'
    )
    with pytest.raises(ValueError) as info:
        config.set_max_batch_size(4)
    assert str(info.value) == (
        "configuration specified max_batch_size 8, but in auto-complete-config function for "
        "model 'm' specified max_batch_size 4"
    )


@pytest.mark.xfail(
    reason="triton_python_backend_utils.py ModelConfig.set_max_batch_size rejects raising "
    "a configured max_batch_size; Triton only rejects lowering it",
    raises=ValueError,
    strict=True,
)
def test_set_max_batch_size_above_the_configured_one() -> None:
    config = _model_config(
        'max_batch_size: 4\ninput [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]'
    )
    config.set_max_batch_size(8)
    assert config.max_batch_size() == 8


@pytest.mark.xfail(
    reason="triton_python_backend_utils.py ModelConfig.set_max_batch_size lets a model lower "
    "the configured max_batch_size when the config lists no inputs or outputs; Triton "
    "raises ValueError whenever the configured value is larger",
    raises=_DID_NOT_RAISE,
    strict=True,
)
def test_set_max_batch_size_below_a_configured_one_without_tensors() -> None:
    config = _model_config("max_batch_size: 8\n")
    with pytest.raises(ValueError, match="configuration specified max_batch_size 8"):
        config.set_max_batch_size(4)


def test_set_dynamic_batching_keeps_the_configured_one() -> None:
    config = _model_config("dynamic_batching { max_queue_delay_microseconds: 100 }")
    config.set_dynamic_batching()
    assert config.as_dict()["dynamic_batching"]["max_queue_delay_microseconds"] == 100


@pytest.mark.xfail(
    reason="triton_python_backend_utils.py ModelConfig.set_dynamic_batching adds "
    "dynamic_batching next to a configured sequence_batching; Triton raises ValueError",
    raises=_DID_NOT_RAISE,
    strict=True,
)
def test_set_dynamic_batching_with_a_sequence_batcher_fails() -> None:
    config = _model_config("sequence_batching { }")
    with pytest.raises(ValueError, match="sequence_batching"):
        config.set_dynamic_batching()


def test_set_model_transaction_policy_keeps_other_settings() -> None:
    config = pb_utils.ModelConfig({"name": "m", "model_transaction_policy": {"decoupled": True}})
    config.set_model_transaction_policy({"decoupled": True})
    assert config.as_dict()["model_transaction_policy"] == {"decoupled": True}


@pytest.mark.xfail(
    reason="triton_python_backend_utils.py ModelConfig.set_model_transaction_policy accepts "
    "keys other than 'decoupled' and overrides a configured 'decoupled'; Triton raises "
    "ValueError for both",
    raises=_DID_NOT_RAISE,
    strict=True,
)
def test_set_model_transaction_policy_errors() -> None:
    config = _model_config("model_transaction_policy { decoupled: true }")
    with pytest.raises(ValueError, match="trying to change decoupled property"):
        config.set_model_transaction_policy({"decoupled": False})
    with pytest.raises(ValueError, match="contains property other than 'decoupled'"):
        _model_config().set_model_transaction_policy({"other": 1})


# --- logging ---------------------------------------------------------------------------------


def test_logger_maps_levels(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="triton_python_backend"):
        pb_utils.Logger.log_info("info line")
        pb_utils.Logger.log_warn("warn line")
        pb_utils.Logger.log_error("error line")
        pb_utils.Logger.log_verbose("verbose line")
        pb_utils.Logger.log("default line")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "info line"),
        (logging.WARNING, "warn line"),
        (logging.ERROR, "error line"),
        (logging.DEBUG, "verbose line"),
        (logging.INFO, "default line"),
    ]
