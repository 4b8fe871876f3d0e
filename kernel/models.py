"""The model repository manager: which models exist, loading and unloading them, lookups.

Models are loaded concurrently (at most ``--model-load-thread-count`` versions at
once); a model that fails to load is recorded with its reason (UNAVAILABLE) and never
stops the others. An ensemble loads after the models its steps name (loading them too
when they are not loaded yet), and is refused, with Triton's reason, when one of them
is missing, failed, or leads back to it.

A reload never leaves a gap: the new versions load beside the serving ones, replace
them in one step once every one of them is ready, and the old ones drain in the
background. A reload that fails leaves the serving versions as they were (Triton).
"""

from __future__ import annotations

import asyncio
import contextlib
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
from .poller import CONFIG_PART, SHARED_PART, Fingerprint, changed_parts, model_fingerprint
from .repository import RepositorySource, version_numbers

log = logging.getLogger(__name__)

#: ``platform`` values that name a backend (Triton's platform -> backend mapping).
PLATFORM_BACKENDS = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorrt_plan": "tensorrt",
}
#: Default model file -> backend, for configurations that name neither.
#: In the order Triton tries them when a config names neither backend nor platform.
FILE_BACKENDS = {
    "model.plan": "tensorrt",
    "model.onnx": "onnxruntime",
    "model.pt": "pytorch",
    "model.py": "python",
}
#: How long a replaced version still admits the requests that looked it up before the
#: swap (a frontend may read the body in between) before it drains and unloads.
RETIRE_GRACE_S = 1.0
#: Triton's index reason for a model found in more than one repository.
DUPLICATE_REASON = "model appears in two or more repositories"
#: Triton's words for each error code, as its load call prefixes a version's failure.
_CODE_WORDS = {
    "UNKNOWN": "Unknown",
    "INTERNAL": "Internal",
    "NOT_FOUND": "Not found",
    "INVALID_ARG": "Invalid argument",
    "UNAVAILABLE": "Unavailable",
    "UNSUPPORTED": "Unsupported",
    "ALREADY_EXISTS": "Already exists",
    "CANCELLED": "Cancelled",
}


class PollFailure(InvalidArgument):
    """The configuration is unusable on its own: Triton refuses it while polling the
    repository (its load call answers 500), and the versions serving keep serving."""


class _DependencyFailure(InvalidArgument):
    """An ensemble's steps rule it out: Triton unloads the ensemble (index: the reason)."""


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
                _write_override_file(name, model_dir, relative, content)
        except BaseException:
            shutil.rmtree(model_dir.parent, ignore_errors=True)
            raise
        return cls(config, model_dir)

    def remove_files(self) -> None:
        if self.model_dir is not None:
            shutil.rmtree(self.model_dir.parent, ignore_errors=True)


def _write_override_file(name: str, model_dir: Path, relative: str, content: bytes) -> None:
    """Write one ``file:<path>`` override inside ``model_dir``, never anywhere else.

    An absolute path is refused; a path leading out of the folder (``../``) gets
    Triton's answer to it (a load it cannot poll).
    """
    if Path(relative).is_absolute() or relative.startswith(("/", "\\")):
        raise InvalidArgument(
            f"failed to load '{name}': override file path '{relative}' is absolute; "
            "file:<path> is relative to the model directory"
        )
    target = (model_dir / relative).resolve()
    if model_dir.resolve() not in target.parents:
        log.error("override file path '%s' of model '%s' leaves its directory", relative, name)
        raise Internal(f"failed to load '{name}', failed to poll from model repository")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    except OSError as exc:
        raise InvalidArgument(
            f"Invalid file parameter 'file:{relative}': {exc.strerror or exc}"
        ) from None


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
    #: The last load failed on the configuration itself (Triton: while polling).
    config_error: bool = False
    #: Why the last (re)load failed, in Triton's words for its load call ('' if it did not).
    load_error: str = ""
    #: What the serving versions were loaded from (None: nothing committed, or an override).
    fingerprint: Fingerprint | None = None
    #: Asked for by name, not only as an ensemble's step: ``unload_dependents`` keeps it.
    explicit: bool = False

    @property
    def ready_versions(self) -> list[ModelVersion]:
        return [v for v in self.versions.values() if v.ready]

    @property
    def live(self) -> bool:
        """Serving, or on its way to (a poll unloads a live model whose folder went away)."""
        return self.fingerprint is not None or any(
            v.state is not ModelState.UNAVAILABLE for v in self.versions.values()
        )

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


