"""The PyTorch backend plugin: TorchScript ``model.pt`` models, served as Triton serves them.

Each instance owns a thread (torch releases the GIL while it computes, so instances
really run in parallel), its own copy of the module on its device (one module per
device is shared instead under ``ENABLE_WEIGHT_SHARING``, as in Triton), and on a GPU
its own CUDA stream. ``torch`` is imported only when the first PyTorch model loads.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import warnings
from pathlib import Path
from typing import Any

from triton_kernel.kernel.backend import InstanceSpec, ModelContext, ThreadedInstance
from triton_kernel.kernel.errors import Unavailable
from triton_kernel.kernel.hookspecs import hookimpl

from .binding import Binding, bind, forward_arguments, strict_binding
from .devices import check_instance_groups, device_for
from .modules import (
    PYTHON_RUNTIME,
    import_python_model,
    load_python_runtime_module,
    load_torchscript,
    python_runtime_path,
    torchscript_path,
)
from .params import TorchParameters, parse_parameters
from .runner import Runner

log = logging.getLogger(__name__)

PLATFORM = "pytorch_libtorch"
#: Triton's other spelling of the TorchScript platform.
PLATFORM_ALIASES = frozenset((PLATFORM, "libtorch"))


@hookimpl
def tk_backend_create(name: str, settings: dict[str, str]) -> PyTorchBackend | None:
    return PyTorchBackend(settings) if name == "pytorch" else None


class PyTorchBackend:
    name = "pytorch"

    def __init__(self, settings: dict[str, str]) -> None:
        self.settings = settings

    async def load_model(self, context: ModelContext) -> PyTorchModel:
        config = context.config
        _fill_backend_fields(config)
        torch = import_torch(context.name)
        check_instance_groups(config, torch, self.settings)
        params = parse_parameters(config)
        _set_thread_counts(torch, params, config.runtime == PYTHON_RUNTIME)
        model = PyTorchModel(context, torch, params)
        await asyncio.to_thread(model.prepare)
        return model

    async def finalize(self) -> None:
        return None


def import_torch(model_name: str) -> Any:
    """``torch``, imported on first use; its absence fails the load with what to install."""
    try:
        import torch
    except ImportError as exc:
        raise Unavailable(
            f"unable to load model '{model_name}': the pytorch backend needs PyTorch "
            f"(pip install torch, or triton-kernel[torch]): {exc}"
        ) from None
    # Inputs are views over the received request bodies, which numpy marks read-only.
    warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
    return torch


def _fill_backend_fields(config: Any) -> None:
    """What Triton's core fills for a PyTorch model before the backend sees it."""
    config.backend = config.backend or "pytorch"
    if not config.platform:
        config.platform = PLATFORM
    if config.runtime != PYTHON_RUNTIME and not config.default_model_filename:
        config.default_model_filename = "model.pt"


_threads_lock = threading.Lock()
_threads_set: set[str] = set()


def _set_thread_counts(torch: Any, params: TorchParameters, python_runtime: bool) -> None:
    """Process-wide thread pools: the first model that sets one wins (as in Triton)."""
    intra = params.num_threads if python_runtime else params.intra_op_threads
    inter = params.num_interop_threads if python_runtime else params.inter_op_threads
    with _threads_lock:
        if intra > 0 and "intra" not in _threads_set:
            torch.set_num_threads(intra)
            _threads_set.add("intra")
        if inter > 0 and "inter" not in _threads_set:
            _threads_set.add("inter")
            try:
                torch.set_num_interop_threads(inter)
            except RuntimeError as exc:  # parallel work already started in this process
                log.warning("inter-op thread count %d not applied: %s", inter, exc)


class PyTorchModel:
    """A loaded PyTorch model version: its file, its binding of names, its shared modules."""

    def __init__(self, context: ModelContext, torch: Any, params: TorchParameters) -> None:
        self.context = context
        self.config = context.config
        self.torch = torch
        self.params = params
        self.python_runtime = self.config.runtime == PYTHON_RUNTIME
        self.path: Path | None = None
        self.binding: Binding | None = None
        #: The PyTorch 2 runtime's ``nn.Module`` class (None: it loads TorchScript).
        self.module_class: type | None = None
        #: A CPU copy loaded to check the file; the first CPU instance adopts it.
        self._spare: Any = None
        self._shared: dict[str, Any] = {}
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Find and check the model file, and bind the configuration to it (in a thread)."""
        if self.python_runtime:
            self.path = python_runtime_path(self.context)
            if self.path.suffix == ".py":
                _, self.module_class = import_python_model(self.torch, self.path, self.config.name)
            self.binding = strict_binding(self.config)
            return
        self.path = torchscript_path(self.context)
        module = load_torchscript(
            self.torch,
            self.path,
            self.config.name,
            self.torch.device("cpu"),
            self.params.inference_mode,
        )
        if not hasattr(module, "forward"):
            raise Unavailable(
                f"failed to load model '{self.config.name}': {self.path.name} has no forward method"
            )
        self.binding = bind(self.config, forward_arguments(module))
        kinds = {type(g).Kind.Name(g.kind) for g in self.config.instance_group}
        self._spare = module if "KIND_CPU" in kinds else None

    def module_for(self, device: Any) -> Any:
        """The module an instance on ``device`` runs (called in the instance's thread)."""
        key = str(device)
        with self._lock:
            if self.params.weight_sharing and key in self._shared:
                log.info("Reusing TorchScript model for instance '%s'", self.config.name)
                return self._shared[key]
            module, self._spare = (self._spare, None) if key == "cpu" else (None, self._spare)
        if module is None:
            module = self._load(device)
        if self.params.weight_sharing:
            with self._lock:
                module = self._shared.setdefault(key, module)
        return module

    def _load(self, device: Any) -> Any:
        assert self.path is not None
        if self.python_runtime:
            return load_python_runtime_module(
                self.torch, self.path, self.module_class, self.config.name, device, self.params
            )
        return load_torchscript(
            self.torch, self.path, self.config.name, device, self.params.inference_mode
        )

    async def create_instance(self, spec: InstanceSpec) -> PyTorchInstance:
        instance = PyTorchInstance(self, spec)
        await instance.start()
        return instance

    async def finalize(self) -> None:
        self._spare = None
        self._shared.clear()


class PyTorchInstance(ThreadedInstance):
    """One instance: a thread of its own running its module on its device."""

    def __init__(self, model: PyTorchModel, spec: InstanceSpec) -> None:
        super().__init__(spec, "pytorch")
        self.model = model

    def _create_runner(self) -> Runner:
        model = self.model
        device = device_for(model.torch, self.spec.kind, self.spec.device_id)
        module = model.module_for(device)
        assert model.binding is not None
        return Runner(
            model.torch,
            module,
            model.binding,
            model.config,
            model.params,
            device,
            python_runtime=model.python_runtime,
        )

    async def finalize(self) -> None:
        runner, self._runner = self._runner, None
        await self._stop_thread()
        if runner is not None and runner.cuda:
            runner.module = None
            runner.torch.cuda.empty_cache()
