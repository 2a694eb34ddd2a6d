"""CLIP ranking as pure functions over embeddings, and the text an interrogation returns.

Within one category, every line is scored against the image by the softmax over the category of 100 times the cosine
similarity (CLIP's fixed logit scale of 100, whatever the checkpoint's learned scale), averaged over the image
embeddings given; the best ``top_count`` lines are picked. Scores are therefore probabilities within a category.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

LOGIT_SCALE = 100.0


@dataclass(frozen=True)
class Pick:
    """One line of a category chosen for an image, with its probability within that category."""

    text: str
    score: float


def rank(image_features: torch.Tensor, text_features: torch.Tensor, top_count: int) -> list[tuple[int, float]]:
    """The ``top_count`` best lines as ``(index, probability)``, best first.

    ``image_features``: ``(d,)`` or ``(n, d)``; ``text_features``: ``(m, d)``. Both are L2-normalised here and
    computed in float32; the probabilities of the ``n`` image rows are averaged."""
    if text_features.ndim != 2:
        raise ValueError(f"text features must be (lines, dim), got shape {tuple(text_features.shape)}")
    image = image_features.float().reshape(-1, image_features.shape[-1])
    text = text_features.float()
    if image.shape[-1] != text.shape[-1]:
        raise ValueError(f"image features have {image.shape[-1]} dimensions, text features {text.shape[-1]}")
    count = min(max(top_count, 0), text.shape[0])
    if count == 0:
        return []
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    probabilities = (LOGIT_SCALE * image @ text.T).softmax(dim=-1).mean(dim=0)
    values, indices = probabilities.topk(count)
    return [(int(i), float(v)) for i, v in zip(indices.tolist(), values.tolist(), strict=True)]


def rank_texts(image_features: torch.Tensor, text_features: torch.Tensor, texts: Sequence[str],
               top_count: int) -> list[Pick]:
    """``rank`` with the lines themselves: ``texts[i]`` is the line of ``text_features[i]``."""
    if len(texts) != text_features.shape[0]:
        raise ValueError(f"{len(texts)} lines for {text_features.shape[0]} text embeddings")
    return [Pick(texts[i], score) for i, score in rank(image_features, text_features, top_count)]


def format_pick(pick: Pick, return_ranks: bool) -> str:
    """A pick as the prompt shows it: the line, or ``(line:0.123)`` with its probability."""
    return f"({pick.text}:{pick.score:.3f})" if return_ranks else pick.text


def format_interrogation(caption: str, picks: Sequence[Pick], return_ranks: bool = False) -> str:
    """The caption followed by the picks, joined by ``", "``."""
    return ", ".join([caption, *(format_pick(p, return_ranks) for p in picks)])
