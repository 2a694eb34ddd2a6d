"""A1111 prompt syntax to per-step weighted conditioning.

Each prompt is split on ``AND`` (composable diffusion), each part into its prompt-editing schedule, each scheduled
text into 75-token chunks with attention weights. Chunks are encoded separately and concatenated, weights are applied
with A1111's "Original" emphasis (scale, then restore the mean). Clip skip applies to SD 1.x, as in A1111.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from modules.errors import ValidationError
from modules.models.loader import ModelParts
from modules.prompts import chunks as prompt_chunks
from modules.prompts import parser as prompt_parser

if TYPE_CHECKING:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

Tensor = torch.Tensor


@dataclass
class Cond:
    context: Tensor  # (1, 77 * n_chunks, dim)
    pooled: Tensor | None = None  # SDXL pooled text embedding (1, dim)

    def require_pooled(self) -> Tensor:
        """The pooled embedding SDXL's UNet needs (an SDXL text encoder always gives one)."""
        if self.pooled is None:
            raise ValueError("conditioning without a pooled embedding given to an SDXL UNet")
        return self.pooled


@dataclass
class ScheduledCond:
    end_at_step: int
    cond: Cond


Schedule = list[ScheduledCond]


@dataclass
class ImageConds:
    """What one image of a batch is conditioned on: weighted ``AND`` parts, and the negative prompt."""

    positive: list[tuple[float, Schedule]]
    negative: Schedule


def cond_at(schedule: Schedule, step: int) -> Cond:
    """The conditioning in force at sampling step ``step`` (0-based), as A1111 picks it."""
    for entry in schedule:
        if step <= entry.end_at_step:
            return entry.cond
    return schedule[-1].cond


@dataclass
class TextEncoder:
    """Encodes prompt texts for one loaded model; results are cached per text for the duration of a job."""

    parts: ModelParts
    clip_skip: int = 1
    _cache: dict[tuple[str, bool], Cond] = field(default_factory=dict)

    def _run(self, encoder: CLIPTextModel | CLIPTextModelWithProjection, tokens: Tensor, layer: str
             ) -> tuple[Tensor, Tensor | None]:
        out = encoder(input_ids=tokens, output_hidden_states=layer != "last")
        pooled = getattr(out, "text_embeds", None)
        if layer == "penultimate":
            return out.hidden_states[-2], pooled
        if layer == "last" or self.clip_skip <= 1:
            return out.last_hidden_state, pooled
        final_norm = getattr(encoder, "final_layer_norm", None) or encoder.get_submodule("text_model.final_layer_norm")
        return final_norm(out.hidden_states[-self.clip_skip]), pooled

    def _encode_with(self, encoder: CLIPTextModel | CLIPTextModelWithProjection, tokenizer: CLIPTokenizer, text: str,
                     layer: str) -> tuple[Tensor, Tensor | None]:
        chunk_list, _ = prompt_chunks.tokenize_line(text, tokenizer)
        device = next(encoder.parameters()).device
        tokens = torch.tensor([c.tokens for c in chunk_list], device=device)
        weights = torch.tensor([c.multipliers for c in chunk_list], device=device, dtype=torch.float32)
        z, pooled = self._run(encoder, tokens, layer)
        z = z.float()
        restored = []
        for i in range(z.shape[0]):
            original_mean = z[i].mean()
            zi = z[i] * weights[i].unsqueeze(-1)
            new_mean = zi.mean()
            restored.append(zi * (original_mean / new_mean) if new_mean != 0 else zi)
        context = torch.cat(restored, dim=0).unsqueeze(0)
        if not bool(torch.isfinite(context).all()):
            # never hand NaN or inf to the UNet: extreme weights that cancel out can blow up the mean restore
            raise ValidationError("prompt: the attention weights make the text conditioning overflow; use "
                                  "weights closer to 1", field="prompt")
        return context, (pooled[:1].float() if pooled is not None else None)

    @torch.no_grad()
    def encode(self, text: str, zero_if_empty: bool = False) -> Cond:
        key = (text, zero_if_empty)
        if key in self._cache:
            return self._cache[key]
        p = self.parts
        if p.family.is_xl:
            assert p.text_encoder_2 is not None and p.tokenizer_2 is not None  # loaded with every SDXL model
            ctx_l, _ = self._encode_with(p.text_encoder, p.tokenizer, text, "penultimate")
            ctx_g, pooled = self._encode_with(p.text_encoder_2, p.tokenizer_2, text, "penultimate")
            n = min(ctx_l.shape[1], ctx_g.shape[1])
            cond = Cond(torch.cat([ctx_l[:, :n], ctx_g[:, :n]], dim=-1), pooled)
            if zero_if_empty and text == "":
                cond = Cond(torch.zeros_like(cond.context), torch.zeros_like(cond.require_pooled()))
        elif p.family.base == "sd2":
            cond = Cond(self._encode_with(p.text_encoder, p.tokenizer, text, "last")[0])
        else:
            cond = Cond(self._encode_with(p.text_encoder, p.tokenizer, text, "skip")[0])
        self._cache[key] = cond
        return cond

    def schedule(self, text: str, steps: int, hires_steps: int | None, negative: bool = False) -> Schedule:
        what, name = ("negative prompt", "negative_prompt") if negative else ("prompt", "prompt")
        scheduled = prompt_parser.get_learned_conditioning_prompt_schedules([text], steps, hires_steps, what=what,
                                                                             field=name)[0]
        zero = negative and self.parts.family.is_xl
        return [ScheduledCond(end, self.encode(t, zero_if_empty=zero)) for end, t in scheduled]


def build_conditioning(encoder: TextEncoder, prompts: list[str], negatives: list[str], steps: int,
                       hires_steps: int | None = None) -> list[ImageConds]:
    """Per-image conditioning for a batch of (already style-merged, network-tag-free) prompts."""
    out = []
    for prompt, negative in zip(prompts, negatives, strict=True):
        parts = prompt_parser.split_and(prompt) or [(prompt, 1.0)]
        positive = [(w, encoder.schedule(text, steps, hires_steps)) for text, w in parts]
        out.append(ImageConds(positive, encoder.schedule(negative, steps, hires_steps, negative=True)))
    return out
