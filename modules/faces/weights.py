"""Reading the weights files of the face models: safetensors, or pickles through ``torch.load(weights_only=True)``."""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import torch

from modules.errors import ModelLoadError, UnsafeCheckpointError

M = TypeVar("M", bound=torch.nn.Module)

WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model_state_dict", "model", "net")


class FaceModelError(ModelLoadError):
    """A face model file that cannot be read or used; the message names the file."""


class UnsafeFaceModelError(FaceModelError, UnsafeCheckpointError):
    """A pickle face model file that asks to load code or objects other than tensors (refused, never run)."""


def read_weights(path: Path) -> dict[str, object]:
    """The top-level dict of ``path`` on the CPU (safetensors, or a pickle restricted to tensors and plain
    containers); a FaceModelError naming the file when it cannot be read."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            data: object = load_file(str(path), device="cpu")
        else:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL [^ ]+", str(exc))
        if found is None:
            raise FaceModelError(f"{path.name}: cannot be read (not a weights file)") from None
        message = (f"{path.name} was refused: this pickle file asks to load code or objects that a weights file "
                   f"does not need ({found.group(0)}). Use a .safetensors version of it.")
        raise UnsafeFaceModelError(message) from None
    except Exception as exc:  # noqa: BLE001 - any failure to read the file is reported the same way
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise FaceModelError(f"{path.name}: cannot be read ({reason})") from None
    if not isinstance(data, Mapping):
        raise FaceModelError(f"{path.name}: not a state dict")
    return {str(k): v for k, v in data.items()}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``path``: unwrapped from a training script's ``params_ema``/``params``/... entry, and with a
    leading ``module.`` (left by ``DataParallel``) taken off every key that has one."""
    data: Mapping[str, object] = read_weights(path)
    for key in WRAPPER_KEYS:
        inner = data.get(key)
        if isinstance(inner, Mapping):
            data = inner
            break
    if not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise FaceModelError(f"{path.name}: not a state dict of tensors")
    return strip_prefix({str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}, "module.")


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A new dict (without the loader's version metadata) whose keys lose ``prefix`` where they start with it."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def load_strict(factory: Callable[[], M], state: Mapping[str, torch.Tensor], path: Path, what: str) -> M:
    """The module ``factory`` builds (without drawing random initial weights) holding ``state``, in float32;
    keys and shapes must match exactly, else a FaceModelError naming the file."""
    with torch.device("meta"):
        module = factory()
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise FaceModelError(f"{path.name}: not a {what} weights file ({detail})") from None
    return module.float()
