"""Message classes of Triton's ``inference.ModelConfig`` (``model_config.proto``).

Built at import time from the generated descriptor into a private pool, so that the
server and ``tritonclient``'s own ``model_config_pb2`` can live in one process.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool

from .model_config_descriptor import SERIALIZED

try:  # protobuf >= 4.22
    from google.protobuf.message_factory import GetMessageClass as _message_class
except ImportError:  # pragma: no cover - protobuf 4.21
    from google.protobuf.message_factory import MessageFactory

    _message_class = MessageFactory().GetPrototype  # type: ignore[assignment]

POOL = descriptor_pool.DescriptorPool()
POOL.Add(descriptor_pb2.FileDescriptorProto.FromString(SERIALIZED))


def message_class(full_name: str) -> Any:
    """The message class of ``full_name`` (e.g. ``"inference.ModelInput"``)."""
    return _message_class(POOL.FindMessageTypeByName(full_name))


ModelConfig: Any = message_class("inference.ModelConfig")
ModelInput: Any = message_class("inference.ModelInput")
ModelOutput: Any = message_class("inference.ModelOutput")
ModelInstanceGroup: Any = message_class("inference.ModelInstanceGroup")
DATA_TYPE = POOL.FindEnumTypeByName("inference.DataType")

__all__ = [
    "DATA_TYPE",
    "POOL",
    "ModelConfig",
    "ModelInput",
    "ModelInstanceGroup",
    "ModelOutput",
    "message_class",
]
