"""The worker process of one Python-model instance (Triton's "stub").

Started by the server as ``python stub.py <fd>,<side fd> <dir>`` with its ends of two
socket pairs, or forked from the warm worker template (``zygote.py``), which calls
``serve``. The main thread reads the main socket itself (execute and lifecycle
messages: no hand-off between threads on the way to ``execute``) and runs them in
order; a side thread reads the side socket, whose messages must arrive while
``execute`` runs: cancellations, the responses of BLS requests, metric replies.
Everything the worker sends goes back on the main socket.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import inspect
import itertools
import json
import logging
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import ipc
import triton_python_backend_utils as pb_utils

#: Allocations between young-generation collections: a few per batch rather than one
#: every couple of requests (the server's ``kernel/cli.py`` sets the same).
GC_THRESHOLDS = (20_000, 50, 100)


class Worker:
    """Holds the model object and answers the server's messages."""

    def __init__(self, sock: socket.socket, side: socket.socket) -> None:
        self.sock = sock
        self.side = side
        #: Reentrant: a Metric freed by the garbage collector during a send releases itself.
        self.send_lock = threading.RLock()
        self.model_class: Any = None
        self.model: Any = None
        self.decoupled = False
        #: key -> the request object, so a cancellation can reach it (a decoupled
        #: model's request stays until its FINAL flag is sent).
        self.pending: dict[int, pb_utils.InferenceRequest] = {}
        #: Keys cancelled by the server, perhaps before their batch was read.
        self.cancelled: set[int] = set()
        self.loop = asyncio.new_event_loop()
        self.bls = BlsClient(self.send)
        self.metrics = MetricsClient(self.send)
        pb_utils._set_metrics_channel(self.metrics)  # custom metrics work from the start

    def send(self, message: Any) -> None:
        with self.send_lock:
            ipc.send_blocking(self.sock, message)

    def read_side(self) -> None:
        """The side thread: deliver what must not wait for ``execute`` to return."""
        while True:
            try:
                message = ipc.receive_blocking(self.side)
            except OSError:
                message = None
            if message is None:  # the server closed the worker: wake every waiting caller
                self.bls.close()
                self.metrics.close()
                return
            kind = message[0]
            if kind == "bls":  # straight to its caller, which may be blocked in execute
                self.bls.deliver(*message[1:])
            elif kind == "metric_reply":  # likewise
                self.metrics.deliver(*message[1:])
            elif kind == "cancel":
                self.cancelled.add(message[1])  # before the lookup: make_request checks after
                request = self.pending.get(message[1])
                if request is not None:
                    request._cancelled = True

    def run(self) -> None:
        threading.Thread(target=self.read_side, daemon=True).start()
        poll_ns = 0  # after a batch the server asked to poll after: how long to poll
        while True:
            try:
                message = ipc.NOTHING
                if poll_ns:  # the server is idle but for us: the next batch comes soon
                    message = ipc.receive_polling(self.sock, time.perf_counter_ns() + poll_ns)
                if message is ipc.NOTHING:
                    message = ipc.receive_blocking(self.sock)
            except OSError:
                message = None
            if message is None:
                return
            kind = message[0]
            poll_ns = 0
            if kind == "execute":
                self.on_execute(message[1], message[2])
                # (a decoupled model's own threads may still be sending: leave them the GIL)
                poll_ns = 0 if self.decoupled else message[3]
                continue
            getattr(self, f"on_{kind}")(*message[1:])
            if kind == "finalize":
                return

    # --- lifecycle messages ----------------------------------------------------------

    def on_load(self, call: int, model_path: str) -> None:
        try:
            spec = importlib.util.spec_from_file_location("model", model_path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules["model"] = module
            spec.loader.exec_module(module)
            self.model_class = module.TritonPythonModel
        except BaseException as exc:
            self.reply_error(call, exc)
        else:
            self.send(("reply", call, None))

    def on_auto_complete(self, call: int, config: dict[str, Any]) -> None:
        hook = getattr(self.model_class, "auto_complete_config", None)
        try:
            if hook is not None:
                completed = hook(pb_utils.ModelConfig(config))
                config = completed.as_dict() if completed is not None else config
        except BaseException as exc:
            self.reply_error(call, exc)
        else:
            self.send(("reply", call, config))

    def on_initialize(self, call: int, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.metrics.label = args.get("model_instance_name", self.metrics.label)
        self.decoupled = bool(config.get("model_transaction_policy", {}).get("decoupled"))
        try:
            self.model = self.model_class()
            initialize = getattr(self.model, "initialize", None)
            if initialize is not None:
                self.wait(initialize(args))
        except BaseException as exc:
            self.reply_error(call, exc)
        else:
            pb_utils._set_bls_channel(self.bls)  # Triton: BLS once initialized, until finalize
            gc.freeze()  # the model stays: out of the collector's scans
            gc.set_threshold(*GC_THRESHOLDS)
            self.send(("reply", call, None))

    def on_finalize(self, call: int) -> None:
        pb_utils._set_bls_channel(None)
        finalize = getattr(self.model, "finalize", None)
        try:
            if finalize is not None:
                self.wait(finalize())
        except BaseException as exc:
            self.reply_error(call, exc)
        else:
            self.send(("reply", call, None))

    def reply_error(self, call: int, exc: BaseException) -> None:
        self.send(("reply_error", call, describe(exc)))

    def wait(self, result: Any) -> Any:
        """Run ``result`` to completion when a model method was ``async def``."""
        if type(result) is list or result is None:  # what nearly every execute returns
            return result
        if inspect.isawaitable(result):
            return self.loop.run_until_complete(result)
        return result

    # --- execution ---------------------------------------------------------------------

    def on_execute(self, batch: int, payloads: list[dict[str, Any]]) -> None:
        started = time.perf_counter_ns()  # the server's statistics: queue time ends here
        live = payloads
        if self.cancelled:  # cancelled while held here: dropped unrun, as from Triton's queue
            live = [payload for payload in payloads if payload["key"] not in self.cancelled]
        requests: list[Any] = []
        failed = True
        try:
            requests = [self.make_request(payload) for payload in live]
            responses = self.wait(self.model.execute(requests)) if requests else []
            failed = False
        except BaseException as exc:
            self.send(("batch_error", batch, describe(exc)))
        else:
            results = self.encode_responses(requests, responses)
            if live is not payloads and not self.decoupled:
                results = _with_cancelled(payloads, live, results)
            self.send(("batch_done", batch, results, started))
        finally:
            if failed or not self.decoupled:
                for payload in payloads:
                    self.forget(payload["key"])
            self.forget_stale(payloads[0]["key"] if payloads else 0)

    def forget(self, key: int) -> None:
        self.pending.pop(key, None)
        self.cancelled.discard(key)

    def forget_stale(self, first: int) -> None:
        """Drop cancellations that came after their request was done (keys only grow)."""
        for key in list(self.cancelled):
            if key < first and key not in self.pending:
                self.cancelled.discard(key)

    def make_request(self, payload: dict[str, Any]) -> pb_utils.InferenceRequest:
        inputs = [input_tensor(name, value) for name, value in payload["inputs"]]
        request = pb_utils.InferenceRequest(
            request_id=payload["id"],
            correlation_id=payload["correlation_id"],
            inputs=inputs,
            requested_output_names=payload["outputs"],
            model_name=payload["model_name"],
            model_version=payload["model_version"],
            flags=payload["flags"],
            timeout=payload["timeout"],
            parameters=payload["parameters"],
        )
        key = payload["key"]
        self.pending[key] = request
        if key in self.cancelled:  # cancelled while its batch waited in the socket
            request._cancelled = True
        if self.decoupled:
            request._sender = pb_utils.InferenceResponseSender(
                lambda response, flags: self.send_response(key, response, flags),
                request.is_cancelled,
            )
        return request

    def send_response(self, key: int, response: Any, flags: int) -> None:
        if flags & pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self.forget(key)
        self.send(("send", key, encode_response(response), flags))

    def encode_responses(self, requests: list[Any], responses: Any) -> list[Any]:
        if self.decoupled:
            return []
        if not isinstance(responses, (list, tuple)) or len(responses) != len(requests):
            count = len(responses) if isinstance(responses, (list, tuple)) else "no list of"
            message = (
                f"Number of InferenceResponse objects do not match the number of "
                f"InferenceRequest objects. InferenceRequest(s) size is:{len(requests)}, "
                f"and InferenceResponse(s) size is:{count}\n"
            )
            return [("error", "INTERNAL", message)] * len(requests)
        return [encode_response(response) for response in responses]


class BlsClient:
    """The worker's end of BLS: requests go to the server, responses back to their caller.

    The server answers ``("infer", call, payload, decoupled)`` with one
    ``("bls", call, result, last)`` per response; the reader thread delivers them, so
    a caller blocked in ``execute`` (or awaiting in its event loop) gets them at once.
    """

    def __init__(self, send: Any) -> None:
        self._send = send
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._calls: dict[int, pb_utils.BlsCall] = {}
        self._closed = False

    def submit(self, payload: dict[str, Any], decoupled: bool) -> pb_utils.BlsCall:
        call_id = next(self._ids)
        call = pb_utils.BlsCall(lambda: self._cancel(call_id))
        with self._lock:
            if self._closed:
                raise pb_utils.TritonModelException("the server closed the worker's channel")
            self._calls[call_id] = call
        try:
            self._send(("infer", call_id, payload, decoupled))
        except BaseException:
            with self._lock:
                self._calls.pop(call_id, None)
            raise
        return call

    def deliver(self, call_id: int, result: Any, last: bool) -> None:
        with self._lock:
            call = self._calls.pop(call_id, None) if last else self._calls.get(call_id)
        if call is not None:
            call.put(decode_response(result), last)

    def _cancel(self, call_id: int) -> None:
        with self._lock:
            if call_id not in self._calls:
                return
        self._send(("bls_cancel", call_id))

    def close(self) -> None:
        """The server is gone: end every call in flight, so that no caller waits forever."""
        with self._lock:
            self._closed = True
            calls, self._calls = list(self._calls.values()), {}
        for call in calls:
            error = pb_utils.TritonError("the server closed the worker's channel")
            call.put(pb_utils.InferenceResponse(error=error), True)


class MetricsClient:
    """The worker's end of custom metrics (``pb_utils.MetricFamily``): requests to the
    server's registry, answered on the reader thread like BLS responses."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._calls: dict[int, list[Any]] = {}  # id -> [event, reply]
        self._closed = False
        self.label = ""

    def call(self, op: str, *args: Any) -> tuple[str, Any]:
        call_id, waiter = next(self._ids), [threading.Event(), None]
        with self._lock:
            if self._closed:
                return ("error", "the server closed the worker's channel")
            self._calls[call_id] = waiter
        try:
            self._send(("metric", call_id, op, args))
        except BaseException:
            with self._lock:
                self._calls.pop(call_id, None)
            raise
        waiter[0].wait()
        return waiter[1]

    def post(self, op: str, *args: Any) -> None:
        if not self._closed:
            self._send(("metric", None, op, args))

    def deliver(self, call_id: int, reply: tuple[str, Any]) -> None:
        with self._lock:
            waiter = self._calls.pop(call_id, None)
        if waiter is not None:
            waiter[1] = reply
            waiter[0].set()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            waiters, self._calls = list(self._calls.values()), {}
        for waiter in waiters:
            waiter[1] = ("error", "the server closed the worker's channel")
            waiter[0].set()


def _with_cancelled(payloads: list[Any], live: list[Any], results: list[Any]) -> list[Any]:
    """The batch's results in order: the live requests' and a cancellation for the rest."""
    by_key = {payload["key"]: result for payload, result in zip(live, results, strict=True)}
    cancelled = ("error", "CANCELLED", "Request was cancelled")
    return [by_key.get(payload["key"], cancelled) for payload in payloads]


def decode_response(result: Any) -> pb_utils.InferenceResponse:
    """The inverse of ``encode_response``, for the responses of BLS requests."""
    if result[0] == "error":
        _, code, message = result
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, _CODES.get(code, 1)))
    _, outputs, parameters = result
    tensors = [pb_utils.Tensor(name, array) for name, array in outputs]
    return pb_utils.InferenceResponse(tensors, parameters=parameters)


_CODES = {name: number for number, name in pb_utils.TritonError.CODE_NAMES.items()}


def encode_response(response: Any) -> Any:
    """A response as the server reads it: ("ok", outputs, parameters) or ("error", code, text)."""
    if response is None:
        return None
    if not isinstance(response, pb_utils.InferenceResponse):
        return (
            "error",
            "INTERNAL",
            f"Expected an InferenceResponse, got {type(response).__name__}",
        )
    error = response.error()
    if error is not None:
        code = pb_utils.TritonError.CODE_NAMES.get(error.code(), "INTERNAL")
        return ("error", code, error.message())
    outputs = [(t.name(), t._host_array()) for t in response.output_tensors()]
    if not response._parameters:  # (most responses: no JSON round trip)
        return ("ok", outputs, {})
    return ("ok", outputs, json.loads(response.parameters()))


def input_tensor(name: str, value: Any) -> pb_utils.Tensor:
    """An input as the model sees it: a numpy array, or (``FORCE_CPU_ONLY_INPUT_TENSORS:
    no``) a GPU tensor over the client's CUDA shared memory, mapped through CUDA IPC."""
    if isinstance(value, tuple):
        return pb_utils.Tensor._from_cuda_ipc(name, value)
    return pb_utils.Tensor(name, value)


def describe(exc: BaseException) -> str:
    """An exception as Triton's stub reports it: type, message and the model's frames."""
    frames = traceback.extract_tb(exc.__traceback__)
    lines = [f"  {frame.filename}({frame.lineno}): {frame.name}" for frame in frames[1:]]
    text = f"{type(exc).__name__}: {exc}"
    if lines:
        text += "\n\nAt:\n" + "\n".join(reversed(lines)) + "\n"
    return text


class ServerLog(logging.Handler):
    """Sends ``pb_utils.Logger`` lines to the server, which writes them to its own log."""

    def __init__(self, send: Any) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._send(("log", record.levelno, record.getMessage(), record.pathname, record.lineno))
        except OSError:
            pass  # the server is gone: nobody reads the log


def _die_with_parent() -> None:
    """Ask Linux to kill this worker if the server dies without stopping it (no orphans)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main() -> None:
    serve([int(fd) for fd in sys.argv[1].split(",")], sys.argv[2])


def serve(fds: list[int], model_dir: str) -> None:
    """Be the worker on sockets ``fds`` (main, side): from ``main`` (a fresh interpreter)
    or in a child forked by the worker template (``zygote.py``), which imported this
    module already."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when a worker stops
    _die_with_parent()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname).1s %(name)s] %(message)s"
    )
    sock, side = (socket.socket(fileno=fd) for fd in fds)
    sock.setblocking(True)
    side.setblocking(True)
    sys.path.insert(0, str(Path(model_dir).resolve()))  # the model's own modules
    worker = Worker(sock, side)
    model_log = logging.getLogger("triton_python_backend")  # pb_utils.Logger
    model_log.addHandler(ServerLog(worker.send))
    model_log.setLevel(logging.DEBUG)  # the server's log settings decide what is written
    model_log.propagate = False
    worker.run()


if __name__ == "__main__":
    main()
