"""The ONNX Runtime backend plugin: ``model.onnx`` served as Triton's onnxruntime backend does.

One ``InferenceSession`` per instance, each run on the instance's own thread: ONNX
Runtime releases the GIL while it computes, so N instances compute in parallel in
one process (a single instance's short runs stay on the event loop: see
``OnnxInstance``). ``onnxruntime`` is imported when the first ONNX model loads, never
at server start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from triton_kernel.kernel.backend import InstanceSpec, ModelContext
from triton_kernel.kernel.errors import Internal, KernelError, Unavailable, Unsupported
from triton_kernel.kernel.hookspecs import hookimpl
from triton_kernel.kernel.request import InferenceRequest, InferenceResponse
from triton_kernel.protocols.proto.model_config import DATA_TYPE

from . import batch, options
from .graph import Graph, auto_complete, validate

log = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"
DEFAULT_FILENAME = "model.onnx"
#: ``--backend-config=default-max-batch-size`` (Triton's default).
DEFAULT_MAX_BATCH_SIZE = 4
_ORT_ERROR = re.compile(r"\[ONNXRuntimeError\] : (\d+) : \w+ : (.*)", re.DOTALL)
#: ``--backend-config=onnxruntime,inline-execution-us=N``: runs expected to be shorter
#: stay on the event loop (0: every run goes to the instance's thread).
DEFAULT_INLINE_US = 100
#: Weight of the newest run in an instance's moving average of run durations.
_SMOOTHING = 0.2
#: Sessions with the OpenVINO provider are created one at a time (as Triton does).
_SERIAL_CREATE = threading.Lock()


@hookimpl
def tk_backend_create(name: str, settings: dict[str, str]) -> OnnxRuntimeBackend | None:
    return OnnxRuntimeBackend(settings) if name == "onnxruntime" else None


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, settings: dict[str, str]) -> None:
        self.settings = settings
        self._ort: Any = None

    async def load_model(self, context: ModelContext) -> OnnxModel:
        """Find the file, auto-complete and check the config against the graph (Triton's
        order and texts), and keep the probe session for the first CPU instance."""
        ort = await self._onnxruntime(context.name)
        config = context.config
        _fill_backend_fields(config)
        options.check_gpu_groups(config, self.settings)  # Triton's core checks these first
        session_options = options.session_options(ort, config, self.settings)
        path = model_path(context)
        cpu = InstanceSpec(f"{context.name}_probe", "KIND_CPU")
        probe = await asyncio.to_thread(
            create_session, ort, path, session_options, options.providers(ort, config, cpu)
        )
        graph = Graph.of(probe)
        if context.auto_complete:
            auto_complete(config, graph, self._default_max_batch_size())
        _refuse_bf16(config)
        scalars = validate(config, graph)
        plan = batch.Plan.of(config, graph, scalars)
        inline_us = options.parse_int(
            self.settings.get("inline-execution-us", str(DEFAULT_INLINE_US))
        )
        return OnnxModel(ort, config, path, session_options, plan, probe, inline_us * 1000)

    async def _onnxruntime(self, model: str) -> Any:
        """``import onnxruntime`` on first use (it takes a while: off the event loop)."""
        if self._ort is None:
            try:
                ort = await asyncio.to_thread(__import__, "onnxruntime")
            except ImportError as exc:
                raise Unavailable(
                    f"unable to load model '{model}': the onnxruntime backend needs the "
                    f"'onnxruntime' package ({exc}); pip install onnxruntime, or "
                    "onnxruntime-gpu for KIND_GPU instances"
                ) from None
            options.set_global_thread_pool(ort, self.settings)
            self._ort = ort
        return self._ort

    def _default_max_batch_size(self) -> int:
        value = self.settings.get("default-max-batch-size")
        return DEFAULT_MAX_BATCH_SIZE if value is None else options.parse_int(value)

    async def finalize(self) -> None:
        return None


def _fill_backend_fields(config: Any) -> None:
    """What Triton's core fills for an ONNX model before the backend sees it."""
    config.backend = config.backend or "onnxruntime"
    config.platform = config.platform or PLATFORM
    config.default_model_filename = config.default_model_filename or DEFAULT_FILENAME


