"""``--trace-config`` as tritonserver 2.51 reads it: its rules, defaults and error texts.

Each value is ``[<mode>,]<setting>=<value>``: without a mode it is a global setting
(``level``, ``rate``, ``count``, ``mode``), with ``triton`` or ``opentelemetry`` it
belongs to that mode (``file``, ``log-frequency``; ``url``, ``resource``, ``bsp_*``).
Numbers are read the way C's ``strtol`` reads them (``std::stoi``), so ``"7abc"`` is 7.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import InvalidArgument

#: Triton's trace levels (bit flags; OFF is none of them).
OFF, TIMESTAMPS, TENSORS = 0, 0x4, 0x8
#: Trace modes.
TRITON, OPENTELEMETRY = "triton", "opentelemetry"

_SPACE = " \t\n\v\f\r"
_DIGITS = "0123456789"
_INT32 = range(-(2**31), 2**31)
#: The batch span processor settings, their environment variables and defaults, in
#: the order tritonserver lists the ones a user did not give.
_BSP_DEFAULTS = (
    ("bsp_max_export_batch_size", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512"),
    ("bsp_schedule_delay", "OTEL_BSP_SCHEDULE_DELAY", "5000"),
    ("bsp_max_queue_size", "OTEL_BSP_MAX_QUEUE_SIZE", "2048"),
)
_FORMAT = "--trace-config option format is '<trace mode>,<setting>=<value>'. Got {}"


@dataclass(slots=True)
class TraceConfig:
    """The trace settings a server starts with."""

    level: int = OFF
    rate: int = 1000
    count: int = -1
    log_frequency: int = 0
    file: str = ""
    mode: str = TRITON
    #: The mode's own settings in the order given (what the trace settings show after
    #: the standard ones); for OpenTelemetry, completed with the batch span defaults.
    options: list[tuple[str, str]] = field(default_factory=list)


class _ParseError(Exception):
    """A value tritonserver refuses; the caller names the option it came from."""


def parse_trace_config(values: Sequence[str]) -> TraceConfig:
    """The settings ``--trace-config`` values ask for (``InvalidArgument`` in Triton's words)."""
    by_mode: dict[str, list[tuple[str, str]]] = {"": [], TRITON: [], OPENTELEMETRY: []}
    for value in values:
        mode, key, text = _split(value)
        by_mode[mode].append((key, text))
    config = TraceConfig()
    for key, text in by_mode[""]:
        _guard(f"--trace-config {key}", _set_global, config, key, text)
    if config.mode == OPENTELEMETRY:
        config.options = _otel_options(by_mode[OPENTELEMETRY])
    else:
        for key, text in by_mode[TRITON]:
            _guard(f"--trace-config triton,{key}", _set_triton, config, key, text)
        config.options = by_mode[TRITON]
    return config


def _split(value: str) -> tuple[str, str, str]:
    comma = value.find(",")
    equals = value.find("=", comma + 1)
    mode = ""
    if comma > 0:
        mode = _guard("--trace-config", parse_mode, value[:comma])
    elif comma == 0:
        raise _bad(
            "--trace-config",
            "No trace mode specified. --trace-config option format is <trace mode>,"
            f"<setting>=<value> or <setting>=<value>. Got {value}",
        )
    key, text = value[comma + 1 : equals], value[equals + 1 :]
    if equals < 0 or not key or not text:
        raise _bad("--trace-config", _FORMAT.format(value))
    return mode, key, text


def _set_global(config: TraceConfig, key: str, text: str) -> None:
    if key == "rate":
        config.rate = _option_int(text) & 0xFFFFFFFF
    elif key == "level":
        config.level |= parse_level(text)
    elif key == "mode":
        config.mode = parse_mode(text)
    elif key == "count":
        config.count = _option_int(text)


def _set_triton(config: TraceConfig, key: str, text: str) -> None:
    if key == "file":
        config.file = text
    elif key == "log-frequency":
        config.log_frequency = _option_int(text) & 0xFFFFFFFF


def _otel_options(given: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The OpenTelemetry settings with their numbers checked, then the missing defaults."""
    options = []
    names = {name for name, _, _ in _BSP_DEFAULTS}
    for key, text in given:
        if key in names:
            text = str(_guard(f"--trace-config opentelemetry,{key}", _option_uint32, text))
        options.append((key, text))
    present = {key for key, _ in options}
    for key, variable, default in _BSP_DEFAULTS:
        if key not in present:
            text = os.environ.get(variable, default)
            options.append((key, str(_guard(variable, _option_uint32, text))))
    return options


def parse_level(text: str) -> int:
    value = text.lower()
    if value in ("false", "off"):
        return OFF
    if value in ("true", "on", "min", "max", "timestamps"):
        return TIMESTAMPS
    if value == "tensors":
        return TENSORS
    raise _ParseError(f"invalid value for trace level option: {value}")


def parse_mode(text: str) -> str:
    value = text.lower()
    if value in (TRITON, OPENTELEMETRY):
        return value
    raise _ParseError(
        f'invalid value for trace mode option: {value}. Available options are "triton" and '
        '"opentelemetry"'
    )


def _guard(option: str, parse, *args):  # type: ignore[no-untyped-def]
    """``parse(*args)``, its refusal worded as tritonserver words a bad option."""
    try:
        return parse(*args)
    except _ParseError as exc:
        raise _bad(option, str(exc)) from None


def _bad(option: str, detail: str) -> InvalidArgument:
    return InvalidArgument(f'Bad option: "{option}".\n{detail}')


# --- numbers read as C reads them -------------------------------------------------------------


def strtol(text: str) -> int | None:
    """The integer a C ``strtol`` reads at the start of ``text`` (None: no digits)."""
    rest = text.lstrip(_SPACE)
    sign = 1
    if rest[:1] in ("+", "-"):
        sign, rest = (-1 if rest[0] == "-" else 1), rest[1:]
    count = len(rest) - len(rest.lstrip(_DIGITS))
    return sign * int(rest[:count]) if count else None


def stoi(text: str) -> int:
    """``std::stoi``: ValueError without digits, OverflowError outside int32."""
    value = strtol(text)
    if value is None:
        raise ValueError(text)
    if value not in _INT32:
        raise OverflowError(text)
    return value


def _option_int(text: str) -> int:
    try:
        return stoi(text)
    except ValueError:
        raise _ParseError(f"Invalid option value. Got {text}") from None
    except OverflowError:
        raise _ParseError(f"Provided option value is out of bound. Got {text}") from None


def _option_uint32(text: str) -> int:
    """``std::stoul`` (negative values wrap), kept to 32 bits as tritonserver keeps it."""
    value = strtol(text)
    if value is None:
        raise _ParseError(f"Invalid option value. Got {text}")
    if abs(value) >= 2**64:
        raise _ParseError(f"Provided option value is out of bound. Got {text}")
    return value % 2**64 & 0xFFFFFFFF
