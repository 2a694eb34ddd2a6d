"""Memory modes: how much of a model stays on the accelerator (A1111's ``--medvram`` and ``--lowvram``).

- ``normal``: every component lives on the device.
- ``medvram``: each component (text encoders, UNet, VAE) lives in RAM and moves to the device whole while it runs;
  whatever else is there goes back to RAM first, so the device holds one component at a time (A1111's ``--medvram``;
  built on accelerate's module hooks, which diffusers' VAE honours for ``encode``/``decode`` too).
- ``lowvram``: as ``medvram`` for the text encoders and the VAE; the UNet moves one block at a time (diffusers'
  block-level group offloading), as A1111's ``--lowvram`` moves its input, middle and output blocks one by one.
- ``Automatic`` (the default) picks one of those from the free device memory and the model's size, and on an
  out-of-memory error the job is run once more in the next lower mode (see :func:`lower`).

On a CPU the modes change where nothing lives (RAM is the device): they can be chosen, and they run, but only
``normal`` makes sense there, so ``Automatic`` picks it.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from modules.models.loader import ModelParts

log = logging.getLogger(__name__)

AUTOMATIC = "Automatic"
MODES = ("normal", "medvram", "lowvram")  # from the most memory to the least
CHOICES = (AUTOMATIC, *MODES)
# what sampling needs beside the weights on the device (activations at the family's usual size, the CUDA context)
_WORKING_BYTES = {"sdxl": 5 * 2**30, "other": 2 * 2**30}
@dataclass
class _Placement:
    mode: str
    device: torch.device
    group: _OneAtATime | None = None


_PLACED: weakref.WeakKeyDictionary[torch.nn.Module, _Placement] = weakref.WeakKeyDictionary()  # by UNet
_ONLOAD: weakref.WeakKeyDictionary[torch.nn.Module, torch.device] = weakref.WeakKeyDictionary()  # group-offloaded
_GROUP_HOOKS = ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading")


def lower(mode: str) -> str | None:
    """The next mode that needs less device memory than ``mode``; None from the lowest."""
    index = MODES.index(mode)
    return MODES[index + 1] if index + 1 < len(MODES) else None


def model_bytes(parts: ModelParts) -> int:
    return sum(p.numel() * p.element_size() for m in parts.modules() for p in m.parameters())


def free_device_bytes(device: torch.device) -> int | None:
    """Free memory on a CUDA device (None for others, where no mode but normal makes sense)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def pick(parts: ModelParts, device: torch.device, resident_bytes: int = 0) -> str:
    """The Automatic choice for ``parts`` on ``device``: normal when the whole model and the working memory fit in
    the free memory (plus ``resident_bytes``, what this model already holds there), medvram when its largest
    component does, else lowvram."""
    free = free_device_bytes(device)
    if free is None:
        return "normal"
    free += resident_bytes
    working = _WORKING_BYTES["sdxl" if parts.family.is_xl else "other"]
    if free >= model_bytes(parts) + working:
        return "normal"
    largest = max(sum(p.numel() * p.element_size() for p in m.parameters()) for m in parts.modules())
    return "medvram" if free >= largest + working else "lowvram"


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where ``module`` computes: its offload hook's device when it has one, else where its weights are."""
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(device)
    onload = _ONLOAD.get(module)
    if onload is not None:
        return onload
    return next(module.parameters()).device


def bring(module: torch.nn.Module) -> None:
    """Move ``module`` to its device now if an offload hook manages it (code that calls its submodules directly,
    as the tiled VAE passes do, would otherwise compute where the weights wait, in RAM)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(module)


class _OneAtATime:
    """The modules of one model sharing a device one at a time: the one about to run moves there, the others leave."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.members: list[torch.nn.Module] = []

    def bring(self, module: torch.nn.Module) -> None:
        if next(module.parameters()).device == self.device:
            return
        for other in self.members:
            if other is not module and next(other.parameters()).device != torch.device("cpu"):
                other.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        module.to(self.device)


