"""What a traced request records, and where it goes as it happens.

A sampled request gets a :class:`RequestTrace`; the steps its execution sends (an
ensemble's) get child traces in the same :class:`TraceGroup`. The group collects
Triton's timestamps (and tensors at TENSORS level) and is written when its last
holder lets go: each trace once its request is answered and its compute reported,
the frontend once the response is sent (:class:`FrontendTrace`). ``JsonTraceGroup``
writes Triton's trace file entries; ``trace_otel.OtelTraceGroup`` makes spans.
"""

from __future__ import annotations

import contextvars
import time
from typing import TYPE_CHECKING, Any

from . import trace_json
from .request import InferenceRequest, InferenceResponse
from .trace_config import TENSORS, TIMESTAMPS

if TYPE_CHECKING:
    from .trace import TraceSetting

#: The trace of the request whose model is executing: ensemble steps started from that
#: execution become its children (asyncio tasks inherit it).
PARENT: contextvars.ContextVar[RequestTrace | None] = contextvars.ContextVar(
    "triton_kernel_parent_trace", default=None
)


class TraceGroup:
    """Where the traces of one sampled request and its children go (a mode's writer).

    Held by each of its traces until it ends, and by the frontend until the response
    is sent; released by the last one.
    """

    def __init__(self, level: int) -> None:
        self.level = level
        self.holds = 0

    def hold(self) -> None:
        self.holds += 1

    def release(self) -> None:
        self.holds -= 1
        if self.holds == 0:
            self.close()

    def begin(self, trace: RequestTrace, ns: int) -> None:
        """``trace`` starts (REQUEST_START)."""

    def event(self, trace: RequestTrace, name: str, ns: int) -> None:
        """A timestamp of ``trace``'s model (QUEUE_START, COMPUTE_*, REQUEST_END)."""

    def root_event(self, trace: RequestTrace, name: str, ns: int) -> None:
        """A timestamp of the whole request: frontend and INFER_RESPONSE_COMPLETE."""

    def tensor(self, trace: RequestTrace, activity: str, tensor: Any) -> None:
        """A tensor at TENSORS level (TENSOR_QUEUE_INPUT, TENSOR_BACKEND_OUTPUT)."""

    def close(self) -> None:
        """Every hold is released: write or export the group."""


class JsonTraceGroup(TraceGroup):
    """Triton's JSON trace entries, one list per trace id, written by the setting."""

    def __init__(self, setting: TraceSetting) -> None:
        super().__init__(setting.level)
        self.setting = setting
        self.entries: dict[int, list[str]] = {}

    def _add(self, trace_id: int, entry: str) -> None:
        self.entries.setdefault(trace_id, []).append(entry)

    def begin(self, trace: RequestTrace, ns: int) -> None:
        self._add(trace.id, trace_json.header(trace))
        self.event(trace, "REQUEST_START", ns)

    def event(self, trace: RequestTrace, name: str, ns: int) -> None:
        self._add(trace.id, trace_json.timestamp(trace.id, name, ns))

    def root_event(self, trace: RequestTrace, name: str, ns: int) -> None:
        self.event(trace, name, ns)

    def tensor(self, trace: RequestTrace, activity: str, tensor: Any) -> None:
        self._add(trace.id, trace_json.tensor(trace.id, activity, tensor))

    def close(self) -> None:
        # tritonserver writes the newest trace of a group first
        self.setting.write(",".join(e) for e in reversed(self.entries.values()))


