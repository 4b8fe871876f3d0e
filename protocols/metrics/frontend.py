"""The metrics frontend: Prometheus text on ``--metrics-address``:``--metrics-port``.

Answers as tritonserver's metrics service does: ``GET /metrics`` (or ``/metrics/``)
gives the exposition; any other path gives an empty 200 of the same type; any other
method gives 405 ``{"error":"Method Not Allowed"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

from aiohttp import web
from prometheus_client.registry import CollectorRegistry

from triton_kernel.kernel.metrics import LatencySettings
from triton_kernel.kernel.options import ServerOptions
from triton_kernel.kernel.server import Server

from .collector import CustomCollector, ModelCollector
from .exposition import CONTENT_TYPE, render
from .system import CpuMonitor, GpuMonitor, SystemCollector

log = logging.getLogger(__name__)

_PATH = re.compile(r"/metrics/?")
_REGISTRY = web.AppKey("registry", CollectorRegistry)


async def handle(request: web.Request) -> web.Response:
    if request.method != "GET":
        body = b'{"error":"Method Not Allowed"}'
        return web.Response(status=405, body=body, headers={"Content-Type": "text/plain"})
    body = render(request.app[_REGISTRY].collect()) if _PATH.fullmatch(request.path) else ""
    return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPE})


class MetricsFrontend:
    """Serves the registry, and samples CPU and GPU figures every metrics interval."""

    name = "metrics"

    def __init__(self, server: Server, options: ServerOptions) -> None:
        self._options = options
        settings = LatencySettings.from_config(options.metrics_config)
        metrics = server.metrics()
        metrics.record_latencies(settings)  # before any frontend takes a request
        self._cpu = CpuMonitor() if options.allow_cpu_metrics else None
        self._gpu = GpuMonitor() if options.allow_gpu_metrics else None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ModelCollector(metrics, settings))
        self.registry.register(SystemCollector(self._cpu, self._gpu))
        self.registry.register(CustomCollector(metrics))
        self._runner: web.AppRunner | None = None
        self._sampler: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with ``--metrics-port=0``)."""
        assert self._runner is not None
        return self._runner.addresses[0][1]

    async def start(self) -> None:
        app = web.Application()
        app[_REGISTRY] = self.registry
        app.router.add_route("*", "/{tail:.*}", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        address, port = self._options.metrics_address, self._options.metrics_port
        await web.TCPSite(self._runner, address, port, reuse_address=True).start()
        self._sample()
        self._sampler = asyncio.create_task(self._sample_forever(), name="metrics-sampler")
        log.info("Started Metrics Service at %s:%d", address, self.port)

    def _sample(self) -> None:
        for monitor in (self._cpu, self._gpu):
            if monitor is not None:
                monitor.poll()

    async def _sample_forever(self) -> None:
        interval = self._options.metrics_interval_ms / 1000
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            await loop.run_in_executor(None, self._sample)  # NVML calls may block

    async def stop(self, grace_seconds: float) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._gpu is not None:
            self._gpu.close()
