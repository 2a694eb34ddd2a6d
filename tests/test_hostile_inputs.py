"""Hostile regexes, prompts and JSON: each gives a ValidationError (or a normal result), and finishes.

The only time bound is "it finished" within a generous join timeout, so a regression to backtracking or recursion
shows as a failure instead of a stalled test run.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest

from modules.errors import ValidationError
from modules.infotext import RE_PARAM, find_params, parse_infotext
from modules.merge.merger import parse_metadata_json
from modules.merge.plan import compile_discard
from modules.prompts import parser
from modules.prompts.schedule import StepRule, parse_schedule, schedule_from_nodes
from modules.prompts.schedule_lark import lark_schedule


def finishes(fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Run ``fn`` in a thread; assert it finished; return its result or re-raise its exception."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "did not finish"
    if "error" in box:
        raise box["error"]
    return box.get("result")


# --- discard_weights ------------------------------------------------------------------------------------------


def test_catastrophic_discard_regex_runs_in_linear_time() -> None:
    pattern = compile_discard(r"^(\w+\.?)+!$")
    assert pattern is not None
    key = "model.diffusion_model.input_blocks.0.0.weight" * 20
    assert finishes(lambda: pattern.search(key)) is False


def test_discard_keeps_re_search_semantics() -> None:
    pattern = compile_discard(r"first_stage_model\.")
    assert pattern is not None
    assert pattern.search("first_stage_model.decoder.conv_in.weight")
    assert pattern.search("x.first_stage_model.y")  # search, not match
    assert not pattern.search("model.diffusion_model.out.0.weight")
    assert compile_discard("") is None


@pytest.mark.parametrize("pattern", [r"(a)\1", r"model(?=\.)", r"(?<!x)y", "(["])
def test_discard_regex_without_re2_support_is_a_validation_error(pattern: str) -> None:
    with pytest.raises(ValidationError) as info:
        compile_discard(pattern)
    assert info.value.field == "discard_weights"
    assert "discard weights" in str(info.value)


def test_deeply_nested_metadata_json_is_a_validation_error() -> None:
    with pytest.raises(ValidationError) as info:
        finishes(lambda: parse_metadata_json("[" * 100_000 + "]" * 100_000))
    assert info.value.field == "metadata_json"
    assert parse_metadata_json('{"a": [1]}') == {"a": [1]}


# --- prompts --------------------------------------------------------------------------------------------------

HOSTILE_PROMPTS = [
    "(" * 9990 + "a" + ")" * 9990,
    "(" * 1000 + "a",
    "(" * 200 + "a" + ")" * 200,
    "[" * 200 + "a" + "]" * 200,
    "[a:" * 2000 + "b" + ":0.5]" * 2000,
]


@pytest.mark.parametrize("prompt", HOSTILE_PROMPTS, ids=["parens-9990", "open-1000", "parens-200", "square-200",
                                                        "editing-2000"])
def test_deep_nesting_is_refused_quickly(prompt: str) -> None:
    for fn in (lambda: parser.parse_prompt_attention(prompt),
               lambda: parser.get_learned_conditioning_prompt_schedules([prompt], 20)):
        with pytest.raises(ValidationError) as info:
            finishes(fn)
        assert info.value.field == "prompt"
        assert "nested more than 100 levels" in str(info.value)


def test_nesting_at_the_limit_still_parses() -> None:
    prompt = "(" * 50 + "[" * 50 + "a" + "]" * 50 + ")" * 50
    [(text, weight)] = parser.parse_prompt_attention(prompt)
    assert text == "a" and weight == pytest.approx(1.0)
    assert parser.get_learned_conditioning_prompt_schedules([prompt], 20) == [[(20, prompt)]]


@pytest.mark.parametrize("unit", ["[]", "()", "[a:b:0.5]", "[a|b]", "][:1]))", "(a:1.2) ", "\\[x]", "a:b|"])
def test_100k_characters_of_brackets_finish(unit: str) -> None:
    prompt = (unit * (100_000 // len(unit) + 1))[:100_000]

    def run() -> None:
        try:
            parser.get_learned_conditioning_prompt_schedules([prompt], 20)
        except ValidationError:
            pass  # refusing is fine; stalling is not
        try:
            parser.parse_prompt_attention(prompt)
        except ValidationError:
            pass

    finishes(run)


def test_other_prompt_syntax_is_linear() -> None:
    spaces = " " * 100_000
    finishes(lambda: parser.parse_prompt_attention("BREAK" + spaces + "x"))
    assert parser.split_and(spaces + "x") == [(spaces + "x", 1.0)]
    assert finishes(lambda: parser.extract_extra_networks("<a:" * 30_000)) == ("<a:" * 30_000, [])
    finishes(lambda: parser.strip_comments("#" * 100_000))


def test_weights_that_overflow_are_refused_not_nan() -> None:
    with pytest.raises(ValidationError, match="attention weight"):
        parser.parse_prompt_attention("(a:" + "9" * 400 + ")")
    with pytest.raises(ValidationError, match="attention weight"):
        parser.parse_prompt_attention("(((a:100):100):100)")
    assert parser.parse_prompt_attention("((a:100):100)") == [("a", 10000.0)]


def test_schedule_variants_are_capped() -> None:
    prompt = " ".join(f"[a{i}:b{i}:{i}]" for i in range(1, 151)) + " " + "x" * 5000
    with pytest.raises(ValidationError, match="different prompts"):
        finishes(lambda: parser.get_learned_conditioning_prompt_schedules([prompt], 150))
    # alternation over every step of a long prompt gives only two texts: allowed
    long_alternation = "[cat|dog] " + "x" * 19_000
    schedule = finishes(lambda: parser.get_learned_conditioning_prompt_schedules([long_alternation], 150))[0]
    assert len(schedule) == 150 and len({text for _, text in schedule}) == 2


def test_field_names_the_negative_prompt() -> None:
    with pytest.raises(ValidationError) as info:
        parser.get_learned_conditioning_prompt_schedules(["[" * 101], 20, what="negative prompt",
                                                         field="negative_prompt")
    assert info.value.field == "negative_prompt" and str(info.value).startswith("negative prompt:")


def _random_prompt(rng: random.Random, alphabet: str, length: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, length)))


def test_schedule_parser_agrees_with_a1111_grammar() -> None:
    """Against the Earley grammar A1111 uses, on prompts long enough to skip it: well-formed ones must agree."""
    rng = random.Random(7)
    units = ["cat", " ", ", ", "(x:1.2)", "((y))", "[z]", "\\(", "[a:b:0.5]", "[c:3]", "[d|e]", "[[p|q]:r:2]",
             "[(s:1.1) t: u :0.25]", "[f||g]", "[h:[i:j:4]:2]"]
    for _ in range(200):
        prompt = "".join(rng.choice(units) for _ in range(rng.randint(1, 8)))
        rule = StepRule(12)
        expected = lark_schedule(prompt, rule)
        parsed = parse_schedule(prompt)
        assert parsed.clean, prompt
        assert schedule_from_nodes(prompt, parsed.nodes or [], rule) == expected, prompt


def test_find_params_matches_the_regex() -> None:
    rng = random.Random(3)
    for _ in range(20_000):
        line = _random_prompt(rng, 'ab1_ -/:,"\\\t\x1cé', 16)
        assert find_params(line) == RE_PARAM.findall(line), line


@pytest.mark.parametrize("line", ["a" * 100_000, " " * 100_000, "\t" * 100_000, "a b " * 25_000,
                                  'k: "' + "\\x" * 50_000])
def test_infotext_parsing_is_linear(line: str) -> None:
    result = finishes(lambda: parse_infotext("prompt\n" + line))
    assert isinstance(result, dict)


def test_infotext_with_deep_brackets_is_plain_text() -> None:
    text = "(" * 9990 + "a" + ")" * 9990 + "\nSteps: 20, Sampler: Euler, Seed: 1"
    result = finishes(lambda: parse_infotext(text))
    assert result["Prompt"] == "(" * 9990 + "a" + ")" * 9990 and result["Steps"] == 20


def test_linear_split_helpers_match_a1111_regexes() -> None:
    # on short inputs, where the regexes are fast, they must give the same result
    rng = random.Random(5)
    break_re = re.compile(r"\s*\bBREAK\b\s*", re.S)
    weight_re = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")
    for _ in range(5_000):
        text = _random_prompt(rng, "ab :1.\t\n", 10) + rng.choice(["", "BREAK", " BREAK ", ":2", " : .5 "])
        assert parser._split_break(text) == break_re.split(text), text
        match = weight_re.search(text)
        assert match is not None
        body, weight = match.groups()
        assert parser._and_weight(text) == (body, float(weight) if weight is not None else 1.0), text
