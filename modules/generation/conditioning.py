"""A1111 prompt syntax to per-step weighted conditioning.

Each prompt is split on ``AND`` (composable diffusion), each part into its prompt-editing schedule, each scheduled
text into 75-token chunks with attention weights. Chunks are encoded separately and concatenated, weights are applied
with A1111's "Original" emphasis (scale, then restore the mean). Clip skip applies to SD 1.x, as in A1111.
Textual-inversion embeddings named in a prompt reach the encoder as A1111's ``EmbeddingsWithFixes`` puts them: their
vectors replace the token embeddings at their positions, before the position embeddings are added.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from modules.errors import ValidationError
from modules.models.loader import ModelParts
from modules.models.memory import execution_device
from modules.networks.embeddings import EmbeddingSet
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
    """Encodes prompt texts for one loaded model; results are cached per text for the duration of a job.

    ``embeddings`` are the textual-inversion embeddings the model can use (None: names are plain text);
    :attr:`used_embeddings` records which of them the encoded texts named.
    """

    parts: ModelParts
    clip_skip: int = 1
    embeddings: EmbeddingSet | None = None
    embeddings_for: Callable[[ModelParts], EmbeddingSet] | None = None  # the embeddings another model can use
    _cache: dict[tuple[str, bool], Cond] = field(default_factory=dict)
    _used: dict[str, str] = field(default_factory=dict)

    def for_parts(self, parts: ModelParts) -> TextEncoder:
        """An encoder for another model of the job (hires checkpoint, refiner) with that model's embeddings."""
        if parts is self.parts:
            return self
        found = self.embeddings_for(parts) if self.embeddings_for is not None else None
        return TextEncoder(parts, self.clip_skip, found, self.embeddings_for)

    @property
    def used_embeddings(self) -> dict[str, str]:
        """``{name: shorthash}`` of the embeddings the encoded prompts used, in first-use order (for ``TI hashes``)."""
        return dict(self._used)

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

    def _chunks(self, tokenizer: CLIPTokenizer, text: str) -> list[prompt_chunks.PromptChunk]:
        finder = self.embeddings.lookup(tokenizer) if self.embeddings else None
        chunk_list, _ = prompt_chunks.tokenize_line(text, tokenizer, embeddings=finder)
        for chunk in chunk_list:
            for fix in chunk.fixes:
                if self.embeddings is not None and fix.name not in self._used:
                    self._used[fix.name] = self.embeddings.loaded[fix.name].shorthash
        return chunk_list

    def _fixes_applied(self, encoder: CLIPTextModel | CLIPTextModelWithProjection,
                       chunk_list: list[prompt_chunks.PromptChunk], key: str | None) -> AbstractContextManager[None]:
        """Embedding vectors in place of the placeholder ids' token embeddings while ``encoder`` runs these chunks;
        without embeddings in them the encoder runs untouched."""
        if self.embeddings is None or not any(chunk.fixes for chunk in chunk_list):
            return nullcontext()
        vectors = [[(fix.offset, self.embeddings.loaded[fix.name].rows(key)) for fix in chunk.fixes]
                   for chunk in chunk_list]
        return _token_embeddings_replaced(encoder.get_input_embeddings(), vectors)

    def _encode_with(self, encoder: CLIPTextModel | CLIPTextModelWithProjection, tokenizer: CLIPTokenizer, text: str,
                     layer: str, embedding_key: str | None = None) -> tuple[Tensor, Tensor | None]:
        chunk_list = self._chunks(tokenizer, text)
        device = execution_device(encoder)
        tokens = torch.tensor([c.tokens for c in chunk_list], device=device)
        weights = torch.tensor([c.multipliers for c in chunk_list], device=device, dtype=torch.float32)
        with self._fixes_applied(encoder, chunk_list, embedding_key):
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
        if key not in self._cache:
            self._cache[key] = self.encode_with_grad(text, zero_if_empty)
        return self._cache[key]

    def encode_with_grad(self, text: str, zero_if_empty: bool = False) -> Cond:
        """:meth:`encode` without its cache and outside ``no_grad``: training, where the text encoder or an
        embedding's vectors learn, backpropagates through it."""
        p = self.parts
        if p.family.is_xl:
            assert p.text_encoder_2 is not None and p.tokenizer_2 is not None  # loaded with every SDXL model
            ctx_l, _ = self._encode_with(p.text_encoder, p.tokenizer, text, "penultimate", "clip_l")
            ctx_g, pooled = self._encode_with(p.text_encoder_2, p.tokenizer_2, text, "penultimate", "clip_g")
            n = min(ctx_l.shape[1], ctx_g.shape[1])
            cond = Cond(torch.cat([ctx_l[:, :n], ctx_g[:, :n]], dim=-1), pooled)
            if zero_if_empty and text == "":
                cond = Cond(torch.zeros_like(cond.context), torch.zeros_like(cond.require_pooled()))
        elif p.family.base == "sd2":
            cond = Cond(self._encode_with(p.text_encoder, p.tokenizer, text, "last")[0])
        else:
            cond = Cond(self._encode_with(p.text_encoder, p.tokenizer, text, "skip")[0])
        return cond

    def encode_batch_with_grad(self, texts: list[str]) -> Cond:
        """Several texts in one pass of each encoder, as A1111 encodes a training batch (``cond_stage_model(texts)``):
        the shorter texts padded with empty chunks, each chunk position run for the whole batch; -> ``(B, T, D)``
        contexts (and SDXL's ``(B, D)`` pooled embeddings). Outside ``no_grad``: for training."""
        p = self.parts
        if p.family.is_xl:
            assert p.text_encoder_2 is not None and p.tokenizer_2 is not None
            ctx_l, _ = self._encode_many(p.text_encoder, p.tokenizer, texts, "penultimate", "clip_l")
            ctx_g, pooled = self._encode_many(p.text_encoder_2, p.tokenizer_2, texts, "penultimate", "clip_g")
            n = min(ctx_l.shape[1], ctx_g.shape[1])
            return Cond(torch.cat([ctx_l[:, :n], ctx_g[:, :n]], dim=-1), pooled)
        layer = "last" if p.family.base == "sd2" else "skip"
        return Cond(self._encode_many(p.text_encoder, p.tokenizer, texts, layer)[0])

    def _encode_many(self, encoder: CLIPTextModel | CLIPTextModelWithProjection, tokenizer: CLIPTokenizer,
                     texts: list[str], layer: str, embedding_key: str | None = None) -> tuple[Tensor, Tensor | None]:
        lists = [self._chunks(tokenizer, text) for text in texts]
        empty = prompt_chunks.empty_chunk(tokenizer)
        device = execution_device(encoder)
        parts: list[Tensor] = []
        pooled_first: Tensor | None = None
        for i in range(max(len(chunks) for chunks in lists)):
            rows = [chunks[i] if i < len(chunks) else empty for chunks in lists]
            tokens = torch.tensor([c.tokens for c in rows], device=device)
            weights = torch.tensor([c.multipliers for c in rows], device=device, dtype=torch.float32)
            with self._fixes_applied(encoder, rows, embedding_key):
                z, pooled = self._run(encoder, tokens, layer)
            z = z.float()
            original_mean = z.mean()  # over the whole batch, as A1111's process_tokens
            z = z * weights.unsqueeze(-1)
            new_mean = z.mean()
            parts.append(z * (original_mean / new_mean) if new_mean != 0 else z)
            if i == 0 and pooled is not None:
                pooled_first = pooled.float()
        return torch.cat(parts, dim=1), pooled_first

    def schedule(self, text: str, steps: int, hires_steps: int | None, negative: bool = False) -> Schedule:
        what, name = ("negative prompt", "negative_prompt") if negative else ("prompt", "prompt")
        scheduled = prompt_parser.get_learned_conditioning_prompt_schedules([text], steps, hires_steps, what=what,
                                                                             field=name)[0]
        zero = negative and self.parts.family.is_xl
        return [ScheduledCond(end, self.encode(t, zero_if_empty=zero)) for end, t in scheduled]


