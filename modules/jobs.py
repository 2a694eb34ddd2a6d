"""One FIFO job queue per device: ids, states, position, progress, previews, interrupt, skip, cancel.

The UI and both APIs submit here. A single worker thread runs one job at a time; a job that fails is marked failed
with a short message, its memory is freed, and the next job runs normally.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from modules.errors import ErrorKind, Interrupted, ValidationError, WebUIError, error_kind, is_out_of_memory
from modules.generation.control import JobControl
from modules.job_types import JobResult, JobSpec

log = logging.getLogger(__name__)
_CALLBACK_LOCK = threading.Lock()


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class QueueFull(WebUIError):
    """The queue holds its maximum number of waiting jobs."""


@dataclass(eq=False)
class Job:
    """A queued spec and its state. ``spec``, ``owner`` and ``tag`` (what the submitter wants to keep beside the job,
    e.g. how the API renders the result) are fixed at submission."""

    spec: JobSpec
    owner: str | None = None
    tag: object = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: JobState = JobState.QUEUED
    control: JobControl = field(default_factory=JobControl)
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: JobResult | None = None
    error: str | None = None
    error_kind: ErrorKind | None = None  # why it failed: decides the HTTP status the API answers with
    error_field: str | None = None  # the parameter a ValidationError named
    cancel_requested: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    _callbacks: list[Callable[[Job], None]] = field(default_factory=list, repr=False)

    @property
    def kind(self) -> str:
        return self.spec.kind

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    def add_done_callback(self, fn: Callable[[Job], None]) -> None:
        """Call ``fn(job)`` once the job has finished (at once if it already has), from the finishing thread."""
        run_now = False
        with _CALLBACK_LOCK:
            if self.done.is_set():
                run_now = True
            else:
                self._callbacks.append(fn)
        if run_now:
            fn(self)

    def _fire(self) -> None:
        with _CALLBACK_LOCK:
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:  # a listener's failure must not break the queue
                log.exception("job callback failed")


def describe_error(exc: BaseException) -> str:
    """A short user-facing message: our own errors as they are, out-of-memory with a hint, others by type."""
    if isinstance(exc, WebUIError):
        return str(exc)
    name = type(exc).__name__
    if is_out_of_memory(exc):
        return "out of memory: lower the size, batch size or hires scale, or free other models"
    return f"{name}: {str(exc).splitlines()[0][:200]}" if str(exc) else name


def owns(user: str | None, job: Job) -> bool:
    """Whether ``user`` may act on ``job``: ``None`` is the single local user (no auth), who may act on any."""
    return user is None or job.owner == user


def free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # freeing memory must never turn a failure into another failure
        log.debug("could not empty the CUDA cache", exc_info=True)


class JobQueue:
    def __init__(self, runner: Callable[[Job], JobResult], max_size: int = 64, keep_finished: int = 200) -> None:
        self._runner = runner
        self.max_size = max_size
        self._keep = keep_finished
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._current: Job | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- submitting and looking up
    def submit(self, spec: JobSpec, owner: str | None = None, tag: object = None) -> Job:
        job = Job(spec, owner, tag)
        with self._lock:
            if len(self._waiting) >= self.max_size:
                raise QueueFull(f"the queue is full ({self.max_size} jobs waiting); try again later")
            self._waiting.append(job)
            self._jobs[job.id] = job
            self._trim()
            self._lock.notify_all()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def position(self, job: Job) -> int:
        """0 while running or finished, else 1 + the number of jobs ahead of it."""
        with self._lock:
            try:
                return self._waiting.index(job) + 1
            except ValueError:
                return 0

    @property
    def current(self) -> Job | None:
        return self._current

    def pending(self, owner: str | None = None) -> int:
        """The jobs waiting or running: all of them, or ``owner``'s only."""
        with self._lock:
            jobs = [*self._waiting, *([self._current] if self._current is not None else [])]
        return sum(1 for job in jobs if owns(owner, job))

    def current_of(self, owner: str | None) -> Job | None:
        """The running job when ``owner`` may act on it (``None``: a single local user, any job)."""
        job = self._current
        return job if job is not None and owns(owner, job) else None

    # -- control
    def cancel(self, job_id: str, owner: str | None = None) -> Job | None:
        """Remove a queued job, or interrupt a running one (its partial result is kept). With ``owner``, only
        that user's job: another's is left alone and ``None`` returned."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and not owns(owner, job):
                return None
            if job is None or job.state.finished:
                return job
            job.cancel_requested = True
            if job in self._waiting:
                self._waiting.remove(job)
                self._finish(job, JobState.CANCELLED)
                return job
        job.control.interrupt()
        return job

    def interrupt(self, owner: str | None = None) -> Job | None:
        """Interrupt the running job (with ``owner``: only when it is that user's)."""
        job = self.current_of(owner)
        if job is not None:
            job.control.interrupt()
        return job

    def skip(self, owner: str | None = None) -> Job | None:
        """Skip the running job's current batch (with ``owner``: only when it is that user's)."""
        job = self.current_of(owner)
        if job is not None:
            job.control.skip()
        return job

    # -- the worker
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="job-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._current is not None:
            self._current.control.interrupt()
        if self._thread is not None:
            self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                job = self._waiting.popleft()
                job.state = JobState.RUNNING
                job.started = time.time()
                self._current = job
                self._lock.notify_all()
            self._run(job)

    def _run(self, job: Job) -> None:
        state = JobState.SUCCEEDED
        try:
            job.result = self._runner(job)
            if job.cancel_requested:
                state = JobState.CANCELLED
        except Interrupted:
            state = JobState.CANCELLED
        except BaseException as exc:  # noqa: BLE001 - a job's failure must never stop the worker
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            job.error = describe_error(exc)
            job.error_kind = error_kind(exc)
            job.error_field = getattr(exc, "field", None) if isinstance(exc, ValidationError) else None
            state = JobState.FAILED
            log.error("job %s (%s) failed: %s", job.id, job.kind, job.error,
                      exc_info=job.error_kind is ErrorKind.INTERNAL)
        finally:
            if state is JobState.FAILED:
                free_memory()
            with self._lock:
                self._current = None
                self._finish(job, state)

    def _finish(self, job: Job, state: JobState) -> None:
        job.state = state
        job.finished = time.time()
        with _CALLBACK_LOCK:
            job.done.set()
        self._lock.notify_all()
        job._fire()

    def _trim(self) -> None:
        finished = [j for j in self._jobs.values() if j.state.finished]
        for job in finished[: max(0, len(finished) - self._keep)]:
            del self._jobs[job.id]

    def wait_running(self, timeout: float = 30) -> Job | None:
        """The running job, waiting (on the queue's own notifications) until one runs; ``None`` on time-out."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._current is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._lock.wait(left)
            return self._current

    def wait_idle(self, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._waiting or self._current is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True
