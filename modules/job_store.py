"""The job queue kept in SQLite (``<data dir>/jobs.sqlite3``), so that it survives a restart.

For every job: its id, kind, owner, state, times, error fields and warnings, the worker that ran it (with
``--workers``), the spec, the submitter's tag when it is plain data, and the result, encoded by
:mod:`modules.job_codec` so that every registered job kind round-trips.

Durability: the file is in WAL mode and every write is one transaction, so killing the server at any moment leaves
the queue as it was after the last write. After a restart (:meth:`JobStore.restore`):

- the queued jobs are queued again, in their original order;
- the jobs that were running are marked failed, :data:`INTERRUPTED` ("interrupted: the server stopped while it
  ran"), and are kept as finished jobs;
- finished jobs (succeeded, failed, cancelled) stay readable for ``keep_hours`` after they finished (the
  ``jobs_keep_hours`` setting, 24 by default; 0: not kept across restarts), then are deleted.

Bounds (constructor arguments):

- ``max_record_bytes`` (256 MiB): a spec larger than this once encoded is not stored (its job runs from memory
  only and is lost at a restart; logged once per kind), nor a result larger than this (the job is kept without it,
  with a warning saying why). A spec that cannot be encoded at all (an unknown object in a script's arguments) is
  treated the same way: the job always runs.
- ``max_total_bytes`` (2 GiB): once the stored jobs together are larger, the oldest finished jobs are deleted first.
  Freed pages are returned to the file system (incremental vacuum).
- ``restore_bytes`` (512 MiB): at start-up at most ``keep_finished`` (the queue's in-memory count) of the newest
  finished jobs, of at most this many bytes together, are loaded into memory; the others are read on demand
  (:meth:`JobStore.load`).

At start the file is checked (SQLite's ``quick_check``: one read of the whole file, at most ``max_total_bytes``
plus the queued jobs). A file that cannot be used (not an SQLite file, corrupt, written by a newer version) is moved
aside, as ``jobs.sqlite3.corrupt-<time>``, with a warning, and an empty store is created. When the file cannot be
opened or written at all (a read-only data folder, a full disk), the queue goes on in memory, with an error in the
log.

Schema versions (``PRAGMA user_version``): 1, the first; 2 adds the ``worker`` column; 3 the ``pin`` column (the
worker a job must run on). An older file is upgraded in place when it is opened (its jobs kept; an added column
comes after the blobs there, which only costs reading through them for that column).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from modules.errors import ErrorKind
from modules.generation.control import JobControl
from modules.job_codec import MiB, Undecodable, Unstorable, decode, encode
from modules.jobs import INTERRUPTED_BY_STOP, Job, JobState

log = logging.getLogger(__name__)

JOBS_FILE = "jobs.sqlite3"
SCHEMA_VERSION = 3
INTERRUPTED = INTERRUPTED_BY_STOP


# -- the store ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Unrestorable:
    """The spec of a stored job that could not be read back (it is shown, failed, with ``reason``; never run)."""

    kind: str  # the job kind as stored (spec classes have it as a ClassVar)
    reason: str


@dataclass(frozen=True)
class Record:
    """A job ready to be written: its spec and tag encoded (outside the queue's lock)."""

    job: Job
    spec: bytes
    tag: bytes | None


class _Unusable(Exception):
    """The file is not a job store this version can use (corrupt, not SQLite, newer)."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    owner TEXT,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    error_kind TEXT,
    error_field TEXT,
    warnings TEXT NOT NULL DEFAULT '[]',  -- JSON list of strings
    worker TEXT,  -- the worker that ran it (schema 2); NULL: this process
    pin TEXT,  -- the worker it must run on (schema 3); NULL: any
    size INTEGER NOT NULL DEFAULT 0,  -- bytes of spec, tag and result
    -- the blobs last: the columns above are read without reading through them
    spec BLOB NOT NULL,
    tag BLOB,
    result BLOB
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished);
"""
_FINISHED = tuple(s.value for s in JobState if s.finished)
_COLUMNS = ("seq, id, kind, owner, state, created, started, finished, error, error_kind, error_field, warnings, "
            "worker, pin")
# columns added since schema 1, as ``ALTER TABLE jobs ADD COLUMN`` takes them: added to an older file on opening
_ADDED_COLUMNS = (("worker", "worker TEXT"), ("pin", "pin TEXT"))
PURGE_EVERY_S = 300.0


def _is_corruption(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "")
    return name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or type(exc) is sqlite3.DatabaseError


class JobStore:
    """Jobs in an SQLite file; every method is thread-safe and never raises for a database problem (it logs)."""

    def __init__(self, path: Path, keep_hours: float | Callable[[], float] = 24.0, *,
                 clock: Callable[[], float] = time.time, max_record_bytes: int = 256 * MiB,
                 max_total_bytes: int = 2048 * MiB, restore_bytes: int = 512 * MiB) -> None:
        self.path = Path(path)
        self._keep_hours = keep_hours
        self.clock = clock
        self.max_record_bytes = max_record_bytes
        self.max_total_bytes = max_total_bytes
        self.restore_bytes = restore_bytes
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._warned: set[str] = set()
        self._last_purge = 0.0
        self._vacuum_due = False
        self.moved_aside: Path | None = None  # where a file that could not be used went
        self._open()

    # -- opening
    @property
    def available(self) -> bool:
        return self._conn is not None

    @property
    def keep_seconds(self) -> float:
        hours = self._keep_hours() if callable(self._keep_hours) else self._keep_hours
        return max(0.0, float(hours)) * 3600

    def _open(self) -> None:
        try:
            self._conn = self._connect()
            return
        except (_Unusable, sqlite3.DatabaseError) as exc:
            if isinstance(exc, sqlite3.OperationalError) and not _is_corruption(exc):
                log.error("the job store %s cannot be opened (%s): jobs are kept in memory only", self.path, exc)
                return
            reason = str(exc)
        except OSError as exc:
            log.error("the job store %s cannot be opened (%s): jobs are kept in memory only", self.path, exc)
            return
        self.moved_aside = self._move_aside(reason)
        if self.moved_aside is None:
            return
        try:
            self._conn = self._connect()
        except (_Unusable, sqlite3.Error, OSError) as exc:
            log.error("a new job store %s cannot be created (%s): jobs are kept in memory only", self.path, exc)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise _Unusable(f"written by a newer version (schema {version})")
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect on a new file only
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL: a killed process loses nothing committed
            conn.execute(f"PRAGMA journal_size_limit = {64 * MiB}")
            check = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
            if check != ["ok"]:
                raise _Unusable("corrupt: " + "; ".join(map(str, check)))
            conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA)  # the transaction stays open for the upgrade
            columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
            for name, definition in _ADDED_COLUMNS:
                if name not in columns:  # a file of an older schema: upgraded in place, its jobs kept
                    conn.execute(f"ALTER TABLE jobs ADD COLUMN {definition}")
                    columns.add(name)
                    log.info("job store %s: added the %s column (schema %d to %d)", self.path.name, name, version,
                             SCHEMA_VERSION)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
            missing = {"seq", "id", "spec", "result", "size", "warnings", "worker", "pin"} - columns
            if missing:
                raise _Unusable(f"the jobs table lacks {', '.join(sorted(missing))}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _move_aside(self, reason: str) -> Path | None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        try:
            self.path.replace(target)
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    side.replace(target.with_name(target.name + suffix))
        except OSError as exc:
            log.error("the job store %s cannot be used (%s) nor moved aside (%s): jobs are kept in memory only",
                      self.path, reason, exc)
            return None
        log.warning("the job store %s could not be used (%s); moved aside to %s, starting with an empty queue",
                    self.path, reason, target.name)
        return target

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error:
                    log.debug("closing the job store failed", exc_info=True)

    # -- transactions
    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection | None]:
        """One write transaction on the connection (``None`` when there is none); database errors are logged."""
        with self._lock:
            conn = self._conn
            if conn is None:
                yield None
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        log.debug("rollback failed", exc_info=True)
                if not isinstance(exc, sqlite3.Error):
                    raise
                self._log_failure(what, exc)

    def _log_failure(self, what: str, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}"
        if message in self._warned:
            log.debug("job store: %s failed: %s", what, message)
        else:
            self._warned.add(message)
            log.error("job store: %s failed: %s (the queue goes on; this job may not survive a restart)",
                      what, message)

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    # -- writing
    def record(self, job: Job) -> Record | None:
        """``job`` encoded for :meth:`insert`; ``None`` (logged once per kind) when its spec cannot be stored: the
        job then runs from memory only. A tag that is not plain data is left out."""
        if self._conn is None:
            return None
        try:
            spec = encode(job.spec, self.max_record_bytes)
        except Unstorable as exc:
            self._warn_once(f"spec:{job.kind}", "%s jobs are not kept across restarts: %s", job.kind, exc)
            return None
        tag = None
        if job.tag is not None:
            try:
                tag = encode(job.tag, self.max_record_bytes)
            except Unstorable:
                log.debug("the tag of job %s is not plain data; not stored", job.id)
        return Record(job, spec, tag)

    def insert(self, record: Record) -> bool:
        """Store a queued job; whether it was stored."""
        job = record.job
        size = len(record.spec) + len(record.tag or b"")
        with self._transaction("storing a job") as conn:
            if conn is None:
                return False
            conn.execute("INSERT INTO jobs (id, kind, owner, state, created, pin, spec, tag, size) VALUES "
                         "(?, ?, ?, ?, ?, ?, ?, ?, ?)", (job.id, job.kind, job.owner, job.state.value, job.created,
                                                         job.pin, record.spec, record.tag, size))
            return True
        return False

    def mark_queued(self, job: Job) -> None:
        """Store that ``job`` waits again (its worker was lost while it ran): it runs after a restart."""
        with self._transaction("marking a job queued again") as conn:
            if conn is not None:
                conn.execute("UPDATE jobs SET state = ?, started = NULL WHERE id = ?",
                             (JobState.QUEUED.value, job.id))

    def mark_running(self, job: Job) -> None:
        """Store that ``job`` started, and on which worker (``job.worker``, set by the dispatcher)."""
        with self._transaction("marking a job running") as conn:
            if conn is not None:
                conn.execute("UPDATE jobs SET state = ?, started = ?, worker = ? WHERE id = ?",
                             (JobState.RUNNING.value, job.started, job.worker, job.id))

    def mark_finished(self, job: Job, state: JobState, finished: float) -> None:
        """Store ``job``'s end: its state, time, error fields, warnings, worker and result (left out, with a warning
        on the job, when it is too large or cannot be stored)."""
        if self._conn is None:
            return
        result = None
        if job.result is not None:
            try:
                result = encode(job.result, self.max_record_bytes)
            except Unstorable as exc:
                note = f"the result was not kept for after a restart: {exc}"
                self._warn_once(f"result:{job.kind}:{type(exc).__name__}", "%s job %s: %s", job.kind, job.id, note)
                job.control.warn(note)
        warnings = json.dumps(list(job.control.warnings), ensure_ascii=False)
        with self._transaction("storing a finished job") as conn:
            if conn is None:
                return
            conn.execute("UPDATE jobs SET state = ?, started = ?, finished = ?, error = ?, error_kind = ?, "
                         "error_field = ?, warnings = ?, worker = ?, result = ?, size = length(spec) + "
                         "COALESCE(length(tag), 0) + ? WHERE id = ?",
                         (state.value, job.started, finished, job.error,
                          job.error_kind.value if job.error_kind is not None else None, job.error_field, warnings,
                          job.worker, result, len(result or b""), job.id))
            self._bound_size(conn)
        if self.clock() - self._last_purge >= PURGE_EVERY_S:
            self.purge()
        self._vacuum()

    def _bound_size(self, conn: sqlite3.Connection) -> None:
        total = conn.execute("SELECT COALESCE(SUM(size), 0) FROM jobs").fetchone()[0]
        if total <= self.max_total_bytes:
            return
        rows = conn.execute(f"SELECT id, size FROM jobs WHERE state IN ({','.join('?' * len(_FINISHED))}) "
                            "ORDER BY finished, seq", _FINISHED).fetchall()
        gone = []
        for job_id, size in rows:
            if total <= self.max_total_bytes:
                break
            gone.append(job_id)
            total -= size
        conn.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in gone])
        self._vacuum_due = True
        log.info("job store over %d MiB: deleted the %d oldest finished job(s)", self.max_total_bytes // MiB,
                 len(gone))

    def purge(self) -> int:
        """Delete the finished jobs older than the time they are kept; how many."""
        self._last_purge = self.clock()
        cutoff = self.clock() - self.keep_seconds
        deleted = 0
        with self._transaction("deleting old jobs") as conn:
            if conn is None:
                return 0
            deleted = conn.execute(f"DELETE FROM jobs WHERE state IN ({','.join('?' * len(_FINISHED))}) "
                                   "AND finished < ?", (*_FINISHED, cutoff)).rowcount
        self._vacuum_due = self._vacuum_due or deleted > 0
        self._vacuum()
        return deleted

    def _vacuum(self) -> None:
        """Return the pages deleted jobs freed to the file system (the file shrinks)."""
        if not self._vacuum_due:
            return
        with self._lock:
            self._vacuum_due = False
            try:
                if self._conn is not None:
                    self._conn.execute("PRAGMA incremental_vacuum").fetchall()  # runs as its rows are read
            except sqlite3.Error as exc:
                self._log_failure("returning free space", exc)

    # -- reading
    def restore(self, keep_finished: int = 200) -> list[Job]:
        """The jobs to hold in memory after a start, in submission order: every queued job, and the newest
        ``keep_finished`` finished ones (see ``restore_bytes``). Jobs that were running are marked failed with
        :data:`INTERRUPTED` first; expired finished jobs are deleted."""
        if self._conn is None:
            return []
        self.purge()
        now = self.clock()
        with self._transaction("marking interrupted jobs") as conn:
            if conn is not None:
                interrupted = conn.execute(
                    "UPDATE jobs SET state = ?, finished = ?, error = ?, error_kind = ? WHERE state = ?",
                    (JobState.FAILED.value, now, INTERRUPTED, ErrorKind.FAILED.value,
                     JobState.RUNNING.value)).rowcount
                if interrupted:
                    log.warning("%d job(s) were running when the server stopped: marked failed (%s)", interrupted,
                                INTERRUPTED)
        jobs: list[tuple[int, Job]] = []
        for row in self._rows("SELECT " + _COLUMNS + ", spec, tag, NULL FROM jobs WHERE state = ? ORDER BY seq",
                              (JobState.QUEUED.value,)):
            job = self._job(row)
            if job.state is JobState.FAILED:  # its spec cannot be read back: shown failed, never run
                self._store_failure(job)
            jobs.append((row[0], job))
        chosen: list[str] = []
        budget = self.restore_bytes
        for job_id, size in self._rows(f"SELECT id, size FROM jobs WHERE state IN ({','.join('?' * len(_FINISHED))})"
                                       " ORDER BY finished DESC, seq DESC", _FINISHED):
            if len(chosen) >= keep_finished or (size > budget and chosen):
                break
            chosen.append(job_id)
            budget -= size
        for job_id in chosen:
            found = self._rows("SELECT " + _COLUMNS + ", spec, tag, result FROM jobs WHERE id = ?", (job_id,))
            if found:
                jobs.append((found[0][0], self._job(found[0])))
        jobs.sort(key=lambda pair: pair[0])
        return [job for _, job in jobs]

    def load(self, job_id: str) -> Job | None:
        """A finished job still kept (read afresh), or ``None``."""
        rows = self._rows(f"SELECT {_COLUMNS}, spec, tag, result FROM jobs WHERE id = ? AND state IN "
                          f"({','.join('?' * len(_FINISHED))}) AND finished >= ?",
                          (job_id, *_FINISHED, self.clock() - self.keep_seconds))
        return self._job(rows[0]) if rows else None

    def states(self) -> dict[str, str]:
        """Every stored job's state by id (for tests and diagnostics)."""
        return dict(self._rows("SELECT id, state FROM jobs ORDER BY seq", ()))

    def _rows(self, sql: str, args: tuple[object, ...]) -> list[Any]:
        with self._lock:
            if self._conn is None:
                return []
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                self._log_failure("reading jobs", exc)
                return []

    def _job(self, row: Any) -> Job:
        """A job from its row (seq, id, kind, owner, state, created, started, finished, error, error_kind,
        error_field, warnings, worker, pin, spec, tag, result); one whose spec cannot be read back comes back
        failed."""
        (_, job_id, kind, owner, state, created, started, finished, error, error_kind, error_field, warnings, worker,
         pin, spec_data, tag_data, result_data) = row
        control = JobControl()
        try:
            control.warnings.extend(str(w) for w in json.loads(warnings or "[]"))
        except (ValueError, TypeError):
            pass
        try:
            spec = decode(spec_data)
        except Undecodable as exc:
            self._warn_once(f"decode:{job_id}", "stored job %s (%s) cannot be read back: %s", job_id, kind, exc)
            spec = Unrestorable(kind, str(exc))
            if not JobState(state).finished:
                state, finished = JobState.FAILED.value, self.clock()
                error, error_kind, error_field = (f"could not be restored after a restart: {exc}",
                                                  ErrorKind.FAILED.value, None)
        tag = None
        if tag_data is not None:
            try:
                tag = decode(tag_data)
            except Undecodable as exc:
                log.debug("the tag of job %s cannot be read back: %s", job_id, exc)
        result = None
        if result_data is not None:
            try:
                result = decode(result_data)
            except Undecodable as exc:
                self._warn_once(f"result:{job_id}", "the result of job %s cannot be read back: %s", job_id, exc)
                control.warn(f"the result could not be read back after a restart: {exc}")
        job = Job(cast(Any, spec), owner, tag, id=job_id, state=JobState(state), control=control, created=created,
                  started=started, finished=finished, result=result, error=error,
                  error_kind=ErrorKind(error_kind) if error_kind else None, error_field=error_field, worker=worker,
                  pin=pin)
        job._stored = True
        if job.state.finished:
            job.done.set()
        return job

    def _store_failure(self, job: Job) -> None:
        with self._transaction("marking an unreadable job failed") as conn:
            if conn is not None:
                conn.execute("UPDATE jobs SET state = ?, finished = ?, error = ?, error_kind = ? WHERE id = ?",
                             (job.state.value, job.finished, job.error,
                              job.error_kind.value if job.error_kind else None, job.id))
