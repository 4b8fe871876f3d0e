"""Requests checked against their model's configuration, with Triton's messages."""

from __future__ import annotations

import numpy as np
import pytest

from triton_kernel.kernel.config import fill_defaults, parse_config_text
from triton_kernel.kernel.errors import ErrorCode, InvalidArgument
from triton_kernel.kernel.request import InferenceRequest, RequestedOutput
from triton_kernel.kernel.tensor import Tensor
from triton_kernel.kernel.validation import Signature, TensorSpec, validate_request

BATCHED = """
name: "batched"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "MASK" data_type: TYPE_BOOL dims: [ 4 ] optional: true }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUTPUT1" data_type: TYPE_INT64 dims: [ 1 ] }
]
"""

UNBATCHED = """
name: "unbatched"
input [ { name: "X" data_type: TYPE_INT32 dims: [ 2, -1 ] } ]
output [ { name: "Y" data_type: TYPE_BF16 dims: [ 2, -1 ] } ]
"""


def _signature(text: str) -> Signature:
    config = parse_config_text(text)
    fill_defaults(config, config.name)
    return Signature.from_config(config)


@pytest.fixture(scope="module")
def batched() -> Signature:
    return _signature(BATCHED)


@pytest.fixture(scope="module")
def unbatched() -> Signature:
    return _signature(UNBATCHED)


def _text(*shape: int) -> Tensor:
    array = np.full(shape, b"t", dtype=np.object_)
    return Tensor("TEXT", "BYTES", array)


def _request(model: str, *tensors: Tensor, **kwargs: object) -> InferenceRequest:
    return InferenceRequest(model, {t.name: t for t in tensors}, **kwargs)


def _fp32(name: str, *shape: int) -> Tensor:
    return Tensor(name, "FP32", np.zeros(shape, np.float32))


def _error(request: InferenceRequest, signature: Signature) -> str:
    with pytest.raises(InvalidArgument) as info:
        validate_request(request, signature)
    assert info.value.code is ErrorCode.INVALID_ARG
    return str(info.value)


def test_signature_from_config(batched: Signature, unbatched: Signature) -> None:
    assert batched.model_name == "batched"
    assert batched.max_batch_size == 8
    assert batched.inputs["INPUT0"] == TensorSpec("INPUT0", "FP32", (4,), False)
    assert batched.inputs["TEXT"] == TensorSpec("TEXT", "BYTES", (-1,), False)
    assert batched.inputs["MASK"].optional is True
    assert batched.outputs["OUTPUT1"] == TensorSpec("OUTPUT1", "INT64", (1,), False)
    assert list(batched.inputs) == ["INPUT0", "TEXT", "MASK"]
    assert unbatched.max_batch_size == 0
    assert unbatched.outputs["Y"].datatype == "BF16"


def test_valid_batched_request(batched: Signature) -> None:
    for batch in (1, 3, 8):
        validate_request(_request("batched", _fp32("INPUT0", batch, 4), _text(batch, 7)), batched)


def test_optional_input_may_be_given_or_left_out(batched: Signature) -> None:
    mask = Tensor("MASK", "BOOL", np.ones((2, 4), np.bool_))
    validate_request(_request("batched", _fp32("INPUT0", 2, 4), _text(2, 1)), batched)
    validate_request(_request("batched", _fp32("INPUT0", 2, 4), _text(2, 1), mask), batched)


def test_valid_unbatched_request(unbatched: Signature) -> None:
    x = Tensor("X", "INT32", np.zeros((2, 5), np.int32))
    validate_request(_request("unbatched", x), unbatched)
    validate_request(
        _request("unbatched", Tensor("X", "INT32", np.zeros((2, 0), np.int32))), unbatched
    )


def test_unknown_input(batched: Signature) -> None:
    request = _request(
        "batched", _fp32("INPUT0", 1, 4), _text(1, 1), _fp32("EXTRA", 1, 4), id="req-7"
    )
    assert _error(request, batched) == "unexpected inference input 'EXTRA' for model 'batched'"


def test_unknown_input_named_before_missing_ones(batched: Signature) -> None:
    request = _request("batched", _fp32("INPUT0", 1, 4), _fp32("EXTRA", 1, 4))
    assert _error(request, batched) == "unexpected inference input 'EXTRA' for model 'batched'"


def test_input_count_checked_first_without_optional_inputs(unbatched: Signature) -> None:
    x = Tensor("X", "INT32", np.zeros((2, 5), np.int32))
    request = _request("unbatched", x, _fp32("Z", 1))
    assert _error(request, unbatched) == (
        "[request id: <id_unknown>] expected 1 inputs but got 2 inputs for model 'unbatched'. "
        "Got input(s) ['X','Z'], but missing required input(s) ]. Please provide all required "
        "input(s)."
    )


def test_missing_required_input(batched: Signature) -> None:
    assert _error(_request("batched", _fp32("INPUT0", 1, 4)), batched) == (
        "[request id: <id_unknown>] expected 2 inputs but got 1 inputs for model 'batched'. "
        "Got input(s) ['INPUT0'], but missing required input(s) ['TEXT']. Please provide all "
        "required input(s)."
    )


