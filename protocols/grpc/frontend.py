"""The gRPC frontend: a grpclib server on ``--grpc-address``:``--grpc-port``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from grpclib.config import Configuration
from grpclib.server import Handler
from grpclib.server import Server as GrpcServer

from triton_kernel.kernel.logsettings import VERBOSE, verbose_level
from triton_kernel.kernel.options import ServerOptions
from triton_kernel.kernel.restricted import grpc_restrictions
from triton_kernel.kernel.server import Server

from .fast import INFER_PATH, FastModelInfer
from .h2conn import H2Connection
from .restricted import RestrictedService
from .service import HealthService, InferenceService
from .wire import MessageCodec

log = logging.getLogger(__name__)


class _HeaderKeepingHandler(Handler):
    """Keeps each call's request headers on its stream: ``grpc-encoding`` is needed to
    decompress (``wire.request_header``), and grpclib's metadata drops ``grpc-*`` keys.
    Plain unary ModelInfer calls take the lean road (``fast.py``)."""

    fast: FastModelInfer | None = None

    def accept(self, stream: Any, headers: Any, release_stream: Any) -> None:
        stream.headers = headers
        if VERBOSE.level:
            log.log(verbose_level(1), "GRPC request: %s", dict(headers).get(":path"))
        super().accept(stream, headers, release_stream)

    def accept_fast(self, stream: Any, release_stream: Any, timeout: float | None) -> None:
        """A plain ModelInfer call (``fast.classify`` said so), served by callbacks."""
        if VERBOSE.level:
            log.log(verbose_level(1), "GRPC request: %s", INFER_PATH)
        assert self.fast is not None
        self.__gc_step__()
        # in grpclib's table of calls, so that a reset or a lost connection cancels it
        self._tasks[stream] = self.fast.start(stream, release_stream, timeout)


class _Server(GrpcServer):
    fast: FastModelInfer | None = None

    def _protocol_factory(self) -> H2Connection:  # type: ignore[override]
        self.__gc_step__()
        handler = _HeaderKeepingHandler(
            self._mapping, self._codec, self._status_details_codec, self.__dispatch__
        )
        handler.fast = self.fast
        self._handlers.add(handler)
        return H2Connection(handler, self._config, self.fast)


class GrpcFrontend:
    """Serves ``inference.GRPCInferenceService`` and ``grpc.health.v1.Health``."""

    name = "grpc"

    def __init__(self, server: Server, options: ServerOptions) -> None:
        self._options = options
        limit = options.grpc_max_message_size
        inference = InferenceService(server, limit)
        services: list[Any] = [inference, HealthService(server, limit)]
        restrictions = grpc_restrictions(options.grpc_restricted_protocol)
        if restrictions:
            services = [RestrictedService(service, restrictions) for service in services]
        self._services = services
        self._fast = FastModelInfer(inference, "inference" in restrictions)
        self._server: _Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with ``--grpc-port=0``)."""
        assert self._server is not None and self._server._server is not None
        return int(self._server._server.sockets[0].getsockname()[1])

    def _configuration(self) -> Configuration:
        options = self._options
        return Configuration(
            _keepalive_time=options.grpc_keepalive_time_ms / 1000 or None,
            _keepalive_timeout=max(options.grpc_keepalive_timeout_ms, 1) / 1000,
            _keepalive_permit_without_calls=options.grpc_keepalive_permit_without_calls,
            _http2_max_pings_without_data=options.grpc_http2_max_pings_without_data,
        )

    async def start(self) -> None:
        self._server = _Server(self._services, codec=MessageCodec(), config=self._configuration())
        self._server.fast = self._fast
        await self._server.start(
            self._options.grpc_address, self._options.grpc_port, reuse_address=True
        )
        log.info("Started GRPCInferenceService at %s:%d", self._options.grpc_address, self.port)

    async def stop(self, grace_seconds: float) -> None:
        """Stop accepting; calls in flight get ``grace_seconds`` to finish, then are cancelled."""
        if self._server is None:
            return
        server, self._server = self._server, None
        listener = server._server
        if listener is not None:
            listener.close()  # accept no new connections; calls in flight go on
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        while not all(h.check_closed() for h in server._handlers) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        server.close()  # cancels what is still running
        await server.wait_closed()
