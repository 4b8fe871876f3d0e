"""Per-model inference statistics, counted as Triton counts them (its statistics extension).

One record per loaded version, updated by the model (request outcomes) and its
scheduler (queue time, executions); both frontends read it through ``Server.statistics``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


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


@dataclass(slots=True)
class ModelStatistics:
    """Counters of one model version since it loaded."""

    #: Milliseconds since the epoch of the last completed request (0: none yet).
    last_inference: int = 0
    #: Inferences performed: a request of batch size N counts N.
    inference_count: int = 0
    #: ``execute`` calls: a batch of requests counts 1.
    execution_count: int = 0
    durations: dict[str, Duration] = field(
        default_factory=lambda: {name: Duration() for name in _INFER_FIELDS}
    )
    batches: dict[int, BatchStatistics] = field(default_factory=dict)

    def request_done(self, started_ns: int, ok: bool) -> None:
        self.durations["success" if ok else "fail"].add(time.perf_counter_ns() - started_ns)
        self.last_inference = time.time_ns() // 1_000_000

    def queued(self, waited_ns: int) -> None:
        self.durations["queue"].add(waited_ns)

    def cache_hit(self, started_ns: int, lookup_started_ns: int, lookup_ns: int) -> None:
        """A request answered from the response cache: Triton counts it a success (and a
        queued request) but not an inference or an execution, and leaves
        ``last_inference`` alone."""
        self.durations["success"].add(time.perf_counter_ns() - started_ns)
        self.durations["queue"].add(lookup_started_ns - started_ns)
        self.durations["cache_hit"].add(lookup_ns)

    def cache_miss(self, ns: int) -> None:
        """A request the cache could not answer: ``ns`` covers its lookup and insertion,
        which Triton also adds to the request's success time."""
        self.durations["cache_miss"].add(ns)
        self.durations["success"].ns += ns

    def executed(
        self, requests: int, batch_size: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        """One ``execute`` of ``requests`` requests holding ``batch_size`` inferences."""
        self.execution_count += 1
        self.inference_count += batch_size
        for name, ns in (
            ("compute_input", input_ns),
            ("compute_infer", infer_ns),
            ("compute_output", output_ns),
        ):
            self.durations[name].add(ns, requests)
        batch = self.batches.setdefault(batch_size, BatchStatistics())
        batch.compute_input.add(input_ns)
        batch.compute_infer.add(infer_ns)
        batch.compute_output.add(output_ns)

    def to_dict(self, name: str, version: int) -> dict[str, Any]:
        """Triton's ``model_stats`` entry (HTTP JSON and gRPC share it)."""
        return {
            "name": name,
            "version": str(version),
            "last_inference": self.last_inference,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {k: d.to_dict() for k, d in self.durations.items()},
            "response_stats": {},
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
