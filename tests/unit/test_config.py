"""Model configuration: config.pbtxt parsing, Triton's defaults, validation, JSON rendering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from triton_kernel.kernel.config import (
    ModelConfig,
    config_from_json,
    config_to_json,
    fill_defaults,
    parse_config_text,
    read_config_file,
    validate_config,
)
from triton_kernel.kernel.errors import ErrorCode, InvalidArgument
from triton_kernel.protocols.proto.model_config import DATA_TYPE

FULL_CONFIG = """
name: "full"
platform: "onnxruntime_onnx"
backend: "onnxruntime"
max_batch_size: 8
version_policy: { specific: { versions: [1, 3] } }
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } },
  { name: "MASK" data_type: TYPE_BOOL dims: [ -1 ] optional: true }
]
output [
  { name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] label_filename: "labels.txt" }
]
instance_group [ { name: "gpus" kind: KIND_GPU count: 2 gpus: [ 0, 1 ] } ]
dynamic_batching {
  preferred_batch_size: [ 2, 4 ]
  max_queue_delay_microseconds: 100
  preserve_ordering: true
  default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 5000 }
}
parameters { key: "EXECUTION_ENV_PATH" value: { string_value: "/env.tar.gz" } }
parameters { key: "threads" value: { string_value: "4" } }
optimization {
  priority: PRIORITY_MAX
  cuda {
    graphs: true
    graph_spec [ { batch_size: 2 input { key: "INPUT0" value: { dim: [ 4 ] } } } ]
  }
  execution_accelerators {
    gpu_execution_accelerator [
      { name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } }
    ]
  }
}
model_warmup [
  {
    name: "zeros"
    batch_size: 2
    inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } }
    count: 3
  }
]
model_transaction_policy { decoupled: false }
response_cache { enable: true }
"""

SEQUENCE_CONFIG = """
name: "seq"
backend: "python"
max_batch_size: 4
input [ { name: "X" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "Y" data_type: TYPE_INT32 dims: [ 1 ] } ]
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  oldest { max_candidate_sequences: 4 preferred_batch_size: [ 2 ] }
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
  state [ { input_name: "S_IN" output_name: "S_OUT" data_type: TYPE_INT64 dims: [ 3 ] } ]
}
"""


def _simple(text: str = "") -> ModelConfig:
    return parse_config_text(
        'name: "m"\nmax_batch_size: 8\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]\n' + text
    )


# --- parsing ------------------------------------------------------------------------


def test_parse_full_config() -> None:
    config = parse_config_text(FULL_CONFIG)
    assert isinstance(config, ModelConfig)
    assert (config.name, config.platform, config.backend) == (
        "full",
        "onnxruntime_onnx",
        "onnxruntime",
    )
    assert config.max_batch_size == 8
    assert list(config.version_policy.specific.versions) == [1, 3]
    first, mask = config.input
    assert (first.name, list(first.dims), list(first.reshape.shape)) == ("INPUT0", [4], [2, 2])
    assert DATA_TYPE.values_by_number[first.data_type].name == "TYPE_FP32"
    assert DATA_TYPE.values_by_number[config.output[0].data_type].name == "TYPE_STRING"
    assert mask.optional is True
    assert list(mask.dims) == [-1]
    assert config.output[0].label_filename == "labels.txt"
    (group,) = config.instance_group
    assert (group.name, group.count, list(group.gpus)) == ("gpus", 2, [0, 1])
    assert type(group).Kind.Name(group.kind) == "KIND_GPU"
    batching = config.dynamic_batching
    assert list(batching.preferred_batch_size) == [2, 4]
    assert batching.max_queue_delay_microseconds == 100
    assert batching.preserve_ordering is True
    assert batching.default_queue_policy.default_timeout_microseconds == 5000
    assert config.parameters["EXECUTION_ENV_PATH"].string_value == "/env.tar.gz"
    assert config.parameters["threads"].string_value == "4"
    assert config.optimization.cuda.graphs is True
    assert list(config.optimization.cuda.graph_spec[0].input["INPUT0"].dim) == [4]
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert (accelerator.name, accelerator.parameters["precision_mode"]) == ("tensorrt", "FP16")
    (warmup,) = config.model_warmup
    assert (warmup.name, warmup.batch_size, warmup.count) == ("zeros", 2, 3)
    assert warmup.inputs["INPUT0"].zero_data is True
    assert config.HasField("model_transaction_policy")
    assert config.model_transaction_policy.decoupled is False
    assert config.response_cache.enable is True


def test_parse_sequence_batching() -> None:
    config = parse_config_text(SEQUENCE_CONFIG)
    sequence = config.sequence_batching
    assert config.WhichOneof("scheduling_choice") == "sequence_batching"
    assert sequence.max_sequence_idle_microseconds == 5_000_000
    assert sequence.oldest.max_candidate_sequences == 4
    start, corrid = sequence.control_input
    assert (start.name, list(start.control[0].int32_false_true)) == ("START", [0, 1])
    assert corrid.name == "CORRID"
    assert (sequence.state[0].input_name, list(sequence.state[0].dims)) == ("S_IN", [3])


def test_parse_accepts_comments_and_empty_text() -> None:
    config = parse_config_text('# a comment\nname: "m" # trailing\n')
    assert config.name == "m"
    assert parse_config_text("") == ModelConfig()


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ('name: "m"\nbogus_field: 3\n', "2:1", 'has no field named "bogus_field"'),
        ('name: "m"\n\nmax_batch_size: "eight"\n', "3:", "Couldn't parse integer"),
        ('name: "m"\nmax_batch_size: 1.5\n', "2:", "Couldn't parse integer"),
        (
            'name: "m"\ninput [ { name: "x" data_type: TYPE_NOPE } ]\n',
            "2:",
            "has no value named TYPE_NOPE",
        ),
        ('name: "m"\ninput [ { name: "x" dims: [ 1 ] \n', "2:", 'Expected "}"'),
        ('name: "m"\ndynamic_batching { max_queue_delay: 1 }\n', "2:", "max_queue_delay"),
    ],
)
def test_parse_errors_name_the_file_and_line(text: str, line: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_config_text(text, "/models/m/config.pbtxt")
    message = str(info.value)
    assert info.value.code is ErrorCode.INVALID_ARG
    assert message.startswith("failed to read text proto from /models/m/config.pbtxt: ")
    assert f" {line}" in message
    assert fragment in message


def test_config_from_json() -> None:
    config = config_from_json('{"name": "m", "max_batch_size": 2, "input": [{"dims": ["4"]}]}')
    assert (config.name, config.max_batch_size, list(config.input[0].dims)) == ("m", 2, [4])
    with pytest.raises(InvalidArgument, match="failed to parse model configuration JSON"):
        config_from_json('{"name": "m", "bogus": 1}')
    with pytest.raises(InvalidArgument, match="failed to parse model configuration JSON"):
        config_from_json("not json")


# --- read_config_file -----------------------------------------------------------------


def test_read_config_file(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_text('name: "m"\nmax_batch_size: 2\n')
    config = read_config_file(tmp_path)
    assert (config.name, config.max_batch_size) == ("m", 2)


def test_read_config_file_without_a_config_is_none(tmp_path: Path) -> None:
    assert read_config_file(tmp_path) is None
    assert read_config_file(tmp_path, "custom") is None


def test_read_config_file_selects_a_named_config(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_text("max_batch_size: 1\n")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "h100.pbtxt").write_text("max_batch_size: 32\n")
    assert read_config_file(tmp_path, "h100").max_batch_size == 32
    assert read_config_file(tmp_path).max_batch_size == 1
    assert read_config_file(tmp_path, None).max_batch_size == 1


def test_read_config_file_falls_back_when_the_named_config_is_missing(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_text("max_batch_size: 1\n")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "other.pbtxt").write_text("max_batch_size: 32\n")
    assert read_config_file(tmp_path, "h100").max_batch_size == 1


def test_read_config_file_errors_name_the_path(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "m"\nunknown: 1\n')
    with pytest.raises(InvalidArgument, match=f"from {path}: Error parsing .*: 2:1"):
        read_config_file(tmp_path)
    path.write_bytes(b'name: "\xff\xfe"\n')
    with pytest.raises(InvalidArgument, match=f"failed to read {path}"):
        read_config_file(tmp_path)


# --- fill_defaults ----------------------------------------------------------------------


def test_fill_defaults_on_an_empty_config() -> None:
    config = ModelConfig()
    fill_defaults(config, "resnet")
    assert config.name == "resnet"
    assert config.version_policy.WhichOneof("policy_choice") == "latest"
    assert config.version_policy.latest.num_versions == 1
    (group,) = config.instance_group
    assert group.name == "resnet_0"
    assert type(group).Kind.Name(group.kind) == "KIND_CPU"
    assert group.count == 1
    assert config.optimization.input_pinned_memory.enable is True
    assert config.optimization.output_pinned_memory.enable is True


def test_fill_defaults_keeps_what_the_config_says() -> None:
    config = parse_config_text(
        'name: "m"\nversion_policy: { all: {} }\n'
        'instance_group [ { name: "mine" kind: KIND_CPU count: 3 }, { count: 0 } ]\n'
        "optimization { input_pinned_memory { enable: false } }\n"
    )
    fill_defaults(config, "dir_name")
    assert config.name == "m"
    assert config.version_policy.WhichOneof("policy_choice") == "all"
    first, second = config.instance_group
    assert (first.name, first.count) == ("mine", 3)
    assert (second.name, second.count) == ("m_1", 1)
    assert config.optimization.input_pinned_memory.enable is False


def test_fill_defaults_auto_kind_follows_the_gpus() -> None:
    config = ModelConfig()
    fill_defaults(config, "m", gpu_count=1)
    assert type(config.instance_group[0]).Kind.Name(config.instance_group[0].kind) == "KIND_GPU"
    pinned = parse_config_text("instance_group [ { gpus: [ 0 ] } ]")
    fill_defaults(pinned, "m")
    kind = pinned.instance_group[0].kind
    assert type(pinned.instance_group[0]).Kind.Name(kind) == "KIND_GPU"


def test_filled_config_validates() -> None:
    config = _simple()
    fill_defaults(config, "m")
    validate_config(config, "m")


# --- validate_config --------------------------------------------------------------------


def _invalid(text: str, name: str = "m") -> str:
    config = parse_config_text(text)
    fill_defaults(config, name)
    with pytest.raises(InvalidArgument) as info:
        validate_config(config, name)
    assert info.value.code is ErrorCode.INVALID_ARG
    return str(info.value)


def test_name_mismatch() -> None:
    message = _invalid('name: "other"')
    assert message.startswith("unexpected model name 'other' in configuration of model 'm'")


def test_negative_max_batch_size() -> None:
    assert "'max_batch_size' must be non-negative" in _invalid("max_batch_size: -1")


def test_duplicate_input_names() -> None:
    message = _invalid(
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] },'
        ' { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]'
    )
    assert message == "model 'm': input 'x' is specified more than once"


def test_duplicate_output_names() -> None:
    message = _invalid(
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] },'
        ' { name: "y" data_type: TYPE_INT8 dims: [ 1 ] } ]'
    )
    assert message == "model 'm': output 'y' is specified more than once"


def test_missing_dims() -> None:
    message = _invalid('input [ { name: "x" data_type: TYPE_FP32 } ]')
    assert message == "model 'm': model input 'x' must specify 'dims'"


def test_empty_dims_allowed_with_reshape_and_batching() -> None:
    config = parse_config_text(
        'name: "m"\nmax_batch_size: 4\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] } } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ ] reshape: { shape: [ ] } } ]'
    )
    fill_defaults(config, "m")
    validate_config(config, "m")


def test_missing_name_and_data_type() -> None:
    assert "model input must specify 'name'" in _invalid("input [ { data_type: TYPE_FP32 } ]")
    assert "model output 'y' must specify 'data_type'" in _invalid(
        'output [ { name: "y" dims: [ 1 ] } ]'
    )


@pytest.mark.parametrize("dims", ["[ 0 ]", "[ -2 ]", "[ 4, 0 ]", "[ -1, -3 ]"])
def test_bad_dims(dims: str) -> None:
    message = _invalid(f'input [ {{ name: "x" data_type: TYPE_FP32 dims: {dims} }} ]')
    assert message == (
        "model 'm': model input 'x' dimension must be integer >= 1, or -1 to indicate a "
        "variable-size dimension"
    )


def test_variable_dims_are_valid() -> None:
    config = parse_config_text(
        'name: "m"\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 3, -1 ] } ]'
    )
    fill_defaults(config, "m")
    validate_config(config, "m")


_SIZE = "has different size for dims and reshape"
_VARIABLE = "has different number of variable-size dimensions for dims and reshape"


@pytest.mark.parametrize(
    ("dims", "shape", "fragment"),
    [
        ("[ 4 ]", "[ 3 ]", _SIZE),
        ("[ 2, 3 ]", "[ 7 ]", _SIZE),
        ("[ -1 ]", "[ 4 ]", _VARIABLE),
        ("[ 4 ]", "[ -1, 2 ]", _VARIABLE),
    ],
)
def test_reshape_mismatch(dims: str, shape: str, fragment: str) -> None:
    message = _invalid(
        f'input [ {{ name: "x" data_type: TYPE_FP32 dims: {dims} reshape: {{ shape: {shape} }} }} ]'
    )
    assert message == f"model 'm': model input 'x' {fragment}"


def test_matching_reshape_is_valid() -> None:
    config = parse_config_text(
        'name: "m"\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 2, 3 ]'
        " reshape: { shape: [ 3, 2, 1 ] } } ]"
    )
    fill_defaults(config, "m")
    validate_config(config, "m")


def test_instance_group_count_below_one() -> None:
    config = parse_config_text('name: "m"\ninstance_group [ { name: "g" count: 0 } ]')
    with pytest.raises(InvalidArgument, match="instance group g of model m must have count >= 1"):
        validate_config(config, "m")


# --- config_to_json ---------------------------------------------------------------------


def test_config_to_json_renders_integers_as_numbers_and_enums_as_names() -> None:
    document = config_to_json(parse_config_text(FULL_CONFIG))
    assert document["name"] == "full"
    assert document["max_batch_size"] == 8
    assert document["version_policy"] == {"specific": {"versions": [1, 3]}}
    first, mask = document["input"]
    assert first["dims"] == [4]
    assert first["reshape"] == {"shape": [2, 2]}
    assert first["data_type"] == "TYPE_FP32"
    assert first["format"] == "FORMAT_NONE"
    assert mask["dims"] == [-1]
    assert mask["optional"] is True
    assert document["output"][0]["data_type"] == "TYPE_STRING"
    assert document["instance_group"][0]["kind"] == "KIND_GPU"
    assert document["instance_group"][0]["gpus"] == [0, 1]
    batching = document["dynamic_batching"]
    assert batching["preferred_batch_size"] == [2, 4]
    assert batching["max_queue_delay_microseconds"] == 100
    assert batching["default_queue_policy"]["default_timeout_microseconds"] == 5000
    assert batching["default_queue_policy"]["timeout_action"] == "DELAY"
    assert document["parameters"]["threads"] == {"string_value": "4"}
    assert document["optimization"]["priority"] == "PRIORITY_MAX"
    assert document["optimization"]["cuda"]["graph_spec"][0]["input"]["INPUT0"] == {"dim": [4]}
    warmup = document["model_warmup"][0]
    assert warmup["inputs"]["INPUT0"]["dims"] == [4]
    assert warmup["inputs"]["INPUT0"]["data_type"] == "TYPE_FP32"
    assert warmup["batch_size"] == 2


def test_config_to_json_sequence_batching_numbers() -> None:
    sequence = config_to_json(parse_config_text(SEQUENCE_CONFIG))["sequence_batching"]
    assert sequence["max_sequence_idle_microseconds"] == 5_000_000
    assert sequence["state"][0]["dims"] == [3]
    assert sequence["state"][0]["data_type"] == "TYPE_INT64"
    assert sequence["control_input"][0]["control"][0]["kind"] == "CONTROL_SEQUENCE_START"


def test_config_to_json_has_no_integer_strings_anywhere() -> None:
    config = parse_config_text(FULL_CONFIG)
    fill_defaults(config, "full")

    def strings_of_digits(value: object) -> list[str]:
        if isinstance(value, dict):
            return [s for item in value.values() for s in strings_of_digits(item)]
        if isinstance(value, list):
            return [s for item in value for s in strings_of_digits(item)]
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return [value]
        return []

    document = config_to_json(config)
    assert strings_of_digits(document) == ["4"]  # the "threads" parameter's string_value


def test_config_to_json_prints_every_field() -> None:
    document = config_to_json(_simple())
    assert document["platform"] == ""
    assert document["backend"] == ""
    assert document["instance_group"] == []
    assert document["output"][0]["label_filename"] == ""
    assert document["input"][0]["optional"] is False


def test_config_json_round_trip() -> None:
    config = parse_config_text(FULL_CONFIG)
    fill_defaults(config, "full")
    assert config_from_json(json.dumps(config_to_json(config))) == config
