"""triton-kernel's microkernel: requests, models, scheduling and the in-process ``Server``."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("triton-kernel")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

from .errors import (
    AlreadyExists,
    Cancelled,
    ErrorCode,
    Internal,
    InvalidArgument,
    KernelError,
    NotFound,
    Unavailable,
    Unknown,
    Unsupported,
)
from .options import ServerOptions
from .request import InferenceRequest, InferenceResponse, RequestedOutput
from .server import Server
from .tensor import Tensor

__all__ = [
    "AlreadyExists",
    "Cancelled",
    "ErrorCode",
    "InferenceRequest",
    "InferenceResponse",
    "Internal",
    "InvalidArgument",
    "KernelError",
    "NotFound",
    "RequestedOutput",
    "Server",
    "ServerOptions",
    "Tensor",
    "Unavailable",
    "Unknown",
    "Unsupported",
    "__version__",
]
