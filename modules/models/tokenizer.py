"""CLIP tokenizers built offline from the bundled CLIP BPE vocabulary.

Every Stable Diffusion family uses the same CLIP BPE vocabulary (49,408 entries); only the padding token differs
(SD 1.x pads with ``<|endoftext|>``, OpenCLIP encoders of SD 2.x and SDXL pad with ``!``). The vocabulary file,
``clip/bpe_simple_vocab_16e6.txt.gz`` (the one the open_clip_torch wheel ships), holds a header line and then the
48,894 merges; the vocabulary is the 256 byte symbols, the same with ``</w>``, one entry per merge, and the two
special tokens.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

from transformers import CLIPTokenizer

from modules.errors import ModelLoadError

MAX_LENGTH = 77
_N_MERGES = 49152 - 256 - 2


BUNDLED_VOCABULARY = Path(__file__).parent / "clip" / "bpe_simple_vocab_16e6.txt.gz"


def bpe_vocabulary_path() -> Path:
    if not BUNDLED_VOCABULARY.is_file():
        raise ModelLoadError(f"the CLIP vocabulary is missing from the installation ({BUNDLED_VOCABULARY})")
    return BUNDLED_VOCABULARY


def _bytes_to_unicode() -> dict[int, str]:
    """The byte-to-printable-character table of GPT-2 and CLIP byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], tuple[str, ...]]:
    """The CLIP vocabulary (token -> id) and merge list, derived from the BPE file."""
    with gzip.open(bpe_vocabulary_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = tuple(lines[1 : _N_MERGES + 1])
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """A CLIP tokenizer identical to ``openai/clip-vit-large-patch14``'s, with the given padding token."""
    vocab, merges = clip_vocab_and_merges()
    pairs = [tuple(m.split()) for m in merges]
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=pairs,  # type: ignore[arg-type]  # annotated list[str]; handed to tokenizers' BPE, which takes pairs
        pad_token=pad_token,
        model_max_length=MAX_LENGTH,
    )
