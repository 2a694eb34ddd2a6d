"""A1111 prompt syntax: attention weights, prompt editing and alternation, AND, comments and extra-network tags.

The behaviour follows AUTOMATIC1111's stable-diffusion-webui 1.10 (``modules/prompt_parser.py``,
``modules/processing_scripts/comments.py`` and ``modules/extra_networks.py``), so prompts written for it give the
same fragments, weights and schedules here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from modules.errors import ValidationError
from modules.prompts.schedule import (
    MAX_NESTING,
    StepRule,
    check_schedule_size,
    nesting_error,
    parse_schedule,
    schedule_from_nodes,
)
from modules.prompts.schedule_lark import LARK_MAX_CHARS, lark_schedule

# Attention syntax tokens, tried in this order: escapes, a lone backslash, openers, an explicit-weight closer
# ``:1.2)``, closers, a run of ordinary text, and a stray colon.
_ATTENTION_TOKEN = re.compile(
    r"""
    \\[()\[\]\\]
    | \\
    | [(\[]
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)
    | [)\]]
    | [^\\()\[\]:]+
    | :
    """,
    re.X,
)
_BREAK_WORD = re.compile(r"\bBREAK\b")
_ROUND_MULTIPLIER = 1.1
_SQUARE_MULTIPLIER = 1 / 1.1

_AND = re.compile(r"\bAND\b")
_AND_NUMBER = re.compile(r"[-+]?(?:\d+\.?|\d*\.\d+)")

_WHOLE_LINE_COMMENT = re.compile(r"(^|\n)#[^\n]*(\n|$)")
_TRAILING_COMMENT = re.compile(r"#[^\n]*(\n|$)")

_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")

BREAK_WEIGHT = -1.0
# The largest attention weight accepted: 1.1 ** 96; more would swamp the text encoder's output, and nesting a few
# hundred brackets would overflow to inf (or underflow to 0) and give NaNs. Such prompts are refused, not clamped.
MAX_ATTENTION_WEIGHT = 1e4


@dataclass(slots=True)
class _Fragment:
    """Text and its weight, scaled in place as brackets close."""

    text: str
    weight: float


def parse_prompt_attention(text: str, what: str = "prompt", field: str = "prompt") -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) fragments: ``(x)`` x1.1, ``[x]`` /1.1, ``(x:w)`` xw, ``\\(`` literal.

    ``BREAK`` becomes a ``("BREAK", -1.0)`` fragment; adjacent fragments of equal weight are merged. Brackets open
    more than :data:`MAX_NESTING` deep, or a weight beyond :data:`MAX_ATTENTION_WEIGHT`, raise a ValidationError
    naming ``field``.
    """
    fragments: list[_Fragment] = []
    open_round: list[int] = []
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for fragment in fragments[start:]:
            fragment.weight *= factor

    for match in _ATTENTION_TOKEN.finditer(text):
        token = match.group(0)
        weight = match.group("weight")
        explicit = _to_float(weight) if weight is not None else None

        if token[0] == "\\":
            fragments.append(_Fragment(token[1:], 1.0))
        elif token in ("(", "["):
            (open_round if token == "(" else open_square).append(len(fragments))
            if len(open_round) + len(open_square) > MAX_NESTING:
                raise nesting_error(what, field)
        elif explicit is not None and open_round:
            scale_from(open_round.pop(), explicit)
        elif token == ")" and open_round:
            scale_from(open_round.pop(), _ROUND_MULTIPLIER)
        elif token == "]" and open_square:
            scale_from(open_square.pop(), _SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_split_break(token)):
                if i:
                    fragments.append(_Fragment("BREAK", BREAK_WEIGHT))
                fragments.append(_Fragment(part, 1.0))

    for start in open_round:
        scale_from(start, _ROUND_MULTIPLIER)
    for start in open_square:
        scale_from(start, _SQUARE_MULTIPLIER)

    if not fragments:
        return [("", 1.0)]

    merged = [fragments[0]]
    for fragment in fragments[1:]:
        if fragment.weight == merged[-1].weight:
            merged[-1].text += fragment.text
        else:
            merged.append(fragment)
    _check_weights(merged, what, field)
    return [(f.text, float(f.weight)) for f in merged]


