"""A lean HTTP/1.1 connection for the infer route, with aiohttp serving every other request.

aiohttp costs about 50 us of CPU per request before a handler runs (request and
response objects, a task per request, routing, middlewares), as much as the rest of an
identity inference. So every connection starts here: a plain ``POST .../infer`` with a
``Content-Length`` body is parsed in a few lines and answered from the same handler
core as the aiohttp route (``handlers.decode_infer`` and the codec), with one write;
the kernel calls back when the response is ready (``Server.submit``): no task and no
coroutine per request.

Any other request (another route or method, compressed bodies or responses, a
restricted or traced request, verbose logging) is served by the aiohttp application
itself: it gets a fresh aiohttp connection handler over a :class:`_Lane`, a transport
that writes to the real one, fed that request's bytes alone; when aiohttp has written
the response (its access logger says so) the lane is detached and this connection
reads on. Requests are served one at a time, in order. What cannot be cut into whole
requests here (chunked bodies, ``Expect: 100-continue``, upgrades, a malformed head, a
body over the size limit) hands the rest of the connection to aiohttp for good.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import orjson

from triton_kernel.kernel.errors import KernelError
from triton_kernel.kernel.logsettings import VERBOSE
from triton_kernel.kernel.request import InferenceRequest, InferenceResponse
from triton_kernel.kernel.restricted import Restriction
from triton_kernel.kernel.server import Server

from .codec import encode_response
from .errors import status_of
from .handlers import HEADER_LENGTH, decode_infer, infer_model

log = logging.getLogger(__name__)

_INFER = re.compile(rb"/v2/models/([^/?#%]+)(?:/versions/([0-9]+))?/infer")
#: Headers that make an infer request aiohttp's (it implements what they ask).
_NOT_FAST = frozenset((b"content-encoding",))
#: Headers that leave no way to cut the stream into requests here: aiohttp for good.
_NOT_FRAMED = frozenset((b"transfer-encoding", b"expect", b"upgrade"))
#: A header block longer than this goes to aiohttp, which answers it as it should.
_MAX_HEAD = 32 * 1024
#: Bytes of later (pipelined) requests read ahead while one is served.
_READ_AHEAD = 1024 * 1024
#: Idle keep-alive connections close after this long, as aiohttp's do.
KEEPALIVE_TIMEOUT = 75.0
_JSON = b"application/json"
_OCTETS = b"application/octet-stream"
_HEADER = HEADER_LENGTH.encode()
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


class FastInfer:
    """What the connections share: the server, limits, and the way into aiohttp."""

    def __init__(
        self,
        server: Server,
        aiohttp_protocol: Callable[[], asyncio.Protocol],
        max_input_size: int,
        inference_restriction: Restriction | None,
    ) -> None:
        self.server = server
        #: A new aiohttp connection handler (``AppRunner.server``).
        self.aiohttp_protocol = aiohttp_protocol
        self.max_input_size = max_input_size
        self.restriction = inference_restriction
        self.connections: set[InferConnection] = set()
        #: Request heads seen before -> what they parse to: a client sends the same head
        #: again and again (same route, headers and body length).
        self.heads: dict[bytes, _Request | None] = {}

    def __call__(self) -> InferConnection:
        """A protocol for a new connection (the listener's factory)."""
        return InferConnection(self)

    async def shutdown(self, grace: float) -> None:
        """Close idle connections; give requests in flight ``grace`` seconds, then cancel.

        Requests served by aiohttp are drained by its runner's cleanup.
        """
        for connection in list(self.connections):
            connection.close_when_idle()
        tasks = [c.task for c in self.connections if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for connection in list(self.connections):
            connection.abort()


class _Request:
    """A request head cut from the stream: enough to serve it here or hand it on.

    Immutable once parsed: a head seen again (``FastInfer.heads``) reuses it.
    """

    __slots__ = ("end", "fast", "header_length", "model", "slow", "version")

    def __init__(self, end: int) -> None:
        #: Where the request (head and body) ends in the buffer.
        self.end = end
        self.fast = False
        self.model = ""
        self.version = -1
        self.header_length: str | None = None
        #: The same request, for aiohttp (when verbose logging or tracing is on).
        self.slow = self


_UNSEEN = _Request(0)
#: How many distinct request heads are remembered (then forgotten all at once).
_HEADS_KEPT = 256


class InferConnection(asyncio.Protocol):
    """One client connection: infer requests served here, others through aiohttp."""

    __slots__ = (
        "_buffer",
        "_closing",
        "_idle_at",
        "_lane",
        "_loop",
        "_owner",
        "_paused",
        "_timer",
        "_transport",
        "task",
    )

    def __init__(self, owner: FastInfer) -> None:
        self._owner = owner
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        #: The infer request being served here (cancelling it cancels the request).
        self.task: asyncio.Future[Any] | None = None
        #: The aiohttp handler serving the current request, if aiohttp serves it.
        self._lane: _Lane | None = None
        self._closing = False
        self._paused = False
        self._idle_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._owner.connections.add(self)
        self._loop = loop = asyncio.get_running_loop()
        self._idle_at = loop.time()
        self._timer = loop.call_later(KEEPALIVE_TIMEOUT, self._check_idle)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self.task is None and self._lane is None:
            self._serve_buffered()
        elif len(self._buffer) > _READ_AHEAD and self._transport is not None and not self._paused:
            self._paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        return False  # the transport closes itself (and a request in flight is cancelled)

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        if self.task is not None:
            self.task.cancel()  # the client went away: so does its request
        if self._lane is not None:
            self._lane.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._lane is not None:
            self._lane.handler.pause_writing()

    def resume_writing(self) -> None:
        if self._lane is not None:
            self._lane.handler.resume_writing()

    # --- serving ------------------------------------------------------------------------

    def _serve_buffered(self) -> None:
        """Start the next complete request in the buffer (here or in aiohttp)."""
        buffer = self._buffer
        if not buffer or self._transport is None or self._closing:
            return
        head_end = buffer.find(b"\r\n\r\n", 0, _MAX_HEAD)
        if head_end < 0:
            if len(buffer) >= _MAX_HEAD:
                self._hand_over()
            return
        head = bytes(buffer[:head_end])
        heads = self._owner.heads
        request = heads.get(head, _UNSEEN)
        if request is _UNSEEN:
            request = self._parse_head(head, head_end + 4)
            if len(heads) >= _HEADS_KEPT:
                heads.clear()
            heads[head] = request
        if request is not None and request.fast and (VERBOSE.level or self._owner.server.tracing):
            request = request.slow  # settings that only the aiohttp route honours
        if request is None:
            self._hand_over()
            return
        if len(buffer) < request.end:
            return  # the body is still arriving
        if not request.fast:
            self._serve_in_aiohttp(request.end)
            return
        body = bytes(buffer[head_end + 4 : request.end])
        del buffer[: request.end]
        self._serve(request.model, request.version, body, request.header_length)

    def _parse_head(self, head: bytes, body_start: int) -> _Request | None:
        """The request ``head`` starts, or None when only aiohttp can frame the stream."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
            return None
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            key, colon, value = line.partition(b":")
            key = key.lower()
            if not colon or key in headers or not key or key[-1:].isspace() or key[:1].isspace():
                return None
            headers[key] = value.strip()
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or not _NOT_FRAMED.isdisjoint(headers):
            return None
        owner = self._owner
        if int(length) > owner.max_input_size:
            return None  # aiohttp refuses it without buffering it all
        request = _Request(body_start + int(length))
        match = _INFER.fullmatch(parts[1])
        if match is None or parts[0] != b"POST" or parts[2] != b"HTTP/1.1":
            return request
        if not _NOT_FAST.isdisjoint(headers):
            return request
        if _compresses(headers.get(b"accept-encoding")) or not _allowed(owner.restriction, headers):
            return request
        if headers.get(b"connection", b"keep-alive").lower() != b"keep-alive":
            return request
        try:
            request.model = match[1].decode("ascii")
        except UnicodeDecodeError:
            return request
        request.version = int(match[2]) if match[2] is not None else -1
        header_length = headers.get(b"inference-header-content-length")
        request.header_length = None if header_length is None else header_length.decode("latin-1")
        request.fast = True
        request.slow = _Request(request.end)
        return request

    def _serve(self, name: str, version: int, body: bytes, header_length: str | None) -> None:
        """Decode and submit the request; ``_answer`` replies when it is done.

        No task and no coroutine: the kernel calls back. A request refused before it
        is queued is answered at once, and the next one is read in a later turn of the
        loop (pipelined bad requests must not recurse).
        """
        server = self._owner.server
        try:
            model = infer_model(server, name, version)
            inference, binary = decode_infer(model, version, body, header_length)
            self.task = server.submit(
                inference,
                model,
                lambda response, error: self._answer(inference, binary, response, error),
            )
            return
        except KernelError as exc:
            self._reply(status_of(exc), _JSON, orjson.dumps({"error": exc.message}))
        except Exception:
            log.exception("unhandled error serving POST %s infer", name)
            self._reply(500, _JSON, b'{"error":"internal server error"}')
        loop = asyncio.get_running_loop()
        self.task = answered = loop.create_future()
        answered.set_result(None)
        loop.call_soon(self._served_after, answered)

    def _answer(
        self,
        inference: InferenceRequest,
        binary: bool,
        response: InferenceResponse | None,
        error: BaseException | None,
    ) -> None:
        """The kernel's callback: write the response (or the error), then read on."""
        self.task = None
        if response is not None:
            try:
                payload, json_length = encode_response(response, inference.outputs, binary)
            except KernelError as exc:
                error = exc
            else:
                self._reply(200, _JSON if json_length is None else _OCTETS, payload, json_length)
        if isinstance(error, KernelError):
            self._reply(status_of(error), _JSON, orjson.dumps({"error": error.message}))
        elif isinstance(error, asyncio.CancelledError):
            return  # the client went away
        elif error is not None:
            log.error("unhandled error serving an infer request", exc_info=error)
            self._reply(500, _JSON, b'{"error":"internal server error"}')
        self._served()

    def _served_after(self, answered: asyncio.Future[None]) -> None:
        if self.task is answered:
            self.task = None
            self._served()

    def _reply(
        self, status: int, content_type: bytes, body: bytes, json_length: int | None = None
    ) -> None:
        if self._transport is None:
            return
        extra = b"" if json_length is None else b"%s: %d\r\n" % (_HEADER, json_length)
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n" % (
            status,
            _REASONS[status],
            content_type,
            len(body),
            extra,
        )
        self._transport.writelines((head, body))  # one system call, the body not copied

    def _served(self) -> None:
        """A request is answered: read on (or close, when shutting down)."""
        transport = self._transport
        if transport is None:
            return
        if self._closing:
            transport.close()
            return
        assert self._loop is not None
        self._idle_at = self._loop.time()  # (Python 3.11's get_running_loop calls getpid)
        if self._paused:
            self._paused = False
            transport.resume_reading()
        self._serve_buffered()

    # --- aiohttp ------------------------------------------------------------------------

    def _serve_in_aiohttp(self, end: int) -> None:
        """Feed the request that ends at ``end`` to a fresh aiohttp handler on a lane."""
        assert self._transport is not None
        data = bytes(self._buffer[:end])
        del self._buffer[:end]
        lane = self._lane = _Lane(self, self._transport, self._owner.aiohttp_protocol())
        lane.handler.connection_made(lane)  # type: ignore[arg-type]
        lane.handler.data_received(data)

    def lane_done(self, lane: _Lane, keep_alive: bool) -> None:
        """aiohttp has written its response: detach its handler and read on (or close,
        when the response ends the connection: HTTP/1.0, ``Connection: close``)."""
        if lane is not self._lane:
            return
        self._lane = None
        lane.detach()
        if keep_alive:
            self._served()
        elif self._transport is not None:
            self._transport.close()

    def lane_closed(self, lane: _Lane) -> None:
        """aiohttp closed its connection (an error, ``Connection: close``): so do we."""
        if lane is self._lane and self._transport is not None:
            self._transport.close()

    def _hand_over(self) -> None:
        """aiohttp serves this connection from now on, starting with the buffered bytes."""
        transport = self._transport
        assert transport is not None and self.task is None and self._lane is None
        self._forget()
        protocol = self._owner.aiohttp_protocol()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._paused:
            transport.resume_reading()
        data, self._buffer = bytes(self._buffer), bytearray()
        protocol.data_received(data)

    # --- closing ------------------------------------------------------------------------

    def _check_idle(self) -> None:
        if self._transport is None:
            return
        loop = asyncio.get_running_loop()
        idle_for = loop.time() - self._idle_at
        if self.task is None and self._lane is None and idle_for >= KEEPALIVE_TIMEOUT:
            self._transport.close()
            return
        self._timer = loop.call_later(max(KEEPALIVE_TIMEOUT - idle_for, 1.0), self._check_idle)

    def close_when_idle(self) -> None:
        """Shutting down: close now if idle, else once the request in flight is answered."""
        self._closing = True
        if self.task is None and self._lane is None and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self._transport is not None:
            self._transport.close()

    def _forget(self) -> None:
        """This connection is no longer ours (closed, or aiohttp's now)."""
        self._owner.connections.discard(self)
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Lane:
    """The transport an aiohttp handler sees for one request: the real one, until detached.

    aiohttp uses write/writelines, is_closing, close, get_extra_info and the reading
    switches; this connection decides when to read, so those are no-ops here.
    """

    __slots__ = ("_connection", "_detached", "_transport", "handler")

    def __init__(
        self, connection: InferConnection, transport: asyncio.Transport, handler: Any
    ) -> None:
        self._connection = connection
        self._transport = transport
        self._detached = False
        self.handler = handler

    def write(self, data: bytes) -> None:
        if not self._detached:
            self._transport.write(data)

    def writelines(self, data: Any) -> None:
        if not self._detached:
            self._transport.writelines(data)

    def is_closing(self) -> bool:
        return self._detached or self._transport.is_closing()

    def close(self) -> None:
        if not self._detached:
            self._connection.lane_closed(self)

    abort = close

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def request_done(self, keep_alive: bool) -> None:
        """Called by the access logger once aiohttp has written the response."""
        asyncio.get_running_loop().call_soon(self._connection.lane_done, self, keep_alive)

    def detach(self) -> None:
        """Let the handler go: its tidying up (it closes "its" transport) reaches nothing."""
        self._detached = True
        self.handler.connection_lost(None)


def _compresses(accept: bytes | None) -> bool:
    """Whether the client accepts a compressed response (aiohttp compresses it)."""
    return accept is not None and (b"gzip" in accept.lower() or b"deflate" in accept.lower())


def _allowed(restriction: Restriction | None, headers: dict[bytes, Any]) -> bool:
    if restriction is None:
        return True
    value = headers.get(restriction.header.lower().encode("latin-1"))
    return value is not None and value.decode("latin-1") == restriction.value
