"""The public in-process API: the one door into the kernel, for frontends and applications alike.

Shaped after Triton's own ``tritonserver`` Python package: build a ``Server`` from
options, ``await server.start()``, then ``await server.infer(request)``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, final

from . import __version__
from .classification import classify
from .config import config_to_json
from .errors import Internal, InvalidArgument, KernelError, NotFound, Unavailable, Unsupported
from .frontend import Frontend
from .logsettings import LogSettings
from .metrics import ServerMetrics
from .model import ModelState, ModelVersion
from .models import DUPLICATE_REASON, ModelManager, ModelOverride
from .options import ServerOptions
from .plugins import BackendLoader, create_plugin_manager
from .poller import RepositoryPoller
from .repository import RepositorySource
from .request import InferenceRequest, InferenceResponse
from .shared_memory import Attachment, SharedMemoryRegistry, uses_shared_memory
from .trace import TraceManager, read_trace_update

log = logging.getLogger(__name__)

#: The extensions this server implements, in Triton's order (server metadata).
EXTENSIONS = (
    "classification",
    "model_repository",
    "model_repository(unload_dependents)",
    "model_configuration",
    "system_shared_memory",
    "cuda_shared_memory",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "trace",
    "logging",
)


@final
class Server:
    """A Triton-compatible inference server running in this process."""

    __slots__ = (
        "_backends",
        "_frontends",
        "_live",
        "_logs",
        "_manager",
        "_metrics",
        "_plugins",
        "_poller",
        "_shared_memory",
        "_trace",
        "options",
    )

    def __init__(self, options: ServerOptions | None = None) -> None:
        self.options = options or ServerOptions()
        self._plugins = create_plugin_manager()
        self._backends = BackendLoader(
            self._plugins, self.options.backend_directories, self.options.backend_config
        )
        self._manager = ModelManager(self._sources(), self._backends, self.options, self)
        self._metrics = ServerMetrics(self._manager)
        self._frontends: list[Frontend] = []
        self._poller: RepositoryPoller | None = None
        self._live = False
        self._logs = LogSettings.from_options(self.options)
        self._shared_memory = SharedMemoryRegistry(self.options.allow_client_shm)
        self._trace = TraceManager(self.options.trace_config)

    def _sources(self) -> list[RepositorySource]:
        sources = []
        for location in self.options.model_repositories:
            source = self._plugins.hook.tk_repository_source(location=location)
            if source is None:
                raise InvalidArgument(f"no repository source can read '{location}'")
            sources.append(source)
        return sources

    # --- lifecycle -------------------------------------------------------------

    async def start(self, *, frontends: bool = True) -> None:
        """Load the models the control mode asks for, then start the frontends."""
        self._live = True
        await self._load_initial_models()
        if self.options.exit_on_error and self._failed_models():
            failed = ", ".join(self._failed_models())
            await self.stop()
            raise Unavailable(f"failed to load all models: {failed}")
        if self.options.model_control_mode == "poll" and self.options.repository_poll_secs > 0:
            self._poller = RepositoryPoller(self._manager, self.options.repository_poll_secs)
            self._poller.start()
        if frontends:
            await self._start_frontends()

    async def _load_initial_models(self) -> None:
        mode = self.options.model_control_mode
        if mode == "explicit":
            names = self.options.load_models
            await self._manager.load_all(None if "*" in names else names)
        else:
            await self._manager.load_all()

    async def poll_repository(self) -> None:
        """Poll mode: bring the served models in line with the repositories now."""
        if self.options.model_control_mode != "poll":
            raise Unavailable("polling is disabled")
        await self._manager.sync()

    async def _start_frontends(self) -> None:
        results = self._plugins.hook.tk_frontend_create(server=self, options=self.options)
        for frontend in results:
            if frontend is not None:
                await frontend.start()
                self._frontends.append(frontend)

    async def stop(self) -> None:
        """Stop polling and the frontends (draining in-flight calls), then unload every model."""
        grace = self.options.exit_timeout_secs
        if self._poller is not None:
            await self._poller.stop()
            self._poller = None
        for frontend in reversed(self._frontends):
            await frontend.stop(grace)
        self._frontends.clear()
        try:
            await asyncio.wait_for(self._manager.unload_all(), grace)
        except asyncio.TimeoutError:
            log.warning("models did not unload within %.0f s", grace)
        for backend in self._backends.loaded():
            await backend.finalize()
        self._shared_memory.close()
        try:  # write the traces kept, flush the span exporter
            await asyncio.wait_for(asyncio.to_thread(self._trace.close), grace)
        except asyncio.TimeoutError:
            log.warning("traces were not flushed within %.0f s", grace)
        self._live = False

    def _failed_models(self) -> list[str]:
        """Models that failed to load (an unloaded model, or a failed reload while the
        previous versions serve, is no failure: Triton's readiness ignores ``unloaded``)."""
        failed = []
        for entry in self._manager.entries():
            versions = entry.versions.values()
            if (entry.reason and entry.reason != "unloaded") or any(
                v.state is ModelState.UNAVAILABLE and v.reason != "unloaded" for v in versions
            ):
                failed.append(entry.name)
        return failed

    # --- health and metadata -----------------------------------------------------

    def live(self) -> bool:
        return self._live

    def ready(self) -> bool:
        """Live, and (under strict readiness) every model loaded without failure."""
        if not self._live:
            return False
        return not (self.options.strict_readiness and self._failed_models())

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.options.server_id,
            "version": __version__,
            "extensions": list(EXTENSIONS),
        }

    def model_ready(self, name: str, version: int = -1) -> bool:
        try:
            self._manager.get(name, version)
        except KernelError:
            return False
        return True

    def model(self, name: str, version: int = -1) -> ModelVersion:
        """The ready version a request for ``name``/``version`` reaches (or a typed error)."""
        return self._manager.get(name, version)

    def model_metadata(self, name: str, version: int = -1) -> dict[str, Any]:
        model = self._manager.get(name, version)
        entry = self._manager.entry(name)
        assert entry is not None and model.signature is not None
        batch = [-1] if model.config.max_batch_size > 0 else []
        return {
            "name": name,
            # Triton lists the one version asked for, else every ready one
            "versions": [str(model.version)]
            if version >= 0
            else [str(v.version) for v in sorted(entry.ready_versions, key=lambda v: v.version)],
            "platform": model.config.platform or model.config.backend,
            "inputs": [_tensor_metadata(t, batch) for t in model.signature.inputs.values()],
            "outputs": [_tensor_metadata(t, batch) for t in model.signature.outputs.values()],
        }

    def model_config(self, name: str, version: int = -1) -> dict[str, Any]:
        return config_to_json(self._manager.get(name, version).config)

    # --- repository ------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Triton's repository index: every model folder of the repositories (a model
        loaded only from override files is not one), each version with its state."""
        try:
            found, duplicates = self._manager.scan()
        except KernelError:
            found, duplicates = {}, set()
        index: list[dict[str, Any]] = []
        for name in sorted(found.keys() | duplicates):
            if name in duplicates:
                index.append({"name": name, "state": "UNAVAILABLE", "reason": DUPLICATE_REASON})
            else:
                index.extend(_index_rows(name, self._manager.entry(name)))
        if ready_only:
            index = [row for row in index if row.get("state") == ModelState.READY.value]
        return index

    async def load_model(
        self, name: str, *, config: str | None = None, files: dict[str, bytes] | None = None
    ) -> None:
        """Load (or reload) ``name``; ``config`` (JSON) and ``files`` override the repository's.

        ``files`` maps paths inside the model directory (``1/model.py``) to their
        contents; with them the model loads from a private directory holding only
        those files, as Triton does, and ``config`` is required. A reload that fails
        raises with the reason and leaves the versions serving before as they were.
        """
        if self.options.model_control_mode != "explicit":
            raise Unavailable("explicit model load / unload is not allowed if polling is enabled")
        override = None
        if config is not None or files:
            override = ModelOverride.build(name, config, files or {})
        entry = await self._manager.load(name, override=override)
        if entry.config_error:  # Triton refuses such a configuration while polling
            raise Internal(f"failed to load '{name}', failed to poll from model repository")
        if entry.load_error:
            raise InvalidArgument(f"load failed for model '{name}': {entry.load_error}\n")

    async def unload_model(self, name: str, *, unload_dependents: bool = False) -> None:
        """Unload ``name`` and the ensembles using it; ``unload_dependents`` also unloads
        the models its ensembles used that were not loaded by name (Triton)."""
        if self.options.model_control_mode != "explicit":
            raise Unavailable("explicit model load / unload is not allowed if polling is enabled")
        await self._manager.unload(name, dependents=unload_dependents)

    # --- statistics, shared memory, trace and log settings ---------------------------

    def statistics(self, name: str = "", version: int = -1) -> list[dict[str, Any]]:
        """Triton's ``model_stats``: every ready version of every model, or of ``name``."""
        if not name:
            return [v.statistics.to_dict(v.name, v.version) for v in self._metrics.versions()]
        entry = self._manager.entry(name)
        ready = sorted(entry.ready_versions, key=lambda v: v.version) if entry else []
        if not ready:
            raise InvalidArgument(f"requested model '{name}' is not available")
        if version >= 0:
            ready = [v for v in ready if v.version == version]
            if not ready:
                raise InvalidArgument(
                    f"requested model version is not available for model '{name}'"
                )
        return [v.statistics.to_dict(name, v.version) for v in ready]

    def metrics(self) -> ServerMetrics:
        """What the metrics frontend reads: loaded versions and models' custom metrics."""
        return self._metrics

    def shared_memory_status(self, kind: str, name: str = "") -> list[dict[str, Any]]:
        """Registered regions of ``kind`` ("system" or "cuda"), or the one named ``name``."""
        return self._shared_memory.status(kind, name)

    def check_client_shared_memory(self) -> None:
        """Raise Triton's error unless ``--allow-client-shm`` lets clients (un)register."""
        self._shared_memory.check_allowed()

    def register_system_shared_memory(self, name: str, key: str, offset: int, size: int) -> None:
        """Map ``size`` bytes at ``offset`` of POSIX shared memory object ``key`` as ``name``."""
        self._shared_memory.register_system(name, key, offset, size)

    def register_cuda_shared_memory(
        self, name: str, handle: bytes, device_id: int, size: int
    ) -> None:
        """Open a client's CUDA allocation from its raw ``cudaIpcMemHandle_t`` as ``name``."""
        self._shared_memory.register_cuda(name, handle, device_id, size)

    def unregister_shared_memory(self, kind: str, name: str = "") -> None:
        """Unregister ``name`` (every region of ``kind`` when empty); unknown names are fine."""
        self._shared_memory.unregister(kind, name)

    @property
    def tracing(self) -> bool:
        """Whether a request may be traced now (frontends record their timestamps only then)."""
        return self._trace.active

    def trace_settings(
        self, model: str = "", update: Mapping[str, Sequence[str] | None] | None = None
    ) -> dict[str, list[str]]:
        """Triton's trace settings of ``model`` (else the global ones), after ``update``.

        ``update`` carries values as gRPC's TraceSetting does (a list of strings per
        setting; None or empty clears it, so a model mirrors the global value again);
        None only reads.
        """
        if model and not self.model_ready(model):
            raise InvalidArgument(f"Request for unknown model : {model}")
        if update is not None:
            self._trace.update(model, read_trace_update(update))
        return self._trace.settings(model)

    def log_settings(self, update: dict[str, Any]) -> dict[str, Any]:
        """Triton's log settings, changed live (process-wide): each key of ``update`` in
        Triton's order; a bad one raises and leaves those before it applied."""
        return self._logs.update(update)

    # --- inference ---------------------------------------------------------------

    async def infer(
        self, request: InferenceRequest, model: ModelVersion | None = None
    ) -> InferenceResponse:
        """Run one request to completion and return its (non-decoupled) response.

        ``model``: the version ``self.model()`` already gave the caller for this request
        (frontends look it up first to answer decoupled models in their own words).
        """
        if model is None:
            model = self._manager.get(request.model_name, request.model_version)
        if model.config.model_transaction_policy.decoupled:
            raise Unsupported(
                f"model '{model.name}' is decoupled: its responses are streamed, use a "
                "streaming call"
            )
        if self._trace.active:
            self._trace.sample(request, model)
        with self._shared_memory.attach(request, model.signature) as shared_memory:
            response = _finish(await model.infer(request), request, model)
            shared_memory.write_outputs(response)
        return response

    def submit(
        self,
        request: InferenceRequest,
        model: ModelVersion,
        on_done: Callable[[InferenceResponse | None, BaseException | None], None],
    ) -> asyncio.Future[Any]:
        """:meth:`infer` for the frontends' hot paths: callbacks instead of coroutines.

        ``model`` is ``self.model()``'s answer for the request. What ``infer`` raises
        before the request is queued is raised here; afterwards ``on_done(response,
        None)`` or ``on_done(None, error)`` is called once, from the event loop (the
        error is a ``CancelledError`` when the returned future was cancelled, as a
        frontend does when its client goes away). Requests that need more than the plain
        road (tracing, shared memory, the response cache) run ``infer`` in a task.
        """
        if (
            self._trace.active
            or model.cache is not None
            or model.config.model_transaction_policy.decoupled
            or uses_shared_memory(request)
        ):
            task = asyncio.ensure_future(self.infer(request, model))
            task.add_done_callback(lambda done: on_done(*_outcome(done)))
            return task

        def finished(future: asyncio.Future[Any]) -> None:
            response, error = _outcome(future)
            if response is not None:
                try:
                    response = _finish(response, request, model)
                except KernelError as exc:
                    response, error = None, exc
            on_done(response, error)

        return model.submit(request, finished)

    def infer_stream(self, request: InferenceRequest) -> AsyncIterator[InferenceResponse]:
        """Run one request and yield every response: many (or none) for a decoupled model.

        An unknown model or an invalid request raises from this call; a failure while
        executing raises from the iteration. Each response says whether it is the last
        (``final``). Closing the iterator early cancels the request.
        """
        model = self._manager.get(request.model_name, request.model_version)
        if self._trace.active:
            self._trace.sample(request, model)
        shared_memory = self._shared_memory.attach(request, model.signature)
        try:
            responses = self._finished(model.stream(request), request, model, shared_memory)
        except BaseException:
            shared_memory.release()
            raise
        shared_memory.release_with(responses)
        return responses

    @staticmethod
    async def _finished(
        responses: AsyncIterator[InferenceResponse],
        request: InferenceRequest,
        model: ModelVersion,
        shared_memory: Attachment,
    ) -> AsyncIterator[InferenceResponse]:
        try:
            async for response in responses:
                if response.flag_only or response.error is not None:
                    response.model_name, response.model_version = model.name, ""
                    response.id = request.id
                    yield response
                else:
                    response = _finish(response, request, model)
                    shared_memory.write_outputs(response)
                    yield response
        finally:
            await responses.aclose()  # type: ignore[attr-defined]
            shared_memory.release()


