"""The direct scheduler: each request runs on the next free instance, one request per batch.

This is Triton's default scheduler (no ``dynamic_batching``, no ``sequence_batching``).
Each instance pulls from one shared queue, so N instances run N requests at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from .backend import ModelInstance
from .errors import Internal, KernelError
from .request import InferenceRequest
from .statistics import ModelStatistics

log = logging.getLogger(__name__)


class DirectScheduler:
    """A queue drained by one task per model instance."""

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
        self._tasks = [
            asyncio.create_task(self._serve(instance), name=f"{model_name}-instance-{i}")
            for i, instance in enumerate(self._instances)
        ]

    def enqueue(self, request: InferenceRequest) -> None:
        self._queue.put_nowait(request)

    async def _serve(self, instance: ModelInstance) -> None:
        while True:
            request = await self._queue.get()
            if request is None:
                return
            if request.done:  # cancelled while queued: its slot is simply freed
                continue
            await self._execute(instance, [request])

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
        """Finish queued and running requests, then stop the instance tasks."""
        for _ in self._tasks:
            self._queue.put_nowait(None)
        await asyncio.gather(*self._tasks, return_exceptions=True)
