"""Model warmup: Triton's ``model_warmup`` samples, run on each instance before it is ready.

Each sample with a ``batch_size`` of N becomes N requests of batch 1 that one instance
executes as one batch, ``count`` times (at least once); samples run in order. Their
inputs are zeros, random bytes (one buffer per sample and instance, as Triton's) or
the contents of ``<model dir>/warmup/<file>``. The requests are checked as client
requests are, and are counted in the model's statistics, as Triton counts them.
A sample that cannot be built or whose execution fails any request fails the load,
with Triton's texts.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from .backend import ModelInstance
from .config import wire_datatype
from .datatypes import NUMPY_DTYPES, decode_bytes_input
from .errors import Internal, InvalidArgument, KernelError
from .request import InferenceRequest
from .scheduler import execute_batch
from .statistics import ModelStatistics
from .tensor import Tensor
from .validation import Signature, validate_request

#: Where ``input_data_file`` is read from, inside the model's directory.
WARMUP_FOLDER = "warmup"
_NO_ID = "[request id: <id_unknown>] "


@dataclass(slots=True)
class WarmupSample:
    """One ``model_warmup`` entry, ready to run: a batch of requests and how often."""

    name: str
    #: Iterations (Triton runs a ``count`` of 0 once).
    count: int
    #: The inputs of each request of the batch.
    requests: list[dict[str, Tensor]]
    #: Errors Triton's backend reports for each request when it executes the batch.
    execute_errors: list[str]


@dataclass(slots=True)
class WarmupTarget:
    """What warmup needs of a model version."""

    config: Any
    signature: Signature
    model_dir: Path
    version: int
    statistics: ModelStatistics


async def warm_up(target: WarmupTarget, instance: ModelInstance, instance_name: str) -> None:
    """Run every sample of ``target``'s configuration on ``instance``; raise on failure."""
    samples = build_samples(target, instance_name)
    decoupled = target.config.model_transaction_policy.decoupled
    for sample in samples:
        for _ in range(sample.count):
            errors = sample.execute_errors or await _run(target, instance, sample, decoupled)
            if errors:
                raise InvalidArgument(
                    f"failed to run warmup sample '{sample.name}': "
                    + "".join(f"{error}; " for error in errors)
                )


def build_samples(target: WarmupTarget, instance_name: str) -> list[WarmupSample]:
    """Every sample with a batch size, its requests built and checked (Triton builds all
    of them before running the first)."""
    config = target.config
    rng = np.random.default_rng()  # each instance warms up with its own random data
    samples = []
    for setting in config.model_warmup:
        if setting.batch_size == 0:
            continue  # Triton skips it
        _check_dims(setting)
        try:
            inputs = _sample_inputs(target, setting, rng)
        except _RunError as exc:
            inputs, errors = {}, [exc.message] * setting.batch_size
        else:
            errors = _batch_errors(config, instance_name, setting.batch_size)
        requests = [dict(inputs) for _ in range(setting.batch_size)]
        samples.append(WarmupSample(setting.name, max(setting.count, 1), requests, errors))
    return samples


def _check_dims(setting: Any) -> None:
    for name, spec in setting.inputs.items():
        if any(dim < 0 for dim in spec.dims):
            raise InvalidArgument(
                "warmup setting expects all variable-size dimensions are specified for "
                f"input '{name}'"
            )


def _batch_errors(config: Any, instance_name: str, batch_size: int) -> list[str]:
    """What the backend answers each request of a batch larger than ``max_batch_size``."""
    if config.max_batch_size <= 0 or batch_size <= config.max_batch_size:
        return []
    error = f"batch size {batch_size} for '{instance_name}', max allowed is {config.max_batch_size}"
    return [error] * batch_size


def _sample_inputs(
    target: WarmupTarget, setting: Any, rng: np.random.Generator
) -> dict[str, Tensor]:
    """One request's inputs, checked as Triton checks a request (the model's own inputs;
    other names are passed on unchecked, as Triton's override inputs are)."""
    batching = target.config.max_batch_size != 0
    random_bytes = _random_buffer(setting, rng)
    inputs = {}
    for name, spec in setting.inputs.items():
        datatype = _datatype(name, spec)
        shape = ((1,) if batching else ()) + tuple(spec.dims)
        data = _input_data(target, name, spec, datatype, shape, random_bytes)
        inputs[name] = Tensor(name, datatype, data)
    # Triton names the inputs of a failed check in sorted order
    known = {n: inputs[n] for n in sorted(inputs) if n in target.signature.inputs}
    validate_request(InferenceRequest(target.config.name, known), target.signature)
    return inputs


