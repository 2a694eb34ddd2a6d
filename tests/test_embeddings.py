"""Textual-inversion embeddings as A1111 1.10 loads and uses them, on tiny random-weight models.

An embedding made of a word's own token embeddings must condition exactly like the word: that checks the whole
path (name matching, positions, the encoder hook, weights) without reference images.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modules.generation.conditioning import Cond, TextEncoder, build_conditioning
from modules.hashing import HashCache
from modules.models.families import FAMILIES
from modules.models.loader import ModelParts
from modules.models.tiny import build_components
from modules.networks.embeddings import EmbeddingDatabase, EmbeddingSet, ti_hashes
from modules.prompts.chunks import EMBEDDING_PLACEHOLDER, PromptChunkFix, count_tokens, tokenize_line

BOS, EOS = 49406, 49407


def make_parts(family: str) -> ModelParts:
    c = build_components(family)
    return ModelParts(family=FAMILIES[family], prediction_type="epsilon", unet=c["unet"], vae=c["vae"],
                      text_encoder=c["text_encoder"], tokenizer=c["tokenizer"], scheduler_config={},
                      text_encoder_2=c.get("text_encoder_2"), tokenizer_2=c.get("tokenizer_2"))


@pytest.fixture(scope="module")
def parts_by_family() -> dict[str, ModelParts]:
    return {}


@pytest.fixture
def parts(parts_by_family, request) -> ModelParts:
    family = request.param
    if family not in parts_by_family:
        parts_by_family[family] = make_parts(family)
    return parts_by_family[family]


def word_ids(parts: ModelParts, word: str) -> list[int]:
    return parts.tokenizer(word, add_special_tokens=False)["input_ids"]


def word_rows(encoder, ids: list[int]) -> torch.Tensor:
    return encoder.get_input_embeddings().weight[ids].detach().clone()


def write_word_embedding(parts: ModelParts, folder: Path, name: str, word: str) -> Path:
    """An embedding whose vectors are ``word``'s token embeddings, in the layout the model's family uses."""
    ids = word_ids(parts, word)
    folder.mkdir(parents=True, exist_ok=True)
    if parts.family.is_xl:
        path = folder / f"{name}.safetensors"
        save_file({"clip_l": word_rows(parts.text_encoder, ids),
                   "clip_g": word_rows(parts.text_encoder_2, ids)}, str(path))
    else:
        path = folder / f"{name}.pt"
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": word_rows(parts.text_encoder, ids)},
                    "name": name, "step": 10}, path)
    return path


def embedding_set(parts: ModelParts, folder: Path) -> EmbeddingSet:
    db = EmbeddingDatabase([folder])
    db.refresh()
    assert db.problems == []
    return db.for_model(parts)


def same(a: Cond, b: Cond) -> None:
    assert torch.equal(a.context, b.context)
    assert (a.pooled is None) == (b.pooled is None)
    if a.pooled is not None and b.pooled is not None:
        assert torch.equal(a.pooled, b.pooled)


@pytest.mark.parametrize("parts", ["sd1", "sd2", "sdxl"], indirect=True)
def test_word_embedding_conditions_like_the_word(parts, tmp_path) -> None:
    write_word_embedding(parts, tmp_path / "emb", "tiword", "cat")
    embs = embedding_set(parts, tmp_path / "emb")
    assert list(embs.loaded) == ["tiword"]
    with_ti = TextEncoder(parts, 1, embs)
    plain = TextEncoder(parts)
    for ti_text, word_text in [("a photo of tiword, outdoors", "a photo of cat, outdoors"),
                               ("(tiword:1.3) on a sofa", "(cat:1.3) on a sofa"),
                               ("[tiword] tiword", "[cat] cat")]:
        same(with_ti.encode(ti_text), plain.encode(word_text))
    assert not torch.equal(with_ti.encode("tiword").context, plain.encode("tiword").context)
    assert with_ti.used_embeddings == {"tiword": embs.loaded["tiword"].shorthash}


@pytest.mark.parametrize("parts", ["sd1", "sdxl"], indirect=True)
def test_word_embedding_in_negative_prompt(parts, tmp_path) -> None:
    write_word_embedding(parts, tmp_path, "tiword", "cat")
    embs = embedding_set(parts, tmp_path)
    ti = build_conditioning(TextEncoder(parts, 1, embs), ["a dog"], ["blurry, (tiword:1.3)"], steps=4)[0]
    ref = build_conditioning(TextEncoder(parts), ["a dog"], ["blurry, (cat:1.3)"], steps=4)[0]
    same(ti.negative[0].cond, ref.negative[0].cond)
    same(ti.positive[0][1][0].cond, ref.positive[0][1][0].cond)


@pytest.mark.parametrize("parts", ["sd1", "sdxl"], indirect=True)
def test_multi_vector_embedding(parts, tmp_path) -> None:
    assert len(word_ids(parts, "catdog")) == 2
    write_word_embedding(parts, tmp_path, "tiword", "catdog")
    embs = embedding_set(parts, tmp_path)
    assert embs.loaded["tiword"].vectors == 2
    enc = TextEncoder(parts, 1, embs)
    same(enc.encode("a (tiword:0.8) in the park"), TextEncoder(parts).encode("a (catdog:0.8) in the park"))


@pytest.mark.parametrize("parts", ["sd1"], indirect=True)
def test_embedding_at_a_chunk_boundary_moves_whole(parts, tmp_path) -> None:
    write_word_embedding(parts, tmp_path, "tiword", "catdog")
    embs = embedding_set(parts, tmp_path)
    # 70 + 2 + 2 positions, then the third embedding does not fit: it starts the second chunk, as BREAK would
    ti = TextEncoder(parts, 2, embs).encode("dog " * 70 + "tiword " * 4)
    ref = TextEncoder(parts, 2).encode("dog " * 70 + "catdog catdog BREAK catdog catdog")
    assert ti.context.shape[1] == 2 * 77
    same(ti, ref)


# --- files ------------------------------------------------------------------------------------------------------------


def write_formats(folder: Path) -> None:
    (folder / "sub" / "deeper").mkdir(parents=True)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.randn(2, 32)}, "name": "other",
                "step": 500, "sd_checkpoint": "abcd1234", "sd_checkpoint_name": "sd-base"}, folder / "a1111.pt")
    torch.save({"<concept>": torch.randn(32, dtype=torch.float16)}, folder / "sub" / "concept.bin")
    save_file({"emb_params": torch.randn(3, 32)}, str(folder / "sub" / "deeper" / "emb_params.safetensors"))
    save_file({"clip_l": torch.randn(2, 32), "clip_g": torch.randn(2, 64)}, str(folder / "XLPair.SAFETENSORS"))
    (folder / "notes.txt").write_text("not an embedding")
    (folder / "empty.pt").write_bytes(b"")


@pytest.mark.parametrize("parts", ["sd1"], indirect=True)
def test_file_formats_on_sd1(parts, tmp_path) -> None:
    write_formats(tmp_path)
    db = EmbeddingDatabase([tmp_path])
    db.refresh()
    assert db.problems == []
    assert sorted(e.name for e in db.embeddings) == ["XLPair", "a1111", "concept", "emb_params"]
    item = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 32}
    assert db.api(parts) == {
        "loaded": {"a1111": {"step": 500, "sd_checkpoint": "abcd1234", "sd_checkpoint_name": "sd-base",
                             "shape": 32, "vectors": 2},
                   "concept": {**item, "vectors": 1},
                   "emb_params": {**item, "vectors": 3}},
        "skipped": {"XLPair": {**item, "shape": 96, "vectors": 2}},
    }
    assert db.for_model(parts).loaded["concept"].rows(None).dtype == torch.float32
    assert db.api(None) == {"loaded": {}, "skipped": {}}


@pytest.mark.parametrize("parts", ["sdxl"], indirect=True)
def test_file_formats_on_sdxl(parts, tmp_path) -> None:
    write_formats(tmp_path)
    save_file({"clip_l": torch.randn(1, 32), "clip_g": torch.randn(1, 48)}, str(tmp_path / "wrong_g.safetensors"))
    result = EmbeddingDatabase([tmp_path]).api(parts)
    assert list(result["loaded"]) == ["XLPair"]
    assert result["loaded"]["XLPair"]["shape"] == 32 + 64
    assert set(result["skipped"]) == {"a1111", "concept", "emb_params", "wrong_g"}


@pytest.mark.parametrize("parts", ["sd2"], indirect=True)
def test_width_mismatch_is_skipped(parts, tmp_path) -> None:
    torch.save({"string_to_param": {"*": torch.randn(1, 48)}}, tmp_path / "wide.pt")
    torch.save({"string_to_param": {"*": torch.randn(1, 32)}}, tmp_path / "fits.pt")
    embs = EmbeddingDatabase([tmp_path]).for_model(parts)
    assert list(embs.loaded) == ["fits"] and list(embs.skipped) == ["wide"]
    chunks, _ = tokenize_line("wide fits", parts.tokenizer, embeddings=embs.lookup(parts.tokenizer))
    assert [fix.name for fix in chunks[0].fixes] == ["fits"]


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_bad_files_are_reported_not_loaded(tmp_path, caplog) -> None:
    marker = tmp_path / "pwned"
    torch.save({"string_to_param": {"*": _RunsCode(marker)}}, tmp_path / "evil.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x04 not a pickle at all")
    save_file({"emb_params": torch.randn(4, 32)}, str(tmp_path / "whole.safetensors"))
    data = (tmp_path / "whole.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) - 40])
    torch.save({"a": torch.randn(32), "b": torch.randn(32)}, tmp_path / "two_terms.bin")
    torch.save({"something": "else"}, tmp_path / "unknown.pt")
    torch.save(torch.randn(2, 32), tmp_path / "bare_tensor.pt")
    torch.save({"string_to_param": {"*": torch.randn(2, 2, 32)}}, tmp_path / "cube.pt")
    with caplog.at_level(logging.WARNING):
        db = EmbeddingDatabase([tmp_path])
        db.refresh()
    assert not marker.exists()
    assert [e.name for e in db.embeddings] == ["whole"]
    bad = ["bare_tensor.pt", "cube.pt", "evil.pt", "garbage.pt", "truncated.safetensors", "two_terms.bin",
           "unknown.pt"]
    assert len(db.problems) == len(bad)
    for name, problem in zip(bad, db.problems, strict=True):
        assert name in problem
        assert any(name in record.getMessage() for record in caplog.records)
    assert "multiple terms" in db.problems[5]


def test_refresh_reads_only_changed_files(tmp_path) -> None:
    torch.save({"string_to_param": {"*": torch.randn(1, 32)}}, tmp_path / "one.pt")
    torch.save({"string_to_param": {"*": torch.randn(1, 32)}}, tmp_path / "two.pt")
    db = EmbeddingDatabase([tmp_path, tmp_path / "missing"])
    db.refresh()
    first = {e.name: e for e in db.embeddings}
    torch.save({"string_to_param": {"*": torch.randn(3, 32)}}, tmp_path / "two.pt")
    os.utime(tmp_path / "two.pt", ns=(1, 1))
    (tmp_path / "one.pt").rename(tmp_path / "renamed.pt")
    db.refresh()
    now = {e.name: e for e in db.embeddings}
    assert set(now) == {"renamed", "two"}
    assert now["two"].vectors == 3 and now["two"] is not first["two"]
    db.refresh()
    assert {e.name: e for e in db.embeddings}["two"] is now["two"]


def test_shorthash_is_the_file_sha256(tmp_path) -> None:
    path = tmp_path / "emb" / "hashed.pt"
    path.parent.mkdir()
    torch.save({"string_to_param": {"*": torch.randn(1, 32)}}, path)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    cache = HashCache(tmp_path / "cache.json")
    for hashes in (None, cache):
        db = EmbeddingDatabase([path.parent], hashes)
        db.refresh()
        assert db.embeddings[0].shorthash == expected[:12]
    assert expected in (tmp_path / "cache.json").read_text()


def test_ti_hashes_format() -> None:
    assert ti_hashes({}) is None
    assert ti_hashes({"a": ""}) is None
    assert ti_hashes({"bad:name,x": "0123456789ab", "nohash": "", "second": "ba9876543210"}) == \
        "badnamex: 0123456789ab, second: ba9876543210"


@pytest.mark.parametrize("parts", ["sd1"], indirect=True)
def test_used_embeddings_in_first_use_order(parts, tmp_path) -> None:
    write_word_embedding(parts, tmp_path, "first", "cat")
    write_word_embedding(parts, tmp_path, "second", "dog")
    write_word_embedding(parts, tmp_path, "unused", "sofa")
    embs = embedding_set(parts, tmp_path)
    enc = TextEncoder(parts, 1, embs)
    build_conditioning(enc, ["a second and [first:second:2]"], ["first"], steps=4)
    assert list(enc.used_embeddings) == ["second", "first"]
    expected = f"second: {embs.loaded['second'].shorthash}, first: {embs.loaded['first'].shorthash}"
    assert ti_hashes(enc.used_embeddings) == expected
    plain = TextEncoder(parts)
    plain.encode("first second")
    assert plain.used_embeddings == {}


# --- chunking ---------------------------------------------------------------------------------------------------------


class _Finder:
    """A stand-in lookup: names given as token ids, longest first as A1111 sorts them."""

    def __init__(self, names: dict[str, tuple[list[int], int]]) -> None:
        self.names = sorted(names.items(), key=lambda item: len(item[1][0]), reverse=True)

    def find_at(self, tokens, offset):
        from modules.prompts.chunks import EmbeddingHit

        for name, (ids, vectors) in self.names:
            if list(tokens[offset:offset + len(ids)]) == ids:
                return EmbeddingHit(name, vectors, len(ids))
        return None


@pytest.fixture(scope="module")
def tok():
    from modules.models.tokenizer import build_clip_tokenizer

    return build_clip_tokenizer()


def test_embedding_moves_whole_to_the_next_chunk(tok) -> None:
    cat = tok("cat", add_special_tokens=False)["input_ids"][0]
    finder = _Finder({"tiword": (tok("tiword", add_special_tokens=False)["input_ids"], 3)})
    chunks, count = tokenize_line("cat " * 72 + "tiword", tok, embeddings=finder)
    assert (len(chunks), count) == (1, 75)
    assert chunks[0].tokens == [BOS] + [cat] * 72 + [EMBEDDING_PLACEHOLDER] * 3 + [EOS]
    assert chunks[0].fixes == [PromptChunkFix(72, "tiword")]

    chunks, count = tokenize_line("cat " * 73 + "(tiword:1.5) cat", tok, embeddings=finder)
    assert (len(chunks), count) == (2, 75 + 4)
    assert chunks[0].tokens == [BOS] + [cat] * 73 + [EOS] * 3
    assert chunks[0].fixes == []
    assert chunks[1].tokens[:6] == [BOS, 0, 0, 0, cat, EOS]
    assert chunks[1].multipliers[:5] == [1.0, 1.5, 1.5, 1.5, 1.0]
    assert chunks[1].fixes == [PromptChunkFix(0, "tiword")]


def test_comma_backtrack_leaves_the_fix_behind_as_a1111(tok) -> None:
    """A1111 moves only ids and weights after the last comma; the embedding's fix stays with the closed chunk."""
    finder = _Finder({"tiword": (tok("tiword", add_special_tokens=False)["input_ids"], 3)})
    chunks, _ = tokenize_line("cat " * 60 + ", tiword" + " dog" * 12, tok, embeddings=finder)
    assert chunks[0].fixes == [PromptChunkFix(61, "tiword")]
    assert chunks[0].tokens[62:] == [EOS] * 15
    assert chunks[1].fixes == []
    assert chunks[1].tokens[1:4] == [EMBEDDING_PLACEHOLDER] * 3


