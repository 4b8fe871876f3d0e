"""Poll mode: rescan the repositories now and then and bring the served models in line.

A model's fingerprint is what a poll compares: the (path, mtime, size) of every file
under its folder, grouped by part (its configuration, each version folder, the rest),
so that a poll knows which versions changed without reading any file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Part name -> the (relative path, mtime ns, size) of each of its files, sorted.
Fingerprint = dict[str, tuple[tuple[str, int, int], ...]]

#: Parts whose change reloads every version (a version folder reloads only itself).
CONFIG_PART, SHARED_PART = "config", "shared"
#: Top-level entries of a model folder that hold its configuration.
_CONFIG_ENTRIES = frozenset({"config.pbtxt", "configs"})
#: What backends write next to the model files while they load (never a change).
_SKIPPED = frozenset({"__pycache__"})


def model_fingerprint(model_dir: Path) -> Fingerprint:
    """The files of a model folder by part: ``config``, each version number, ``shared``."""
    parts: dict[str, list[tuple[str, int, int]]] = {}
    try:
        children = sorted(model_dir.iterdir())
    except OSError:
        return {}
    for child in children:
        if child.name in _SKIPPED or child.name.startswith("."):
            continue
        if child.name in _CONFIG_ENTRIES:
            part = CONFIG_PART
        elif child.is_dir() and child.name.isdigit():
            part = child.name
        else:
            part = SHARED_PART
        parts.setdefault(part, []).extend(_files(child, model_dir))
    return {part: tuple(sorted(files)) for part, files in parts.items()}


def _files(path: Path, root: Path) -> list[tuple[str, int, int]]:
    """(relative path, mtime ns, size) of ``path`` and, for a folder, every file under it."""
    try:
        if not path.is_dir():
            stat = path.stat()
            return [(str(path.relative_to(root)), stat.st_mtime_ns, stat.st_size)]
        found = []
        for child in path.iterdir():
            if child.name not in _SKIPPED:
                found.extend(_files(child, root))
        return found
    except OSError:  # removed while we looked: the next poll sees the rest
        return []


def changed_parts(old: Fingerprint, new: Fingerprint) -> set[str]:
    """The parts that differ between two fingerprints (added and removed ones included)."""
    return {part for part in old.keys() | new.keys() if old.get(part) != new.get(part)}


class RepositoryPoller:
    """The background task of ``--model-control-mode=poll`` (every ``--repository-poll-secs``)."""

    def __init__(self, manager: Any, interval: float) -> None:
        #: The ``ModelManager`` whose ``sync()`` applies one scan.
        self._manager = manager
        self._interval = interval
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Stop polling; a scan under way finishes first (its loads are not torn apart)."""
        if self._task is None:
            return
        self._stopping.set()
        await self._task
        self._task = None

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)
                return
            try:
                await self._manager.sync()
            except Exception:  # a bad scan must not end polling
                log.exception("failed to poll the model repositories")
