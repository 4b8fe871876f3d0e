"""Session options and execution providers, from a model's config as Triton reads it.

Model-wide settings (graph optimization level, threads, memory) come from
``optimization.graph.level`` and ``parameters``; each instance then picks its
execution providers from its kind and device and from
``optimization.execution_accelerators``. Keys, values and error texts are those of
Triton's onnxruntime backend (``ModelState::ModelState`` and ``LoadModel``).
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass, field
from typing import Any

from triton_kernel.kernel.backend import InstanceSpec
from triton_kernel.kernel.errors import InvalidArgument, Unavailable

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TENSORRT_EP = "TensorrtExecutionProvider"
OPENVINO_EP = "OpenVINOExecutionProvider"

#: ``optimization.graph.level`` -> ``GraphOptimizationLevel`` name (anything else: all).
_GRAPH_LEVELS = {-1: "ORT_ENABLE_BASIC", 1: "ORT_ENABLE_EXTENDED", 2: "ORT_DISABLE_ALL"}
#: Triton's minimum CUDA compute capability (``--min-supported-compute-capability``).
DEFAULT_MIN_COMPUTE_CAPABILITY = 6.0

#: TensorRT accelerator parameters Triton passes through under the same name, with
#: the type it checks them as.
_TRT_PASSTHROUGH = {
    "trt_max_partition_iterations": int,
    "trt_min_subgraph_size": int,
    "trt_dla_enable": bool,
    "trt_dla_core": int,
    "trt_engine_cache_enable": bool,
    "trt_engine_cache_path": str,
    "trt_engine_cache_prefix": str,
    "trt_dump_subgraphs": bool,
    "trt_force_sequential_engine_build": bool,
    "trt_context_memory_sharing_enable": bool,
    "trt_layer_norm_fp32_fallback": bool,
    "trt_timing_cache_enable": bool,
    "trt_timing_cache_path": str,
    "trt_force_timing_cache": bool,
    "trt_detailed_build_log": bool,
    "trt_build_heuristics_enable": bool,
    "trt_sparsity_enable": bool,
    "trt_builder_optimization_level": int,
    "trt_auxiliary_streams": int,
    "trt_tactic_sources": str,
    "trt_extra_plugin_lib_paths": str,
    "trt_profile_min_shapes": str,
    "trt_profile_max_shapes": str,
    "trt_profile_opt_shapes": str,
    "trt_cuda_graph_enable": bool,
    "trt_dump_ep_context_model": bool,
    "trt_ep_context_file_path": str,
    "trt_ep_context_embed_mode": int,
    "int8_calibration_table_name": str,
    "int8_use_native_calibration_table": bool,
}


_PRECISION_FLAGS = {"FP16": "trt_fp16_enable", "BF16": "trt_bf16_enable", "INT8": "trt_int8_enable"}


@dataclass(slots=True)
class Providers:
    """What one instance's session is created with."""

    names: list[str] = field(default_factory=list)
    options: list[dict[str, str]] = field(default_factory=list)
    #: OpenVINO sessions are created one at a time (Triton: not thread-safe).
    serialize: bool = False

    def add(self, name: str, options: dict[str, str] | None = None) -> None:
        self.names.append(name)
        self.options.append(options or {})


# --- model-wide session options -----------------------------------------------------------


def session_options(ort: Any, config: Any, settings: dict[str, str]) -> Any:
    """The ``SessionOptions`` every instance of the model starts from."""
    options = ort.SessionOptions()
    level = _GRAPH_LEVELS.get(config.optimization.graph.level, "ORT_ENABLE_ALL")
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    mode = model_int(config, "execution_mode", 0)
    if mode not in (0, 1):
        raise InvalidArgument(
            "Invalid configuration value provided. Expected values for  execution_mode are 0 "
            f"or 1 but got {mode} ."
        )
    options.execution_mode = getattr(
        ort.ExecutionMode, "ORT_PARALLEL" if mode else "ORT_SEQUENTIAL"
    )
    if parse_bool(settings.get("enable-global-threadpool", "0")):
        options.use_per_session_threads = False
    else:
        _set_threads(options, config, settings)
    key = "session.use_device_allocator_for_initializers"
    if key in config.parameters:
        options.add_session_config_entry(key, config.parameters[key].string_value)
    if "enable_mem_arena" in config.parameters:
        options.enable_cpu_mem_arena = model_bool(config, "enable_mem_arena")
    if "enable_mem_pattern" in config.parameters:
        options.enable_mem_pattern = model_bool(config, "enable_mem_pattern")
    return options