@dataclass(slots=True)
class _Load:
    """One model's load as prepared: where from, its configuration, backend and versions."""

    location: tuple[Path, Path]
    override: ModelOverride | None
    #: The model folder as it was read (None for an override: never compared).
    fingerprint: Fingerprint | None
    config: Any
    backend: Any
    numbers: list[int]


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
        #: ``--model-load-thread-count``: how many versions load at once.
        self._load_slots = asyncio.Semaphore(max(1, options.model_load_thread_count))
        #: Replaced versions draining in the background, and the signal to stop waiting.
        self._retiring: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    # --- discovery -----------------------------------------------------------

    def scan(self) -> tuple[dict[str, tuple[Path, Path]], set[str]]:
        """Model name -> (model dir, repository), and the names found in several repositories."""
        found: dict[str, tuple[Path, Path]] = {}
        duplicates: set[str] = set()
        for source in self._sources:
            for name, model_dir in sorted(source.list_models().items()):
                if name in found:
                    duplicates.add(name)
                found.setdefault(name, (model_dir, model_dir.parent))
        for name in duplicates:
            del found[name]
        return found, duplicates

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
        if found is None:
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
        """Load ``names`` (all discovered models when None) and the models their ensembles use.

        A model found in several repositories loads from none (Triton): it is recorded
        as failed with Triton's reason.
        """
        found, duplicates = self.scan()
        for name in sorted(duplicates if names is None else ()):
            log.error("failed to poll model '%s': not unique across all model repositories", name)
            entry = self._models.setdefault(name, ModelEntry(name, Path(), Path()))
            entry.reason = DUPLICATE_REASON
        wanted = sorted(found) if names is None else names
        for name in wanted:
            if name not in found:
                raise NotFound(f"failed to load '{name}', failed to poll from model repository")
        await self._load_planned(self._plan({n: (found[n], None) for n in wanted}, found))
        self._mark_explicit(wanted)

    async def load(
        self,
        name: str,
        location: tuple[Path, Path] | None = None,
        override: ModelOverride | None = None,
    ) -> ModelEntry:
        """(Re)load one model; its failure is recorded on the entry, not raised.

        The composing models an ensemble needs load first when they are not loaded, and
        the loaded ensembles that use the model reload after it, checked against it anew.
        A model whose files did not change since it loaded is left as it is (Triton).
        """
        found, _ = self.scan()
        if location is None:
            location = found.get(name)
        if override is not None and override.model_dir is not None:
            location = (override.model_dir, override.model_dir.parent)
        if location is None:
            raise Internal(f"failed to load '{name}', failed to poll from model repository")
        plan = self._plan({name: (location, override)}, found, with_users=True)
        await self._load_planned(plan)
        self._mark_explicit([name])
        return self._models[name]

    async def sync(self) -> None:
        """One poll: load new models, reload changed ones, unload removed ones (poll mode).

        A model whose last load failed is tried again at every poll, as Triton does.
        """
        found, duplicates = self.scan()
        for name in sorted(duplicates):
            log.error("failed to poll model '%s': not unique across all model repositories", name)
        removed = {e.name for e in self._models.values() if e.live and e.name not in found}
        if removed:
            await self._unload_in_order(self._users_of(removed) | removed)
        changed = [name for name in found if self._changed(name, found)]
        if changed:
            asked = {name: (found[name], None) for name in changed}
            await self._load_planned(self._plan(asked, found, with_users=True))
            self._mark_explicit(changed)

    def _changed(self, name: str, found: dict[str, tuple[Path, Path]]) -> bool:
        """Whether a poll (re)loads ``name``: new, changed, or failed last time; an ensemble
        unloaded because a model it uses went away waits until that model is back."""
        entry, location = self._models.get(name), found[name]
        if entry is None or entry.override is not None:
            return True
        if entry.fingerprint is None:
            if entry.reason == "unloaded":
                return all(step in found for step in self._read_steps(location, None))
            return True
        if (entry.model_dir, entry.repository) != location:
            return True
        return entry.fingerprint != model_fingerprint(location[0])

    def _mark_explicit(self, names: list[str]) -> None:
        for name in names:
            entry = self._models.get(name)
            if entry is not None and entry.live:
                entry.explicit = True

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
            entry.load_error, entry.config_error = "", False
            fingerprint = None if override is not None else model_fingerprint(location[0])
            try:
                config, backend, numbers = self._prepare(name, location, override, graph_error)
            except KernelError as exc:
                await self._refuse(entry, override, exc)
                return entry
            load = _Load(location, override, fingerprint, config, backend, numbers)
            await self._replace_versions(entry, load)
        return entry

    async def _refuse(
        self, entry: ModelEntry, override: ModelOverride | None, exc: KernelError
    ) -> None:
        """A load failed before any version loaded: what serves keeps serving, unless it is
        an ensemble its steps now rule out (Triton unloads that one)."""
        log.error("failed to load '%s': %s", entry.name, exc.message)
        entry.load_error = exc.message
        entry.config_error = isinstance(exc, PollFailure)
        if override is not None and override is not entry.override:
            override.remove_files()
        if entry.ready_versions and not isinstance(exc, _DependencyFailure):
            return
        await self._unload_versions(entry)
        entry.versions, entry.reason, entry.fingerprint = {}, exc.message, None

    async def _replace_versions(self, entry: ModelEntry, load: _Load) -> None:
        """Load the versions that changed beside the serving ones, then swap them in at once.

        A version not serving now shows LOADING meanwhile; a serving one keeps serving.
        If one version fails, the whole load is undone (Triton: all or nothing).
        """
        kept = self._unchanged_versions(entry, load)
        fresh = {
            n: ModelVersion(entry.name, n, cache=self._cache) for n in load.numbers if n not in kept
        }
        for number, version in fresh.items():
            current = entry.versions.get(number)
            if current is None or not current.ready:
                entry.versions[number] = version
        errors = await asyncio.gather(
            *(self._load_version(entry.name, load, v) for v in fresh.values())
        )
        failures = "".join(errors)
        if failures:
            await self._undo(entry, load, fresh, failures)
        else:
            self._commit(entry, load, fresh)

    def _unchanged_versions(self, entry: ModelEntry, load: _Load) -> set[int]:
        """Serving versions whose files and configuration did not change: they stay as they
        are (Triton reloads only what changed; an ensemble is always checked anew)."""
        if load.fingerprint is None or entry.fingerprint is None or entry.override is not None:
            return set()
        if load.backend is self._ensembles or (entry.model_dir, entry.repository) != load.location:
            return set()
        changed = changed_parts(entry.fingerprint, load.fingerprint)
        if CONFIG_PART in changed or SHARED_PART in changed:
            return set()
        serving = {n for n in load.numbers if n in entry.versions and entry.versions[n].ready}
        return serving - {int(part) for part in changed if part.isdigit()}

    async def _undo(
        self, entry: ModelEntry, load: _Load, fresh: dict[int, ModelVersion], failures: str
    ) -> None:
        """Unload what this load brought up; the versions serving before keep serving."""
        entry.load_error = failures
        await asyncio.gather(*(v.finalize() for v in fresh.values() if v.ready))
        if load.override is not None and load.override is not entry.override:
            load.override.remove_files()
        if not entry.ready_versions:
            entry.fingerprint = None

    def _commit(self, entry: ModelEntry, load: _Load, fresh: dict[int, ModelVersion]) -> None:
        """Swap the new versions in (one step: no request sees a mix) and retire the old."""
        retired: list[tuple[ModelVersion, ModelVersion | None]] = []
        for number, version in fresh.items():
            previous = entry.versions.get(number)
            entry.versions[number] = version
            if previous is not None and previous is not version and previous.ready:
                retired.append((previous, None))
        for number, previous in list(entry.versions.items()):
            if number not in load.numbers and previous.ready:
                record = ModelVersion(entry.name, number, state=ModelState.UNLOADING)
                entry.versions[number] = record
                retired.append((previous, record))
        leftover = entry.override if entry.override is not load.override else None
        entry.model_dir, entry.repository = load.location
        entry.override, entry.fingerprint, entry.reason = load.override, load.fingerprint, ""
        if retired or leftover is not None:
            task = asyncio.ensure_future(self._retire(retired, leftover))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(
        self, retired: list[tuple[ModelVersion, ModelVersion | None]], leftover: Any
    ) -> None:
        """Let requests that found a replaced version before the swap reach it, then drain
        and unload it; its index record (if it left the served set) ends ``unloaded``."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), RETIRE_GRACE_S)
        await asyncio.gather(*(self._finalize(version) for version, _ in retired))
        for _, record in retired:
            if record is not None:
                record.state, record.reason = ModelState.UNAVAILABLE, "unloaded"
        if leftover is not None:
            leftover.remove_files()

    async def unload(self, name: str, *, dependents: bool = False) -> None:
        """Unload every version of ``name``, and first the loaded ensembles that use it (Triton).

        ``dependents`` (``unload_dependents``) also unloads the models those ensembles
        use that nothing else uses and that were not loaded by name. Unloading an
        unknown model does nothing (Triton).
        """
        names = self._users_of({name}) | {name}
        if dependents:
            names = self._with_orphaned_steps(names)
        await self._unload_in_order(names)

    def _with_orphaned_steps(self, removed: set[str]) -> set[str]:
        """``removed`` and, transitively, the steps no remaining ensemble uses."""
        removed = set(removed)
        grown = True
        while grown:
            grown = False
            for step in {s for name in removed for s in self._steps(name)} - removed:
                entry = self._models.get(step)
                if entry is None or entry.explicit:
                    continue
                if {e.name for e in self._models.values() if step in e.steps} <= removed:
                    removed.add(step)
                    grown = True
        return removed

    async def _unload_entry(self, name: str) -> None:
        entry = self._models.get(name)
        if entry is None:
            return
        async with entry.lock:
            await self._unload_versions(entry)
            entry.reason, entry.fingerprint, entry.explicit = "unloaded", None, False
            if entry.override is not None:
                entry.override.remove_files()

    async def unload_all(self) -> None:
        """Unload every model, and finish draining the versions reloads replaced."""
        self._stopping.set()
        await self._unload_in_order(set(self._models))
        if self._retiring:
            await asyncio.gather(*self._retiring)

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
            *(self._finalize(v) for v in versions if v.state is not ModelState.UNAVAILABLE)
        )

    @staticmethod
    async def _finalize(version: ModelVersion) -> None:
        """Drain and unload one version that served (Triton logs each unload)."""
        was_ready = version.ready
        await version.finalize()
        if was_ready:
            log.info("successfully unloaded '%s' version %d", version.name, version.version)

    def _prepare(
        self,
        name: str,
        location: tuple[Path, Path],
        override: ModelOverride | None,
        graph_error: str,
    ) -> tuple[Any, Any, list[int]]:
        """The configuration, backend and version numbers a load of ``name`` uses."""
        model_dir = location[0]
        if override is not None:
            config = type(override.config)()
            config.CopyFrom(override.config)
        else:
            try:
                config = read_config_file(model_dir, self._options.model_config_name)
            except InvalidArgument as exc:
                raise PollFailure(exc.message) from None
        if config is None:
            if not self._options.auto_complete_config:
                raise InvalidArgument(
                    f"failed to load '{name}': no {model_dir / 'config.pbtxt'} and "
                    "auto-complete is disabled"
                )
            config = ModelConfig()
        if config.name and config.name != name:
            raise PollFailure(
                f"unexpected directory name '{name}' for model '{config.name}', directory name "
                "must equal model name"
            )
        fill_defaults(config, name)
        backend_name = resolve_backend(config, model_dir)
        if backend_name == ENSEMBLE_PLATFORM:
            self._check_ensemble(name, config, graph_error)
            backend: Any = self._ensembles
        else:
            if not config.backend and config.platform not in PLATFORM_BACKENDS:
                config.backend = backend_name
            backend = self._backends.get(backend_name)
        return config, backend, select_versions(config, version_numbers(model_dir), name)

    async def _load_version(self, name: str, load: _Load, version: ModelVersion) -> str:
        """Load one version (one of ``--model-load-thread-count`` at a time).

        Returns '' when it is READY, else Triton's load-call text for its failure
        (``version 1 is at UNAVAILABLE state: Internal: ...;``); the version records
        the reason for the index.
        """
        version_config = type(load.config)()
        version_config.CopyFrom(load.config)
        context = ModelContext(
            name=name,
            version=version.version,
            model_dir=load.location[0],
            repository=load.location[1],
            config=version_config,
            auto_complete=self._options.auto_complete_config,
            backend_settings=self._backend_settings(load.backend.name),
            server=self._server,
        )
        try:
            async with self._load_slots:
                backend_model = await load.backend.load_model(context)
                try:
                    fill_defaults(backend_model.config, name)
                    validate_config(backend_model.config, name)
                except BaseException:
                    await backend_model.finalize()
                    raise
                await version.start(backend_model, load.location[0])
        except Exception as exc:
            error = _as_kernel_error(exc)
            version.state, version.reason = ModelState.UNAVAILABLE, error.message
            log.error("failed to load '%s' version %d: %s", name, version.version, error.message)
            words = _CODE_WORDS.get(error.code.value, "Unknown")
            return f"version {version.version} is at UNAVAILABLE state: {words}: {error.message};"
        log.info("successfully loaded '%s' version %d", name, version.version)
        return ""

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

    def _check_ensemble(self, name: str, config: Any, graph_error: str) -> None:
        """Refuse an ensemble whose configuration or composing models rule it out."""
        try:
            validate_config(config, name)
        except InvalidArgument as exc:
            raise PollFailure(exc.message) from None
        try:
            if graph_error:
                raise InvalidArgument(graph_error)
            versions: dict[str, set[int]] = {}
            for step in config.ensemble_scheduling.step:
                versions.setdefault(step.model_name, set()).add(step.model_version)
            for model, wanted in versions.items():
                self._check_composing(config.name, model, wanted)
            decoupled = validate_composition(
                config, lambda step, version: self.get(step, version).config
            )
        except InvalidArgument as exc:
            raise _DependencyFailure(exc.message) from None
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


def _as_kernel_error(exc: Exception) -> KernelError:
    return exc if isinstance(exc, KernelError) else Internal(f"{type(exc).__name__}: {exc}")


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
    candidates = FILE_BACKENDS
    if config.default_model_filename:  # its suffix says the framework: net.onnx, net.pt, ...
        suffix = Path(config.default_model_filename).suffix
        matching = [b for f, b in FILE_BACKENDS.items() if f.endswith(suffix)]
        candidates = {config.default_model_filename: matching[0]} if matching else {}
    for child in sorted(model_dir.iterdir()):
        if child.is_dir() and child.name.isdigit():
            for filename, backend in candidates.items():
                if (child / filename).exists():
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
