"""Registers the metrics frontend with the kernel."""

from __future__ import annotations

from triton_kernel.kernel.hookspecs import hookimpl
from triton_kernel.kernel.options import ServerOptions
from triton_kernel.kernel.server import Server

from .frontend import MetricsFrontend


@hookimpl
def tk_frontend_create(server: Server, options: ServerOptions) -> MetricsFrontend | None:
    return MetricsFrontend(server, options) if options.allow_metrics else None