def test_longest_name_first_and_oversized_embeddings(tok) -> None:
    foo = tok("foo", add_special_tokens=False)["input_ids"]
    foo_bar = tok("foo bar", add_special_tokens=False)["input_ids"]
    finder = _Finder({"foo": (foo, 1), "foo bar": (foo_bar, 2), "huge": ([tok.convert_tokens_to_ids("huge</w>")],
                                                                        90)})
    chunks, count = tokenize_line("foo bar foo", tok, embeddings=finder)
    assert chunks[0].fixes == [PromptChunkFix(0, "foo bar"), PromptChunkFix(2, "foo")]
    assert count == 3
    chunks, count = tokenize_line("a huge b", tok, embeddings=finder)
    assert [len(c.tokens) for c in chunks] == [77, 77, 77]
    assert chunks[1].fixes == [PromptChunkFix(0, "huge")] and count == 75 + 75 + 1
    assert count_tokens("foo bar foo", tok, embeddings=finder) == (3, 75)


@pytest.mark.parametrize("parts", ["sd1"], indirect=True)
def test_empty_set_changes_nothing(parts) -> None:
    empty = EmbeddingDatabase([]).for_model(parts)
    assert not empty
    text = "a (cat:1.2), " * 30
    same(TextEncoder(parts, 1, empty).encode(text), TextEncoder(parts).encode(text))
    assert tokenize_line(text, parts.tokenizer, embeddings=empty.lookup(parts.tokenizer)) == \
        tokenize_line(text, parts.tokenizer)
