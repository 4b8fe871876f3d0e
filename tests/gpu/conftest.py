"""Tests that need a CUDA device: skipped where none is visible, run on the lent GPU machine.

Mark a test (or a module, with ``pytestmark``) ``@pytest.mark.cuda``, or ask for the
``cuda`` fixture: without a CUDA device either one skips the test. Detection imports
cuda-bindings (or, failing that, torch) only when a test asks, never at collection of
the other folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import pytest


@dataclass(frozen=True)
class Cuda:
    """The CUDA devices this process sees."""

    device_count: int
    #: The device tests use unless they need several.
    device_id: int = 0


@cache
def cuda_device_count() -> int:
    """How many CUDA devices this process sees (0 without a driver, a device or bindings)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        return _torch_device_count()
    error, count = runtime.cudaGetDeviceCount()
    return count if error == runtime.cudaError_t.cudaSuccess else 0


def _torch_device_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


_NO_CUDA = "no CUDA device is visible (tests/gpu runs on the lent GPU machine)"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: the test needs a CUDA device; skipped without one")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker("cuda") is not None]
    if marked and cuda_device_count() == 0:
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=_NO_CUDA))


@pytest.fixture(scope="session")
def cuda() -> Cuda:
    """The visible CUDA devices; skips the test when there are none."""
    count = cuda_device_count()
    if count == 0:
        pytest.skip(_NO_CUDA)
    return Cuda(count)
