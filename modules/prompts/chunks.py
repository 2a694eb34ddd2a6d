"""A1111's 75-token prompt chunking for CLIP text encoders, and its token counter.

Follows ``tokenize_line`` of AUTOMATIC1111's ``modules/sd_hijack_clip.py`` (1.10): a prompt of any length becomes
chunks of 75 tokens, each framed as ``BOS + 75 + EOS`` (77 ids) with one weight per id. Given an
:class:`EmbeddingFinder`, textual-inversion embedding names take one position per vector, never split across chunks;
the chunk records where their vectors go (A1111's ``PromptChunkFix``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

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
EMBEDDING_PLACEHOLDER = 0  # the id A1111 puts where an embedding's vectors go (the encoder never sees its row)


@dataclass(frozen=True)
class EmbeddingHit:
    """An embedding name found in a prompt: it takes ``vectors`` positions in place of ``length`` prompt tokens."""

    name: str
    vectors: int
    length: int


class EmbeddingFinder(Protocol):
    """Finds the embedding whose name's token ids start at ``tokens[offset]`` (A1111's
    ``find_embedding_at_position``)."""

    def find_at(self, tokens: Sequence[int], offset: int) -> EmbeddingHit | None: ...


class PromptChunkFix(NamedTuple):
    """The embedding ``name``'s vectors go at ``offset`` of the chunk's content, that is ids ``offset + 1`` on
    (after BOS), as in A1111."""

    offset: int
    name: str


@dataclass
class PromptChunk:
    """One 77-id window of a prompt: ``tokens`` are the ids fed to the text encoder, ``multipliers`` their weights.

    Layout, as A1111 feeds the encoder: BOS, the content ids, EOS, then padding up to 77. When the tokenizer's pad id
    is EOS (CLIP ViT-L, SD 1.x) the padding is EOS; when it differs (OpenCLIP with ``"!"``, SD 2.x / SDXL), every id
    after the first EOS is the pad id, which is what A1111's ``process_tokens`` does before encoding.
    """

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[PromptChunkFix] = field(default_factory=list)


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


def _frame(content: list[int], weights: list[float], ids: _SpecialIds, chunk_length: int,
           fixes: list[PromptChunkFix] | None = None) -> PromptChunk:
    """BOS + content padded to ``chunk_length`` + EOS, with everything after the first EOS set to the pad id."""
    fill = chunk_length - len(content)
    tokens = [ids.bos, *content, *([ids.eos] * fill), ids.eos]
    multipliers = [1.0, *weights, *([1.0] * fill), 1.0]
    if ids.pad != ids.eos:
        first_eos = tokens.index(ids.eos)
        tokens[first_eos + 1 :] = [ids.pad] * (len(tokens) - first_eos - 1)
    return PromptChunk(tokens=tokens, multipliers=multipliers, fixes=fixes or [])


def empty_chunk(tokenizer: Any, chunk_length: int = CHUNK_LENGTH) -> PromptChunk:
    """The chunk A1111 uses to pad shorter prompts of a batch: BOS, then EOS/padding, all weights 1.0."""
    return _frame([], [], _special_ids(tokenizer), chunk_length)


@dataclass
class _ChunkBuilder:
    """The chunk being filled and the ones closed so far: the state of A1111's ``tokenize_line`` loop."""

    ids: _SpecialIds
    chunk_length: int
    comma_padding_backtrack: int
    chunks: list[PromptChunk] = field(default_factory=list)
    content: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    fixes: list[PromptChunkFix] = field(default_factory=list)
    last_comma: int = -1
    token_count: int = 0

    def close(self, is_last: bool = False) -> None:
        # A closed chunk counts as a full 75 tokens, the final one only its content.
        self.token_count += len(self.content) if is_last else self.chunk_length
        self.chunks.append(_frame(self.content, self.weights, self.ids, self.chunk_length, self.fixes))
        self.content, self.weights, self.fixes, self.last_comma = [], [], [], -1

    def _backtrack_applies(self) -> bool:
        return (self.comma_padding_backtrack != 0 and len(self.content) == self.chunk_length
                and self.last_comma != -1 and len(self.content) - self.last_comma <= self.comma_padding_backtrack)

    def make_room(self, token: int) -> None:
        """Before the token at the cursor: note a comma, move the words after a recent comma to a new chunk when
        the chunk is full, close a full chunk.

        As in A1111 only ids and weights move: an embedding among the moved words leaves its fix behind, so the
        closed chunk gets its vectors over its padding and the new chunk keeps the placeholder ids.
        """
        if token == self.ids.comma:
            self.last_comma = len(self.content)
        elif self._backtrack_applies():
            cut = self.last_comma + 1
            moved_ids, moved_weights = self.content[cut:], self.weights[cut:]
            self.content, self.weights = self.content[:cut], self.weights[:cut]
            self.close()
            self.content, self.weights = moved_ids, moved_weights
        if len(self.content) == self.chunk_length:
            self.close()

    def add_token(self, token: int, weight: float) -> None:
        self.content.append(token)
        self.weights.append(weight)

    def add_embedding(self, hit: EmbeddingHit, weight: float) -> None:
        """One position per vector, all in one chunk: a new chunk is started when they do not fit.

        More than 75 vectors cannot fit any chunk (A1111 then builds an over-long chunk the encoder rejects): the
        embedding is given the 75 positions of a whole chunk and its first 75 vectors are used.
        """
        n = min(hit.vectors, self.chunk_length)
        if len(self.content) + n > self.chunk_length:
            self.close()
        self.fixes.append(PromptChunkFix(len(self.content), hit.name))
        self.content.extend([EMBEDDING_PLACEHOLDER] * n)
        self.weights.extend([weight] * n)


