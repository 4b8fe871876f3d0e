"""Kernel-side state of the metrics that the statistics do not hold.

Most of Triton's metrics are derived from the statistics when scraped, at no cost per
request. Two kinds need more: the latency summaries and histograms that
``--metrics-config`` enables, which need each request's durations (recorded only when
enabled), and the metric families that models create at run time (the Python
backend's ``pb_utils.MetricFamily``), which every worker process of a model shares.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import re
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from .errors import InvalidArgument, NotFound, Unsupported

if TYPE_CHECKING:
    from .model import ModelVersion
    from .models import ModelManager

log = logging.getLogger(__name__)

# --- latency summaries and histograms (--metrics-config) ------------------------------

#: prometheus-cpp's default quantiles and their allowed errors, which Triton uses.
DEFAULT_QUANTILES = ((0.5, 0.05), (0.9, 0.01), (0.95, 0.001), (0.99, 0.001), (0.999, 0.001))
#: Triton's default buckets of ``nv_inference_first_response_histogram_ms``.
DEFAULT_FIRST_RESPONSE_BUCKETS = (100.0, 500.0, 2000.0, 5000.0)
#: A summary's sliding window (prometheus-cpp's default ``max_age``).
SUMMARY_MAX_AGE_S = 60.0
#: At most this many observations per summary window (the oldest go first).
SUMMARY_WINDOW_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class LatencySettings:
    """What ``--metrics-config`` asks of the per-model latency metrics."""

    #: ``counter_latencies`` (default true): the ``*_duration_us`` counters.
    counters: bool = True
    #: ``summary_latencies`` (default false): the ``*_summary_us`` summaries.
    summaries: bool = False
    #: ``histogram_latencies`` (default false): ``nv_inference_first_response_histogram_ms``.
    histograms: bool = False
    quantiles: tuple[tuple[float, float], ...] = DEFAULT_QUANTILES

    @classmethod
    def from_config(cls, config: dict[str, str]) -> LatencySettings:
        """Triton's rules: only the exact values ``false``/``true`` switch a kind."""
        quantiles = _parse_quantiles(config.get("summary_quantiles", ""))
        return cls(
            counters=config.get("counter_latencies") != "false",
            summaries=config.get("summary_latencies") == "true",
            histograms=config.get("histogram_latencies") == "true",
            quantiles=quantiles or DEFAULT_QUANTILES,
        )

    @property
    def recorded(self) -> bool:
        """Whether requests must be observed one by one."""
        return self.summaries or self.histograms


def _parse_quantiles(text: str) -> tuple[tuple[float, float], ...]:
    """``<quantile>:<error>,...``; a bad pair is logged and skipped, as Triton does."""
    pairs = []
    for pair in filter(None, text.split(",")):
        quantile, sep, error = pair.partition(":")
        if not sep:
            log.error(
                "Invalid option: [%s]. No ':' delimiter found. Expected format is "
                "<quantile>:<error>",
                pair,
            )
            continue
        try:
            pairs.append((float(quantile), float(error)))
        except ValueError as exc:
            log.error("Invalid option: [%s]. Error: %s", pair, exc)
    return tuple(pairs)


