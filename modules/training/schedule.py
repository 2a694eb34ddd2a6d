"""Learning rates over the steps of a training.

A1111's syntax (``LearnRateScheduler``): ``"0.005"`` for one rate, or ``"0.005:100, 1e-5:1000, 1e-6:-1"`` for
0.005 until step 100, then 1e-5 until step 1000, then 1e-6 to the end. Training stops when the last rate's step is
reached. On top of it: a linear warm-up from 0 over the first ``warmup`` steps, and ``cosine``, which brings each
rate down to 0 by the last step along half a cosine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from modules.errors import ValidationError

SYNTAX_HELP = ('a number, or for example "0.001:100, 0.00001:1000, 1e-5:10000" to have a rate of 0.001 until step '
               '100, 0.00001 until 1000 and 1e-5 until 10000')


@dataclass(frozen=True)
class RatePlan:
    """``(rate, until_step)`` pairs (steps counted from 0, the last pair may end before ``max_steps``)."""

    pairs: tuple[tuple[float, int], ...]
    max_steps: int
    scheduler: str = "constant"
    warmup: int = 0

    @property
    def end_step(self) -> int:
        """The step training stops at: the last pair's."""
        return self.pairs[-1][1]

    def base_rate(self, step: int) -> float:
        for rate, until in self.pairs:
            if step < until:
                return rate
        return self.pairs[-1][0]

    def rate(self, step: int) -> float:
        """The learning rate for optimizer step ``step`` (0-based)."""
        lr = self.base_rate(step)
        if self.scheduler == "cosine":
            span = max(1, self.end_step - self.warmup)
            done = min(1.0, max(0.0, (step - self.warmup) / span))
            lr *= 0.5 * (1.0 + math.cos(math.pi * done))
        if self.warmup > 0 and step < self.warmup:
            lr *= (step + 1) / (self.warmup + 1)
        return lr


def parse_rates(text: str, max_steps: int, start_step: int = 0, field: str = "learn_rate") -> tuple[
        tuple[float, int], ...]:
    """A1111's learning-rate schedule text as ``(rate, until_step)`` pairs, the pairs before ``start_step`` left
    out; a clear :class:`ValidationError` for anything else."""
    pairs: list[tuple[float, int]] = []
    try:
        for part in str(text).split(","):
            if not part.strip():
                continue
            bits = part.split(":")
            if len(bits) > 2:
                raise ValueError(part)
            rate = float(bits[0])
            if not math.isfinite(rate) or rate <= 0:
                raise ValueError(part)
            if len(bits) == 1:
                pairs.append((rate, max_steps))
                break
            step = int(bits[1])
            if step == -1:
                pairs.append((rate, max_steps))
                break
            if step > start_step:
                pairs.append((rate, min(step, max_steps)))
                if step >= max_steps:
                    break
    except ValueError:
        raise ValidationError(f"{field}: invalid learning rate schedule {text!r}; it should be {SYNTAX_HELP}",
                              field=field) from None
    if not pairs:
        if text and str(text).strip():
            raise ValidationError(f"{field}: the schedule {text!r} ends before step {start_step}, where this "
                                  "training starts", field=field)
        raise ValidationError(f"{field}: Learning rate is empty or 0", field=field)
    return tuple(pairs)


def plan(text: str, max_steps: int, start_step: int = 0, scheduler: str = "constant", warmup: int = 0,
         field: str = "learn_rate") -> RatePlan:
    return RatePlan(parse_rates(text, max_steps, start_step, field), max_steps, scheduler, warmup)
