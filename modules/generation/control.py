"""A job's control surface: interrupt and skip requests in; progress out, as a stream of immutable snapshots.

Each :meth:`JobControl.update` publishes a new :class:`Progress` event to every subscriber (a UI poll, the jobs API,
later a worker on another machine relaying them); ``progress`` is always the latest one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class Progress:
    job_no: int = 0  # index of the batch (n_iter) being worked on
    job_count: int = 1
    sampling_step: int = 0
    sampling_steps: int = 0
    phase: str = ""  # "sampling", "hires", "decoding", ...
    started: float = field(default_factory=time.monotonic)
    preview: Image.Image | None = None  # an approximation of the current latents, refreshed every few steps
    preview_id: int = 0
    seq: int = 0  # the event's number in the job's stream
    textinfo: str = ""  # a line about the job's state beyond the step count (training: loss, last file saved)
    stepped: float = 0.0  # when the fraction last moved (a step or a batch finished), by the monotonic clock

    @property
    def fraction(self) -> float:
        """Overall progress from 0 to 1, as A1111's ``progress`` field."""
        if self.job_count <= 0:
            return 0.0
        step_part = self.sampling_step / self.sampling_steps if self.sampling_steps else 0.0
        return min(1.0, (self.job_no + step_part) / self.job_count)

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left: the rate measured up to the last finished step, counting down while the next one runs
        (never up, as a rate measured against the running clock would)."""
        frac = self.fraction
        if frac <= 0 or not self.stepped:
            return None
        at_step = self.stepped - self.started
        left_at_step = at_step / frac - at_step
        return max(0.0, left_at_step - ((time.monotonic() if now is None else now) - self.stepped))


class JobControl:
    """Shared between the worker running a job and whoever may interrupt or skip it; thread-safe."""

    def __init__(self, on_progress: Callable[[Progress], None] | None = None) -> None:
        self._interrupted = threading.Event()
        self._skipped = threading.Event()
        self._lock = threading.Lock()
        self.progress = Progress()
        self._subscribers: list[Callable[[Progress], None]] = [on_progress] if on_progress is not None else []
        self.warnings: list[str] = []
        self.losses: list[tuple[int, float]] = []  # training: (step, loss), appended as steps finish
        # live previews: (a step's denoised latents, the model) -> image; None: the cheap approximation
        self.preview_decoder: Callable[[Any, Any], Any] | None = None

    def subscribe(self, listener: Callable[[Progress], None]) -> Callable[[], None]:
        """Call ``listener(event)`` for every progress event from now on; returns the function that unsubscribes."""
        with self._lock:
            self._subscribers.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._subscribers:
                    self._subscribers.remove(listener)

        return unsubscribe

    def interrupt(self) -> None:
        self._interrupted.set()

    def skip(self) -> None:
        self._skipped.set()

    @property
    def interrupted(self) -> bool:
        return self._interrupted.is_set()

    @property
    def skipped(self) -> bool:
        return self._skipped.is_set()

    def should_stop(self) -> bool:
        return self._interrupted.is_set() or self._skipped.is_set()

    def clear_skip(self) -> None:
        self._skipped.clear()

    def update(self, **changes: Any) -> None:
        """Publish the next progress event: the latest one with ``changes``."""
        with self._lock:
            if {"sampling_step", "job_no", "sampling_steps"} & changes.keys() and "stepped" not in changes:
                changes["stepped"] = time.monotonic()
            self.progress = event = replace(self.progress, seq=self.progress.seq + 1, **changes)
            listeners = list(self._subscribers)
        for listener in listeners:
            listener(event)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
