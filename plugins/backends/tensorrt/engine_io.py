"""A TensorRT engine's inputs and outputs as plain data, and the configuration checked against them.

Reading the engine (``describe``) is the only step that needs TensorRT; completing
and checking the configuration works on ``TensorInfo`` records, as Triton's TensorRT
backend does in its ``AutoCompleteConfig`` and its per-instance binding checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from triton_kernel.kernel.config import wire_datatype
from triton_kernel.kernel.datatypes import wire_to_config
from triton_kernel.kernel.errors import Internal, InvalidArgument, NotFound, Unsupported

__all__ = ["TensorInfo", "check_config", "complete_config", "describe", "profile_indices"]

#: ``trt.DataType`` member name -> wire datatype (Triton's ``ConvertTrtTypeToDataType``).
TRT_DATATYPES = {
    "FLOAT": "FP32",
    "HALF": "FP16",
    "INT8": "INT8",
    "UINT8": "UINT8",
    "BF16": "BF16",
    "INT32": "INT32",
    "INT64": "INT64",
    "BOOL": "BOOL",
}

Shape = tuple[int, ...]


@dataclass(slots=True, frozen=True)
class TensorInfo:
    """One I/O tensor of an engine."""

    name: str
    is_input: bool
    #: Wire datatype, or ``INVALID`` for types Triton cannot carry (FP8, INT4, ...).
    datatype: str
    #: The engine's shape; -1 marks a dynamic dimension.
    shape: Shape
    shape_tensor: bool = False
    linear: bool = True
    #: Per optimization profile, the (min, opt, max) shapes of an input.
    profiles: tuple[tuple[Shape, Shape, Shape], ...] = ()


def describe(trt: Any, engine: Any) -> list[TensorInfo]:
    """The engine's I/O tensors, in engine order."""
    tensors = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        shape_tensor = bool(engine.is_shape_inference_io(name))
        profiles: tuple[tuple[Shape, Shape, Shape], ...] = ()
        if is_input and not shape_tensor:
            profiles = tuple(
                _profile(engine.get_tensor_profile_shape(name, p))
                for p in range(engine.num_optimization_profiles)
            )
        tensors.append(
            TensorInfo(
                name,
                is_input,
                TRT_DATATYPES.get(engine.get_tensor_dtype(name).name, "INVALID"),
                tuple(engine.get_tensor_shape(name)),
                shape_tensor,
                _is_linear(engine.get_tensor_format(name)),
                profiles,
            )
        )
    return tensors


def _is_linear(tensor_format: Any) -> bool:
    """``TensorFormat.LINEAR`` (the lean runtime's bindings do not export the enum type)."""
    return getattr(tensor_format, "name", str(tensor_format)).rsplit(".", 1)[-1] == "LINEAR"


def _profile(shapes: Any) -> tuple[Shape, Shape, Shape]:
    low, opt, high = (tuple(dims) for dims in shapes)
    return low, opt, high


def profile_indices(config: Any, count: int) -> list[int]:
    """The optimization profiles the instance groups select (``profile: ["0"]``); 0 by default."""
    indices: list[int] = []
    for group in config.instance_group:
        for profile in group.profile:
            try:
                index = int(profile)
            except ValueError:
                raise InvalidArgument(f"unable to parse '{profile}': not an integer") from None
            if not 0 <= index < count:
                raise Internal(
                    f"unable to autofill for '{config.name}', configuration specified invalid "
                    f"profile {profile} . Number of profiles supported by TensorRT engine: {count}"
                )
            if index not in indices:
                indices.append(index)
    return indices or [0]


# --- auto-complete ------------------------------------------------------------------------


def complete_config(config: Any, tensors: Sequence[TensorInfo], profiles: list[int]) -> None:
    """Triton's auto-complete: batching, then missing inputs, outputs, types and dims."""
    batch_hint, shaped = _batch_hint(config, tensors)
    engine_max = _max_batch_size(tensors, profiles)
    if batch_hint and engine_max == 0:
        raise Internal(
            f"autofill failed for model '{config.name}': model tensor shape configuration hints "
            "for dynamic batching but the underlying engine doesn't support batching."
        )
    if shaped and not batch_hint:
        engine_max = 0
    if config.max_batch_size == 0:
        config.max_batch_size = engine_max
    elif config.max_batch_size > engine_max:
        raise Internal(
            f"autofill failed for model '{config.name}': configuration specified max-batch "
            f"{config.max_batch_size} but TensorRT engine only supports max-batch {engine_max}"
        )
    if engine_max > 1 and not (
        config.HasField("sequence_batching") or config.HasField("dynamic_batching")
    ):
        config.dynamic_batching.SetInParent()
    for is_input, field in ((True, config.input), (False, config.output)):
        _fill_io(config, field, [t for t in tensors if t.is_input == is_input])


