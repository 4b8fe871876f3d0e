"""prometheus-client collectors over the kernel's state, read when ``/metrics`` is scraped.

Triton's per-model counters are derived from the statistics the kernel keeps anyway, so
serving a request costs nothing more; the summaries and histograms come from the
latency recorders that ``--metrics-config`` turns on. Names, HELP texts, types and
labels are tritonserver 2.51's (``nv_inference_first_response_histogram_ms`` is from
later releases: 2.51 ignores ``histogram_latencies``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from triton_kernel.kernel.metrics import (
    CustomFamily,
    Histogram,
    LatencySettings,
    ServerMetrics,
)
from triton_kernel.kernel.model import ModelVersion
from triton_kernel.kernel.statistics import FailureReason

_NOT_CACHED = "(does not include cached requests)"
_CACHED = "(includes cached requests)"

#: (family, HELP) of the always-present request counters, and how to read each value.
_COUNTS: tuple[tuple[str, str, Callable[[Any], int]], ...] = (
    (
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        lambda s: s.durations["success"].count,
    ),
    (
        "nv_inference_count",
        f"Number of inferences performed {_NOT_CACHED}",
        lambda s: s.inference_count,
    ),
    (
        "nv_inference_exec_count",
        f"Number of model executions performed {_NOT_CACHED}",
        lambda s: s.execution_count,
    ),
)

#: (family, HELP, statistics duration) of the latency counters (``counter_latencies``).
_LATENCY_COUNTERS = (
    (
        "nv_inference_request_duration_us",
        f"Cumulative inference request duration in microseconds {_CACHED}",
        "success",
    ),
    (
        "nv_inference_queue_duration_us",
        f"Cumulative inference queuing duration in microseconds {_CACHED}",
        "queue",
    ),
    (
        "nv_inference_compute_input_duration_us",
        f"Cumulative compute input duration in microseconds {_NOT_CACHED}",
        "compute_input",
    ),
    (
        "nv_inference_compute_infer_duration_us",
        f"Cumulative compute inference duration in microseconds {_NOT_CACHED}",
        "compute_infer",
    ),
    (
        "nv_inference_compute_output_duration_us",
        f"Cumulative inference compute output duration in microseconds {_NOT_CACHED}",
        "compute_output",
    ),
)

#: Models with a response cache also get these (``counter_latencies``).
_CACHE_COUNTERS = (
    ("nv_cache_num_hits_per_model", "Number of cache hits per model", "cache_hit", False),
    (
        "nv_cache_hit_duration_per_model",
        "Total cache hit duration per model, in microseconds",
        "cache_hit",
        True,
    ),
    ("nv_cache_num_misses_per_model", "Number of cache misses per model", "cache_miss", False),
    (
        "nv_cache_miss_duration_per_model",
        "Total cache miss (insert+lookup) duration per model, in microseconds",
        "cache_miss",
        True,
    ),
)

#: (family, HELP, recorder key) of the summaries (``summary_latencies``).
_SUMMARIES = (
    (
        "nv_inference_request_summary_us",
        f"Summary of inference request duration in microseconds {_CACHED}",
        "request_duration",
    ),
    (
        "nv_inference_queue_summary_us",
        f"Summary of inference queuing duration in microseconds {_CACHED}",
        "queue_duration",
    ),
    (
        "nv_inference_compute_input_summary_us",
        f"Cumulative compute input duration in microseconds {_NOT_CACHED}",
        "compute_input_duration",
    ),
    (
        "nv_inference_compute_infer_summary_us",
        f"Cumulative compute inference duration in microseconds {_NOT_CACHED}",
        "compute_infer_duration",
    ),
    (
        "nv_inference_compute_output_summary_us",
        f"Cumulative inference compute output duration in microseconds {_NOT_CACHED}",
        "compute_output_duration",
    ),
    (
        "nv_cache_hit_summary_per_model",
        "Summary of cache hit counts/durations per model, in microseconds.",
        "cache_hit_duration",
    ),
    (
        "nv_cache_miss_summary_per_model",
        "Summary of cache miss counts/durations per model, in microseconds.",
        "cache_miss_duration",
    ),
)
_CACHE_SUMMARIES = {"cache_hit_duration", "cache_miss_duration"}


def _labels(version: ModelVersion) -> dict[str, str]:
    return {"model": version.name, "version": str(version.version)}


def pending_requests(version: ModelVersion) -> int:
    """Requests queued for an instance, from the scheduler when it can tell."""
    pending = getattr(version.scheduler, "pending", None)
    return pending() if pending is not None else 0


class ModelCollector(Collector):
    """Triton's per-model families, read from each loaded version's statistics."""

    def __init__(self, metrics: ServerMetrics, settings: LatencySettings) -> None:
        self._metrics = metrics
        self._settings = settings

    def collect(self) -> Iterator[Metric]:
        versions = self._metrics.versions()
        yield from self._counters(versions)
        yield self._pending(versions)
        if self._settings.histograms:
            yield self._first_response(versions)
        if self._settings.summaries:
            yield from self._summaries(versions)

    def _counters(self, versions: list[ModelVersion]) -> Iterator[Metric]:
        name, help_text, read = _COUNTS[0]
        yield _family(
            name, help_text, "counter", ((_labels(v), read(v.statistics)) for v in versions)
        )
        yield self._failures(versions)
        for name, help_text, read in _COUNTS[1:]:
            samples = ((_labels(v), read(v.statistics)) for v in versions)
            yield _family(name, help_text, "counter", samples)
        if not self._settings.counters:
            return
        for name, help_text, key in _LATENCY_COUNTERS:
            samples = ((_labels(v), v.statistics.durations[key].ns // 1000) for v in versions)
            yield _family(name, help_text, "counter", samples)
        cached = [v for v in versions if v.cache is not None]
        for name, help_text, key, is_duration in _CACHE_COUNTERS:
            samples = (
                (_labels(v), _count_or_us(v.statistics.durations[key], is_duration)) for v in cached
            )
            yield _family(name, help_text, "counter", samples)

    @staticmethod
    def _failures(versions: list[ModelVersion]) -> Metric:
        family = Metric(
            "nv_inference_request_failure",
            "Number of failed inference requests, all batch sizes",
            "counter",
        )
        for version in versions:
            labels = _labels(version)
            for reason in FailureReason:
                count = version.statistics.failures[reason]
                family.add_sample(family.name, {**_sorted(labels, reason=reason.value)}, count)
        return family

    @staticmethod
    def _pending(versions: list[ModelVersion]) -> Metric:
        samples = ((_labels(v), pending_requests(v)) for v in versions)
        return _family(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model.",
            "gauge",
            samples,
        )

    @staticmethod
    def _first_response(versions: list[ModelVersion]) -> Metric:
        family = Metric(
            "nv_inference_first_response_histogram_ms",
            "Duration from request to first response in milliseconds",
            "histogram",
        )
        for version in versions:
            recorder = version.statistics.latencies
            if recorder is not None and recorder.first_response is not None:
                add_histogram(family, _labels(version), recorder.first_response)
        return family

    def _summaries(self, versions: list[ModelVersion]) -> Iterator[Metric]:
        for name, help_text, key in _SUMMARIES:
            family = Metric(name, help_text, "summary")
            for version in versions:
                recorder = version.statistics.latencies
                cached = version.cache is not None
                if recorder is None or (key in _CACHE_SUMMARIES) != cached:
                    continue
                if key == "request_duration" and cached:
                    continue  # Triton leaves it out for cached models (DLIS-4762)
                summary = recorder.summaries[key]
                labels = _labels(version)
                family.add_sample(f"{name}_count", labels, summary.count)
                family.add_sample(f"{name}_sum", labels, summary.total)
                for quantile, value in summary.quantiles(self._settings.quantiles):
                    family.add_sample(name, {**labels, "quantile": f"{quantile:.16g}"}, value)
            yield family


class CustomCollector(Collector):
    """The families models created (``pb_utils.MetricFamily``), in creation order."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for custom in self._metrics.custom.families():
            yield _custom_family(custom)


