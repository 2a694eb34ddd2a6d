"""A1111's 75-token chunking (``sd_hijack_clip.tokenize_line``) and token counter, with the offline CLIP tokenizer."""

from __future__ import annotations

import pytest

from modules.models.tokenizer import build_clip_tokenizer
from modules.prompts.chunks import (
    PromptChunk,
    count_tokens,
    empty_chunk,
    target_token_count,
    tokenize_line,
)

BOS, EOS, COMMA = 49406, 49407, 267


@pytest.fixture(scope="module")
def tok():
    return build_clip_tokenizer()


@pytest.fixture(scope="module")
def tok_bang():
    return build_clip_tokenizer("!")


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def check_shape(chunks: list[PromptChunk]) -> None:
    for chunk in chunks:
        assert len(chunk.tokens) == 77 and len(chunk.multipliers) == 77
        assert chunk.tokens[0] == BOS
        assert chunk.multipliers[0] == 1.0 and chunk.multipliers[-1] == 1.0


def test_short_prompt(tok) -> None:
    cat = ids(tok, "a cat")
    chunks, count = tokenize_line("a cat", tok)
    check_shape(chunks)
    assert count == len(cat) == 2
    assert chunks[0].tokens == [BOS, *cat] + [EOS] * 74
    assert chunks[0].multipliers == [1.0] * 77


def test_empty_prompt(tok) -> None:
    chunks, count = tokenize_line("", tok)
    assert count == 0
    assert [(c.tokens, c.multipliers) for c in chunks] == [([BOS] + [EOS] * 76, [1.0] * 77)]
    assert empty_chunk(tok) == chunks[0]


def test_long_prompt_makes_two_chunks(tok) -> None:
    word = ids(tok, "cat")
    assert len(word) == 1
    chunks, count = tokenize_line("cat " * 100, tok)
    check_shape(chunks)
    assert count == 100
    assert len(chunks) == 2
    assert chunks[0].tokens == [BOS] + word * 75 + [EOS]
    assert chunks[1].tokens == [BOS] + word * 25 + [EOS] * 51


def test_exactly_75_tokens_is_one_chunk(tok) -> None:
    chunks, count = tokenize_line("cat " * 75, tok)
    assert (len(chunks), count) == (1, 75)
    chunks, count = tokenize_line("cat " * 76, tok)
    assert (len(chunks), count) == (2, 76)


def test_comma_backtrack_moves_words_after_comma(tok) -> None:
    cat, dog = ids(tok, "cat")[0], ids(tok, "dog")[0]
    prompt = "cat " * 70 + ", " + "dog " * 10
    chunks, count = tokenize_line(prompt, tok)
    check_shape(chunks)
    # the chunk fills at 70 cats + comma + 4 dogs; the comma is 5 tokens back, so the dogs move on
    assert chunks[0].tokens == [BOS] + [cat] * 70 + [COMMA] + [EOS] * 5
    assert chunks[1].tokens == [BOS] + [dog] * 10 + [EOS] * 66
    assert count == 75 + 10


def test_comma_backtrack_disabled_or_too_far(tok) -> None:
    cat, dog = ids(tok, "cat")[0], ids(tok, "dog")[0]
    prompt = "cat " * 70 + ", " + "dog " * 10
    chunks, count = tokenize_line(prompt, tok, comma_padding_backtrack=0)
    assert chunks[0].tokens == [BOS] + [cat] * 70 + [COMMA] + [dog] * 4 + [EOS]
    assert chunks[1].tokens[:7] == [BOS] + [dog] * 6
    assert count == 81
    # a backtrack of 4 does not reach the comma 5 tokens back
    chunks, _ = tokenize_line(prompt, tok, comma_padding_backtrack=4)
    assert chunks[0].tokens[-6:] == [COMMA] + [dog] * 4 + [EOS]


