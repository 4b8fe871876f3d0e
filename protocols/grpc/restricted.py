"""Triton's restricted protocols over gRPC: a method of a restricted group needs its header.

Decided once per method when the server starts: the handler of a restricted method is
wrapped with the check, every other handler is left as it is (no cost).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpclib.const
from grpclib import GRPCError
from grpclib.const import Status
from grpclib.server import Stream

from triton_kernel.kernel.restricted import Restriction

_INFERENCE = "/inference.GRPCInferenceService"

#: Triton's group of each method (``src/grpc/grpc_server.cc``, the infer handlers).
GROUPS = {
    f"{_INFERENCE}/ServerLive": "health",
    f"{_INFERENCE}/ServerReady": "health",
    f"{_INFERENCE}/ModelReady": "health",
    "/grpc.health.v1.Health/Check": "health",
    f"{_INFERENCE}/ServerMetadata": "metadata",
    f"{_INFERENCE}/ModelMetadata": "metadata",
    f"{_INFERENCE}/ModelInfer": "inference",
    f"{_INFERENCE}/ModelStreamInfer": "inference",
    f"{_INFERENCE}/ModelConfig": "model-config",
    f"{_INFERENCE}/ModelStatistics": "statistics",
    f"{_INFERENCE}/RepositoryIndex": "model-repository",
    f"{_INFERENCE}/RepositoryModelLoad": "model-repository",
    f"{_INFERENCE}/RepositoryModelUnload": "model-repository",
    f"{_INFERENCE}/SystemSharedMemoryStatus": "shared-memory",
    f"{_INFERENCE}/SystemSharedMemoryRegister": "shared-memory",
    f"{_INFERENCE}/SystemSharedMemoryUnregister": "shared-memory",
    f"{_INFERENCE}/CudaSharedMemoryStatus": "shared-memory",
    f"{_INFERENCE}/CudaSharedMemoryRegister": "shared-memory",
    f"{_INFERENCE}/CudaSharedMemoryUnregister": "shared-memory",
    f"{_INFERENCE}/TraceSetting": "trace",
    f"{_INFERENCE}/LogSettings": "logging",
}

MethodFunc = Callable[[Stream], Awaitable[None]]


class RestrictedService:
    """A grpclib service whose restricted methods check their header before anything else."""

    def __init__(self, service: Any, restrictions: Mapping[str, Restriction]) -> None:
        self.service = service
        self.restrictions = restrictions

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return restrict(self.service.__mapping__(), self.restrictions)


def restrict(
    mapping: Mapping[str, grpclib.const.Handler], restrictions: Mapping[str, Restriction]
) -> dict[str, grpclib.const.Handler]:
    """``mapping`` with the handler of each restricted method wrapped by its check."""
    restricted = dict(mapping)
    for name, handler in mapping.items():
        restriction = restrictions.get(GROUPS.get(name, ""))
        if restriction is not None:
            restricted[name] = handler._replace(func=_checked(handler.func, restriction))
    return restricted


def _checked(func: MethodFunc, restriction: Restriction) -> MethodFunc:
    message = f"This protocol is restricted, expecting header '{restriction.header}'"

    async def checked(stream: Stream) -> None:
        metadata = stream.metadata
        if metadata is None or metadata.get(restriction.header) != restriction.value:
            raise GRPCError(Status.UNAVAILABLE, message)
        await func(stream)

    return checked
