"""Triton's trace and logging extensions over HTTP: read and change live settings."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from triton_kernel.kernel.errors import InvalidArgument

from .handlers import SERVER, json_response


async def trace_setting(request: web.Request) -> web.Response:
    """GET reads, POST changes: ``trace_level`` is a list, every other setting a string."""
    update = await _body(request) if request.method == "POST" else {}
    changes = {key: _trace_values(key, value) for key, value in update.items()}
    model = request.match_info.get("model", "")
    settings = request.app[SERVER].trace_settings(model, changes)
    return json_response(
        {
            key: values if key == "trace_level" else (values[0] if values else "")
            for key, values in settings.items()
        }
    )


def _trace_values(key: str, value: Any) -> list[str]:
    if value is None:  # null clears a model's own setting
        return []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, str):
        return [value]
    raise InvalidArgument(f"expect the value of '{key}' to be a string or an array of strings")


async def logging_setting(request: web.Request) -> web.Response:
    update = await _body(request) if request.method == "POST" else {}
    return json_response(request.app[SERVER].log_settings(update))


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"failed to parse the request JSON buffer: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidArgument("failed to parse the request JSON buffer: expected an object")
    return document
