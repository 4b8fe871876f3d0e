"""A PyTorch model's ``parameters``, read as Triton's pytorch backend reads them.

Booleans accept ``true/on/1`` and ``false/off/0`` in any case (Triton's
``ParseBoolValue``); a bad value fails the load with Triton's text. A switch left out
changes nothing, so the process-wide JIT settings stay as PyTorch has them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from triton_kernel.kernel.errors import InvalidArgument

log = logging.getLogger(__name__)

__all__ = ["TorchParameters", "parse_bool", "parse_parameters"]

#: Parameters that meant something to older PyTorch builds and are no-ops now.
_OBSOLETE = {
    "ENABLE_NVFUSER": "nvFuser was removed from TorchScript in PyTorch 2.x",
}


@dataclass(slots=True, frozen=True)
class TorchParameters:
    """What a model's ``parameters`` ask of PyTorch (Triton's defaults when absent)."""

    #: ``DISABLE_OPTIMIZED_EXECUTION``: the graph executor's optimizations (on by default).
    optimized_execution: bool = True
    #: ``INFERENCE_MODE``: run under ``torch.inference_mode`` (on by default).
    inference_mode: bool = True
    #: ``DISABLE_CUDNN``.
    cudnn: bool = True
    #: ``ENABLE_CACHE_CLEANING``: ``torch.cuda.empty_cache()`` after each GPU execution.
    cache_cleaning: bool = False
    #: ``ENABLE_WEIGHT_SHARING``: instances on one device share one module.
    weight_sharing: bool = False
    #: ``ENABLE_TENSOR_FUSER``, ``ENABLE_JIT_PROFILING``, ``ENABLE_JIT_EXECUTOR``: None
    #: leaves PyTorch's process-wide setting alone (Triton changes it only when given).
    tensor_fuser: bool | None = None
    jit_profiling: bool | None = None
    jit_executor: bool | None = None
    #: ``INTRA_OP_THREAD_COUNT`` / ``INTER_OP_THREAD_COUNT``: process-wide, first model wins.
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    #: The PyTorch 2 path (``runtime: "model.py"``): ``NUM_THREADS``, ``NUM_INTEROP_THREADS``
    #: and ``TORCH_COMPILE_OPTIONAL_PARAMETERS`` (a JSON object of ``torch.compile`` options).
    num_threads: int = 0
    num_interop_threads: int = 0
    compile_options: dict[str, Any] | None = None


def parse_bool(value: str) -> bool:
    """Triton's ``ParseBoolValue``."""
    lowered = value.lower()
    if lowered in ("true", "on", "1"):
        return True
    if lowered in ("false", "off", "0"):
        return False
    raise InvalidArgument(f"failed to convert '{value}' to boolean")


def _parse_int(value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise InvalidArgument(f"failed to convert '{value}' to integral number") from None


def parse_parameters(config: Any) -> TorchParameters:
    """The model's ``parameters`` map as ``TorchParameters``; raises on a malformed value."""
    values = {key: p.string_value for key, p in config.parameters.items()}
    for key, why in _OBSOLETE.items():
        if key in values:
            log.warning("model '%s': parameter %s has no effect: %s", config.name, key, why)

    def flag(key: str) -> bool | None:
        return parse_bool(values[key]) if key in values else None

    def count(key: str) -> int:
        return _parse_int(values[key]) if key in values else 0

    disable_optimized = flag("DISABLE_OPTIMIZED_EXECUTION")
    disable_cudnn = flag("DISABLE_CUDNN")
    inference_mode = flag("INFERENCE_MODE")
    return TorchParameters(
        optimized_execution=not disable_optimized,
        inference_mode=True if inference_mode is None else inference_mode,
        cudnn=not disable_cudnn,
        cache_cleaning=bool(flag("ENABLE_CACHE_CLEANING")),
        weight_sharing=bool(flag("ENABLE_WEIGHT_SHARING")),
        tensor_fuser=flag("ENABLE_TENSOR_FUSER"),
        jit_profiling=flag("ENABLE_JIT_PROFILING"),
        jit_executor=flag("ENABLE_JIT_EXECUTOR"),
        intra_op_threads=count("INTRA_OP_THREAD_COUNT"),
        inter_op_threads=count("INTER_OP_THREAD_COUNT"),
        num_threads=count("NUM_THREADS"),
        num_interop_threads=count("NUM_INTEROP_THREADS"),
        compile_options=_compile_options(values.get("TORCH_COMPILE_OPTIONAL_PARAMETERS")),
    )


def _compile_options(value: str | None) -> dict[str, Any] | None:
    """``TORCH_COMPILE_OPTIONAL_PARAMETERS``: a JSON object; ``model`` may not be set."""
    if value is None:
        return None
    try:
        options = json.loads(value)
    except ValueError as exc:
        raise InvalidArgument(
            f"TORCH_COMPILE_OPTIONAL_PARAMETERS is not valid JSON: {exc}"
        ) from None
    if not isinstance(options, dict):
        raise InvalidArgument("TORCH_COMPILE_OPTIONAL_PARAMETERS must be a JSON object")
    if "model" in options:
        raise InvalidArgument("'model' is not an optional parameter for 'torch.compile'")
    return options
