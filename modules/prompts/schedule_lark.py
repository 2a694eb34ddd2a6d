"""A1111's own reading of prompt editing, with its Earley grammar: used for short prompts with stray brackets.

Where brackets do not pair up, A1111's parser chooses among several readings in ways no simple rule describes.
For short prompts (at most :data:`LARK_MAX_CHARS` characters, where its cost stays small) this module runs that
same grammar so the result is A1111's; longer prompts use :mod:`modules.prompts.schedule` alone.
"""

from __future__ import annotations

import functools

import lark

from modules.prompts.schedule import StepRule

LARK_MAX_CHARS = 300

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


@functools.cache
def schedule_parser() -> lark.Lark:
    return lark.Lark(SCHEDULE_GRAMMAR)


def lark_schedule(prompt: str, rule: StepRule) -> list[tuple[int, str]]:
    """(last step, text) pairs for a short prompt, exactly as A1111's grammar reads it."""
    steps = rule.steps
    try:
        tree = schedule_parser().parse(prompt)
    except lark.exceptions.LarkError:
        return [(steps, prompt)]

    def render(node: lark.Tree[lark.Token] | lark.Token | None, step: int) -> str:
        if node is None:
            return ""
        if isinstance(node, lark.Token):
            return str(node)
        if node.data == "scheduled":
            before, after = node.children[0], node.children[1]
            return render(before if step <= rule.switch_step(str(node.children[-2])) else after, step)
        if node.data == "alternate":
            return render(node.children[(step - 1) % len(node.children)], step)
        return "".join(render(child, step) for child in node.children)

    boundaries = {steps}
    for node in tree.iter_subtrees():
        if node.data == "scheduled":
            when = rule.switch_step(str(node.children[-2]))
            if when >= 1:
                boundaries.add(when)
        elif node.data == "alternate":
            boundaries.update(range(1, steps + 1))
    return [(step, render(tree, step)) for step in sorted(boundaries)]
