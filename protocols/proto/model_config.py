"""Message classes of Triton's ``inference.ModelConfig`` (``model_config.proto``)."""

from __future__ import annotations

from typing import Any

from .pool import POOL, message_class

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
