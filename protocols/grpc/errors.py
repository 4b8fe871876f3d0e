"""Kernel errors to gRPC statuses: Triton's table, applied in one place."""

from __future__ import annotations

from grpclib import GRPCError
from grpclib.const import Status

from triton_kernel.kernel.errors import ErrorCode, KernelError

#: Triton's conversion of ``TRITONSERVER_Error_Code`` to a gRPC status code.
GRPC_STATUS = {
    ErrorCode.UNKNOWN: Status.UNKNOWN,
    ErrorCode.INTERNAL: Status.INTERNAL,
    ErrorCode.NOT_FOUND: Status.NOT_FOUND,
    ErrorCode.INVALID_ARG: Status.INVALID_ARGUMENT,
    ErrorCode.UNAVAILABLE: Status.UNAVAILABLE,
    ErrorCode.UNSUPPORTED: Status.UNIMPLEMENTED,
    ErrorCode.ALREADY_EXISTS: Status.ALREADY_EXISTS,
    ErrorCode.CANCELLED: Status.CANCELLED,
}


def grpc_error(error: KernelError) -> GRPCError:
    """The ``GRPCError`` a handler raises for ``error`` (grpclib sends it as trailers)."""
    return GRPCError(GRPC_STATUS.get(error.code, Status.UNKNOWN), error.message)
