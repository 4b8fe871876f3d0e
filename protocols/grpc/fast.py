"""A lean road for unary ModelInfer calls, beside grpclib's generic one.

grpclib spends more on each call than the inference it carries: a ``Stream`` with
metadata decoding, deadline and event-dispatch machinery, and three writes for the
answer (headers, message, trailers), each a system call and a wake-up of the client.
A plain ModelInfer call (nothing restricted or traced) is served
here instead, on the same connection (``h2conn.py``): the message is read from its
stream, answered by the same service method (``InferenceService.model_infer``), and
headers (constant bytes), message and trailers leave in one write when they fit the
flow-control window, as they nearly always do. Errors end the call with the status
and message grpclib would send.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

from grpclib import GRPCError
from grpclib.const import Status
from grpclib.metadata import decode_timeout, encode_grpc_message

from triton_kernel.kernel.errors import KernelError

from . import codec, wire
from .errors import grpc_error
from .h2conn import encode_headers
from .service import SERVICE, InferenceService, parse_infer_message, serve_unary

log = logging.getLogger(__name__)

INFER_PATH = f"{SERVICE}/ModelInfer"
_CONTENT_TYPES = frozenset(("application/grpc", "application/grpc+proto"))
#: What grpclib answers with (its codec's content subtype is "proto").
_INITIAL = [(":status", "200"), ("content-type", "application/grpc+proto")]
_TRAILERS = [("grpc-status", "0")]
_INITIAL_BLOCK = encode_headers(_INITIAL)
_TRAILERS_BLOCK = encode_headers(_TRAILERS)
_PREFIX = struct.Struct(">?I")
#: How many distinct request header sets ``FastModelInfer.classify`` remembers.
_SEEN_KEPT = 256


class FastModelInfer:
    """Serves the plain unary ModelInfer calls of every connection."""

    def __init__(self, service: InferenceService, restricted: bool) -> None:
        self.service = service
        #: A restricted ``inference`` group needs grpclib's road (its header check).
        self.enabled = not restricted
        #: Request headers seen before -> whether they make a plain call, and its deadline
        #: (a client sends the same few header sets again and again).
        self._seen: dict[tuple[tuple[str, str], ...], tuple[bool, float | None]] = {}

    def classify(self, headers: list[tuple[str, str]]) -> tuple[bool, float | None]:
        """Whether a call with these request headers is a plain ModelInfer call, and the
        seconds it may take (``grpc-timeout``)."""
        if not self.enabled or self.service.server.tracing:
            return False, None
        key = tuple(headers)
        verdict = self._seen.get(key)
        if verdict is None:
            verdict = _plain(headers), _deadline(headers)
            if len(self._seen) >= _SEEN_KEPT:
                self._seen.clear()
            self._seen[key] = verdict
        return verdict

    def start(
        self, stream: Any, release_stream: Any, timeout: float | None
    ) -> asyncio.Future[None]:
        """Serve a call by callbacks (:class:`UnaryCall`); the returned future stands for
        the call in grpclib's table of calls (cancelling it cancels the call)."""
        return UnaryCall(self, stream, release_stream, timeout).handle

    async def serve(self, stream: Any, release_stream: Any, timeout: float | None) -> None:
        """One call on its ``h2conn.H2Stream`` (``timeout``: its seconds left, as
        ``classify`` read them); always releases it."""
        try:
            try:
                # (asyncio.wait_for rather than asyncio.timeout: Python 3.10 has no such thing)
                reply = await asyncio.wait_for(self._answer(stream), timeout)
            except (TimeoutError, asyncio.TimeoutError) as exc:
                if timeout is None or not isinstance(exc.__cause__, asyncio.CancelledError):
                    raise  # not the call's deadline (wait_for's comes from the cancellation)
                log.info("Deadline exceeded")  # as grpclib logs it
                await _send_status(stream, Status.DEADLINE_EXCEEDED, None)
            except GRPCError as exc:
                await _send_status(stream, exc.status, exc.message)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("unhandled error in a gRPC ModelInfer call")
                await _send_status(stream, Status.UNKNOWN, "Internal Server Error")
            else:
                await _send_reply(stream, reply)
        except asyncio.CancelledError:
            raise
        except Exception:  # the connection went away while answering: nobody to tell
            log.debug("could not answer a ModelInfer call", exc_info=True)
        finally:
            release_stream()

    async def _answer(self, stream: Any) -> bytes:
        service = self.service
        data = await wire.recv_frame(stream, service.max_message_size)
        if data is None:
            raise GRPCError(Status.INTERNAL, "the client sent no request message")
        message, raw = parse_infer_message(data)
        reply: bytes = await serve_unary(lambda m: service.model_infer(m, raw, None), message)
        return reply


