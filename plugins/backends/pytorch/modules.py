"""Loading a PyTorch model's module: a TorchScript file, or Triton's PyTorch 2 ``model.py`` path.

TorchScript (``platform: "pytorch_libtorch"``) is Triton's default: ``model.pt`` is
loaded with ``torch.jit.load`` onto the instance's device. ``runtime: "model.py"``
selects Triton's PyTorch 2 runtime (its pytorch_backend ``src/model.py``): the version
folder's ``model.py`` defines a ``torch.nn.Module`` subclass, ``model.pt`` beside it
optionally holds its ``state_dict``, and the module runs through ``torch.compile``
with the ``TORCH_COMPILE_OPTIONAL_PARAMETERS`` options.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from triton_kernel.kernel.errors import Internal, Unavailable

from .params import TorchParameters

__all__ = [
    "PYTHON_RUNTIME",
    "import_python_model",
    "load_python_runtime_module",
    "load_torchscript",
    "python_runtime_path",
    "torchscript_path",
]

#: ``runtime`` value that selects Triton's PyTorch 2 (Python) runtime.
PYTHON_RUNTIME = "model.py"
_module_ids = itertools.count()


def torchscript_path(context: Any) -> Path:
    """``<version>/<default_model_filename or model.pt>``; a missing file fails the load."""
    path = context.version_dir / (context.config.default_model_filename or "model.pt")
    if not path.is_file():
        raise Unavailable(f"unable to find '{path}' for model instance '{context.name}'")
    return path


def load_torchscript(torch: Any, path: Path, name: str, device: Any, inference: bool) -> Any:
    """``torch.jit.load`` onto ``device`` (None: where the file put each tensor)."""
    try:
        with torch.inference_mode(inference):
            if device is None:
                return torch.jit.load(str(path))
            return torch.jit.load(str(path), map_location=device)
    except Exception as exc:
        raise Internal(f"failed to load model '{name}': {_first_line(exc)}") from None


def python_runtime_path(context: Any) -> Path:
    """The PyTorch 2 runtime's file: ``default_model_filename``, ``model.py`` or ``model.pt``."""
    filenames = ["model.py", "model.pt"]
    if context.config.default_model_filename:
        filenames.insert(0, context.config.default_model_filename)
    for filename in filenames:
        path = context.version_dir / filename
        if path.is_file():
            return path
    raise Unavailable(f"No model found in {context.version_dir}/{filenames}")


def import_python_model(torch: Any, path: Path, name: str) -> tuple[ModuleType, type]:
    """Import ``model.py`` and find its ``torch.nn.Module`` subclass."""
    module_name = f"triton_kernel_pytorch_models.m{next(_module_ids)}_{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise Unavailable(f"unable to import '{path}' for model '{name}'")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # torch.compile reads the source back through it
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise Internal(
            f"failed to load model '{name}': importing {path} raised {type(exc).__name__}: {exc}"
        ) from None
    return module, _module_class(torch, module)


def _module_class(torch: Any, module: ModuleType) -> type:
    """The ``torch.nn.Module`` subclass ``model.py`` defines.

    Triton takes the first such class in ``dir(module)`` order, which may be an imported
    one (``torch.nn.Module`` itself after ``from torch.nn import Module``); classes
    defined in ``model.py`` come first here, in the same order.
    """
    found = [
        value
        for _, value in sorted(vars(module).items())
        if inspect.isclass(value)
        and issubclass(value, torch.nn.Module)
        and value is not torch.nn.Module
    ]
    own = [cls for cls in found if cls.__module__ == module.__name__]
    if not (own or found):
        raise Internal("Cannot find a subclass of torch.nn.Module")
    return (own or found)[0]


def load_python_runtime_module(
    torch: Any, path: Path, cls: type | None, name: str, device: Any, params: TorchParameters
) -> Any:
    """One instance's module on the PyTorch 2 runtime, ready to call."""
    try:
        if cls is None:  # the runtime found only model.pt: TorchScript, in config order
            model = torch.jit.load(str(path), map_location=device)
            return model.to(device).eval() if device is not None else model.eval()
        model = cls()
        device = device if device is not None else _first_parameter_device(torch, model)
        weights = path.with_suffix(".pt")
        if weights.is_file():
            model.load_state_dict(torch.load(str(weights), map_location=device))
        model.to(device).eval()
        return torch.compile(model, **(params.compile_options or {}))
    except Exception as exc:
        raise Internal(
            f"failed to load model '{name}': {type(exc).__name__}: {_first_line(exc)}"
        ) from None


def _first_parameter_device(torch: Any, model: Any) -> Any:
    for parameter in model.parameters():
        return parameter.device
    raise Internal("Cannot determine model device")


def _first_line(exc: BaseException) -> str:
    """PyTorch's C++ errors carry a backtrace after the message; keep the message."""
    text = str(exc).strip()
    return text.split("\nException raised from", 1)[0].strip()
