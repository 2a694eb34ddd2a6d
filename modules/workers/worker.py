"""One generation worker: its own application (engine, model cache, settings) in its own process, running the jobs
the front door hands it, one at a time, and answering progress, interrupt and skip calls while one runs.

It saves nothing: a generation's images come back as PNG bytes with their infotext and the front door saves them
(:func:`modules.engine.save_images_result`). A failure comes back as a described :class:`Outcome`, not as an
exception, so that nothing depends on an exception class pickling across processes.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from modules.errors import Interrupted, ValidationError, error_kind
from modules.generation.control import JobControl, Progress

log = logging.getLogger(__name__)
RESCAN_S = 20.0  # how often the model folders are walked again for the checkpoint list
PROGRESS_FIELDS = ("job_no", "job_count", "sampling_step", "sampling_steps", "phase", "textinfo")


@dataclass(frozen=True)
class WorkerSetup:
    """Where a worker keeps its own files and finds the models (which may be shared storage)."""

    data_dir: Path
    models_dir: Path | None = None
    ckpt_dirs: tuple[Path, ...] = ()
    lora_dir: Path | None = None
    embeddings_dir: Path | None = None
    hypernetwork_dir: Path | None = None
    styles_files: tuple[str, ...] = ()  # the front door's styles (a request's styles are applied here)
    precision: str | None = None
    threads: int | None = None  # torch's CPU threads (CPU workers share the machine's cores)


@dataclass(frozen=True)
class Outcome:
    """A job's end on a worker: its result, or its error as the front door reports it."""

    result: Any = None
    warnings: tuple[str, ...] = ()
    error: str | None = None
    error_kind: str | None = None
    error_field: str | None = None
    interrupted: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # the worker's state after the job