def _outcome(
    future: asyncio.Future[InferenceResponse],
) -> tuple[InferenceResponse | None, BaseException | None]:
    """A finished request's ``(response, None)`` or ``(None, error)``; cancelled: a
    ``CancelledError``."""
    if future.cancelled():
        return None, asyncio.CancelledError()
    error = future.exception()
    return (None, error) if error is not None else (future.result(), None)


def _finish(
    response: InferenceResponse, request: InferenceRequest, model: ModelVersion
) -> InferenceResponse:
    """Keep the requested outputs, in the order asked, and apply classification."""
    response.model_name = model.name
    response.model_version = str(model.version)
    response.id = request.id
    if not request.outputs:
        return response
    produced = {tensor.name: tensor for tensor in response.outputs}
    outputs = []
    for requested in request.outputs:
        tensor = produced.get(requested.name)
        if tensor is None:
            raise NotFound(
                f"output '{requested.name}' was requested but model '{model.name}' did not "
                "produce it"
            )
        if requested.class_count > 0:
            labels = model.labels.get(tensor.name, [])
            tensor = classify(
                tensor, requested.class_count, labels, model.config.max_batch_size > 0
            )
        outputs.append(tensor)
    response.outputs = outputs
    return response


def _tensor_metadata(spec: Any, batch: list[int]) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": [*batch, *spec.dims]}


def _index_rows(name: str, entry: Any) -> list[dict[str, Any]]:
    """A model's index rows; ``reason`` only where there is one, as Triton writes them."""
    if entry is None:
        return [{"name": name}]
    if not entry.versions:
        return [_with_reason({"name": name, "state": ModelState.UNAVAILABLE.value}, entry.reason)]
    return [
        _with_reason({"name": name, "version": str(v.version), "state": v.state.value}, v.reason)
        for v in sorted(entry.versions.values(), key=lambda v: v.version)
    ]


def _with_reason(row: dict[str, Any], reason: str) -> dict[str, Any]:
    if reason:
        row["reason"] = reason
    return row
