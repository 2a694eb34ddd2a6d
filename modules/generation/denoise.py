"""The denoiser the samplers call: a diffusers UNet seen in sigma space, with A1111's classifier-free guidance.

:class:`ModelDenoiser` turns the UNet's noise (or v) prediction into an estimate of the clean latent at a noise level
sigma (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models": D(x; sigma) with the
c_in / c_out / c_skip scalings of an epsilon or a v model, over the model's discrete sigma table).

:class:`CFGDenoiser` batches every ``AND`` part of every image with the negative prompts, as A1111 does, and combines
``uncond + sum(w * cfg * (cond - uncond))``. It follows the prompt-editing schedules one model call at a time (A1111
counts calls, not sampler steps), skips the negative prompt on alternate steps below ``s_min_uncond`` (NGMS), and
blends the original latents back outside an inpainting mask after each call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from modules.generation.conditioning import Cond, ImageConds, cond_at
from modules.sampling import timestep_samplers
from modules.sampling.schedules import SigmaTable

if TYPE_CHECKING:
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

Tensor = torch.Tensor


class SamplingStopped(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside a model call when the job is interrupted or the image skipped."""


def _expand(v: Tensor, ndim: int) -> Tensor:
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


@dataclass
class ModelDenoiser:
    """The UNet as a denoiser D(x, sigma), for a batch whose rows may carry different conditionings."""

    unet: UNet2DConditionModel
    table: SigmaTable
    v_prediction: bool = False
    dtype: torch.dtype = torch.float32  # the UNet's, looked up once (diffusers' ``.dtype`` walks every module)
    time_ids: Tensor | None = None  # SDXL micro-conditioning, one row per image (B, 6)
    image_cond: Tensor | None = None  # inpainting UNets: mask and masked-image latents per image (B, 5, h, w)
    kind: str = "sigma"  # "sigma": D(x, sigma); "eps": the noise at timestep t (timestep samplers); "lcm"
    alphas_cumprod: Tensor | None = None  # for "eps" with a v model
    lcm_table: SigmaTable | None = None  # for "lcm"
    _context_cache: tuple[list[Cond], Tensor] | None = field(default=None, init=False, repr=False)

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        return self.table.sigma_to_t(sigma)

    def _context(self, contexts: list[Cond], device: torch.device) -> Tensor:
        """The rows' text conditionings as one tensor; the last one is kept for the next call, which usually has
        the same ones (a prompt changes only at a prompt-editing step)."""
        cached = self._context_cache
        if cached is not None and len(cached[0]) == len(contexts) and all(
                a is b for a, b in zip(cached[0], contexts, strict=True)):
            return cached[1]
        context = torch.cat([c.context for c in contexts]).to(device=device, dtype=self.dtype)
        self._context_cache = (list(contexts), context)
        return context

    def model_output(self, x_in: Tensor, t: Tensor, contexts: list[Cond], image_idx: list[int]) -> Tensor:
        """The raw UNet output for already scaled inputs ``x_in`` (N rows) at timesteps ``t``."""
        inp = x_in
        if self.image_cond is not None:
            inp = torch.cat([inp, self.image_cond[image_idx].to(inp)], dim=1)
        context = self._context(contexts, inp.device)
        kwargs: dict[str, Any] = {}
        if self.time_ids is not None:
            pooled = torch.cat([c.require_pooled() for c in contexts]).to(device=inp.device, dtype=self.dtype)
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled,
                                           "time_ids": self.time_ids[image_idx].to(device=inp.device,
                                                                                   dtype=self.dtype)}
        out: Tensor = self.unet(inp.to(self.dtype), t.to(inp.device), encoder_hidden_states=context,
                                return_dict=False, **kwargs)[0]
        return out.float()

    def _scalars(self, x: Tensor, sigma: Tensor) -> tuple[float, float, float] | None:
        """(sigma, c_in, t) as float32 values when every row has the same float32 sigma on the CPU (a sampler's
        usual call): the tensor formulas below on one element (log, square root: torch's), the timestep's
        interpolation on numpy float32 scalars; the same numbers to the bit, without a dozen small tensor operations
        per call. None otherwise."""
        if x.device.type != "cpu" or x.dtype != torch.float32 or sigma.dtype != torch.float32 or sigma.ndim != 1:
            return None
        values = sigma.tolist()
        if not values or any(v != values[0] for v in values):
            return None
        one = sigma[:1]
        t_value = self.table.sigma_to_t_float32(one.log().item())
        if t_value is None:
            return None
        # 1 / (s**2 + 1) ** 0.5 as torch computes it (its square root is not always numpy's, which rounds exactly)
        c_in = one.mul(one).add_(1).sqrt_().reciprocal_().item()
        return values[0], c_in, t_value

    def __call__(self, x: Tensor, sigma: Tensor, contexts: list[Cond], image_idx: list[int]) -> Tensor:
        """D(x, sigma) for N rows: row k is image ``image_idx[k]`` conditioned on ``contexts[k]`` (for the timestep
        samplers ``sigma`` is the timestep and the result the noise; for LCM its consistency-model estimate)."""
        if self.kind == "eps":
            out = self.model_output(x, sigma, contexts, image_idx)
            if self.v_prediction:
                assert self.alphas_cumprod is not None
                out = timestep_samplers.eps_from_v(self.alphas_cumprod.to(x.device), x, sigma, out)
            return out
        if self.kind == "lcm":
            assert self.lcm_table is not None
            return timestep_samplers.lcm_denoise(lambda x_in, t: self.model_output(x_in, t, contexts, image_idx), x,
                                                 sigma, self.lcm_table)
        scalars = self._scalars(x, sigma)
        if scalars is not None:  # one sigma for every row, on the CPU: the scalings worked out once, as floats
            s_value, c_in_value, t_value = scalars
            out = self.model_output(x * c_in_value, torch.full_like(sigma, t_value), contexts, image_idx)
            if self.v_prediction:
                s32, c32 = np.float32(s_value), np.float32(c_in_value)
                return out * float(-s32 * c32) + x / float(s32 * s32 + np.float32(1.0))
            return x - out * s_value
        s = _expand(sigma, x.ndim)
        c_in = 1 / (s**2 + 1) ** 0.5
        out = self.model_output(x * c_in, self.sigma_to_t(sigma), contexts, image_idx)
        if self.v_prediction:
            return out * (-s * c_in) + x / (s**2 + 1)
        return x - out * s


