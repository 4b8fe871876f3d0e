"""Model configuration: parse ``config.pbtxt``, fill Triton's defaults, validate, render JSON.

The configuration *is* Triton's ``inference.ModelConfig`` protobuf message, parsed with
protobuf's own text-format parser, so every field Triton accepts parses and an unknown
field fails the load with its line, exactly as in Triton.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format

from triton_kernel.protocols.proto.model_config import ModelConfig

from .errors import InvalidArgument

__all__ = [
    "ModelConfig",
    "config_from_json",
    "config_to_json",
    "fill_defaults",
    "parse_config_text",
    "read_config_file",
    "validate_config",
]

CONFIG_FILENAME = "config.pbtxt"


def parse_config_text(text: str, source: str = CONFIG_FILENAME) -> Any:
    """Parse protobuf text format into a ``ModelConfig``; errors name the file and line."""
    try:
        return text_format.Parse(text, ModelConfig())
    except text_format.ParseError as exc:
        where = f"{exc.GetLine()}:{exc.GetColumn()}: " if exc.GetLine() is not None else ""
        detail = str(exc).split(" : ", 1)[-1]
        raise InvalidArgument(
            f"failed to read text proto from {source}: Error parsing text-format "
            f"inference.ModelConfig: {where}{detail}"
        ) from None


def read_config_file(model_dir: Path, config_name: str | None = None) -> Any | None:
    """The model's parsed configuration, or None when the model has no config file.

    ``config_name`` selects ``configs/<name>.pbtxt`` (``--model-config-name``) and
    falls back to ``config.pbtxt`` when that file does not exist, as Triton does.
    """
    candidates = []
    if config_name:
        candidates.append(model_dir / "configs" / f"{config_name}.pbtxt")
    candidates.append(model_dir / CONFIG_FILENAME)
    for path in candidates:
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidArgument(f"failed to read {path}: {exc}") from None
            return parse_config_text(text, str(path))
    return None


def config_from_json(document: str | bytes) -> Any:
    """A ``ModelConfig`` from Triton's JSON form (load-time config overrides)."""
    try:
        return json_format.Parse(document, ModelConfig())
    except json_format.ParseError as exc:
        raise InvalidArgument(f"failed to parse model configuration JSON: {exc}") from None


def fill_defaults(config: Any, model_name: str, *, gpu_count: int = 0) -> None:
    """Fill what Triton fills before a model loads (name, policies, instance groups)."""
    if not config.name:
        config.name = model_name
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    if not config.instance_group:
        config.instance_group.add()
    for index, group in enumerate(config.instance_group):
        _fill_instance_group(group, f"{config.name}_{index}", gpu_count)
    if not config.HasField("optimization"):
        config.optimization.input_pinned_memory.enable = True
        config.optimization.output_pinned_memory.enable = True


def _fill_instance_group(group: Any, default_name: str, gpu_count: int) -> None:
    kinds = type(group).Kind
    if not group.name:
        group.name = default_name
    if group.kind == kinds.Value("KIND_AUTO"):
        has_gpu = gpu_count > 0 or bool(group.gpus)
        group.kind = kinds.Value("KIND_GPU" if has_gpu else "KIND_CPU")
    if group.count < 1:
        group.count = 1


def validate_config(config: Any, model_name: str) -> None:
    """Reject configurations Triton rejects, with a message naming the offending field."""
    if config.name != model_name:
        raise InvalidArgument(
            f"unexpected model name '{config.name}' in configuration of model '{model_name}': "
            "the name must match the model's directory"
        )
    if config.max_batch_size < 0:
        raise InvalidArgument(f"model '{model_name}': 'max_batch_size' must be non-negative")
    for kind, tensors in (("input", config.input), ("output", config.output)):
        seen: set[str] = set()
        for tensor in tensors:
            _validate_tensor(model_name, kind, tensor, config.max_batch_size)
            if tensor.name in seen:
                raise InvalidArgument(
                    f"model '{model_name}': {kind} '{tensor.name}' is specified more than once"
                )
            seen.add(tensor.name)
    for group in config.instance_group:
        if group.count < 1:
            raise InvalidArgument(
                f"instance group {group.name} of model {model_name} must have count >= 1"
            )


def _validate_tensor(model_name: str, kind: str, tensor: Any, max_batch_size: int) -> None:
    if not tensor.name:
        raise InvalidArgument(f"model '{model_name}': model {kind} must specify 'name'")
    if tensor.data_type == 0:  # TYPE_INVALID
        raise InvalidArgument(
            f"model '{model_name}': model {kind} '{tensor.name}' must specify 'data_type'"
        )
    if not tensor.dims and not (max_batch_size > 0 and tensor.HasField("reshape")):
        raise InvalidArgument(
            f"model '{model_name}': model {kind} '{tensor.name}' must specify 'dims'"
        )
    for dim in tensor.dims:
        if dim < 1 and dim != -1:
            raise InvalidArgument(
                f"model '{model_name}': model {kind} '{tensor.name}' dimension must be "
                "integer >= 1, or -1 to indicate a variable-size dimension"
            )
    if tensor.HasField("reshape"):
        _validate_reshape(model_name, kind, tensor)


def _validate_reshape(model_name: str, kind: str, tensor: Any) -> None:
    dims, shape = list(tensor.dims), list(tensor.reshape.shape)
    if (-1 in dims) != (-1 in shape):
        raise InvalidArgument(
            f"model '{model_name}': model {kind} '{tensor.name}' has different number of "
            "variable-size dimensions for dims and reshape"
        )
    if -1 not in dims and math.prod(dims) != math.prod(shape):
        raise InvalidArgument(
            f"model '{model_name}': model {kind} '{tensor.name}' has different size for "
            "dims and reshape"
        )


def config_to_json(config: Any) -> dict[str, Any]:
    """Triton's JSON rendering: proto field names, every field present, integers as numbers."""
    document = json_format.MessageToDict(
        config,
        preserving_proto_field_name=True,
        **_ALL_FIELDS_FLAG,
    )
    return _integers_as_numbers(document, config.DESCRIPTOR)


def _all_fields_flag() -> dict[str, bool]:
    import inspect

    params = inspect.signature(json_format.MessageToDict).parameters
    if "always_print_fields_with_no_presence" in params:
        return {"always_print_fields_with_no_presence": True}
    return {"including_default_value_fields": True}


_ALL_FIELDS_FLAG = _all_fields_flag()


def _integers_as_numbers(document: Any, descriptor: Any) -> Any:
    """protobuf's JSON writes 64-bit integers as strings; Triton's output has numbers."""
    if not isinstance(document, dict):
        return document
    for key, value in document.items():
        field = descriptor.fields_by_name.get(key)
        if field is None:
            continue
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                if value_field.message_type is not None:
                    for item in value.values():
                        _integers_as_numbers(item, value_field.message_type)
            elif isinstance(value, list):
                for item in value:
                    _integers_as_numbers(item, field.message_type)
            else:
                _integers_as_numbers(value, field.message_type)
        elif field.cpp_type in (field.CPPTYPE_INT64, field.CPPTYPE_UINT64):
            document[key] = [int(v) for v in value] if isinstance(value, list) else int(value)
    return document
