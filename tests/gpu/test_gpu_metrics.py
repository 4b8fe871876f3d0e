"""GPU metrics on ``/metrics`` (NVML through nvidia-ml-py), compared with NVML itself.

Skipped where NVML finds no GPU; run on the lent GPU machine with the project and
tritonclient installed:

    python -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_metrics.py
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from ..integration.conftest import RunningServer, free_port, start_server, write_model


def _nvml_devices() -> list[dict[str, Any]]:
    """NVML's view of each GPU (empty without the library, a driver or a GPU)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return []
    devices = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        uuid = pynvml.nvmlDeviceGetUUID(handle)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        devices.append(
            {
                "uuid": uuid.decode() if isinstance(uuid, bytes) else uuid,
                "memory_total": memory.total,
                "power_limit_w": pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000,
            }
        )
    return devices


DEVICES = _nvml_devices()
if not DEVICES:
    pytest.skip(
        "NVML finds no GPU (tests/gpu runs on the lent GPU machine)", allow_module_level=True
    )

MIB = 1024 * 1024
GAUGES = {
    "nv_gpu_utilization": "GPU utilization rate [0.0 - 1.0)",
    "nv_gpu_memory_total_bytes": "GPU total memory, in bytes",
    "nv_gpu_memory_used_bytes": "GPU used memory, in bytes",
    "nv_gpu_power_usage": "GPU power usage in watts",
    "nv_gpu_power_limit": "GPU power management limit in watts",
}
ENERGY_HELP = "GPU energy consumption in joules since the Triton Server started"

IDENTITY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.get_input_tensor_by_name(r, "IN")])
            for r in requests
        ]
"""
CONFIG = """
    name: "gpu_metrics_ident"
    backend: "python"
    max_batch_size: 0
    input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
    output [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""


class Metrics:
    def __init__(self, running: RunningServer, port: int) -> None:
        self.running = running
        self.url = f"http://127.0.0.1:{port}/metrics"

    def text(self) -> str:
        reply = requests.get(self.url, timeout=10)
        assert reply.status_code == 200
        return reply.text

    def samples(self, family: str) -> dict[str, float]:
        """gpu_uuid -> value of ``family``."""
        for parsed in text_string_to_metric_families(self.text()):
            if parsed.name == family:
                return {s.labels["gpu_uuid"]: s.value for s in parsed.samples}
        return {}


def _serve(tmp: Path, *flags: str) -> Metrics:
    write_model(tmp / "repo", "gpu_metrics_ident", CONFIG, IDENTITY)
    port = free_port()
    running = start_server(
        tmp / "repo",
        "--allow-metrics=true",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={port}",
        "--metrics-interval-ms=200",
        *flags,
        log_path=tmp / "server.log",
    )
    return Metrics(running, port)


@pytest.fixture(scope="module")
def metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Metrics]:
    served = _serve(tmp_path_factory.mktemp("gpu_metrics"), "--allow-gpu-metrics=true")
    yield served
    assert served.running.stop() == 0, served.running.log()


def _visible_uuids() -> set[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return {device["uuid"] for device in DEVICES}
    chosen = set()
    for item in (part.strip() for part in visible.split(",") if part.strip()):
        if item.isdigit() and int(item) < len(DEVICES):
            chosen.add(DEVICES[int(item)]["uuid"])
        else:
            chosen |= {d["uuid"] for d in DEVICES if d["uuid"].startswith(item)}
    return chosen


def test_each_visible_gpu_has_tritons_gauges(metrics: Metrics) -> None:
    text = metrics.text()
    for name, help_text in GAUGES.items():
        assert f"# HELP {name} {help_text}\n# TYPE {name} gauge\n" in text
        assert set(metrics.samples(name)) == _visible_uuids(), name
    assert all(uuid.startswith("GPU-") for uuid in _visible_uuids())


def test_values_agree_with_nvml(metrics: Metrics) -> None:
    by_uuid = {device["uuid"]: device for device in DEVICES}
    utilization = metrics.samples("nv_gpu_utilization")
    total = metrics.samples("nv_gpu_memory_total_bytes")
    used = metrics.samples("nv_gpu_memory_used_bytes")
    limit = metrics.samples("nv_gpu_power_limit")
    usage = metrics.samples("nv_gpu_power_usage")
    for uuid in _visible_uuids():
        device = by_uuid[uuid]
        assert 0.0 <= utilization[uuid] <= 1.0
        assert total[uuid] == device["memory_total"] // MIB * MIB  # DCGM's whole MiB
        assert 0 <= used[uuid] <= total[uuid]
        assert limit[uuid] == pytest.approx(device["power_limit_w"])
        assert 0.0 < usage[uuid] <= limit[uuid] * 1.5


def test_energy_is_a_counter_that_grows(metrics: Metrics) -> None:
    text = metrics.text()
    assert (
        f"# HELP nv_energy_consumption {ENERGY_HELP}\n# TYPE nv_energy_consumption counter\n"
        in text
    )
    first = metrics.samples("nv_energy_consumption")
    assert set(first) == _visible_uuids()
    deadline = time.monotonic() + 20
    later = first
    while time.monotonic() < deadline and not all(later[u] > first[u] for u in first):
        time.sleep(0.2)
        later = metrics.samples("nv_energy_consumption")
    assert all(later[uuid] > first[uuid] >= 0 for uuid in first)


def test_no_gpu_families_when_gpu_metrics_are_off(tmp_path: Path) -> None:
    served = _serve(tmp_path, "--allow-gpu-metrics=false")
    try:
        text = served.text()
        assert "nv_gpu_" not in text and "nv_energy_consumption" not in text
        assert "nv_cpu_utilization" in text
    finally:
        assert served.running.stop() == 0, served.running.log()
