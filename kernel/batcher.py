"""Triton's dynamic batcher: requests of many clients executed as one batch.

Requests wait in priority queues, each level with its queue policy (maximum size,
timeout and what a timeout does). When an instance is free, the batcher takes the
oldest requests of the highest priority, up to ``max_batch_size`` rows, cut to the
largest ``preferred_batch_size`` it can reach, waiting at most
``max_queue_delay_microseconds`` for a fuller batch. Backends receive the requests
as a list (Python models) or concatenate them (framework backends).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import Unavailable
from .request import InferenceRequest
from .scheduler import InstancePool, request_batch_size
from .statistics import FailureReason, mark_failure
from .validation import request_prefix


@dataclass(slots=True, frozen=True)
class QueuePolicy:
    """One priority level's ``ModelQueuePolicy``."""

    #: ``timeout_action: DELAY``: a timed-out request waits behind the others instead of failing.
    delay_on_timeout: bool = False
    default_timeout_us: int = 0
    allow_timeout_override: bool = False
    #: 0 is unbounded.
    max_queue_size: int = 0

    @classmethod
    def from_config(cls, policy: Any) -> QueuePolicy:
        return cls(
            delay_on_timeout=policy.timeout_action == 1,
            default_timeout_us=policy.default_timeout_microseconds,
            allow_timeout_override=policy.allow_timeout_override,
            max_queue_size=policy.max_queue_size,
        )

    def timeout_us(self, request: InferenceRequest) -> int:
        """The request's queue timeout: the policy's, or a shorter one of its own when allowed.

        Triton ignores a request's ``timeout`` unless the policy allows overriding, and
        then only to shorten the default (a longer one is clamped to it).
        """
        default, own = self.default_timeout_us, request.timeout_us
        if self.allow_timeout_override and own > 0 and (default == 0 or own < default):
            return own
        return default


class PriorityLevel:
    """The requests waiting at one priority level: on time first, then timed-out delayed ones."""

    __slots__ = ("delayed", "policy", "waiting")

    def __init__(self, policy: QueuePolicy) -> None:
        self.policy = policy
        self.waiting: deque[InferenceRequest] = deque()
        self.delayed: deque[InferenceRequest] = deque()

    def __len__(self) -> int:
        return len(self.waiting) + len(self.delayed)

    def prune(self) -> None:
        """Forget requests whose caller stopped waiting."""
        for line in (self.waiting, self.delayed):
            if any(request.done for request in line):
                kept = [request for request in line if not request.done]
                line.clear()
                line.extend(kept)

    def in_order(self) -> Iterator[InferenceRequest]:
        yield from self.waiting
        yield from self.delayed

    def remove(self, request: InferenceRequest) -> bool:
        for line in (self.waiting, self.delayed):
            try:
                line.remove(request)
            except ValueError:
                continue
            return True
        return False


class PriorityQueues:
    """Triton's priority queue: levels 1..N, 1 served first; each level with its policy."""

    def __init__(self, settings: Any) -> None:
        default = QueuePolicy.from_config(settings.default_queue_policy)
        count = max(settings.priority_levels, 1)
        self.levels = [
            PriorityLevel(
                QueuePolicy.from_config(settings.priority_queue_policy[level])
                if level in settings.priority_queue_policy
                else default
            )
            for level in range(1, count + 1)
        ]
        self.default_level = settings.default_priority_level or 1
        if not 1 <= self.default_level <= count:
            self.default_level = 1
        self._timers: dict[int, asyncio.TimerHandle] = {}

    def level_of(self, request: InferenceRequest) -> PriorityLevel:
        """Priority 0, or one beyond the configured levels, means the default (as Triton)."""
        priority = request.priority
        if priority <= 0 or priority > len(self.levels):
            priority = self.default_level
        return self.levels[priority - 1]

    def push(self, request: InferenceRequest) -> None:
        level = self.level_of(request)
        limit = level.policy.max_queue_size
        if limit and len(level) >= limit:
            level.prune()
            if len(level) >= limit:
                raise Unavailable(f"{request_prefix(request)}Exceeds maximum queue size")
        level.waiting.append(request)
        timeout_us = level.policy.timeout_us(request)
        if timeout_us > 0:
            loop = asyncio.get_running_loop()
            self._timers[id(request)] = loop.call_later(
                timeout_us / 1e6, self._expire, level, request
            )

    def _expire(self, level: PriorityLevel, request: InferenceRequest) -> None:
        """A queued request ran out of time: fail it, or send it behind the others."""
        self._timers.pop(id(request), None)
        if request.done:
            return
        if level.policy.delay_on_timeout:
            try:
                level.waiting.remove(request)
            except ValueError:
                return  # already delayed, or on its way to an instance
            level.delayed.append(request)
        elif level.remove(request):
            error = Unavailable("Request timeout expired")
            request.fail(mark_failure(error, FailureReason.REJECTED))

    def in_order(self) -> Iterator[InferenceRequest]:
        for level in self.levels:
            yield from level.in_order()

    def take(self, batch: list[InferenceRequest]) -> None:
        """Remove ``batch`` (the first requests :meth:`in_order` gave) from the queues."""
        for request in batch:
            timer = self._timers.pop(id(request), None)
            if timer is not None:
                timer.cancel()
            self.level_of(request).remove(request)

    def prune(self) -> None:
        for level in self.levels:
            level.prune()

    def __len__(self) -> int:
        return sum(len(level) for level in self.levels)


