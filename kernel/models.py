"""The model repository manager: which models exist, loading and unloading them, lookups.

Models are loaded concurrently; a model that fails to load is recorded with its
reason (UNAVAILABLE) and never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backend import ModelContext
from .config import (
    ModelConfig,
    config_from_json,
    fill_defaults,
    read_config_file,
    validate_config,
)
from .errors import Internal, InvalidArgument, KernelError, NotFound, Unavailable
from .model import ModelState, ModelVersion
from .options import ServerOptions
from .plugins import BackendLoader
from .repository import RepositorySource, version_numbers

log = logging.getLogger(__name__)

#: ``platform`` values that name a backend (Triton's platform -> backend mapping).
PLATFORM_BACKENDS = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorrt_plan": "tensorrt",
}
#: Default model file -> backend, for configurations that name neither.
FILE_BACKENDS = {
    "model.py": "python",
    "model.onnx": "onnxruntime",
    "model.pt": "pytorch",
    "model.plan": "tensorrt",
}


@dataclass(slots=True)
class ModelOverride:
    """A load request's own configuration (and files) in place of the repository's."""

    config: Any
    #: A private model directory holding the override files, when there are any.
    model_dir: Path | None = None

    @classmethod
    def build(cls, name: str, config_json: str | None, files: dict[str, bytes]) -> ModelOverride:
        if files and config_json is None:  # Triton's wording for a load it cannot do
            raise Internal(f"failed to load '{name}', failed to poll from model repository")
        try:
            config = config_from_json(config_json or "{}")
        except InvalidArgument:
            raise Internal(
                f"failed to load '{name}', failed to poll from model repository"
            ) from None
        if not files:
            return cls(config)
        model_dir = Path(tempfile.mkdtemp(prefix=f"triton-kernel-{name}-")) / name
        try:
            for relative, content in files.items():
                target = (model_dir / relative).resolve()
                if model_dir.resolve() not in target.parents:
                    raise InvalidArgument(
                        f"failed to load '{name}': override file path '{relative}' leaves the "
                        "model directory"
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
        except BaseException:
            shutil.rmtree(model_dir.parent, ignore_errors=True)
            raise
        return cls(config, model_dir)

    def remove_files(self) -> None:
        if self.model_dir is not None:
            shutil.rmtree(self.model_dir.parent, ignore_errors=True)


@dataclass(slots=True)
class ModelEntry:
    """A model of the repository and its versions as they stand."""

    name: str
    model_dir: Path
    repository: Path
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    #: Why the model as a whole failed to load (bad config, unknown backend).
    reason: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: The configuration (and files) the last load was given in place of the repository's.
    override: ModelOverride | None = None

    @property
    def ready_versions(self) -> list[ModelVersion]:
        return [v for v in self.versions.values() if v.ready]


class ModelManager:
    """Owns every model of the server and the only way a request finds its version."""

    def __init__(
        self,
        sources: list[RepositorySource],
        backends: BackendLoader,
        options: ServerOptions,
        server: Any = None,
    ) -> None:
        self._sources = sources
        #: The ``Server`` that owns this manager, handed to backends (BLS, ensembles).
        self._server = server
        self._backends = backends
        self._options = options
        self._models: dict[str, ModelEntry] = {}

    # --- discovery -----------------------------------------------------------

    def discover(self) -> dict[str, tuple[Path, Path]]:
        """Model name -> (model dir, repository) across all repositories."""
        found: dict[str, tuple[Path, Path]] = {}
        for source in self._sources:
            for name, model_dir in sorted(source.list_models().items()):
                if name in found:
                    raise InvalidArgument(
                        f"model '{name}' appears in multiple repositories: "
                        f"{found[name][1]} and {model_dir.parent}"
                    )
                found[name] = (model_dir, model_dir.parent)
        return found

    # --- lookups (hot path) ---------------------------------------------------

    def get(self, name: str, version: int = -1) -> ModelVersion:
        """The version a request for ``name`` (and ``version``, -1 = newest ready) reaches."""
        entry = self._models.get(name)
        if entry is None:
            raise NotFound(f"Request for unknown model: '{name}' is not found")
        if version < 0:
            ready = entry.ready_versions
            if not ready and not entry.versions:
                raise NotFound(f"Request for unknown model: '{name}' is not found")
            if not ready:
                raise NotFound(f"Request for unknown model: '{name}' has no available versions")
            return max(ready, key=lambda v: v.version)
        found = entry.versions.get(version)
        if found is None or found.state is ModelState.UNAVAILABLE:
            raise NotFound(f"Request for unknown model: '{name}' version {version} is not found")
        if not found.ready:
            raise Unavailable(
                f"Request for unknown model: '{name}' version {version} is not at ready state"
            )
        return found

    def entries(self) -> list[ModelEntry]:
        return [self._models[name] for name in sorted(self._models)]

    def entry(self, name: str) -> ModelEntry | None:
        return self._models.get(name)

    # --- lifecycle ------------------------------------------------------------

    async def load_all(self, names: list[str] | None = None) -> None:
        """Load ``names`` (all discovered models when None) concurrently."""
        found = self.discover()
        wanted = sorted(found) if names is None else names
        for name in wanted:
            if name not in found:
                raise NotFound(f"failed to load '{name}', failed to poll from model repository")
        await asyncio.gather(*(self.load(name, found[name]) for name in wanted))

    async def load(
        self,
        name: str,
        location: tuple[Path, Path] | None = None,
        override: ModelOverride | None = None,
    ) -> ModelEntry:
        """(Re)load one model; its failure is recorded on the entry, not raised."""
        if location is None:
            location = self.discover().get(name)
        if override is not None and override.model_dir is not None:
            location = (override.model_dir, override.model_dir.parent)
        if location is None:
            raise Internal(f"failed to load '{name}', failed to poll from model repository")
        entry = self._models.get(name)
        if entry is None:
            entry = self._models[name] = ModelEntry(name, *location)
        async with entry.lock:
            await self._unload_versions(entry)
            if entry.override is not None and entry.override is not override:
                entry.override.remove_files()
            entry.model_dir, entry.repository = location
            entry.override = override
            entry.reason = ""
            try:
                await self._load_versions(entry)
            except KernelError as exc:
                entry.reason = exc.message
                log.error("failed to load '%s': %s", name, exc.message)
        return entry

    async def unload(self, name: str) -> None:
        """Unload every version of ``name``; unloading an unknown model does nothing (Triton)."""
        entry = self._models.get(name)
        if entry is None:
            return
        async with entry.lock:
            await self._unload_versions(entry)
            entry.reason = "unloaded"
            if entry.override is not None:
                entry.override.remove_files()

    async def unload_all(self) -> None:
        await asyncio.gather(*(self.unload(name) for name in list(self._models)))

    async def _unload_versions(self, entry: ModelEntry) -> None:
        versions = list(entry.versions.values())
        await asyncio.gather(
            *(v.finalize() for v in versions if v.state is not ModelState.UNAVAILABLE)
        )

    async def _load_versions(self, entry: ModelEntry) -> None:
        if entry.override is not None:
            config = type(entry.override.config)()
            config.CopyFrom(entry.override.config)
        else:
            config = read_config_file(entry.model_dir, self._options.model_config_name)
        if config is None:
            if not self._options.auto_complete_config:
                raise InvalidArgument(
                    f"failed to load '{entry.name}': no {entry.model_dir / 'config.pbtxt'} and "
                    "auto-complete is disabled"
                )
            config = ModelConfig()
        fill_defaults(config, entry.name)
        backend_name = resolve_backend(config, entry.model_dir)
        if not config.backend and config.platform not in PLATFORM_BACKENDS:
            config.backend = backend_name
        backend = self._backends.get(backend_name)
        numbers = select_versions(config, version_numbers(entry.model_dir), entry.name)
        entry.versions = {n: ModelVersion(entry.name, n) for n in numbers}
        await asyncio.gather(
            *(self._load_version(entry, backend, config, v) for v in entry.versions.values())
        )

    async def _load_version(
        self, entry: ModelEntry, backend: Any, config: Any, version: ModelVersion
    ) -> None:
        version_config = type(config)()
        version_config.CopyFrom(config)
        context = ModelContext(
            name=entry.name,
            version=version.version,
            model_dir=entry.model_dir,
            repository=entry.repository,
            config=version_config,
            auto_complete=self._options.auto_complete_config,
            backend_settings=self._backend_settings(backend.name),
            server=self._server,
        )
        try:
            backend_model = await backend.load_model(context)
            try:
                fill_defaults(backend_model.config, entry.name)
                validate_config(backend_model.config, entry.name)
            except BaseException:
                await backend_model.finalize()
                raise
            await version.start(backend_model, entry.model_dir)
        except Exception as exc:
            reason = exc.message if isinstance(exc, KernelError) else f"{type(exc).__name__}: {exc}"
            version.state, version.reason = ModelState.UNAVAILABLE, reason
            log.error("failed to load '%s' version %d: %s", entry.name, version.version, reason)
        else:
            log.info("successfully loaded '%s' version %d", entry.name, version.version)

    def _backend_settings(self, name: str) -> dict[str, str]:
        config = self._options.backend_config
        return {**config.get("", {}), **config.get(name, {})}


def resolve_backend(config: Any, model_dir: Path) -> str:
    """The backend a model runs on: ``backend``, else its ``platform``, else its files."""
    if config.backend:
        return config.backend
    if config.platform:
        if config.platform in PLATFORM_BACKENDS:
            return PLATFORM_BACKENDS[config.platform]
        raise InvalidArgument(f"unexpected platform type '{config.platform}' for {config.name}")
    for child in sorted(model_dir.iterdir()):
        if child.is_dir() and child.name.isdigit():
            for filename, backend in FILE_BACKENDS.items():
                if (child / (config.default_model_filename or filename)).exists():
                    return backend
    raise InvalidArgument(
        f"unable to determine the backend of model '{config.name}': set 'backend' or "
        "'platform' in its config.pbtxt"
    )


def select_versions(config: Any, available: list[int], name: str) -> list[int]:
    """The versions the model's ``version_policy`` serves (Triton's latest/all/specific)."""
    policy = config.version_policy.WhichOneof("policy_choice")
    if policy == "all":
        chosen = available
    elif policy == "specific":
        chosen = [v for v in config.version_policy.specific.versions if v in available]
    else:
        count = max(config.version_policy.latest.num_versions, 1)
        chosen = available[-count:]
    if not chosen:
        raise InvalidArgument(
            f"at least one version must be available under the version policy of model '{name}'"
        )
    return sorted(chosen)
