"""A1111's 75-token prompt chunking for CLIP text encoders, and its token counter.

Follows ``tokenize_line`` of AUTOMATIC1111's ``modules/sd_hijack_clip.py`` (1.10): a prompt of any length becomes
chunks of 75 tokens, each framed as ``BOS + 75 + EOS`` (77 ids) with one weight per id. Textual-inversion
embeddings are not looked up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from modules.prompts.parser import (
    BREAK_WEIGHT,
    extract_extra_networks,
    get_learned_conditioning_prompt_schedules,
    parse_prompt_attention,
    split_and,
    strip_comments,
)

CHUNK_LENGTH = 75
COMMA_TOKEN = ",</w>"


@dataclass
class PromptChunk:
    """One 77-id window of a prompt: ``tokens`` are the ids fed to the text encoder, ``multipliers`` their weights.

    Layout, as A1111 feeds the encoder: BOS, the content ids, EOS, then padding up to 77. When the tokenizer's pad id
    is EOS (CLIP ViT-L, SD 1.x) the padding is EOS; when it differs (OpenCLIP with ``"!"``, SD 2.x / SDXL), every id
    after the first EOS is the pad id, which is what A1111's ``process_tokens`` does before encoding.
    """

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)


@dataclass
class _SpecialIds:
    bos: int
    eos: int
    pad: int
    comma: int | None


def _special_ids(tokenizer: Any) -> _SpecialIds:
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    comma = tokenizer.convert_tokens_to_ids(COMMA_TOKEN)
    if comma == tokenizer.unk_token_id and tokenizer.unk_token != COMMA_TOKEN:
        comma = None
    return _SpecialIds(bos=tokenizer.bos_token_id, eos=eos, pad=eos if pad is None else pad, comma=comma)


def _frame(content: list[int], weights: list[float], ids: _SpecialIds, chunk_length: int) -> PromptChunk:
    """BOS + content padded to ``chunk_length`` + EOS, with everything after the first EOS set to the pad id."""
    fill = chunk_length - len(content)
    tokens = [ids.bos, *content, *([ids.eos] * fill), ids.eos]
    multipliers = [1.0, *weights, *([1.0] * fill), 1.0]
    if ids.pad != ids.eos:
        first_eos = tokens.index(ids.eos)
        tokens[first_eos + 1 :] = [ids.pad] * (len(tokens) - first_eos - 1)
    return PromptChunk(tokens=tokens, multipliers=multipliers)


def empty_chunk(tokenizer: Any, chunk_length: int = CHUNK_LENGTH) -> PromptChunk:
    """The chunk A1111 uses to pad shorter prompts of a batch: BOS, then EOS/padding, all weights 1.0."""
    return _frame([], [], _special_ids(tokenizer), chunk_length)


def tokenize_line(
    line: str,
    tokenizer: Any,
    comma_padding_backtrack: int = 20,
    chunk_length: int = CHUNK_LENGTH,
    emphasis: bool = True,
) -> tuple[list[PromptChunk], int]:
    """Split a prompt into 77-id chunks with per-token weights; also return the token count A1111 reports.

    A full chunk is cut after the last comma when that comma is within ``comma_padding_backtrack`` tokens of the
    end (0 disables this), the rest moving to the next chunk; ``BREAK`` closes the current chunk. ``emphasis=False``
    matches A1111's "Emphasis: None" (the prompt is taken literally, all weights 1.0).
    """
    ids = _special_ids(tokenizer)
    parsed = parse_prompt_attention(line) if emphasis else [(line, 1.0)]
    tokenized = tokenizer([text for text, _ in parsed], truncation=False, add_special_tokens=False)["input_ids"]

    chunks: list[PromptChunk] = []
    content: list[int] = []
    weights: list[float] = []
    last_comma = -1
    token_count = 0

    def close(is_last: bool = False) -> None:
        nonlocal content, weights, last_comma, token_count
        # A closed chunk counts as a full 75 tokens, the final one only its content.
        token_count += len(content) if is_last else chunk_length
        chunks.append(_frame(content, weights, ids, chunk_length))
        content, weights, last_comma = [], [], -1

    for fragment_ids, (text, weight) in zip(tokenized, parsed, strict=True):
        if text == "BREAK" and weight == BREAK_WEIGHT:
            close()
            continue
        for token in fragment_ids:
            if token == ids.comma:
                last_comma = len(content)
            elif (
                comma_padding_backtrack != 0
                and len(content) == chunk_length
                and last_comma != -1
                and len(content) - last_comma <= comma_padding_backtrack
            ):
                cut = last_comma + 1
                moved_ids, moved_weights = content[cut:], weights[cut:]
                content, weights = content[:cut], weights[:cut]
                close()
                content, weights = moved_ids, moved_weights
            if len(content) == chunk_length:
                close()
            content.append(token)
            weights.append(weight)

    if content or not chunks:
        close(is_last=True)
    return chunks, token_count


def target_token_count(token_count: int, chunk_length: int = CHUNK_LENGTH) -> int:
    """The counter's maximum: the token count rounded up to whole chunks, at least one chunk."""
    return math.ceil(max(token_count, 1) / chunk_length) * chunk_length


def count_tokens(
    text: str,
    tokenizer: Any,
    steps: int = 20,
    is_positive: bool = True,
    comments: bool = True,
) -> tuple[int, int]:
    """(token count, max length) for the UI counter, like A1111's ``update_token_counter``.

    Comments and extra-network tags are removed, a positive prompt is split on ``AND``, and the longest variant
    produced by prompt editing / alternation over ``steps`` is counted.
    """
    if comments:
        text = strip_comments(text)
    text, _ = extract_extra_networks(text)
    if is_positive:
        parts = list(dict.fromkeys(part for part, _ in split_and(text)))
    else:
        parts = [text]
    try:
        schedules = get_learned_conditioning_prompt_schedules(parts, steps)
    except Exception:  # noqa: BLE001 - a half-typed prompt must not break the counter
        schedules = [[(steps, text)]]
    variants = [variant for schedule in schedules for _, variant in schedule]
    counts = [tokenize_line(variant, tokenizer)[1] for variant in dict.fromkeys(variants)]
    token_count = max(counts)
    return token_count, target_token_count(token_count)