class RequestTrace:
    """One traced request (Triton's ``TRITONSERVER_InferenceTrace``).

    Ends, with REQUEST_END, once its request is answered and no execution of it is
    still reporting its compute timestamps.
    """

    __slots__ = (
        "_final",
        "_last",
        "_pending",
        "_queued",
        "_request",
        "_responded",
        "ensemble",
        "group",
        "id",
        "model_name",
        "model_version",
        "parent",
        "request_id",
    )

    def __init__(
        self,
        trace_id: int,
        parent: RequestTrace | None,
        group: TraceGroup,
        request: InferenceRequest,
        model: Any,
    ) -> None:
        self.id = trace_id
        self.parent = parent
        self.group = group
        self.model_name = model.name
        self.model_version = model.version
        self.request_id = request.id
        #: Ensembles run no compute of their own: Triton records none for them.
        self.ensemble = model.config.platform == "ensemble"
        self._request: InferenceRequest | None = request
        self._queued = False
        #: When the first and the final response left: an execution's outputs were ready,
        #: and it was over, by then (its task may only notice later).
        self._responded = self._final = 0
        #: When the last part of the request (its answer, its compute) was over.
        self._last = 0
        self._pending = 1
        group.hold()

    @property
    def parent_id(self) -> int:
        return self.parent.id if self.parent is not None else 0

    def start(self) -> None:
        if self.group.level & TIMESTAMPS:
            self.group.begin(self, time.perf_counter_ns())

    def spawn(self, trace_id: int, request: InferenceRequest, model: Any) -> RequestTrace:
        """The trace of a request this one's execution sends (an ensemble step)."""
        child = RequestTrace(trace_id, self, self.group, request, model)
        child.start()
        return child

    def _stamp(self, name: str, ns: int) -> None:
        if self.group.level & TIMESTAMPS:
            self.group.event(self, name, ns)

    def _queue(self) -> None:
        """QUEUE_START and the input tensors, once the request was admitted to its queue."""
        request = self._request
        if self._queued or request is None or not request.enqueued_ns:
            return
        self._queued = True
        self._stamp("QUEUE_START", request.enqueued_ns)
        if self.group.level & TENSORS:
            for tensor in request.inputs.values():
                self.group.tensor(self, "TENSOR_QUEUE_INPUT", tensor)

    def compute_started(self) -> None:
        self._queue()
        self._pending += 1

    def computed(self, started: int, input_end: int, output_start: int) -> None:
        """The execution that held this request returned: its compute timestamps."""
        if not self.ensemble:
            end = time.perf_counter_ns()
            if self._responded:
                output_start = max(min(output_start, self._responded), input_end)
            if self._final:
                end = max(min(end, self._final), output_start)
            self._stamp("COMPUTE_START", started)
            self._stamp("COMPUTE_INPUT_END", input_end)
            self._stamp("COMPUTE_OUTPUT_START", output_start)
            self._stamp("COMPUTE_END", end)
            self._last = max(self._last, end)
        self._end()

    def responded(self, response: InferenceResponse | None, final: bool) -> None:
        """A response (None: an error, or only the final flag) is on its way to the caller."""
        self._queue()
        now = time.perf_counter_ns()
        self._responded = self._responded or now
        if final:
            self._final = now
        if response is not None and response.error is None and self.group.level & TENSORS:
            asked = {o.name for o in self._request.outputs} if self._request else set()
            for tensor in response.outputs:
                if not asked or tensor.name in asked:  # what Triton's backend sends back
                    self.group.tensor(self, "TENSOR_BACKEND_OUTPUT", tensor)
        if final and self.parent is None and self.group.level & TIMESTAMPS:
            self.group.root_event(self, "INFER_RESPONSE_COMPLETE", now)

    def request_done(self, ok: bool) -> None:
        """The request's caller has its answer (``ok``) or gave up, or it failed."""
        request = self._request
        self._queue()
        self._last = max(self._last, time.perf_counter_ns())
        if not ok and request is not None and request.frontend is not None:
            request.frontend.finish()  # a failed request sends no traced response
        self._end()

    def _end(self) -> None:
        self._pending -= 1
        if self._pending == 0:
            self._request = None
            self._stamp("REQUEST_END", self._last or time.perf_counter_ns())
            self.group.release()


def compute_started(traces: list[RequestTrace], single: bool) -> None:
    """An instance starts executing requests with these traces (``single``: alone)."""
    for trace in traces:
        trace.compute_started()
    if single:  # what the execution sends (ensemble steps) are children of this trace
        PARENT.set(traces[0])


def computed(traces: list[RequestTrace], started: int, input_end: int, output_start: int) -> None:
    for trace in traces:
        trace.computed(started, input_end, output_start)


class FrontendTrace:
    """A frontend's timestamps for one request, kept only if the kernel traces it.

    Created when the request starts arriving (``HTTP_RECV_START`` or
    ``GRPC_WAITREAD_START``); ``received`` marks the end of the read and hands it to
    the kernel request; ``sending``/``sent`` surround each response sent; ``finish``
    lets the trace be written. ``headers`` may carry OpenTelemetry context.
    """

    __slots__ = ("_finished", "_read", "_send", "_stamps", "_trace", "headers")

    def __init__(self, protocol: str, headers: Any = None) -> None:
        self._read = "HTTP_RECV" if protocol == "HTTP" else "GRPC_WAITREAD"
        self._send = f"{protocol}_SEND"
        self.headers = headers
        self._stamps = [(f"{self._read}_START", time.perf_counter_ns())]
        self._trace: RequestTrace | None = None
        self._finished = False

    @property
    def traced(self) -> bool:
        return self._trace is not None

    def received(self, request: InferenceRequest) -> None:
        self._stamps.append((f"{self._read}_END", time.perf_counter_ns()))
        request.frontend = self

    def attach(self, trace: RequestTrace) -> None:
        """The kernel traces the request: keep its group open until :meth:`finish`."""
        self._trace = trace
        trace.group.hold()
        for name, ns in self._stamps:
            self._stamp(name, ns)
        self._stamps.clear()

    def _stamp(self, name: str, ns: int) -> None:
        trace = self._trace
        if trace is not None and trace.group.level & TIMESTAMPS and not self._finished:
            trace.group.root_event(trace, name, ns)

    def sending(self) -> None:
        self._stamp(f"{self._send}_START", time.perf_counter_ns())

    def sent(self) -> None:
        self._stamp(f"{self._send}_END", time.perf_counter_ns())

    def finish(self) -> None:
        if self._trace is not None and not self._finished:
            self._finished = True
            self._trace.group.release()
