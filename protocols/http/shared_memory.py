"""Triton's system and CUDA shared-memory extensions over HTTP: status, register, unregister.

Register bodies are checked in tritonserver's order and with its texts (a missing field
is 400, a field of the wrong JSON type 500), after the ``--allow-client-shm`` check.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson
from aiohttp import web

from triton_kernel.kernel.errors import Internal, InvalidArgument
from triton_kernel.kernel.shared_memory import CUDA_IPC_HANDLE_SIZE

from .handlers import SERVER, json_response

_NOT_STRING = "attempt to access JSON non-string as string"
_NOT_UNSIGNED = "attempt to access JSON non-unsigned-integer as unsigned-integer"


def _kind(request: web.Request) -> str:
    return "cuda" if request.path.startswith("/v2/cudasharedmemory") else "system"


async def status(request: web.Request) -> web.Response:
    region = request.match_info.get("region", "")
    return json_response(request.app[SERVER].shared_memory_status(_kind(request), region))


async def register(request: web.Request) -> web.Response:
    server, region = request.app[SERVER], request.match_info.get("region", "")
    if not region:
        kind = "cuda" if _kind(request) == "cuda" else "system"
        raise InvalidArgument(f"'region name' is necessary to register {kind} shared memory region")
    server.check_client_shared_memory()
    body = await _body(request)
    if _kind(request) == "cuda":
        handle, device_id, size = _cuda_register_fields(body)
        server.register_cuda_shared_memory(region, handle, device_id, size)
    else:
        key, offset, size = _system_register_fields(body)
        server.register_system_shared_memory(region, key, offset, size)
    return web.Response(status=200)


async def unregister(request: web.Request) -> web.Response:
    region = request.match_info.get("region", "")
    request.app[SERVER].unregister_shared_memory(_kind(request), region)
    return web.Response(status=200)


async def _body(request: web.Request) -> dict[str, Any]:
    """The register body; any other JSON value reads as an object without members."""
    try:
        document = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise Internal(f"failed to parse the request JSON buffer: {exc}") from None
    return document if isinstance(document, dict) else {}


def _system_register_fields(body: dict[str, Any]) -> tuple[str, int, int]:
    if "key" not in body:
        raise InvalidArgument("Shared memory register request has no 'key' field")
    key = body["key"]
    if not isinstance(key, str):
        raise Internal(_NOT_STRING)
    offset = _unsigned(body.get("offset", 0))
    if "byte_size" not in body:
        raise InvalidArgument("Shared memory register request has no 'byte_size' field")
    return key, offset, _unsigned(body["byte_size"])


def _cuda_register_fields(body: dict[str, Any]) -> tuple[bytes, int, int]:
    if "raw_handle" not in body:
        raise InvalidArgument("Shared memory register request has no 'raw_handle' field")
    raw_handle = body["raw_handle"]
    encoded = _member(raw_handle if isinstance(raw_handle, dict) else {}, "b64")
    if not isinstance(encoded, str):
        raise Internal(_NOT_STRING)
    size = _unsigned(_member(body, "byte_size"))
    device_id = _unsigned(_member(body, "device_id"))
    try:
        handle = base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error):
        handle = b""
    if len(handle) != CUDA_IPC_HANDLE_SIZE:
        raise InvalidArgument("'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t")
    return handle, device_id, size


def _member(document: dict[str, Any], key: str) -> Any:
    if key not in document:
        raise Internal(f"attempt to access non-existing object member '{key}'")
    return document[key]


def _unsigned(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**64:
        raise Internal(_NOT_UNSIGNED)
    return value
