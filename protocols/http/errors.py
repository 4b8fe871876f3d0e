"""Kernel errors to HTTP statuses: Triton's table, applied in one middleware."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from triton_kernel.kernel.errors import ErrorCode, KernelError

log = logging.getLogger(__name__)

#: Triton's HttpCodeFromError; every code not listed is 400.
HTTP_STATUS = {
    ErrorCode.INTERNAL: 500,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.UNSUPPORTED: 501,
}


def error_response(status: int, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": message}),
        content_type="application/json",
    )


def status_of(error: KernelError) -> int:
    return HTTP_STATUS.get(error.code, 400)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place a failure becomes a status code and an ``{"error": ...}`` body."""
    try:
        return await handler(request)
    except KernelError as exc:
        return error_response(status_of(exc), exc.message)
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(400, f"request body is too large: {exc.text}")
    except web.HTTPMethodNotAllowed:
        return (
            web.Response(status=405)
            if request.method == "HEAD"
            else error_response(405, "Method Not Allowed")
        )
    except web.HTTPException as exc:
        if exc.status == 405 and request.method == "HEAD":
            return web.Response(status=405)
        if exc.status == 405:
            return error_response(405, "Method Not Allowed")
        if exc.status == 404:
            return error_response(404, "Not Found")
        return error_response(exc.status, exc.reason)
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, request.path)
        return error_response(500, "internal server error")
