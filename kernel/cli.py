"""``triton-kernel serve``: tritonserver's flags, where the concept is the same.

A bad flag or value prints one line and exits with status 2; SIGINT and SIGTERM drain
in-flight requests (up to ``--exit-timeout-secs``) and stop every worker process.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
import time
from pathlib import Path
from typing import NoReturn

from .cache import create_cache
from .errors import InvalidArgument, KernelError
from .logsettings import LogSettings
from .options import ServerOptions
from .restricted import check_restriction_options
from .server import Server
from .trace_config import parse_trace_config

log = logging.getLogger("triton_kernel")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"triton-kernel: error: {message}\n")


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value '{text}'")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port '{text}'") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range 0-65535")
    return port


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _setting(text: str) -> tuple[str, str]:
    """A ``<key>=<value>`` pair."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"invalid setting '{text}': expected <key>=<value>")
    return key, value


def _backend_config(text: str) -> tuple[str, str, str]:
    """``<backend>,<key>=<value>`` or a global ``<key>=<value>``."""
    backend, _, setting = text.rpartition(",")
    key, sep, value = setting.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(
            f"invalid --backend-config '{text}': expected <backend>,<key>=<value>"
        )
    return backend, key, value


def _cache_config(text: str) -> tuple[str, str, str]:
    """``<cache>,<key>=<value>``, with tritonserver's texts for a malformed one."""
    name, comma, setting = text.partition(",")
    if not comma or not name:
        raise argparse.ArgumentTypeError(
            "No cache specified. --cache-config option format is "
            f"<cache name>,<setting>=<value>. Got {text}"
        )
    key, sep, value = setting.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(
            f"--cache-config option format is '<cache name>,<setting>=<value>'. Got {text}"
        )
    return name, key, value


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs: object) -> None:
    """A boolean flag taking Triton's ``--flag=<bool>`` form; bare ``--flag`` means true."""
    parser.add_argument(name, type=_bool, nargs="?", const=True, **kwargs)  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="triton-kernel", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser("serve", help="serve a Triton model repository")
    add = serve.add_argument
    add("--model-repository", "--model-store", action="append", default=[], dest="repositories")
    add("--backend-directory", action="append", default=[], type=Path)
    add("--backend-config", action="append", default=[], type=_backend_config)
    add("--model-control-mode", choices=("none", "poll", "explicit"), default="none")
    add("--load-model", action="append", default=[])
    add("--repository-poll-secs", type=_non_negative, default=15)
    add("--model-load-thread-count", type=_positive, default=4)
    add("--model-config-name", default=None)
    add("--cache-config", action="append", default=[], type=_cache_config)
    add("--response-cache-byte-size", type=_non_negative, default=None, help=argparse.SUPPRESS)
    _flag(serve, "--strict-model-config", default=False)
    add("--disable-auto-complete-config", action="store_true")
    _flag(serve, "--strict-readiness", default=True)
    _flag(serve, "--exit-on-error", default=True)
    add("--exit-timeout-secs", type=_non_negative, default=30)
    add("--id", default="triton")
    for protocol, port in (("http", 8000), ("grpc", 8001), ("metrics", 8002)):
        _flag(serve, f"--allow-{protocol}", default=True)
        add(f"--{protocol}-address", default=None if protocol == "metrics" else "0.0.0.0")
        add(f"--{protocol}-port", type=_port, default=port)
    add("--http-max-input-size", type=_non_negative, default=64 * 1024 * 1024)
    add("--grpc-max-message-size", type=_non_negative, default=2**31 - 1)
    add("--grpc-keepalive-time", type=_non_negative, default=7_200_000)
    add("--grpc-keepalive-timeout", type=_non_negative, default=20_000)
    _flag(serve, "--grpc-keepalive-permit-without-calls", default=False)
    add("--grpc-http2-max-pings-without-data", type=_non_negative, default=2)
    add("--metrics-interval-ms", type=_positive, default=2000)
    _flag(serve, "--allow-cpu-metrics", default=True)
    _flag(serve, "--allow-gpu-metrics", default=True)
    add("--metrics-config", action="append", default=[], type=_setting)
    add("--trace-config", action="append", default=[])
    add("--http-restricted-api", action="append", default=[])
    add("--grpc-restricted-protocol", action="append", default=[])
    _flag(serve, "--allow-client-shm", default=False)
    add("--log-verbose", type=_non_negative, default=0)
    for level in ("info", "warning", "error"):
        _flag(serve, f"--log-{level}", default=True)
    add("--log-format", choices=("default", "ISO8601"), default="default")
    add("--log-file", default="")
    return parser


