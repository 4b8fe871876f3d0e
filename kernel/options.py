"""Server options: one typed record that the CLI fills and an embedding application may build."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(slots=True)
class ServerOptions:
    """Settings named after tritonserver's flags (``--http-port`` is ``http_port``)."""

    model_repositories: list[str] = field(default_factory=list)
    #: Searched in order for ``<dir>/<backend>/plugin.py``; the built-in backends come last.
    backend_directories: list[Path] = field(default_factory=list)
    #: ``--backend-config``: backend name -> {key: value}; "" holds the global keys.
    backend_config: dict[str, dict[str, str]] = field(default_factory=dict)
    model_control_mode: str = "none"
    load_models: list[str] = field(default_factory=list)
    #: Poll mode: seconds between scans of the repositories (0: only at start).
    repository_poll_secs: float = 15.0
    #: How many models load at once.
    model_load_thread_count: int = 4
    model_config_name: str | None = None
    auto_complete_config: bool = True
    #: ``--cache-config``: cache name -> {key: value}; empty means no response cache.
    cache_config: dict[str, dict[str, str]] = field(default_factory=dict)
    strict_readiness: bool = True
    exit_on_error: bool = True
    exit_timeout_secs: float = 30.0
    server_id: str = "triton"

    allow_http: bool = True
    http_address: str = "0.0.0.0"
    http_port: int = 8000
    http_max_input_size: int = 64 * 1024 * 1024

    allow_grpc: bool = True
    grpc_address: str = "0.0.0.0"
    grpc_port: int = 8001
    #: Larger messages are refused with RESOURCE_EXHAUSTED before they are buffered.
    grpc_max_message_size: int = 2**31 - 1
    grpc_keepalive_time_ms: int = 7_200_000
    grpc_keepalive_timeout_ms: int = 20_000
    grpc_keepalive_permit_without_calls: bool = False
    grpc_http2_max_pings_without_data: int = 2

    allow_metrics: bool = True
    metrics_address: str = "0.0.0.0"
    metrics_port: int = 8002
    metrics_interval_ms: int = 2000
    allow_cpu_metrics: bool = True
    allow_gpu_metrics: bool = True
    #: ``--metrics-config`` ``<key>=<value>`` settings (summaries, histograms, ...).
    metrics_config: dict[str, str] = field(default_factory=dict)

    #: ``--trace-config`` settings, ``[<mode>,]<key>=<value>`` each, as given.
    trace_config: list[str] = field(default_factory=list)
    #: ``--http-restricted-api`` / ``--grpc-restricted-protocol`` values, as given:
    #: ``<api>[,<api>...]:<key>=<value>``.
    http_restricted_api: list[str] = field(default_factory=list)
    grpc_restricted_protocol: list[str] = field(default_factory=list)

    allow_client_shm: bool = False
    log_verbose: int = 0
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_format: str = "default"
    log_file: str = ""