class GenerationWorker:
    """The body of a generation worker (a Ray actor: ``ray.remote(GenerationWorker)``); plain Python otherwise."""

    def __init__(self, name: str, setup: WorkerSetup) -> None:
        import torch

        from modules.app import App, StartOptions

        if setup.threads:
            torch.set_num_threads(setup.threads)
        self.name = name
        self.started = time.time()
        options = StartOptions(data_dir=setup.data_dir, models_dir=setup.models_dir, ckpt_dirs=setup.ckpt_dirs,
                               lora_dir=setup.lora_dir, embeddings_dir=setup.embeddings_dir,
                               hypernetwork_dir=setup.hypernetwork_dir, styles_files=setup.styles_files,
                               precision=setup.precision,
                               skip_load_model=True)
        self.app = App(options)  # its queue is never started: jobs come through run()
        self._lock = threading.Lock()  # one job at a time
        self._controls: dict[str, JobControl] = {}
        self._job: str | None = None
        self._scanned = time.monotonic()  # the registry was scanned as the application started
        log.info("generation worker %s ready on %s (pid %d)", name, self.app.models.config.device, os.getpid())

    # -- what the front door asks
    def info(self) -> dict[str, Any]:
        """The worker's identity and state: node, process, device, loaded model, the checkpoints it can load."""
        current = self.app.models.current
        if time.monotonic() - self._scanned >= RESCAN_S:  # a model folder on shared storage is not walked each time
            self.app.registry.refresh()
            self._scanned = time.monotonic()
        checkpoints = sorted({alias for info in self.app.registry.list() for alias in info.aliases()})
        return {"name": self.name, "node": socket.gethostname(), "node_id": _node_id(), "pid": os.getpid(),
                "device": _device_text(self.app.models.config.device),
                "model": current.info.title if current is not None and current.info is not None else None,
                "checkpoints": checkpoints, "job": self._job, "started": self.started}

    def run(self, job_id: str, spec: Any, settings: Mapping[str, Any]) -> Outcome:
        """Run one job with the front door's settings; its result or its described error."""
        control = JobControl()
        self._controls[job_id] = control
        try:
            with self._lock:
                self._job = job_id
                try:
                    self._apply_settings(settings, control)
                    result = self.app.handlers.run(self.app, spec, control)
                except Interrupted:
                    return Outcome(warnings=tuple(control.warnings), interrupted=True, info=self.info())
                except Exception as exc:  # noqa: BLE001 - described for the front door, which fails the job
                    from modules.jobs import describe_error

                    kind = error_kind(exc)
                    log.error("job %s failed on worker %s: %s", job_id, self.name, describe_error(exc),
                              exc_info=kind.value == "internal")
                    return Outcome(warnings=tuple(control.warnings), error=describe_error(exc),
                                   error_kind=kind.value,
                                   error_field=exc.field if isinstance(exc, ValidationError) else None,
                                   info=self.info())
                finally:
                    self._job = None
                return Outcome(result, tuple(control.warnings), info=self.info())
        finally:
            self._controls.pop(job_id, None)

    def progress(self, job_id: str, seen_preview: int = 0) -> dict[str, Any] | None:
        """The running job's latest progress (its preview only when newer than ``seen_preview``); None when it is not
        running here."""
        control = self._controls.get(job_id)
        if control is None:
            return None
        p: Progress = control.progress
        out: dict[str, Any] = {name: getattr(p, name) for name in PROGRESS_FIELDS}
        out["preview_id"] = p.preview_id
        out["preview"] = p.preview if p.preview is not None and p.preview_id > seen_preview else None
        out["warnings"] = list(control.warnings)
        return out

    def model_action(self, action: str) -> dict[str, Any]:
        """``unload`` the resident model (A1111's unload-checkpoint) or ``reload`` the last one from disk, once the
        job running here (if any) has ended; the worker's state afterwards."""
        if action not in ("unload", "reload"):
            raise ValueError(f"unknown model action {action!r}")
        with self._lock:
            if action == "unload":
                self.app.models.unload()
            else:
                self.app.models.reload()
        return self.info()

    def interrupt(self, job_id: str) -> bool:
        control = self._controls.get(job_id)
        if control is not None:
            control.interrupt()
        return control is not None

    def skip(self, job_id: str) -> bool:
        control = self._controls.get(job_id)
        if control is not None:
            control.skip()
        return control is not None

    # -- helpers
    def _apply_settings(self, settings: Mapping[str, Any], control: JobControl) -> None:
        """Take the front door's settings (the ones this worker knows and that differ; not its folders, since the
        worker saves nothing), without saving them; a change of precision, attention or memory mode re-places the
        resident model, as a settings change does in the front door."""
        from modules.app import DEVICE_SETTINGS

        known = self.app.settings.options
        current = self.app.settings.snapshot()
        changes = {k: v for k, v in settings.items()
                   if k in known and known[k].confine != "folder" and current.get(k) != v}
        if not changes:
            return
        try:
            changed = self.app.settings.update(changes, save=False)
        except Exception:  # noqa: BLE001 - one odd setting must not stop the job; said in its warnings
            changed = []
            for key, value in changes.items():
                try:
                    changed += self.app.settings.update({key: value}, save=False)
                except Exception as exc:  # noqa: BLE001
                    control.warn(f"worker {self.name}: the setting {key} could not be applied ({exc})")
        if set(DEVICE_SETTINGS) & set(changed) and self.app.models.current is not None:
            self.app.models.apply_config(self.app.device_config(self.app.models.config.device))


def for_worker(spec: Any) -> Any:
    """The spec as a worker runs it: nothing saved there (the front door saves what comes back), the grid made when
    the front door will save or return it."""
    output = getattr(spec, "output", None)
    if output is None:
        return spec
    return replace(spec, output=replace(output, save_samples=False, save_grid=False),
                   return_grid=spec.return_grid or output.save_grid)


def _node_id() -> str | None:
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # noqa: BLE001 - outside Ray (a test building a worker in-process) there is no node
        return None


def _device_text(device: str) -> str:
    """The device and, for a GPU, its name."""
    try:
        import torch

        if device.startswith("cuda") and torch.cuda.is_available():
            return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    except Exception:  # noqa: BLE001 - the name is a nicety
        pass
    return device