class WindowedSummary:
    """Count and sum since load, and quantiles over the last minute of observations."""

    __slots__ = ("_window", "count", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self._window: deque[tuple[float, float]] = deque(maxlen=SUMMARY_WINDOW_LIMIT)

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        self._window.append((time.monotonic(), value))

    def quantiles(self, wanted: tuple[tuple[float, float], ...]) -> list[tuple[float, float]]:
        """(quantile, value) for each wanted quantile: the nearest-rank observation, NaN
        when the window is empty."""
        horizon = time.monotonic() - SUMMARY_MAX_AGE_S
        while self._window and self._window[0][0] < horizon:
            self._window.popleft()
        values = sorted(value for _, value in self._window)
        if not values:
            return [(q, math.nan) for q, _ in wanted]
        last = len(values) - 1
        return [(q, values[min(max(math.ceil(q * len(values)) - 1, 0), last)]) for q, _ in wanted]


class Histogram:
    """Cumulative bucket counts, as Prometheus exposes them."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        index = bisect.bisect_left(self.bounds, value)
        if index < len(self.counts):
            self.counts[index] += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), ``+Inf`` last."""
        running, buckets = 0, []
        for bound, count in zip(self.bounds, self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        buckets.append((math.inf, self.count))
        return buckets


#: The summaries Triton keeps per model (key -> ``nv_<key>`` family, see the collector).
SUMMARY_KEYS = (
    "request_duration",
    "queue_duration",
    "compute_input_duration",
    "compute_infer_duration",
    "compute_output_duration",
    "cache_hit_duration",
    "cache_miss_duration",
)


class LatencyRecorder:
    """One model version's per-request latency observations, in microseconds (ms for
    the first-response histogram), as Triton observes them."""

    __slots__ = ("first_response", "settings", "summaries")

    def __init__(self, settings: LatencySettings) -> None:
        self.settings = settings
        self.summaries = (
            {key: WindowedSummary() for key in SUMMARY_KEYS} if settings.summaries else {}
        )
        self.first_response = (
            Histogram(DEFAULT_FIRST_RESPONSE_BUCKETS) if settings.histograms else None
        )

    def observe(self, key: str, ns: int, times: int = 1) -> None:
        summary = self.summaries.get(key)
        if summary is not None:
            for _ in range(times):
                summary.observe(ns // 1000)

    def responded(self, ns: int) -> None:
        """The first response of a request, ``ns`` after it arrived."""
        if self.first_response is not None:
            self.first_response.observe(ns // 1_000_000)


#: The process's latency settings: Triton keeps one metrics configuration per process.
_latency_settings = LatencySettings()


def configure_latencies(settings: LatencySettings) -> None:
    """Set what later model versions record (the metrics frontend calls it at start)."""
    global _latency_settings
    _latency_settings = settings


def latency_recorder() -> LatencyRecorder | None:
    """A recorder for a new model version, or None when nothing is to be observed."""
    settings = _latency_settings
    return LatencyRecorder(settings) if settings.recorded else None


# --- custom metric families (pb_utils.MetricFamily) -----------------------------------


class MetricKind(str, Enum):
    """``TRITONSERVER_MetricKind``."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

LabelKey = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class CustomMetric:
    """One labelled series of a family; shared by every handle with the same labels."""

    labels: dict[str, str]
    value: float = 0.0
    histogram: Histogram | None = None
    #: Handles (across all worker processes) that hold it; at 0 it leaves the family.
    references: int = 0


@dataclass(slots=True)
class CustomFamily:
    name: str
    description: str
    kind: MetricKind
    metrics: dict[LabelKey, CustomMetric] = field(default_factory=dict)


class CustomMetricRegistry:
    """Metric families that models create at run time; errors are Triton core's texts.

    Families, as in Triton, stay registered once created (a family without metrics is
    not exposed); a metric lives while some handle holds it. Each handle belongs to an
    owner (a worker process), so that everything an owner held goes when it exits.
    """

    def __init__(self) -> None:
        self._families: dict[str, CustomFamily] = {}
        self._handles: dict[int, tuple[object, CustomFamily, LabelKey]] = {}
        self._next_handle = 1

    def create_family(self, name: str, description: str, kind: MetricKind) -> None:
        """Register a family, or reuse the one of that name (it must be of that kind)."""
        if name.startswith("__") or not _METRIC_NAME.fullmatch(name):
            raise InvalidArgument("Invalid metric name")
        existing = self._families.get(name)
        if existing is None:
            self._families[name] = CustomFamily(name, description, kind)
        elif existing.kind is not kind:
            raise InvalidArgument("Family name already exists with different type")

    def create_metric(
        self, owner: object, family: str, labels_json: str, buckets: list[float] | None
    ) -> int:
        """A handle on the family's metric with these labels (JSON object of strings)."""
        found = self._families.get(family)
        if found is None:
            raise NotFound(f"unknown metric family '{family}'")
        labels = _parse_labels(labels_json)
        if found.kind is MetricKind.HISTOGRAM:
            if buckets is None:
                raise InvalidArgument("Bucket boundaries not found in Metric args.")
            if any(b > a for a, b in zip(buckets[1:], buckets, strict=False)):
                raise InvalidArgument("Bucket Boundaries must be strictly sorted")
        elif buckets is not None:
            raise InvalidArgument(
                f"Unexpected args found in {found.kind.value} Metric constructor."
            )
        key = tuple(sorted(labels.items()))
        metric = found.metrics.get(key)
        if metric is None:
            histogram = Histogram(tuple(buckets)) if buckets is not None else None
            metric = found.metrics[key] = CustomMetric(labels, histogram=histogram)
        metric.references += 1
        handle, self._next_handle = self._next_handle, self._next_handle + 1
        self._handles[handle] = (owner, found, key)
        return handle

    def release(self, handle: int, owner: object) -> None:
        """Drop ``owner``'s handle; the metric leaves its family with its last handle."""
        entry = self._handles.get(handle)
        if entry is None or entry[0] is not owner:
            return
        del self._handles[handle]
        _, family, key = entry
        metric = family.metrics.get(key)
        if metric is not None:
            metric.references -= 1
            if metric.references <= 0:
                del family.metrics[key]

    def release_owner(self, owner: object) -> None:
        """Drop every handle ``owner`` holds (its worker process exited)."""
        for handle in [h for h, entry in self._handles.items() if entry[0] is owner]:
            self.release(handle, owner)

    # --- operations, with TRITONSERVER_Metric*'s checks ------------------------------

    def increment(self, handle: int, value: float) -> None:
        family, metric = self._metric(handle, "Could not increment metric value.")
        if family.kind is MetricKind.HISTOGRAM:
            raise Unsupported("TRITONSERVER_METRIC_KIND_HISTOGRAM does not support Increment")
        if family.kind is MetricKind.COUNTER and value < 0.0:
            raise InvalidArgument(
                "TRITONSERVER_METRIC_KIND_COUNTER can only be incremented monotonically by "
                "non-negative values."
            )
        metric.value += value

    def set(self, handle: int, value: float) -> None:
        family, metric = self._metric(handle, "Could not set metric value.")
        if family.kind is not MetricKind.GAUGE:
            raise Unsupported(f"{_kind_name(family)} does not support Set")
        metric.value = value

    def observe(self, handle: int, value: float) -> None:
        family, metric = self._metric(handle, "Could not set metric value.")
        if metric.histogram is None:
            raise Unsupported(f"{_kind_name(family)} does not support Observe")
        metric.histogram.observe(value)

    def value(self, handle: int) -> float:
        family, metric = self._metric(handle, "Could not get metric value.")
        if family.kind is MetricKind.HISTOGRAM:
            raise Unsupported("TRITONSERVER_METRIC_KIND_HISTOGRAM does not support Value")
        return metric.value

    def _metric(self, handle: int, what: str) -> tuple[CustomFamily, CustomMetric]:
        entry = self._handles.get(handle)
        metric = entry[1].metrics.get(entry[2]) if entry is not None else None
        if entry is None or metric is None:
            raise InvalidArgument(f"{what} Metric has been invalidated.")
        return entry[1], metric

    def families(self) -> Iterator[CustomFamily]:
        """The families in creation order (the collector skips empty ones)."""
        return iter(list(self._families.values()))


def _kind_name(family: CustomFamily) -> str:
    return f"TRITONSERVER_METRIC_KIND_{family.kind.name}"


def _parse_labels(labels_json: str) -> dict[str, str]:
    """Labels as the Python backend sends them: ``json.dumps`` of a dict (or ``null``)."""
    try:
        labels = json.loads(labels_json) or {}
    except ValueError:
        raise InvalidArgument("failed to parse the metric labels as JSON") from None
    if not isinstance(labels, dict):
        raise InvalidArgument("Failed to create metric. Labels must be a dictionary.")
    for name, value in labels.items():
        if not isinstance(value, str):
            raise InvalidArgument("attempt to access JSON non-string as string")
        if name.startswith("__") or not _LABEL_NAME.fullmatch(name):
            raise InvalidArgument("Invalid label name")
    return labels


# --- the server's view -----------------------------------------------------------------


class ServerMetrics:
    """What the metrics frontend reads of a server: its loaded model versions and the
    custom metric families of its models."""

    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager
        self.custom = CustomMetricRegistry()

    def versions(self) -> list[ModelVersion]:
        """Every ready version, by model name then version (the statistics' order)."""
        entries = sorted(self._manager.entries(), key=lambda entry: entry.name)
        return [
            version
            for entry in entries
            for version in sorted(entry.ready_versions, key=lambda v: v.version)
        ]

    def record_latencies(self, settings: LatencySettings) -> None:
        """Record per-request latencies from now on, for loaded and later versions."""
        configure_latencies(settings)
        for version in self.versions():
            if version.statistics.latencies is None:
                version.statistics.latencies = latency_recorder()
