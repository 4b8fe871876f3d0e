"""Triton's trace extension: the trace settings, and which requests they trace.

Settings follow tritonserver 2.51's trace manager: a global setting (``--trace-config``)
and per-model settings that mirror every global field they do not set themselves. An
update replaces a setting, so its sampling counters start again, and writes the traces
the old one still held. Sampling gives a request a ``trace_record.RequestTrace``;
what it records goes to Triton's JSON trace file (``<file>``, or ``<file>.<n>`` under a
log frequency) or, in OpenTelemetry mode, to spans (``trace_otel``, imported only then).

With tracing off the request path pays one attribute check in ``Server.infer``
(``TraceManager.active``) and a ``request.trace is None`` test at each hook.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import InvalidArgument, Unavailable, Unsupported
from .request import InferenceRequest
from .trace_config import (
    OFF,
    OPENTELEMETRY,
    TENSORS,
    TIMESTAMPS,
    TRITON,
    parse_trace_config,
    stoi,
)
from .trace_record import PARENT, JsonTraceGroup, RequestTrace, TraceGroup

log = logging.getLogger(__name__)

#: The fields a model's setting may set or leave to the global one (Triton's order).
FIELDS = ("level", "rate", "count", "log_frequency")


def level_names(level: int) -> list[str]:
    if level == OFF:
        return ["OFF"]
    names = ["TIMESTAMPS"] if level & TIMESTAMPS else []
    return names + (["TENSORS"] if level & TENSORS else [])


def read_trace_update(update: Mapping[str, Sequence[str] | None]) -> dict[str, int | None]:
    """The fields a TraceSetting request changes (None: cleared), checked in Triton's
    order and words. ``trace_file`` cannot change; unknown settings are ignored."""
    if "trace_file" in update:
        raise Unsupported("trace file location can not be updated through network protocol")
    new: dict[str, int | None] = {}
    if "trace_level" in update:
        levels = update["trace_level"]
        if not levels:
            new["level"] = None
        else:
            level = _read_levels(levels)
            if level is not None:
                new["level"] = level
    for key, field in (("trace_rate", "rate"), ("trace_count", "count")):
        if key in update:
            new[field] = _read_number(key, update[key])
    if "log_frequency" in update:
        new["log_frequency"] = _read_number("log_frequency", update["log_frequency"])
    return new


def _read_levels(levels: Sequence[str]) -> int | None:
    """The level the names ask for; None when no name is known (nothing changes)."""
    level = None
    for name in levels:
        if name == "OFF":
            if len(levels) != 1:
                raise InvalidArgument("Expect only one trace level 'OFF' is specified")
            level = OFF
        elif name in ("TIMESTAMPS", "TENSORS"):
            level = (level or OFF) | (TIMESTAMPS if name == "TIMESTAMPS" else TENSORS)
    return level


def _read_number(key: str, values: Sequence[str] | None) -> int | None:
    if not values:
        return None
    if len(values) != 1:
        raise InvalidArgument(f"expect only 1 value for '{key}'")
    text = values[0]
    low, high = (-1, 2**31 - 1) if key == "trace_count" else (0, 2**32 - 1)
    try:
        value = stoi(text)
    except ValueError:
        raise InvalidArgument(f"Unable to parse '{key}', got: {text}") from None
    except OverflowError:
        raise InvalidArgument(
            f"Unable to parse '{key}', value is out of range [ {low}, {high} ], got: {text}"
        ) from None
    if key == "trace_count":
        if value < -1:
            raise InvalidArgument(
                f"Unable to parse 'trace_count'. Expecting value >= -1, got: {text}"
            )
        return value
    return value & 0xFFFFFFFF  # a negative rate wraps, as in Triton's uint32


class TraceFile:
    """Where a setting writes: ``<name>`` (appended to, always valid JSON) or ``<name>.<n>``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._index = 0
        self._started = False

    def save(self, content: str, indexed: bool) -> None:
        try:
            if indexed:
                path = Path(f"{self.name}.{self._index}")
                self._index += 1
                _write_whole(path, f"[{content}]")
            elif not self._started:
                _write_whole(Path(self.name), f"[{content}]")
                self._started = True
            else:
                with open(self.name, "r+b") as file:  # replace the closing "]"
                    file.seek(-1, 2)
                    file.write(f",{content}]".encode())
        except OSError as exc:
            log.error("failed creating trace file: %s", exc)


