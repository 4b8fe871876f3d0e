"""Inference requests and responses as the kernel, frontends and backends share them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import Cancelled, KernelError
from .tensor import Tensor


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


class InferenceRequest:
    """A request on its way through the kernel, and the channel its response comes back by.

    A frontend builds it; the kernel validates it, queues it and hands it to a model
    instance, whose backend answers through :meth:`respond` or :meth:`fail`.
    """

    __slots__ = (
        "_future",
        "correlation_id",
        "flags",
        "id",
        "inputs",
        "model_name",
        "model_version",
        "outputs",
        "parameters",
        "priority",
        "timeout_us",
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
        self._future: asyncio.Future[InferenceResponse] | None = None

    # --- the response channel (used by the kernel and backends) -----------------

    def bind(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[InferenceResponse]:
        """Create the future the response will arrive on (called once by the kernel)."""
        self._future = loop.create_future()
        return self._future

    @property
    def cancelled(self) -> bool:
        """True once the caller stopped waiting (client gone, timeout)."""
        return self._future is not None and self._future.cancelled()

    @property
    def done(self) -> bool:
        return self._future is None or self._future.done()

    def respond(self, response: InferenceResponse) -> None:
        """Deliver the final response; ignored when the caller has gone."""
        if self._future is not None and not self._future.done():
            self._future.set_result(response)

    def fail(self, error: KernelError) -> None:
        """Fail the request with a typed error; ignored when the caller has gone."""
        if self._future is not None and not self._future.done():
            self._future.set_exception(error)

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` if the caller stops waiting (a running model may then stop early)."""
        if self._future is None:
            return
        self._future.add_done_callback(lambda future: callback() if future.cancelled() else None)

    def cancel(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_exception(Cancelled("request cancelled"))
