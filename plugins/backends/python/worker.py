"""The server's handle on one worker process: spawn it, call it, send it batches, stop it."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from triton_kernel.kernel.datatypes import NUMPY_DTYPES, datatype_of
from triton_kernel.kernel.errors import Internal, KernelError, Unavailable, Unsupported
from triton_kernel.kernel.load import LOAD
from triton_kernel.kernel.metrics import MetricKind
from triton_kernel.kernel.request import InferenceRequest, InferenceResponse
from triton_kernel.kernel.shared_memory import cuda_buffer
from triton_kernel.kernel.tensor import Tensor

from . import bls, ipc
from .zygote import WorkerTemplate

log = logging.getLogger(__name__)
#: Where the lines of Python models go (``kernel.logsettings`` gates its verbose lines).
_MODEL_LOG = logging.getLogger("triton_python_backend")

#: Called when a batch is done, with the ``perf_counter_ns`` at which the worker started it.
_OnDone = Callable[[int | None], None]

#: What the server's poll for an answer allows beyond twice the usual turnaround.
_POLL_MARGIN_NS = 50_000

STUB = Path(__file__).resolve().parent / "stub.py"
#: ``TRITONSERVER_RESPONSE_COMPLETE_FINAL``.
RESPONSE_COMPLETE_FINAL = 1


class WorkerProcess:
    """A running stub process and what is in flight on its channel."""

    def __init__(self, label: str, process: asyncio.subprocess.Process, server: Any = None) -> None:
        self.label = label
        #: Busy polling at light load, in ns (``--backend-config=python,busy-poll-us=N``):
        #: how long the worker polls for its next batch, and at most how long the server
        #: polls for a batch's answer, instead of sleeping (0: never).
        self.poll_ns = 0
        #: A running average of how long a batch takes from send to answer.
        self._turnaround_ns = 0
        self.process = process
        #: The in-process ``Server`` that runs the model's BLS requests.
        self.server = server
        #: BLS requests of the model in flight, by the worker's call id.
        self._bls: dict[int, asyncio.Task[None]] = {}
        self._calls: dict[int, asyncio.Future[Any]] = {}
        #: Batches in flight: their requests, what to call when they are done, and when
        #: they were sent.
        self._batches: dict[int, tuple[Sequence[InferenceRequest], _OnDone, int]] = {}
        #: Requests of a decoupled model by key, until their FINAL flag arrives.
        self._open: dict[int, InferenceRequest] = {}
        self._ids = itertools.count()
        #: Execute and lifecycle messages, and everything the worker sends back.
        self._channel: ipc.AsyncChannel | None = None
        #: Messages the worker must see while ``execute`` runs (cancellations, BLS
        #: responses, metric replies): read by its side thread.
        self._side: ipc.AsyncChannel | None = None
        self.closed = asyncio.get_running_loop().create_future()

    @classmethod
    async def spawn(
        cls,
        label: str,
        version_dir: Path,
        server: Any = None,
        template: WorkerTemplate | None = None,
    ) -> WorkerProcess:
        """Start a worker: forked from ``template`` when given, else a fresh interpreter."""
        server_end, worker_end = ipc.socket_pair()
        side_server_end, side_worker_end = ipc.socket_pair()
        worker_ends = (worker_end, side_worker_end)
        try:
            process = await _start_process(label, version_dir, worker_ends, template)
        except BaseException:
            server_end.close()
            side_server_end.close()
            raise
        finally:
            for end in worker_ends:
                end.close()
        worker = cls(label, process, server)
        loop = asyncio.get_running_loop()
        worker._channel = ipc.AsyncChannel(server_end, loop, worker._on_message, worker._on_closed)
        worker._side = ipc.AsyncChannel(side_server_end, loop, worker._on_message, _ignore)
        return worker

    # --- calls ---------------------------------------------------------------------------

    async def call(self, kind: str, *args: Any) -> Any:
        """Send a lifecycle message and await its reply (raises the worker's error)."""
        call = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._calls[call] = future
        self._send((kind, call, *args))
        return await future

    def submit(
        self,
        requests: Sequence[InferenceRequest],
        payloads: list[dict],
        on_done: _OnDone,
        decoupled: bool = True,
    ) -> None:
        """Send one batch; ``on_done`` is called once the worker reported it done (each
        request answered or failed by then), or the worker died: with the
        ``perf_counter_ns`` at which the worker started it, when it did. The requests of
        a ``decoupled`` model stay open after that, until their final response."""
        batch = next(self._ids)
        sent = time.perf_counter_ns()
        self._batches[batch] = (requests, on_done, sent)
        if decoupled:
            for request, payload in zip(requests, payloads, strict=True):
                self._open[payload["key"]] = request
        poll_ns = self.poll_ns if LOAD.alone else 0
        try:
            self._send(("execute", batch, payloads, poll_ns))
        except BaseException:
            self._batches.pop(batch, None)
            for payload in payloads:
                self._open.pop(payload["key"], None)
            raise
        if poll_ns and self._turnaround_ns < poll_ns and self._channel is not None:
            # Nothing else in flight: wait for the answer awake (a short model answers
            # well before a sleeping process would be woken) rather than in the loop.
            self._channel.poll(sent + min(poll_ns, 2 * self._turnaround_ns + _POLL_MARGIN_NS))

    def cancel(self, key: int) -> None:
        if not self.closed.done():
            self._send(("cancel", key), side=True)

    def _send(self, message: Any, side: bool = False) -> None:
        channel = self._side if side else self._channel
        if channel is None or self.closed.done():
            raise Unavailable(f"the Python worker of '{self.label}' is not running")
        try:
            channel.send(message)
        except ConnectionError:
            raise Unavailable(f"the Python worker of '{self.label}' is not running") from None

    # --- messages from the worker ------------------------------------------------------------

    def _on_message(self, message: Any) -> None:
        kind = message[0]
        if kind == "batch_done":  # first: one per inference
            requests, on_done, sent = self._batches.pop(message[1])
            took = time.perf_counter_ns() - sent
            self._turnaround_ns = (3 * self._turnaround_ns + took) // 4
            for request, result in zip(requests, message[2], strict=False):
                deliver(request, result)
            if self._open:
                self._forget_answered()
            on_done(message[3])
        elif kind == "reply":
            _resolve(self._calls.pop(message[1], None), message[2])
        elif kind == "reply_error":
            _reject(self._calls.pop(message[1], None), Internal(message[2]))
        elif kind == "send":
            self._on_send(message[1], message[2], message[3])
        elif kind == "infer":
            self._on_infer(message[1], message[2], message[3])
        elif kind == "log":
            _model_log(*message[1:])
        elif kind == "metric":
            self._on_metric(message[1], message[2], message[3])
        elif kind == "bls_cancel":
            task = self._bls.get(message[1])
            if task is not None:
                task.cancel()
        elif kind == "batch_error":
            requests, on_done, _sent = self._batches.pop(message[1])
            error = Internal(
                f"Failed to process the request(s) for model '{self.label}', message: {message[2]}"
            )
            log.error("%s", error.message)  # Triton logs it: a decoupled model's may reach no one
            for request in requests:
                request.fail(error)
            self._forget_answered()
            on_done(None)
        else:
            log.warning("unexpected message %r from the worker of '%s'", kind, self.label)

    def _on_send(self, key: int, result: Any, flags: int) -> None:
        """A decoupled model's ``sender.send(response, flags)``."""
        request = self._open.get(key)
        if request is None:
            return  # cancelled, or already final: nobody is waiting
        final = bool(flags & RESPONSE_COMPLETE_FINAL)
        if final:
            del self._open[key]
        if result is None:
            request.send(None, final=final)
        elif result[0] == "error":
            request.send(_error_response(request, result[1], result[2]), final=final)
        else:
            request.send(_response(request, result), final=final)

    def _on_infer(self, call: int, payload: dict[str, Any], decoupled: bool) -> None:
        """A BLS request of the model: run it on the server, answer each response."""
        task = asyncio.create_task(self._run_bls(call, payload, decoupled))
        self._bls[call] = task
        task.add_done_callback(lambda _: self._bls.pop(call, None))

    async def _run_bls(self, call: int, payload: dict[str, Any], decoupled: bool) -> None:
        replies = bls.run(self.server, payload, decoupled)
        try:
            async for result, last in replies:
                self._reply_bls(call, result, last)
        except asyncio.CancelledError:  # the model cancelled it: its iterator still ends
            self._reply_bls(call, ("error", "CANCELLED", "Request was cancelled"), True)
            raise
        finally:
            await replies.aclose()  # type: ignore[attr-defined]

    def _reply_bls(self, call: int, result: Any, last: bool) -> None:
        if not self.closed.done():
            try:
                self._send(("bls", call, result, last), side=True)
            except Unavailable:
                pass  # the worker is gone: nobody waits for the answer

    def _on_metric(self, call: int | None, op: str, args: tuple[Any, ...]) -> None:
        """A custom-metric request of the model; ``call`` None: no reply is awaited."""
        try:
            reply: tuple[str, Any] = ("ok", _metric_operation(self, op, args))
        except KernelError as exc:
            reply = ("error", exc.message)
        except Exception as exc:  # a malformed request: answer it, or the model waits forever
            log.exception("metric request %s of '%s' failed", op, self.label)
            reply = ("error", f"metric request '{op}' failed: {exc}")
        if call is not None:
            self._send(("metric_reply", call, reply), side=True)
        elif reply[0] == "error":  # the worker checked it first: a bug if it fails here
            log.warning("metric %s of '%s' failed: %s", op, self.label, reply[1])

    def _forget_answered(self) -> None:
        """Drop the requests that are done (answered, failed or abandoned by their caller)."""
        for key in [key for key, request in self._open.items() if request.done]:
            del self._open[key]

    def _on_closed(self) -> None:
        """The worker's socket closed: fail whatever it held."""
        error = Unavailable(f"Stub process '{self.label}' is not healthy: it exited unexpectedly")
        for future in self._calls.values():
            _reject(future, error)
        self._calls.clear()
        batches, self._batches = list(self._batches.values()), {}
        for requests, on_done, _sent in batches:
            for request in requests:
                request.fail(error)
            on_done(None)
        for request in self._open.values():
            request.fail(error)
        self._open.clear()
        for task in self._bls.values():
            task.cancel()
        if self.server is not None:  # its custom metrics go with it, as in Triton
            self.server.metrics().custom.release_owner(self)
        _resolve(self.closed, None)

    # --- stopping ------------------------------------------------------------------------------

    async def stop(self, timeout: float = 5.0) -> None:
        """Finalize the model in the worker, then make sure the process is gone."""
        if not self.closed.done():
            try:
                await asyncio.wait_for(self.call("finalize"), timeout)
            except (KernelError, asyncio.TimeoutError) as exc:
                log.warning("finalize of '%s' did not complete: %s", self.label, exc)
        await self.kill(timeout)

    async def kill(self, timeout: float = 5.0) -> None:
        """Close the channels (the worker exits on end-of-file), then reap the process."""
        for channel in (self._side, self._channel):
            if channel is not None:
                channel.close()
        if self.process.returncode is None:
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()


async def _start_process(
    label: str,
    version_dir: Path,
    worker_ends: Sequence[socket.socket],
    template: WorkerTemplate | None,
) -> Any:
    """The worker's process (the caller closes ``worker_ends`` afterwards)."""
    if template is not None:
        return await template.fork(worker_ends, version_dir, label)
    fds = [end.fileno() for end in worker_ends]
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            str(STUB),
            ",".join(map(str, fds)),
            str(version_dir),
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
        )
    except OSError as exc:
        raise Unavailable(f"unable to start the Python worker for '{label}': {exc}") from None


