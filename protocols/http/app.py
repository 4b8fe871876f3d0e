"""The aiohttp application: Triton's routes over the handlers, and the frontend that serves it."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from triton_kernel.kernel.options import ServerOptions
from triton_kernel.kernel.restricted import http_restrictions
from triton_kernel.kernel.server import Server

from . import handlers, settings, shared_memory
from .errors import error_middleware
from .fast import FastInfer
from .restricted import restriction_middleware

log = logging.getLogger(__name__)

_MODEL = "/v2/models/{model}"
_VERSIONED = "/v2/models/{model}/versions/{version:[0-9]+}"


def create_app(server: Server, max_input_size: int) -> web.Application:
    app = web.Application(
        client_max_size=max_input_size,
        middlewares=[error_middleware],
        handler_args={"auto_decompress": False},  # Triton's own rules: see handlers._read_body
    )
    app[handlers.SERVER] = server
    app[handlers.MAX_INPUT_SIZE] = max_input_size
    routes = [
        web.get("/v2/health/live", handlers.health_live, allow_head=False),
        web.get("/v2/health/ready", handlers.health_ready, allow_head=False),
        web.get("/v2", handlers.server_metadata, allow_head=False),
        web.get("/v2/models/stats", handlers.model_statistics, allow_head=False),
        web.post("/v2/repository/index", handlers.repository_index),
        web.post("/v2/repository/models/{model}/load", handlers.repository_load),
        web.post("/v2/repository/models/{model}/unload", handlers.repository_unload),
        web.get("/v2/trace/setting", settings.trace_setting, allow_head=False),
        web.post("/v2/trace/setting", settings.trace_setting),
        web.get(f"{_MODEL}/trace/setting", settings.trace_setting, allow_head=False),
        web.post(f"{_MODEL}/trace/setting", settings.trace_setting),
        web.get("/v2/logging", settings.logging_setting, allow_head=False),
        web.post("/v2/logging", settings.logging_setting),
    ]
    for kind in ("systemsharedmemory", "cudasharedmemory"):
        for scope in (f"/v2/{kind}", f"/v2/{kind}/region/{{region}}"):
            routes += [
                web.get(f"{scope}/status", shared_memory.status, allow_head=False),
                web.post(f"{scope}/unregister", shared_memory.unregister),
            ]
        for scope in (f"/v2/{kind}", f"/v2/{kind}/region/{{region}}"):
            routes.append(web.post(f"{scope}/register", shared_memory.register))
    for prefix in (_MODEL, _VERSIONED):
        routes += [
            web.get(prefix, handlers.model_metadata, allow_head=False),
            web.get(f"{prefix}/ready", handlers.model_ready, allow_head=False),
            web.get(f"{prefix}/config", handlers.model_config, allow_head=False),
            web.get(f"{prefix}/stats", handlers.model_statistics, allow_head=False),
            web.post(f"{prefix}/infer", handlers.infer),
            web.post(f"{prefix}/generate", handlers.generate),
            web.post(f"{prefix}/generate_stream", handlers.generate_stream),
        ]
    app.add_routes(routes)
    restricted = restriction_middleware(
        app.router, http_restrictions(server.options.http_restricted_api)
    )
    if restricted is not None:
        app.middlewares.append(restricted)
    return app


class HttpFrontend:
    """Serves the application on ``--http-address``:``--http-port``.

    Connections are served by the lean infer path (``fast.py``), which lends every
    request of another kind to the aiohttp application.
    """

    name = "http"

    def __init__(self, server: Server, options: ServerOptions) -> None:
        self._server = server
        self._options = options
        self._app = create_app(server, options.http_max_input_size)
        self._address = options.http_address
        self._port = options.http_port
        self._grace = options.exit_timeout_secs
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._fast: FastInfer | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with ``--http-port=0``)."""
        assert self._listener is not None
        return int(self._listener.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._runner = web.AppRunner(
            self._app,
            # A client that hangs up cancels its handler, and so its kernel request:
            # the queue drops it, a running Python model sees is_cancelled().
            handler_cancellation=True,
            access_log=log,  # verbose only: see settings.VerboseAccessLogger
            access_log_class=settings.VerboseAccessLogger,
            shutdown_timeout=self._grace,
        )
        await self._runner.setup()
        assert self._runner.server is not None
        restrictions = http_restrictions(self._options.http_restricted_api)
        self._fast = FastInfer(
            self._server,
            self._runner.server,
            self._options.http_max_input_size,
            restrictions.get("inference"),
        )
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            self._fast, self._address, self._port, reuse_address=True, backlog=128
        )
        log.info("Started HTTPService at %s:%d", self._address, self.port)

    async def stop(self, grace_seconds: float) -> None:
        """Stop accepting; in-flight requests finish within the grace period."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._fast is not None:
            await self._fast.shutdown(self._grace)
            self._fast = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