def test_comma_backtrack_keeps_weights(tok) -> None:
    prompt = "cat " * 70 + ", (dog:1.4) " * 1 + "dog " * 9
    chunks, _ = tokenize_line(prompt, tok)
    assert chunks[1].multipliers[:4] == [1.0, 1.4, 1.0, 1.0]


def test_break_closes_chunk(tok) -> None:
    chunks, count = tokenize_line("a cat BREAK a dog", tok)
    check_shape(chunks)
    assert len(chunks) == 2
    assert chunks[0].tokens == [BOS, *ids(tok, "a cat")] + [EOS] * 74
    assert chunks[1].tokens == [BOS, *ids(tok, "a dog")] + [EOS] * 74
    assert count == 75 + 2


def test_break_inside_brackets_is_plain_text_as_in_a1111(tok) -> None:
    chunks, _ = tokenize_line("(a BREAK b)", tok)
    assert len(chunks) == 1
    assert chunks[0].tokens[1:4] == ids(tok, "a BREAK b")


def test_weights_on_the_right_tokens(tok) -> None:
    chunks, count = tokenize_line("a (red:1.5) cat, [blue] sky", tok)
    toks = chunks[0].tokens
    weights = chunks[0].multipliers
    expected = [("a", 1.0), ("red", 1.5), ("cat", 1.0), (",", 1.0), ("blue", 1 / 1.1), ("sky", 1.0)]
    for position, (word, weight) in enumerate(expected, start=1):
        assert toks[position] == ids(tok, word)[0]
        assert weights[position] == pytest.approx(weight)
    assert count == 6
    assert weights[7:] == [1.0] * 70


def test_emphasis_off_takes_prompt_literally(tok) -> None:
    chunks, count = tokenize_line("(red:1.5)", tok, emphasis=False)
    assert count == len(ids(tok, "(red:1.5)"))
    assert set(chunks[0].multipliers) == {1.0}


def test_bang_padding_after_eos(tok_bang) -> None:
    pad = tok_bang.pad_token_id
    assert pad == 0
    cat = ids(tok_bang, "a cat")
    chunks, count = tokenize_line("a cat", tok_bang)
    assert count == 2
    assert chunks[0].tokens == [BOS, *cat, EOS] + [pad] * 73
    chunks, _ = tokenize_line("cat " * 80, tok_bang)
    assert chunks[0].tokens[-1] == EOS  # a full chunk has no padding
    assert chunks[1].tokens == [BOS] + ids(tok_bang, "cat") * 5 + [EOS] + [pad] * 70
    chunks, _ = tokenize_line("", tok_bang)
    assert chunks[0].tokens == [BOS, EOS] + [pad] * 75
    assert empty_chunk(tok_bang).tokens == [BOS, EOS] + [pad] * 75


def test_target_token_count() -> None:
    assert [target_token_count(n) for n in (0, 1, 75, 76, 150, 151)] == [75, 75, 75, 150, 150, 225]


def test_count_tokens_basic(tok) -> None:
    assert count_tokens("", tok) == (0, 75)
    assert count_tokens("a cat", tok) == (2, 75)
    assert count_tokens("cat " * 80, tok) == (80, 150)


def test_count_tokens_takes_longest_scheduled_variant(tok) -> None:
    assert count_tokens("a [cat:very big fluffy dog:5]", tok) == (5, 75)
    assert count_tokens("[cat|very big fluffy dog]", tok) == (4, 75)


def test_count_tokens_and_networks_and_comments(tok) -> None:
    assert count_tokens("a cat AND a very big dog:1.2", tok) == (4, 75)
    # a negative prompt is not split on AND
    assert count_tokens("a cat AND a very big dog", tok, is_positive=False) == (7, 75)
    assert count_tokens("a cat <lora:some_lora:0.8>", tok) == (2, 75)
    assert count_tokens("a cat # a very long comment\n# more", tok) == (2, 75)
    assert count_tokens("a cat # x", tok, comments=False) == (4, 75)
