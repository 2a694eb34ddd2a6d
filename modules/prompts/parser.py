"""A1111 prompt syntax: attention weights, prompt editing and alternation, AND, comments and extra-network tags.

The behaviour follows AUTOMATIC1111's stable-diffusion-webui 1.10 (``modules/prompt_parser.py``,
``modules/processing_scripts/comments.py`` and ``modules/extra_networks.py``), so prompts written for it give the
same fragments, weights and schedules here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import lark

# Prompt editing / alternation grammar. It has the same rules, in the same order, as A1111's, and is run with the
# same (default Earley) parser, so ambiguous prompts resolve the same way.
SCHEDULE_GRAMMAR = r"""
!start: (prompt | /[][():]/+)*
prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
!emphasized: "(" prompt ")"
        | "(" prompt ":" prompt ")"
        | "[" prompt "]"
scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
alternate: "[" prompt ("|" [prompt])+ "]"
WHITESPACE: /\s+/
plain: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> NUMBER
"""

SCHEDULE_PARSER = lark.Lark(SCHEDULE_GRAMMAR)

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
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_ROUND_MULTIPLIER = 1.1
_SQUARE_MULTIPLIER = 1 / 1.1

_AND = re.compile(r"\bAND\b")
_AND_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")

_WHOLE_LINE_COMMENT = re.compile(r"(^|\n)#[^\n]*(\n|$)")
_TRAILING_COMMENT = re.compile(r"#[^\n]*(\n|$)")

_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")

BREAK_WEIGHT = -1.0


@dataclass(slots=True)
class _Fragment:
    """Text and its weight, scaled in place as brackets close."""

    text: str
    weight: float


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) fragments: ``(x)`` x1.1, ``[x]`` /1.1, ``(x:w)`` xw, ``\\(`` literal.

    ``BREAK`` becomes a ``("BREAK", -1.0)`` fragment; adjacent fragments of equal weight are merged.
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
        elif token == "(":
            open_round.append(len(fragments))
        elif token == "[":
            open_square.append(len(fragments))
        elif explicit is not None and open_round:
            scale_from(open_round.pop(), explicit)
        elif token == ")" and open_round:
            scale_from(open_round.pop(), _ROUND_MULTIPLIER)
        elif token == "]" and open_square:
            scale_from(open_square.pop(), _SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_BREAK.split(token)):
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
    return [(f.text, float(f.weight)) for f in merged]


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
) -> list[list[tuple[int, str]]]:
    """For each prompt, the list of (last step, prompt text) pairs that prompt editing and alternation produce.

    ``[from:to:when]``: an integer ``when`` is a step, a number with a dot a fraction of the steps. With
    ``hires_steps`` (and not ``use_old_scheduling``) the schedule is for the hires pass: integers count from the end
    of the first pass and fractions from 1.0.
    """
    if hires_steps is None or use_old_scheduling:
        steps, int_offset, float_offset = base_steps, 0, 0.0
    else:
        steps, int_offset, float_offset = hires_steps, base_steps, 1.0

    def switch_step(node: lark.Tree[lark.Token]) -> int:
        number = str(node.children[-2])
        value = float(number)
        if use_old_scheduling:
            value = value * steps if value < 1 else value
        elif "." in number:
            value = (value - float_offset) * steps
        else:
            value = value - int_offset
        return min(steps, int(value))

    def render(node: lark.Tree[lark.Token] | lark.Token | None, step: int) -> str:
        if node is None:
            return ""
        if isinstance(node, lark.Token):
            return str(node)
        if node.data == "scheduled":
            before, after = node.children[0], node.children[1]
            return render(before if step <= switch_step(node) else after, step)
        if node.data == "alternate":
            return render(node.children[(step - 1) % len(node.children)], step)
        return "".join(render(child, step) for child in node.children)

    def schedule(prompt: str) -> list[tuple[int, str]]:
        try:
            tree = SCHEDULE_PARSER.parse(prompt)
        except lark.exceptions.LarkError:
            return [(steps, prompt)]
        boundaries = {steps}
        for node in tree.iter_subtrees():
            if node.data == "scheduled":
                when = switch_step(node)
                if when >= 1:
                    boundaries.add(when)
            elif node.data == "alternate":
                boundaries.update(range(1, steps + 1))
        return [(step, render(tree, step)) for step in sorted(boundaries)]

    cache: dict[str, list[tuple[int, str]]] = {}
    result = []
    for prompt in prompts:
        if prompt not in cache:
            cache[prompt] = schedule(prompt)
        result.append(list(cache[prompt]))
    return result


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Split a prompt on ``AND`` (composable diffusion); each part may end in ``:weight`` (default 1.0)."""
    parts = []
    for subprompt in _AND.split(prompt):
        match = _AND_WEIGHT.search(subprompt)
        if match is None:
            parts.append((subprompt, 1.0))
            continue
        text, weight = match.groups()
        parts.append((text, float(weight) if weight is not None else 1.0))
    return parts


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

    return _EXTRA_NETWORK.sub(take, prompt), found
