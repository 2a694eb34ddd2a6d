"""A1111 prompt editing ``[from:to:when]`` and alternation ``[a|b]``: one linear pass, no recursion.

The grammar is A1111's (``modules/prompt_parser.py``, 1.10), which its Earley parser reads::

    start: (prompt | /[][():]/+)*
    prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
    emphasized: "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
    scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
    alternate: "[" prompt ("|" [prompt])+ "]"
    plain: /([^\\\\\\[\\]():|]|\\\\.)+/

Inside a bracket every nested bracket must be closed by its own kind, so a bracket opened at one place can only end
at one place, and its kind follows from the ``:`` and ``|`` at its own level. At the top level a bracket that does
not form a valid construct is plain text, and the constructs inside it still count. The prompt does not parse at
all (and is used as it is, for every step) when a ``|`` is outside any alternation or a ``\\`` ends a line.
Where brackets do not pair up (or a ``:`` stands outside any bracket), A1111's parser sometimes reads a valid
construct as plain text; short prompts of that kind go to its own grammar (:mod:`modules.prompts.schedule_lark`),
longer ones are read here, where every valid construct counts.

Limits keep a hostile prompt from holding the worker: brackets nest at most :data:`MAX_NESTING` levels, and the
distinct texts one prompt gives over the steps are at most :data:`MAX_SCHEDULE_CHARS` characters in all.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from modules.errors import ValidationError

MAX_NESTING = 100
MAX_SCHEDULE_CHARS = 200_000

# lark's common.SIGNED_NUMBER, as the A1111 grammar's dynamic lexer matches it (first alternative that fits)
_NUMBER = re.compile(r"[+-]?(?:[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+)")
_OPENERS = {")": "(", "]": "["}


class _Unparsable(Exception):
    """The prompt does not parse; A1111 then uses it unchanged for every step."""


@dataclass(slots=True)
class _Node:
    """A scheduled or alternate bracket: its span, the spans of its branches and the nodes directly in each."""

    start: int
    end: int
    branches: list[tuple[int, int]]
    children: list[list[_Node]]
    number: str | None = None  # scheduled: the ``when`` text; alternate: None
    when: int = 0


@dataclass(slots=True)
class _Frame:
    opener: str
    start: int
    colons: list[int] = field(default_factory=list)
    pipes: list[int] = field(default_factory=list)
    nodes: list[_Node] = field(default_factory=list)
    valid: bool = True


def nesting_error(what: str, field_name: str) -> ValidationError:
    return ValidationError(f"{what}: brackets nested more than {MAX_NESTING} levels deep (write \\( or \\[ for a "
                           "literal bracket)", field=field_name)


def _number_ok(segment: str) -> bool:
    rest = segment.lstrip()
    match = _NUMBER.match(rest)
    return match is not None and match.end() > 0 and rest[match.end():].strip() == ""


def _distribute(nodes: list[_Node], branches: list[tuple[int, int]]) -> list[list[_Node]]:
    out: list[list[_Node]] = [[] for _ in branches]
    i = 0
    for node in nodes:
        while node.start >= branches[i][1]:
            i += 1
        out[i].append(node)
    return out


def _close(frame: _Frame, text: str, end: int) -> _Node | None:
    """The node a validly closed frame makes (None for emphasis); raises _Unparsable for a lost ``|``."""
    if not frame.valid:
        if frame.pipes:
            raise _Unparsable
        return None
    if frame.opener == "(":
        if frame.pipes:
            raise _Unparsable
        frame.valid = len(frame.colons) <= 1
        return None
    inner = (frame.start + 1, end)
    if not frame.colons:
        if not frame.pipes:
            return None
        cuts = [inner[0] - 1, *frame.pipes, end]
        branches = [(cuts[i] + 1, cuts[i + 1]) for i in range(len(cuts) - 1)]
        return _Node(frame.start, end + 1, branches, _distribute(frame.nodes, branches))
    last = frame.colons[-1]
    if frame.pipes or len(frame.colons) > 2 or not _number_ok(text[last + 1:end]):
        if frame.pipes:
            raise _Unparsable
        frame.valid = False
        return None
    if len(frame.colons) == 2:
        branches = [(inner[0], frame.colons[0]), (frame.colons[0] + 1, last)]
    else:
        branches = [(inner[0], inner[0]), (inner[0], last)]
    return _Node(frame.start, end + 1, branches, _distribute(frame.nodes, branches),
                 number=text[last + 1:end].strip())


@dataclass(slots=True)
class Parsed:
    """The top-level nodes (None: the prompt does not parse); ``clean`` when every bracket and colon is syntax."""

    nodes: list[_Node] | None
    clean: bool


def parse_schedule(text: str, what: str = "prompt", field_name: str = "prompt") -> Parsed:
    """The scheduled/alternate nodes of ``text``, read in one pass."""
    stack: list[_Frame] = []
    top: list[_Node] = []
    clean = [True]
    i, n = 0, len(text)
    try:
        while i < n:
            char = text[i]
            if char == "\\":
                if i + 1 >= n or text[i + 1] == "\n":
                    raise _Unparsable
                i += 2
                continue
            if char in "([":
                if len(stack) >= MAX_NESTING:
                    raise nesting_error(what, field_name)
                stack.append(_Frame(char, i))
            elif char in ")]":
                clean[0] = _closer(stack, top, text, i) and clean[0]
            elif char == ":":
                if stack:
                    stack[-1].colons.append(i)
                else:
                    clean[0] = False
            elif char == "|":
                if not stack:
                    raise _Unparsable
                stack[-1].pipes.append(i)
            i += 1
        if stack:
            clean[0] = False
        while stack:
            _fail_frame(stack, top)
    except _Unparsable:
        return Parsed(None, clean[0])
    return Parsed(top, clean[0])


def _fail_frame(stack: list[_Frame], top: list[_Node]) -> None:
    """Drop the innermost open frame as plain text; its nodes move out to its parent (or the top level)."""
    frame = stack.pop()
    if frame.pipes:
        raise _Unparsable
    if stack:
        stack[-1].valid = False
        stack[-1].nodes.extend(frame.nodes)
    else:
        top.extend(frame.nodes)


def _closer(stack: list[_Frame], top: list[_Node], text: str, i: int) -> bool:
    """Close the innermost bracket at ``i``; False when something turned out to be plain text."""
    if not stack:
        return False
    if stack[-1].opener != _OPENERS[text[i]]:
        # a stray closer: every open bracket around it is plain text now
        for frame in stack:
            if frame.pipes:
                raise _Unparsable
            top.extend(frame.nodes)
        stack.clear()
        return False
    frame = stack.pop()
    node = _close(frame, text, i)
    target = stack[-1].nodes if stack else top
    if stack and not frame.valid:
        stack[-1].valid = False
    if node is not None:
        target.append(node)
    else:
        target.extend(frame.nodes)
    return frame.valid


@dataclass(frozen=True)
class StepRule:
    """How a ``when`` number becomes a step: ``[from:to:when]`` switches after step ``when``."""

    steps: int
    int_offset: int = 0
    float_offset: float = 0.0
    old_scheduling: bool = False
    what: str = "prompt"
    field_name: str = "prompt"

    def switch_step(self, number: str) -> int:
        value = float(number)
        if self.old_scheduling:
            value = value * self.steps if value < 1 else value
        elif "." in number:
            value = (value - self.float_offset) * self.steps
        else:
            value = value - self.int_offset
        if math.isnan(value):
            return -1
        return int(max(min(value, float(self.steps)), -1.0))  # an infinite ``when`` is clamped, not an error


def _all_nodes(top: list[_Node]) -> list[_Node]:
    found: list[_Node] = []
    pending = list(reversed(top))
    while pending:
        node = pending.pop()
        found.append(node)
        for branch in reversed(node.children):
            pending.extend(reversed(branch))
    return found


def _choice(node: _Node, step: int) -> int:
    if node.number is None:
        return (step - 1) % len(node.branches)
    return 0 if step <= node.when else 1


def _choices(top: list[_Node], step: int) -> tuple[int, ...]:
    """Which branch each node reached at ``step`` takes, in text order: equal tuples give equal texts."""
    out: list[int] = []
    pending = list(reversed(top))
    while pending:
        node = pending.pop()
        branch = _choice(node, step)
        out.append(branch)
        pending.extend(reversed(node.children[branch]))
    return tuple(out)


@dataclass(slots=True)
class _Cursor:
    pos: int
    end: int
    nodes: list[_Node]
    index: int = 0


def _render(text: str, top: list[_Node], step: int) -> str:
    """The text at ``step``: each node replaced by the branch it takes, without recursion."""
    out: list[str] = []
    stack = [_Cursor(0, len(text), top)]
    while stack:
        cursor = stack[-1]
        if cursor.index < len(cursor.nodes):
            node = cursor.nodes[cursor.index]
            out.append(text[cursor.pos:node.start])
            cursor.pos, cursor.index = node.end, cursor.index + 1
            branch = _choice(node, step)
            start, stop = node.branches[branch]
            stack.append(_Cursor(start, stop, node.children[branch]))
        else:
            out.append(text[cursor.pos:cursor.end])
            stack.pop()
    return "".join(out)


def schedule_from_nodes(text: str, top: list[_Node], rule: StepRule) -> list[tuple[int, str]]:
    """(last step, text) pairs for one prompt, as A1111's ``get_learned_conditioning_prompt_schedules`` gives them.

    Each distinct text is rendered once; the texts are checked against :data:`MAX_SCHEDULE_CHARS` as they come.
    """
    steps = rule.steps
    boundaries = {steps}
    for node in _all_nodes(top):
        if node.number is None:
            boundaries.update(range(1, steps + 1))
        else:
            node.when = rule.switch_step(node.number)
            if node.when >= 1:
                boundaries.add(node.when)
    rendered: dict[tuple[int, ...], str] = {}
    budget = _Budget(steps, rule.what, rule.field_name)
    result = []
    for step in sorted(boundaries):
        key = _choices(top, step)
        if key not in rendered:
            rendered[key] = budget.take(_render(text, top, step))
        result.append((step, rendered[key]))
    return result


@dataclass
class _Budget:
    steps: int
    what: str
    field_name: str
    seen: set[str] = field(default_factory=set)
    total: int = 0

    def take(self, text: str) -> str:
        if text not in self.seen:
            self.seen.add(text)
            self.total += len(text)
            if self.total > MAX_SCHEDULE_CHARS:
                raise ValidationError(
                    f"{self.what}: prompt editing and alternation give more than {MAX_SCHEDULE_CHARS:,} characters "
                    f"of different prompts over {self.steps} steps; use fewer [from:to:when] or [a|b] parts or a "
                    "shorter prompt", field=self.field_name)
        return text


def check_schedule_size(result: list[tuple[int, str]], rule: StepRule) -> list[tuple[int, str]]:
    """Refuse a schedule whose distinct texts exceed :data:`MAX_SCHEDULE_CHARS` characters in all."""
    budget = _Budget(rule.steps, rule.what, rule.field_name)
    for _, text in result:
        budget.take(text)
    return result
