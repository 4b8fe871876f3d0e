"""The HTTP handlers: read the path and body, call the ``Server``, encode the answer."""

from __future__ import annotations

import base64
import binascii
import zlib
from contextlib import aclosing

import orjson
from aiohttp import web

from triton_kernel.kernel.errors import Internal, InvalidArgument, Unsupported
from triton_kernel.kernel.model import ModelVersion
from triton_kernel.kernel.request import InferenceRequest
from triton_kernel.kernel.server import Server
from triton_kernel.kernel.trace_record import FrontendTrace

from . import generate as gen
from .codec import decode_raw_request, decode_request, encode_response
from .errors import error_response
from .tracing import send_traced

SERVER = web.AppKey("server", Server)
MAX_INPUT_SIZE = web.AppKey("max_input_size", int)
HEADER_LENGTH = "Inference-Header-Content-Length"


def json_response(document: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(document), content_type="application/json")


def _version(request: web.Request) -> int:
    text = request.match_info.get("version", "")
    if not text:
        return -1
    if not text.isdigit():
        raise InvalidArgument(f"failed to parse model version '{text}': expected an integer")
    return int(text)


def _status(ok: bool) -> web.Response:
    return web.Response(status=200 if ok else 400)


# --- health and metadata ------------------------------------------------------------------


async def health_live(request: web.Request) -> web.Response:
    return _status(request.app[SERVER].live())


async def health_ready(request: web.Request) -> web.Response:
    return _status(request.app[SERVER].ready())


async def server_metadata(request: web.Request) -> web.Response:
    return json_response(request.app[SERVER].metadata())


