"""The contract a protocol frontend fulfils (HTTP, gRPC, metrics)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Frontend(Protocol):
    """A listener the server starts after its models loaded and stops before they unload."""

    name: str

    async def start(self) -> None:
        """Start listening; raise ``OSError`` when the address cannot be bound."""

    async def stop(self, grace_seconds: float) -> None:
        """Stop accepting, let in-flight calls finish for up to ``grace_seconds``, close."""
