"""The local filesystem repository source: ``<repo>/<model>/config.pbtxt`` and version folders."""

from __future__ import annotations

from pathlib import Path

from triton_kernel.kernel.errors import InvalidArgument
from triton_kernel.kernel.hookspecs import hookimpl


class LocalRepository:
    """A folder whose sub-folders are models (hidden folders are skipped)."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.path = Path(location).expanduser().resolve()

    def list_models(self) -> dict[str, Path]:
        if not self.path.is_dir():
            raise InvalidArgument(f"failed to stat file {self.location}")
        return {
            child.name: child
            for child in self.path.iterdir()
            if child.is_dir() and not child.name.startswith(".")
        }


@hookimpl(trylast=True)
def tk_repository_source(location: str) -> LocalRepository | None:
    if "://" in location and not location.startswith("file://"):
        return None
    return LocalRepository(location.removeprefix("file://"))
