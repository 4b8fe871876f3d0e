"""Triton's ``GRPCInferenceService`` and the standard health service over the ``Server``.

Each RPC is a short method that reads its request message, calls the ``Server`` and
builds the reply; a ``KernelError`` becomes a gRPC status in one place
(:func:`serve_unary`). Every handler receives through ``wire.recv_message`` (size
limit, compression). ModelInfer and ModelStreamInfer use protobuf's upb classes and
the zero-copy codec; the other RPCs use the betterproto2 messages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpclib.const
from grpclib import GRPCError
from grpclib.const import Cardinality, Status
from grpclib.server import Stream

from triton_kernel.kernel.errors import InvalidArgument, KernelError, Unsupported
from triton_kernel.kernel.model import ModelVersion
from triton_kernel.kernel.request import InferenceRequest
from triton_kernel.kernel.server import Server
from triton_kernel.kernel.trace_record import FrontendTrace
from triton_kernel.protocols.proto.generated import inference as pb
from triton_kernel.protocols.proto.generated.grpc.health import v1 as health

from . import codec, wire
from .errors import grpc_error

log = logging.getLogger(__name__)

SERVICE = "/inference.GRPCInferenceService"
#: A client that sets this header gets stream errors as gRPC statuses (Triton's rule).
STREAM_ERROR_HEADER = "triton_grpc_error"


class InferenceService(pb.GrpcInferenceServiceBase):
    """The RPCs of ``inference.GRPCInferenceService``, each over one ``Server`` call."""

    def __init__(self, server: Server, max_message_size: int) -> None:
        self.server = server
        self.max_message_size = max_message_size

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        unary: dict[str, tuple[Callable[[Any], Awaitable[Any]], Any, Any]] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": (
                self.server_metadata,
                pb.ServerMetadataRequest,
                pb.ServerMetadataResponse,
            ),
            "ModelMetadata": (
                self.model_metadata,
                pb.ModelMetadataRequest,
                pb.ModelMetadataResponse,
            ),
            "ModelConfig": (self.model_config, pb.ModelConfigRequest, pb.ModelConfigResponse),
            "ModelStatistics": (
                self.model_statistics,
                pb.ModelStatisticsRequest,
                pb.ModelStatisticsResponse,
            ),
            "RepositoryIndex": (
                self.repository_index,
                pb.RepositoryIndexRequest,
                pb.RepositoryIndexResponse,
            ),
            "RepositoryModelLoad": (
                self.repository_model_load,
                pb.RepositoryModelLoadRequest,
                pb.RepositoryModelLoadResponse,
            ),
            "RepositoryModelUnload": (
                self.repository_model_unload,
                pb.RepositoryModelUnloadRequest,
                pb.RepositoryModelUnloadResponse,
            ),
            "SystemSharedMemoryStatus": (
                self.system_shared_memory_status,
                pb.SystemSharedMemoryStatusRequest,
                pb.SystemSharedMemoryStatusResponse,
            ),
            "SystemSharedMemoryRegister": (
                self.system_shared_memory_register,
                pb.SystemSharedMemoryRegisterRequest,
                pb.SystemSharedMemoryRegisterResponse,
            ),
            "SystemSharedMemoryUnregister": (
                self.system_shared_memory_unregister,
                pb.SystemSharedMemoryUnregisterRequest,
                pb.SystemSharedMemoryUnregisterResponse,
            ),
            "CudaSharedMemoryStatus": (
                self.cuda_shared_memory_status,
                pb.CudaSharedMemoryStatusRequest,
                pb.CudaSharedMemoryStatusResponse,
            ),
            "CudaSharedMemoryRegister": (
                self.cuda_shared_memory_register,
                pb.CudaSharedMemoryRegisterRequest,
                pb.CudaSharedMemoryRegisterResponse,
            ),
            "CudaSharedMemoryUnregister": (
                self.cuda_shared_memory_unregister,
                pb.CudaSharedMemoryUnregisterRequest,
                pb.CudaSharedMemoryUnregisterResponse,
            ),
            "TraceSetting": (self.trace_setting, pb.TraceSettingRequest, pb.TraceSettingResponse),
            "LogSettings": (self.log_settings, pb.LogSettingsRequest, pb.LogSettingsResponse),
        }
        mapping = {
            f"{SERVICE}/{name}": grpclib.const.Handler(
                self._unary_handler(method, request_type),
                Cardinality.UNARY_UNARY,
                request_type,
                reply_type,
            )
            for name, (method, request_type, reply_type) in unary.items()
        }
        mapping[f"{SERVICE}/ModelInfer"] = grpclib.const.Handler(
            self._model_infer, Cardinality.UNARY_UNARY, None, None
        )
        mapping[f"{SERVICE}/ModelStreamInfer"] = grpclib.const.Handler(
            self._model_stream_infer, Cardinality.STREAM_STREAM, None, None
        )
        return mapping

    def _unary_handler(
        self, method: Callable[[Any], Awaitable[Any]], request_type: Any
    ) -> Callable[[Stream], Awaitable[None]]:
        async def handle(stream: Stream) -> None:
            request = await wire.recv_message(stream, request_type, self.max_message_size)
            await stream.send_message(await serve_unary(method, request))

        return handle

    # --- health and metadata ------------------------------------------------------------

    async def server_live(self, message: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.server.live())

    async def server_ready(self, message: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.server.ready())

    async def model_ready(self, message: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        version = codec.model_version(message.version)
        if version < 0 and message.version:
            raise InvalidArgument(
                f"invalid model version specified '{message.version}' , version should be an "
                "integral value > 0"
            )
        return pb.ModelReadyResponse(ready=self.server.model_ready(message.name, version))

    async def server_metadata(self, message: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self.server.metadata())

    async def model_metadata(self, message: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        version = codec.model_version(message.version)
        document = self.server.model_metadata(message.name, version)
        tensors = {
            key: [pb.ModelMetadataResponseTensorMetadata(**t) for t in document[key]]
            for key in ("inputs", "outputs")
        }
        return pb.ModelMetadataResponse(
            name=document["name"],
            versions=document["versions"],
            platform=document["platform"],
            **tensors,
        )

    async def model_config(self, message: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
        model = self.server.model(message.name, codec.model_version(message.version))
        config = pb.ModelConfig.FromString(model.config.SerializeToString())
        return pb.ModelConfigResponse(config=config)

    async def model_statistics(
        self, message: pb.ModelStatisticsRequest
    ) -> pb.ModelStatisticsResponse:
        version = codec.model_version(message.version)
        stats = self.server.statistics(message.name, version)
        return pb.ModelStatisticsResponse.from_dict({"model_stats": stats})

    # --- model repository ------------------------------------------------------------------

    async def repository_index(
        self, message: pb.RepositoryIndexRequest
    ) -> pb.RepositoryIndexResponse:
        _no_repository_name(message.repository_name)
        rows = self.server.repository_index(message.ready)
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponseModelIndex(**row) for row in rows]
        )

    async def repository_model_load(
        self, message: pb.RepositoryModelLoadRequest
    ) -> pb.RepositoryModelLoadResponse:
        _no_repository_name(message.repository_name)
        config, files = _load_overrides(message.parameters)
        await self.server.load_model(message.model_name, config=config, files=files)
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(
        self, message: pb.RepositoryModelUnloadRequest
    ) -> pb.RepositoryModelUnloadResponse:
        _no_repository_name(message.repository_name)
        dependents = _unload_dependents(message.parameters)
        await self.server.unload_model(message.model_name, unload_dependents=dependents)
        return pb.RepositoryModelUnloadResponse()

    # --- shared memory -----------------------------------------------------------------------

    async def system_shared_memory_status(
        self, message: pb.SystemSharedMemoryStatusRequest
    ) -> pb.SystemSharedMemoryStatusResponse:
        regions = self.server.shared_memory_status("system", message.name)
        return pb.SystemSharedMemoryStatusResponse(
            regions={
                r["name"]: pb.SystemSharedMemoryStatusResponseRegionStatus(**r) for r in regions
            }
        )

    async def system_shared_memory_register(
        self, message: pb.SystemSharedMemoryRegisterRequest
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self.server.register_system_shared_memory(
            message.name, message.key, message.offset, message.byte_size
        )
        return pb.SystemSharedMemoryRegisterResponse()

    async def system_shared_memory_unregister(
        self, message: pb.SystemSharedMemoryUnregisterRequest
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self.server.unregister_shared_memory("system", message.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def cuda_shared_memory_status(
        self, message: pb.CudaSharedMemoryStatusRequest
    ) -> pb.CudaSharedMemoryStatusResponse:
        regions = self.server.shared_memory_status("cuda", message.name)
        return pb.CudaSharedMemoryStatusResponse(
            regions={r["name"]: pb.CudaSharedMemoryStatusResponseRegionStatus(**r) for r in regions}
        )

    async def cuda_shared_memory_register(
        self, message: pb.CudaSharedMemoryRegisterRequest
    ) -> pb.CudaSharedMemoryRegisterResponse:
        self.server.register_cuda_shared_memory(
            message.name, message.raw_handle, message.device_id, message.byte_size
        )
        return pb.CudaSharedMemoryRegisterResponse()

    async def cuda_shared_memory_unregister(
        self, message: pb.CudaSharedMemoryUnregisterRequest
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        self.server.unregister_shared_memory("cuda", message.name)
        return pb.CudaSharedMemoryUnregisterResponse()

    # --- trace and log settings ----------------------------------------------------------------

    async def trace_setting(self, message: pb.TraceSettingRequest) -> pb.TraceSettingResponse:
        # no settings: only a read (Triton updates nothing, not even the sampling counters)
        update = {key: list(value.value) for key, value in message.settings.items()} or None
        settings = self.server.trace_settings(message.model_name, update)
        return pb.TraceSettingResponse(
            settings={
                key: pb.TraceSettingResponseSettingValue(value=values)
                for key, values in settings.items()
            }
        )

    async def log_settings(self, message: pb.LogSettingsRequest) -> pb.LogSettingsResponse:
        update: dict[str, Any] = {}
        try:
            for key, (field, word) in _LOG_FIELDS.items():  # Triton's order
                if key in message.settings:
                    update[key] = _log_value(key, message.settings[key], field, word)
        except KernelError:
            self.server.log_settings(update)  # Triton applies each before reading the next
            raise
        settings = self.server.log_settings(update)
        return pb.LogSettingsResponse(
            settings={key: _log_setting(value) for key, value in settings.items()}
        )

    # --- inference -------------------------------------------------------------------------------

    async def model_infer(
        self, message: Any, raw: list[Any] | None = None, frontend: FrontendTrace | None = None
    ) -> bytes:
        """One request, one response (the hot path: upb messages, raw contents as views)."""
        request, _ = codec.decode_infer_request(message, raw or [])
        if frontend is not None:
            frontend.received(request)
        response = await self.server.infer(request, self.unary_model(request))
        return codec.encode_infer_response(response)

    def unary_model(self, request: InferenceRequest) -> ModelVersion:
        """The model a ModelInfer call asks for (a decoupled one answers only streams)."""
        model = self.server.model(request.model_name, request.model_version)
        if model.config.model_transaction_policy.decoupled:
            raise Unsupported(
                "ModelInfer RPC doesn't support models with decoupled transaction policy"
            )
        return model

    async def _model_infer(self, stream: Stream) -> None:
        frontend = FrontendTrace("GRPC", stream.metadata) if self.server.tracing else None
        data = await wire.recv_bytes(stream, self.max_message_size)
        if data is None:
            raise GRPCError(Status.INTERNAL, "the client sent no request message")
        message, raw = parse_infer_message(data)
        reply = await serve_unary(lambda m: self.model_infer(m, raw, frontend), message)
        if frontend is None:
            await stream.send_message(reply)
            return
        try:
            frontend.sending()
            await stream.send_message(reply)
            frontend.sent()
        finally:
            frontend.finish()

    async def _model_stream_infer(self, stream: Stream) -> None:
        await InferStream(self, stream).serve()


class InferStream:
    """One ModelStreamInfer call: requests in, every response of each out, as they come.

    Requests run concurrently; their responses interleave on the stream, one message
    at a time. Errors go in-band (``error_message``) unless the client set the
    ``triton_grpc_error`` header, in which case the first error ends the call with
    its status. When the call ends early (client cancel, error), every request still
    running is cancelled, so the models' pending responses are dropped.
    """

    def __init__(self, service: InferenceService, stream: Stream) -> None:
        self.service = service
        self.server = service.server
        self.stream = stream
        metadata = stream.metadata or {}
        self.status_errors = str(metadata.get(STREAM_ERROR_HEADER, "")).lower() == "true"
        self.send_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[None]] = set()
        self.failure: GRPCError | None = None
        self.reader: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        reader = asyncio.create_task(self._read())
        self.reader = reader
        try:
            await asyncio.wait({reader})  # ends early when a status error stops the call
            if not reader.cancelled() and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]
            if self.failure is None and self.tasks:
                await asyncio.wait(set(self.tasks))
        finally:
            reader.cancel()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(reader, *self.tasks, return_exceptions=True)
        if self.failure is not None:
            raise self.failure

    async def _read(self) -> None:
        while True:
            data = await wire.recv_bytes(self.stream, self.service.max_message_size)
            if data is None:
                return
            self._start(data)

    def _start(self, data: bytes) -> None:
        task = asyncio.create_task(self._serve_one(data))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve_one(self, data: bytes) -> None:
        request_id = ""
        frontend = FrontendTrace("GRPC", self.stream.metadata) if self.server.tracing else None
        try:
            message, raw = codec.parse_infer_request(data)
            request_id = message.id
            request, empty_final = codec.decode_infer_request(message, raw)
            if frontend is not None:
                frontend.received(request)
            responses = self.server.infer_stream(request)
        except KernelError as exc:  # before execution: in-band always, with the id only
            await self._send(codec.encode_stream_error(exc.message, request_id))
            return
        except Exception:
            log.exception("unhandled error decoding a stream request")
            await self._send(codec.encode_stream_error("internal server error", request_id))
            return
        try:
            async for response in responses:
                if response.error is not None:
                    await self._execution_error(response.error, request, response.final)
                elif empty_final or not response.flag_only:
                    extra = {"triton_final_response": response.final}
                    inner = codec.encode_infer_response(response, extra)
                    await self._send(codec.encode_stream_response(inner, ""), frontend)
        except KernelError as exc:
            await self._execution_error(exc, request, True)
        finally:
            if frontend is not None:
                frontend.finish()
            await responses.aclose()  # type: ignore[attr-defined]

    async def _execution_error(
        self, error: KernelError, request: InferenceRequest, final: bool
    ) -> None:
        """A model's failure: in-band, or the call's status when the client asked for that."""
        if not self.status_errors:
            inner = codec.encode_error_response(request.model_name, request.id, final)
            await self._send(codec.encode_stream_response(inner, error.message))
        elif self.failure is None:
            self.failure = grpc_error(error)
            assert self.reader is not None
            self.reader.cancel()  # the call ends with this status
            for task in self.tasks:
                if task is not asyncio.current_task():
                    task.cancel()

    async def _send(self, data: bytes, frontend: FrontendTrace | None = None) -> None:
        async with self.send_lock:
            if frontend is not None:
                frontend.sending()
            await self.stream.send_message(data)
            if frontend is not None:
                frontend.sent()


def parse_infer_message(data: bytes) -> tuple[Any, list[Any]]:
    """``codec.parse_infer_request``, its failures as the call's gRPC status."""
    try:
        return codec.parse_infer_request(data)
    except KernelError as exc:
        raise grpc_error(exc) from None
    except Exception as exc:
        raise GRPCError(Status.INTERNAL, f"failed to parse the request message: {exc}") from None


