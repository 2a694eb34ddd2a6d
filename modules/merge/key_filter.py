"""User regular expressions over weight names, run on RE2: linear time, so no pattern can stall the server.

Python's ``re`` backtracks, and a pattern such as ``^(\\w+\\.?)+!$`` takes exponential time on an ordinary key.
RE2 (``google-re2``) matches in time linear in the key's length and refuses the few features that cannot be
matched that way (backreferences, lookahead and lookbehind). Matching is ``re.search`` on each key, as in A1111.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any

from modules.errors import ValidationError

MAX_PATTERN_CHARS = 100_000
_MAX_PROGRAM_BYTES = 8 << 20


@dataclass(frozen=True)
class KeyPattern:
    """A compiled user pattern; :meth:`search` is true when it matches anywhere in the text."""

    pattern: str
    _compiled: Any

    def search(self, text: str) -> bool:
        return self._compiled.search(text) is not None


def _re2() -> Any:
    return importlib.import_module("re2")


def compile_user_regex(pattern: str, field: str, what: str) -> KeyPattern:
    """Compile ``pattern`` on RE2, or raise a ValidationError naming ``field``."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValidationError(f"{what}: the regular expression is longer than {MAX_PATTERN_CHARS} characters",
                              field=field)
    re2 = _re2()
    options = re2.Options()
    options.log_errors = False
    options.max_mem = _MAX_PROGRAM_BYTES
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as exc:
        raise ValidationError(f"invalid regular expression for {what} {pattern!r}: {_reason(exc)}",
                              field=field) from None
    return KeyPattern(pattern, compiled)


def _reason(exc: Exception) -> str:
    raw = exc.args[0] if exc.args else exc
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    if re.search(r"perl operator: \(\?(?:[=!]|<[=!]|P)|escape sequence: \\[1-9]", text):
        text += " (backreferences and lookaround are not supported)"
    return text