def _insert_vectors(rows: Tensor, fixes: list[tuple[int, Tensor]]) -> Tensor:
    """One chunk's token embeddings with each embedding's vectors written from ``offset + 1`` (after BOS), as many
    as fit before the sequence ends (A1111's ``EmbeddingsWithFixes``)."""
    for offset, vec in fixes:
        vec = vec[: rows.shape[0] - 2]  # never more than a chunk's positions
        n = min(rows.shape[0] - offset - 1, vec.shape[0])
        rows = torch.cat([rows[: offset + 1], vec[:n].to(device=rows.device, dtype=rows.dtype),
                          rows[offset + 1 + n:]])
    return rows


@contextmanager
def _token_embeddings_replaced(token_embedding: torch.nn.Module,
                               vectors: list[list[tuple[int, Tensor]]]) -> Iterator[None]:
    """A forward hook on the encoder's token embedding layer for the duration of one call: row ``i`` of the batch
    (chunk ``i``) gets the vectors of ``vectors[i]``. Hooking the layer, as A1111 does, keeps the rest of the
    encoder's forward (position embeddings, pooling at EOS) unchanged."""
    def hook(_module: torch.nn.Module, _args: Any, output: Tensor) -> Tensor:
        return torch.stack([_insert_vectors(row, fixes) for row, fixes in zip(output, vectors, strict=True)])

    handle = token_embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def build_conditioning(encoder: TextEncoder, prompts: list[str], negatives: list[str], steps: int,
                       hires_steps: int | None = None) -> list[ImageConds]:
    """Per-image conditioning for a batch of (already style-merged, network-tag-free) prompts."""
    out = []
    for prompt, negative in zip(prompts, negatives, strict=True):
        parts = prompt_parser.split_and(prompt) or [(prompt, 1.0)]
        positive = [(w, encoder.schedule(text, steps, hires_steps)) for text, w in parts]
        out.append(ImageConds(positive, encoder.schedule(negative, steps, hires_steps, negative=True)))
    return out
