"""One loaded version of a model: its configuration, instances and scheduler."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .backend import BackendModel, InstanceSpec, ModelInstance
from .cache import ResponseCache, request_key
from .errors import InvalidArgument, KernelError, Unavailable
from .load import LOAD
from .request import InferenceRequest, InferenceResponse
from .scheduler import Scheduler, create_scheduler, request_batch_size
from .statistics import FailureReason, ModelStatistics, current_failure, failure_reason
from .validation import Signature, validate_request
from .warmup import WarmupTarget, warm_up

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
    #: The server's response cache; kept at start only if the model enables it too.
    cache: ResponseCache | None = None
    #: The event loop the version was started in (Python 3.11's ``get_running_loop``
    #: makes a system call, once per request on the hot path otherwise).
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    async def start(self, backend_model: BackendModel, model_dir: Path) -> None:
        """Create every instance (concurrently), warm each up, then start scheduling.

        On failure everything created so far is finalized before the error propagates.
        """
        self.backend_model = backend_model
        self.loop = asyncio.get_running_loop()
        try:
            self.config = backend_model.config
            _check_response_cache(self.config)
            if not self.config.response_cache.enable:
                self.cache = None
            self.signature = Signature.from_config(self.config)
            self.labels = _read_labels(self.config, model_dir)
            specs = instance_specs(self.config)
            results = await asyncio.gather(
                *(backend_model.create_instance(s) for s in specs), return_exceptions=True
            )
            self.instances = [r for r in results if not isinstance(r, BaseException)]
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                raise failures[0]
            await self._warm_up(specs, model_dir)
        except BaseException:
            await self.finalize()
            raise
        self.scheduler = create_scheduler(self.name, self.config, self.instances, self.statistics)
        self.state = ModelState.READY

    async def _warm_up(self, specs: list[InstanceSpec], model_dir: Path) -> None:
        """Triton's ``model_warmup``: every instance runs the samples before READY."""
        if not self.config.model_warmup:
            return
        assert self.signature is not None
        target = WarmupTarget(self.config, self.signature, model_dir, self.version, self.statistics)
        results = await asyncio.gather(
            *(warm_up(target, i, s.name) for i, s in zip(self.instances, specs, strict=True)),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Validate, queue and await one request (or answer it from the response cache)."""
        scheduler = self._admit(request)
        key, lookup_ns = b"", 0
        if self.cache is not None:
            key, lookup_ns, cached = self._cache_lookup(request)
            if cached is not None:
                if request.trace is not None:
                    request.trace.request_done(True)
                return cached
        future = request.bind(asyncio.get_running_loop())
        self._enter()
        ok = queued = False
        try:
            scheduler.enqueue(request)
            queued = True
            response = await future
            ok = True
            return response
        finally:
            self._leave()
            if queued:  # one a full queue refused is not counted, as in Triton
                self._count(request, ok)
            if request.trace is not None:
                request.trace.request_done(ok)
            if key:
                self._cache_insert(key, lookup_ns, response if ok else None)

    def submit(
        self, request: InferenceRequest, on_done: Callable[[asyncio.Future[Any]], None]
    ) -> asyncio.Future[Any]:
        """:meth:`infer` without a coroutine, for the frontends' hot paths (no response
        cache here: the server routes those requests to ``infer``).

        Raises what ``infer`` raises before queueing; then ``on_done(future)`` is called
        from the event loop once the request is answered, counted and traced. Cancelling
        the returned future cancels the request.
        """
        scheduler = self._admit(request)
        future = request.bind(self.loop or asyncio.get_running_loop())
        self._enter()
        try:
            scheduler.enqueue(request)
        except BaseException:
            self._leave()  # a full queue refused it: not counted, as in Triton
            if request.trace is not None:
                request.trace.request_done(False)
            raise
        future.add_done_callback(lambda done: self._submitted(request, done, on_done))
        return future

    def _submitted(
        self,
        request: InferenceRequest,
        future: asyncio.Future[Any],
        on_done: Callable[[asyncio.Future[Any]], None],
    ) -> None:
        self._leave()
        # The answer first (no one can read the statistics before this callback ends).
        on_done(future)
        error = asyncio.CancelledError() if future.cancelled() else future.exception()
        self._count(request, error is None, reason=None if error is None else failure_reason(error))
        if request.trace is not None:
            request.trace.request_done(error is None)

    def _enter(self) -> None:
        """A request is in flight (this model's count, and the process-wide ``LOAD``)."""
        self.in_flight += 1
        LOAD.admit()

    def _leave(self) -> None:
        self.in_flight -= 1
        LOAD.requests -= 1

    def _count(
        self,
        request: InferenceRequest,
        ok: bool,
        *,
        streamed: bool = False,
        reason: FailureReason | None = None,
    ) -> None:
        """Count a finished request; a failure's ``reason`` defaults to the exception being
        raised (call it in a ``finally``)."""
        rows = request_batch_size(request, self.config.max_batch_size > 0) if ok else 1
        if reason is None:
            reason = current_failure()
        self.statistics.request_done(request.enqueued_ns, ok, rows, reason, streamed=streamed)

    def _cache_lookup(
        self, request: InferenceRequest
    ) -> tuple[bytes, int, InferenceResponse | None]:
        """The request's cache key, the lookup's duration, and the cached response if any.

        A hit is counted here, as Triton counts it: a success, not an execution.
        """
        assert self.cache is not None
        key = request_key(request, self.name, self.version)
        started = time.perf_counter_ns()
        outputs = self.cache.lookup(key)
        lookup_ns = time.perf_counter_ns() - started
        if outputs is None:
            return key, lookup_ns, None
        self.statistics.cache_hit(request.enqueued_ns, started, lookup_ns)
        return key, lookup_ns, InferenceResponse(self.name, "", outputs=outputs)

    def _cache_insert(self, key: bytes, lookup_ns: int, response: InferenceResponse | None) -> None:
        """Cache a response (``None``: the request failed, nothing to cache) and count the
        miss; a response another request cached meanwhile is not a miss (Triton)."""
        assert self.cache is not None
        started = time.perf_counter_ns()
        try:
            if response is not None and not self.cache.insert(key, response.outputs):
                return
        except KernelError as exc:
            log.error("Failed to insert key [%s] into response cache: %s", key.hex(), exc)
        self.statistics.cache_miss(lookup_ns + time.perf_counter_ns() - started)

    def stream(self, request: InferenceRequest) -> AsyncIterator[InferenceResponse]:
        """Validate and queue one request now (raising), then yield each response.

        Errors before execution (validation, a full queue) are raised by this call,
        execution errors by the iteration: Triton's stream tells the two apart.
        """
        scheduler = self._admit(request)
        key, lookup_ns = b"", 0
        if self.cache is not None:  # never decoupled: one response
            key, lookup_ns, cached = self._cache_lookup(request)
            if cached is not None:
                return _single(cached)
        responses = request.bind_stream(asyncio.get_running_loop())
        scheduler.enqueue(request)  # one a full queue refused is not counted, as in Triton
        decoupled = self.config.model_transaction_policy.decoupled
        responses = self.statistics.track_responses(responses, request.enqueued_ns, decoupled)
        return self._stream(request, responses, key, lookup_ns)

    async def _stream(
        self,
        request: InferenceRequest,
        responses: AsyncIterator[InferenceResponse],
        key: bytes,
        lookup_ns: int,
    ) -> AsyncIterator[InferenceResponse]:
        self._enter()
        ok = False
        try:
            async for response in responses:
                if key and response.final and response.error is None:
                    self._cache_insert(key, lookup_ns, response)  # before the caller trims it
                    key = b""
                yield response
            ok = True
        finally:
            self._leave()
            self._count(request, ok, streamed=True)
            if request.trace is not None:
                request.trace.request_done(ok)
            if key:
                self._cache_insert(key, lookup_ns, None)
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


def _check_response_cache(config: Any) -> None:
    """Triton refuses a response cache for models whose responses it cannot cache."""
    if not config.response_cache.enable:
        return
    if config.model_transaction_policy.decoupled:
        raise InvalidArgument(
            f"Response Cache does not currently support model {config.name} with 'decoupled' "
            "transaction policy. Please disable the response cache."
        )
    if config.HasField("sequence_batching"):
        raise InvalidArgument(
            f"Response Cache does not currently support model {config.name} with sequence "
            "batching scheduler. Please disable the response cache."
        )


async def _single(response: InferenceResponse) -> AsyncIterator[InferenceResponse]:
    yield response


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
