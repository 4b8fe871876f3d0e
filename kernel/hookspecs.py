"""The hook specifications: the one documented contract between the kernel and its plugins.

Three kinds of plugins meet the kernel here. Backends are found by path under the
``--backend-directory`` folders (``<dir>/<name>/plugin.py``); frontends and
repository sources register through the ``triton_kernel`` entry-point group. Hooks
run at lifecycle edges only: requests reach backends through the ``Backend`` and
``ModelInstance`` methods, never through a hook call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .backend import Backend
    from .frontend import Frontend
    from .repository import RepositorySource
    from .server import Server

hookspec = pluggy.HookspecMarker("triton_kernel")
hookimpl = pluggy.HookimplMarker("triton_kernel")

# --- backends ---------------------------------------------------------------


@hookspec(firstresult=True)
def tk_backend_create(name: str, settings: dict[str, str]) -> Backend | None:
    """Return the backend serving ``name``, or None to let another plugin answer.

    Called once per backend name, when the first model that needs it loads;
    ``settings`` holds its ``--backend-config=<name>,<key>=<value>`` pairs plus the
    global ones. Implemented by each folder of ``plugins/backends/``.
    A plain ``def`` on purpose: a coroutine is never None, so an ``async def``
    implementation would always win this first-result call.
    """


# --- frontends --------------------------------------------------------------


@hookspec
def tk_frontend_create(server: Server, options: Any) -> Frontend | None:
    """Return a frontend to start with the server, or None when it is disabled.

    Called once at server start with the public ``Server`` (the frontend's only door
    into the kernel) and the ``ServerOptions``. Implemented by ``protocols/http``
    (and the gRPC and metrics frontends). Every non-None result is started.
    """


# --- repository sources -----------------------------------------------------


@hookspec(firstresult=True)
def tk_repository_source(location: str) -> RepositorySource | None:
    """Return the source that reads the model repository at ``location``, or None.

    Called once per ``--model-repository`` value at start. The local filesystem
    plugin (``repository/local.py``) answers for plain paths; remote stores answer
    for their URL schemes.
    """