def _set_threads(options: Any, config: Any, settings: dict[str, str]) -> None:
    """Per-session pools; ``--backend-config=onnxruntime,<key>=N`` is the server-wide default.

    (Triton reads those backend keys only for its global pool; here they also set the
    default of models that do not choose, which a small shared machine needs.)
    """
    for key, attribute in (
        ("intra_op_thread_count", "intra_op_num_threads"),
        ("inter_op_thread_count", "inter_op_num_threads"),
    ):
        default = parse_int(settings.get(key, "0"))
        count = model_int(config, key, default)
        if count > 0:
            setattr(options, attribute, count)


def run_options(ort: Any, config: Any) -> Any:
    """The ``RunOptions`` of every run (Triton: arena shrinkage is a run setting)."""
    options = ort.RunOptions()
    key = "memory.enable_memory_arena_shrinkage"
    if key in config.parameters:
        options.add_run_config_entry(key, config.parameters[key].string_value)
    return options


def set_global_thread_pool(ort: Any, settings: dict[str, str]) -> None:
    """``enable-global-threadpool``: one pool for every session, sized by the backend config."""
    if not parse_bool(settings.get("enable-global-threadpool", "0")):
        return
    intra = parse_int(settings.get("intra_op_thread_count", "0"))
    inter = parse_int(settings.get("inter_op_thread_count", "0"))
    ort.capi._pybind_state.set_global_thread_pool_sizes(max(intra, 0), max(inter, 0))


# --- execution providers of one instance ---------------------------------------------------


def providers(ort: Any, config: Any, spec: InstanceSpec) -> Providers:
    """The providers of ``spec``: GPU accelerators and CUDA first for KIND_GPU, then CPU."""
    available = set(ort.get_available_providers())
    chosen = Providers()
    accelerators = config.optimization.execution_accelerators
    if spec.kind == "KIND_GPU":
        _require(ort, available, CUDA_EP, f"KIND_GPU instance '{spec.name}'", config.name)
        cuda = _deprecated_cuda_options(config)
        for accelerator in accelerators.gpu_execution_accelerator:
            if accelerator.name == "tensorrt":
                what = "the 'tensorrt' GPU execution accelerator"
                _require(ort, available, TENSORRT_EP, what, config.name)
                chosen.add(TENSORRT_EP, _tensorrt_options(accelerator, spec.device_id))
            elif accelerator.name == "cuda":
                cuda.update(_cuda_options(accelerator))
            else:
                raise _unknown_accelerator(accelerator.name)
        cuda["device_id"] = str(spec.device_id)
        chosen.add(CUDA_EP, cuda)
    for accelerator in accelerators.cpu_execution_accelerator:
        if accelerator.name != "openvino":
            raise _unknown_accelerator(accelerator.name)
        what = "the 'openvino' CPU execution accelerator"
        _require(ort, available, OPENVINO_EP, what, config.name)
        chosen.add(OPENVINO_EP, {"device_type": "CPU"})
        chosen.serialize = True
    chosen.add(CPU_EP)
    return chosen


def _require(ort: Any, available: set[str], provider: str, what: str, model: str) -> None:
    if provider not in available:
        hint = "onnxruntime-openvino" if provider == OPENVINO_EP else "onnxruntime-gpu"
        raise InvalidArgument(
            f"unable to load model '{model}': {what} needs onnxruntime's {provider}, which "
            f"the installed onnxruntime {ort.__version__} lacks (it has "
            f"{', '.join(sorted(available))}); install {hint}"
        )


def _unknown_accelerator(name: str) -> InvalidArgument:
    return InvalidArgument(f"unknown Execution Accelerator '{name}' is requested")


def _tensorrt_options(accelerator: Any, device_id: int) -> dict[str, str]:
    """Triton's TensorRT accelerator parameters as TensorRT EP options."""
    options = {}
    for key, value in accelerator.parameters.items():
        if key == "precision_mode":
            if value in _PRECISION_FLAGS:
                options[_PRECISION_FLAGS[value]] = "1"
            elif value != "FP32":
                raise InvalidArgument(f"unsupported precision mode '{value}' is requested")
        elif key == "max_workspace_size_bytes":
            parse_int(value)
            options["trt_max_workspace_size"] = value
        elif key in _TRT_PASSTHROUGH:
            kind = _TRT_PASSTHROUGH[key]
            if kind is int:
                parse_int(value)
            elif kind is bool:
                parse_bool(value)
            options[key if key.startswith("trt_") else f"trt_{key}"] = value
        else:
            raise InvalidArgument(
                f"unknown parameter '{key}' is provided for TensorRT Execution Accelerator"
            )
    options["device_id"] = str(device_id)
    return options


def _cuda_options(accelerator: Any) -> dict[str, str]:
    """The ``cuda`` accelerator's parameters are CUDA EP options, passed as they are."""
    options = {}
    for key, value in accelerator.parameters.items():
        if key in ("do_copy_in_default_stream", "use_ep_level_unified_stream"):
            parse_bool(value)
        if value:
            options[key] = value
    return options


