"""Prometheus text exposition, byte for byte as tritonserver writes it (prometheus-cpp).

prometheus-client's own writer differs from Triton's where clients notice: it names
counter samples ``<name>_total``, adds ``_created`` samples and writes ``1.0`` for 1.
This writer keeps prometheus-client's metric families as the data model and writes
them as prometheus-cpp does: families grouped by type (counters, gauges, histograms,
summaries, each in registration order), empty families and empty descriptions left
out, values with 16 significant digits (``1``, ``0.025``, ``1e+20``, ``Nan``, ``+Inf``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from prometheus_client.metrics_core import Metric

CONTENT_TYPE = "text/plain; charset=utf-8"

#: prometheus-cpp's registry collects families by type, in this order.
_TYPE_ORDER = {"counter": 0, "gauge": 1, "histogram": 2, "summary": 3}


def format_value(value: float) -> str:
    """A sample value as prometheus-cpp writes a double (``%.16g``)."""
    if math.isnan(value):
        return "Nan"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.16g}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items()) + "}"


def render(families: Iterable[Metric]) -> str:
    """The ``/metrics`` body; sample labels are written in the order each sample has."""
    lines: list[str] = []
    for family in sorted(families, key=lambda f: _TYPE_ORDER.get(f.type, len(_TYPE_ORDER))):
        if not family.samples:
            continue
        if family.documentation:
            lines.append(f"# HELP {family.name} {_escape_help(family.documentation)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        lines.extend(f"{s.name}{_labels(s.labels)} {format_value(s.value)}" for s in family.samples)
    return "".join(line + "\n" for line in lines)
