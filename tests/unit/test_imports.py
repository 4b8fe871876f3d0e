"""Every module of the package imports cleanly, with warnings turned into errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import triton_kernel.kernel
import triton_kernel.plugins.backends.python as python_backend
import triton_kernel.protocols
import triton_kernel.repository

#: Modules that cannot be imported as package modules: ``stub.py`` runs in the worker
#: process with its own folder on ``sys.path`` (``import ipc``).
_SKIPPED = {"triton_kernel.plugins.backends.python.stub"}

_PACKAGES = (triton_kernel.kernel, triton_kernel.protocols, triton_kernel.repository)


def _package_modules() -> list[str]:
    names = []
    for package in (*_PACKAGES, python_backend):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            if package is python_backend and path.parent != root:
                continue
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join((package.__name__, *parts)))
    return [name for name in names if name not in _SKIPPED]


MODULES = _package_modules()

# Imports each module in a fresh interpreter (so nothing is cached from this test run)
# and reports the first exception or warning of each as JSON.
_SCRIPT = textwrap.dedent(
    """
    import importlib, json, sys, warnings
    warnings.simplefilter("error")
    failures = {}
    for name in json.loads(sys.argv[1]):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                importlib.import_module(name)
            except BaseException as exc:
                failures[name] = f"{type(exc).__name__}: {exc}"
                continue
        if caught:
            failures[name] = "; ".join(f"{w.category.__name__}: {w.message}" for w in caught)
    print(json.dumps(failures))
    """
)


def test_module_list_covers_the_package() -> None:
    expected = {
        "triton_kernel.kernel.config",
        "triton_kernel.kernel.datatypes",
        "triton_kernel.kernel.validation",
        "triton_kernel.protocols.http.codec",
        "triton_kernel.protocols.proto.model_config",
        "triton_kernel.repository.local",
        "triton_kernel.plugins.backends.python.ipc",
        "triton_kernel.plugins.backends.python.plugin",
        "triton_kernel.plugins.backends.python.worker",
        "triton_kernel.plugins.backends.python.triton_python_backend_utils",
    }
    assert expected <= set(MODULES)
    assert "triton_kernel.plugins.backends.python.stub" not in MODULES


def test_every_module_imports_without_warnings() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", _SCRIPT, json.dumps(MODULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    assert {m: e for m, e in failures.items() if not _missing_optional(e)} == {}


#: Optional extras: a module that needs one may fail to import where it is not installed.
_OPTIONAL = ("opentelemetry",)


def _missing_optional(error: str) -> bool:
    return any(
        f"No module named '{name}" in error and importlib.util.find_spec(name) is None
        for name in _OPTIONAL
    )