def _deprecated_cuda_options(config: Any) -> dict[str, str]:
    """CUDA options Triton still reads from ``parameters`` (its deprecated form)."""
    options = {}
    if "cudnn_conv_algo_search" in config.parameters:
        value = model_int(config, "cudnn_conv_algo_search", 0)
        names = {0: "EXHAUSTIVE", 1: "HEURISTIC", 2: "DEFAULT"}
        if value not in names:
            raise InvalidArgument(
                f"unsupported cudnn_conv_algo_search value '{value}' is requested"
            )
        options["cudnn_conv_algo_search"] = names[value]
    if "gpu_mem_limit" in config.parameters:
        options["gpu_mem_limit"] = config.parameters["gpu_mem_limit"].string_value
    if "arena_extend_strategy" in config.parameters:
        value = model_int(config, "arena_extend_strategy", 0)
        names = {0: "kNextPowerOfTwo", 1: "kSameAsRequested"}
        if value not in names:
            raise InvalidArgument(f"unsupported arena_extend_strategy value '{value}' is requested")
        options["arena_extend_strategy"] = names[value]
    if "do_copy_in_default_stream" in config.parameters:
        options["do_copy_in_default_stream"] = config.parameters[
            "do_copy_in_default_stream"
        ].string_value
    return options


# --- GPUs -----------------------------------------------------------------------------------


def check_gpu_groups(config: Any, settings: dict[str, str]) -> None:
    """Triton's checks of instance groups against the GPUs present (its core's texts)."""
    supported: list[int] | None = None
    for group in config.instance_group:
        kind = type(group).Kind.Name(group.kind)
        where = f"instance group {group.name} of model {config.name}"
        if kind in ("KIND_CPU", "KIND_MODEL") and group.gpus:
            raise InvalidArgument(f"{where} has kind {kind} but specifies one or more GPUs")
        if kind != "KIND_GPU":
            continue
        minimum = float(settings.get("min-compute-capability", DEFAULT_MIN_COMPUTE_CAPABILITY))
        if supported is None:
            supported = supported_gpus(minimum)
        if not supported:
            raise InvalidArgument(f"{where} has kind KIND_GPU but no GPUs are available")
        for gpu in group.gpus:
            if gpu not in supported:
                raise InvalidArgument(
                    f"{where} specifies invalid or unsupported gpu id {gpu}. GPUs with at least "
                    f"the minimum required CUDA compute compatibility of {minimum:f} are: "
                    + ", ".join(str(g) for g in supported)
                )


@functools.cache
def _cuda_driver() -> Any:
    """The CUDA driver library, initialized, or None where there is no GPU driver."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    return driver if driver.cuInit(0) == 0 else None


def supported_gpus(min_compute_capability: float) -> list[int]:
    """The CUDA devices (as ``CUDA_VISIBLE_DEVICES`` numbers them) of enough capability.

    Asked of the driver directly: no CUDA toolkit or Python package needed to know.
    """
    driver = _cuda_driver()
    if driver is None:
        return []
    count = ctypes.c_int(0)
    if driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return []
    found = []
    for ordinal in range(count.value):
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        driver.cuDeviceGetAttribute(ctypes.byref(major), 75, ordinal)  # COMPUTE_CAPABILITY_MAJOR
        driver.cuDeviceGetAttribute(ctypes.byref(minor), 76, ordinal)  # COMPUTE_CAPABILITY_MINOR
        if major.value + minor.value / 10 >= min_compute_capability:
            found.append(ordinal)
    return found


def check_session_providers(
    session: Any, wanted: Providers, spec: InstanceSpec, model: str
) -> None:
    """ONNX Runtime falls back to the CPU when a GPU provider fails to start: refuse that."""
    missing = [name for name in wanted.names if name not in session.get_providers()]
    if missing:
        raise Unavailable(
            f"unable to load model '{model}': onnxruntime could not start {', '.join(missing)} "
            f"for instance '{spec.name}' on device {spec.device_id} (its reason is in the "
            "server log)"
        )


# --- Triton's parsing of string parameters --------------------------------------------------


def model_int(config: Any, key: str, default: int) -> int:
    if key not in config.parameters:
        return default
    return parse_int(config.parameters[key].string_value)


def model_bool(config: Any, key: str) -> bool:
    return parse_bool(config.parameters[key].string_value)


def parse_int(value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise InvalidArgument(f"failed to convert '{value}' to integral number") from None


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "on", "1"):
        return True
    if lowered in ("false", "off", "0"):
        return False
    raise InvalidArgument(f"failed to convert '{value}' to boolean")
