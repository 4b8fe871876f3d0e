"""OpenTelemetry trace mode: each traced request as spans, exported by OTLP over HTTP.

Imported only when ``--trace-config mode=opentelemetry`` asks for it, so the server
never loads the SDK otherwise. Spans follow tritonserver 2.51: a root span
``InferRequest`` (frontend timestamps and INFER_RESPONSE_COMPLETE as events), one span
per model named after it (REQUEST_START, QUEUE_START, REQUEST_END; attributes
``triton.model_name``, ``triton.model_version``, ``triton.trace_id``,
``triton.trace_parent_id``, ``triton.request_id``), an ensemble step's span under its
ensemble's, and a ``compute`` span under each model span (COMPUTE_*). Every span is
of kind SERVER, from the tracer ``triton-server``; a request carrying W3C
``traceparent`` context continues that trace and is always traced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import Span, SpanKind, get_current_span, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .trace_record import RequestTrace, TraceGroup

log = logging.getLogger(__name__)

DEFAULT_URL = "http://localhost:4318/v1/traces"
SERVICE_NAME = "triton-inference-server"
TRACER_NAME = "triton-server"
ROOT_SPAN = "InferRequest"
#: Activities that close the innermost span of their trace (COMPUTE_START opens one).
_CLOSES = {"REQUEST_END", "COMPUTE_END"}


class OtelExporter:
    """The tracer provider, its batch span processor and OTLP/HTTP exporter."""

    def __init__(self, options: Sequence[tuple[str, str]]) -> None:
        url, attributes, batch = DEFAULT_URL, {"service.name": SERVICE_NAME}, {}
        for key, value in options:
            if key == "url":
                url = value if "://" in value else f"http://{value}"
            elif key == "resource":
                name, _, text = value.partition("=")
                attributes[name] = text if _ else value
            elif key.startswith("bsp_"):
                batch[key] = int(value)
        queue = max(batch.get("bsp_max_queue_size", 2048), 1)
        processor = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=url),
            max_queue_size=queue,
            # the SDK refuses 0 ("export at once") and a batch larger than the queue
            schedule_delay_millis=max(batch.get("bsp_schedule_delay", 5000), 1),
            max_export_batch_size=min(max(batch.get("bsp_max_export_batch_size", 512), 1), queue),
        )
        self._provider = TracerProvider(resource=Resource.create(attributes), sampler=ALWAYS_ON)
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer(TRACER_NAME)
        self._propagator = TraceContextTextMapPropagator()

    def extract(self, headers: Any) -> Context | None:
        """The W3C trace context a request carries, if it carries a valid one."""
        if headers is None or "traceparent" not in headers:
            return None
        context = self._propagator.extract(headers)
        return context if get_current_span(context).get_span_context().is_valid else None

    def group(self, level: int, context: Context | None) -> OtelTraceGroup:
        return OtelTraceGroup(self._tracer, level, context)

    def shutdown(self) -> None:
        self._provider.shutdown()


class OtelTraceGroup(TraceGroup):
    """The spans of one traced request and its children; the root ends with the group."""

    def __init__(self, tracer: Any, level: int, context: Context | None) -> None:
        super().__init__(level)
        self._tracer = tracer
        #: Steady (perf_counter) ns to wall-clock ns, fixed when the trace starts.
        self._offset = time.time_ns() - time.perf_counter_ns()
        self._root = self._start(ROOT_SPAN, time.perf_counter_ns(), context or Context())
        #: The open spans of each trace id, innermost last.
        self._stacks: dict[int, list[Span]] = {}
        self._warned = False

    def _start(self, name: str, ns: int, context: Context, **attributes: Any) -> Span:
        return self._tracer.start_span(  # type: ignore[no-any-return]
            name,
            context=context,
            kind=SpanKind.SERVER,
            start_time=self._offset + ns,
            attributes=attributes or None,
        )

    def begin(self, trace: RequestTrace, ns: int) -> None:
        parent = self._root if trace.parent is None else self._top(trace.parent.id)
        attributes = {
            "triton.model_name": trace.model_name,
            "triton.model_version": trace.model_version,
            "triton.trace_id": trace.id,
            "triton.trace_parent_id": trace.parent_id,
        }
        if trace.request_id:
            attributes["triton.request_id"] = trace.request_id
        span = self._start(trace.model_name, ns, set_span_in_context(parent), **attributes)
        self._stacks.setdefault(trace.id, []).append(span)
        span.add_event("REQUEST_START", timestamp=self._offset + ns)

    def _top(self, trace_id: int) -> Span:
        stack = self._stacks.get(trace_id)
        return stack[-1] if stack else self._root

    def event(self, trace: RequestTrace, name: str, ns: int) -> None:
        stack = self._stacks.setdefault(trace.id, [])
        if name == "COMPUTE_START":
            parent = set_span_in_context(self._top(trace.id))
            stack.append(self._start("compute", ns, parent))
        if not stack:
            return
        stack[-1].add_event(name, timestamp=self._offset + ns)
        if name in _CLOSES:
            stack.pop().end(end_time=self._offset + ns)

    def root_event(self, trace: RequestTrace, name: str, ns: int) -> None:
        self._root.add_event(name, timestamp=self._offset + ns)

    def tensor(self, trace: RequestTrace, activity: str, tensor: Any) -> None:
        if not self._warned:
            self._warned = True
            log.error("Tensor level tracing is not supported by the mode: opentelemetry")

    def close(self) -> None:
        for stack in self._stacks.values():  # spans a failed request left open
            while stack:
                stack.pop().end()
        self._root.end()