class UnaryCall:
    """One plain ModelInfer call, served without a task when it can be.

    The message is taken when the client ends its stream (a unary client sends it
    whole), decoded and handed to ``Server.submit``; the answer is written from the
    kernel's callback. Anything out of the ordinary (a compressed or oversized message,
    no room to write) continues on :meth:`FastModelInfer.serve`'s road, in a task.
    ``handle`` is the call's entry in grpclib's table: a reset stream or a lost
    connection cancels it, and with it the request.
    """

    __slots__ = ("_answering", "_fast", "_release", "_request", "_stream", "_timer", "handle")

    def __init__(
        self, fast: FastModelInfer, stream: Any, release: Any, timeout: float | None
    ) -> None:
        self._fast = fast
        self._stream = stream
        self._release = release
        self._request: asyncio.Future[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: An answer is on its way (the deadline passed, or an error is being sent).
        self._answering = False
        loop = asyncio.get_running_loop()
        self.handle: asyncio.Future[None] = loop.create_future()
        self.handle.add_done_callback(self._ended)
        if timeout is not None:
            self._timer = loop.call_later(timeout, self._expire)
        stream.on_data = self._data
        if stream.remote_closed:  # (headers that end the stream: no message at all)
            loop.call_soon(self._data)

    def _data(self) -> None:
        stream = self._stream
        if self.handle.done() or self._answering or stream.reset_done:
            return
        if stream._size >= 5:
            compressed, length = _PREFIX.unpack(stream.peek(5))
            if compressed or length > self._fast.service.max_message_size:
                self._in_task()  # decompression and its errors live there
                return
        if not stream.remote_closed:
            stream._give_back(stream._size)  # let the rest of the message come
            return
        stream.on_data = None
        data = stream.take_all()
        if len(data) < 5:
            self._fail(Status.INTERNAL, "the client sent no request message")
        elif len(data) != 5 + length:
            self._fail(Status.INTERNAL, "the client ended the stream inside a message")
        else:
            try:
                self._submit(memoryview(data)[5:])
            except GRPCError as exc:
                self._fail(exc.status, exc.message)
            except Exception:
                log.exception("unhandled error in a gRPC call")
                self._fail(Status.INTERNAL, "internal server error")

    def _submit(self, data: memoryview) -> None:
        service = self._fast.service
        message, raw = parse_infer_message(bytes(data))
        try:
            request, _ = codec.decode_infer_request(message, raw)
            model = service.unary_model(request)
            self._request = service.server.submit(request, model, self._answer)
        except KernelError as exc:
            raise grpc_error(exc) from None

    def _answer(self, response: Any, error: BaseException | None) -> None:
        """The kernel's callback."""
        self._request = None
        if self.handle.done() or self._answering:
            return  # cancelled, or the deadline passed: answered already
        if error is None:
            try:
                reply = codec.encode_infer_response(response)
            except KernelError as exc:
                error = exc
            else:
                self._reply(reply)
                return
        if isinstance(error, KernelError):
            status = grpc_error(error)
            self._fail(status.status, status.message)
        elif isinstance(error, asyncio.CancelledError):
            self._finish()
        else:
            log.error("unhandled error in a gRPC call", exc_info=error)
            self._fail(Status.INTERNAL, "internal server error")

    def _reply(self, reply: bytes) -> None:
        stream = self._stream
        if stream._transport.is_closing():
            self._finish()
            return
        framed = _PREFIX.pack(False, len(reply)) + reply
        if stream.connection.send_unary(stream, _INITIAL_BLOCK, framed, _TRAILERS_BLOCK):
            self._finish()
        else:
            self._answering = True
            self._finish_in_task(_send_reply(stream, reply))

    def _fail(self, status: Status, message: str | None) -> None:
        self._answering = True
        self._finish_in_task(_send_status(self._stream, status, message))

    def _expire(self) -> None:
        self._timer = None
        if self.handle.done():
            return
        log.info("Deadline exceeded")  # as grpclib logs it
        self._answering = True
        if self._request is not None:
            self._request.cancel()
            self._request = None
        self._fail(Status.DEADLINE_EXCEEDED, None)

    def _in_task(self) -> None:
        """Hand the call to the task-based road (which reads the rest itself)."""
        self._stream.on_data = None
        loop = asyncio.get_running_loop()
        left = None if self._timer is None else max(self._timer.when() - loop.time(), 0.0)
        self._close_timer()
        handler = self._stream.connection.handler
        task = loop.create_task(self._fast.serve(self._stream, self._release, left))
        if handler._tasks.get(self._stream) is self.handle:
            handler._tasks[self._stream] = task
        self.handle.remove_done_callback(self._ended)
        self.handle.set_result(None)

    def _finish_in_task(self, sending: Any) -> None:
        """Send an answer that may have to wait for the connection, then finish."""
        task = asyncio.get_running_loop().create_task(sending)
        task.add_done_callback(lambda done: self._finish(done))

    def _finish(self, sent: asyncio.Future[None] | None = None) -> None:
        if sent is not None and not sent.cancelled() and sent.exception() is not None:
            log.debug("could not answer a ModelInfer call", exc_info=sent.exception())
        if not self.handle.done():
            self.handle.set_result(None)

    def _ended(self, handle: asyncio.Future[None]) -> None:
        """The call is over: answered, or cancelled (reset, connection lost, shutdown)."""
        self._stream.on_data = None
        self._close_timer()
        if self._request is not None:
            self._request.cancel()
            self._request = None
        self._release()

    def _close_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _plain(headers: list[tuple[str, str]]) -> bool:
    """Whether a call with these request headers is a plain ModelInfer call."""
    path = method = content_type = te = None
    for key, value in headers:
        if key == ":path":
            path = value
        elif key == ":method":
            method = value
        elif key == "content-type":
            content_type = value
        elif key == "te":
            te = value
        elif key == "grpc-timeout" and _timeout(value) is None:
            return False  # grpclib answers a bad one
    return (
        path == INFER_PATH
        and method == "POST"
        and te == "trailers"
        and content_type in _CONTENT_TYPES
    )


def _timeout(text: str) -> float | None:
    try:
        return decode_timeout(text)
    except ValueError:
        return None


def _deadline(headers: list[tuple[str, str]]) -> float | None:
    """Seconds left for the call (``grpc-timeout``: the shortest, as grpclib reads them)."""
    timeouts = [_timeout(value) for key, value in headers if key == "grpc-timeout"]
    return min((t for t in timeouts if t is not None), default=None)


async def _send_reply(stream: Any, reply: bytes) -> None:
    """Headers, the message and trailers, in one write when flow control allows it."""
    if stream._transport.is_closing():
        return
    framed = _PREFIX.pack(False, len(reply)) + reply
    if not stream.connection.send_unary(stream, _INITIAL_BLOCK, framed, _TRAILERS_BLOCK):
        await stream.send_headers(_INITIAL)  # waits for room, splits frames
        await stream.send_data(framed)
        await stream.send_headers(_TRAILERS, end_stream=True)


async def _send_status(stream: Any, status: Status, message: str | None) -> None:
    """A trailers-only answer, as grpclib sends one for an error."""
    if stream._transport.is_closing():
        return
    headers = [*_INITIAL, ("grpc-status", str(status.value))]
    if message is not None:
        headers.append(("grpc-message", encode_grpc_message(message)))
    await stream.send_headers(headers, end_stream=True)
    if stream.closable:
        stream.reset_nowait()
