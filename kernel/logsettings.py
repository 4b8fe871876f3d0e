"""Triton's log settings (its logging extension) over Python's ``logging``.

The keys are Triton's: ``log_file`` (a path; "" is standard error), ``log_info``,
``log_warning``, ``log_error`` (independent switches, not a threshold),
``log_verbose_level`` (verbose lines print at or below it, whatever ``log_info`` says)
and ``log_format`` ("default" or "ISO8601"). Lines look like tritonserver's own:

    I1124 10:11:12.123456 1234 server.py:88] "message"

Logging is process-wide: the settings drive one handler on the root logger. Verbose
lines are records below ``INFO`` (``verbose_level(n)``) from this project's loggers;
code that builds an expensive verbose message first checks ``VERBOSE.level``, which
costs one attribute read when verbose logging is off.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, final

from .errors import InvalidArgument
from .options import ServerOptions

#: Triton's ``--log-format`` choices.
LOG_FORMATS = ("default", "ISO8601")
#: Loggers whose verbose records print at ``log_verbose_level`` > 0: the kernel and its
#: frontends, the backends loaded by path, and the lines of Python models.
VERBOSE_LOGGERS = ("triton_kernel", "triton_kernel_backends", "triton_python_backend")
#: tritonserver's switch to print messages unescaped (``TRITON_SERVER_ESCAPE_LOG_MESSAGES=0``).
_ESCAPE_VARIABLE = "TRITON_SERVER_ESCAPE_LOG_MESSAGES"
#: The order Triton applies (and reports) the settings in.
KEYS = ("log_file", "log_info", "log_warning", "log_error", "log_verbose_level", "log_format")


@final
class _Verbosity:
    """The current verbose level, read on hot paths before building a verbose message."""

    __slots__ = ("level",)

    def __init__(self) -> None:
        self.level = 0


VERBOSE = _Verbosity()


def verbose_level(level: int = 1) -> int:
    """The ``logging`` level of Triton's ``LOG_VERBOSE(level)`` (1 is ``DEBUG``)."""
    return max(logging.DEBUG + 1 - level, 1)


class TritonFormatter(logging.Formatter):
    """tritonserver's line: level letter, UTC time, pid, ``file:line]``, JSON-escaped message."""

    def __init__(self, log_format: str = "default") -> None:
        super().__init__()
        self.iso8601 = log_format == "ISO8601"
        self.escape = os.environ.get(_ESCAPE_VARIABLE) != "0"

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if self.escape:
            message = json.dumps(message, ensure_ascii=False)
        line = f"{self._preamble(record)} {record.process} {record.filename}:{record.lineno}] "
        line += message
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line

    def _preamble(self, record: logging.LogRecord) -> str:
        letter = _letter(record.levelno)
        seconds = int(record.created)
        t = time.gmtime(seconds)
        if self.iso8601:
            return f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', t)} {letter}"
        micros = int((record.created - seconds) * 1_000_000)
        clock = f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{micros:06d}"
        return f"{letter}{t.tm_mon:02d}{t.tm_mday:02d} {clock}"


def _letter(levelno: int) -> str:
    if levelno >= logging.ERROR:
        return "E"
    return "W" if levelno >= logging.WARNING else "I"


class _Switches(logging.Filter):
    """Triton's three independent switches; verbose records were already gated by level."""

    def __init__(self) -> None:
        super().__init__()
        self.info = self.warning = self.error = True

    def filter(self, record: logging.LogRecord) -> bool:
        level = record.levelno
        if level >= logging.ERROR:
            return self.error
        if level >= logging.WARNING:
            return self.warning
        return self.info if level >= logging.INFO else True


