"""Registers the HTTP frontend with the kernel."""

from __future__ import annotations

from triton_kernel.kernel.hookspecs import hookimpl
from triton_kernel.kernel.options import ServerOptions
from triton_kernel.kernel.server import Server

from .app import HttpFrontend


@hookimpl
def tk_frontend_create(server: Server, options: ServerOptions) -> HttpFrontend | None:
    return HttpFrontend(server, options) if options.allow_http else None
