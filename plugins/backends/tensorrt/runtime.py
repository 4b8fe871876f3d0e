"""TensorRT itself: importing a runtime, and deserializing a plan onto a GPU (and NVDLA core).

The TensorRT Python API ships as ``tensorrt`` (full), ``tensorrt_lean`` (the lean
runtime, for version-compatible plans) or ``tensorrt_dispatch``, and since TensorRT 11
its bindings wheels hold ``<name>_bindings`` modules (the metapackages add the short
name); any of them serves.
Device buffers and CUDA streams come from torch's CUDA build.
"""

from __future__ import annotations

import importlib
import logging
import threading
from pathlib import Path
from typing import Any

from triton_kernel.kernel.errors import Internal, InvalidArgument, Unavailable

log = logging.getLogger(__name__)

__all__ = ["PlanLoader", "import_tensorrt", "import_torch_cuda"]

#: The Python modules of TensorRT's runtimes, in order of preference.
TENSORRT_MODULES = (
    "tensorrt",
    "tensorrt_bindings",
    "tensorrt_lean",
    "tensorrt_lean_bindings",
    "tensorrt_dispatch",
    "tensorrt_dispatch_bindings",
)
INSTALL_HINT = (
    "pip install tensorrt-lean-cu13-bindings tensorrt-lean-cu13-libs (the lean runtime, for "
    "version-compatible plans) or tensorrt-cu13 (the full runtime); -cu12 for CUDA 12; on "
    "Jetson, JetPack's python3-libnvinfer"
)


def import_tensorrt(model: str) -> Any:
    """The first TensorRT runtime module that imports; its absence fails the load."""
    failures = []
    for name in TENSORRT_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            failures.append(f"{name}: {exc}")
        except Exception as exc:  # a stub wheel that raises at import
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    raise Unavailable(
        f"unable to load model '{model}': no TensorRT runtime is installed for the tensorrt "
        f"backend ({INSTALL_HINT}); tried {'; '.join(failures)}"
    )


def import_torch_cuda(model: str) -> Any:
    """torch, which provides the device buffers and CUDA streams of TensorRT instances."""
    try:
        import torch
    except ImportError as exc:
        raise Unavailable(
            f"unable to load model '{model}': the tensorrt backend allocates device buffers and "
            f"CUDA streams with PyTorch's CUDA build (pip install torch): {exc}"
        ) from None
    return torch


def _make_logger(trt: Any) -> Any:
    """A TensorRT logger that forwards to ``logging`` and keeps the last error."""

    class Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.last_error = ""

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)
            if level <= int(trt.ILogger.Severity.ERROR):
                self.last_error = msg
                log.error("TensorRT: %s", msg)
            elif level == int(trt.ILogger.Severity.WARNING):
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return Logger()


class PlanLoader:
    """Deserializes one plan once per (GPU, NVDLA core), sharing engines across instances."""

    def __init__(self, trt: Any, torch: Any, path: Path, version_compatible: bool) -> None:
        self.trt = trt
        self.torch = torch
        self.path = path
        self.version_compatible = version_compatible
        self.logger = _make_logger(trt)
        self._engines: dict[tuple[int, int], tuple[Any, Any]] = {}
        #: TensorRT's engine creation is not thread-safe (Triton serializes it too).
        self._lock = threading.Lock()

    def engine(self, device: int, dla_core: int) -> Any:
        """The engine for ``device`` (and NVDLA core ``dla_core``, -1 for none)."""
        with self._lock:
            found = self._engines.get((device, dla_core))
            if found is None:
                found = self._load(device, dla_core)
                self._engines[(device, dla_core)] = found
            return found[1]

    def _load(self, device: int, dla_core: int) -> tuple[Any, Any]:
        with self.torch.cuda.device(device):
            runtime = self.trt.Runtime(self.logger)
            if runtime is None:
                raise Internal(f"unable to create TensorRT runtime: {self.logger.last_error}")
            if self.version_compatible:
                runtime.engine_host_code_allowed = True
            if dla_core != -1:
                available = runtime.num_DLA_cores
                if dla_core >= available:
                    raise InvalidArgument(
                        f"unable to create TensorRT runtime with DLA Core ID: {dla_core}, "
                        f"available number of DLA cores: {available}"
                    )
                runtime.DLA_core = dla_core  # before deserializing, as Triton's setDLACore
            engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
            if engine is None:
                raise Internal(f"unable to create TensorRT engine: {self.logger.last_error}")
        return runtime, engine

    def close(self) -> None:
        with self._lock:
            self._engines.clear()