def _pad_to(context: Tensor, length: int) -> Tensor:
    """Pad a (1, n, dim) conditioning to ``length`` tokens by repeating its last vector (A1111's batch rule)."""
    missing = length - context.shape[1]
    if missing <= 0:
        return context
    return torch.cat([context, context[:, -1:].repeat(1, missing, 1)], dim=1)


def _same_length(conds: list[Cond]) -> list[Cond]:
    length = max(c.context.shape[1] for c in conds)
    return [c if c.context.shape[1] == length else Cond(_pad_to(c.context, length), c.pooled) for c in conds]


@dataclass(frozen=True)
class _Layout:
    """The guided batch's positive rows: ``rows[k]`` is the image of positive row ``k``; ``weights[i]`` lists image
    ``i``'s (row, weight) pairs (one per ``AND`` part)."""

    conds: list[ImageConds]
    rows: list[int]
    weights: list[list[tuple[int, float]]]
    first_rows: list[int]  # each image's first positive row
    plain: bool  # one positive prompt per image: row k is image k
    single: bool  # ... and its weight is 1 (no AND anywhere)

    @classmethod
    def of(cls, conds: list[ImageConds]) -> _Layout:
        rows: list[int] = []
        weights: list[list[tuple[int, float]]] = []
        for i, image in enumerate(conds):
            weights.append([(len(rows) + j, weight) for j, (weight, _) in enumerate(image.positive)])
            rows.extend([i] * len(image.positive))
        plain = rows == list(range(len(conds)))
        single = plain and all(mine[0][1] == 1.0 for mine in weights)
        return cls(conds, rows, weights, [mine[0][0] for mine in weights], plain, single)