def test_no_inputs_at_all(batched: Signature, unbatched: Signature) -> None:
    message = _error(_request("batched", id="x"), batched)
    assert message.startswith("[request id: x] expected 2 inputs but got 0 inputs")
    assert "Got input(s) [], but missing required input(s) ['INPUT0','TEXT']." in message
    message = _error(_request("unbatched"), unbatched)
    assert "missing required input(s) ['X']" in message


def test_wrong_datatype(batched: Signature) -> None:
    wrong = Tensor("INPUT0", "FP64", np.zeros((1, 4), np.float64))
    assert _error(_request("batched", wrong, _text(1, 1), id="a"), batched) == (
        "[request id: a] inference input 'INPUT0' data-type is 'FP64', but model 'batched' "
        "expects 'FP32'"
    )


def test_bytes_input_must_be_bytes(batched: Signature) -> None:
    as_text = Tensor("TEXT", "FP32", np.zeros((1, 1), np.float32))
    message = _error(_request("batched", _fp32("INPUT0", 1, 4), as_text), batched)
    assert "inference input 'TEXT' data-type is 'FP32', but model 'batched' expects 'BYTES'" in (
        message
    )


def test_wrong_shape_with_batching(batched: Signature) -> None:
    assert _error(_request("batched", _fp32("INPUT0", 2, 5), _text(2, 1)), batched) == (
        "[request id: <id_unknown>] unexpected shape for input 'INPUT0' for model 'batched'. "
        "Expected [-1,4], got [2,5]. NOTE: Setting a non-zero max_batch_size in the model "
        "config requires a batch dimension to be prepended to each input shape. If you want to "
        "specify the full shape including the batch dim in your input dims config, try setting "
        "max_batch_size to zero. See the model configuration docs for more info on "
        "max_batch_size."
    )  # tritonserver 2.51 adds the NOTE whenever max_batch_size > 0, whatever the ranks


def test_wrong_rank_with_batching(batched: Signature) -> None:
    message = _error(_request("batched", _fp32("INPUT0", 2, 4, 1), _text(2, 1)), batched)
    assert "Expected [-1,4], got [2,4,1]" in message
    message = _error(_request("batched", _fp32("INPUT0", 2, 4), _text(2)), batched)
    assert "unexpected shape for input 'TEXT'" in message
    assert "Expected [-1,-1], got [2]" in message


def test_wrong_shape_without_batching(unbatched: Signature) -> None:
    x = Tensor("X", "INT32", np.zeros((3, 5), np.int32))
    assert _error(_request("unbatched", x), unbatched) == (
        "[request id: <id_unknown>] unexpected shape for input 'X' for model 'unbatched'. "
        "Expected [2,-1], got [3,5]. "
    )
    batched_like = Tensor("X", "INT32", np.zeros((1, 2, 5), np.int32))
    assert "Expected [2,-1], got [1,2,5]" in _error(_request("unbatched", batched_like), unbatched)


def test_batch_size_zero(batched: Signature) -> None:
    message = _error(_request("batched", _fp32("INPUT0", 0, 4), _text(0, 1)), batched)
    assert message == (
        "[request id: <id_unknown>] input byte size mismatch for input 'INPUT0' for model "
        "'batched'. Expected 16, got 0"
    )


def test_batch_size_over_max_batch_size(batched: Signature) -> None:
    message = _error(_request("batched", _fp32("INPUT0", 9, 4), _text(9, 1)), batched)
    assert message == (
        "[request id: <id_unknown>] inference request batch-size must be <= 8 for 'batched'"
    )


def test_inputs_with_different_batch_sizes(batched: Signature) -> None:
    message = _error(_request("batched", _fp32("INPUT0", 2, 4), _text(3, 1)), batched)
    assert message == (
        "[request id: <id_unknown>] input 'TEXT' batch size does not match other inputs for "
        "'batched'"
    )


def test_input_without_its_batch_dimension(batched: Signature) -> None:
    message = _error(_request("batched", _fp32("INPUT0", 4), _text(4, 1)), batched)
    assert message.startswith(
        "[request id: <id_unknown>] unexpected shape for input 'INPUT0' for model 'batched'. "
        "Expected [-1,4], got [4]. NOTE: Setting a non-zero max_batch_size in the model config "
        "requires a batch dimension to be prepended to each input shape."
    )


def test_scalar_input_to_batched_model(batched: Signature) -> None:
    scalar = Tensor("INPUT0", "FP32", np.zeros((), np.float32))
    message = _error(_request("batched", scalar, _text(1, 1)), batched)
    assert (
        "unexpected shape for input 'INPUT0' for model 'batched'. Expected [-1,4], got []. "
        "NOTE: Setting a non-zero max_batch_size" in message
    )


def test_requested_outputs(batched: Signature) -> None:
    inputs = (_fp32("INPUT0", 1, 4), _text(1, 1))
    known = [RequestedOutput("OUTPUT1"), RequestedOutput("OUTPUT0", class_count=2)]
    validate_request(_request("batched", *inputs, outputs=known), batched)
    unknown = [RequestedOutput("OUTPUT0"), RequestedOutput("NOPE")]
    assert _error(_request("batched", *inputs, outputs=unknown, id="r"), batched) == (
        "[request id: r] unexpected inference output 'NOPE' for model 'batched'"
    )


def test_outputs_not_checked_when_the_config_lists_none() -> None:
    signature = _signature('name: "m"\ninput [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]')
    request = _request("m", _fp32("X", 1), outputs=[RequestedOutput("anything")])
    validate_request(request, signature)