def _add_fragment(builder: _ChunkBuilder, fragment_ids: list[int], weight: float,
                  embeddings: EmbeddingFinder | None) -> None:
    position = 0
    while position < len(fragment_ids):
        token = fragment_ids[position]
        builder.make_room(token)
        hit = embeddings.find_at(fragment_ids, position) if embeddings is not None else None
        if hit is None:
            builder.add_token(token, weight)
            position += 1
        else:
            builder.add_embedding(hit, weight)
            position += max(hit.length, 1)


def tokenize_line(
    line: str,
    tokenizer: Any,
    comma_padding_backtrack: int = 20,
    chunk_length: int = CHUNK_LENGTH,
    emphasis: bool = True,
    embeddings: EmbeddingFinder | None = None,
) -> tuple[list[PromptChunk], int]:
    """Split a prompt into 77-id chunks with per-token weights; also return the token count A1111 reports.

    A full chunk is cut after the last comma when that comma is within ``comma_padding_backtrack`` tokens of the
    end (0 disables this), the rest moving to the next chunk; ``BREAK`` closes the current chunk. ``emphasis=False``
    matches A1111's "Emphasis: None" (the prompt is taken literally, all weights 1.0). ``embeddings`` finds
    textual-inversion names (None: none are looked up); their positions are listed in each chunk's ``fixes``.
    """
    ids = _special_ids(tokenizer)
    parsed = parse_prompt_attention(line) if emphasis else [(line, 1.0)]
    tokenized = tokenizer([text for text, _ in parsed], truncation=False, add_special_tokens=False)["input_ids"]
    builder = _ChunkBuilder(ids, chunk_length, comma_padding_backtrack)
    for fragment_ids, (text, weight) in zip(tokenized, parsed, strict=True):
        if text == "BREAK" and weight == BREAK_WEIGHT:
            builder.close()
            continue
        _add_fragment(builder, fragment_ids, weight, embeddings)
    if builder.content or not builder.chunks:
        builder.close(is_last=True)
    return builder.chunks, builder.token_count


def target_token_count(token_count: int, chunk_length: int = CHUNK_LENGTH) -> int:
    """The counter's maximum: the token count rounded up to whole chunks, at least one chunk."""
    return math.ceil(max(token_count, 1) / chunk_length) * chunk_length


def count_tokens(
    text: str,
    tokenizer: Any,
    steps: int = 20,
    is_positive: bool = True,
    comments: bool = True,
    embeddings: EmbeddingFinder | None = None,
) -> tuple[int, int]:
    """(token count, max length) for the UI counter, like A1111's ``update_token_counter``.

    Comments and extra-network tags are removed, a positive prompt is split on ``AND``, and the longest variant
    produced by prompt editing / alternation over ``steps`` is counted; an embedding counts one per vector.
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
    counts = [tokenize_line(variant, tokenizer, embeddings=embeddings)[1] for variant in dict.fromkeys(variants)]
    token_count = max(counts)
    return token_count, target_token_count(token_count)
