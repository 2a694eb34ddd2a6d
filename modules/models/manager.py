"""The one owner of device memory: which model is resident, a small RAM cache of others, precision, attention."""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from modules.errors import ModelLoadError, is_out_of_memory
from modules.models import memory
from modules.models.demo import DEMO_NAME
from modules.models.loader import ModelParts, load_model
from modules.models.registry import CheckpointInfo, CheckpointRegistry

if TYPE_CHECKING:
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

log = logging.getLogger(__name__)
_FP8: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()  # UNets whose weights are stored in 8 bits
_COMPILED: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


@dataclass(frozen=True)
class DeviceConfig:
    device: str = "cpu"
    precision: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU), fp16, bf16, fp32
    attention: str = "Automatic"  # Automatic, xformers, sdp
    memory: str = "Automatic"  # Automatic, normal, medvram, lowvram (see modules.models.memory)
    medvram_sdxl: bool = False  # A1111's --medvram-sdxl: medvram for SDXL models when memory is Automatic
    no_half_vae: bool = False  # the VAE in float32 whatever the precision (A1111's --no-half-vae)
    fp8: str = "Disable"  # A1111's fp8_storage: Disable, Enable for SDXL, Enable
    channels_last: bool = False
    compile: bool = False  # torch.compile the UNet (normal memory mode only)
    lowram: bool = False  # A1111's --lowram: checkpoint weights read straight into the GPU's memory

    @property
    def load_to(self) -> str | None:
        """Where a checkpoint's weights are read to (None: RAM): the GPU with --lowram, unless the memory mode keeps
        the weights in RAM anyway."""
        if self.lowram and self.device.startswith("cuda") and self.memory in ("Automatic", "normal"):
            return self.device
        return None

    @property
    def dtype(self) -> torch.dtype:
        if self.precision == "fp32" or (self.precision == "auto" and not self.device.startswith("cuda")):
            return torch.float32
        if self.precision == "bf16":
            return torch.bfloat16
        if not self.device.startswith("cuda") and self.precision == "auto":
            return torch.float32
        return torch.float16


def is_demo(info: CheckpointInfo) -> bool:
    """Whether ``info`` is the built-in demo model (``models/Stable-diffusion/demo-shapes.safetensors``)."""
    return info.path.stem == DEMO_NAME


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def xformers_available() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # an import error or a broken CUDA build: both mean "not usable"
        return False
    return True


