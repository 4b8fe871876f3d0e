"""Triton's system and CUDA shared-memory extensions over HTTP: status, register, unregister."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson
from aiohttp import web

from triton_kernel.kernel.errors import InvalidArgument

from .handlers import SERVER, json_response


def _kind(request: web.Request) -> str:
    return "cuda" if request.path.startswith("/v2/cudasharedmemory") else "system"


async def status(request: web.Request) -> web.Response:
    region = request.match_info.get("region", "")
    return json_response(request.app[SERVER].shared_memory_status(_kind(request), region))


async def register(request: web.Request) -> web.Response:
    server, region = request.app[SERVER], request.match_info["region"]
    body = await _body(request)
    if _kind(request) == "cuda":
        handle = _field(body, "raw_handle", dict)
        try:
            raw = base64.b64decode(_field(handle, "b64", str), validate=True)
        except (ValueError, binascii.Error):
            raise InvalidArgument("Unable to parse 'raw_handle': invalid base64") from None
        server.register_cuda_shared_memory(
            region, raw, _field(body, "device_id", int), _field(body, "byte_size", int)
        )
    else:
        server.register_system_shared_memory(
            region,
            _field(body, "key", str),
            _field(body, "offset", int, 0),
            _field(body, "byte_size", int),
        )
    return web.Response(status=200)


async def unregister(request: web.Request) -> web.Response:
    region = request.match_info.get("region", "")
    request.app[SERVER].unregister_shared_memory(_kind(request), region)
    return web.Response(status=200)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        document = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"failed to parse the request JSON buffer: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidArgument("failed to parse the request JSON buffer: expected an object")
    return document


_MISSING = object()


def _field(document: dict[str, Any], key: str, kind: type, default: Any = _MISSING) -> Any:
    value = document.get(key, default)
    if value is _MISSING:
        raise InvalidArgument(f"Shared memory register request has no '{key}' field")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidArgument(f"Unable to parse '{key}': expected {kind.__name__}")
    return value
