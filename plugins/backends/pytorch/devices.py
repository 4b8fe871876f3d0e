"""Where a PyTorch model's instances run: Triton's checks of ``instance_group`` against the GPUs.

Triton's core refuses a ``KIND_GPU`` group when no GPU is usable and a ``gpus`` entry
that names no usable GPU, before any backend sees the model; the texts are its own.
"""

from __future__ import annotations

from typing import Any

from triton_kernel.kernel.errors import InvalidArgument

__all__ = ["check_instance_groups", "device_for", "supported_gpus"]

#: tritonserver's ``--min-supported-compute-capability`` default.
DEFAULT_MIN_COMPUTE_CAPABILITY = 6.0


def supported_gpus(torch: Any, min_capability: float) -> list[int]:
    """The CUDA devices torch sees whose compute capability is at least ``min_capability``."""
    if not torch.cuda.is_available():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(index)
        if major + minor / 10 >= min_capability:
            found.append(index)
    return found


def check_instance_groups(config: Any, torch: Any, settings: dict[str, str]) -> None:
    """Raise Triton's error for the first group whose kind and ``gpus`` cannot be honoured."""
    min_capability = _min_capability(settings)
    gpus: list[int] | None = None
    for group in config.instance_group:
        kind = type(group).Kind.Name(group.kind)
        where = f"instance group {group.name} of model {config.name}"
        if kind in ("KIND_CPU", "KIND_MODEL") and group.gpus:
            raise InvalidArgument(f"{where} has kind {kind} but specifies one or more GPUs")
        if kind != "KIND_GPU":
            continue
        if gpus is None:
            gpus = supported_gpus(torch, min_capability)
        if not group.gpus and not gpus:
            raise InvalidArgument(
                f"{where} has kind KIND_GPU but no GPUs are available{_why_none(torch)}"
            )
        for gid in group.gpus:
            if gid not in gpus:
                raise InvalidArgument(
                    f"{where} specifies invalid or unsupported gpu id {gid}. GPUs with at "
                    "least the minimum required CUDA compute compatibility of "
                    f"{min_capability:f} are: {', '.join(str(g) for g in gpus)}"
                )


def _min_capability(settings: dict[str, str]) -> float:
    value = settings.get("min-compute-capability", "")
    try:
        return float(value) if value else DEFAULT_MIN_COMPUTE_CAPABILITY
    except ValueError:
        raise InvalidArgument(
            f"failed to convert min-compute-capability '{value}' to a number"
        ) from None


def _why_none(torch: Any) -> str:
    """A hint after Triton's text: why torch sees no GPU."""
    if torch.version.cuda is None:
        return f" (torch {torch.__version__} is a CPU-only build)"
    return f" (torch {torch.__version__} finds no CUDA device)"


def device_for(torch: Any, kind: str, device_id: int) -> Any:
    """The torch device of an instance; None for ``KIND_MODEL`` (the model places itself)."""
    if kind == "KIND_GPU":
        return torch.device("cuda", device_id)
    if kind == "KIND_MODEL":
        return None
    return torch.device("cpu")