def _cache_settings(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    """``--cache-config`` pairs by cache; the deprecated byte-size flag means ``local``."""
    settings: dict[str, dict[str, str]]
    if args.response_cache_byte_size is not None:
        if args.cache_config:
            raise InvalidArgument(
                "Incompatible flags --response-cache-byte-size and --cache-config both "
                "provided. Please provide one or the other."
            )
        log.warning(
            "'--response-cache-byte-size' is deprecated: use '--cache-config=local,size=%d'",
            args.response_cache_byte_size,
        )
        settings = {"local": {"size": str(args.response_cache_byte_size)}}
    else:
        settings = {}
        for name, key, value in args.cache_config:
            settings.setdefault(name, {})[key] = value
    create_cache(settings)  # a bad setting stops the server before it starts
    return settings


def options_from_args(args: argparse.Namespace) -> ServerOptions:
    backend_config: dict[str, dict[str, str]] = {}
    for backend, key, value in args.backend_config:
        backend_config.setdefault(backend, {})[key] = value
    return ServerOptions(
        model_repositories=args.repositories or [str(example_repository())],
        backend_directories=args.backend_directory,
        backend_config=backend_config,
        model_control_mode=args.model_control_mode,
        load_models=args.load_model,
        repository_poll_secs=args.repository_poll_secs,
        model_load_thread_count=args.model_load_thread_count,
        model_config_name=args.model_config_name,
        cache_config=_cache_settings(args),
        auto_complete_config=not (args.disable_auto_complete_config or args.strict_model_config),
        strict_readiness=args.strict_readiness,
        exit_on_error=args.exit_on_error,
        exit_timeout_secs=args.exit_timeout_secs,
        server_id=args.id,
        allow_http=args.allow_http,
        http_address=args.http_address,
        http_port=args.http_port,
        http_max_input_size=args.http_max_input_size,
        allow_grpc=args.allow_grpc,
        grpc_address=args.grpc_address,
        grpc_port=args.grpc_port,
        grpc_max_message_size=args.grpc_max_message_size,
        grpc_keepalive_time_ms=args.grpc_keepalive_time,
        grpc_keepalive_timeout_ms=args.grpc_keepalive_timeout,
        grpc_keepalive_permit_without_calls=args.grpc_keepalive_permit_without_calls,
        grpc_http2_max_pings_without_data=args.grpc_http2_max_pings_without_data,
        allow_metrics=args.allow_metrics,
        # tritonserver serves metrics on the HTTP address unless told otherwise
        metrics_address=args.metrics_address or args.http_address,
        metrics_port=args.metrics_port,
        metrics_interval_ms=args.metrics_interval_ms,
        allow_cpu_metrics=args.allow_cpu_metrics,
        allow_gpu_metrics=args.allow_gpu_metrics,
        metrics_config=dict(args.metrics_config),
        trace_config=args.trace_config,
        http_restricted_api=args.http_restricted_api,
        grpc_restricted_protocol=args.grpc_restricted_protocol,
        allow_client_shm=args.allow_client_shm,
        log_verbose=args.log_verbose,
        log_info=args.log_info,
        log_warning=args.log_warning,
        log_error=args.log_error,
        log_format=args.log_format,
        log_file=args.log_file,
    )


def example_repository() -> Path:
    """The example model repository shipped in the package (``examples/models``)."""
    import triton_kernel.examples

    return Path(triton_kernel.examples.__file__).resolve().parent / "models"


def _configure_logging(args: argparse.Namespace) -> None:
    """Triton's log switches and format on standard error until the server opens ``--log-file``."""
    LogSettings(
        log_info=args.log_info,
        log_warning=args.log_warning,
        log_error=args.log_error,
        log_verbose_level=args.log_verbose,
        log_format=args.log_format,
    )


async def serve(options: ServerOptions) -> int:
    """Run the server until SIGINT or SIGTERM; the process's exit status."""
    started = time.perf_counter()
    server = Server(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await server.start()
    except (KernelError, OSError) as exc:
        log.error("%s", exc)
        await server.stop()
        return 1
    log.info("server ready in %.2f s", time.perf_counter() - started)
    settle_garbage_collector()
    await stop.wait()
    log.info("stopping: draining in-flight requests (up to %s s)", options.exit_timeout_secs)
    await server.stop()
    return 0


#: Allocations between young-generation collections (Python's default: 700). A request
#: allocates a few hundred short-lived objects; collecting every few requests costs more
#: than the memory a larger generation holds (measured: ~5% of gRPC's CPU per request).
GC_THRESHOLDS = (20_000, 50, 100)


def settle_garbage_collector() -> None:
    """What the server loaded stays: out of the collector's scans (``gc.freeze``), with
    fewer collections of the young (the command-line server only: an application that
    embeds the server keeps its own settings)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _run(coroutine: object) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)  # type: ignore[arg-type]
    return uvloop.run(coroutine)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    try:
        options = options_from_args(args)
        parse_trace_config(options.trace_config)  # refused before anything starts
        check_restriction_options(options.http_restricted_api, options.grpc_restricted_protocol)
    except KernelError as exc:
        print(f"triton-kernel: error: {exc}", file=sys.stderr)
        return 2
    return _run(serve(options))


if __name__ == "__main__":
    sys.exit(main())
