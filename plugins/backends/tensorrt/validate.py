"""Checks of a TensorRT model's configuration that need no TensorRT: instance kinds and NVDLA.

Triton's TensorRT backend runs only ``KIND_GPU`` instances; an instance may name one
secondary device, an NVDLA core (``secondary_devices [ { kind: KIND_NVDLA,
device_id: N } ]``), which the runtime's ``DLA_core`` selects before the engine is
deserialized. Texts are Triton's where it has one.
"""

from __future__ import annotations

from typing import Any

from triton_kernel.kernel.errors import InvalidArgument

__all__ = ["dla_cores", "instance_groups", "validate_instance_groups"]


def instance_groups(config: Any) -> dict[str, Any]:
    """Instance name -> its ``instance_group``, named as the kernel names instances."""
    found = {}
    for group in config.instance_group:
        kind = type(group).Kind.Name(group.kind)
        devices = (list(group.gpus) or [0]) if kind == "KIND_GPU" else [0]
        total = len(devices) * group.count
        for index in range(total):
            found[group.name if total == 1 else f"{group.name}_{index}"] = group
    return found


def validate_instance_groups(config: Any) -> None:
    """Raise for the first instance Triton's TensorRT backend would refuse."""
    for instance, group in instance_groups(config).items():
        kind = type(group).Kind.Name(group.kind)
        _check_secondary_devices(config.name, instance, group, kind)
        if kind != "KIND_GPU":
            raise InvalidArgument(
                f"unable to load model '{config.name}', TensorRT backend supports only GPU "
                f"device (instance group {group.name} has kind {kind})"
            )


def _check_secondary_devices(model: str, instance: str, group: Any, kind: str) -> None:
    devices = list(group.secondary_devices)
    if not devices:
        return
    if len(devices) != 1:
        raise InvalidArgument(
            f"{instance} of model {model} must have either zero or or one secondary devices"
        )
    device = devices[0]
    device_kind = type(device).SecondaryDeviceKind.Name(device.kind)
    if device_kind != "KIND_NVDLA":
        raise InvalidArgument(
            f"secondary device for {instance} of model {model} must be KIND_NVDLA"
        )
    if kind != "KIND_GPU":
        raise InvalidArgument(
            f"instance group {group.name} of model {model} has a KIND_NVDLA secondary device "
            f"but kind {kind}: an NVDLA core runs the engine of a KIND_GPU instance"
        )
    if device.device_id < 0:
        raise InvalidArgument(
            f"instance group {group.name} of model {model} selects NVDLA core "
            f"{device.device_id}: a KIND_NVDLA device_id must be 0 or more"
        )


def dla_cores(config: Any) -> dict[str, int]:
    """Instance name -> the NVDLA core it runs on (-1: none, the GPU alone)."""
    return {
        name: group.secondary_devices[0].device_id if group.secondary_devices else -1
        for name, group in instance_groups(config).items()
    }
