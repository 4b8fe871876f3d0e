"""Triton's trace and logging extensions over HTTP: read and change live settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from triton_kernel.kernel.errors import (
    Internal,
    InvalidArgument,
    KernelError,
    Unavailable,
    Unsupported,
)
from triton_kernel.kernel.logsettings import LOG_FORMATS, VERBOSE, verbose_level
from triton_kernel.kernel.trace import read_trace_update
from triton_kernel.kernel.trace_config import stoi

from .handlers import SERVER, json_response


async def trace_setting(request: web.Request) -> web.Response:
    """GET reads, POST changes: ``trace_level`` is a list, every other setting a string."""
    server = request.app[SERVER]
    model = request.match_info.get("model", "")
    update = None
    if request.method == "POST":
        server.trace_settings(model)  # Triton refuses an unknown model before reading the body
        update = _trace_update(_trace_document(await request.read()))
    settings = server.trace_settings(model, update)
    return json_response(
        {
            key: values if key == "trace_level" else (values[-1] if values else "")
            for key, values in settings.items()
        }
    )


#: The settings a POST may change, in the order Triton reads (and refuses) them.
_TRACE_KEYS = ("trace_level", "trace_rate", "trace_count", "log_frequency")


def _trace_document(raw: bytes) -> dict[str, Any]:
    """The POST body; anything but an object changes nothing, as in Triton."""
    if not raw.strip():
        raise Internal("failed to parse the request JSON buffer: The document is empty. at 0")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Internal(f"failed to parse the request JSON buffer: {exc}") from None
    return document if isinstance(document, dict) else {}


def _trace_update(document: dict[str, Any]) -> dict[str, list[str] | None]:
    """The body as the kernel takes it (a list of strings per setting, None to clear),
    each setting checked as Triton reads it, so the first bad one is the one refused."""
    if "trace_file" in document:
        return {"trace_file": None}  # refused whatever its value
    update: dict[str, list[str] | None] = {}
    for key in _TRACE_KEYS:
        if key in document:
            update[key] = _trace_value(key, document[key])
            read_trace_update({key: update[key]})
    return update


def _trace_value(key: str, value: Any) -> list[str] | None:
    if value is None:  # null clears the setting (a model's then mirrors the global one)
        return None
    if key == "trace_level":
        if not isinstance(value, list):
            raise Internal("attempt to access JSON non-array as array")
        values = value
    else:
        values = [value]
    if not all(isinstance(v, str) for v in values):
        raise Internal("attempt to access JSON non-string as string")
    if key == "trace_count" and _below_minus_one(value):  # worded apart from gRPC's
        raise InvalidArgument(f"Unable to parse 'trace_count'. Expecting value >= -1, got:{value}")
    return values


def _below_minus_one(text: str) -> bool:
    try:
        return stoi(text) < -1
    except (ValueError, OverflowError):
        return False  # the kernel words these


async def logging_setting(request: web.Request) -> web.Response:
    """GET reads, POST changes the live server's logging (``log_file`` excepted, as in Triton)."""
    server = request.app[SERVER]
    if request.method != "POST":
        return json_response(server.log_settings({}))
    document = _log_document(await request.read())
    update: dict[str, Any] = {}
    try:
        for key, read in _LOG_READERS.items():  # Triton's order
            if document.get(key) is not None:
                update[key] = read(document[key])
    except KernelError:
        server.log_settings(update)  # Triton applies each setting before reading the next
        raise
    return json_response(server.log_settings(update))


def _log_document(raw: bytes) -> dict[str, Any]:
    """The POST body; anything but an object changes nothing, as in Triton."""
    if not raw.strip():
        raise Internal("failed to parse the request JSON buffer: The document is empty. at 0")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Internal(f"failed to parse the request JSON buffer: {exc}") from None
    return document if isinstance(document, dict) else {}


def _log_file(value: Any) -> str:
    raise Unsupported("log file location can not be updated through network protocol")


def _log_switch(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Internal("attempt to access JSON non-boolean as boolean")
    return value


def _log_verbose_level(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise Internal("attempt to access JSON non-unsigned-integer as unsigned-integer")
    level = value & 0xFFFFFFFF  # Triton keeps it as an int32, and no less than 0
    return 0 if level >= 2**31 else level


def _log_format(value: Any) -> str:
    if not isinstance(value, str):
        raise Internal("attempt to access JSON non-string as string")
    if value not in LOG_FORMATS:
        raise Unavailable(f"invalid argument for --log_format, got: {value}")
    return value


#: How each setting is read from the body, in the order Triton applies them.
_LOG_READERS: dict[str, Callable[[Any], Any]] = {
    "log_file": _log_file,
    "log_info": _log_switch,
    "log_warning": _log_switch,
    "log_error": _log_switch,
    "log_verbose_level": _log_verbose_level,
    "log_format": _log_format,
}


class VerboseAccessLogger(AbstractAccessLogger):
    """Triton's verbose ``HTTP request:`` line; with verbose off, one attribute read.

    Enabled on every connection, so that a ``log_verbose_level`` set through
    ``/v2/logging`` reaches the keep-alive connections already open. Called once the
    response is written, it also tells a fast connection (``fast.py``) that aiohttp is
    done with the request it lent it.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        done = getattr(request.transport, "request_done", None)
        if done is not None:
            done(bool(response.keep_alive))
        if VERBOSE.level:
            self.logger.log(
                verbose_level(),
                "HTTP request: %s %s -> %d",
                request.method,
                request.path_qs,
                response.status,
            )


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
