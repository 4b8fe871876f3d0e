"""Per-model inference statistics, counted as Triton counts them (its statistics extension).

One record per loaded version, updated by the model (request outcomes, decoupled
responses) and its scheduler (queue time, executions); both frontends read it through
``Server.statistics`` and the metrics frontend derives Triton's counters from it when
scraped. Per-request latency observations (summaries, histograms) happen only when
``--metrics-config`` enables them (``latencies``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from .errors import Cancelled
from .metrics import LatencyRecorder, latency_recorder

if TYPE_CHECKING:
    from .request import InferenceResponse


class FailureReason(str, Enum):
    """The ``reason`` label of ``nv_inference_request_failure``."""

    REJECTED = "REJECTED"  # timed out in the queue
    CANCELED = "CANCELED"  # the caller stopped waiting
    BACKEND = "BACKEND"  # the model's execution failed it
    OTHER = "OTHER"


def mark_failure(error: Any, reason: FailureReason) -> Any:
    """Say why a request failed with ``error`` (read by :func:`failure_reason`)."""
    error.failure_reason = reason
    return error


def failure_reason(error: BaseException | None) -> FailureReason:
    """Why a request failed: cancellation, a reason marked on its error, else its backend."""
    if isinstance(error, (asyncio.CancelledError, GeneratorExit, Cancelled)):
        return FailureReason.CANCELED
    if error is None:
        return FailureReason.OTHER
    return getattr(error, "failure_reason", FailureReason.BACKEND)


def current_failure() -> FailureReason:
    """The reason of the exception being raised (call it in a ``finally``)."""
    return failure_reason(sys.exc_info()[1])


@dataclass(slots=True)
class Duration:
    """How many times something happened, and the nanoseconds it took in all."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchStatistics:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ResponseStatistics:
    """Triton's ``InferResponseStatistics``: the responses at one index of decoupled
    requests (the first response of each request, the second, ...)."""

    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    empty_response: Duration = field(default_factory=Duration)
    cancel: Duration = field(default_factory=Duration)

    def add(self, response: InferenceResponse, started: int, arrived: int, sent: int) -> None:
        """A response that took ``arrived - started`` to compute, ``sent - arrived`` to
        hand over; an empty (FINAL flag only) one has no output to hand over."""
        self.compute_infer.add(arrived - started)
        if response.flag_only:
            self.empty_response.add(arrived - started)
            return
        self.compute_output.add(sent - arrived)
        outcome = self.fail if response.error is not None else self.success
        outcome.add(sent - started)

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {name: getattr(self, name).to_dict() for name in _RESPONSE_FIELDS}


#: Triton's ``inference_stats`` members, in its order.
_INFER_FIELDS = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)
_RESPONSE_FIELDS = ("compute_infer", "compute_output", "success", "fail", "empty_response")
_RESPONSE_FIELDS += ("cancel",)


