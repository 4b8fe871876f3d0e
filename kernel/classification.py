"""Triton's classification extension: an output becomes its top-N "value:index[:label]"."""

from __future__ import annotations

import numpy as np

from .errors import InvalidArgument
from .tensor import Tensor


def classify(tensor: Tensor, class_count: int, labels: list[str], batched: bool) -> Tensor:
    """The top ``class_count`` entries of each batch item of ``tensor``, as a BYTES tensor."""
    if tensor.datatype == "BYTES":
        raise InvalidArgument(
            f"class result not available for output due to data type, output '{tensor.name}'"
        )
    data = tensor.data
    rows = data.reshape(data.shape[0], -1) if batched and data.ndim else data.reshape(1, -1)
    count = min(class_count, rows.shape[1])
    result = np.empty((rows.shape[0], count), dtype=np.object_)
    for r, row in enumerate(rows):
        order = np.argsort(-row.astype(np.float64), kind="stable")[:count]
        for c, index in enumerate(order):
            result[r, c] = _entry(row[index], int(index), labels)
    shape = (rows.shape[0], count) if batched else (count,)
    return Tensor(tensor.name, "BYTES", result.reshape(shape), tensor.parameters)


def _entry(value: np.generic, index: int, labels: list[str]) -> bytes:
    text = f"{value:f}" if isinstance(value, np.floating) else str(value)
    if index < len(labels):
        return f"{text}:{index}:{labels[index]}".encode()
    return f"{text}:{index}".encode()
