"""The Python backend plugin: Triton ``model.py`` models, one worker process per instance."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf import json_format

from triton_kernel.kernel.backend import InstanceSpec, ModelContext
from triton_kernel.kernel.config import ModelConfig, config_to_json
from triton_kernel.kernel.errors import InvalidArgument, KernelError, Unavailable
from triton_kernel.kernel.hookspecs import hookimpl
from triton_kernel.kernel.request import InferenceRequest

from .gather import gather, gather_option
from .worker import WorkerProcess, gpu_input_tensors, payload_inputs
from .zygote import WorkerTemplate

log = logging.getLogger(__name__)

#: How long a crashed worker waits before its restart, doubling up to the maximum.
RESTART_DELAY = 0.1
RESTART_DELAY_MAX = 10.0


@hookimpl
def tk_backend_create(name: str, settings: dict[str, str]) -> PythonBackend | None:
    return PythonBackend(settings) if name == "python" else None


class PythonBackend:
    name = "python"

    def __init__(self, settings: dict[str, str]) -> None:
        self.settings = settings
        #: Workers fork from a warm template unless ``--backend-config=python,fork-workers=false``.
        fork = settings.get("fork-workers", "true").strip().lower() not in ("false", "0", "no")
        self.template = WorkerTemplate() if fork else None
        self.poll_ns = busy_poll_ns(settings)

    async def load_model(self, context: ModelContext) -> PythonModel:
        filename = context.config.default_model_filename or "model.py"
        model_path = context.version_dir / filename
        if not model_path.is_file():
            raise Unavailable(
                f"unable to find '{model_path}' for model '{context.name}' "
                f"version {context.version}"
            )
        worker = await WorkerProcess.spawn(
            f"{context.name}_{context.version}", context.version_dir, context.server, self.template
        )
        try:
            await worker.call("load", str(model_path))
            config = context.config
            if context.auto_complete:
                config = await _auto_complete(worker, config)
            gpu_inputs = gpu_input_tensors(config)  # a bad value fails the load
            gathering = gather_option(config)
        except BaseException:
            await worker.kill(0)
            raise
        model = PythonModel(context, config, model_path, worker, self.template)
        model.poll_ns = self.poll_ns
        model.gpu_inputs = gpu_inputs
        model.gather_requests = gathering
        return model

    async def finalize(self) -> None:
        if self.template is not None:  # after every model: its workers are its children
            await self.template.stop()


#: ``--backend-config=python,busy-poll-us=N``: while a single request is in flight, a
#: worker polls this long for its next batch, and the server at most this long for an
#: answer, instead of sleeping (a wake-up costs more than a small model's whole run).
#: 0 turns it off; an idle server never polls.
DEFAULT_BUSY_POLL_US = 1000


def busy_poll_ns(settings: dict[str, str]) -> int:
    text = settings.get("busy-poll-us", str(DEFAULT_BUSY_POLL_US)).strip()
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 1_000_000:
        raise InvalidArgument(
            f"busy-poll-us of the python backend must be a number of microseconds from 0 "
            f"to 1000000, got '{text}'"
        )
    return value * 1000


async def _auto_complete(worker: WorkerProcess, config: Any) -> Any:
    completed = await worker.call("auto_complete", config_to_json(config))
    try:
        return json_format.ParseDict(completed, ModelConfig())
    except json_format.ParseError as exc:
        raise InvalidArgument(
            f"auto_complete_config of model '{config.name}' produced an invalid "
            f"configuration: {exc}"
        ) from None


class PythonModel:
    """A loaded ``model.py``; the worker used for auto-complete becomes the first instance."""

    def __init__(
        self,
        context: ModelContext,
        config: Any,
        model_path: Any,
        worker: WorkerProcess,
        template: WorkerTemplate | None = None,
    ) -> None:
        self.context = context
        self.config = config
        self.decoupled = bool(config.model_transaction_policy.decoupled)
        self.model_path = model_path
        self._spare: WorkerProcess | None = worker
        #: ``FORCE_CPU_ONLY_INPUT_TENSORS: no``: inputs in CUDA shared memory stay there.
        self.gpu_inputs = False
        #: ``gather_requests``: each batch's same-shaped requests reach the model as one.
        self.gather_requests = False
        #: Where the other instances' workers (and restarted ones) fork from.
        self.template = template
        #: Busy polling at light load (``busy_poll_ns``).
        self.poll_ns = 0

    async def create_instance(self, spec: InstanceSpec) -> PythonInstance:
        worker, self._spare = self._spare, None
        instance = PythonInstance(self, spec)
        await instance.start(worker)
        return instance

    def initialize_args(self, spec: InstanceSpec) -> dict[str, str]:
        """The ``args`` dict Triton passes to ``initialize`` (all strings)."""
        return {
            "model_config": json.dumps(config_to_json(self.config)),
            "model_instance_kind": spec.kind.removeprefix("KIND_"),
            "model_instance_name": spec.name,
            "model_instance_device_id": str(spec.device_id),
            "model_repository": str(self.context.model_dir),
            "model_version": str(self.context.version),
            "model_name": self.context.name,
        }

    async def finalize(self) -> None:
        if self._spare is not None:
            await self._spare.kill(0)
            self._spare = None


class PythonInstance:
    """One instance: its worker process, restarted when it dies."""

    _keys = itertools.count()
    #: The worker runs one batch at a time; holding the next ones in its socket saves a
    #: round trip between batches, and under load lets the worker run on instead of
    #: sleeping and being woken for each (the scheduler still prefers an idle instance;
    #: the worker reports when each batch really started, for the queue statistics).
    pipeline_depth = 4

    def __init__(self, model: PythonModel, spec: InstanceSpec) -> None:
        self.model = model
        self.spec = spec
        self.worker: WorkerProcess | None = None
        self._ready = asyncio.Event()
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None
        self._restart_delay = RESTART_DELAY

    async def start(self, worker: WorkerProcess | None = None) -> None:
        """Spawn (or adopt) a worker, load the model in it and call ``initialize``."""
        if worker is None:
            context = self.model.context
            worker = await WorkerProcess.spawn(
                self.spec.name, context.version_dir, context.server, self.model.template
            )
            try:
                await worker.call("load", str(self.model.model_path))
            except BaseException:
                await worker.kill(0)
                raise
        worker.label = self.spec.name
        try:
            await worker.call("initialize", self.model.initialize_args(self.spec))
        except BaseException:
            await worker.kill(0)
            raise
        worker.poll_ns = self.model.poll_ns
        self.worker = worker
        self._ready.set()
        self._watch = asyncio.create_task(self._watch_worker(worker))

    async def _watch_worker(self, worker: WorkerProcess) -> None:
        await worker.closed
        if self._stopping:
            return
        self._ready.clear()
        await worker.kill(1.0)
        log.error(
            "the Python worker of '%s' exited (code %s); restarting it",
            self.spec.name,
            worker.process.returncode,
        )
        while not self._stopping:
            await asyncio.sleep(self._restart_delay)
            try:
                await self.start()
            except KernelError as exc:
                self._restart_delay = min(self._restart_delay * 2, RESTART_DELAY_MAX)
                log.error("restarting the worker of '%s' failed: %s", self.spec.name, exc)
            else:
                self._restart_delay = RESTART_DELAY
                return

    async def execute(self, requests: Sequence[InferenceRequest]) -> None:
        await self._ready.wait()
        done = asyncio.get_running_loop().create_future()
        self.submit(requests, lambda _started: done.done() or done.set_result(None))
        await done

    def submit(
        self, requests: Sequence[InferenceRequest], on_done: Callable[[int | None], None]
    ) -> bool:
        """Send a batch to the worker now; ``on_done`` once it is done, with the
        ``perf_counter_ns`` at which the worker started it (None: unknown). False: no
        worker is ready (one is restarting), nothing was sent."""
        worker = self.worker
        if worker is None or not self._ready.is_set():
            return False
        if self.model.gather_requests:
            requests = gather(requests)
        gpu = self.model.gpu_inputs
        payloads = [_payload(request, next(self._keys), gpu) for request in requests]
        for request, payload in zip(requests, payloads, strict=True):
            request.on_cancel(lambda key=payload["key"]: worker.cancel(key))
        worker.submit(requests, payloads, on_done, self.model.decoupled)
        return True

    async def finalize(self) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
        if self.worker is not None:
            await self.worker.stop()


def _payload(request: InferenceRequest, key: int, gpu: bool = False) -> dict[str, Any]:
    """What the worker needs of a request to build its ``pb_utils.InferenceRequest``."""
    return {
        "key": key,
        "id": request.id,
        "model_name": request.model_name,
        "model_version": request.model_version,
        "inputs": payload_inputs(request, gpu),
        "outputs": [output.name for output in request.outputs],
        # Triton's compact form; "{}" without building an encoder (most requests)
        "parameters": json.dumps(request.parameters, separators=(",", ":"))
        if request.parameters
        else "{}",
        "correlation_id": request.correlation_id,
        "flags": request.flags,
        "timeout": request.timeout_us,
    }