def model_path(context: ModelContext) -> Path:
    """``<version>/<default_model_filename>``; a folder holds ``model.onnx`` (external data)."""
    path = context.version_dir / (context.config.default_model_filename or DEFAULT_FILENAME)
    if path.is_dir():
        path = path / DEFAULT_FILENAME
    if not path.is_file():
        raise Unavailable(f"unable to find '{path}' for model instance '{context.name}'")
    return path


def _refuse_bf16(config: Any) -> None:
    bf16 = DATA_TYPE.values_by_name["TYPE_BF16"].number
    for tensor in [*config.input, *config.output]:
        if tensor.data_type == bf16:
            raise Unsupported(
                f"unable to load model '{config.name}': '{tensor.name}' is TYPE_BF16, which "
                "onnxruntime's Python API cannot exchange (numpy has no bfloat16)"
            )


def create_session(ort: Any, path: Path, session_options: Any, providers: options.Providers) -> Any:
    """An ``InferenceSession``; ONNX Runtime's failures read as Triton reports them."""
    lock = _SERIAL_CREATE if providers.serialize else contextlib.nullcontext()
    try:
        with lock:
            return ort.InferenceSession(
                str(path),
                sess_options=session_options,
                providers=providers.names,
                provider_options=providers.options,
            )
    except Exception as exc:
        raise ort_error(exc) from None


def ort_error(exc: BaseException) -> KernelError:
    """``onnx runtime error <code>: <message>``: Triton's wording of an ONNX Runtime failure."""
    found = _ORT_ERROR.match(str(exc))
    if found is None:
        return Internal(f"onnx runtime error: {exc}")
    return Internal(f"onnx runtime error {found.group(1)}: {found.group(2)}")


class OnnxModel:
    """A loaded ``model.onnx``: its final config, and what each instance's session needs."""

    def __init__(
        self,
        ort: Any,
        config: Any,
        path: Path,
        session_options: Any,
        plan: batch.Plan,
        probe: Any,
        inline_ns: int = DEFAULT_INLINE_US * 1000,
    ) -> None:
        self.config = config
        self.ort = ort
        self.path = path
        self.session_options = session_options
        self.plan = plan
        self.run_options = options.run_options(ort, config)
        if _instance_count(config) > 1:
            inline_ns = 0  # the instances were asked for to run side by side: threads
        #: Runs expected to take less than this many ns stay on the event loop.
        self.inline_ns = inline_ns
        #: The session made to read the graph: the first plain CPU instance adopts it.
        self._spare: Any = probe if _has_plain_cpu_group(config) else None

    async def create_instance(self, spec: InstanceSpec) -> OnnxInstance:
        wanted = options.providers(self.ort, self.config, spec)
        session, self._spare = self._adopt(wanted), None
        if options.CUDA_EP in wanted.names:
            await asyncio.to_thread(_preload_cuda_libraries, self.ort)
        if session is None:
            session = await asyncio.to_thread(
                create_session, self.ort, self.path, self.session_options, wanted
            )
            options.check_session_providers(session, wanted, spec, self.config.name)
        return OnnxInstance(self, spec, session)

    def _adopt(self, wanted: options.Providers) -> Any:
        """The probe session, when it is what this instance would create anyway."""
        if self._spare is not None and wanted.names == [options.CPU_EP]:
            return self._spare
        return None

    async def finalize(self) -> None:
        self._spare = None


