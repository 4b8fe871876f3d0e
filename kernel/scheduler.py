"""Schedulers: how a model's requests become batches on its instances.

Triton picks one scheduler per model from its configuration: the sequence batcher
(``sequence_batching``), the dynamic batcher (``dynamic_batching``), or the default
scheduler, which runs each request on its own. All of them hand batches to the same
:class:`InstancePool`, which knows which instance is free and records statistics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from . import trace_record as trace
from .backend import ModelInstance
from .errors import Internal, KernelError
from .logsettings import VERBOSE, verbose_level
from .request import InferenceRequest
from .statistics import ModelStatistics

log = logging.getLogger(__name__)


class Scheduler(Protocol):
    """What a model version needs of its scheduler: take requests, and drain at unload."""

    def enqueue(self, request: InferenceRequest) -> None:
        """Queue ``request``; raise a ``KernelError`` to refuse it before it is queued."""

    async def drain_and_stop(self) -> None:
        """Finish queued and running requests, then stop."""


def create_scheduler(
    model_name: str,
    config: Any,
    instances: Sequence[ModelInstance],
    statistics: ModelStatistics,
) -> Scheduler:
    """The scheduler a model's configuration asks for (Triton's choice of scheduler)."""
    batching = config.max_batch_size > 0
    decoupled = config.model_transaction_policy.decoupled
    if config.HasField("sequence_batching"):
        from .sequence import SequenceBatcher

        pool = InstancePool(model_name, instances, statistics, batching, decoupled, pipelined=False)
        return SequenceBatcher(model_name, config, pool)
    if config.HasField("dynamic_batching"):
        from .batcher import DynamicBatcher

        # A batch is formed when an instance is free, not earlier: what arrives while
        # the instance works joins the next batch instead of waiting behind a small one.
        pool = InstancePool(model_name, instances, statistics, batching, decoupled, pipelined=False)
        return DynamicBatcher(model_name, config, pool)
    pool = InstancePool(model_name, instances, statistics, batching, decoupled)
    return DirectScheduler(model_name, pool)


def request_batch_size(request: InferenceRequest, batching: bool) -> int:
    """How many batch rows ``request`` adds: its first dimension when the model batches."""
    if not batching:
        return 1
    first = next(iter(request.inputs.values()), None)
    return first.shape[0] if first is not None and first.shape else 1


async def execute_batch(
    instance: ModelInstance, batch: Sequence[InferenceRequest], model_name: str, decoupled: bool
) -> bool:
    """``instance.execute(batch)``, failing every request it leaves unanswered.

    Returns whether ``execute`` returned (rather than raised). A decoupled model may
    still answer later, from its own threads, so its requests are left open.
    """
    try:
        await instance.execute(batch)
    except Exception as exc:
        fail_batch(batch, _execute_error(exc, model_name))
        return False
    if not decoupled:
        fail_unanswered(batch, model_name)
    return True


def fail_batch(batch: Sequence[InferenceRequest], error: KernelError) -> None:
    for request in batch:
        request.fail(error)


def fail_unanswered(batch: Sequence[InferenceRequest], model_name: str) -> None:
    """After ``execute`` returned: fail the requests the model did not answer."""
    for request in batch:
        if not request.done:
            request.fail(Internal(f"model '{model_name}' returned no response for the request"))


def _traced(batch: list[InferenceRequest]) -> bool:
    return any(request.trace is not None for request in batch)


def _execute_error(exc: Exception, model_name: str) -> KernelError:
    if isinstance(exc, KernelError):
        return exc
    # a backend bug must not kill the instance loop
    log.error("model '%s' failed to execute", model_name, exc_info=exc)
    return Internal(f"model '{model_name}' failed to execute: {exc}")


class InstancePool:
    """A model's instances, how busy each is, and the one place batches are executed.

    An instance may declare a ``pipeline_depth`` above 1 (the Python backend does: its
    worker runs one batch at a time but can hold the next), so that under the default
    scheduler a batch is already waiting in the worker when the previous one finishes.
    Batching schedulers ask for ``pipelined=False``: they form a batch only for an idle
    instance, so that requests arriving meanwhile join it.
    """

    def __init__(
        self,
        model_name: str,
        instances: Sequence[ModelInstance],
        statistics: ModelStatistics,
        batching: bool,
        decoupled: bool,
        *,
        pipelined: bool = True,
    ) -> None:
        self.model_name = model_name
        self.instances = list(instances)
        self.statistics = statistics
        #: Whether the first dimension of each input is the batch (``max_batch_size`` > 0).
        self.batching = batching
        #: Decoupled models may answer after ``execute`` returned (from their own threads).
        self.decoupled = decoupled
        self._depths = [
            max(getattr(i, "pipeline_depth", 1), 1) if pipelined else 1 for i in self.instances
        ]
        self._busy = [0] * len(self.instances)
        #: Each instance's ``submit`` (a callback-driven execute), where it has one.
        self._submits = [getattr(i, "submit", None) for i in self.instances]
        self._capacity = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()

    def held(self) -> int:
        """Batches handed to instances but not started: each runs one at a time."""
        return sum(busy - 1 for busy in self._busy if busy > 1)

    def has_room(self, index: int) -> bool:
        return self._busy[index] < self._depths[index]

    def free_instance(self) -> int | None:
        """The least busy instance if it has room for one more batch, else None."""
        busy = self._busy
        index = 0 if len(busy) == 1 else min(range(len(busy)), key=busy.__getitem__)
        return index if busy[index] < self._depths[index] else None

    async def wait_for_room(self) -> None:
        """Return once some batch finishes (the caller then looks again)."""
        self._capacity.clear()
        await self._capacity.wait()

    def launch(
        self,
        index: int,
        batch: list[InferenceRequest],
        after: Callable[[list[InferenceRequest]], None] | None = None,
    ) -> None:
        """Execute ``batch`` on instance ``index`` in the background; then call ``after``.

        An instance with ``submit`` (Python and ONNX Runtime instances) is handed the
        batch at once, and calls back when it is done: no task and no coroutine frames
        per batch.
        """
        self._busy[index] += 1
        submit = self._submits[index]
        start = None
        if submit is not None and not _traced(batch):  # traces need the task's context
            # An idle instance starts the batch now; a busy one holds it, and its time
            # held counts as queued once the instance says when it started (``_end``).
            held = self._busy[index] > 1
            start = self._begin(batch, count_queue=not held)
            try:
                accepted = submit(
                    batch,
                    lambda began: self._end(index, batch, after, start, True, held, began),
                )
            except Exception as exc:
                fail_batch(batch, _execute_error(exc, self.model_name))
                self._end(index, batch, after, start, False, held)
                return
            if accepted:
                return
            # not ready (a worker restarting): wait for it in a task
            start = None
        task = asyncio.create_task(self._run(index, batch, after, start))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(
        self,
        index: int,
        batch: list[InferenceRequest],
        after: Callable[[list[InferenceRequest]], None] | None,
        start: tuple[int, list[Any]] | None,
    ) -> None:
        if start is None:
            start = self._begin(batch)
        returned = False
        try:
            returned = await execute_batch(
                self.instances[index], batch, self.model_name, self.decoupled
            )
        finally:
            self._finish(index, batch, after, start, returned)

    def _begin(
        self, batch: list[InferenceRequest], count_queue: bool = True
    ) -> tuple[int, list[Any]]:
        """Count the batch's queue times (now, or when it ends: ``_end``); the batch's
        start time and its traces."""
        if VERBOSE.level:
            log.log(verbose_level(), "model %s, executing %d requests", self.model_name, len(batch))
        started = time.perf_counter_ns()
        traces = []
        queued = self.statistics.queued
        for request in batch:
            if count_queue:
                queued(started - request.enqueued_ns)
            if request.trace is not None:
                traces.append(request.trace)
        if traces:
            trace.compute_started(traces, len(batch) == 1)
        return started, traces

    def _end(
        self,
        index: int,
        batch: list[InferenceRequest],
        after: Callable[[list[InferenceRequest]], None] | None,
        start: tuple[int, list[Any]],
        returned: bool,
        held: bool,
        began: int | None = None,
    ) -> None:
        """A submitted batch is done (``returned``: rather than refused). ``held``: the
        instance held it behind others; the time held counts as queued, as it would in
        Triton's queue, up to ``began`` (when the instance started it, if it says)."""
        if returned and not self.decoupled:
            fail_unanswered(batch, self.model_name)
        if held:  # its queue time is counted now
            submitted, traces = start
            began = min(max(began or submitted, submitted), time.perf_counter_ns())
            queued = self.statistics.queued
            for request in batch:
                queued(began - request.enqueued_ns)
            start = (began, traces)
        self._finish(index, batch, after, start, returned)

    def _finish(
        self,
        index: int,
        batch: list[InferenceRequest],
        after: Callable[[list[InferenceRequest]], None] | None,
        start: tuple[int, list[Any]],
        returned: bool,
    ) -> None:
        started, traces = start
        executed = time.perf_counter_ns()
        try:
            if traces:
                trace.computed(traces, started, started, executed)
            if returned:
                rows = (
                    len(batch)
                    if not self.batching
                    else sum(request_batch_size(r, True) for r in batch)
                )
                self.statistics.executed(
                    len(batch), rows, 0, executed - started, time.perf_counter_ns() - executed
                )
        finally:
            self._busy[index] -= 1
            self._capacity.set()
            if after is not None:
                after(batch)

    async def drain(self) -> None:
        """Wait for every running batch (tasks, and batches handed to ``submit``)."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        while any(self._busy):
            await self.wait_for_room()


class DirectScheduler:
    """Triton's default scheduler: each request runs alone on the least busy instance.

    A request that finds an instance with room starts at once, from ``enqueue``; the
    others wait in arrival order and start as batches finish. No dispatcher task: a
    request costs no extra hop through the event loop on its way to the instance.
    """

    def __init__(self, model_name: str, pool: InstancePool) -> None:
        self._pool = pool
        self._waiting: deque[InferenceRequest] = deque()

    def enqueue(self, request: InferenceRequest) -> None:
        if not self._waiting:
            index = self._pool.free_instance()
            if index is not None:
                self._pool.launch(index, [request], self._start_waiting)
                return
        self._waiting.append(request)

    def pending(self) -> int:
        """Requests waiting for an instance (``nv_inference_pending_request_count``),
        counting those an instance holds behind the one it runs."""
        return len(self._waiting) + self._pool.held()

    def _start_waiting(self, _finished: list[InferenceRequest]) -> None:
        """A batch finished: start the waiting requests that now have room."""
        waiting = self._waiting
        while waiting:
            if waiting[0].done:  # cancelled while queued: nothing to run
                waiting.popleft()
                continue
            index = self._pool.free_instance()
            if index is None:
                return
            self._pool.launch(index, [waiting.popleft()], self._start_waiting)

    async def drain_and_stop(self) -> None:
        """Finish queued and running requests (each finished batch starts the next)."""
        await self._pool.drain()
