"""One loaded version of a model: its configuration, instances and scheduler."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .backend import BackendModel, InstanceSpec, ModelInstance
from .errors import Unavailable
from .request import InferenceRequest, InferenceResponse
from .scheduler import Scheduler, create_scheduler
from .statistics import ModelStatistics
from .validation import Signature, validate_request

log = logging.getLogger(__name__)


class ModelState(str, Enum):
    """Triton's model states, as the repository index reports them."""

    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(slots=True)
class ModelVersion:
    """A version that loaded, or failed to, with what a request needs to reach it."""

    name: str
    version: int
    state: ModelState = ModelState.LOADING
    #: Why the version is UNAVAILABLE (a failed load, an unload).
    reason: str = ""
    config: Any = None
    signature: Signature | None = None
    #: Output name -> class labels (``label_filename``), for classification.
    labels: dict[str, list[str]] = field(default_factory=dict)
    backend_model: BackendModel | None = None
    instances: list[ModelInstance] = field(default_factory=list)
    scheduler: Scheduler | None = None
    in_flight: int = 0
    statistics: ModelStatistics = field(default_factory=ModelStatistics)

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    async def start(self, backend_model: BackendModel, model_dir: Path) -> None:
        """Create every instance (concurrently) and start scheduling.

        On failure everything created so far is finalized before the error propagates.
        """
        self.backend_model = backend_model
        try:
            self.config = backend_model.config
            self.signature = Signature.from_config(self.config)
            self.labels = _read_labels(self.config, model_dir)
            results = await asyncio.gather(
                *(backend_model.create_instance(s) for s in instance_specs(self.config)),
                return_exceptions=True,
            )
            self.instances = [r for r in results if not isinstance(r, BaseException)]
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                raise failures[0]
        except BaseException:
            await self.finalize()
            raise
        self.scheduler = create_scheduler(self.name, self.config, self.instances, self.statistics)
        self.state = ModelState.READY

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Validate, queue and await one request."""
        scheduler = self._admit(request)
        future = request.bind(asyncio.get_running_loop())
        self.in_flight += 1
        ok = False
        try:
            scheduler.enqueue(request)
            response = await future
            ok = True
            return response
        finally:
            self.in_flight -= 1
            self.statistics.request_done(request.enqueued_ns, ok)

    def stream(self, request: InferenceRequest) -> AsyncIterator[InferenceResponse]:
        """Validate one request now (raising), then queue it and yield each response.

        Validation errors are raised by this call, execution errors by the iteration:
        Triton's stream tells the two apart.
        """
        return self._stream(self._admit(request), request)

    async def _stream(
        self, scheduler: Scheduler, request: InferenceRequest
    ) -> AsyncIterator[InferenceResponse]:
        responses = request.bind_stream(asyncio.get_running_loop())
        self.in_flight += 1
        ok = False
        try:
            scheduler.enqueue(request)
            async for response in responses:
                yield response
            ok = True
        finally:
            self.in_flight -= 1
            self.statistics.request_done(request.enqueued_ns, ok)
            await responses.aclose()  # type: ignore[attr-defined]

    def _admit(self, request: InferenceRequest) -> Scheduler:
        if self.state is not ModelState.READY or self.scheduler is None:
            raise Unavailable(f"Request for unknown model: '{self.name}' is not ready")
        assert self.signature is not None
        validate_request(request, self.signature)
        request.enqueued_ns = time.perf_counter_ns()
        return self.scheduler

    async def finalize(self) -> None:
        """Drain the scheduler, then finalize instances and the backend model."""
        self.state = ModelState.UNLOADING
        if self.scheduler is not None:
            await self.scheduler.drain_and_stop()
            self.scheduler = None
        results = await asyncio.gather(
            *(instance.finalize() for instance in self.instances), return_exceptions=True
        )
        for result in results:
            if isinstance(result, Exception):
                log.error("finalizing an instance of model '%s' failed: %s", self.name, result)
        self.instances = []
        if self.backend_model is not None:
            try:
                await self.backend_model.finalize()
            except Exception:
                log.exception("finalizing model '%s' failed", self.name)
            self.backend_model = None
        self.state = ModelState.UNAVAILABLE
        self.reason = "unloaded"


def instance_specs(config: Any) -> list[InstanceSpec]:
    """One spec per instance of every ``instance_group``, named as Triton names them.

    An ensemble has no instance group (Triton's configuration shows none): one
    model-wide instance runs it.
    """
    if not config.instance_group:
        return [InstanceSpec(config.name, "KIND_MODEL")]
    specs = []
    for group in config.instance_group:
        kind = type(group).Kind.Name(group.kind)
        devices = (list(group.gpus) or [0]) if kind == "KIND_GPU" else [0]
        pairs = [(device, n) for device in devices for n in range(group.count)]
        for index, (device, _) in enumerate(pairs):
            name = group.name if len(pairs) == 1 else f"{group.name}_{index}"
            specs.append(InstanceSpec(name, kind, device))
    return specs


def _read_labels(config: Any, model_dir: Path) -> dict[str, list[str]]:
    labels = {}
    for output in config.output:
        if output.label_filename:
            path = model_dir / output.label_filename
            try:
                labels[output.name] = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise Unavailable(
                    f"unable to read label file '{path}' of model '{config.name}': {exc}"
                ) from None
    return labels
