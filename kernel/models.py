"""The model repository manager: which models exist, loading and unloading them, lookups.

Models are loaded concurrently; a model that fails to load is recorded with its
reason (UNAVAILABLE) and never stops the others. An ensemble loads after the models
its steps name (loading them too when they are not loaded yet), and is refused, with
Triton's reason, when one of them is missing, failed, or leads back to it.
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
from .cache import create_cache
from .config import (
    ENSEMBLE_PLATFORM,
    ModelConfig,
    config_from_json,
    fill_defaults,
    read_config_file,
    validate_composition,
    validate_config,
)
from .ensemble import EnsembleBackend
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
    #: The configuration itself is invalid (Triton refuses it while polling the repository).
    config_error: bool = False

    @property
    def ready_versions(self) -> list[ModelVersion]:
        return [v for v in self.versions.values() if v.ready]

    @property
    def steps(self) -> list[str]:
        """The models a loaded ensemble's steps name (none for other models)."""
        for version in self.ready_versions:
            return _step_models(version.config)
        return []


@dataclass(slots=True)
class _LoadPlan:
    """Models to load together; an ensemble loads after the models its steps name."""

    #: Model -> its location and override, for each model to (re)load.
    targets: dict[str, tuple[tuple[Path, Path], ModelOverride | None]]
    #: Model -> the models its steps name, read from its configuration (empty: not an ensemble).
    steps: dict[str, list[str]] = field(default_factory=dict)
    #: Model -> why it cannot load (a step names a missing model, or leads back to it).
    errors: dict[str, str] = field(default_factory=dict)


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
        self._ensembles = EnsembleBackend()
        self._options = options
        #: The server's response cache (``--cache-config``), shared by every model.
        self._cache = create_cache(options.cache_config)
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
        """Load ``names`` (all discovered models when None) and the models their ensembles use."""
        found = self.discover()
        wanted = sorted(found) if names is None else names
        for name in wanted:
            if name not in found:
                raise NotFound(f"failed to load '{name}', failed to poll from model repository")
        await self._load_planned(self._plan({n: (found[n], None) for n in wanted}, found))

    async def load(
        self,
        name: str,
        location: tuple[Path, Path] | None = None,
        override: ModelOverride | None = None,
    ) -> ModelEntry:
        """(Re)load one model; its failure is recorded on the entry, not raised.

        The composing models an ensemble needs load first when they are not loaded, and
        the loaded ensembles that use the model reload after it, checked against it anew.
        """
        found = self.discover()
        if location is None:
            location = found.get(name)
        if override is not None and override.model_dir is not None:
            location = (override.model_dir, override.model_dir.parent)
        if location is None:
            raise Internal(f"failed to load '{name}', failed to poll from model repository")
        plan = self._plan({name: (location, override)}, found, with_users=True)
        await self._load_planned(plan)
        return self._models[name]

    async def _load_entry(
        self,
        name: str,
        location: tuple[Path, Path],
        override: ModelOverride | None,
        graph_error: str = "",
    ) -> ModelEntry:
        entry = self._models.get(name)
        if entry is None:
            entry = self._models[name] = ModelEntry(name, *location)
        async with entry.lock:
            await self._unload_versions(entry)
            if entry.override is not None and entry.override is not override:
                entry.override.remove_files()
            entry.model_dir, entry.repository = location
            entry.override = override
            entry.reason, entry.config_error = "", False
            try:
                await self._load_versions(entry, graph_error)
            except KernelError as exc:
                entry.versions = {}  # the index shows the model's reason, not old versions'
                entry.reason = exc.message
                log.error("failed to load '%s': %s", name, exc.message)
        return entry

    async def unload(self, name: str) -> None:
        """Unload every version of ``name``, and first the loaded ensembles that use it (Triton).

        Unloading an unknown model does nothing (Triton).
        """
        await self._unload_in_order(self._users_of({name}) | {name})

    async def _unload_entry(self, name: str) -> None:
        entry = self._models.get(name)
        if entry is None:
            return
        async with entry.lock:
            await self._unload_versions(entry)
            entry.reason = "unloaded"
            if entry.override is not None:
                entry.override.remove_files()

    async def unload_all(self) -> None:
        await self._unload_in_order(set(self._models))

    async def _unload_in_order(self, names: set[str]) -> None:
        """Unload ``names``, each ensemble before the models it uses (its requests drain)."""
        remaining = set(names)
        while remaining:
            used = {step for name in remaining for step in self._steps(name)}
            batch = [name for name in remaining if name not in used] or list(remaining)
            await asyncio.gather(*(self._unload_entry(name) for name in batch))
            remaining.difference_update(batch)

    async def _unload_versions(self, entry: ModelEntry) -> None:
        versions = list(entry.versions.values())
        await asyncio.gather(
            *(v.finalize() for v in versions if v.state is not ModelState.UNAVAILABLE)
        )

    async def _load_versions(self, entry: ModelEntry, graph_error: str = "") -> None:
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
        if backend_name == ENSEMBLE_PLATFORM:
            self._check_ensemble(entry, config, graph_error)
            backend: Any = self._ensembles
        else:
            if not config.backend and config.platform not in PLATFORM_BACKENDS:
                config.backend = backend_name
            backend = self._backends.get(backend_name)
        numbers = select_versions(config, version_numbers(entry.model_dir), entry.name)
        entry.versions = {n: ModelVersion(entry.name, n, cache=self._cache) for n in numbers}
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

    # --- ensembles: dependencies and load order ---------------------------------------

    def _plan(
        self,
        asked: dict[str, tuple[tuple[Path, Path], ModelOverride | None]],
        found: dict[str, tuple[Path, Path]],
        *,
        with_users: bool = False,
    ) -> _LoadPlan:
        """What loading ``asked`` involves: composing models not loaded yet join the plan,
        and with ``with_users`` so do the loaded ensembles that use a model of the plan."""
        plan = _LoadPlan(dict(asked))
        pending = list(asked)
        while pending:
            name = pending.pop()
            plan.steps[name] = steps = self._read_steps(*plan.targets[name])
            for step in steps:
                if step not in plan.targets and step in found and not self._ready(step):
                    plan.targets[step] = (found[step], None)
                    pending.append(step)
            if not pending and with_users:
                for user in self._users_of(set(plan.targets)) - set(plan.targets):
                    entry = self._models[user]
                    plan.targets[user] = ((entry.model_dir, entry.repository), entry.override)
                    pending.append(user)
        for name, steps in plan.steps.items():
            error = self._graph_error(name, steps, plan, found)
            if error:
                plan.errors[name] = error
        return plan

    def _graph_error(
        self, name: str, steps: list[str], plan: _LoadPlan, found: dict[str, tuple[Path, Path]]
    ) -> str:
        """Why the ensemble ``name`` cannot load whatever its steps' models do, or ''."""
        missing = sorted(
            {s for s in steps if s not in plan.targets and s not in found and not self._ready(s)}
        )
        if missing:
            return (
                f"ensemble {name} contains models that are not available or ambiguous: "
                + ", ".join(missing)
            )
        last = _cycle_end(name, lambda n: plan.steps[n] if n in plan.steps else self._steps(n))
        if last is not None:
            return f"circular dependency between ensembles: {name} -> ... -> {last} -> {name}"
        return ""

    async def _load_planned(self, plan: _LoadPlan) -> None:
        """Load the plan concurrently, each ensemble once the models it names are done."""
        tasks: dict[str, asyncio.Task[ModelEntry]] = {}

        async def load_one(name: str) -> ModelEntry:
            if name not in plan.errors:  # no cycle: the waits end
                waits = [tasks[s] for s in plan.steps[name] if s in tasks and s != name]
                if waits:
                    await asyncio.wait(waits)
            location, override = plan.targets[name]
            return await self._load_entry(name, location, override, plan.errors.get(name, ""))

        for name in plan.targets:
            tasks[name] = asyncio.ensure_future(load_one(name))
        await asyncio.gather(*tasks.values())

    def _read_steps(self, location: tuple[Path, Path], override: ModelOverride | None) -> list[str]:
        """The models an ensemble's configuration names, before loading it (else none)."""
        try:
            if override is not None:
                config = override.config
            else:
                config = read_config_file(location[0], self._options.model_config_name)
        except KernelError:
            return []  # the load reports it
        return [] if config is None else _step_models(config)

    def _ready(self, name: str) -> bool:
        entry = self._models.get(name)
        return entry is not None and bool(entry.ready_versions)

    def _steps(self, name: str) -> list[str]:
        entry = self._models.get(name)
        return entry.steps if entry is not None else []

    def _users_of(self, names: set[str]) -> set[str]:
        """The loaded ensembles that use one of ``names``, directly or through another."""
        users: set[str] = set()
        grown = True
        while grown:
            grown = False
            for entry in self._models.values():
                if entry.name not in users and names.union(users).intersection(entry.steps):
                    users.add(entry.name)
                    grown = True
        return users - names

    def _check_ensemble(self, entry: ModelEntry, config: Any, graph_error: str) -> None:
        """Refuse an ensemble whose configuration or composing models rule it out."""
        try:
            validate_config(config, entry.name)
        except InvalidArgument:
            entry.config_error = True
            raise
        if graph_error:
            raise InvalidArgument(graph_error)
        versions: dict[str, set[int]] = {}
        for step in config.ensemble_scheduling.step:
            versions.setdefault(step.model_name, set()).add(step.model_version)
        for model, wanted in versions.items():
            self._check_composing(config.name, model, wanted)
        decoupled = validate_composition(
            config, lambda name, version: self.get(name, version).config
        )
        config.model_transaction_policy.decoupled = decoupled

    def _check_composing(self, ensemble: str, model: str, wanted: set[int]) -> None:
        """Triton's checks of one composing model, once its own load is over."""
        entry = self._models.get(model)
        where = f"ensemble '{ensemble}' depends on '{model}'"
        if entry is None:
            raise InvalidArgument(
                f"ensemble {ensemble} contains models that are not available or ambiguous: {model}"
            )
        if entry.reason and entry.reason != "unloaded":
            raise InvalidArgument(
                f"{where} which is not valid. Model '{model}' failed with error: {entry.reason}"
            )
        ready = {v.version for v in entry.ready_versions}
        if not ready:
            failures = "".join(
                f"version {v.version} is at UNAVAILABLE state: {v.reason};"
                for v in entry.versions.values()
                if v.reason and v.reason != "unloaded"
            )
            detail = f" Model '{model}' loading failed with error: {failures}" if failures else ""
            raise InvalidArgument(f"{where} which has no loaded version.{detail}")
        for version in sorted(wanted - {-1}):
            if version not in ready:
                raise InvalidArgument(f"{where} whose required version {version} is not loaded.")


def resolve_backend(config: Any, model_dir: Path) -> str:
    """The backend a model runs on: ``backend``, else its ``platform``, else its files.

    An ensemble runs on the kernel itself: ``ENSEMBLE_PLATFORM`` names no plugin.
    """
    if config.platform == ENSEMBLE_PLATFORM:
        return ENSEMBLE_PLATFORM
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


def _step_models(config: Any) -> list[str]:
    """The models an ensemble configuration's steps name, each once, in step order."""
    return list(
        dict.fromkeys(s.model_name for s in config.ensemble_scheduling.step if s.model_name)
    )


def _cycle_end(start: str, steps_of: Any) -> str | None:
    """The ensemble whose step leads back to ``start``, or None when none does."""
    seen: set[str] = set()
    pending = [start]
    while pending:
        name = pending.pop()
        for step in steps_of(name):
            if step == start:
                return name
            if step not in seen:
                seen.add(step)
                pending.append(step)
    return None