def _check_weights(fragments: list[_Fragment], what: str, field: str) -> None:
    for fragment in fragments:
        if not math.isfinite(fragment.weight) or abs(fragment.weight) > MAX_ATTENTION_WEIGHT:
            raise ValidationError(f"{what}: the attention weight of {fragment.text[:40]!r} is {fragment.weight:g}; "
                                  f"weights must stay between {-MAX_ATTENTION_WEIGHT:g} and "
                                  f"{MAX_ATTENTION_WEIGHT:g}", field=field)


def _split_break(token: str) -> list[str]:
    """``re.split(r"\\s*\\bBREAK\\b\\s*", token)`` in linear time (that regex is quadratic on long spaces)."""
    if "BREAK" not in token:
        return [token]
    parts: list[str] = []
    pos = 0
    for match in _BREAK_WORD.finditer(token):
        start, end = match.start(), match.end()
        if start < pos:
            continue
        while start > pos and token[start - 1].isspace():
            start -= 1
        while end < len(token) and token[end].isspace():
            end += 1
        parts.append(token[pos:start])
        pos = end
    parts.append(token[pos:])
    return parts


def _to_float(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def get_learned_conditioning_prompt_schedules(
    prompts: list[str],
    base_steps: int,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
    *,
    what: str = "prompt",
    field: str = "prompt",
) -> list[list[tuple[int, str]]]:
    """For each prompt, the list of (last step, prompt text) pairs that prompt editing and alternation produce.

    ``[from:to:when]``: an integer ``when`` is a step, a number with a dot a fraction of the steps. With
    ``hires_steps`` (and not ``use_old_scheduling``) the schedule is for the hires pass: integers count from the end
    of the first pass and fractions from 1.0. Runs in time linear in the prompt; refuses (ValidationError naming
    ``field``) brackets nested too deep and schedules whose distinct texts would be too large.
    """
    if hires_steps is None or use_old_scheduling:
        rule = StepRule(base_steps, old_scheduling=use_old_scheduling, what=what, field_name=field)
    else:
        rule = StepRule(hires_steps, base_steps, 1.0, what=what, field_name=field)
    cache: dict[str, list[tuple[int, str]]] = {}
    result = []
    for prompt in prompts:
        if prompt not in cache:
            cache[prompt] = _prompt_schedule(prompt, rule)
        result.append(list(cache[prompt]))
    return result


def _prompt_schedule(prompt: str, rule: StepRule) -> list[tuple[int, str]]:
    if "[" not in prompt and "(" not in prompt:
        return [(rule.steps, prompt)]
    parsed = parse_schedule(prompt, rule.what, rule.field_name)  # refuses brackets nested too deep
    if "[" not in prompt:
        return [(rule.steps, prompt)]  # no [from:to:when] or [a|b] possible
    if not parsed.clean and len(prompt) <= LARK_MAX_CHARS:
        return check_schedule_size(lark_schedule(prompt, rule), rule)
    if not parsed.nodes:
        return [(rule.steps, prompt)]
    return schedule_from_nodes(prompt, parsed.nodes, rule)


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Split a prompt on ``AND`` (composable diffusion); each part may end in ``:weight`` (default 1.0)."""
    return [_and_weight(subprompt) for subprompt in _AND.split(prompt)]


def _and_weight(part: str) -> tuple[str, float]:
    """A1111's ``^((?:\\s|.)*?)(?:\\s*:\\s*(NUMBER))?\\s*$`` on one part, without its quadratic backtracking."""
    body = part.rstrip()
    colon = body.rfind(":")
    if colon >= 0:
        number = body[colon + 1:].lstrip()
        if _AND_NUMBER.fullmatch(number):
            return body[:colon].rstrip(), float(number)
    return body, 1.0


def strip_comments(text: str) -> str:
    """Remove ``#`` comments: whole lines starting with ``#``, then ``#`` to the end of any line."""
    text = _WHOLE_LINE_COMMENT.sub("\n", text)
    return _TRAILING_COMMENT.sub("\n", text)


def extract_extra_networks(prompt: str) -> tuple[str, list[tuple[str, list[str]]]]:
    """Remove ``<type:arg1:arg2>`` tags; return the cleaned prompt and (type, args) for each tag, in order."""
    found: list[tuple[str, list[str]]] = []

    def take(match: re.Match[str]) -> str:
        found.append((match.group(1), match.group(2).split(":")))
        return ""

    # a tag needs a closing ">": text after the last one cannot hold a tag, and leaving it out keeps this linear
    end = prompt.rfind(">") + 1
    return _EXTRA_NETWORK.sub(take, prompt[:end]) + prompt[end:], found