@dataclass
class CFGDenoiser:
    """A1111's classifier-free guidance around a :class:`ModelDenoiser`; call it as ``D(x, sigma)`` for the batch."""

    model: ModelDenoiser
    conds: list[ImageConds]
    cfg_scale: float
    s_min_uncond: float = 0.0
    init_latent: Tensor | None = None  # with ``mask``: blended back after every call
    mask: Tensor | None = None  # 1 where the image is regenerated (A1111's nmask), broadcastable to the latents
    should_stop: Callable[[], bool] = lambda: False
    blend_before: bool = False  # timestep samplers: the mask blends the model's input, not its output
    scale_multiplier: float = 1.0  # DDIM CFG++ guides with cfg / 12.5
    step: int = 0  # model calls so far: the index into the prompt-editing schedules
    last_x0: Tensor | None = None  # the first positive prompt's estimate of the last call (returned on interrupt)
    last_uncond: Tensor | None = None  # the negative prompt's output of the last call (DDIM CFG++)
    used_ngms: bool = field(default=False, init=False)
    before_call: Callable[[CFGDenoiser, Tensor], None] | None = None  # e.g. the refiner's switch
    _layout_cache: _Layout | None = field(default=None, init=False, repr=False)

    def _layout(self) -> _Layout:
        """Which batch row each positive prompt takes, and its weight (worked out again only when ``conds`` is
        replaced, as the refiner's switch does)."""
        layout = self._layout_cache
        if layout is None or layout.conds is not self.conds:
            layout = _Layout.of(self.conds)
            self._layout_cache = layout
        return layout

    def _skip_uncond(self, sigma: Tensor, layout: _Layout) -> bool:
        if self.cfg_scale == 1.0 and layout.single:
            return True  # uncond + (cond - uncond): the negative prompt cannot change the result
        if self.s_min_uncond > 0 and self.step % 2 == 1 and float(sigma[0]) < self.s_min_uncond:
            self.used_ngms = True
            return True
        return False

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        if self.should_stop():
            raise SamplingStopped
        if self.before_call is not None:
            self.before_call(self, sigma)
        batch = x.shape[0]
        if self.blend_before and self.mask is not None and self.init_latent is not None:
            x = x * self.mask + self.init_latent * (1 - self.mask)
        layout = self._layout()
        rows, weights, step = layout.rows, layout.weights, self.step
        positive = _same_length([cond_at(schedule, step) for image in self.conds for _, schedule in image.positive])
        negative = _same_length([cond_at(image.negative, step) for image in self.conds])
        skip = self._skip_uncond(sigma, layout)
        plain = layout.plain and len(rows) == batch  # one positive prompt per image (no AND): the batch itself
        x_pos, s_pos = (x, sigma) if plain else (x[rows], sigma[rows])
        x_rows = torch.cat([x_pos, x]) if not skip else x_pos
        s_rows = torch.cat([s_pos, sigma]) if not skip else s_pos
        images = rows + list(range(batch)) if not skip else rows
        if skip or positive[0].context.shape[1] == negative[0].context.shape[1]:
            out = self.model(x_rows, s_rows, positive + ([] if skip else negative), images)
        else:  # different token lengths: the positive rows in chunks of twice the batch, then the negatives
            parts = []
            for a in range(0, len(positive), 2 * batch):
                b = min(a + 2 * batch, len(positive))
                parts.append(self.model(x_rows[a:b], s_rows[a:b], positive[a:b], rows[a:b]))
            parts.append(self.model(x, sigma, negative, list(range(batch))))
            out = torch.cat(parts)
        first = out[:batch] if plain else out[layout.first_rows]
        uncond = first if skip else out[len(positive):]
        scale = 1.0 if skip else self.cfg_scale * self.scale_multiplier
        self.last_uncond = uncond  # a view of this call's output, which nothing writes to
        if plain and layout.single:  # no AND: one product for the batch (uncond + (cond - uncond) * scale)
            denoised = torch.sub(first, uncond).mul_(scale).add_(uncond)
        else:
            denoised = uncond.clone()
            for i, mine in enumerate(weights):
                for row, weight in mine:
                    denoised[i] += (out[row] - uncond[i]) * (weight * scale)
        if not self.blend_before and self.mask is not None and self.init_latent is not None:
            denoised = self.init_latent * (1 - self.mask) + denoised * self.mask
        self.last_x0 = first
        self.step += 1
        return denoised