def deliver(request: InferenceRequest, result: Any) -> None:
    """Answer ``request`` with the worker's encoded response."""
    if result is None:
        request.fail(Internal("the model returned None instead of an InferenceResponse"))
    elif result[0] == "error":
        request.fail(KernelError.from_code(result[1], result[2]))
    else:
        request.respond(_response(request, result))


def _response(request: InferenceRequest, result: Any) -> InferenceResponse:
    _kind, outputs, parameters = result
    tensors = [Tensor(name, datatype_of(array), array) for name, array in outputs]
    return InferenceResponse(request.model_name, "", outputs=tensors, parameters=parameters)


def _error_response(request: InferenceRequest, code: str, message: str) -> InferenceResponse:
    """A decoupled model's error response: carried in-stream, as Triton carries it."""
    response = InferenceResponse(request.model_name, "")
    response.error = KernelError.from_code(code, message)
    return response


def _model_log(level: int, message: str, path: str, line: int) -> None:
    """A ``pb_utils.Logger`` line, written as the model's own ``file:line`` (as Triton does)."""
    if _MODEL_LOG.isEnabledFor(level):
        record = _MODEL_LOG.makeRecord(_MODEL_LOG.name, level, path, line, message, (), None)
        _MODEL_LOG.handle(record)


def _metric_operation(worker: WorkerProcess, op: str, args: tuple[Any, ...]) -> Any:
    """Apply one ``pb_utils.MetricFamily``/``Metric`` request to the server's registry."""
    if worker.server is None:
        raise Unavailable("custom metrics need the server's metric registry")
    registry = worker.server.metrics().custom
    if op == "family":
        name, description, kind = args
        return registry.create_family(name, description, MetricKind[kind])
    if op == "metric":
        family, labels_json, buckets = args
        return registry.create_metric(worker, family, labels_json, buckets)
    if op == "release":
        return registry.release(args[0], worker)
    if op in ("increment", "set", "observe", "value"):
        return getattr(registry, op)(*args)
    raise Internal(f"unknown metric request '{op}'")


