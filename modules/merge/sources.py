"""Checkpoints as sources of tensors in the original single-file layout, read one tensor (or a few rows) at a time.

- ``.safetensors``: header read up front, data with plain reads of just the rows asked for;
- ``.ckpt``/``.pt``/``.bin``: through ``load_pickle_checkpoint`` (``weights_only=True``; memory-mapped when the file is
  a zip archive, so its pages are only touched as tensors are used);
- diffusers folders: each component's weights are opened the same way and their keys mapped to the single-file
  layout with the converters of :mod:`modules.models.convert`, run on :class:`LazyTensor` stand-ins, so a converted
  tensor (a renamed one, a reshaped VAE attention weight, a concatenated OpenCLIP ``in_proj``) is only built when it
  is written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from modules.errors import ModelLoadError
from modules.merge.safetensors_io import SafetensorsReader
from modules.models import convert
from modules.models.checkpoint_file import load_pickle_checkpoint

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class TensorSource:
    """Key shapes, dtypes and metadata known up front; tensor data read on demand."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]
    metadata: dict[str, str]

    def read(self, key: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        """Rows ``start:stop`` along dim 0 of ``key`` (the whole tensor when ``start`` is None)."""
        raise NotImplementedError

    def can_read_rows(self, key: str) -> bool:
        """Whether reading part of ``key`` costs only that part (else the caller should read it whole)."""
        return False

    def close(self) -> None:
        """Release open files."""

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SafetensorsSource(TensorSource):
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._reader = SafetensorsReader(self.path)
        self.shapes, self.dtypes, self.metadata = self._reader.shapes, self._reader.dtypes, self._reader.metadata

    def read(self, key: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        return self._reader.read(key, start, stop)

    def can_read_rows(self, key: str) -> bool:
        return True

    def close(self) -> None:
        self._reader.close()


class PickleSource(TensorSource):
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.metadata = {}
        self._tensors = load_pickle_checkpoint(self.path)
        self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}
        self.dtypes = {k: v.dtype for k, v in self._tensors.items()}

    def read(self, key: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        t = self._tensors[key]
        return t if start is None or t.ndim == 0 else t[start:stop]

    def can_read_rows(self, key: str) -> bool:
        return True

    def close(self) -> None:
        self._tensors = {}


def open_file(path: Path) -> TensorSource:
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"checkpoint not found: {path}")
    if path.suffix.lower() == ".safetensors":
        return SafetensorsSource(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return PickleSource(path)
    raise ModelLoadError(f"{path.name} is not a checkpoint (.safetensors, .ckpt or a diffusers folder)")


def _map_args(value: Any, fn: Callable[[LazyTensor], Any]) -> Any:
    if isinstance(value, LazyTensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_map_args(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map_args(v, fn) for k, v in value.items()}
    return value


class LazyTensor:
    """A tensor not read yet: a key of a source, or torch operations on such keys recorded for later.

    Shapes of reshaped or transposed values are computed directly; other torch functions (``torch.cat``) are run on
    the ``meta`` device, so shapes and dtypes are exact without any data.
    """

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, build: Callable[[], torch.Tensor],
                 direct: tuple[TensorSource, str] | None = None) -> None:
        self.shape = tuple(shape)
        self.dtype = dtype
        self._build = build
        self.direct = direct  # (source, key) when this is a stored tensor as is (partial reads possible)

    @classmethod
    def of(cls, source: TensorSource, key: str) -> LazyTensor:
        return cls(source.shapes[key], source.dtypes[key], lambda: source.read(key), (source, key))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def meta(self) -> torch.Tensor:
        return torch.empty(self.shape, dtype=self.dtype, device="meta")

    def materialize(self) -> torch.Tensor:
        return self._build()

    def _derive(self, shape: tuple[int, ...], op: Callable[[torch.Tensor], torch.Tensor]) -> LazyTensor:
        return LazyTensor(shape, self.dtype, lambda: op(self.materialize()))

    def reshape(self, *shape: Any) -> LazyTensor:
        dims = [int(d) for d in (shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)]
        if -1 in dims:
            known = math.prod(d for d in dims if d != -1)
            dims[dims.index(-1)] = math.prod(self.shape) // max(known, 1)
        if math.prod(dims) != math.prod(self.shape):
            raise ValueError(f"cannot reshape {list(self.shape)} to {dims}")
        return self._derive(tuple(dims), lambda t: t.reshape(*shape))

    @property
    def T(self) -> LazyTensor:  # noqa: N802 - mirrors torch.Tensor.T
        return self._derive(tuple(reversed(self.shape)), lambda t: t.T)

    def contiguous(self) -> LazyTensor:
        return self._derive(self.shape, lambda t: t.contiguous())

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> LazyTensor:
        kwargs = kwargs or {}
        meta = func(*_map_args(args, LazyTensor.meta), **_map_args(kwargs, LazyTensor.meta))
        return LazyTensor(tuple(meta.shape), meta.dtype,
                          lambda: func(*_map_args(args, LazyTensor.materialize),
                                       **_map_args(kwargs, LazyTensor.materialize)))


class MappedSource(TensorSource):
    """Keys of the single-file layout, each a :class:`LazyTensor` over underlying sources."""

    def __init__(self, path: Path, entries: dict[str, LazyTensor], parts: Iterable[TensorSource],
                 metadata: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self._entries = entries
        self._parts = list(parts)
        self.shapes = {k: v.shape for k, v in entries.items()}
        self.dtypes = {k: v.dtype for k, v in entries.items()}
        self.metadata = dict(metadata or {})
        self._last: tuple[str, torch.Tensor] | None = None

    def read(self, key: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        entry = self._entries[key]
        if entry.direct is not None:
            source, inner = entry.direct
            return source.read(inner, start, stop)
        if self._last is None or self._last[0] != key:
            self._last = None
            self._last = (key, entry.materialize().contiguous())
        t = self._last[1]
        return t if start is None or t.ndim == 0 else t[start:stop]

    def can_read_rows(self, key: str) -> bool:
        entry = self._entries[key]
        return entry.direct is not None and entry.direct[0].can_read_rows(entry.direct[1])

    def close(self) -> None:
        self._last = None
        for part in self._parts:
            part.close()


_WEIGHT_NAMES = ("diffusion_pytorch_model", "model")


def _component_files(folder: Path) -> list[Path]:
    """The weight files of one diffusers component: sharded (index), single, or a variant; safetensors first."""
    for ext in (".safetensors", ".bin"):
        for stem in _WEIGHT_NAMES:
            index = folder / f"{stem}{ext}.index.json"
            if index.is_file():
                try:
                    weight_map = json.loads(index.read_text())["weight_map"]
                except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
                    raise ModelLoadError(f"cannot read {index}: {exc}") from None
                names = sorted(set(weight_map.values()))
                if any("/" in n or "\\" in n or n.startswith(".") for n in names):
                    raise ModelLoadError(f"{index} names files outside its folder")
                return [folder / n for n in names]
            if (folder / f"{stem}{ext}").is_file():
                return [folder / f"{stem}{ext}"]
        variants = sorted(p for p in folder.glob(f"*{ext}") if p.name.split(".")[0] in _WEIGHT_NAMES)
        if variants:
            return variants[:1]
    raise ModelLoadError(f"no weights found in {folder}")


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"cannot read {path}: not a JSON object")
    return data


def open_diffusers_folder(folder: Path) -> MappedSource:
    """A diffusers pipeline folder seen as a single-file checkpoint (SD 1.x, 2.x, XL)."""
    folder = Path(folder)
    index = _read_config(folder / "model_index.json")
    opened: list[TensorSource] = []
    try:
        def component(name: str) -> dict[str, LazyTensor]:
            out: dict[str, LazyTensor] = {}
            for path in _component_files(folder / name):
                source = open_file(path)
                opened.append(source)
                out.update({k: LazyTensor.of(source, k) for k in source.shapes})
            return out

        unet_cfg = _read_config(folder / "unet" / "config.json")
        vae_cfg = _read_config(folder / "vae" / "config.json")
        te_cfg = _read_config(folder / "text_encoder" / "config.json")
        try:
            entries = convert.unet_to_ldm(component("unet"), unet_cfg)
            entries.update(convert.vae_to_ldm(component("vae"), vae_cfg))
            te = component("text_encoder")
            if "text_encoder_2" in index:
                entries.update(convert.clip_to_ldm(te, "conditioner.embedders.0.transformer."))
                entries.update(convert.open_clip_to_ldm(component("text_encoder_2"), "conditioner.embedders.1.model."))
            elif te_cfg.get("hidden_act") == "gelu" or int(unet_cfg.get("cross_attention_dim", 768)) == 1024:
                entries.update(convert.open_clip_to_ldm(te, "cond_stage_model.model."))
            else:
                entries.update(convert.clip_to_ldm(te, "cond_stage_model.transformer."))
        except (KeyError, ValueError, IndexError) as exc:
            raise ModelLoadError(f"{folder.name} is not a diffusers Stable Diffusion folder I can convert ({exc})") \
                from None
    except BaseException:
        for source in opened:
            source.close()
        raise
    return MappedSource(folder, entries, opened)


def open_checkpoint(path: Path) -> TensorSource:
    """Any checkpoint the engine loads, as a source in the single-file layout."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{path} is a folder but not a diffusers model (no model_index.json)")
        return open_diffusers_folder(path)
    return open_file(path)


def _diffusers_vae_config(keys: Iterable[str]) -> dict[str, Any]:
    keys = list(keys)
    blocks = {int(k.split(".")[2]) for k in keys if k.startswith("encoder.down_blocks.")}
    layers = {int(k.split(".")[4]) for k in keys if k.startswith("encoder.down_blocks.0.resnets.")}
    return {"block_out_channels": [0] * len(blocks), "layers_per_block": len(layers)}


def open_vae(path: Path) -> MappedSource:
    """A VAE file as ``first_stage_model.*`` keys: original layout (with or without the prefix) or diffusers'."""
    source = open_file(path)
    try:
        keys = {k.removeprefix("first_stage_model."): k for k in source.shapes
                if not k.startswith(("loss", "model_ema.")) and not k.startswith("first_stage_model.loss")}
        lazy = {short: LazyTensor.of(source, full) for short, full in keys.items()}
        if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in lazy):
            entries = convert.vae_to_ldm(lazy, _diffusers_vae_config(lazy))
        else:
            entries = {convert.VAE_PREFIX + k: v for k, v in lazy.items()}
        if not any(k.startswith(convert.VAE_PREFIX + "decoder.") for k in entries):
            raise ModelLoadError(f"{Path(path).name} is not a VAE (no decoder weights)")
    except BaseException:
        source.close()
        raise
    return MappedSource(Path(path), entries, [source], source.metadata)
