"""The X/Y/Z plot's value syntax, as A1111 reads it.

A values text is a CSV row (``"green, dark"`` is one value; spaces after commas are skipped, each value is stripped).
Number axes expand ranges: ``1-5`` (step 1), ``1-5 (+2)`` and ``8-2 (-2)`` (a step, signed), ``1-10 [5]`` (five
values spread evenly, truncated to integers on integer axes). As in A1111, an integer range stops before ``end + 1``
(``8-2 (-2)`` is 8, 6, 4) and a decimal range takes numpy's ``arange(start, end + step, step)``. Errors are
``ValueError`` with a message for the user.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Sequence
from itertools import chain, permutations

import numpy as np

MAX_VALUES = 1000  # values on one axis, after ranges are expanded

_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*\d+(?:\.\d*)?"
RE_INT_STEP = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\(([+-]\d+)\s*\))?\s*")
RE_INT_COUNT = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\[(\d+)\s*])?\s*")
RE_FLOAT_STEP = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
RE_FLOAT_COUNT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\[(\d+(?:\.\d*)?)\s*])?\s*")


def csv_values(text: str | None) -> list[str]:
    """The values of a CSV row, each stripped (several lines are read as one row)."""
    if not text:
        return []
    rows = csv.reader(io.StringIO(str(text)), skipinitialspace=True)
    try:
        return [value.strip() for value in chain.from_iterable(rows)]
    except csv.Error as exc:
        raise ValueError(f"the values cannot be read as comma-separated values ({exc})") from None


def csv_text(values: Iterable[object]) -> str:
    """Values as one CSV row (quoted where needed): the text a dropdown's choice stands for."""
    with io.StringIO() as out:
        csv.writer(out).writerow([str(v) for v in values])
        return out.getvalue().strip()


def _number(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _check_count(count: int, text: str) -> None:
    if count > MAX_VALUES:
        raise ValueError(f"{text!r} gives {count} values; at most {MAX_VALUES} per axis")


def _int_range(text: str) -> list[int] | None:
    m = RE_INT_STEP.fullmatch(text)
    if m is not None:
        step = int(m.group(3)) if m.group(3) is not None else 1
        if step == 0:
            raise ValueError(f"{text!r}: the step must not be 0")
        start, stop = int(_number(m.group(1))), int(_number(m.group(2))) + 1
        _check_count(max(0, -((start - stop) // step)), text)
        return list(range(start, stop, step))
    m = RE_INT_COUNT.fullmatch(text)
    if m is not None:
        count = int(m.group(3)) if m.group(3) is not None else 1
        _check_count(count, text)
        spread = np.linspace(int(_number(m.group(1))), int(_number(m.group(2))), num=count).tolist()
        return [int(v) for v in spread]
    return None


def _float_range(text: str) -> list[float] | None:
    m = RE_FLOAT_STEP.fullmatch(text)
    if m is not None:
        start, end = float(_number(m.group(1))), float(_number(m.group(2)))
        step = float(m.group(3)) if m.group(3) is not None else 1.0
        if step == 0 or not all(math.isfinite(v) for v in (start, end, step)):
            raise ValueError(f"{text!r}: the numbers must be finite and the step not 0")
        count = (end + step - start) / step
        _check_count(max(0, math.ceil(count)) if math.isfinite(count) else MAX_VALUES + 1, text)
        return [float(v) for v in np.arange(start, end + step, step).tolist()]
    m = RE_FLOAT_COUNT.fullmatch(text)
    if m is not None:
        count = int(float(m.group(3))) if m.group(3) is not None else 1
        _check_count(count, text)
        spread = np.linspace(float(_number(m.group(1))), float(_number(m.group(2))), num=count).tolist()
        return [float(v) for v in spread]
    return None


def int_values(items: Sequence[str]) -> list[int]:
    """Integers and integer ranges; empty items are skipped."""
    out: list[int] = []
    for item in items:
        if not item.strip():
            continue
        expanded = _int_range(item)
        if expanded is not None:
            out += expanded
            continue
        try:
            out.append(int(item))
        except ValueError:
            raise ValueError(f"{item!r} is not a whole number or a range such as 1-5, 1-5 (+2) or 1-10 [5]") from None
    _check_count(len(out), ", ".join(items))
    return out


def float_values(items: Sequence[str]) -> list[float]:
    """Numbers and number ranges; empty items are skipped."""
    out: list[float] = []
    for item in items:
        if not item.strip():
            continue
        expanded = _float_range(item)
        if expanded is not None:
            out += expanded
            continue
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"{item!r} is not a number or a range such as 1-2 (+0.5) or 0-1 [5]") from None
        if not math.isfinite(value):
            raise ValueError(f"{item!r} is not a finite number")
        out.append(value)
    _check_count(len(out), ", ".join(items))
    return out


def orderings(items: Sequence[str]) -> list[tuple[str, ...]]:
    """Every order of ``items`` (the Prompt order axis), in itertools' order."""
    _check_count(math.factorial(len(items)), ", ".join(items))
    return list(permutations(items))


def label_value(value: object) -> object:
    """A value as a legend shows it: decimals rounded to 8 places, as A1111 prints them."""
    return round(value, 8) if isinstance(value, float) else value


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut short for a message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