@final
class _Output:
    """The one handler this module installs on the root logger, and the file it writes."""

    handler: logging.Handler | None = None
    #: The file the handler appends to ("": standard error).
    path = ""
    switches = _Switches()

    @classmethod
    def open(cls, path: str) -> str:
        """Write to ``path`` (append) or standard error; raises when ``path`` cannot be opened."""
        if cls.handler is not None and path == cls.path:
            return path
        handler = cls._handler(path)
        handler.addFilter(cls.switches)
        root = logging.getLogger()
        if cls.handler is not None:
            root.removeHandler(cls.handler)
            cls.handler.close()
        root.addHandler(handler)
        cls.handler, cls.path = handler, path
        return path

    @staticmethod
    def _handler(path: str) -> logging.Handler:
        if not path:
            return logging.StreamHandler(sys.stderr)
        try:
            return logging.FileHandler(path, mode="a", encoding="utf-8")
        except OSError as exc:
            raise InvalidArgument(f"Failed to open log file: {exc.strerror or exc}") from None


class LogSettings:
    """The live settings, and applying a change to them (process-wide)."""

    def __init__(
        self,
        *,
        log_file: str = "",
        log_info: bool = True,
        log_warning: bool = True,
        log_error: bool = True,
        log_verbose_level: int = 0,
        log_format: str = "default",
    ) -> None:
        """Apply the settings; a log file that cannot be opened is reported and standard
        error used instead, as tritonserver does with ``--log-file``."""
        self.settings: dict[str, Any] = {
            "log_file": "",
            "log_info": log_info,
            "log_warning": log_warning,
            "log_error": log_error,
            "log_verbose_level": log_verbose_level,
            "log_format": log_format,
        }
        for key, value in self.settings.items():
            _checked(key, value)
        try:
            self._apply({"log_file": log_file})
        except InvalidArgument as exc:
            self._apply({"log_file": ""})
            logging.getLogger("triton_kernel").error("%s", exc.message)

    @classmethod
    def from_options(cls, options: ServerOptions) -> LogSettings:
        """The settings of ``--log-file``, ``--log-format``, ``--log-info`` and the rest."""
        return cls(
            log_file=options.log_file,
            log_info=options.log_info,
            log_warning=options.log_warning,
            log_error=options.log_error,
            log_verbose_level=options.log_verbose,
            log_format=options.log_format,
        )

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply ``changes`` in Triton's order, each before the next is checked (as Triton
        does, one that is wrong leaves the ones before it applied); the settings now."""
        unknown = set(changes) - set(KEYS)
        if unknown:
            raise InvalidArgument(f"Logging setting '{sorted(unknown)[0]}' is not supported")
        for key in KEYS:
            if key in changes:
                self._apply({key: _checked(key, changes[key])})
        return dict(self.settings)

    def _apply(self, changes: dict[str, Any]) -> None:
        if "log_file" in changes:
            changes["log_file"] = _Output.open(changes["log_file"])
        self.settings.update(changes)
        switches = _Output.switches
        switches.info = self.settings["log_info"]
        switches.warning = self.settings["log_warning"]
        switches.error = self.settings["log_error"]
        VERBOSE.level = self.settings["log_verbose_level"]
        if _Output.handler is not None:
            _Output.handler.setFormatter(TritonFormatter(self.settings["log_format"]))
        _set_levels(switches, VERBOSE.level)


def _set_levels(switches: _Switches, verbose: int) -> None:
    """Loggers drop what no switch lets through before a record is even made."""
    if switches.info:
        level = logging.INFO
    elif switches.warning:
        level = logging.WARNING
    else:
        level = logging.ERROR if switches.error else logging.CRITICAL + 1
    logging.getLogger().setLevel(level)
    for name in VERBOSE_LOGGERS:
        logging.getLogger(name).setLevel(verbose_level(verbose) if verbose > 0 else logging.NOTSET)


def _checked(key: str, value: Any) -> Any:
    """``value`` if it suits ``key`` (the frontends check their wire types first)."""
    if key in ("log_file", "log_format"):
        if not isinstance(value, str):
            raise InvalidArgument(f"expect string for '{key}'")
        if key == "log_format" and value not in LOG_FORMATS:
            raise InvalidArgument(f"invalid argument for log_format, got: {value}")
    elif key == "log_verbose_level":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgument(f"expect int32 for '{key}'")
    elif not isinstance(value, bool):
        raise InvalidArgument(f"expect boolean for '{key}'")
    return value