async def serve_unary(method: Callable[[Any], Awaitable[Any]], message: Any) -> Any:
    """Call an RPC method; a kernel error becomes the call's gRPC status (the one place)."""
    try:
        return await method(message)
    except KernelError as exc:
        raise grpc_error(exc) from None
    except (GRPCError, asyncio.CancelledError):
        raise
    except Exception:
        log.exception("unhandled error in a gRPC call")
        raise GRPCError(Status.INTERNAL, "internal server error") from None


def _no_repository_name(name: str) -> None:
    if name:
        raise Unsupported("'repository_name' specification is not supported")


def _load_overrides(parameters: dict[str, Any]) -> tuple[str | None, dict[str, bytes]]:
    """The ``config`` JSON and ``file:<path>`` contents of a RepositoryModelLoad."""
    config: str | None = None
    files: dict[str, bytes] = {}
    for key, parameter in parameters.items():
        value = _oneof_value(parameter)
        if key == "config":
            if not isinstance(value, str):
                raise InvalidArgument(
                    "invalid value type for load parameter 'config', expected string_param."
                )
            config = value
        elif key.startswith("file:"):
            if not isinstance(value, bytes):
                raise InvalidArgument(
                    f"invalid value type for load parameter '{key}', expected bytes_param."
                )
            files[key.removeprefix("file:")] = value
        else:
            raise InvalidArgument(f"unrecognized load parameter '{key}'.")
    return config, files