@functools.cache
def _preload_cuda_libraries(ort: Any) -> None:
    """Load CUDA and cuDNN from the nvidia-* wheels when the system has none on its path
    (onnxruntime-gpu's own remedy); once per process, before the first CUDA session."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception as exc:  # the session's own error will say what is missing
            log.warning("onnxruntime.preload_dlls() failed: %s", exc)


def _instance_count(config: Any) -> int:
    return sum(group.count * max(len(group.gpus), 1) for group in config.instance_group)


def _has_plain_cpu_group(config: Any) -> bool:
    """Whether some instance will run on the CPU provider alone (and can adopt the probe)."""
    if config.optimization.execution_accelerators.cpu_execution_accelerator:
        return False
    return any(type(g).Kind.Name(g.kind) != "KIND_GPU" for g in config.instance_group)


def _answer(requests: list[InferenceRequest], answers: list[Any]) -> None:
    for request, answer in zip(requests, answers, strict=True):
        if isinstance(answer, KernelError):
            request.fail(answer)
        else:
            request.respond(InferenceResponse(request.model_name, "", outputs=answer))


class OnnxInstance:
    """One instance: its session and the thread its runs happen on.

    When the model has a single instance, a run it expects to be shorter than
    ``inline-execution-us`` (backend config, default 100 us) runs on the event loop
    itself: the trip to the thread and back costs two thread wake-ups, more than such a
    run. The estimate is a moving average of the instance's own runs, per batch row;
    the first runs go to the thread.
    """

    def __init__(self, model: OnnxModel, spec: InstanceSpec, session: Any) -> None:
        self.model = model
        self.spec = spec
        self.session = session
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"ort-{spec.name}")
        #: Moving average of a run's duration per batch row (0: not measured yet).
        self._ns_per_row = 0.0
        self._inline_ns = model.inline_ns

    async def execute(self, requests: Sequence[InferenceRequest]) -> None:
        done = asyncio.get_running_loop().create_future()
        self.submit(requests, lambda _started: done.set_result(None))
        await done

    def submit(
        self, requests: Sequence[InferenceRequest], on_done: Callable[[int | None], None]
    ) -> bool:
        """:meth:`execute` without a coroutine (the kernel's pool calls back instead):
        a short run here and now, a longer one on the instance's thread."""
        loop = asyncio.get_running_loop()
        live = [request for request in requests if not request.done]
        if live and self._expected_ns(live) >= self._inline_ns:
            running = loop.run_in_executor(self._executor, self._run, live)
            running.add_done_callback(lambda done: self._ran(live, done, on_done))
            return True
        if live:
            _answer(live, self._run(live))
        loop.call_soon(on_done, None)  # later: the pool may start the next batch from it
        return True

    @staticmethod
    def _ran(
        live: list[InferenceRequest],
        done: asyncio.Future[list[Any]],
        on_done: Callable[[int | None], None],
    ) -> None:
        if done.cancelled() or done.exception() is not None:
            error = Internal(f"onnxruntime run failed: {done.exception()}")
            for request in live:
                request.fail(error)
        else:
            _answer(live, done.result())
        on_done(None)

    def _expected_ns(self, requests: list[InferenceRequest]) -> float:
        if not self._ns_per_row:
            return float("inf")
        return self._ns_per_row * sum(batch.rows(r, self.model.plan.batching) for r in requests)

    def _run(self, requests: list[InferenceRequest]) -> list[Any]:
        """On the instance's thread: one run for a batching model, one per request otherwise."""
        plan = self.model.plan
        if plan.batching:
            return self._run_batch(requests)
        return [answer for request in requests for answer in self._run_batch([request])]

    def _run_batch(self, requests: list[InferenceRequest]) -> list[Any]:
        plan = self.model.plan
        try:
            fed, rows = batch.feeds(plan, requests)
        except KernelError as exc:
            return [exc] * len(requests)
        started = time.perf_counter_ns()
        try:
            arrays = self.session.run(plan.output_names, fed, self.model.run_options)
        except Exception as exc:
            return [ort_error(exc)] * len(requests)
        per_row = (time.perf_counter_ns() - started) / max(sum(rows), 1)
        previous = self._ns_per_row or per_row
        self._ns_per_row = previous + (per_row - previous) * _SMOOTHING
        try:
            return batch.responses(plan, arrays, rows)
        except KernelError as exc:
            return [exc] * len(requests)

    async def finalize(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        self.session = None  # the session's memory goes with the last reference
