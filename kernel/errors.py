"""The kernel's one error hierarchy; each frontend maps ``code`` to its wire status once.

The codes are Triton's ``TRITONSERVER_Error_Code`` names, so that a Python model's
``pb_utils.TritonError`` and a frontend's status table both speak them unchanged.
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    """Triton's error codes (``TRITONSERVER_ERROR_*``)."""

    UNKNOWN = "UNKNOWN"
    INTERNAL = "INTERNAL"
    NOT_FOUND = "NOT_FOUND"
    INVALID_ARG = "INVALID_ARG"
    UNAVAILABLE = "UNAVAILABLE"
    UNSUPPORTED = "UNSUPPORTED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    CANCELLED = "CANCELLED"


class KernelError(Exception):
    """A failure with a message a client can act on and a Triton error code."""

    code: ErrorCode = ErrorCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    @staticmethod
    def from_code(code: ErrorCode | str, message: str) -> KernelError:
        """The subclass instance for ``code`` (unknown codes become ``Unknown``)."""
        try:
            cls = _BY_CODE[ErrorCode(code)]
        except ValueError:
            cls = Unknown
        return cls(message)


class Unknown(KernelError):
    code = ErrorCode.UNKNOWN


class Internal(KernelError):
    code = ErrorCode.INTERNAL


class NotFound(KernelError):
    code = ErrorCode.NOT_FOUND


class InvalidArgument(KernelError):
    code = ErrorCode.INVALID_ARG


class Unavailable(KernelError):
    code = ErrorCode.UNAVAILABLE


class Unsupported(KernelError):
    code = ErrorCode.UNSUPPORTED


class AlreadyExists(KernelError):
    code = ErrorCode.ALREADY_EXISTS


class Cancelled(KernelError):
    code = ErrorCode.CANCELLED


_BY_CODE: dict[ErrorCode, type[KernelError]] = {
    cls.code: cls
    for cls in (
        Unknown,
        Internal,
        NotFound,
        InvalidArgument,
        Unavailable,
        Unsupported,
        AlreadyExists,
        Cancelled,
    )
}
