"""Triton's datatype table, name conversions and the BYTES wire layout."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from triton_kernel.kernel.datatypes import (
    DATATYPES,
    ELEMENT_SIZES,
    NUMPY_DTYPES,
    config_to_wire,
    datatype_of,
    deserialize_bytes,
    element_count,
    serialize_bytes,
    wire_to_config,
)
from triton_kernel.kernel.errors import ErrorCode, InvalidArgument

TRITON_DATATYPES = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
    "BF16": 2,
}


def test_table_holds_tritons_datatypes() -> None:
    assert set(TRITON_DATATYPES) | {"BYTES"} == DATATYPES
    assert ELEMENT_SIZES == TRITON_DATATYPES
    assert "BYTES" not in ELEMENT_SIZES


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("BOOL", np.bool_),
        ("UINT8", np.uint8),
        ("UINT64", np.uint64),
        ("INT8", np.int8),
        ("INT32", np.int32),
        ("INT64", np.int64),
        ("FP16", np.float16),
        ("FP32", np.float32),
        ("FP64", np.float64),
        ("BF16", np.uint16),  # bit-exact bfloat16 in a uint16 container
        ("BYTES", np.object_),
    ],
)
def test_numpy_dtype_of_each_datatype(name: str, dtype: type) -> None:
    assert np.dtype(dtype) == NUMPY_DTYPES[name]


def test_numeric_dtypes_are_little_endian() -> None:
    for name, dtype in NUMPY_DTYPES.items():
        if dtype.itemsize > 1 and name != "BYTES":
            assert dtype.byteorder in ("<", "="), name
            assert dtype.newbyteorder("<") == dtype


@pytest.mark.parametrize(
    ("config", "wire"),
    [
        ("TYPE_FP32", "FP32"),
        ("TYPE_INT64", "INT64"),
        ("TYPE_BOOL", "BOOL"),
        ("TYPE_BF16", "BF16"),
        ("TYPE_STRING", "BYTES"),
        ("TYPE_UINT8", "UINT8"),
    ],
)
def test_config_and_wire_names_convert_both_ways(config: str, wire: str) -> None:
    assert config_to_wire(config) == wire
    assert wire_to_config(wire) == config


def test_every_datatype_round_trips_through_its_config_name() -> None:
    for name in DATATYPES:
        assert config_to_wire(wire_to_config(name)) == name


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.zeros(2, np.bool_), "BOOL"),
        (np.zeros(2, np.uint8), "UINT8"),
        (np.zeros(2, np.uint16), "UINT16"),
        (np.zeros(2, np.uint32), "UINT32"),
        (np.zeros(2, np.uint64), "UINT64"),
        (np.zeros(2, np.int8), "INT8"),
        (np.zeros(2, np.int16), "INT16"),
        (np.zeros(2, np.int32), "INT32"),
        (np.zeros(2, np.int64), "INT64"),
        (np.zeros(2, np.float16), "FP16"),
        (np.zeros(2, np.float32), "FP32"),
        (np.zeros(2, np.float64), "FP64"),
        (np.zeros(2, ">f4"), "FP32"),
        (np.array([b"a", b"bc"], dtype=np.object_), "BYTES"),
        (np.array([b"a", b"bc"]), "BYTES"),
        (np.array(["a", "bc"]), "BYTES"),
    ],
)
def test_datatype_of(array: np.ndarray, expected: str) -> None:
    assert datatype_of(array) == expected


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, "datetime64[s]", "timedelta64[ms]"])
def test_datatype_of_unsupported_dtype_is_invalid_argument(dtype: object) -> None:
    with pytest.raises(InvalidArgument, match="unsupported numpy dtype") as info:
        datatype_of(np.zeros(2, dtype=dtype))
    assert info.value.code is ErrorCode.INVALID_ARG


def test_element_count() -> None:
    assert element_count([]) == 1
    assert element_count((2, 3, 4)) == 24
    assert element_count([5, 0, 7]) == 0
    with pytest.raises(InvalidArgument, match=r"invalid shape \[2, -1\]"):
        element_count([2, -1])


def test_serialize_bytes_uses_tritons_length_prefixed_layout() -> None:
    array = np.array([[b"ab", b""], [b"\x00\xff", b"xyz"]], dtype=np.object_)
    assert serialize_bytes(array) == (
        b"\x02\x00\x00\x00ab\x00\x00\x00\x00\x02\x00\x00\x00\x00\xff\x03\x00\x00\x00xyz"
    )


def test_serialize_bytes_encodes_str_as_utf8_and_other_objects_as_text() -> None:
    array = np.array(["é", bytearray(b"ba"), np.bytes_(b"nb"), 7], dtype=np.object_)
    assert list(deserialize_bytes(serialize_bytes(array))) == [
        "é".encode(),
        b"ba",
        b"nb",
        b"7",
    ]


@pytest.mark.parametrize(
    "items",
    [
        [b"hello", b"", b"world"],
        [b"", b"", b""],
        [b"\x00" * 3, bytes(range(256))],
        [b"same", b"same"],
        [],
    ],
)
def test_bytes_round_trip(items: list[bytes]) -> None:
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    encoded = serialize_bytes(array)
    assert len(encoded) == sum(4 + len(item) for item in items)
    decoded = deserialize_bytes(encoded, len(items))
    assert decoded.dtype == np.object_
    assert decoded.shape == (len(items),)
    assert list(decoded) == items
    assert all(type(item) is bytes for item in decoded)


def test_deserialize_accepts_a_memoryview_slice() -> None:
    body = b"junk" + struct.pack("<I", 3) + b"abc" + b"tail"
    decoded = deserialize_bytes(memoryview(body)[4:11])
    assert list(decoded) == [b"abc"]


def test_deserialize_without_count_takes_every_element() -> None:
    assert list(deserialize_bytes(struct.pack("<I", 1) + b"a" + struct.pack("<I", 0))) == [
        b"a",
        b"",
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x00", "incomplete length prefix"),
        (struct.pack("<I", 1) + b"a" + b"\x00\x00\x00", "incomplete length prefix"),
        (struct.pack("<I", 5) + b"abc", "element of 5 bytes runs past the end"),
        (struct.pack("<I", 2**32 - 1), "runs past the end"),
    ],
)
def test_truncated_bytes_data_is_invalid_argument(data: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        deserialize_bytes(data)


def test_element_count_mismatch_is_invalid_argument() -> None:
    data = serialize_bytes(np.array([b"a", b"b"], dtype=np.object_))
    with pytest.raises(InvalidArgument, match="holds 2 elements but its shape needs 3"):
        deserialize_bytes(data, 3)
    with pytest.raises(InvalidArgument, match="holds 0 elements but its shape needs 1"):
        deserialize_bytes(b"", 1)
