"""The front door's side of the generation workers: Ray actors started (or found) on a local or remote cluster,
one :class:`WorkerSlot` per actor for the job queue, and a monitor that follows their start, death and restart.

A worker is ``starting`` until its application is built, then ``ready`` (``busy`` while it runs a job); when its
process dies Ray starts it again (the actor restarts without limit) and it is ``starting`` once more; a job it was
running is queued again once, on another worker when there is one (:class:`~modules.errors.WorkerLost`). A worker
that appears late (a GPU freed, a node joined) gets work as soon as it is ready.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from modules.errors import ErrorKind, Interrupted, RemoteJobError, WebUIError, WorkerLost
from modules.jobs import Job
from modules.workers import WORKER_KINDS
from modules.workers.worker import PROGRESS_FIELDS, GenerationWorker, Outcome, WorkerSetup, for_worker

log = logging.getLogger(__name__)
POLL_S = 0.25  # how often a running job's progress is asked for
CHECK_S = 2.0  # how often idle workers are checked (alive, their model and checkpoints)
RETRY_S = 5.0  # after a failed start, how long before the worker is asked again
NAME_PREFIX = "worker-"
MODEL_ACTION_TIMEOUT_S = 600.0  # an unload or reload waits for each worker's running job to end first


class WorkersUnavailable(WebUIError):
    """Ray is not installed, or the cluster cannot be reached."""


@dataclass
class WorkerState:
    """What the front door knows of one worker."""

    name: str
    state: str = "starting"  # starting, ready, busy, failed (its start failed; Ray tries again)
    info: dict[str, Any] = field(default_factory=dict)  # from the worker: node, pid, device, model, checkpoints
    message: str = ""
    jobs_done: int = 0
    busy_seconds: float = 0.0
    restarts: int = 0
    since: float = field(default_factory=time.time)


def parse_address(value: str) -> str | None:
    """``ray`` -> None (a local Ray instance); ``ray://HEAD:PORT`` (or ``auto``) as given; anything else refused."""
    value = value.strip()
    if value == "ray":
        return None
    if value.startswith("ray://") or value == "auto":
        return value
    raise WorkersUnavailable(f"--workers takes 'ray' (local GPUs) or 'ray://HEAD:PORT' (a Ray cluster), got "
                             f"{value!r}")


