"""The CPU-testable parts of GPU tensors: lazy host copies of CUDA shared memory, the
Python backend's GPU input descriptors, and ``pb_utils`` GPU tensors over DLPack.

Device memory is never touched here: a :class:`CudaBuffer` whose ``read`` counts its
calls stands for a CUDA region, and a ``CudaArray`` with a made-up pointer is only
described, never read. DLPack capsules made by the GPU module are checked with numpy
and torch on host memory (the same code path, another device type).
"""

from __future__ import annotations

import gc
import sys

import numpy as np
import pytest

from triton_kernel.kernel.config import parse_config_text
from triton_kernel.kernel.errors import Internal, Unsupported
from triton_kernel.kernel.request import InferenceRequest, RequestedOutput
from triton_kernel.kernel.scheduler import request_batch_size
from triton_kernel.kernel.shared_memory import (
    CUDA_BUFFER,
    REGION,
    CudaBuffer,
    CudaTensor,
    cuda_buffer,
    written_output,
)
from triton_kernel.plugins.backends.python import triton_python_backend_gpu as gpu
from triton_kernel.plugins.backends.python import triton_python_backend_utils as pb_utils
from triton_kernel.plugins.backends.python.worker import gpu_input_tensors, payload_inputs

X = np.arange(6, dtype=np.float32).reshape(2, 3)