def _custom_family(custom: CustomFamily) -> Metric:
    family = Metric(custom.name, custom.description, custom.kind.value)
    for metric in list(custom.metrics.values()):
        labels = dict(sorted(metric.labels.items()))
        if metric.histogram is not None:
            add_histogram(family, labels, metric.histogram)
        else:
            family.add_sample(custom.name, labels, metric.value)
    return family


def add_histogram(family: Metric, labels: dict[str, str], histogram: Histogram) -> None:
    """Triton's order: ``_count``, ``_sum``, then the cumulative ``_bucket`` samples."""
    family.add_sample(f"{family.name}_count", labels, histogram.count)
    family.add_sample(f"{family.name}_sum", labels, histogram.total)
    for bound, count in histogram.cumulative():
        bucket_labels = {**labels, "le": "+Inf" if bound == float("inf") else f"{bound:.16g}"}
        family.add_sample(f"{family.name}_bucket", bucket_labels, count)


def _family(name: str, help_text: str, kind: str, samples: Any) -> Metric:
    family = Metric(name, help_text, kind)
    for labels, value in samples:
        family.add_sample(name, labels, value)
    return family


def _sorted(labels: dict[str, str], **more: str) -> dict[str, str]:
    return dict(sorted({**labels, **more}.items()))


def _count_or_us(duration: Any, is_duration: bool) -> int:
    return duration.ns // 1000 if is_duration else duration.count