def _random_buffer(setting: Any, rng: np.random.Generator) -> bytes:
    """One buffer for every ``random_data`` input of a sample, each reading its start."""
    size = 0
    for name, spec in setting.inputs.items():
        datatype = _datatype(name, spec)
        if spec.WhichOneof("input_data_type") == "random_data" and datatype != "BYTES":
            size = max(size, prod(spec.dims) * NUMPY_DTYPES[datatype].itemsize)
    return rng.bytes(size)


def _datatype(name: str, spec: Any) -> str:
    datatype = wire_datatype(spec.data_type)
    if datatype not in NUMPY_DTYPES:
        raise InvalidArgument(f"warmup setting expects input '{name}' to have a data_type")
    return datatype


def _input_data(
    target: WarmupTarget,
    name: str,
    spec: Any,
    datatype: str,
    shape: tuple[int, ...],
    random_bytes: bytes,
) -> np.ndarray:
    kind = spec.WhichOneof("input_data_type")
    count = prod(shape)
    if datatype == "BYTES" and kind in ("zero_data", "random_data"):
        return np.full(shape, b"", dtype=np.object_)  # Triton sends zero lengths: ""
    dtype = NUMPY_DTYPES[datatype]
    if kind == "zero_data":
        return np.zeros(shape, dtype=dtype)
    if kind == "random_data":
        return np.frombuffer(random_bytes, dtype=dtype, count=count).reshape(shape)
    if kind == "input_data_file":
        content = _read_file(target.model_dir, spec.input_data_file)
        if datatype == "BYTES":
            return _bytes_from_file(target, name, content, shape)
        needed = count * dtype.itemsize
        if len(content) < needed:
            raise InvalidArgument(
                f"{_NO_ID}warmup setting expects {needed} bytes, but the data provided from "
                f"{spec.input_data_file}only has {len(content)} bytes"
            )
        return np.frombuffer(content, dtype=dtype, count=count).reshape(shape)
    raise InvalidArgument(
        f"{_NO_ID}warmup setting expects input '{name}' to have input_data_type set"
    )


def _read_file(model_dir: Path, filename: str) -> bytes:
    path = model_dir / WARMUP_FOLDER / filename
    try:
        return path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or os.strerror(exc.errno or 0)
        raise Internal(f"failed to open text file for read {path}: {reason}") from None


def _bytes_from_file(
    target: WarmupTarget, name: str, content: bytes, shape: tuple[int, ...]
) -> np.ndarray:
    """A BYTES input from a file in Triton's length-prefixed layout (the whole file)."""
    try:
        return decode_bytes_input(
            memoryview(content),
            shape,
            prod(shape),
            name=name,
            model=target.config.name,
            prefix=_NO_ID,
        )
    except InvalidArgument as exc:
        if not exc.message.startswith("incomplete string data"):
            raise
        # Triton finds it only when the backend reads the input: the sample fails to run.
        raise _RunError(exc.message) from None


class _RunError(InvalidArgument):
    """An input only the backend rejects: reported as the sample's execution error."""


async def _run(
    target: WarmupTarget, instance: ModelInstance, sample: WarmupSample, decoupled: bool
) -> list[str]:
    """Execute the sample's batch once; the error message of each failed request."""
    requests = [
        InferenceRequest(target.config.name, inputs, model_version=target.version)
        for inputs in sample.requests
    ]
    loop = asyncio.get_running_loop()
    started = time.perf_counter_ns()
    if decoupled:
        streams = [request.bind_stream(loop) for request in requests]
        waits = [_drain(stream) for stream in streams]
    else:
        futures = [request.bind(loop) for request in requests]
        waits = [_outcome(future) for future in futures]
    for request in requests:
        request.enqueued_ns = started
    called = time.perf_counter_ns()
    await execute_batch(instance, requests, target.config.name, decoupled)
    executed = time.perf_counter_ns()
    errors = [error for error in await asyncio.gather(*waits) if error is not None]
    _count(target.statistics, requests, called - started, executed - called, errors)
    return errors


async def _outcome(future: asyncio.Future[Any]) -> str | None:
    try:
        await future
    except KernelError as exc:
        return exc.message
    return None


async def _drain(stream: Any) -> str | None:
    """Consume a decoupled request's responses; its errors joined, or None."""
    errors = []
    try:
        async for response in stream:
            if response.error is not None:
                errors.append(response.error.message)
    except KernelError as exc:
        errors.append(exc.message)
    return "; ".join(errors) if errors else None


def _count(
    statistics: ModelStatistics,
    requests: Sequence[InferenceRequest],
    queue_ns: int,
    infer_ns: int,
    errors: list[str],
) -> None:
    """Triton counts warmup executions as it counts any other."""
    for _ in requests:
        statistics.queued(queue_ns)
    if not errors:
        statistics.executed(len(requests), len(requests), 0, infer_ns, 0)
    for request in requests:
        statistics.request_done(request.enqueued_ns, not errors)