class DynamicBatcher:
    """Forms batches from the queues whenever an instance is free.

    No dispatcher task: a batch is formed in the callback that frees an instance (before
    the finished batch's answers are written, so the instance is not left idle while
    they are), or one turn of the event loop after requests arrive at an idle model
    (requests that arrived in the same turn share the batch). A queue delay is a timer.
    """

    def __init__(self, model_name: str, config: Any, pool: InstancePool) -> None:
        settings = config.dynamic_batching
        self._pool = pool
        self._max_rows = max(config.max_batch_size, 1)
        self._preferred = sorted({size for size in settings.preferred_batch_size if size > 0})
        self._delay_ns = settings.max_queue_delay_microseconds * 1000
        self._queues = PriorityQueues(settings)
        #: Inputs with a variable dimension that must match within a batch (not ragged).
        self._equal_shape_inputs = [
            spec.name
            for spec in config.input
            if -1 in spec.dims and not spec.allow_ragged_batch and config.max_batch_size > 0
        ]
        self._stopping = False
        #: A look at the queues is scheduled for this turn of the loop.
        self._scheduled = False
        #: When the oldest request's queue delay is over (a fuller batch was waited for).
        self._delay_timer: asyncio.TimerHandle | None = None

    def enqueue(self, request: InferenceRequest) -> None:
        if self._stopping:
            raise Unavailable(f"Request for unknown model: '{request.model_name}' is not ready")
        self._queues.push(request)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def pending(self) -> int:
        """Requests waiting for an instance (``nv_inference_pending_request_count``)."""
        return sum(1 for request in self._queues.in_order() if not request.done)

    def _dispatch(self, _finished: list[InferenceRequest] | None = None) -> None:
        """Start batches while an instance has room and requests wait (also the pool's
        callback when a batch finishes)."""
        self._scheduled = False
        while True:
            self._queues.prune()
            if not len(self._queues):
                return
            index = self._pool.free_instance()
            if index is None:
                return  # the batch that finishes calls again
            batch = self._next_batch()
            if not batch:
                return
            self._queues.take(batch)
            self._pool.launch(index, batch, self._dispatch)

    def _next_batch(self) -> list[InferenceRequest]:
        """The next batch; empty while the queue delay lets it wait to fill (a timer looks
        again when the delay of its oldest request is over)."""
        batch, rows, full = self._candidates()
        if not batch or full or self._delay_ns <= 0 or self._stopping:
            return self._cut_to_preferred(batch)
        if self._preferred and rows >= self._preferred[-1]:
            return self._cut_to_preferred(batch)
        waited = time.perf_counter_ns() - batch[0].enqueued_ns
        if waited >= self._delay_ns:
            return self._cut_to_preferred(batch)
        if self._delay_timer is None:
            self._delay_timer = asyncio.get_running_loop().call_later(
                (self._delay_ns - waited) / 1e9, self._delay_over
            )
        return []

    def _delay_over(self) -> None:
        self._delay_timer = None
        self._dispatch()

    def _candidates(self) -> tuple[list[InferenceRequest], int, bool]:
        """The oldest requests that fit one batch, their rows, and whether the batch is full."""
        batch: list[InferenceRequest] = []
        rows = 0
        shapes = None
        for request in self._queues.in_order():
            if request.done:
                continue
            size = request_batch_size(request, self._pool.batching)
            if rows + size > self._max_rows:
                return batch, rows, True
            key = self._shape_key(request)
            if shapes is None:
                shapes = key
            elif key != shapes:
                return batch, rows, True  # a different shape starts the next batch
            batch.append(request)
            rows += size
        return batch, rows, rows >= self._max_rows

    def _shape_key(self, request: InferenceRequest) -> tuple[Any, ...]:
        inputs = request.inputs
        return tuple(
            inputs[name].shape[1:] if name in inputs else None for name in self._equal_shape_inputs
        )

    def _cut_to_preferred(self, batch: list[InferenceRequest]) -> list[InferenceRequest]:
        """The longest prefix whose rows make a preferred size, if any; else all of it."""
        if not self._preferred or not batch:
            return batch
        rows, cut = 0, 0
        for count, request in enumerate(batch, 1):
            rows += request_batch_size(request, self._pool.batching)
            if rows in self._preferred:
                cut = count
        return batch[:cut] if cut else batch

    async def drain_and_stop(self) -> None:
        """Run what is queued (without waiting for fuller batches), wait for it, then stop."""
        self._stopping = True
        if self._delay_timer is not None:
            self._delay_timer.cancel()
            self._delay_timer = None
        self._dispatch()  # each batch that finishes starts the next
        await self._pool.drain()
