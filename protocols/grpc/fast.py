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
from .service import SERVICE, InferenceService, serve_unary

log = logging.getLogger(__name__)

INFER_PATH = f"{SERVICE}/ModelInfer"
_CONTENT_TYPES = frozenset(("application/grpc", "application/grpc+proto"))
#: What grpclib answers with (its codec's content subtype is "proto").
_INITIAL = [(":status", "200"), ("content-type", "application/grpc+proto")]
_TRAILERS = [("grpc-status", "0")]
_INITIAL_BLOCK = encode_headers(_INITIAL)
_TRAILERS_BLOCK = encode_headers(_TRAILERS)
_PREFIX = struct.Struct(">?I")


class FastModelInfer:
    """Serves the plain unary ModelInfer calls of every connection."""

    def __init__(self, service: InferenceService, restricted: bool) -> None:
        self.service = service
        #: A restricted ``inference`` group needs grpclib's road (its header check).
        self.enabled = not restricted

    def accepts(self, headers: list[tuple[str, str]]) -> bool:
        """Whether a call with these request headers is a plain ModelInfer call."""
        if not self.enabled or self.service.server.tracing:
            return False
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

    async def serve(self, stream: Any, release_stream: Any) -> None:
        """One call on its ``h2conn.H2Stream``; always releases it."""
        timeout = _deadline(stream.headers)
        try:
            try:
                if timeout is None:
                    reply = await self._answer(stream)
                else:
                    async with asyncio.timeout(timeout) as deadline:
                        reply = await self._answer(stream)
            except TimeoutError:
                if timeout is None or not deadline.expired():
                    raise
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
        try:
            message, raw = codec.parse_infer_request(data)
        except KernelError as exc:
            raise grpc_error(exc) from None
        except Exception as exc:
            raise GRPCError(
                Status.INTERNAL, f"failed to parse the request message: {exc}"
            ) from None
        reply: bytes = await serve_unary(lambda m: service.model_infer(m, raw, None), message)
        return reply


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
