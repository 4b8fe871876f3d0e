"""The contract a backend plugin fulfils: Triton's backend stages as async methods.

A backend serves one framework (Python models, ONNX Runtime, ...). The kernel asks
the plugin manager for it by name, then drives each model through Triton's stages:
load the model (and auto-complete its configuration), create each instance, execute
batches of requests on an instance, finalize instances, then the model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .request import InferenceRequest, InferenceResponse


@dataclass(slots=True)
class ModelContext:
    """What a backend learns about one version of a model it is asked to load."""

    name: str
    version: int
    #: ``<repository>/<model>``.
    model_dir: Path
    #: The repository folder holding ``model_dir``.
    repository: Path
    #: The parsed ``ModelConfig``, defaults filled; the backend may complete it.
    config: Any
    #: False under ``--disable-auto-complete-config``: the backend must not change ``config``.
    auto_complete: bool = True
    #: Its ``--backend-config=<backend>,<key>=<value>`` pairs, plus the global ones.
    backend_settings: dict[str, str] = field(default_factory=dict)
    #: The in-process ``Server`` API, for models that call other models (BLS, ensembles).
    server: Any = None

    @property
    def version_dir(self) -> Path:
        return self.model_dir / str(self.version)


@dataclass(slots=True, frozen=True)
class InstanceSpec:
    """One instance of an ``instance_group``: the unit that executes batches."""

    #: Triton's instance name: ``<group name>_<index in group>``.
    name: str
    #: ``KIND_CPU``, ``KIND_GPU`` or ``KIND_MODEL``.
    kind: str
    device_id: int = 0


@runtime_checkable
class ModelInstance(Protocol):
    """An instance of a loaded model (Triton's ``TRITONBACKEND_ModelInstance``)."""

    async def execute(self, requests: Sequence[InferenceRequest]) -> None:
        """Run ``requests`` as one batch and answer each through ``respond``/``fail``.

        Raising fails every request of the batch that has not been answered yet.
        """

    async def finalize(self) -> None:
        """Release the instance; called once, after its last ``execute`` returned."""


@runtime_checkable
class BackendModel(Protocol):
    """A loaded model version (Triton's ``TRITONBACKEND_Model``)."""

    #: The configuration the model runs with (auto-completed where the backend does it).
    config: Any

    async def create_instance(self, spec: InstanceSpec) -> ModelInstance:
        """Create one instance; the kernel creates a model's instances concurrently."""

    async def finalize(self) -> None:
        """Release the model; called after every instance was finalized."""


@runtime_checkable
class Backend(Protocol):
    """A framework backend (Triton's ``TRITONBACKEND_Backend``)."""

    name: str

    async def load_model(self, context: ModelContext) -> BackendModel:
        """Load one model version; raise a ``KernelError`` to fail the load with its message."""

    async def finalize(self) -> None:
        """Release the backend at server shutdown."""


class ThreadedInstance:
    """An instance whose runner lives on one thread of its own.

    For backends whose frameworks release the GIL (PyTorch, TensorRT): the runner is
    built, run and released on that thread. Subclasses build it in ``_create_runner``;
    the runner has ``batching`` (one call for the whole batch) and ``run(batch)`` (each
    request's outputs, in order).
    """

    def __init__(self, spec: InstanceSpec, thread_prefix: str) -> None:
        self.spec = spec
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"{thread_prefix}-{spec.name}")
        self._runner: Any = None

    def _create_runner(self) -> Any:
        raise NotImplementedError

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._runner = await loop.run_in_executor(self._executor, self._create_runner)
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    async def execute(self, requests: Sequence[InferenceRequest]) -> None:
        runner = self._runner
        assert runner is not None
        live = [r for r in requests if not r.done]  # cancelled while queued: skip them
        batches = [live] if runner.batching else [[r] for r in live]
        loop = asyncio.get_running_loop()
        for batch in batches:
            if not batch:
                continue
            outputs = await loop.run_in_executor(self._executor, runner.run, batch)
            for request, tensors in zip(batch, outputs, strict=True):
                request.respond(InferenceResponse(request.model_name, "", outputs=tensors))

    async def _stop_thread(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True)
