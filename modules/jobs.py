"""One FIFO job queue per device: ids, states, position, progress, previews, interrupt, skip, cancel.

The UI and both APIs submit here. A single worker thread runs one job at a time; a job that fails is marked failed
with a short message, its memory is freed, and the next job runs normally.

With a :class:`~modules.job_store.JobStore` the queue survives a restart: every job is written there as it is
queued, starts and ends; a new queue over the same store runs the queued jobs again in their order, shows the
finished ones (in memory the newest ``keep_finished``, the others read back by :meth:`JobQueue.get` while the store
keeps them) and marks the ones that were running failed, "interrupted: the server stopped while it ran". Without a
store everything stays in memory, as before.
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
from typing import TYPE_CHECKING

from modules.errors import ErrorKind, Interrupted, ValidationError, WebUIError, error_kind, is_out_of_memory
from modules.generation.control import JobControl
from modules.job_types import JobResult, JobSpec

if TYPE_CHECKING:
    from modules.job_store import JobStore

log = logging.getLogger(__name__)
_CALLBACK_LOCK = threading.Lock()
INTERRUPTED_BY_STOP = "interrupted: the server stopped while it ran"  # a job cut short by a stop or a crash
STOPPED_BEFORE_RUN = "the server stopped before this job ran; it runs after the next start"


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
    _stored: bool = field(default=False, repr=False)  # written to the queue's store (it survives a restart)

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
    """``store``: where jobs are kept across restarts (its queued jobs are queued again here at once); ``None``:
    in memory only. ``keep_finished``: how many finished jobs are held in memory."""

    def __init__(self, runner: Callable[[Job], JobResult], max_size: int = 64, keep_finished: int = 200,
                 store: JobStore | None = None) -> None:
        self._runner = runner
        self.max_size = max_size
        self._keep = keep_finished
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._current: Job | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._store = store
        if store is not None:
            self._restore(store)

    def _restore(self, store: JobStore) -> None:
        restored = store.restore(self._keep)
        for job in restored:
            self._jobs[job.id] = job
            if job.state is JobState.QUEUED:
                self._waiting.append(job)
        if self._waiting:
            log.info("%d queued job(s) restored from %s", len(self._waiting), store.path.name)

    @property
    def store(self) -> JobStore | None:
        return self._store

    # -- submitting and looking up
    def submit(self, spec: JobSpec, owner: str | None = None, tag: object = None, durable: bool = True) -> Job:
        """Queue ``spec``; ``durable``: kept in the store (when there is one), so it runs after a restart and its
        result stays readable; a job whose client waits on the connection (the A1111 API, the UI) is not."""
        job = Job(spec, owner, tag)
        if len(self._waiting) >= self.max_size:  # a full queue is refused before the spec is encoded
            raise QueueFull(f"the queue is full ({self.max_size} jobs waiting); try again later")
        record = self._store.record(job) if self._store is not None and durable else None  # encoded outside the lock
        with self._lock:
            if len(self._waiting) >= self.max_size:
                raise QueueFull(f"the queue is full ({self.max_size} jobs waiting); try again later")
            if record is not None and self._store is not None:
                job._stored = self._store.insert(record)  # under the lock: stored in the order it is queued
            self._waiting.append(job)
            self._jobs[job.id] = job
            self._trim()
            self._lock.notify_all()
        return job

    def get(self, job_id: str) -> Job | None:
        """The job (a finished one no longer in memory is read back from the store while it keeps it)."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None and self._store is not None:
            job = self._store.load(job_id)
        return job

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
                self._finish(job, JobState.CANCELLED, persist=True)
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
        """Take no new job and interrupt the running one (it ends failed, :data:`INTERRUPTED_BY_STOP`, with what
        it made). With a store, the waiting jobs stay queued there for the next start; here they end cancelled
        (:data:`STOPPED_BEFORE_RUN`), so that whoever waits on them is answered. The store is closed once the
        worker has ended."""
        with self._lock:
            self._stopping = True
            if self._store is not None:
                for job in [j for j in self._waiting if j._stored]:
                    self._waiting.remove(job)
                    job.error = STOPPED_BEFORE_RUN
                    self._finish(job, JobState.CANCELLED)  # not written: the store keeps it queued
            self._lock.notify_all()
        if self._current is not None:
            self._current.control.interrupt()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._store is not None and (self._thread is None or not self._thread.is_alive()):
            self._store.close()

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
            if self._store is not None and job._stored:
                self._store.mark_running(job)
            self._run(job)

    def _run(self, job: Job) -> None:
        state = JobState.SUCCEEDED
        try:
            job.result = self._runner(job)
            if job.cancel_requested:
                state = JobState.CANCELLED
            # cut short while the queue stops (also by a cancel then, as the server's shutdown sends): said so
            if self._stopping and (job.cancel_requested or getattr(job.result, "interrupted", False)):
                state = self._stopped(job)
        except Interrupted:
            state = self._stopped(job) if self._stopping else JobState.CANCELLED
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
            finished = time.time()
            if self._store is not None and job._stored:  # written before anyone is told it has finished
                self._store.mark_finished(job, state, finished)
            with self._lock:
                self._current = None
                self._finish(job, state, finished)

    @staticmethod
    def _stopped(job: Job) -> JobState:
        """A job the queue's stop cut short: failed, saying so (what it made is kept)."""
        job.error, job.error_kind = INTERRUPTED_BY_STOP, ErrorKind.FAILED
        log.warning("job %s (%s) %s", job.id, job.kind, INTERRUPTED_BY_STOP)
        return JobState.FAILED

    def _finish(self, job: Job, state: JobState, finished: float | None = None, persist: bool = False) -> None:
        """Mark ``job`` finished (under the lock); with ``persist``, write it to the store first."""
        finished = time.time() if finished is None else finished
        if persist and self._store is not None and job._stored:
            self._store.mark_finished(job, state, finished)
        job.state = state
        job.finished = finished
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
