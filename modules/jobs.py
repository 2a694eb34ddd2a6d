"""One FIFO job queue per device: ids, states, position, progress, previews, interrupt, skip, cancel.

The UI and both APIs submit here. A single worker thread runs one job at a time; a job that fails is marked failed
with a short message, its memory is freed, and the next job runs normally.

With a :class:`~modules.job_store.JobStore` the queue survives a restart: every job is written there as it is
queued, starts and ends; a new queue over the same store runs the queued jobs again in their order, shows the
finished ones (in memory the newest ``keep_finished``, the others read back by :meth:`JobQueue.get` while the store
keeps them) and marks the ones that were running failed, "interrupted: the server stopped while it ran". Without a
store everything stays in memory, as before.

Where a job runs is a *slot*: by default one, in this process, so jobs run one at a time in their order. With
several slots (generation workers in other processes, :mod:`modules.workers`), a dispatcher gives each waiting job,
in order, to the free slot that prefers it most (the worker that has its checkpoint loaded, else the least busy);
a job may be pinned to one slot; a job no slot can ever run fails with each slot's reason; a job whose worker
stops while it runs (:class:`~modules.errors.WorkerLost`) is queued again once, at the front, for another worker.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Protocol, TypeVar

from modules.errors import (
    ErrorKind,
    Interrupted,
    RemoteJobError,
    ValidationError,
    WebUIError,
    WorkerLost,
    error_kind,
    is_out_of_memory,
)
from modules.generation.control import JobControl
from modules.job_types import JobResult, JobSpec

if TYPE_CHECKING:
    from modules.job_store import JobStore

log = logging.getLogger(__name__)
T = TypeVar("T")
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
    pin: str | None = None  # the slot (worker) the job must run on; None: any
    worker: str | None = None  # the slot that ran it (the last one, when it was retried)
    attempts: int = 0  # runs cut short by a lost worker
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


class Slot(Protocol):
    """Where a job can run: this process, or a worker of :mod:`modules.workers`."""

    name: str

    def refusal(self, job: Job) -> str | None:
        """Why this slot can never run ``job`` (its kind, its pin, a checkpoint it does not have); None: it can."""

    def ready(self) -> bool:
        """Whether it can start a job now (a worker still starting or restarting cannot)."""

    def preference(self, job: Job) -> tuple[float, ...]:
        """How much this slot suits ``job`` among the free ones: the highest gets it."""

    def run(self, job: Job) -> JobResult:
        """Run ``job`` to its result (raising as a handler does; :class:`WorkerLost` when the worker stops)."""


def _asks(otherwise: T, question: Callable[..., T], *args: object) -> T:
    """A slot's answer, or ``otherwise`` when asking it fails: the dispatcher must never stop on a slot's error."""
    try:
        return question(*args)
    except Exception:  # noqa: BLE001 - logged; the queue goes on with the other slots
        log.exception("a job slot could not answer")
        return otherwise


class LocalSlot:
    """This process: every job, with the queue's runner."""

    def __init__(self, runner: Callable[[Job], JobResult], name: str = "local",
                 kinds: frozenset[str] | None = None) -> None:
        self.name = name
        self._runner = runner
        self._kinds = kinds  # None: every kind

    def refusal(self, job: Job) -> str | None:
        if job.pin is not None and job.pin != self.name:
            return f"the job is pinned to {job.pin}"
        if self._kinds is not None and job.kind not in self._kinds:
            return f"{job.kind} jobs run on the workers"
        return None

    def ready(self) -> bool:
        return True

    def preference(self, job: Job) -> tuple[float, ...]:
        return (0.0,)

    def run(self, job: Job) -> JobResult:
        return self._runner(job)


