"""gRPC message framing on a grpclib stream, with what grpclib leaves out.

grpclib refuses compressed messages and puts no bound on a message's size. Triton
accepts ``gzip`` and ``deflate`` messages (tritonclient's ``compression_algorithm``)
and a server must refuse an oversized message before buffering it, so every handler
receives through :func:`recv_message`. It reads the protocol stream under
``grpclib.server.Stream`` (``_stream``, stable across grpclib 0.4.x, which
``pyproject.toml`` pins).
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

from grpclib import GRPCError
from grpclib.const import Status
from grpclib.encoding.base import CodecBase
from grpclib.server import Stream

#: ``grpc-encoding`` -> zlib window bits (gzip header, or zlib's for gRPC "deflate").
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}

#: gRPC's default maximum message size is 4 MiB; Triton raises it to INT32_MAX.
DEFAULT_MAX_MESSAGE_SIZE = 2**31 - 1


def request_header(stream: Stream, name: str) -> str | None:
    """A request header, reserved ``grpc-*`` ones included (grpclib's metadata drops them)."""
    return _header(stream._stream, name)


def _header(h2_stream: Any, name: str) -> str | None:
    for key, value in h2_stream.headers or ():
        if key == name:
            return value
    return None


async def recv_bytes(stream: Stream, max_size: int) -> bytes | None:
    """The next message's bytes, decompressed; None when the client finished sending."""
    data = await recv_frame(stream._stream, max_size)
    if data is not None:
        stream._messages_received += 1
    return data


async def recv_frame(h2_stream: Any, max_size: int) -> bytes | None:
    """:func:`recv_bytes` on grpclib's protocol-level stream (``grpclib.protocol.Stream``)."""
    prefix = await h2_stream.recv_data(5)
    if not prefix:
        return None
    if len(prefix) != 5:
        raise GRPCError(Status.INTERNAL, "incomplete gRPC message prefix")
    compressed, length = _PREFIX.unpack(prefix)
    if length > max_size:
        raise GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"Received message larger than max ({length} vs. {max_size})",
        )
    data = await h2_stream.recv_data(length)
    if len(data) != length:
        raise GRPCError(Status.INTERNAL, "the client ended the stream inside a message")
    if compressed:
        data = _decompress(data, _header(h2_stream, "grpc-encoding"), max_size)
    return data


_PREFIX = struct.Struct(">?I")


def _decompress(data: bytes, encoding: str | None, max_size: int) -> bytes:
    if encoding not in _WBITS:
        raise GRPCError(
            Status.UNIMPLEMENTED, f"Compression algorithm '{encoding}' is not supported"
        )
    decompressor = zlib.decompressobj(_WBITS[encoding])
    try:
        data = decompressor.decompress(data, max_size + 1)
    except zlib.error as exc:
        raise GRPCError(Status.INTERNAL, f"failed to decompress the message: {exc}") from None
    if len(data) > max_size:
        raise GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"Received message larger than max (more than {max_size} bytes decompressed)",
        )
    return data


async def recv_message(stream: Stream, message_type: Any, max_size: int) -> Any:
    """The next message parsed as ``message_type`` (betterproto2 or protobuf)."""
    data = await recv_bytes(stream, max_size)
    if data is None:
        return None
    try:
        return message_type.FromString(data)
    except Exception as exc:  # a malformed message: its parser's error is the detail
        raise GRPCError(Status.INTERNAL, f"failed to parse the request message: {exc}") from None


class MessageCodec(CodecBase):
    """grpclib's codec for both message models, and for replies already encoded.

    The infer handlers hand over ``bytes`` they built themselves (outputs appended
    as views, see ``codec.encode_infer_response``); other replies are betterproto2
    or protobuf messages, which both serialize with ``SerializeToString``.
    """

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, (bytes, bytearray)):
            return message  # type: ignore[return-value]
        return message.SerializeToString()  # type: ignore[no-any-return]

    def decode(self, data: bytes, message_type: Any) -> Any:
        return message_type.FromString(data)
