"""The entries of Triton's JSON trace file, formatted as tritonserver 2.51 writes them.

Each trace id gets a header (``model_name``, ``model_version``, ``request_id`` when
set, ``parent_id`` for a child), one entry per timestamp and, at TENSORS level, one per
tensor with its values as text (floats as C++ streams them, BYTES elements quoted).
Strings are JSON-escaped, so the file stays valid JSON where Triton's would not.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .trace import RequestTrace

_dumps = json.dumps


def header(trace: RequestTrace) -> str:
    entry = f'{{"id":{trace.id},"model_name":{_dumps(trace.model_name)},'
    entry += f'"model_version":{trace.model_version}'
    if trace.request_id:
        entry += f',"request_id":{_dumps(trace.request_id)}'
    if trace.parent is not None:
        entry += f',"parent_id":{trace.parent.id}'
    return entry + "}"


def timestamp(trace_id: int, name: str, ns: int) -> str:
    return f'{{"id":{trace_id},"timestamps":[{{"name":"{name}","ns":{ns}}}]}}'


def tensor(trace_id: int, activity: str, value: Any) -> str:
    """A TENSORS-level entry for ``value`` (a kernel ``Tensor``)."""
    data = np.asarray(value.data)
    shape = ",".join(str(d) for d in data.shape)
    return (
        f'{{"id":{trace_id},"activity":"{activity}","tensor":{{"name":{_dumps(value.name)},'
        f'"data":{_dumps(tensor_text(value.datatype, data))},"shape":"{shape}",'
        f'"dtype":"{value.datatype}"}}}}'
    )


def tensor_text(datatype: str, data: np.ndarray) -> str:
    """The values as tritonserver lists them: comma separated; FP16/BF16 stay empty."""
    flat = data.reshape(-1)
    if datatype in ("FP16", "BF16"):
        return ""
    if datatype == "BYTES":
        return ",".join(f'"{_text(v)}"' for v in flat)
    if datatype in ("FP32", "FP64"):
        return ",".join(format(float(v), "g") for v in flat)
    if datatype == "BOOL":
        return ",".join("1" if v else "0" for v in flat)
    return ",".join(str(int(v)) for v in flat)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
