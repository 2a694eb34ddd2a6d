"""Reading single-file checkpoints: safetensors lazily, pickle ``.ckpt`` only through ``weights_only=True``."""

from __future__ import annotations

import _codecs
import pickle
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from modules.errors import ModelLoadError, UnsafeCheckpointError

Tensor = torch.Tensor


class _LightningCheckpointStub:
    """Stands in for pytorch_lightning's ModelCheckpoint callback, stored in many old SD 1.x ``.ckpt`` files.

    Unpickled as plain data (its state is kept in a dict, nothing is called), so such files load without
    pytorch_lightning and without allowing any code to run.
    """

    def __setstate__(self, state: object) -> None:
        self.state = state


def _allowed_globals() -> list[Callable[..., Any] | tuple[Callable[..., Any], str]]:
    allowed: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
        (_LightningCheckpointStub, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
        np.dtype,
        _codecs.encode,
    ]
    scalar = getattr(getattr(np, "_core", np).multiarray, "scalar", None)
    if scalar is not None:
        allowed.append((scalar, "numpy.core.multiarray.scalar"))
        allowed.append(scalar)
    allowed += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return allowed


_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"RIFF", "a RIFF file (WebP image?)"), (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"))


def _not_a_checkpoint(path: Path) -> str | None:
    """What the file is when it is clearly not a torch checkpoint (a zip archive or a pickle), else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None  # reported by the load itself
    if head.startswith(b"PK") or head[:1] == b"\x80":  # torch's zip format, or a legacy pickle (protocol 2+)
        return None
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    return "empty" if not head else "neither a zip archive nor a pickle"


def load_pickle_checkpoint(path: Path) -> dict[str, Tensor]:
    """The tensors of a ``.ckpt``/``.pt`` file, refusing any pickle that would import code.

    torch's weights-only unpickler never calls what it does not allow, so a payload cannot run; the refusal is
    reported as :class:`UnsafeCheckpointError` and there is no unsafe fallback.
    """
    kind = _not_a_checkpoint(path)
    if kind:
        raise ModelLoadError(f"{path.name} is not a model file ({kind})")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).split("\n")
        detail = next((line.strip() for line in reason if "GLOBAL" in line or "global" in line), reason[0][:200])
        raise UnsafeCheckpointError(
            f"{path.name} was refused: this pickle file asks to load code or objects that a checkpoint does not "
            f"need ({detail}). Use a .safetensors version of the model."
        ) from None
    except FileNotFoundError:
        raise ModelLoadError(f"checkpoint not found: {path}") from None
    except (EOFError, zipfile.BadZipFile, RuntimeError, OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{path.name} is not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path.name} does not contain a state dict")
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}


class CheckpointFile:
    """A single-file checkpoint whose key shapes and metadata can be read before any tensor is."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.metadata: dict[str, str] = {}
        self._tensors: dict[str, Tensor] | None = None
        if not self.path.is_file():
            raise ModelLoadError(f"checkpoint not found: {self.path}")
        if self.path.suffix.lower() == ".safetensors":
            try:
                with safe_open(str(self.path), framework="pt", device="cpu") as f:
                    self.metadata = dict(f.metadata() or {})
                    self._shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            except (SafetensorError, OSError, ValueError) as exc:
                raise ModelLoadError(f"{self.path.name} is corrupt or not a safetensors file ({exc})") from None
        else:
            self._tensors = load_pickle_checkpoint(self.path)
            self._shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self._shapes

    def tensors(self, prefixes: Iterable[str], device: str = "cpu") -> dict[str, Tensor]:
        """The tensors whose keys start with any of ``prefixes``, read from disk now (a safetensors file: straight
        into ``device``'s memory)."""
        prefixes = tuple(prefixes)
        keys = [k for k in self._shapes if k.startswith(prefixes)]
        if self._tensors is not None:
            return {k: self._tensors[k] for k in keys}
        try:
            with safe_open(str(self.path), framework="pt", device=device) as f:
                return {k: f.get_tensor(k) for k in keys}
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"{self.path.name} could not be read ({exc})") from None