class RayWorkers:
    """The generation workers: started with :meth:`start`, one slot each for the job queue."""

    def __init__(self, address: str | None, count: int | None, setup_for: Callable[[str], WorkerSetup],
                 settings: Callable[[], Mapping[str, Any]], checkpoint_name: Callable[[str | None], str | None],
                 save: Callable[[Job, Any], Any]) -> None:
        if count is not None and count < 1:
            raise WorkersUnavailable(f"--worker-count must be at least 1, got {count}")
        self.address = address
        self.requested = count
        self._setup_for = setup_for
        self.settings = settings
        self.checkpoint_name = checkpoint_name  # a job's checkpoint -> the file name the workers list it under
        self.save = save  # (job, result) -> the result with its images saved by the front door
        self.slots: list[WorkerSlot] = []
        self.on_ready: Callable[[], None] = lambda: None
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._started_ray = False
        self.use_gpus = False
        self._names: dict[str, str | None] = {}  # job id -> its checkpoint's file name

    # -- life
    def start(self) -> list[WorkerSlot]:
        """Connect to (or start) the cluster and start the workers' actors; the slots, still starting."""
        try:
            import ray
        except ImportError:
            raise WorkersUnavailable("--workers needs Ray: pip install '.[cluster]' (or pip install ray)") from None
        root = str(Path(__file__).resolve().parents[2])
        if not ray.is_initialized():
            env = {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
            try:
                # a local instance listens on the loopback interface only: its ports run code for whoever reaches them
                local: dict[str, Any] = {"_node_ip_address": "127.0.0.1"} if self.address is None else {}
                ray.init(address=self.address, include_dashboard=False, log_to_driver=True,
                         runtime_env={"env_vars": env}, configure_logging=False, **local)
            except Exception as exc:  # noqa: BLE001 - any failure to reach the cluster is the same message
                raise WorkersUnavailable(f"could not start or reach the Ray cluster ({self.address or 'local'}): "
                                         f"{exc}") from None
            self._started_ray = True
        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        gpus = int(resources.get("GPU", 0))
        self.use_gpus = gpus > 0
        count = self.requested or max(1, gpus)
        # CPU workers share the cores: torch in each takes its share of threads
        threads = None if self.use_gpus else max(1, int(resources.get("CPU", 1)) // count)
        actor_class = ray.remote(GenerationWorker)
        for index in range(count):
            name = f"{NAME_PREFIX}{index + 1}"
            setup = self._setup_for(name)
            if setup.threads is None and threads is not None:
                setup = replace(setup, threads=threads)
            actor = actor_class.options(
                num_gpus=1 if self.use_gpus else 0, num_cpus=1, max_restarts=-1, max_task_retries=0,
                max_concurrency=8).remote(name, setup)
            self.slots.append(WorkerSlot(self, WorkerState(name), actor))
        log.info("starting %d generation worker(s) on %s (%s)", count, self.address or "a local Ray instance",
                 "one GPU each" if self.use_gpus else "CPU")
        for slot in self.slots:
            slot.ask_ready()
        self._monitor = threading.Thread(target=self._watch, name="worker-monitor", daemon=True)
        self._monitor.start()
        return list(self.slots)

    def stop(self) -> None:
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(5)
        try:
            import ray
        except ImportError:
            return
        for slot in self.slots:
            try:
                ray.kill(slot.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - stopping must not fail the server's shutdown
                log.debug("stopping worker %s", slot.name, exc_info=True)
        if self._started_ray:
            try:
                ray.shutdown()
            except Exception:  # noqa: BLE001
                log.debug("stopping Ray", exc_info=True)

    def _watch(self) -> None:
        """Follow the workers: a started one becomes ready (and gets work), an idle one that died restarts."""
        last_check = 0.0
        while not self._stop.wait(0.2):
            now = time.monotonic()
            check = now - last_check >= CHECK_S
            if check:
                last_check = now
            for slot in self.slots:
                try:
                    if slot.poll_ready() or (check and slot.check_idle()):
                        self.on_ready()
                except Exception:  # noqa: BLE001 - the monitor must go on whatever one worker does
                    log.debug("checking worker %s", slot.name, exc_info=True)

    def job_checkpoint(self, job: Job) -> str | None:
        """The file name of the checkpoint ``job`` needs (the front door's default when it names none), worked out
        once per job: the dispatcher asks for it every time it looks at the queue."""
        if job.id in self._names:
            return self._names[job.id]
        spec = job.spec
        name = getattr(getattr(spec, "request", None), "checkpoint", None) or getattr(spec, "checkpoint", None)
        if name is None:  # the front door's default checkpoint
            name = self.settings().get("sd_model_checkpoint") or None
        found = self.checkpoint_name(name) if name else None
        if len(self._names) > 1024:
            self._names.clear()
        self._names[job.id] = found
        return found

    # -- models
    def model_action(self, action: str, timeout: float = MODEL_ACTION_TIMEOUT_S) -> list[str]:
        """Ask every worker to ``unload`` or ``reload`` its model (each once its running job ends), all at once;
        what went wrong, one line per worker (a worker still starting has no model to unload or reload)."""
        import ray

        asked = []
        for slot in self.slots:
            if slot.status.state in ("starting", "failed"):
                continue
            try:
                asked.append((slot, slot.actor.model_action.remote(action)))
            except Exception as exc:  # noqa: BLE001 - one worker's failure is reported, not raised
                asked.append((slot, exc))
        problems = []
        deadline = time.monotonic() + timeout
        for slot, ref in asked:
            try:
                if isinstance(ref, Exception):
                    raise ref
                slot.status.info = ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{slot.name}: could not {action} its model ({_reason(exc)})")
        return problems

    # -- what the API shows
    def describe(self, busy: Mapping[str, Job]) -> list[dict[str, Any]]:
        out = []
        for slot in self.slots:
            s = slot.status
            job = busy.get(slot.name)
            info = s.info
            out.append({"id": s.name, "state": "busy" if job is not None else s.state, "message": s.message,
                        "node": info.get("node"), "node_id": info.get("node_id"), "pid": info.get("pid"),
                        "device": info.get("device"), "model": info.get("model"),
                        "checkpoints": len(info.get("checkpoints", ())), "job": job.id if job else None,
                        "jobs_done": s.jobs_done, "busy_seconds": round(s.busy_seconds, 2), "restarts": s.restarts})
        return out


class WorkerSlot:
    """One worker as the job queue sees it (:class:`modules.jobs.Slot`)."""

    def __init__(self, pool: RayWorkers, status: WorkerState, actor: Any) -> None:
        self.pool = pool
        self.status = status
        self.name = status.name
        self.actor = actor
        self._ready_ref: Any = None
        self._retry_at = 0.0  # a worker whose start failed is asked again from then
        self._lock = threading.Lock()

    # -- the queue's questions
    def refusal(self, job: Job) -> str | None:
        if job.pin is not None and job.pin != self.name:
            return f"the job is pinned to {job.pin}"
        if job.kind not in WORKER_KINDS:
            return f"{job.kind} jobs run in the front door"
        wanted = self._checkpoint(job)
        known = self.status.info.get("checkpoints")
        if wanted is not None and known is not None and wanted not in known:
            return f"checkpoint {wanted} is not in this worker's model folder"
        return None

    def ready(self) -> bool:
        return self.status.state == "ready"

    def preference(self, job: Job) -> tuple[float, ...]:
        loaded = self.status.info.get("model")
        wanted = self._checkpoint(job)
        has_it = loaded is not None and wanted is not None and wanted in (loaded, loaded.split(" [")[0])
        return (1.0 if has_it else 0.0, -self.status.busy_seconds, -self.status.jobs_done)

    def _checkpoint(self, job: Job) -> str | None:
        return self.pool.job_checkpoint(job)

    def run(self, job: Job) -> Any:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        started = time.monotonic()
        self.status.state = "busy"
        try:
            ref = self.actor.run.remote(job.id, for_worker(job.spec), dict(self.pool.settings()))
            seen_preview, interrupted = 0, False
            while True:
                done, _ = ray.wait([ref], timeout=POLL_S)
                if done:
                    outcome: Outcome = ray.get(ref)  # only this call says whether the worker was lost
                    break
                try:  # the side calls: a failure is no report this time (the run call above decides)
                    if job.control.interrupted and not interrupted:
                        interrupted = bool(ray.get(self.actor.interrupt.remote(job.id), timeout=5 * POLL_S))
                    if job.control.skipped and ray.get(self.actor.skip.remote(job.id), timeout=5 * POLL_S):
                        job.control.clear_skip()
                    report = ray.get(self.actor.progress.remote(job.id, seen_preview), timeout=5 * POLL_S)
                except (GetTimeoutError, RayActorError):
                    continue
                if report:
                    seen_preview = _relay(job, report, seen_preview)
        except RayActorError as exc:
            self._lost(exc)
            raise WorkerLost(f"worker {self.name} stopped during the job ({_reason(exc)})") from None
        finally:
            self.status.busy_seconds += time.monotonic() - started
            if self.status.state == "busy":
                self.status.state = "ready"
        self.status.jobs_done += 1
        self.status.info = outcome.info or self.status.info
        for warning in outcome.warnings:
            job.control.warn(warning)
        if outcome.interrupted:
            raise Interrupted("interrupted")
        if outcome.error is not None:
            kind = ErrorKind(outcome.error_kind) if outcome.error_kind else ErrorKind.FAILED
            raise RemoteJobError(outcome.error, kind, outcome.error_field)
        return self.pool.save(job, outcome.result)

    # -- the monitor's side
    def ask_ready(self) -> None:
        with self._lock:
            self._ready_ref = self.actor.info.remote()

    def poll_ready(self) -> bool:
        """A starting worker that has answered becomes ready (True then)."""
        import ray

        with self._lock:
            ref = self._ready_ref
        if ref is None or self.status.state not in ("starting", "failed"):
            if ref is None and self.status.state == "failed" and time.monotonic() >= self._retry_at:
                self.ask_ready()
            return False
        done, _ = ray.wait([ref], timeout=0)
        if not done:
            return False
        try:
            info = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - its start failed: shown, and asked again (Ray restarts it)
            self.status.state, self.status.message = "failed", _reason(exc)
            log.warning("worker %s could not start: %s", self.name, self.status.message)
            with self._lock:
                self._ready_ref = None
            self._retry_at = time.monotonic() + RETRY_S
            return False
        with self._lock:
            self._ready_ref = None
        self.status.info, self.status.state, self.status.message = info, "ready", ""
        self.status.since = time.time()
        log.info("worker %s ready: %s, pid %s on %s", self.name, info.get("device"), info.get("pid"), info.get("node"))
        return True

    def check_idle(self) -> bool:
        """Refresh an idle ready worker's state (its model, its checkpoints); one found dead starts again."""
        import ray
        from ray.exceptions import GetTimeoutError

        if self.status.state != "ready":
            return False
        from ray.exceptions import RayActorError

        try:
            self.status.info = ray.get(self.actor.info.remote(), timeout=10)
        except GetTimeoutError:
            return False
        except RayActorError as exc:  # dead: Ray restarts the actor; wait for it to answer again
            self._lost(exc)
        except Exception as exc:  # noqa: BLE001 - the worker answered with an error: it stays, its old info kept
            log.warning("worker %s could not say its state: %s", self.name, _reason(exc))
        return False

    def _lost(self, exc: BaseException) -> None:
        log.warning("worker %s stopped: %s; waiting for it to start again", self.name, _reason(exc))
        self.status.state, self.status.message = "starting", f"restarting after: {_reason(exc)}"
        self.status.restarts += 1
        self.ask_ready()


def _relay(job: Job, report: Mapping[str, Any], seen_preview: int) -> int:
    """Publish a worker's progress report on the job's own control; the last preview id seen."""
    current = job.control.progress
    changes = {name: report[name] for name in PROGRESS_FIELDS if report.get(name) != getattr(current, name)}
    if report.get("preview") is not None:
        changes["preview"] = report["preview"]
        changes["preview_id"] = current.preview_id + 1
        seen_preview = int(report.get("preview_id", seen_preview))
    if changes:
        job.control.update(**changes)
    for warning in report.get("warnings", ()):
        job.control.warn(warning)
    return seen_preview


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = next((line for line in text if line.strip()), type(exc).__name__)
    return f"{type(exc).__name__}: {first[:200]}"


def default_setup(data_dir: Path, models_dir: Path | None, paths: Any, precision: str | None,
                  threads: int | None = None) -> Callable[[str], WorkerSetup]:
    """Each worker's own folder under ``<data>/workers/<name>``; the models from ``models_dir``
    (``--worker-models-dir``: its own ``Stable-diffusion``, ``Lora``... folders) or else the front door's folders."""
    if threads is not None and threads < 1:
        raise WorkersUnavailable(f"--worker-threads must be at least 1, got {threads}")

    def setup(name: str) -> WorkerSetup:
        base = WorkerSetup(data_dir=data_dir / "workers" / name, precision=precision, threads=threads)
        if models_dir is not None:
            return replace(base, models_dir=models_dir)
        return replace(base, models_dir=paths.models_dir, ckpt_dirs=tuple(paths.extra_ckpt_dirs),
                       lora_dir=paths.lora_dir_option, embeddings_dir=paths.embeddings_dir,
                       hypernetwork_dir=paths.hypernetwork_dir_option, styles_files=tuple(paths.styles_patterns))

    return setup
