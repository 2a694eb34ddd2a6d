"""The sampling loop: a diffusers scheduler stepping the UNet with classifier-free guidance.

Guidance follows A1111: every ``AND`` part of every image and the negative prompt are evaluated (in as few UNet
calls as their token lengths allow) and combined as ``uncond + sum(w * cfg * (cond - uncond))``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from modules.generation.conditioning import Cond, ImageConds, cond_at
from modules.generation.control import JobControl
from modules.samplers import step_params

if TYPE_CHECKING:
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

Tensor = torch.Tensor
StepCallback = Callable[[int, int, Tensor], None]


@dataclass
class DenoiseContext:
    unet: UNet2DConditionModel
    conds: list[ImageConds]
    cfg_scale: float
    time_ids: Tensor | None = None  # SDXL micro-conditioning (B, 6)
    extra_channels: Tensor | None = None  # inpainting UNets: mask and masked-image latents (B, 5, h, w)
    step_kwargs: dict[str, Any] = field(default_factory=dict)
    dtype: torch.dtype = torch.float32  # the UNet's, looked up once (diffusers' ``.dtype`` walks every module)


def _unet_call(ctx: DenoiseContext, x: Tensor, t: Tensor, conds: list[Cond], image_idx: list[int]) -> Tensor:
    unet = ctx.unet
    dtype = ctx.dtype
    inp = x[image_idx]
    if ctx.extra_channels is not None:
        inp = torch.cat([inp, ctx.extra_channels[image_idx].to(inp.dtype)], dim=1)
    context = torch.cat([c.context for c in conds]).to(device=inp.device, dtype=dtype)
    kwargs: dict[str, Any] = {}
    if ctx.time_ids is not None:
        pooled = torch.cat([c.require_pooled() for c in conds]).to(device=inp.device, dtype=dtype)
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": ctx.time_ids[image_idx].to(dtype)}
    out: Tensor = unet(inp.to(dtype), t, encoder_hidden_states=context, return_dict=False, **kwargs)[0]
    return out.float()


def guided_noise(ctx: DenoiseContext, x: Tensor, t: Tensor, step: int) -> Tensor:
    """The guided model output for the batch ``x`` (already scaled by the scheduler) at sampling step ``step``."""
    entries: list[tuple[int, float | None, Cond]] = []
    skip_uncond = ctx.cfg_scale == 1.0
    for i, image in enumerate(ctx.conds):
        for weight, schedule in image.positive:
            entries.append((i, weight, cond_at(schedule, step)))
        if not skip_uncond:
            entries.append((i, None, cond_at(image.negative, step)))
    groups: dict[int, list[int]] = {}
    for n, (_, _, cond) in enumerate(entries):
        groups.setdefault(cond.context.shape[1], []).append(n)
    outputs: dict[int, Tensor] = {}  # entry index -> model output
    for members in groups.values():
        result = _unet_call(ctx, x, t, [entries[n][2] for n in members], [entries[n][0] for n in members])
        for k, n in enumerate(members):
            outputs[n] = result[k]
    guided: list[Tensor] = []
    for i in range(len(ctx.conds)):
        mine = [(w, outputs[n]) for n, (img, w, _) in enumerate(entries) if img == i]
        uncond = next((o for w, o in mine if w is None), None)
        conds = [(w, o) for w, o in mine if w is not None]
        if uncond is None:
            weighted = torch.zeros_like(conds[0][1])
            for w, o in conds:
                weighted += w * o
            guided.append(weighted / max(sum(w for w, _ in conds), 1e-8))
            continue
        total = uncond.clone()
        for w, o in conds:
            total += w * ctx.cfg_scale * (o - uncond)
        guided.append(total)
    return torch.stack(guided)


def run_steps(ctx: DenoiseContext, scheduler: Any, latents: Tensor, timesteps: Tensor, total_steps: int,
              step_offset: int, control: JobControl, generators: list[torch.Generator] | None,
              on_step: StepCallback | None = None, after_step: Callable[[Tensor, int], Tensor] | None = None
              ) -> Tensor:
    """Step ``latents`` through ``timesteps``; returns the latents reached (early if interrupted or skipped)."""
    n = len(timesteps)
    extra = dict(ctx.step_kwargs)
    if generators is not None and "generator" in step_params(type(scheduler)):
        extra["generator"] = generators if len(generators) > 1 else generators[0]
    for i, t in enumerate(timesteps):
        if control.should_stop():
            break
        step = step_offset + (i * (total_steps - step_offset)) // max(n, 1)
        x_in = scheduler.scale_model_input(latents, t)
        noise_pred = guided_noise(ctx, x_in, t, step)
        latents = scheduler.step(noise_pred, t, latents, return_dict=False, **extra)[0]
        if after_step is not None:
            latents = after_step(latents, i)
        if on_step is not None:
            on_step(i + 1, n, latents)
    return latents