@dataclass(slots=True)
class ModelStatistics:
    """Counters of one model version since it loaded."""

    #: Milliseconds since the epoch of the last execution (0: none yet).
    last_inference: int = 0
    #: Inferences of successful requests: a request of batch size N counts N.
    inference_count: int = 0
    #: ``execute`` calls: a batch of requests counts 1.
    execution_count: int = 0
    durations: dict[str, Duration] = field(
        default_factory=lambda: {name: Duration() for name in _INFER_FIELDS}
    )
    batches: dict[int, BatchStatistics] = field(default_factory=dict)
    #: Failed requests by reason (they are also in ``durations["fail"]``).
    failures: dict[FailureReason, int] = field(
        default_factory=lambda: dict.fromkeys(FailureReason, 0)
    )
    #: Decoupled models' responses by index.
    responses: list[ResponseStatistics] = field(default_factory=list)
    #: Per-request latency observations, when ``--metrics-config`` asks for them.
    latencies: LatencyRecorder | None = field(default_factory=latency_recorder)

    def request_done(
        self,
        started_ns: int,
        ok: bool,
        rows: int = 1,
        reason: FailureReason = FailureReason.OTHER,
        *,
        streamed: bool = False,
    ) -> None:
        """A request of ``rows`` inferences finished (``streamed``: its responses were
        tracked one by one, see :meth:`track_responses`)."""
        ns = time.perf_counter_ns() - started_ns
        if not ok:
            self.durations["fail"].add(ns)
            self.failures[reason] += 1
            return
        self.durations["success"].add(ns)
        self.inference_count += rows
        if self.latencies is not None:
            self.latencies.observe("request_duration", ns)
            if not streamed:
                self.latencies.responded(ns)

    def queued(self, waited_ns: int) -> None:
        self.durations["queue"].add(waited_ns)
        if self.latencies is not None:
            self.latencies.observe("queue_duration", waited_ns)

    def cache_hit(self, started_ns: int, lookup_started_ns: int, lookup_ns: int) -> None:
        """A request answered from the response cache: Triton counts it a success (and a
        queued request) but not an inference or an execution, and leaves
        ``last_inference`` alone."""
        ns = time.perf_counter_ns() - started_ns
        self.durations["success"].add(ns)
        self.durations["queue"].add(lookup_started_ns - started_ns)
        self.durations["cache_hit"].add(lookup_ns)
        if self.latencies is not None:
            self.latencies.observe("queue_duration", lookup_started_ns - started_ns)
            self.latencies.observe("cache_hit_duration", lookup_ns)
            self.latencies.responded(ns)

    def cache_miss(self, ns: int) -> None:
        """A request the cache could not answer: ``ns`` covers its lookup and insertion,
        which Triton also adds to the request's success time."""
        self.durations["cache_miss"].add(ns)
        self.durations["success"].ns += ns
        if self.latencies is not None:
            self.latencies.observe("cache_miss_duration", ns)

    def executed(
        self, requests: int, batch_size: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        """One ``execute`` of ``requests`` requests holding ``batch_size`` inferences;
        each request is charged the whole batch's durations, as Triton charges them."""
        self.execution_count += 1
        self.last_inference = max(self.last_inference, time.time_ns() // 1_000_000)
        durations = self.durations
        durations["compute_input"].add(input_ns * requests, requests)
        durations["compute_infer"].add(infer_ns * requests, requests)
        durations["compute_output"].add(output_ns * requests, requests)
        if self.latencies is not None:
            self.latencies.observe("compute_input_duration", input_ns, requests)
            self.latencies.observe("compute_infer_duration", infer_ns, requests)
            self.latencies.observe("compute_output_duration", output_ns, requests)
        batch = self.batches.get(batch_size)
        if batch is None:
            batch = self.batches[batch_size] = BatchStatistics()
        batch.compute_input.add(input_ns)
        batch.compute_infer.add(infer_ns)
        batch.compute_output.add(output_ns)

    def track_responses(
        self, responses: AsyncIterator[InferenceResponse], started_ns: int, decoupled: bool
    ) -> AsyncIterator[InferenceResponse]:
        """``responses``, timed one by one where it is needed: a decoupled model's
        response statistics, or the first-response histogram."""
        histogram = self.latencies is not None and self.latencies.first_response is not None
        if not decoupled and not histogram:
            return responses
        return self._timed(responses, started_ns, decoupled)

    async def _timed(
        self, responses: AsyncIterator[InferenceResponse], started_ns: int, decoupled: bool
    ) -> AsyncIterator[InferenceResponse]:
        index, since, final = 0, started_ns, False
        try:
            async for response in responses:
                arrived = time.perf_counter_ns()
                if index == 0 and self.latencies is not None:
                    self.latencies.responded(arrived - started_ns)
                try:
                    yield response
                finally:  # the consumer took it (or closed the stream at it)
                    sent = time.perf_counter_ns()
                    if decoupled:
                        self._response(index).add(response, since, arrived, sent)
                    index, since, final = index + 1, sent, response.final
        finally:
            if decoupled and not final and current_failure() is FailureReason.CANCELED:
                self._response(index).cancel.add(time.perf_counter_ns() - since)
            await responses.aclose()  # type: ignore[attr-defined]

    def _response(self, index: int) -> ResponseStatistics:
        while len(self.responses) <= index:
            self.responses.append(ResponseStatistics())
        return self.responses[index]

    def to_dict(self, name: str, version: int) -> dict[str, Any]:
        """Triton's ``model_stats`` entry (HTTP JSON and gRPC share it)."""
        return {
            "name": name,
            "version": str(version),
            "last_inference": self.last_inference,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {k: d.to_dict() for k, d in self.durations.items()},
            "response_stats": {
                key: self.responses[int(key)].to_dict()
                for key in sorted(str(i) for i in range(len(self.responses)))
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": batch.compute_input.to_dict(),
                    "compute_infer": batch.compute_infer.to_dict(),
                    "compute_output": batch.compute_output.to_dict(),
                }
                for size, batch in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }
