"""The HTTP frontend's part of a traced request: HTTP_SEND_START and HTTP_SEND_END."""

from __future__ import annotations

from aiohttp import web

from triton_kernel.kernel.trace_record import FrontendTrace


async def send_traced(
    request: web.Request, reply: web.StreamResponse, frontend: FrontendTrace
) -> web.StreamResponse:
    """Send ``reply`` now, between the send timestamps, when the kernel traced the request.

    aiohttp finds it sent and only finishes the exchange.
    """
    try:
        if frontend.traced:
            frontend.sending()
            await reply.prepare(request)
            await reply.write_eof()
            frontend.sent()
    finally:
        frontend.finish()
    return reply
