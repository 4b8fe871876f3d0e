"""The direct scheduler: each request runs on the least busy instance, one request per batch.

This is Triton's default scheduler (no ``dynamic_batching``, no ``sequence_batching``).
One dispatcher drains the model's queue, so N instances run N requests at once. An
instance may declare a ``pipeline_depth`` above 1 (the Python backend does: its worker
runs one batch at a time but can hold the next), so that a batch is already waiting in
the worker when the previous one finishes, instead of a round trip later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

from .backend import ModelInstance
from .errors import Internal, KernelError
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
    return DirectScheduler(
        model_name,
        instances,
        statistics,
        batching=config.max_batch_size > 0,
        decoupled=config.model_transaction_policy.decoupled,
    )


class DirectScheduler:
    """A queue, and a dispatcher that hands each request to the least busy instance."""

    def __init__(
        self,
        model_name: str,
        instances: Sequence[ModelInstance],
        statistics: ModelStatistics,
        batching: bool = False,
        decoupled: bool = False,
    ) -> None:
        self._model_name = model_name
        self._statistics = statistics
        #: Whether the first dimension of each input is the batch (``max_batch_size`` > 0).
        self._batching = batching
        #: Decoupled models may answer after ``execute`` returned (from their own threads).
        self._decoupled = decoupled
        self._queue: asyncio.Queue[InferenceRequest | None] = asyncio.Queue()
        self._instances = list(instances)
        self._depths = [max(getattr(i, "pipeline_depth", 1), 1) for i in self._instances]
        self._busy = [0] * len(self._instances)
        self._capacity = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._dispatcher = asyncio.create_task(self._dispatch(), name=f"{model_name}-dispatch")

    def enqueue(self, request: InferenceRequest) -> None:
        self._queue.put_nowait(request)

    async def _dispatch(self) -> None:
        while True:
            request = await self._queue.get()
            if request is None:
                return
            if request.done:  # cancelled while queued: nothing to run
                continue
            index = await self._free_instance()
            if request.done:
                continue
            self._busy[index] += 1
            task = asyncio.create_task(self._run(index, [request]))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _free_instance(self) -> int:
        """The index of the least busy instance with room for one more batch."""
        while True:
            index = min(range(len(self._busy)), key=self._busy.__getitem__)
            if self._busy[index] < self._depths[index]:
                return index
            self._capacity.clear()
            await self._capacity.wait()

    async def _run(self, index: int, batch: list[InferenceRequest]) -> None:
        try:
            await self._execute(self._instances[index], batch)
        finally:
            self._busy[index] -= 1
            self._capacity.set()

    async def _execute(self, instance: ModelInstance, batch: list[InferenceRequest]) -> None:
        started = time.perf_counter_ns()
        for request in batch:
            self._statistics.queued(started - request.enqueued_ns)
        try:
            called = time.perf_counter_ns()
            await instance.execute(batch)
            executed = time.perf_counter_ns()
            self._statistics.executed(
                len(batch),
                self._batch_size(batch),
                called - started,
                executed - called,
                time.perf_counter_ns() - executed,
            )
        except KernelError as exc:
            error: KernelError = exc
        except Exception as exc:  # a backend bug must not kill the instance loop
            log.exception("model '%s' failed to execute", self._model_name)
            error = Internal(f"model '{self._model_name}' failed to execute: {exc}")
        else:
            if self._decoupled:
                return
            error = Internal(f"model '{self._model_name}' returned no response for the request")
        for request in batch:
            request.fail(error)

    def _batch_size(self, batch: list[InferenceRequest]) -> int:
        if not self._batching:
            return len(batch)
        size = 0
        for request in batch:
            first = next(iter(request.inputs.values()), None)
            size += first.data.shape[0] if first is not None and first.data.ndim else 1
        return size

    async def drain_and_stop(self) -> None:
        """Finish queued and running requests, then stop the dispatcher."""
        self._queue.put_nowait(None)
        await asyncio.gather(self._dispatcher, return_exceptions=True)
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