def _hook_class() -> type:
    from accelerate.hooks import ModelHook
    from accelerate.utils import send_to_device

    class OnDeviceWhileRunning(ModelHook):  # type: ignore[misc]  # accelerate is untyped
        """Moves its module to the shared device before each forward (and diffusers' VAE encode/decode)."""

        def __init__(self, group: _OneAtATime) -> None:
            self.group = group
            self.execution_device = group.device

        def init_hook(self, module: torch.nn.Module) -> torch.nn.Module:
            return module.to("cpu")

        def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            self.group.bring(module)
            return send_to_device(args, self.group.device), send_to_device(kwargs, self.group.device)

    return OnDeviceWhileRunning


def current_mode(parts: ModelParts) -> str:
    placed = _PLACED.get(parts.unet)
    return placed.mode if placed is not None else "normal"


def attach(parts: ModelParts, module: torch.nn.Module, device: torch.device | str) -> None:
    """Place ``module`` (an external VAE used with ``parts`` for a job) as the mode of ``parts`` places its own."""
    from accelerate.hooks import add_hook_to_module, remove_hook_from_module

    placed = _PLACED.get(parts.unet)
    group = placed.group if placed is not None else None
    if hasattr(module, "_hf_hook"):
        remove_hook_from_module(module)
    if group is None:
        module.to(device)
        return
    module.to("cpu")
    if module not in group.members:
        group.members.append(module)
    add_hook_to_module(module, _hook_class()(group))


def detach(parts: ModelParts, module: torch.nn.Module) -> None:
    """Undo :func:`attach`: ``module`` back in RAM, out of the group."""
    from accelerate.hooks import remove_hook_from_module

    placed = _PLACED.get(parts.unet)
    group = placed.group if placed is not None else None
    if hasattr(module, "_hf_hook"):
        remove_hook_from_module(module)
    if group is not None and module in group.members:
        group.members.remove(module)
    module.to("cpu")


def remove(parts: ModelParts) -> None:
    """Take every offload hook off ``parts`` (its weights stay where they are)."""
    from accelerate.hooks import remove_hook_from_module

    for module in parts.modules():
        if hasattr(module, "_hf_hook"):
            remove_hook_from_module(module)
        for sub in module.modules():
            registry = getattr(sub, "_diffusers_hook", None)
            if registry is not None:
                for name in _GROUP_HOOKS:
                    registry.remove_hook(name, recurse=False)
        _ONLOAD.pop(module, None)
    _PLACED.pop(parts.unet, None)
    parts.execution_device = None


def apply(parts: ModelParts, mode: str, device: torch.device | str) -> None:
    """Place ``parts`` for ``mode`` (one of :data:`MODES`) on ``device``, replacing any earlier placement."""
    from accelerate.hooks import add_hook_to_module

    if mode not in MODES:
        raise ValueError(f"unknown memory mode {mode!r}")
    device = torch.device(device)
    remove(parts)
    if mode == "normal":
        parts.to(device)
        group = None
    else:
        hook = _hook_class()
        group = _OneAtATime(device)
        whole = [m for m in parts.modules() if m is not parts.unet or mode == "medvram"]
        for module in whole:
            module.to("cpu")
            group.members.append(module)
            add_hook_to_module(module, hook(group))
        if mode == "lowvram":
            from diffusers.hooks import apply_group_offloading

            unet: torch.nn.Module = parts.unet
            unet.to("cpu")
            apply_group_offloading(unet, onload_device=device, offload_device=torch.device("cpu"),
                                   offload_type="block_level", num_blocks_per_group=1)
            _ONLOAD[unet] = device
    _PLACED[parts.unet] = _Placement(mode, device, group if mode != "normal" else None)
    parts.execution_device = device
    if device.type == "cuda":
        torch.cuda.empty_cache()
    log.debug("memory mode %s on %s", mode, device)