def _ignore() -> None:
    """The side channel closing: the main channel's closing does the work."""


def _resolve(future: asyncio.Future[Any] | None, value: Any) -> None:
    if future is not None and not future.done():
        future.set_result(value)


def _reject(future: asyncio.Future[Any] | None, error: BaseException) -> None:
    if future is not None and not future.done():
        future.set_exception(error)


# --- GPU inputs --------------------------------------------------------------------------------

#: Triton's model parameter that lets inputs lying on a GPU reach the model there.
FORCE_CPU_ONLY = "FORCE_CPU_ONLY_INPUT_TENSORS"


def gpu_input_tensors(config: Any) -> bool:
    """Whether the model takes GPU inputs as GPU tensors (``FORCE_CPU_ONLY_INPUT_TENSORS:
    no``); Triton's default, "yes", copies every input to host memory first."""
    if FORCE_CPU_ONLY not in config.parameters:
        return False
    value = config.parameters[FORCE_CPU_ONLY].string_value
    if value == "yes":
        log.info("Forcing CPU only input tensors.")
        return False
    if value == "no":
        log.info("Input tensors can be both in CPU and GPU. FORCE_CPU_ONLY_INPUT_TENSORS is off.")
        return True
    raise Unsupported(f"Incorrect value for FORCE_CPU_ONLY_INPUT_TENSORS: {value}'")


def payload_inputs(request: InferenceRequest, gpu: bool) -> list[tuple[str, Any]]:
    """The request's inputs for the worker: arrays in host memory; with ``gpu``, an input
    lying in CUDA shared memory goes as what the worker needs to map it (no copy)."""
    if not gpu:
        return [(name, tensor.data) for name, tensor in request.inputs.items()]
    return [(name, _gpu_input(tensor)) for name, tensor in request.inputs.items()]


def _gpu_input(tensor: Tensor) -> Any:
    """``("cuda_ipc", handle, device, offset, dtype, shape)`` for a tensor in CUDA shared
    memory (BYTES stay on the CPU, as in Triton), else its host array."""
    buffer = cuda_buffer(tensor)
    if buffer is None or not buffer.handle or tensor.datatype == "BYTES":
        return tensor.data
    dtype = np.dtype(NUMPY_DTYPES[tensor.datatype]).str
    return ("cuda_ipc", buffer.handle, buffer.device_id, buffer.offset, dtype, tensor.shape)
