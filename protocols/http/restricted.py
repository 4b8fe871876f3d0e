"""Triton's restricted APIs over HTTP: a route of a restricted group needs its header.

The group of each route is decided once, when the application is built, from the
route's pattern; the middleware then costs one dictionary lookup per request, and it is
installed only when some group is restricted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Middleware

from triton_kernel.kernel.restricted import Restriction

from .errors import Handler, error_response

#: Triton's group of each route (its handlers' ``RETURN_AND_RESPOND_IF_RESTRICTED``),
#: by the route's pattern; the first match wins.
_GROUPS = (
    (re.compile(r"^/v2/health/|/ready$"), "health"),
    (re.compile(r"/(infer|generate|generate_stream)$"), "inference"),
    (re.compile(r"/config$"), "model-config"),
    (re.compile(r"/stats$"), "statistics"),
    (re.compile(r"/trace/setting$"), "trace"),
    (re.compile(r"^/v2/logging$"), "logging"),
    (re.compile(r"^/v2/repository/"), "model-repository"),
    (re.compile(r"^/v2/(system|cuda)sharedmemory/"), "shared-memory"),
    (re.compile(r"^/v2$|^/v2/models/\{model\}(/versions/\{version\})?$"), "metadata"),
)


def group_of(pattern: str) -> str | None:
    """The restricted-API group of a route pattern such as ``/v2/models/{model}/infer``."""
    for regex, group in _GROUPS:
        if regex.search(pattern):
            return group
    return None


def restriction_middleware(
    router: web.UrlDispatcher, restrictions: Mapping[str, Restriction]
) -> Middleware | None:
    """The middleware enforcing ``restrictions`` on the router's routes (None: nothing to do)."""
    by_resource = {
        resource: restrictions[group]
        for resource in router.resources()
        if (group := group_of(resource.canonical)) in restrictions
    }
    if not by_resource:
        return None

    @web.middleware
    async def restricted(request: web.Request, handler: Handler) -> web.StreamResponse:
        restriction = by_resource.get(request.match_info.route.resource)  # type: ignore[arg-type]
        if restriction is None and isinstance(
            request.match_info.http_exception, web.HTTPMethodNotAllowed
        ):
            restriction = await _restriction_of_path(request, by_resource)
        if restriction is not None and request.headers.get(restriction.header) != restriction.value:
            return forbidden(restriction)
        return await handler(request)

    return restricted


async def _restriction_of_path(
    request: web.Request, by_resource: Mapping[web.AbstractResource, Restriction]
) -> Restriction | None:
    """A wrong method on a restricted path: Triton checks the header before the method."""
    for resource, restriction in by_resource.items():
        _, allowed_methods = await resource.resolve(request)
        if allowed_methods:
            return restriction
    return None


def forbidden(restriction: Restriction) -> web.Response:
    """Triton's answer to a call without the header its group needs."""
    return error_response(403, f"This API is restricted, expecting header '{restriction.header}'")
