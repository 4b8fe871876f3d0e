"""Build the TorchScript model of the framework example repository (no download, no randomness).

    python examples/frameworks/build_torchscript.py [MODEL_REPOSITORY]

writes ``mlp_torchscript/1/model.pt``: a scripted 2-layer MLP (16 features -> 32 -> 4)
whose weights follow a fixed integer formula, so :func:`reference` computes the same
answer with numpy anywhere. Its configuration (``mlp_torchscript/config.pbtxt``) uses
Triton's TorchScript names: ``INPUT__0`` and ``OUTPUT__0``. Needs ``torch``.
"""

from __future__ import annotations

import itertools
import sys
import warnings
from pathlib import Path

import numpy as np

MODELS = Path(__file__).resolve().parent / "models"
NAME = "mlp_torchscript"
#: Layer widths: 16 features -> 32 hidden -> 4 outputs.
LAYERS = (16, 32, 4)


def weights(layers: tuple[int, ...] = LAYERS) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight [out, in], bias [out]) per layer, from integer arithmetic: identical anywhere."""
    found = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(layers)):
        i = np.arange(fan_out, dtype=np.int64)[:, None]
        j = np.arange(fan_in, dtype=np.int64)[None, :]
        weight = ((i * 5 + j * 11 + index * 3) % 13 - 6).astype(np.float32) / np.float32(8)
        bias = ((np.arange(fan_out) * 7 + index) % 9 - 4).astype(np.float32) / np.float32(10)
        found.append((weight, bias))
    return found


def reference(features: np.ndarray) -> np.ndarray:
    """The MLP in numpy: what the server answers (within float32 rounding)."""
    x = features.astype(np.float32)
    layers = weights()
    for index, (weight, bias) in enumerate(layers):
        x = x @ weight.T + bias
        if index < len(layers) - 1:
            x = np.maximum(x, 0)
    return x


def scripted_mlp() -> object:
    """The MLP as a scripted ``torch.nn.Module`` holding :func:`weights`."""
    import torch

    class MLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hidden = torch.nn.Linear(LAYERS[0], LAYERS[1])
            self.out = torch.nn.Linear(LAYERS[1], LAYERS[2])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.hidden(x)))

    model = MLP().eval()
    with torch.no_grad():
        for layer, (weight, bias) in zip((model.hidden, model.out), weights(), strict=True):
            layer.weight.copy_(torch.from_numpy(weight))
            layer.bias.copy_(torch.from_numpy(bias))
    with warnings.catch_warnings():  # torch.jit is deprecated in PyTorch 2.x, still served
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(model)


def build(repository: Path = MODELS) -> list[Path]:
    """Write ``<repository>/mlp_torchscript/1/model.pt``; returns the files written."""
    path = repository / NAME / "1" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted_mlp().save(str(path))  # type: ignore[attr-defined]
    return [path]


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else MODELS
    for written in build(target):
        print(f"wrote {written} ({written.stat().st_size} bytes)")