def _write_whole(path: Path, text: str) -> None:
    """Write beside, then rename: a reader never sees a truncated, half-written file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


class TraceSetting:
    """One setting (global or a model's) with its sampling counters and unwritten traces."""

    __slots__ = (
        "collected",
        "count",
        "file",
        "in_stream",
        "invalid_reason",
        "level",
        "log_frequency",
        "mode",
        "options",
        "rate",
        "retired",
        "sampled",
        "specified",
        "stream",
    )

    def __init__(
        self,
        values: Mapping[str, int],
        file: TraceFile,
        mode: str,
        options: list[tuple[str, str]],
        specified: frozenset[str] = frozenset(),
    ) -> None:
        self.level, self.rate = values["level"], values["rate"]
        self.count, self.log_frequency = values["count"], values["log_frequency"]
        self.file, self.mode, self.options = file, mode, options
        #: The fields set for this setting itself rather than mirrored from the global one.
        self.specified = specified
        self.sampled = self.collected = self.in_stream = 0
        self.stream: list[str] = []
        self.retired = False
        self.invalid_reason = ""
        if self.level == OFF:
            self.invalid_reason = "tracing is disabled"
        elif self.rate == 0:
            self.invalid_reason = "sample rate must be non-zero"
        elif mode == TRITON and not file.name:
            self.invalid_reason = "trace file name is not given"

    def valid(self) -> bool:
        return not self.invalid_reason and self.count != 0

    def sample(self, force: bool) -> bool:
        """Whether this request is traced: every ``rate``-th one, while ``count`` lasts.

        ``force``: OpenTelemetry context came with the request (always traced). Rate 0
        counts nothing: only forced requests are traced (Triton's workaround).
        """
        hit = False
        if self.rate != 0:
            if not self.valid() and not force:
                return False
            self.sampled += 1
            hit = self.sampled % self.rate == 0
            if hit and self.count > 0:
                self.count -= 1
            elif hit and self.count == 0:
                hit = False
        return hit or force

    def write(self, traces: Iterable[str]) -> None:
        """Keep one finished trace group; write to ``<file>.<n>`` when Triton would."""
        self.collected += 1
        content = ",".join(trace for trace in traces if trace)
        if content:  # a group that recorded nothing leaves no empty entry behind
            if self.in_stream:
                self.stream.append(",")
            self.in_stream += 1
            self.stream.append(content)
        if not self.in_stream:
            return
        if (self.count == 0 and self.collected == self.sampled) or (
            self.log_frequency and self.in_stream >= self.log_frequency
        ):
            self._save(indexed=True)
        elif self.retired:
            self.flush()

    def flush(self) -> None:
        """Write what is kept: to ``<file>.<n>`` under a log frequency, else to ``<file>``."""
        if self.mode == TRITON and self.in_stream:
            self._save(indexed=self.log_frequency != 0)

    def _save(self, indexed: bool) -> None:
        content = "".join(self.stream)
        self.stream, self.in_stream = [], 0
        self.file.save(content, indexed)


class TraceManager:
    """The server's trace settings, and the sampling of each request against them."""

    def __init__(self, trace_config: Sequence[str]) -> None:
        config = parse_trace_config(trace_config)
        values = {
            "level": config.level,
            "rate": config.rate,
            "count": config.count,
            "log_frequency": config.log_frequency,
        }
        self._files: dict[str, TraceFile] = {}
        file = self._file(config.file)
        folder = Path(config.file).parent
        if config.mode == TRITON and config.file and not folder.is_dir():
            # tritonserver starts and loses the traces silently; say it once
            log.error("trace file folder '%s' does not exist: no trace will be written", folder)
        #: What a cleared global field returns to (never samples).
        self._default = TraceSetting(values, file, config.mode, config.options)
        self._global = TraceSetting(values, file, config.mode, config.options)
        self._models: dict[str, TraceSetting] = {}
        #: Models whose setting mirrors some global fields.
        self._fallback: set[str] = set()
        self._ids = itertools.count(1)
        self._exporter: Any = None
        if config.mode == OPENTELEMETRY:
            self._exporter = _otel_exporter(config.options)
        #: Whether any request may be traced: the one check the request path makes.
        self.active = config.level != OFF

    def _file(self, name: str) -> TraceFile:
        file = self._files.get(name)
        if file is None:
            file = self._files[name] = TraceFile(name)
        return file

    # --- settings -------------------------------------------------------------------------

    def settings(self, model: str = "") -> dict[str, list[str]]:
        """Triton's trace settings of ``model`` (its own, else the global ones)."""
        setting = self._models.get(model, self._global)
        shown = {
            "trace_level": level_names(setting.level),
            "trace_rate": [str(setting.rate)],
            "trace_count": [str(setting.count)],
        }
        if setting.mode == TRITON:
            shown["log_frequency"] = [str(setting.log_frequency)]
            shown["trace_file"] = [setting.file.name]
        shown["trace_mode"] = [setting.mode]
        for key, value in setting.options:
            if key not in ("file", "log-frequency"):
                shown.setdefault(key, []).append(value)
        return shown

    def update(self, model: str, new: Mapping[str, int | None]) -> None:
        """Set (a value) or clear (None) fields of ``model``'s setting, or the global one.

        A global update also renews the model settings that mirror global fields.
        """
        self._update(model, new)
        if not model:
            for name in sorted(self._fallback):
                self._update(name, {})
        settings = (self._global, *self._models.values())
        self.active = any(setting.level != OFF for setting in settings)

    def _update(self, model: str, new: Mapping[str, int | None]) -> None:
        current = self._models.get(model) if model else self._global
        fallback = self._global if model else self._default
        values = {key: getattr(fallback, key) for key in FIELDS}
        specified = set()
        for key in FIELDS:
            if key in new:
                if new[key] is None:
                    continue
                values[key] = new[key]  # type: ignore[assignment]
            elif current is not None and key in current.specified:
                values[key] = getattr(current, key)
            else:
                continue
            specified.add(key)
        if model and not specified:  # nothing of its own: the model uses the global setting
            self._fallback.discard(model)
            self._retire(self._models.pop(model, None))
            return
        setting = TraceSetting(
            values, fallback.file, fallback.mode, fallback.options, frozenset(specified)
        )
        if not setting.valid() and setting.level != OFF:
            raise InvalidArgument(
                f"Attempting to set invalid trace setting :{setting.invalid_reason}"
            )
        if model:
            self._fallback.add(model)
            self._models[model] = setting
        else:
            self._global = setting
        self._retire(current)

    @staticmethod
    def _retire(setting: TraceSetting | None) -> None:
        if setting is not None:
            setting.retired = True
            setting.flush()

    def close(self) -> None:
        """Write every kept trace and flush the span exporter (at server stop)."""
        for setting in (self._global, *self._models.values()):
            self._retire(setting)
        if self._exporter is not None:
            self._exporter.shutdown()

    # --- sampling -------------------------------------------------------------------------

    def sample(self, request: InferenceRequest, model: Any) -> None:
        """Give ``request`` a trace if its setting samples it (or it is an ensemble step)."""
        parent = PARENT.get()
        if parent is not None:
            request.trace = parent.spawn(next(self._ids), request, model)
            return
        setting = self._models.get(request.model_name, self._global)
        frontend = request.frontend
        context = None
        if setting.mode == OPENTELEMETRY and setting.level != OFF and frontend is not None:
            context = self._exporter.extract(frontend.headers)
        if not setting.sample(context is not None):
            return
        if setting.mode == OPENTELEMETRY:
            group: TraceGroup = self._exporter.group(setting.level, context)
        else:
            group = JsonTraceGroup(setting)
        trace = RequestTrace(next(self._ids), None, group, request, model)
        request.trace = trace
        if frontend is not None:
            frontend.attach(trace)
        trace.start()


def _otel_exporter(options: list[tuple[str, str]]) -> Any:
    try:
        from .trace_otel import OtelExporter
    except ImportError as exc:
        raise Unavailable(
            "trace mode 'opentelemetry' needs opentelemetry-sdk and its OTLP HTTP exporter "
            f"(pip install 'triton-kernel[opentelemetry]'): {exc}"
        ) from None
    return OtelExporter(options)
