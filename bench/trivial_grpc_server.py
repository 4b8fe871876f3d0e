"""A gRPC server that does nothing: the ceiling a gRPC client can reach on this machine.

The gRPC counterpart of ``../shared/peers/trivial_http_server.py``: a bare asyncio
protocol on uvloop that speaks just enough HTTP/2 for a unary call and answers each
``ModelInfer`` call with the response an identity model would give. The answer to a
request message is computed once (protobuf) and then looked up by the message's
bytes, so a load generator that sends one pre-serialized request (``loadgen.py
--client raw``) measures its own cost, the loopback's and the framing's, nothing else.
No header decoding (the client's HPACK table is never consulted), no flow control
beyond giving every received byte back.

    python bench/trivial_grpc_server.py --port 19201
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import struct

from triton_kernel.protocols.proto.grpc_service import ModelInferRequest, ModelInferResponse

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0x0, 0x1, 0x4, 0x6, 0x7, 0x8
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
FRAME = struct.Struct(">IBI")  # length (24 bits) and type, flags, stream id

#: HPACK: ":status: 200" (static index 8), then content-type (static name 31) as a literal.
INITIAL = b"\x88" + b"\x0f\x10" + bytes([16]) + b"application/grpc"
#: "grpc-status: 0" as a literal with a new name, never indexed.
TRAILERS = b"\x00" + bytes([11]) + b"grpc-status" + b"\x01" + b"0"
#: Window given to the client at the start and again whenever this much has arrived.
WINDOW = 1 << 30


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return FRAME.pack(len(payload) << 8 | kind, flags, stream) + payload


def identity_answer(message: bytes) -> bytes:
    """The gRPC-framed ModelInferResponse an identity model gives to ``message``."""
    request = ModelInferRequest.FromString(message)
    response = ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
    for tensor, contents in zip(request.inputs, request.raw_input_contents, strict=False):
        output = response.outputs.add(datatype=tensor.datatype, shape=tensor.shape)
        output.name = tensor.name.replace("INPUT", "OUTPUT")
        response.raw_output_contents.append(contents)
    body = response.SerializeToString()
    return b"\x00" + struct.pack(">I", len(body)) + body


class Responder(asyncio.Protocol):
    """One client connection."""

    answers: dict[bytes, bytes] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = bytearray()
        self.preface = False
        self.messages: dict[int, bytearray] = {}
        self.received = 0
        settings = frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, WINDOW))  # initial window
        transport.write(settings + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", WINDOW)))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.preface:
            if len(buffer) < len(PREFACE):
                return
            del buffer[: len(PREFACE)]
            self.preface = True
        out: list[bytes] = []
        position = 0
        while len(buffer) - position >= 9:
            length_kind, flags, stream = FRAME.unpack_from(buffer, position)
            length, kind = length_kind >> 8, length_kind & 0xFF
            if len(buffer) - position - 9 < length:
                break
            payload = bytes(buffer[position + 9 : position + 9 + length])
            position += 9 + length
            self.frame(kind, flags, stream & 0x7FFFFFFF, payload, out)
        del buffer[:position]
        if out:
            self.transport.write(b"".join(out))  # type: ignore[attr-defined]

    def frame(self, kind: int, flags: int, stream: int, payload: bytes, out: list[bytes]) -> None:
        if kind == HEADERS:
            self.messages[stream] = bytearray()
        elif kind == DATA:
            self.messages[stream] += payload
            self.received += len(payload)
            if self.received >= WINDOW // 2:
                out.append(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.received)))
                self.received = 0
            if flags & END_STREAM:
                self.answer(stream, bytes(self.messages.pop(stream)), out)
        elif kind == SETTINGS and not flags & ACK:
            out.append(frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            out.append(frame(PING, ACK, 0, payload))
        elif kind == GOAWAY:
            self.transport.close()

    def answer(self, stream: int, framed: bytes, out: list[bytes]) -> None:
        answer = self.answers.get(framed)
        if answer is None:
            answer = self.answers[framed] = identity_answer(framed[5:])
        out += (
            frame(HEADERS, END_HEADERS, stream, INITIAL),
            frame(DATA, 0, stream, answer),
            frame(HEADERS, END_HEADERS | END_STREAM, stream, TRAILERS),
        )


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Responder, host, port, backlog=1024)
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set_result, None)
    async with server:
        await stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=19201)
    args = parser.parse_args()
    import uvloop

    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
