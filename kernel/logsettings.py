"""Triton's log settings (its logging extension) over Python's ``logging``.

The keys are Triton's: ``log_info``, ``log_warning``, ``log_error`` (bool),
``log_verbose_level`` (uint), ``log_format`` ("default" or "ISO8601") and
``log_file`` (a path; "" is standard error).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from .errors import InvalidArgument

_LOGGER = "triton_kernel"
LOG_FORMAT = "%(levelname).1s%(asctime)s %(name)s] %(message)s"
#: Triton's ``--log-format`` choices.
_FORMATS = {
    "default": LOG_FORMAT,
    "ISO8601": "%(asctime)s %(levelname).1s %(name)s] %(message)s",
}


def log_level(*, info: bool, warning: bool, error: bool, verbose: int) -> int:
    """The ``logging`` level that Triton's four log switches amount to."""
    if verbose > 0:
        return logging.DEBUG
    if info:
        return logging.INFO
    if warning:
        return logging.WARNING
    return logging.ERROR if error else logging.CRITICAL


class LogSettings:
    """The current settings, and applying a change to them."""

    def __init__(self, verbose: int = 0) -> None:
        self.settings: dict[str, Any] = {
            "log_file": "",
            "log_info": True,
            "log_warning": True,
            "log_error": True,
            "log_verbose_level": verbose,
            "log_format": "default",
        }

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate every change first, then apply them all; the settings as they now are."""
        for key, value in changes.items():
            self._check(key, value)
        if changes:
            settings = {**self.settings, **changes}
            self._apply(settings, self._handler(settings["log_file"]))
            self.settings = settings
        return dict(self.settings)

    def _check(self, key: str, value: Any) -> None:
        if key not in self.settings:
            raise InvalidArgument(f"Logging setting '{key}' is not supported")
        expected = type(self.settings[key])
        if value is None or type(value) is not expected:
            raise InvalidArgument(
                f"expect '{key}' to be of type {expected.__name__}, got {type(value).__name__}"
            )
        if key == "log_format" and value not in _FORMATS:
            raise InvalidArgument(
                f"invalid argument for log_format, got: {value}, expected one of "
                "'default', 'ISO8601'"
            )
        if key == "log_verbose_level" and value < 0:
            raise InvalidArgument("log_verbose_level must be >= 0")

    @staticmethod
    def _apply(settings: dict[str, Any], handler: logging.Handler) -> None:
        level = log_level(
            info=settings["log_info"],
            warning=settings["log_warning"],
            error=settings["log_error"],
            verbose=settings["log_verbose_level"],
        )
        root = logging.getLogger()
        root.setLevel(level)
        logging.getLogger(_LOGGER).setLevel(level)
        handler.setFormatter(logging.Formatter(_FORMATS[settings["log_format"]]))
        for old in list(root.handlers):
            root.removeHandler(old)
            if old is not handler:
                old.close()
        root.addHandler(handler)

    @staticmethod
    def _handler(path: str) -> logging.Handler:
        if not path:
            return logging.StreamHandler(sys.stderr)
        try:
            return logging.FileHandler(path)
        except OSError as exc:
            raise InvalidArgument(f"unable to open log file '{path}': {exc}") from None
