"""The plugin manager: entry-point plugins (frontends, sources) and backends found by path."""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import pluggy

from . import hookspecs
from .backend import Backend
from .errors import NotFound, Unavailable

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "triton_kernel"
#: Backends loaded by path live under this package name: ``triton_kernel_backends.<name>``.
BACKEND_PACKAGE = "triton_kernel_backends"


def builtin_backend_directory() -> Path:
    """``plugins/backends`` of the installed package: the last place backends are searched."""
    import triton_kernel.plugins

    return Path(triton_kernel.plugins.__file__).resolve().parent / "backends"


def create_plugin_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager("triton_kernel")
    manager.add_hookspecs(hookspecs)
    manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return manager


class BackendLoader:
    """Finds ``<dir>/<name>/plugin.py`` in the backend directories and asks it for a backend."""

    def __init__(
        self,
        manager: pluggy.PluginManager,
        directories: Iterable[Path],
        settings: dict[str, dict[str, str]],
    ) -> None:
        self._manager = manager
        self._directories = [*directories, builtin_backend_directory()]
        self._settings = settings
        self._backends: dict[str, Backend] = {}

    def get(self, name: str) -> Backend:
        """The backend named ``name``, created on first use."""
        backend = self._backends.get(name)
        if backend is None:
            backend = self._create(name)
            self._backends[name] = backend
        return backend

    def loaded(self) -> list[Backend]:
        return list(self._backends.values())

    def _create(self, name: str) -> Backend:
        module = self._import(name)
        if module is not None and not self._manager.is_registered(module):
            self._manager.register(module, name=f"backend:{name}")
        settings = {**self._settings.get("", {}), **self._settings.get(name, {})}
        backend = self._manager.hook.tk_backend_create(name=name, settings=settings)
        if backend is None:
            searched = ", ".join(str(d) for d in self._directories)
            raise NotFound(f"unable to find backend '{name}' (searched {searched})")
        return backend

    def _import(self, name: str) -> ModuleType | None:
        for directory in self._directories:
            plugin = Path(directory) / name / "plugin.py"
            if plugin.is_file():
                return _import_backend_package(name, plugin)
        return None


def _import_backend_package(name: str, plugin: Path) -> ModuleType:
    """Import ``<folder>/plugin.py`` as ``triton_kernel_backends.<name>.plugin``.

    The folder becomes a package so that the plugin may import its sibling modules
    relatively, wherever the folder lives.
    """
    if BACKEND_PACKAGE not in sys.modules:
        root = ModuleType(BACKEND_PACKAGE)
        root.__path__ = []
        sys.modules[BACKEND_PACKAGE] = root
    package_name = f"{BACKEND_PACKAGE}.{name}"
    package_spec = importlib.util.spec_from_loader(package_name, loader=None, is_package=True)
    assert package_spec is not None
    package = importlib.util.module_from_spec(package_spec)
    package.__path__ = [str(plugin.parent)]
    sys.modules[package_name] = package
    spec = importlib.util.spec_from_file_location(f"{package_name}.plugin", plugin)
    if spec is None or spec.loader is None:
        raise Unavailable(f"unable to load backend '{name}' from {plugin}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[spec.name]
        raise Unavailable(f"unable to load backend '{name}' from {plugin}: {exc}") from exc
    return module
