"""Triton's tensor datatypes: names, numpy dtypes, sizes, and the BYTES wire encoding.

BF16 has no numpy dtype: its elements are kept bit-exact as little-endian uint16.
BYTES tensors are numpy object arrays of ``bytes``; on the wire each element is a
4-byte little-endian length followed by its bytes (Triton's binary layout).
"""

from __future__ import annotations

import struct

import numpy as np

from .errors import InvalidArgument

#: Triton datatype name -> numpy dtype of the array holding it.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),
    "BYTES": np.dtype(np.object_),
}

DATATYPES = frozenset(NUMPY_DTYPES)

#: Triton datatype name -> bytes per element (BYTES is variable: absent).
ELEMENT_SIZES: dict[str, int] = {
    name: dtype.itemsize for name, dtype in NUMPY_DTYPES.items() if name != "BYTES"
}

_FROM_NUMPY: dict[np.dtype, str] = {
    dtype: name for name, dtype in NUMPY_DTYPES.items() if name not in ("BF16", "BYTES")
}


def config_to_wire(data_type: str) -> str:
    """``TYPE_FP32`` -> ``FP32``; ``TYPE_STRING`` -> ``BYTES`` (config names to wire names)."""
    name = data_type.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def wire_to_config(datatype: str) -> str:
    """``FP32`` -> ``TYPE_FP32``; ``BYTES`` -> ``TYPE_STRING``."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def datatype_of(array: np.ndarray) -> str:
    """The Triton datatype of a numpy array (object and string arrays are BYTES)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    try:
        return _FROM_NUMPY[array.dtype.newbyteorder("<")]
    except KeyError:
        raise InvalidArgument(f"unsupported numpy dtype '{array.dtype}'") from None


def element_count(shape: tuple[int, ...] | list[int]) -> int:
    """The product of ``shape``; raises when a dimension is negative."""
    count = 1
    for dim in shape:
        if dim < 0:
            raise InvalidArgument(f"invalid shape {list(shape)}: dimensions must be >= 0")
        count *= dim
    return count


def serialize_bytes(array: np.ndarray) -> bytes:
    """Encode a BYTES tensor in Triton's length-prefixed layout (row-major order)."""
    parts = []
    for item in array.reshape(-1):
        data = _as_bytes(item)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(buffer: bytes | memoryview, count: int | None = None) -> np.ndarray:
    """Decode Triton's length-prefixed BYTES layout into a flat object array."""
    view = memoryview(buffer)
    items: list[bytes] = []
    offset, end = 0, len(view)
    while offset < end:
        if end - offset < 4:
            raise InvalidArgument("BYTES tensor data is truncated: incomplete length prefix")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if length > end - offset:
            raise InvalidArgument(
                f"BYTES tensor element of {length} bytes runs past the end of its data"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if count is not None and len(items) != count:
        raise InvalidArgument(
            f"BYTES tensor holds {len(items)} elements but its shape needs {count}"
        )
    result = np.empty(len(items), dtype=np.object_)
    result[:] = items
    return result


def decode_bytes_input(
    data: memoryview, shape: tuple[int, ...], count: int, *, name: str, model: str, prefix: str
) -> np.ndarray:
    """A BYTES input from its wire layout, with Triton's texts (``prefix``: the request id).

    Shared by the frontends: HTTP binary data and gRPC raw contents are the same layout.
    """
    items: list[bytes] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 4:
            raise InvalidArgument(
                f"{prefix}incomplete string length indicator for inference input '{name}' for "
                f"model '{model}', expecting 4 bytes but only {len(data) - offset} bytes "
                "available. Please make sure the string length indicator is in one buffer."
            )
        length = int.from_bytes(data[offset : offset + 4], "little")
        offset += 4
        if length > len(data) - offset:
            raise InvalidArgument(
                f"incomplete string data for inference input '{name}', expecting string "
                f"of length {length} but only {len(data) - offset} bytes available"
            )
        items.append(bytes(data[offset : offset + length]))
        offset += length
    check_string_count(count, len(items), name=name, model=model, prefix=prefix)
    array = np.empty(count, dtype=np.object_)
    array[:] = items
    return array.reshape(shape)


def check_string_count(count: int, found: int, *, name: str, model: str, prefix: str) -> None:
    """Triton's errors for a BYTES input whose element count does not fit its shape."""
    if found > count:
        raise InvalidArgument(
            f"{prefix}unexpected number of string elements {found} for inference "
            f"input '{name}' for model '{model}', expecting {count}"
        )
    if found < count:
        raise InvalidArgument(
            f"{prefix}expected {count} string elements for inference input '{name}' "
            f"for model '{model}', got {found}"
        )


def _as_bytes(item: object) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, (bytearray, memoryview, np.bytes_)):
        return bytes(item)
    return str(item).encode("utf-8")
