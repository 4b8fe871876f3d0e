"""The TensorRT backend plugin: ``model.plan`` engines through TensorRT's Python runtime.

Each instance owns a thread, a CUDA stream on its GPU, and one execution context per
optimization profile its group selects; instances on the same GPU and NVDLA core
share the deserialized engine (as in Triton). A ``KIND_NVDLA`` secondary device sets
the runtime's ``DLA_core`` before the plan is deserialized. TensorRT and torch are
imported only when the first TensorRT model loads; configuration checks that need
neither (instance kinds, NVDLA settings, the plan file) come first.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from triton_kernel.kernel.backend import InstanceSpec, ModelContext, ThreadedInstance
from triton_kernel.kernel.errors import Unavailable
from triton_kernel.kernel.hookspecs import hookimpl
from triton_kernel.plugins.backends.pytorch.devices import check_instance_groups

from .engine_io import TensorInfo, check_config, complete_config, describe, profile_indices
from .runner import EngineRunner
from .runtime import PlanLoader, import_tensorrt, import_torch_cuda
from .validate import dla_cores, instance_groups, validate_instance_groups

PLATFORM = "tensorrt_plan"
PLAN_FILENAME = "model.plan"


@hookimpl
def tk_backend_create(name: str, settings: dict[str, str]) -> TensorRTBackend | None:
    return TensorRTBackend(settings) if name == "tensorrt" else None


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, settings: dict[str, str]) -> None:
        self.settings = settings
        #: ``--backend-config=tensorrt,version-compatible=true``: trust plans that carry
        #: their own lean runtime (host code).
        self.version_compatible = _flag(settings.get("version-compatible", "false"))

    async def load_model(self, context: ModelContext) -> TensorRTModel:
        config = context.config
        _fill_backend_fields(config)
        validate_instance_groups(config)
        path = plan_path(context)
        trt = import_tensorrt(context.name)
        torch = import_torch_cuda(context.name)
        check_instance_groups(config, torch, self.settings)
        model = TensorRTModel(
            context, trt, torch, PlanLoader(trt, torch, path, self.version_compatible)
        )
        await asyncio.to_thread(model.prepare)
        return model

    async def finalize(self) -> None:
        return None


def _flag(value: str) -> bool:
    from triton_kernel.plugins.backends.pytorch.params import parse_bool

    return parse_bool(value)


def _fill_backend_fields(config: Any) -> None:
    """What Triton's core fills for a TensorRT model before the backend sees it."""
    config.backend = config.backend or "tensorrt"
    if not config.platform:
        config.platform = PLATFORM
    if not config.default_model_filename:
        config.default_model_filename = PLAN_FILENAME


def plan_path(context: ModelContext) -> Path:
    """The plan file; a missing one fails the load as Triton's does."""
    path = context.version_dir / (context.config.default_model_filename or PLAN_FILENAME)
    if not path.is_file():
        first = next(iter(instance_groups(context.config)), context.name)
        raise Unavailable(f"unable to find '{path}' for model instance '{first}'")
    return path


class TensorRTModel:
    """A loaded plan: its engine description, completed configuration and shared engines."""

    def __init__(self, context: ModelContext, trt: Any, torch: Any, loader: PlanLoader) -> None:
        self.context = context
        self.config = context.config
        self.trt = trt
        self.torch = torch
        self.loader = loader
        self.tensors: list[TensorInfo] = []
        self.profiles: list[int] = [0]
        self.dla = dla_cores(self.config)

    def prepare(self) -> None:
        """Deserialize on the first instance's GPU, complete and check the configuration."""
        first = next(iter(instance_groups(self.config)))
        group = instance_groups(self.config)[first]
        engine = self.loader.engine(group.gpus[0] if group.gpus else 0, self.dla[first])
        self.tensors = describe(self.trt, engine)
        self.profiles = profile_indices(self.config, engine.num_optimization_profiles)
        if self.context.auto_complete:
            complete_config(self.config, self.tensors, self.profiles)
        check_config(self.config, self.tensors, first)

    async def create_instance(self, spec: InstanceSpec) -> TensorRTInstance:
        instance = TensorRTInstance(self, spec)
        await instance.start()
        return instance

    async def finalize(self) -> None:
        self.loader.close()


class TensorRTInstance(ThreadedInstance):
    """One instance: its thread, stream and execution contexts on one GPU (and NVDLA core)."""

    def __init__(self, model: TensorRTModel, spec: InstanceSpec) -> None:
        super().__init__(spec, "tensorrt")
        self.model = model

    def _create_runner(self) -> EngineRunner:
        model = self.model
        engine = model.loader.engine(self.spec.device_id, model.dla.get(self.spec.name, -1))
        return EngineRunner(
            model.torch,
            engine,
            model.config,
            model.tensors,
            model.profiles,
            self.spec.device_id,
            self.spec.name,
        )

    async def finalize(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:  # contexts are released on the thread that used them
            await asyncio.get_running_loop().run_in_executor(self._executor, runner.close)
        await self._stop_thread()
