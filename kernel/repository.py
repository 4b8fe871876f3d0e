"""The contract a repository source fulfils, and the reading of a model's versions."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class RepositorySource(Protocol):
    """One ``--model-repository``: a place that holds model folders."""

    #: The location as the user gave it.
    location: str

    def list_models(self) -> dict[str, Path]:
        """Model name -> a local folder holding ``config.pbtxt`` and version folders.

        Called at start and on each repository index or load; remote sources return
        a local copy.
        """


def version_numbers(model_dir: Path) -> list[int]:
    """The numeric version folders of a model, ascending (other folders are ignored)."""
    versions = []
    for child in model_dir.iterdir():
        if child.is_dir() and child.name.isdigit() and not child.name.startswith("0"):
            versions.append(int(child.name))
        elif child.is_dir() and child.name == "0":
            versions.append(0)
    return sorted(versions)
