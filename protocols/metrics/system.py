"""CPU and GPU metrics, sampled every ``--metrics-interval-ms`` as tritonserver samples them.

CPU figures come from ``/proc/stat`` and ``/proc/meminfo`` (Linux only, as in Triton);
GPU figures from NVML through ``nvidia-ml-py``, imported only when GPU metrics are
enabled, and skipped with a warning when no driver or GPU is found (Triton uses DCGM;
the names, units and ``gpu_uuid`` label are the same).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

_MIB = 1024 * 1024
#: Fields of the aggregate ``cpu`` line of /proc/stat, in order.
_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


# --- CPU ------------------------------------------------------------------------------


def read_cpu_times(path: str = "/proc/stat") -> dict[str, int] | None:
    try:
        with open(path, encoding="ascii") as stat:
            first = stat.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu":
        return None
    values = [int(v) for v in first[1 : 1 + len(_CPU_FIELDS)]]
    return dict(zip(_CPU_FIELDS, values + [0] * (len(_CPU_FIELDS) - len(values)), strict=True))


def cpu_utilization(new: dict[str, int], old: dict[str, int]) -> float:
    """Busy share of the CPU time between two samples (Triton's formula)."""
    diff = {k: max(new[k] - old[k], 0) for k in _CPU_FIELDS}
    busy = sum(diff[k] for k in ("user", "nice", "system", "irq", "softirq", "steal"))
    idle = diff["idle"] + diff["iowait"]
    return busy / (busy + idle) if busy + idle else 0.0


def read_memory(path: str = "/proc/meminfo") -> tuple[int, int] | None:
    """(total, used) bytes, used being total - available (Triton's definition)."""
    info: dict[str, int] = {}
    try:
        with open(path, encoding="ascii") as meminfo:
            for line in meminfo:
                name, _, rest = line.partition(":")
                info[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    total, available = info.get("MemTotal"), info.get("MemAvailable")
    if total is None or available is None or available > total:
        return None
    return total, total - available


@dataclass(slots=True)
class CpuSample:
    utilization: float = 0.0
    memory_total: int = 0
    memory_used: int = 0


class CpuMonitor:
    """Utilization since the previous sample, and memory now."""

    def __init__(self) -> None:
        self._last = read_cpu_times()
        if self._last is None or read_memory() is None:
            log.warning("error initializing CPU metrics, CPU metrics may not be available")
        else:
            log.info("Collecting CPU metrics")
        self.sample = CpuSample()

    def poll(self) -> None:
        times, memory = read_cpu_times(), read_memory()
        utilization = 0.0
        if times is not None and self._last is not None:
            utilization = cpu_utilization(times, self._last)
        if times is not None:
            self._last = times
        total, used = memory or (0, 0)
        self.sample = CpuSample(utilization, total, used)


# --- GPU ------------------------------------------------------------------------------


@dataclass(slots=True)
class GpuSample:
    uuid: str
    utilization: float = 0.0
    memory_total: int = 0
    memory_used: int = 0
    power_usage: float = 0.0
    power_limit: float = 0.0
    #: Joules since the server started.
    energy: float = 0.0


class GpuMonitor:
    """NVML figures of the GPUs this process may use (``CUDA_VISIBLE_DEVICES``)."""

    def __init__(self) -> None:
        self.samples: list[GpuSample] = []
        self._nvml: Any = None
        self._handles: list[Any] = []
        self._energy_mj: list[int | None] = []
        try:
            import pynvml  # nvidia-ml-py: imported only when GPU metrics are wanted

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._open_devices()
        except Exception as exc:  # no library, no driver, no GPU: no GPU metrics
            log.warning("GPU metrics will not be available: %s", exc)
            self._handles = []

    def _open_devices(self) -> None:
        nvml = self._nvml
        for index in _visible_indexes(nvml.nvmlDeviceGetCount(), nvml):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            log.info(
                "Collecting metrics for GPU %d: %s", index, _text(nvml.nvmlDeviceGetName(handle))
            )
            self._handles.append(handle)
            self.samples.append(GpuSample(uuid))
            self._energy_mj.append(None)

    def poll(self) -> None:
        for index, handle in enumerate(self._handles):
            self._poll_device(index, handle)

    def _poll_device(self, index: int, handle: Any) -> None:
        nvml, sample = self._nvml, self.samples[index]
        sample.utilization = _query(lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu * 0.01)
        memory = _query(lambda: nvml.nvmlDeviceGetMemoryInfo(handle), None)
        # DCGM, which Triton reads, reports whole MiB
        sample.memory_total = memory.total // _MIB * _MIB if memory is not None else 0
        sample.memory_used = memory.used // _MIB * _MIB if memory is not None else 0
        sample.power_usage = _query(lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000)
        sample.power_limit = _query(lambda: nvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000)
        energy = _query(lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(handle), None)
        if energy is not None:
            last = self._energy_mj[index]
            if last is not None:
                sample.energy += max(energy - last, 0) * 0.001
            self._energy_mj[index] = energy

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._nvml = None


def _visible_indexes(count: int, nvml: Any) -> list[int]:
    """NVML indexes of the devices ``CUDA_VISIBLE_DEVICES`` names (all when unset)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(count))
    uuids = [
        _text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count)
    ]
    indexes = []
    for item in (part.strip() for part in visible.split(",")):
        if item.isdigit() and int(item) < count:
            indexes.append(int(item))
        elif item:
            matches = [i for i, uuid in enumerate(uuids) if uuid.startswith(item)]
            if not matches:
                break  # CUDA stops at the first entry it cannot use
            indexes.append(matches[0])
        else:
            break
    return indexes


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _query(read: Any, default: Any = 0.0) -> Any:
    """One NVML reading; an unsupported or failing one reads as ``default`` (Triton: 0)."""
    try:
        return read()
    except Exception:
        return default


# --- the collector ----------------------------------------------------------------------


class SystemCollector(Collector):
    """The latest CPU and GPU samples, in Triton's families."""

    def __init__(self, cpu: CpuMonitor | None, gpu: GpuMonitor | None) -> None:
        self._cpu = cpu
        self._gpu = gpu

    def collect(self) -> Iterator[Metric]:
        gpus = self._gpu.samples if self._gpu is not None else []
        yield _gpu_family(
            "nv_energy_consumption",
            "GPU energy consumption in joules since the Triton Server started",
            "counter",
            gpus,
            "energy",
        )
        for name, help_text, attribute in _GPU_GAUGES:
            yield _gpu_family(name, help_text, "gauge", gpus, attribute)
        if self._cpu is not None:
            sample = self._cpu.sample
            for name, help_text, value in (
                ("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", sample.utilization),
                (
                    "nv_cpu_memory_total_bytes",
                    "CPU total memory (RAM), in bytes",
                    sample.memory_total,
                ),
                ("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", sample.memory_used),
            ):
                family = Metric(name, help_text, "gauge")
                family.add_sample(name, {}, value)
                yield family


_GPU_GAUGES = (
    ("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", "utilization"),
    ("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", "memory_total"),
    ("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", "memory_used"),
    ("nv_gpu_power_usage", "GPU power usage in watts", "power_usage"),
    ("nv_gpu_power_limit", "GPU power management limit in watts", "power_limit"),
)


def _gpu_family(
    name: str, help_text: str, kind: str, gpus: list[GpuSample], attribute: str
) -> Metric:
    family = Metric(name, help_text, kind)
    for sample in gpus:
        family.add_sample(name, {"gpu_uuid": sample.uuid}, getattr(sample, attribute))
    return family