async def model_ready(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    if request.app[SERVER].model_ready(name, _version(request)):
        return web.Response(status=200)
    return error_response(400, "Model version not ready")


async def model_metadata(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    return json_response(request.app[SERVER].model_metadata(name, _version(request)))


async def model_config(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    return json_response(request.app[SERVER].model_config(name, _version(request)))


async def model_statistics(request: web.Request) -> web.Response:
    """Triton's statistics extension; the kernel's counters, as gRPC's ModelStatistics."""
    name = request.match_info.get("model", "")
    stats = request.app[SERVER].statistics(name, _version(request))
    return json_response({"model_stats": stats})


# --- inference -------------------------------------------------------------------------------


async def infer(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER]
    frontend = FrontendTrace("HTTP", request.headers) if server.tracing else None
    name, version = request.match_info["model"], _version(request)
    model = infer_model(server, name, version)
    body = await _read_body(request)
    payload, json_length = await run_infer(
        server, model, version, body, request.headers.get(HEADER_LENGTH), frontend
    )
    reply = web.Response(body=payload)
    if json_length is None:
        reply.content_type = "application/json"
    else:
        reply.content_type = "application/octet-stream"
        reply.headers[HEADER_LENGTH] = str(json_length)
    reply.enable_compression()  # only when Accept-Encoding asks for gzip or deflate
    if frontend is not None:
        return await send_traced(request, reply, frontend)
    return reply


def infer_model(server: Server, name: str, version: int) -> ModelVersion:
    """The version an infer request reaches; HTTP refuses decoupled models (Triton's text)."""
    model = server.model(name, version)
    if model.config.model_transaction_policy.decoupled:
        raise Unsupported("HTTP end point doesn't support models with decoupled transaction policy")
    return model


async def run_infer(
    server: Server,
    model: ModelVersion,
    version: int,
    body: bytes,
    header_length_text: str | None,
    frontend: FrontendTrace | None = None,
) -> tuple[bytes, int | None]:
    """An infer body in, the response body and its JSON header's length out (None: all JSON).

    ``version`` is the one asked for (-1: none). Shared by the aiohttp route and the
    fast infer connections (``fast.py``).
    """
    inference, binary_default = decode_infer(model, version, body, header_length_text)
    if frontend is not None:
        frontend.received(inference)
    response = await server.infer(inference, model)
    return encode_response(response, inference.outputs, binary_default)


def decode_infer(
    model: ModelVersion, version: int, body: bytes, header_length_text: str | None
) -> tuple[InferenceRequest, bool]:
    """The request an infer body carries, and whether its outputs default to binary."""
    header_length = _header_length(header_length_text, body)
    if header_length == 0:  # the raw form: the body is the only input, outputs are binary
        assert model.signature is not None
        return decode_raw_request(model.name, version, body, model.signature), True
    return decode_request(model.name, version, body, header_length)


# --- generate extension ----------------------------------------------------------------------


async def generate(request: web.Request) -> web.Response:
    """Triton's generate: the model must give exactly one response, even a decoupled one."""
    inference = await _generate_request(request)
    results = [r async for r in gen.documents(request.app[SERVER].infer_stream(inference))]
    failed = bool(results) and results[0][1]  # the first response sets the status, as in Triton
    body = results[0][0] if len(results) == 1 else gen.error_document(gen.NOT_ONE_RESPONSE)
    return web.Response(status=400 if failed else 200, body=body, content_type="application/json")


async def generate_stream(request: web.Request) -> web.StreamResponse:
    """Each response as a server-sent event; the first one sets the status, as in Triton."""
    inference = await _generate_request(request)
    reply = web.StreamResponse()
    reply.content_type, reply.charset = "text/event-stream", "utf-8"
    try:
        async with aclosing(gen.documents(request.app[SERVER].infer_stream(inference))) as events:
            async for document, failed in events:
                if not reply.prepared:
                    reply.set_status(400 if failed else 200)
                    await reply.prepare(request)
                await reply.write(gen.sse_event(document))
        if not reply.prepared:
            await reply.prepare(request)
        await reply.write_eof()
    except ConnectionError:  # the client went away: closing the events cancelled the request
        pass
    return reply


async def _generate_request(request: web.Request) -> InferenceRequest:
    """The kernel request of a generate body, checked in Triton's order."""
    name, version = request.match_info["model"], _version(request)
    model = request.app[SERVER].model(name, version)
    if request.headers.get("Content-Encoding", "identity") != "identity":
        raise InvalidArgument("Unsupported content-encoding, only 'identity' is supported.")
    assert model.signature is not None
    return gen.decode_generate(model.signature, name, version, await request.read())


async def _read_body(request: web.Request) -> bytes:
    """The body, decompressed as Triton does it (``gzip`` or zlib ``deflate``), size-capped."""
    body = await request.read()
    encoding = request.headers.get("Content-Encoding")
    if encoding is None or encoding == "identity":
        return body
    if encoding not in _WBITS:
        raise Unsupported("Unsupported compression type")
    limit = request.app[MAX_INPUT_SIZE]
    decompressor = zlib.decompressobj(_WBITS[encoding])
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidArgument(f"failed to decompress the request body: {exc}") from None
    if len(data) > limit:
        raise InvalidArgument(
            f"request body is too large: it decompresses to more than {limit} bytes "
            "(--http-max-input-size)"
        )
    return data


#: Content-Encoding -> zlib window bits (gzip header / zlib header).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _header_length(text: str | None, body: bytes) -> int | None:
    if text is None:
        return None
    try:
        length = int(text)
    except ValueError:
        length = -1
    if length < 0 or length > len(body):
        raise InvalidArgument(
            f"inference header size should be in range (0, {len(body)}), got: {text}"
        )
    return length


# --- model repository --------------------------------------------------------------------------


async def repository_index(request: web.Request) -> web.Response:
    body = await request.read()
    ready = False
    if body:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidArgument(f"failed to parse the request JSON buffer: {exc}") from None
        ready = document.get("ready", False) if isinstance(document, dict) else False
        if not isinstance(ready, bool):
            raise InvalidArgument("attempt to access JSON non-boolean as boolean")
    return json_response(request.app[SERVER].repository_index(ready))


async def repository_load(request: web.Request) -> web.Response:
    config, files = _load_parameters(await request.read())
    await request.app[SERVER].load_model(request.match_info["model"], config=config, files=files)
    return web.Response(status=200)


def _load_parameters(body: bytes) -> tuple[str | None, dict[str, bytes]]:
    """A load body's ``config`` (JSON text) and ``file:<path>`` (base64) overrides."""
    if not body:
        return None, {}
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"failed to parse the request JSON buffer: {exc}") from None
    parameters = document.get("parameters", {}) if isinstance(document, dict) else {}
    if not isinstance(parameters, dict):
        raise InvalidArgument("Unable to parse 'parameters': attempt to access JSON non-object")
    config = parameters.get("config")
    if config is not None and not isinstance(config, str):
        raise InvalidArgument("Unable to parse 'config': attempt to access JSON non-string")
    files = {}
    for key, value in parameters.items():
        if key in ("config", "unload_dependents"):
            continue
        if not key.startswith("file:"):
            raise InvalidArgument(f"unrecognized load parameter '{key}'.")
        if not isinstance(value, str):
            raise Internal("attempt to access JSON non-string as string")
        try:
            files[key.removeprefix("file:")] = base64.b64decode(value, validate=True)
        except (ValueError, binascii.Error):
            raise InvalidArgument(
                f"Unable to parse '{key}': the value must be base64-encoded file content"
            ) from None
    return config, files


async def repository_unload(request: web.Request) -> web.Response:
    dependents = _unload_dependents(await request.read())
    await request.app[SERVER].unload_model(
        request.match_info["model"], unload_dependents=dependents
    )
    return web.Response(status=200)


def _unload_dependents(body: bytes) -> bool:
    """``{"parameters": {"unload_dependents": true}}``; Triton's HTTP unload ignores a body
    it cannot read (bad JSON, a non-boolean value) and unloads without dependents."""
    try:
        document = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        return False
    parameters = document.get("parameters") if isinstance(document, dict) else None
    return isinstance(parameters, dict) and parameters.get("unload_dependents") is True
