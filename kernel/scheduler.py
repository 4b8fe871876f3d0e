"""The direct scheduler: each request runs on the next free instance, one request per batch.

This is Triton's default scheduler (no ``dynamic_batching``, no ``sequence_batching``).
Each instance pulls from one shared queue, so N instances run N requests at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from .backend import ModelInstance
from .errors import Internal, KernelError
from .request import InferenceRequest

log = logging.getLogger(__name__)


class DirectScheduler:
    """A queue drained by one task per model instance."""

    def __init__(self, model_name: str, instances: Sequence[ModelInstance]) -> None:
        self._model_name = model_name
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
        try:
            await instance.execute(batch)
        except KernelError as exc:
            error: KernelError = exc
        except Exception as exc:  # a backend bug must not kill the instance loop
            log.exception("model '%s' failed to execute", self._model_name)
            error = Internal(f"model '{self._model_name}' failed to execute: {exc}")
        else:
            error = Internal(f"model '{self._model_name}' returned no response for the request")
        for request in batch:
            request.fail(error)

    async def drain_and_stop(self) -> None:
        """Finish queued and running requests, then stop the instance tasks."""
        for _ in self._tasks:
            self._queue.put_nowait(None)
        await asyncio.gather(*self._tasks, return_exceptions=True)
