"""Model configuration: parse ``config.pbtxt``, fill Triton's defaults, validate, render JSON.

The configuration *is* Triton's ``inference.ModelConfig`` protobuf message, parsed with
protobuf's own text-format parser, so every field Triton accepts parses and an unknown
field fails the load with its line, exactly as in Triton.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format

from triton_kernel.protocols.proto.model_config import DATA_TYPE, ModelConfig

from .datatypes import config_to_wire
from .errors import InvalidArgument

__all__ = [
    "ENSEMBLE_PLATFORM",
    "ModelConfig",
    "config_from_json",
    "config_to_json",
    "dims_match",
    "dims_of",
    "fill_defaults",
    "parse_config_text",
    "read_config_file",
    "validate_composition",
    "validate_config",
    "validate_ensemble_scheduling",
]

CONFIG_FILENAME = "config.pbtxt"
#: The ``platform`` of an ensemble: it has no backend, the kernel runs its steps.
ENSEMBLE_PLATFORM = "ensemble"


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
    """Fill what Triton fills before a model loads (name, policies, instance groups).

    An ensemble gets no instance group and no optimization: Triton leaves both unset,
    and refuses an ensemble that sets them.
    """
    if not config.name:
        config.name = model_name
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    if config.HasField("ensemble_scheduling"):
        return
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
    _validate_platform(config)


def _validate_platform(config: Any) -> None:
    """Triton's checks of ``platform: "ensemble"`` against ``backend`` and the scheduling."""
    is_ensemble = config.platform == ENSEMBLE_PLATFORM
    if config.backend and is_ensemble:
        raise InvalidArgument(
            f"Ensemble model '{config.name}' must have platform type '{config.platform}' "
            "and empty backend type"
        )
    if config.HasField("ensemble_scheduling"):
        validate_ensemble_scheduling(config)
    elif is_ensemble:
        raise InvalidArgument(
            f"ensemble scheduling must be set for ensemble {config.name} whose platform is "
            f"{ENSEMBLE_PLATFORM}"
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


# --- ensembles -------------------------------------------------------------------------


def validate_ensemble_scheduling(config: Any) -> None:
    """Triton's checks of an ensemble on its own (before its composing models are known).

    Every step names a model and maps inputs and outputs; each ensemble tensor is
    written once; every input is used, every output written, and no tensor is left
    dangling. The messages are Triton's, typos included.
    """
    name = config.name
    if config.platform != ENSEMBLE_PLATFORM:
        raise InvalidArgument(
            f"ensemble scheduling cannot be set for model '{name}' whose platform is not "
            f"{ENSEMBLE_PLATFORM}"
        )
    for field, what in (
        ("instance_group", "instance group should not be specified for ensemble"),
        ("optimization", "optimization should not be specified for ensemble"),
        ("model_warmup", "model_warmup can not be specified for ensemble"),
    ):
        if _is_set(config, field):
            raise InvalidArgument(f"{what} '{name}'")
    if not config.ensemble_scheduling.step:
        raise InvalidArgument(f"must specify 'step' for ensemble '{name}'")
    producers, consumers = _ensemble_graph(config)
    ready = _ready_tensors(config, producers, consumers)
    for output in config.output:
        if output.name not in producers and output.name not in consumers:
            raise InvalidArgument(
                f"ensemble output '{output.name}' for ensemble {name}' is not used"
            )
        if output.name not in ready:
            raise InvalidArgument(_not_written(config, output.name, producers, ready))
    outputs = {output.name for output in config.output}
    for tensor in sorted(set(producers) | set(consumers)):
        if tensor not in outputs and (tensor not in ready or not consumers.get(tensor)):
            raise InvalidArgument(f"ensemble tensor '{tensor}' is unused in ensemble '{name}'")


def _is_set(config: Any, field: str) -> bool:
    value = getattr(config, field)
    return config.HasField(field) if field == "optimization" else len(value) > 0


def _ensemble_graph(config: Any) -> tuple[dict[str, list[str]], dict[str, list[int]]]:
    """Tensor -> the tensors its step reads, and tensor -> the steps reading it."""
    producers: dict[str, list[str]] = {}
    consumers: dict[str, list[int]] = {}
    for index, step in enumerate(config.ensemble_scheduling.step):
        for field in ("model_name", "input_map", "output_map"):
            if not getattr(step, field):
                raise InvalidArgument(
                    f"must specify '{field}' in step {index} of ensemble '{config.name}'"
                )
        for tensor in step.output_map.values():
            if tensor in producers:
                raise InvalidArgument(
                    f"ensemble tensor '{tensor}' can appear in an output map only once for "
                    f"ensemble '{config.name}' step {index}"
                )
            producers[tensor] = list(step.input_map.values())
        for tensor in step.input_map.values():
            consumers.setdefault(tensor, []).append(index)
    return producers, consumers


def _ready_tensors(
    config: Any, producers: dict[str, list[str]], consumers: dict[str, list[int]]
) -> set[str]:
    """The tensors the ensemble inputs reach, following the steps forward."""
    ready: set[str] = set()
    for tensor in config.input:
        if tensor.name not in producers and tensor.name not in consumers:
            raise InvalidArgument(
                f"ensemble input '{tensor.name}' for ensemble {config.name}' is not used"
            )
        ready.add(tensor.name)
    changed = True
    while changed:
        changed = False
        for tensor, sources in producers.items():
            if tensor not in ready and all(source in ready for source in sources):
                ready.add(tensor)
                changed = True
    return ready


def _not_written(config: Any, output: str, producers: dict[str, list[str]], ready: set[str]) -> str:
    """Triton's message for an unreachable output, naming the first dangling tensor."""
    message = f"output '{output}' for ensemble '{config.name}' is not written"
    last, seen = output, set()
    sources = producers.get(output, [])
    while sources:
        pending = [s for s in sources if s not in ready and s not in seen]
        if not pending:
            break
        last = pending[0]
        seen.add(last)
        sources = producers.get(last, [])
    if last != output:
        message += f": at least one of its depending tensors, '{last}', is not connected"
    return message


def dims_of(tensor: Any) -> tuple[int, ...]:
    """A model input's or output's dims as an ensemble sees them (its reshape if it has one)."""
    return tuple(tensor.reshape.shape if tensor.HasField("reshape") else tensor.dims)


@dataclass(slots=True)
class _TensorNode:
    """What one model says an ensemble tensor is (Triton's ``TensorNode``)."""

    model: str
    batching: bool
    data_type: int
    dims: tuple[int, ...]

    @property
    def full_dims(self) -> tuple[int, ...]:
        return ((-1,) if self.batching else ()) + self.dims


def validate_composition(config: Any, lookup: Callable[[str, int], Any]) -> bool:
    """Check each step's maps, types and shapes against its model; True when decoupled.

    ``lookup(name, version)`` is the loaded configuration of a composing model. The
    checks and messages are Triton's (``ValidateEnsembleConfig``).
    """
    name, batching = config.name, config.max_batch_size > 0
    tensors = {t.name: _TensorNode(name, batching, t.data_type, dims_of(t)) for t in config.input}
    for output in config.output:
        tensors.setdefault(
            output.name, _TensorNode(name, batching, output.data_type, dims_of(output))
        )
    step_configs = []
    for step in config.ensemble_scheduling.step:
        model = lookup(step.model_name, step.model_version)
        if 0 < model.max_batch_size < config.max_batch_size:
            raise InvalidArgument(
                f"ensemble {name} allows maximum batch size {config.max_batch_size}, but it "
                f"contains model {step.model_name} which only allows maximum batch size to "
                f"be {model.max_batch_size}"
            )
        _check_step(name, step, model, tensors)
        step_configs.append(model)
    return _decoupled(config, step_configs)


def _check_step(ensemble: str, step: Any, model: Any, tensors: dict[str, _TensorNode]) -> None:
    batching = model.max_batch_size > 0
    inputs = {t.name: t for t in model.input}
    for key, tensor in step.input_map.items():
        if key not in inputs:
            raise InvalidArgument(
                f"in ensemble {ensemble}, ensemble tensor {tensor} is mapping to non-existing "
                f"input {key} in model {step.model_name}"
            )
    for spec in model.input:
        tensor = step.input_map.get(spec.name)
        if tensor is None:
            if spec.optional:
                continue
            raise InvalidArgument(
                f"in ensemble {ensemble}, input {spec.name} in model {step.model_name} is not "
                "mapped to any ensemble tensors"
            )
        node = _TensorNode(step.model_name, batching, spec.data_type, tuple(spec.dims))
        _merge(ensemble, tensors, tensor, node)
    outputs = {t.name: t for t in model.output}
    for key, tensor in step.output_map.items():
        if key not in outputs:
            raise InvalidArgument(
                f"in ensemble {ensemble}, ensemble tensor {tensor} is mapped from non-existing "
                f"output {key} in model {step.model_name}"
            )
    for key, tensor in step.output_map.items():
        spec = outputs[key]
        node = _TensorNode(step.model_name, batching, spec.data_type, tuple(spec.dims))
        _merge(ensemble, tensors, tensor, node)


def _merge(ensemble: str, tensors: dict[str, _TensorNode], name: str, node: _TensorNode) -> None:
    """Record what ``node`` says of tensor ``name``, or check it agrees with what is known."""
    known = tensors.setdefault(name, node)
    if known is node:
        return
    where = f"in ensemble {ensemble}, ensemble tensor {name}: "
    if known.data_type != node.data_type:
        raise InvalidArgument(
            f"{where}inconsistent data type: {_type_name(known.data_type)} is inferred from "
            f"model {known.model} while {_type_name(node.data_type)} is inferred from model "
            f"{node.model}"
        )
    if not dims_match(known.dims, node.dims) and not dims_match(known.full_dims, node.full_dims):
        raise InvalidArgument(
            f"{where}inconsistent shape: {_fmt(known.full_dims)} is inferred from model "
            f"{known.model} while {_fmt(node.full_dims)} is inferred from model {node.model}"
        )


def _decoupled(config: Any, models: list[Any]) -> bool:
    """Whether any step is decoupled; a step may not mix tensors of two decoupled steps."""
    labels = {t.name: 0 for t in config.input}
    next_label = 0
    pending = list(zip(config.ensemble_scheduling.step, models, strict=True))
    while pending:
        ready = [(s, m) for s, m in pending if all(t in labels for t in s.input_map.values())]
        if not ready:
            break  # unreachable steps were refused by the static checks
        for step, model in ready:
            pending.remove((step, model))
            found = {labels[t] for t in step.input_map.values()}
            if len(found) > 1:
                raise InvalidArgument(
                    f"in ensemble {config.name}, step of model '{step.model_name}' receives "
                    "inputs originated from different decoupled models"
                )
            label = found.pop()
            if model.model_transaction_policy.decoupled:
                next_label += 1
                label = next_label
            labels.update(dict.fromkeys(step.output_map.values(), label))
    return next_label > 0


def wire_datatype(data_type: int) -> str:
    """A configuration ``DataType`` as its wire name (``TYPE_FP32`` -> ``FP32``)."""
    return config_to_wire(_type_name(data_type))


def _type_name(data_type: int) -> str:
    return DATA_TYPE.values_by_number[data_type].name


def dims_match(a: Sequence[int], b: Sequence[int]) -> bool:
    """Triton's ``CompareDimsWithWildcard``: same rank, each dim equal or -1 on either side."""
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b, strict=True))


def _fmt(dims: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


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
