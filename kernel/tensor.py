"""A named tensor: the unit inputs and outputs travel in between frontends and backends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .datatypes import datatype_of, serialize_bytes


@dataclass(slots=True)
class Tensor:
    """A numpy array with its Triton name and datatype.

    ``data`` is usually a view over the bytes a frontend received (no copy); BYTES
    tensors hold an object array of ``bytes``. ``parameters`` carries per-tensor
    wire parameters that the kernel does not interpret (e.g. ``binary_data``).
    """

    name: str
    datatype: str
    data: np.ndarray
    parameters: dict[str, Any] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def to_bytes(self) -> bytes | memoryview:
        """The tensor in Triton's binary layout: a view of the array, or encoded BYTES."""
        if self.datatype == "BYTES":
            return serialize_bytes(self.data)
        data = np.ascontiguousarray(self.data)
        return memoryview(data.reshape(-1).view(np.uint8)) if data.size else b""

    @classmethod
    def from_numpy(cls, name: str, array: np.ndarray) -> Tensor:
        """Wrap ``array`` with the datatype numpy implies (object/str arrays are BYTES)."""
        return cls(name, datatype_of(array), array)