class Reads:
    """A CUDA region's host copy, counted."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.count = 0

    def __call__(self) -> np.ndarray:
        self.count += 1
        return self.array.reshape(-1).view(np.uint8).copy()


def _tensor(reads: Reads, shape: tuple[int, ...] = (2, 3)) -> CudaTensor:
    buffer = CudaBuffer(0, 0x7F0000, X.nbytes, "r", handle=b"h" * 64, offset=16, read=reads)
    return CudaTensor("IN", "FP32", shape, buffer, {CUDA_BUFFER: buffer})


# --- the kernel: inputs in CUDA shared memory are copied only on demand -----------------------


def test_shape_and_device_span_need_no_copy() -> None:
    reads = Reads(X)
    tensor = _tensor(reads)
    assert tensor.shape == (2, 3)
    assert cuda_buffer(tensor).pointer == 0x7F0000
    assert tensor.copied is False and reads.count == 0
    request = InferenceRequest("m", inputs={"IN": tensor})
    assert request_batch_size(request, True) == 2 and reads.count == 0


def test_data_is_copied_once_and_read_only() -> None:
    reads = Reads(X)
    tensor = _tensor(reads)
    np.testing.assert_array_equal(tensor.data, X)
    assert bytes(tensor.to_bytes()) == X.tobytes()
    assert reads.count == 1 and tensor.copied
    assert tensor.data.flags.writeable is False
    tensor.data = tensor.data.reshape(3, 2)  # a reshape (ensembles do it) is kept
    assert tensor.shape == (3, 2) and reads.count == 1


def test_a_span_that_cannot_be_read_says_so() -> None:
    buffer = CudaBuffer(0, 0x7F0000, X.nbytes, "r")
    with pytest.raises(Internal, match="cannot be read"):
        _ = CudaTensor("IN", "FP32", (2, 3), buffer).data


def test_written_output_is_marked_with_its_region() -> None:
    reads = Reads(X * 2)
    buffer = CudaBuffer(0, 0x7F0000, X.nbytes, "out_region", read=reads)
    output = RequestedOutput("OUT", parameters={REGION: "out_region", CUDA_BUFFER: buffer})
    tensor = written_output("OUT", "FP32", (2, 3), output)
    assert tensor.parameters == {REGION: "out_region"}
    assert tensor.shape == (2, 3) and reads.count == 0
    np.testing.assert_array_equal(tensor.data, X * 2)  # the response cache reads it back
    with pytest.raises(Internal, match="does not go to CUDA shared memory"):
        written_output("OUT", "FP32", (2, 3), RequestedOutput("OUT"))


# --- the Python backend's server side: what the worker receives ----------------------------------


def test_gpu_inputs_go_as_ipc_descriptors_without_a_copy() -> None:
    reads = Reads(X)
    request = InferenceRequest("m", inputs={"IN": _tensor(reads)})
    ((name, value),) = payload_inputs(request, gpu=True)
    assert name == "IN"
    assert value == ("cuda_ipc", b"h" * 64, 0, 16, "<f4", (2, 3))
    assert reads.count == 0
    ((_, array),) = payload_inputs(request, gpu=False)  # Triton's default: host memory
    np.testing.assert_array_equal(array, X)
    assert reads.count == 1


@pytest.mark.parametrize(("value", "gpu_inputs"), [(None, False), ("yes", False), ("no", True)])
def test_force_cpu_only_input_tensors(value: str | None, gpu_inputs: bool) -> None:
    text = 'name: "m" backend: "python"'
    if value is not None:
        text += (
            ' parameters { key: "FORCE_CPU_ONLY_INPUT_TENSORS" '
            f'value: {{ string_value: "{value}" }} }}'
        )
    assert gpu_input_tensors(parse_config_text(text)) is gpu_inputs


def test_force_cpu_only_input_tensors_refuses_other_values() -> None:
    text = (
        'name: "m" backend: "python" parameters { key: "FORCE_CPU_ONLY_INPUT_TENSORS" '
        'value: { string_value: "No" } }'
    )
    with pytest.raises(Unsupported) as info:
        gpu_input_tensors(parse_config_text(text))
    assert info.value.message == "Incorrect value for FORCE_CPU_ONLY_INPUT_TENSORS: No'"


# --- pb_utils: a GPU tensor as Triton's stub shows it -------------------------------------------


def _gpu_tensor() -> pb_utils.Tensor:
    array = gpu.CudaArray(0x7F0000, (2, 3), np.float32, 1, owner=None)
    return pb_utils.Tensor._on_gpu("OUT", array)


def test_a_gpu_tensor_is_not_on_the_cpu_and_has_no_numpy() -> None:
    tensor = _gpu_tensor()
    assert tensor.is_cpu() is False
    assert tensor.shape() == [2, 3] and tensor.triton_dtype() == 11
    assert tensor.__dlpack_device__() == (2, 1)
    with pytest.raises(pb_utils.TritonModelException) as info:
        tensor.as_numpy()
    assert str(info.value) == "Tensor is stored in GPU and cannot be converted to NumPy."
    assert "cuda:1" in repr(tensor)


def test_a_gpu_tensor_exports_a_cuda_capsule() -> None:
    capsule = _gpu_tensor().to_dlpack()
    assert gpu.capsule_device(capsule) == (2, 1)
    assert len(gpu._exports) == 1
    del capsule  # never consumed: what it held is released with it
    gc.collect()
    assert gpu._exports == {}


def test_from_dlpack_errors_in_tritons_words() -> None:
    with pytest.raises(pb_utils.TritonModelException, match=r"^Tensor name cannot be an empty"):
        pb_utils.Tensor.from_dlpack("", np.zeros(2))
    with pytest.raises(pb_utils.TritonModelException) as info:
        pb_utils.Tensor.from_dlpack("X", [1, 2])
    assert str(info.value) == (
        "Provided tensor is not supported. Tensor must be a DLPack capsule         or have "
        "`__dlpack__` and `__dlpack_device__` attributes"
    )

    class OpenCL:
        def __dlpack__(self, stream: object = None) -> None:
            raise AssertionError("not asked for its data")

        def __dlpack_device__(self) -> tuple[int, int]:
            return (4, 0)

    with pytest.raises(pb_utils.TritonModelException) as info:
        pb_utils.Tensor.from_dlpack("X", OpenCL())
    assert str(info.value) == "DLDevice type 4 is not support by Python backend."
    strings = pb_utils.Tensor("S", np.array([b"a"], dtype=np.object_))
    with pytest.raises(pb_utils.TritonModelException) as info:
        strings.to_dlpack()
    assert str(info.value) == "DLPack does not have support for string tensors."


def test_a_cpu_capsule_still_becomes_a_numpy_tensor() -> None:
    source = np.arange(4, dtype=np.int64)
    tensor = pb_utils.Tensor.from_dlpack("X", source.__dlpack__())
    assert tensor.is_cpu() and np.shares_memory(tensor.as_numpy(), source)


# --- the DLPack ABI of the GPU module, on host memory ------------------------------------------


def test_exported_capsules_are_consumed_and_released() -> None:
    torch = pytest.importorskip("torch")
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    consumed = torch.utils.dlpack.from_dlpack(gpu._export(array, gpu.KDL_CPU))
    np.testing.assert_array_equal(consumed.numpy(), array)
    assert len(gpu._exports) == 1  # held while the consumer uses it
    del consumed
    gc.collect()
    assert gpu._exports == {}


def test_a_taken_capsule_releases_its_producer() -> None:
    source = np.arange(4.0)
    before = sys.getrefcount(source)
    taken = gpu.take(source.__dlpack__())
    assert (taken.shape, taken.dtype, taken.pointer) == ((4,), np.float64, source.ctypes.data)
    assert sys.getrefcount(source) == before + 1  # numpy's capsule keeps it alive
    del taken
    gc.collect()
    assert sys.getrefcount(source) == before


def test_take_refuses_what_triton_refuses() -> None:
    torch = pytest.importorskip("torch")
    transposed = torch.ones(2, 3).t()
    with pytest.raises(gpu.GpuTensorError) as info:
        gpu.take(torch.utils.dlpack.to_dlpack(transposed))
    assert str(info.value) == (
        "DLPack tensor is not contiguous. Only contiguous DLPack tensors that are stored in "
        "C-Order are supported."
    )
    with pytest.raises(gpu.GpuTensorError, match="DLDevice type 1 is not support"):
        gpu.from_capsule(torch.utils.dlpack.to_dlpack(torch.ones(2)))
    capsule = torch.utils.dlpack.to_dlpack(torch.ones(2))
    gpu.take(capsule)
    with pytest.raises(gpu.GpuTensorError, match="can be used only once"):
        gpu.take(capsule)