class JobQueue:
    """``store``: where jobs are kept across restarts (its queued jobs are queued again here at once); ``None``:
    in memory only. ``keep_finished``: how many finished jobs are held in memory."""

    def __init__(self, runner: Callable[[Job], JobResult], max_size: int = 64, keep_finished: int = 200,
                 store: JobStore | None = None, slots: Sequence[Slot] | None = None) -> None:
        self._runner = runner
        self.max_size = max_size
        self._keep = keep_finished
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._current: Job | None = None
        self._slots: list[Slot] = list(slots) if slots else [LocalSlot(runner)]
        self._busy: dict[str, Job] = {}  # slot name -> the job it runs
        self._running: list[Job] = []  # in the order they started
        self._job_threads: list[threading.Thread] = []
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
    def submit(self, spec: JobSpec, owner: str | None = None, tag: object = None, durable: bool = True,
               pin: str | None = None) -> Job:
        """Queue ``spec``; ``durable``: kept in the store (when there is one), so it runs after a restart and its
        result stays readable; a job whose client waits on the connection (the A1111 API, the UI) is not.
        ``pin``: the name of the slot (worker) it must run on."""
        job = Job(spec, owner, tag, pin=pin)
        if pin is not None:
            slot = next((slot for slot in self._slots if slot.name == pin), None)
            if slot is None:
                raise ValidationError(f"worker: no worker is named {pin!r} (there are: "
                                      f"{', '.join(slot.name for slot in self._slots)})", field="worker")
            refused = _asks(None, slot.refusal, job)
            if refused is not None:
                raise ValidationError(f"worker: {pin} cannot run this job: {refused}", field="worker")
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
        """The running job (with several slots: the one that started first of those running)."""
        return self._current

    @property
    def slots(self) -> list[Slot]:
        return list(self._slots)

    def running(self) -> list[Job]:
        """Every running job, in the order they started."""
        with self._lock:
            return list(self._running)

    def busy(self) -> dict[str, Job]:
        """Slot name -> the job it runs now."""
        with self._lock:
            return dict(self._busy)

    def pending(self, owner: str | None = None) -> int:
        """The jobs waiting or running: all of them, or ``owner``'s only."""
        with self._lock:
            jobs = [*self._waiting, *self._running]
        return sum(1 for job in jobs if owns(owner, job))

    def current_of(self, owner: str | None) -> Job | None:
        """The first running job ``owner`` may act on (``None``: a single local user, any job)."""
        with self._lock:
            return next((job for job in self._running if owns(owner, job)), None)

    def wake(self) -> None:
        """Look again for work to hand out (a slot has become ready)."""
        with self._lock:
            self._lock.notify_all()

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
            running = list(self._running)
            self._lock.notify_all()
        for job in running:
            job.control.interrupt()
        deadline = time.monotonic() + timeout
        if self._thread is not None:  # the dispatcher first: it may be starting one more job's thread
            self._thread.join(max(0.0, deadline - time.monotonic()))
        threads = [t for t in (self._thread, *self._job_threads) if t is not None]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._store is not None and not any(t.is_alive() for t in threads):
            self._store.close()

    def _work(self) -> None:
        """The dispatcher: hands each waiting job, in order, to a free slot that can run it. With the one local
        slot (no workers), the job runs right here, one at a time; else each in a thread of its own."""
        inline = len(self._slots) == 1 and isinstance(self._slots[0], LocalSlot)
        while True:
            with self._lock:
                while True:
                    if self._stopping:
                        return
                    picked = self._pick()
                    if picked is not None:
                        break
                    self._lock.wait(None if inline else 1.0)  # a worker may become ready without a notify
                job, slot, refused = picked
                self._waiting.remove(job)
                if slot is None:
                    job.error, job.error_kind = f"no worker can run this job: {refused}", ErrorKind.FAILED
                    self._finish(job, JobState.FAILED, persist=True)
                    continue
                job.state = JobState.RUNNING
                job.started = time.time()
                job.worker = None if inline else slot.name
                self._busy[slot.name] = job
                self._running.append(job)
                if self._current is None:
                    self._current = job
                self._lock.notify_all()
            if self._store is not None and job._stored:
                self._store.mark_running(job)
            if inline:
                self._run(job, slot)
                continue
            thread = threading.Thread(target=self._run, args=(job, slot), name=f"job-{slot.name}", daemon=True)
            self._job_threads = [t for t in self._job_threads if t.is_alive()] + [thread]
            thread.start()

    def _pick(self) -> tuple[Job, Slot | None, str] | None:
        """The first waiting job a free slot can run and the slot that suits it most; a job no slot can ever run,
        with the slots' reasons (slot None); None: nothing to start now. Under the lock."""
        free = [slot for slot in self._slots if slot.name not in self._busy and _asks(False, slot.ready)]
        for job in self._waiting:
            asked: str | None = "could not be asked"
            reasons = {slot.name: _asks(asked, slot.refusal, job) for slot in self._slots}
            able = [slot for slot in self._slots if reasons[slot.name] is None]
            if not able:
                return job, None, "; ".join(f"{name}: {why}" for name, why in reasons.items())
            if len(able) > 1 and job.attempts:  # a retry goes to another live worker than the one that was lost
                others = [slot for slot in able if slot.name != job.worker]
                if any(slot.name in self._busy or _asks(False, slot.ready) for slot in others):
                    able = others
            candidates = [slot for slot in able if slot in free]
            if candidates:
                least: tuple[float, ...] = (float("-inf"),)
                return job, max(candidates, key=lambda slot: _asks(least, slot.preference, job)), ""
        return None

    def _run(self, job: Job, slot: Slot | None = None) -> None:
        slot = slot or self._slots[0]
        state = JobState.SUCCEEDED
        queued_again = False
        try:
            job.result = slot.run(job)
            if job.cancel_requested:
                state = JobState.CANCELLED
            # cut short while the queue stops (also by a cancel then, as the server's shutdown sends): said so
            if self._stopping and (job.cancel_requested or getattr(job.result, "interrupted", False)):
                state = self._stopped(job)
        except Interrupted:
            state = self._stopped(job) if self._stopping else JobState.CANCELLED
        except WorkerLost as exc:
            if job.attempts < 1 and not self._stopping and not job.cancel_requested:
                queued_again = self._again(job, slot, exc)
                if queued_again:
                    return
                state = self._stopped(job) if self._stopping else JobState.CANCELLED
            else:
                job.error = f"{exc}; the job had already run again once" if job.attempts else str(exc)
                job.error_kind, state = ErrorKind.FAILED, JobState.FAILED
                log.error("job %s (%s) failed: %s", job.id, job.kind, job.error)
        except BaseException as exc:  # noqa: BLE001 - a job's failure must never stop the worker
            job.error = describe_error(exc)
            job.error_kind = error_kind(exc)
            job.error_field = getattr(exc, "field", None) if isinstance(exc, (ValidationError, RemoteJobError)) \
                else None
            state = JobState.FAILED
            log.error("job %s (%s) failed: %s", job.id, job.kind, job.error,
                      exc_info=job.error_kind is ErrorKind.INTERNAL)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                self._end(job, slot, state)  # never left running, whatever stops the thread
                raise
        self._end(job, slot, state)

    def _end(self, job: Job, slot: Slot, state: JobState) -> None:
        """Finish ``job`` in ``state`` and free its slot (stored first, when it is kept)."""
        if state is JobState.FAILED:
            free_memory()
        finished = time.time()
        if self._store is not None and job._stored:  # written before anyone is told it has finished
            self._store.mark_finished(job, state, finished)
        with self._lock:
            self._release(job, slot)
            self._finish(job, state, finished)

    def _again(self, job: Job, slot: Slot, exc: WorkerLost) -> bool:
        """Queue ``job`` again at the front after its worker was lost (once); False when the queue is stopping or
        the job was cancelled meanwhile (it is then ended by the caller)."""
        job.attempts += 1
        job.control.warn(f"{exc}; the job ran again from the start")
        with self._lock:
            if self._stopping or job.cancel_requested:
                return False
            log.warning("job %s (%s): %s; queued again", job.id, job.kind, exc)
            self._release(job, slot)
            job.state, job.started = JobState.QUEUED, None
            self._waiting.appendleft(job)
            self._lock.notify_all()
        if self._store is not None and job._stored:  # a restart before it runs again runs it then
            self._store.mark_queued(job)
        return True

    def _release(self, job: Job, slot: Slot) -> None:
        """``slot`` is free again and ``job`` no longer running (under the lock)."""
        if self._busy.get(slot.name) is job:
            del self._busy[slot.name]
        if job in self._running:
            self._running.remove(job)
        if self._current is job:
            self._current = self._running[0] if self._running else None

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
            while self._waiting or self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True