def _unload_dependents(parameters: dict[str, Any]) -> bool:
    """A RepositoryModelUnload's ``unload_dependents`` (other parameters are ignored)."""
    if "unload_dependents" not in parameters:
        return False
    value = _oneof_value(parameters["unload_dependents"])
    if not isinstance(value, bool):
        raise InvalidArgument(
            "invalid value type for 'unload_dependents' parameter, expected bool_param."
        )
    return value


def _oneof_value(message: Any) -> Any:
    """The value of a message's one set ``parameter_choice`` field (None when unset)."""
    for name in ("bool_param", "int64_param", "uint32_param", "string_param", "bytes_param"):
        value = getattr(message, name, None)
        if value is not None:
            return value
    return None


#: Each log setting's field and Triton's word for its type, in the order Triton applies them.
_LOG_FIELDS = {
    "log_file": ("string_param", "string"),
    "log_info": ("bool_param", "boolean"),
    "log_warning": ("bool_param", "boolean"),
    "log_error": ("bool_param", "boolean"),
    "log_verbose_level": ("uint32_param", "int32"),
    "log_format": ("string_param", "string"),
}


def _log_value(key: str, setting: Any, field: str, word: str) -> Any:
    if key == "log_file":
        raise Unsupported("log file location can not be updated through network protocol")
    value = getattr(setting, field, None)
    if value is None:
        raise InvalidArgument(f"expect {word} for '{key}'")
    return value


def _log_setting(value: Any) -> pb.LogSettingsResponseSettingValue:
    if isinstance(value, bool):
        return pb.LogSettingsResponseSettingValue(bool_param=value)
    if isinstance(value, int):
        return pb.LogSettingsResponseSettingValue(uint32_param=value)
    return pb.LogSettingsResponseSettingValue(string_param=str(value))


class HealthService(health.HealthBase):
    """``grpc.health.v1.Health/Check``: SERVING while the server is ready."""

    def __init__(self, server: Server, max_message_size: int) -> None:
        self.server = server
        self.max_message_size = max_message_size

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            "/grpc.health.v1.Health/Check": grpclib.const.Handler(
                self._check,
                Cardinality.UNARY_UNARY,
                health.HealthCheckRequest,
                health.HealthCheckResponse,
            )
        }

    async def check(self, message: health.HealthCheckRequest) -> health.HealthCheckResponse:
        status = health.HealthCheckResponseServingStatus
        ready = self.server.ready()
        return health.HealthCheckResponse(status=status.SERVING if ready else status.NOT_SERVING)

    async def _check(self, stream: Stream) -> None:
        request = await wire.recv_message(stream, health.HealthCheckRequest, self.max_message_size)
        await stream.send_message(await self.check(request))