def broken_message(info: CheckpointInfo, exc: BaseException) -> str:
    """A one-line reason a checkpoint could not be loaded (without its name, which the caller adds)."""
    text = (str(exc).strip().splitlines() or [""])[0][:200]
    if not isinstance(exc, ModelLoadError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    prefix = f"checkpoint {info.name} cannot be loaded: "
    return text[len(prefix):] if text.startswith(prefix) else text


class ModelManager:
    """Keeps the current model on the device and up to ``cache_limit - 1`` recently used ones in RAM."""

    def __init__(self, registry: CheckpointRegistry, config: DeviceConfig, cache_limit: int = 1,
                 loader: Callable[[CheckpointInfo, torch.dtype, Path | None], ModelParts] | None = None,
                 vae_dir: Path | None = None) -> None:
        self.registry = registry
        self.vae_dir = vae_dir
        self.config = config
        self.cache_limit = max(1, int(cache_limit))
        self._loader = loader or load_model
        self._config_overrides: dict[Path, Path] = {}
        self._allowed_paths: set[str] = set()
        self._lock = threading.RLock()
        self._current: ModelParts | None = None
        self._last: CheckpointInfo | None = None
        self._ram: OrderedDict[Path, ModelParts] = OrderedDict()
        self._external_vae: tuple[Path, int, AutoencoderKL] | None = None
        self.preferred: str | None = None  # the default checkpoint (the setting): when it fails, the next one loads
        self.load_count = 0
        self.last_load_seconds = 0.0

    @property
    def current(self) -> ModelParts | None:
        return self._current

    def allow_path(self, path: Path) -> None:
        """Let ``path``, a checkpoint outside the model folders that the user named on the command line, be loaded
        by that name; no other path is ever followed."""
        self._allowed_paths.add(str(path))

    def resolve(self, name: str | None) -> CheckpointInfo:
        """The checkpoint for a title, name or hash among the scanned ones; ``None`` means the current one, else the
        first found. A path is followed only when :meth:`allow_path` allowed it."""
        if name:
            info = self.registry.find(name)
            if info is None:
                if name in self._allowed_paths and Path(name).exists():
                    return self.registry.from_path(Path(name))
                raise ModelLoadError(f"checkpoint not found: {name!r}")
            error = self.registry.error_of(info)
            if error is not None:
                raise ModelLoadError(f"checkpoint {info.name} cannot be loaded: {error}")
            return info
        if self._current is not None and self._current.info is not None:
            return self._current.info
        items = self.registry.list()
        if not items:
            raise ModelLoadError("no checkpoints found: put a .safetensors model in models/Stable-diffusion")
        return items[0]

    def get(self, name: str | None = None) -> ModelParts:
        """The model for ``name`` resident on the device, loading or switching if needed. With no name, or the
        default's (:attr:`preferred`): the resident model, else the default, else the next loadable checkpoint."""
        if name and name != self.preferred:
            return self._get_info(self.resolve(name))
        with self._lock:
            cur = self._current
            if cur is not None and cur.info is not None and (not name or name in cur.info.aliases()):
                return cur
        return self._first_loadable(name)

    def _get_info(self, info: CheckpointInfo) -> ModelParts:
        with self._lock:
            cur = self._current
            if cur is not None and cur.info is not None and cur.info.path.resolve() == info.path.resolve():
                return cur
            return self._switch(info)

    def _candidates(self, first: str | None) -> list[CheckpointInfo]:
        """The default checkpoint, the resident one, then every other in order; those known to be broken left out."""
        out: list[CheckpointInfo] = []
        if first:
            try:
                out.append(self.resolve(first))
            except ModelLoadError as exc:
                log.warning("default checkpoint: %s", exc)
        if self._current is not None and self._current.info is not None:
            out.append(self._current.info)
        others = [i for i in self.registry.list() if self.registry.error_of(i) is None]
        out += sorted(others, key=is_demo)  # the built-in demo model only when there is no other
        unique: dict[Path, CheckpointInfo] = {}
        for info in out:
            unique.setdefault(info.path.resolve(), info)
        return list(unique.values())

    def expected(self, name: str | None = None) -> CheckpointInfo | None:
        """The checkpoint a job naming ``name`` (or none) would run on, without loading anything."""
        if name and name != self.preferred:
            try:
                return self.resolve(name)
            except ModelLoadError:
                return None
        cur = self._current
        if cur is not None and cur.info is not None and (not name or name in cur.info.aliases()):
            return cur.info
        candidates = self._candidates(name)
        return candidates[0] if candidates else None

    def _first_loadable(self, first: str | None) -> ModelParts:
        errors: list[str] = []
        for info in self._candidates(first):
            try:
                parts = self._get_info(info)
            except ModelLoadError as exc:
                errors.append(str(exc))
                log.warning("%s; trying the next checkpoint", exc)
                continue
            if errors:
                log.warning("loaded %s instead of the default checkpoint, which cannot be loaded", info.title)
            return parts
        if errors:
            raise ModelLoadError("no checkpoint can be loaded: " + "; ".join(errors))
        if first:
            raise ModelLoadError(f"checkpoint not found: {first!r}")
        raise ModelLoadError("no checkpoints found: put a .safetensors model in models/Stable-diffusion")

    def load_path(self, path: Path, config: Path | None = None) -> ModelParts:
        """Make the checkpoint at ``path`` current, with an optional model config (``.yaml`` or diffusers folder)."""
        info = self.registry.from_path(path)
        if config is not None:
            self._config_overrides[info.path.resolve()] = Path(config)
        with self._lock:
            cur = self._current
            if cur is not None and cur.info is not None and cur.info.path.resolve() == info.path.resolve():
                return cur
            return self._switch(info)

    def _switch(self, info: CheckpointInfo) -> ModelParts:
        previous = self._current
        key = info.path.resolve()
        parts = self._ram.pop(key, None)
        if previous is not None:
            self._park(previous)
        self._current = None
        try:
            if parts is None:
                parts = self._load(info)
            self._place(parts)
        except BaseException:
            if previous is not None:  # roll back: the old model stays usable
                self._ram.pop(previous.info.path.resolve(), None) if previous.info else None
                self._place(previous)
                self._current = previous
            raise
        self._current = parts
        self._trim_ram()  # a model unloaded to RAM stays beyond the cache's size only until another one loads
        return parts

    def _trim_ram(self) -> None:
        while len(self._ram) > self.cache_limit - 1:
            self._ram.popitem(last=False)

    def _load(self, info: CheckpointInfo) -> ModelParts:
        """Load ``info``; a file that cannot be loaded (not out of memory) is remembered as broken in the registry
        and reported as a :class:`ModelLoadError` naming it."""
        start = time.monotonic()
        try:
            self.registry.ensure_hash(info)
            override = self._config_overrides.get(info.path.resolve())
            load_to = self.config.load_to
            parts = (self._loader(info, self.config.dtype, override) if load_to is None
                     else self._loader(info, self.config.dtype, override, load_to))  # type: ignore[call-arg]
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            message = broken_message(info, exc)
            self.registry.mark_broken(info, message)
            if isinstance(exc, ModelLoadError) and info.name in str(exc):
                raise
            raise ModelLoadError(f"checkpoint {info.name} cannot be loaded: {message}") from exc
        self.load_count += 1
        self.last_load_seconds = time.monotonic() - start
        log.info("loaded %s (%s) in %.1fs", info.title, parts.family.label, self.last_load_seconds)
        return parts

    def memory_mode(self, parts: ModelParts) -> str:
        """The memory mode ``parts`` gets when placed: the configured one, or the Automatic choice."""
        if self.config.memory in memory.MODES:
            return self.config.memory
        if self.config.medvram_sdxl and parts.family.is_xl:
            return "medvram"
        resident = memory.model_bytes(parts) if parts.device == torch.device(self.config.device) else 0
        return memory.pick(parts, torch.device(self.config.device), resident)

    def _place(self, parts: ModelParts, mode: str | None = None) -> None:
        mode = mode or self.memory_mode(parts)
        self._weights(parts)
        memory.apply(parts, mode, self.config.device)
        if mode != "normal":
            log.info("memory mode %s for %s", mode, parts.info.title if parts.info else "the model")
        self._set_attention(parts)
        self._speed(parts, mode)

    def _fp8(self, parts: ModelParts) -> bool:
        return self.config.fp8 == "Enable" or (self.config.fp8 == "Enable for SDXL" and parts.family.is_xl)

    def _weights(self, parts: ModelParts) -> None:
        """The VAE in float32 (--no-half-vae: upcast from the model's precision) and the UNet's weights stored in
        8 bits (``fp8_storage``; diffusers' layerwise casting computes in the model's precision)."""
        half = parts.dtype in (torch.float16, torch.bfloat16)
        vae_dtype = next(parts.vae.parameters()).dtype
        if self.config.no_half_vae and half and vae_dtype != torch.float32:
            parts.vae.to(torch.float32)  # type: ignore[arg-type]  # diffusers' to() is untyped for dtypes
        elif not self.config.no_half_vae and half and vae_dtype == torch.float32:
            parts.vae.to(parts.dtype)  # type: ignore[arg-type]
        if self._fp8(parts) and parts.unet not in _FP8:
            parts.unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=parts.dtype)
            _FP8.add(parts.unet)

    def _speed(self, parts: ModelParts, mode: str) -> None:
        """channels_last and torch.compile, as the settings say (compile only in the normal memory mode, where no
        offload hook moves weights during the forward)."""
        unet: torch.nn.Module = parts.unet
        fmt = torch.channels_last if self.config.channels_last else torch.contiguous_format
        unet.to(memory_format=fmt)  # type: ignore[call-overload]  # a documented keyword torch's stubs lack
        compiled = unet in _COMPILED
        if self.config.compile and mode == "normal" and not compiled:
            unet.compile(dynamic=False)  # one graph per image size, kept in torch's cache
            _COMPILED.add(unet)
        elif compiled and not (self.config.compile and mode == "normal"):
            unet._compiled_call_impl = None  # nn.Module.compile's compiled forward, dropped
            _COMPILED.discard(unet)

    def apply_config(self, config: DeviceConfig) -> bool:
        """Use ``config`` from now on; the resident model is placed again, or loaded again from its file when the
        weights themselves change (precision, fp8). -> whether it was loaded again."""
        with self._lock:
            old, self.config = self.config, config
            parts = self._current
            if parts is None:
                return False
            if (old.precision, old.device) != (config.precision, config.device) or (
                    parts.unet in _FP8 and not self._fp8(parts)):
                self._reread(parts)
                return True
            memory.remove(parts)
            self._place(parts)
            return False

    def _reread(self, parts: ModelParts) -> None:
        """Read the resident model ``parts`` again from its file (its weights change); the copies in RAM, made for
        the old weights, are dropped."""
        memory.remove(parts)
        self._current = None
        self._ram.clear()
        self._external_vae = None
        self._free()
        if parts.info is not None:
            self._switch(parts.info)

    def lower_memory(self, parts: ModelParts) -> str | None:
        """After ``parts`` ran out of memory: place it in the next mode that needs less, when the mode is Automatic
        and there is one; -> the new mode (kept while the model stays resident), or None."""
        if self.config.memory != memory.AUTOMATIC:
            return None
        with self._lock:
            target = self._current if self._current is not None and self._current.unet is parts.unet else parts
            lower = memory.lower(memory.current_mode(target))
            if lower is None:
                return None
            self._free()
            self._place(target, lower)
            return lower

    def ensure_mode(self, parts: ModelParts, mode: str) -> str:
        """Place ``parts`` in ``mode`` (training needs "normal"); -> the mode it had, to restore later."""
        with self._lock:
            before = memory.current_mode(parts)
            if before != mode:
                self._place(parts, mode)
            return before

    def _park(self, parts: ModelParts) -> None:
        """Move the outgoing model to RAM if the cache has room, else free it."""
        memory.remove(parts)
        if self.cache_limit > 1 and parts.info is not None:
            parts.to("cpu")
            self._ram[parts.info.path.resolve()] = parts
            self._trim_ram()
        self._free()

    def _free(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _set_attention(self, parts: ModelParts) -> None:
        mode = self.config.attention
        on_cuda = self.config.device.startswith("cuda")
        use_xformers = on_cuda and xformers_available()
        if mode == "xformers" and not use_xformers:
            log.warning("xformers attention needs a CUDA device and the xformers package; using PyTorch SDPA")
        if mode in ("xformers", "Automatic") and use_xformers:
            for m in (parts.unet, parts.vae):
                m.enable_xformers_memory_efficient_attention()
        elif mode == "Doggettx":  # A1111's split attention: here diffusers' attention computed in slices
            parts.unet.set_attention_slice("auto")
        else:
            from diffusers.models.attention_processor import AttnProcessor2_0

            parts.unet.set_attn_processor(AttnProcessor2_0())

    def with_vae(self, parts: ModelParts, choice: str | None) -> ModelParts:
        """``parts`` with the VAE ``choice`` (a file in the VAE folder, "Automatic" or "None") for one job.

        The cached parts keep their baked VAE; an external one is loaded once, kept beside them, and the VAE not in
        use waits in RAM.
        """
        from modules.models.vae import load_vae, resolve_vae, vae_hash

        info = resolve_vae(choice, parts.info.path if parts.info else None, self.vae_dir or Path("models/VAE"))
        with self._lock:
            # diffusers declares ModelMixin.to through functools.wraps, which type checkers cannot bind to the instance
            if info is None:
                if self._external_vae is not None:
                    memory.detach(parts, self._external_vae[2])
                if memory.current_mode(parts) == "normal":
                    parts.vae.to(self.config.device)  # type: ignore[arg-type]
                return parts
            cached = self._external_vae
            if cached is None or cached[0] != info.path or cached[1] != id(parts):
                self._external_vae = None
                self._free()
                cached = self._external_vae = (info.path, id(parts), load_vae(info, parts.vae, parts.device))
            parts.vae.to("cpu")  # type: ignore[arg-type]
            vae = cached[2]
            memory.attach(parts, vae, self.config.device)
            return dataclasses.replace(parts, vae=vae, vae_info=info,
                                       vae_hash=vae_hash(info, self.registry.hash_cache))

    def unload(self) -> None:
        """Move the current model to RAM, off the device (A1111's unload-checkpoint): :meth:`reload` puts it back
        without reading the file again. Models cached in RAM stay."""
        with self._lock:
            current = self._current
            if current is not None:
                memory.remove(current)
                self._current = None
                if current.info is not None:
                    self._last = current.info
                    current.to("cpu")
                    self._ram[current.info.path.resolve()] = current  # kept whatever the cache's size, as A1111
                    self._ram.move_to_end(current.info.path.resolve())
            self._external_vae = None
            self._free()

    def reload(self) -> ModelParts | None:
        """The model on the device again after :meth:`unload` (A1111's reload-checkpoint): from RAM when it is
        there, else read again; the resident model as it is when none was unloaded; None when none was loaded."""
        with self._lock:
            if self._current is not None:
                return self._current
            return self._switch(self._last) if self._last is not None else None

    def loaded_titles(self) -> list[str]:
        titles = [p.info.title for p in self._ram.values() if p.info]
        if self._current is not None and self._current.info is not None:
            titles.insert(0, self._current.info.title)
        return titles

    def set_cache_limit(self, limit: int) -> None:
        with self._lock:
            self.cache_limit = max(1, int(limit))
            self._trim_ram()
            self._free()
