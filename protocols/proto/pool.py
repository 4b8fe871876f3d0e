"""A private protobuf descriptor pool holding Triton's ``inference`` messages.

Private, so that the server and ``tritonclient``'s own ``*_pb2`` modules (same file
and message names) can live in one process. Its message classes are protobuf's C
(upb) classes: the model configuration parser and the gRPC infer hot path use them
where the betterproto2 classes would cost too much (see DESIGN.md, Performance).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool

from . import grpc_service_descriptor, model_config_descriptor

try:  # protobuf >= 4.22
    from google.protobuf.message_factory import GetMessageClass as _message_class
except ImportError:  # pragma: no cover - protobuf 4.21
    from google.protobuf.message_factory import MessageFactory

    _message_class = MessageFactory().GetPrototype  # type: ignore[assignment]

POOL = descriptor_pool.DescriptorPool()
for _module in (model_config_descriptor, grpc_service_descriptor):
    POOL.Add(descriptor_pb2.FileDescriptorProto.FromString(_module.SERIALIZED))


def message_class(full_name: str) -> Any:
    """The message class of ``full_name`` (e.g. ``"inference.ModelInput"``)."""
    return _message_class(POOL.FindMessageTypeByName(full_name))