def _batch_hint(config: Any, tensors: Sequence[TensorInfo]) -> tuple[bool, bool]:
    """Whether configured dims imply a batch dimension, and whether any dims were configured."""
    by_name = {t.name: t for t in tensors}
    hint, shaped = False, False
    for kind, field, is_input in (("input", config.input, True), ("output", config.output, False)):
        allowed = sorted(t.name for t in tensors if t.is_input == is_input)
        for io in field:
            if io.allow_ragged_batch:
                return True, shaped
            if io.name not in allowed:
                raise InvalidArgument(
                    f"unexpected inference {kind} '{io.name}', allowed {kind}s are: "
                    + ", ".join(allowed)
                )
            dims = list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)
            if not dims:
                continue
            shaped = True
            should_batch = len(by_name[io.name].shape) == len(dims) + 1
            if hint and not should_batch:
                raise Internal(
                    f"unable to autofill for '{config.name}', model tensor configurations are "
                    "contradicting each other in terms of whether batching is supported"
                )
            hint = hint or should_batch
    return hint, shaped


def _max_batch_size(tensors: Sequence[TensorInfo], profiles: list[int]) -> int:
    """The largest first dimension every input accepts, over the selected profiles."""
    best = 0
    for profile in profiles:
        limits = [
            t.profiles[profile][2][0] for t in tensors if t.profiles and t.profiles[profile][2]
        ]
        if limits:
            best = max(best, min(limits))
    return best


def _fill_io(config: Any, field: Any, tensors: list[TensorInfo]) -> None:
    batching = config.max_batch_size > 0
    existing = {io.name: io for io in field}
    for tensor in tensors:
        io = existing.get(tensor.name)
        if io is None:
            if existing:
                continue  # Triton fills only the tensors it finds configured, or all of them
            io = field.add(name=tensor.name)
        if io.data_type == 0:
            io.data_type = _config_type(tensor.datatype)
        if not io.dims:
            dims = list(tensor.shape[1:] if batching else tensor.shape)
            io.dims.extend(dims or [1])
            if not dims:
                io.reshape.SetInParent()  # an empty reshape: the engine takes a scalar


def _config_type(datatype: str) -> int:
    from triton_kernel.protocols.proto.model_config import DATA_TYPE

    return DATA_TYPE.values_by_name[wire_to_config(datatype)].number if datatype != "INVALID" else 0


# --- checks -------------------------------------------------------------------------------


def check_config(config: Any, tensors: Sequence[TensorInfo], instance: str) -> None:
    """Every configured input and output must be an engine tensor of that type and shape."""
    by_name = {t.name: t for t in tensors}
    for tensor in tensors:
        if tensor.shape_tensor:
            raise Unsupported(
                f"model '{config.name}', tensor '{tensor.name}' is a shape tensor: shape "
                "tensors are not supported by this TensorRT backend"
            )
        if not tensor.linear:
            raise Unsupported(
                f"model '{config.name}', tensor '{tensor.name}' uses a non-linear IO format, "
                "which this TensorRT backend does not support"
            )
    for kind, field, is_input in (("input", config.input, True), ("output", config.output, False)):
        for io in field:
            tensor = by_name.get(io.name)
            if tensor is None:
                raise NotFound(f"{kind} '{io.name}' not found for {instance}")
            if tensor.is_input != is_input:
                raise InvalidArgument(
                    f"{kind} '{io.name}' is expected to be an {kind} in model for {instance}"
                )
            _check_datatype(kind, io, tensor, instance)
            dims = list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)
            _check_dims(config, io.name, tensor.shape, dims)


def _check_datatype(kind: str, io: Any, tensor: TensorInfo, instance: str) -> None:
    expected = wire_datatype(io.data_type)
    if tensor.datatype == "INVALID" or tensor.datatype != expected:
        raise InvalidArgument(
            f"unexpected datatype TYPE_{tensor.datatype} for inference {kind} '{io.name}', "
            f"expecting TYPE_{expected} for {instance}"
        )


def _check_dims(config: Any, name: str, engine: Shape, dims: list[int]) -> None:
    """Triton's ``CompareDimsSupported`` (non-exact: -1 on either side matches)."""
    batching = config.max_batch_size > 0
    where = f"model '{config.name}', tensor '{name}': "
    if batching and not engine:
        raise InvalidArgument(
            f"{where}for the model to support batching the shape should have at least 1 "
            f"dimension; but shape expected by the model is {_shape(engine)}"
        )
    full = [-1, *dims] if batching else dims
    ok = len(engine) == len(full) and all(
        e == c or e == -1 or c == -1 for e, c in zip(engine, full, strict=True)
    )
    if ok:
        return
    if batching:
        raise InvalidArgument(
            f"{where}the model expects {len(engine)} dimensions (shape {_shape(engine)}) but the "
            f"model configuration specifies {len(full)} dimensions (an initial batch dimension "
            "because max_batch_size > 0 followed by the explicit tensor shape, making complete "
            f"shape {_shape(full)})"
        )
    raise InvalidArgument(
        f"{where}the model expects {len(engine)} dimensions (shape {_shape(engine)}) but the "
        f"model configuration specifies {len(full)} dimensions (shape {_shape(full)})"
    )


def _shape(dims: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"
