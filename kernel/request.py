"""Inference requests and responses as the kernel, frontends and backends share them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import Cancelled, Internal, KernelError
from .tensor import Tensor

#: ``TRITONSERVER_REQUEST_FLAG_SEQUENCE_START`` / ``..._END``: bits of ``InferenceRequest.flags``.
SEQUENCE_START = 1
SEQUENCE_END = 2


def sequence_flags(parameters: dict[str, Any]) -> int:
    """The request flags that ``sequence_start`` / ``sequence_end`` parameters ask for."""
    start = SEQUENCE_START if parameters.get("sequence_start") else 0
    return start | (SEQUENCE_END if parameters.get("sequence_end") else 0)


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for, with how it wants it."""

    name: str
    #: Top-N classification instead of the raw tensor (Triton's classification extension).
    class_count: int = 0
    #: Wire parameters the kernel passes through (``binary_data``, ...).
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferenceResponse:
    """One response of a model to one request."""

    model_name: str
    model_version: str
    id: str = ""
    outputs: list[Tensor] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    #: The last response of its request (always true for non-decoupled models).
    final: bool = True
    #: An error response of a decoupled model: the stream goes on after it.
    error: KernelError | None = None
    #: Carries only the FINAL flag of a decoupled model (``send(flags=FINAL)`` alone);
    #: Triton passes it to a client only when asked (``triton_enable_empty_final_response``).
    flag_only: bool = False


#: Marks the end of a request's response stream.
_END = object()


class InferenceRequest:
    """A request on its way through the kernel, and the channel its response comes back by.

    A frontend builds it; the kernel validates it, queues it and hands it to a model
    instance, whose backend answers through :meth:`respond` or :meth:`fail`.
    """

    __slots__ = (
        "_future",
        "_responses",
        "correlation_id",
        "enqueued_ns",
        "flags",
        "frontend",
        "id",
        "inputs",
        "model_name",
        "model_version",
        "outputs",
        "parameters",
        "priority",
        "response_hook",
        "timeout_us",
        "trace",
    )

    def __init__(
        self,
        model_name: str,
        inputs: dict[str, Tensor],
        *,
        model_version: int = -1,
        id: str = "",
        outputs: list[RequestedOutput] | None = None,
        parameters: dict[str, Any] | None = None,
        correlation_id: int | str = 0,
        flags: int = 0,
        priority: int = 0,
        timeout_us: int = 0,
    ) -> None:
        self.model_name = model_name
        #: -1 asks for the version the model's policy serves by default (the newest).
        self.model_version = model_version
        self.id = id
        self.inputs = inputs
        #: Empty means "every output of the model".
        self.outputs = outputs or []
        self.parameters = parameters or {}
        self.correlation_id = correlation_id
        self.flags = flags
        self.priority = priority
        self.timeout_us = timeout_us
        #: ``perf_counter_ns`` when the request entered its model's queue.
        self.enqueued_ns = 0
        #: Called with each response before its caller sees it (the sequence batcher
        #: takes a model's implicit state outputs out of it).
        self.response_hook: Callable[[InferenceResponse], None] | None = None
        #: The request's ``kernel.trace.RequestTrace`` when it is traced.
        self.trace: Any = None
        #: The frontend's ``kernel.trace.FrontendTrace`` (its timestamps) while tracing is on.
        self.frontend: Any = None
        self._future: asyncio.Future[Any] | None = None
        self._responses: asyncio.Queue[Any] | None = None

    # --- the response channel (used by the kernel and backends) -----------------

    def bind(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[InferenceResponse]:
        """Create the future the one response will arrive on (called once by the kernel)."""
        self._future = loop.create_future()
        return self._future

    def bind_stream(self, loop: asyncio.AbstractEventLoop) -> AsyncIterator[InferenceResponse]:
        """Expect zero or more responses (decoupled models); iterate them as they come.

        Closing the iterator before the final response cancels the request.
        """
        self._future = loop.create_future()
        self._responses = asyncio.Queue()
        return self._iterate(self._future, self._responses)

    @staticmethod
    async def _iterate(
        future: asyncio.Future[Any], responses: asyncio.Queue[Any]
    ) -> AsyncIterator[InferenceResponse]:
        try:
            while True:
                item = await responses.get()
                if item is _END:
                    return
                if isinstance(item, KernelError):
                    raise item
                yield item
        finally:
            if not future.done():
                future.cancel()

    @property
    def cancelled(self) -> bool:
        """True once the caller stopped waiting (client gone, timeout)."""
        return self._future is not None and self._future.cancelled()

    @property
    def done(self) -> bool:
        return self._future is None or self._future.done()

    def respond(self, response: InferenceResponse) -> None:
        """Deliver the final response; ignored when the caller has gone."""
        if self._future is None or self._future.done():
            return
        if self.response_hook is not None:
            self.response_hook(response)
        if self.trace is not None:
            self.trace.responded(response, True)
        if self._responses is None:
            self._future.set_result(response)
        else:
            response.final = True
            self._responses.put_nowait(response)
            self._end(None)

    def send(self, response: InferenceResponse | None, *, final: bool) -> bool:
        """Deliver one response of a decoupled model, or ``None`` with only the FINAL flag.

        Returns False when nobody is waiting any more (the model may stop early).
        """
        if self._future is None or self._future.done():
            return False
        if self.response_hook is not None and response is not None and response.error is None:
            self.response_hook(response)
        if self.trace is not None:
            self.trace.responded(response, final)
        if self._responses is None:  # a decoupled model called for one response
            if response is not None and response.error is not None:
                self._future.set_exception(response.error)
            elif response is not None:
                self._future.set_result(response)
            elif final:
                self._future.set_exception(Internal("the model sent no response"))
            return True
        if response is None and final:
            response = InferenceResponse(self.model_name, "", flag_only=True)
        if response is not None:
            response.final = final
            self._responses.put_nowait(response)
        if final:
            self._end(None)
        return True

    def fail(self, error: KernelError) -> None:
        """Fail the request with a typed error; ignored when the caller has gone."""
        if self._future is None or self._future.done():
            return
        if self.trace is not None:
            self.trace.responded(None, True)
        if self._responses is None:
            self._future.set_exception(error)
        else:
            self._responses.put_nowait(error)
            self._end(None)

    def _end(self, result: Any) -> None:
        assert self._future is not None and self._responses is not None
        self._responses.put_nowait(_END)
        self._future.set_result(result)

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` if the caller stops waiting (a running model may then stop early)."""
        if self._future is None:
            return
        self._future.add_done_callback(lambda future: callback() if future.cancelled() else None)

    def cancel(self) -> None:
        self.fail(Cancelled("request cancelled"))
