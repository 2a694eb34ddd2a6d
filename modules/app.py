"""The application object: services built once at start-up and passed down; a test builds its own."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from modules.engine import Engine
from modules.errors import ValidationError, WebUIError
from modules.extensions import ExtensionManager
from modules.extras_steps import ExtrasTools
from modules.faces.restorers import FaceRestorers
from modules.hashing import HashCache
from modules.interrogate.service import Interrogators, clip_options
from modules.job_handlers import builtin_handlers
from modules.job_store import JOBS_FILE, JobStore
from modules.job_types import (
    DeviceConfigJob,
    Img2ImgJob,
    InterrogateJob,
    JobResult,
    JobSpec,
    LoadModelJob,
    Txt2ImgJob,
)
from modules.jobs import Job, JobQueue, LocalSlot, Slot
from modules.models.manager import DeviceConfig, ModelManager, default_device, is_demo
from modules.models.model_defaults import read_defaults
from modules.models.registry import CheckpointRegistry
from modules.models.taesd import Previews
from modules.networks.service import ExtraNetworks
from modules.output_options import OutputOptions
from modules.param_io import setting_values
from modules.paths import Paths
from modules.requests import GenerationRequest, Img2ImgRequest, Limits
from modules.scripts.builtin import builtin_scripts
from modules.scripts.registry import ScriptCall, ScriptRegistry
from modules.settings import Settings, build_options
from modules.styles import StyleDatabase
from modules.upscalers.registry import DEFAULT_TILE_SETTINGS, TILE_SETTINGS, UpscalerRegistry

log = logging.getLogger(__name__)


def quiet_libraries() -> None:
    """Silence the progress bars and advisory warnings of diffusers and transformers."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def build_engine(paths: Paths | None = None, device: str | None = None, precision: str = "auto",
                 attention: str = "Automatic", cache_limit: int = 1) -> Engine:
    quiet_libraries()
    paths = paths or Paths.create()
    hashes = HashCache(paths.hash_cache_file)
    registry = CheckpointRegistry(paths.ckpt_dirs, hashes)
    config = DeviceConfig(device=device or default_device(), precision=precision, attention=attention)
    return Engine(ModelManager(registry, config, cache_limit, vae_dir=paths.vae_dir),
                  ExtraNetworks([paths.lora_dir], [paths.embeddings_dir], hashes, [paths.hypernetwork_dir]),
                  UpscalerRegistry(paths.models_dir, lambda: torch.device(config.device)))


@dataclass(frozen=True)
class StartOptions:
    """What the command line decides about the application (the rest lives in the settings)."""

    data_dir: Path | None = None
    models_dir: Path | None = None
    ckpt_dirs: tuple[Path, ...] = ()
    lora_dir: Path | None = None
    embeddings_dir: Path | None = None
    hypernetwork_dir: Path | None = None
    styles_files: tuple[str, ...] = ()
    model_dirs: tuple[tuple[str, Path], ...] = ()  # (models/ folder kind, extra folder): A1111's path flags
    ckpt: str | None = None
    device: str | None = None
    precision: str | None = None  # overrides the setting when given on the command line
    medvram_sdxl: bool = False  # --medvram-sdxl
    no_half_vae: bool = False  # --no-half-vae
    lowram: bool = False  # --lowram: checkpoint weights read straight into the GPU's memory
    skip_load_model: bool = False
    exposed: bool = False
    admin_users: tuple[str, ...] = ()  # who may change settings and models; empty: every user (see is_admin)
    extension_access: bool = False  # --enable-insecure-extension-access: install and toggle extensions when exposed
    disable_extensions: str = "none"  # "all": --disable-all-extensions, "extra": --disable-extra-extensions
    workers: str | None = None  # --workers: "ray" (local GPUs) or "ray://HEAD:PORT"; None: jobs run in this process
    worker_count: int | None = None  # --worker-count: workers to start (default: one per GPU, or one on CPUs)
    worker_models_dir: Path | None = None  # --worker-models-dir: the models folder the workers read
    worker_threads: int | None = None  # --worker-threads: torch's threads in each CPU worker (default: cores/workers)


# settings that change how the resident model is placed: a change is applied by a job (see DeviceConfigJob)
DEVICE_SETTINGS = ("cross_attention_optimization", "precision", "memory_mode", "fp8_storage", "channels_last",
                   "torch_compile")


class Forbidden(WebUIError):
    """The user may not do this (settings and models are for the administrators)."""


ADMIN_ONLY = "only an administrator (--admin-users) may change settings or models"


@dataclass
class ModelStatus:
    state: str = "idle"  # idle, loading, loaded, failed
    title: str | None = None
    message: str | None = None
    since: float = field(default_factory=time.time)


@dataclass(frozen=True)
class SettingsChange:
    changed: list[str]
    jobs: list[Job]


class App:
    def __init__(self, options: StartOptions = StartOptions()) -> None:
        quiet_libraries()
        self.options = options
        self.started = time.time()
        self.paths = Paths.create(options.data_dir, options.models_dir, options.ckpt_dirs, options.lora_dir,
                                  options.embeddings_dir, options.hypernetwork_dir, options.styles_files)
        self.styles = StyleDatabase(self.paths.styles_patterns)
        self.hashes = HashCache(self.paths.hash_cache_file)
        self.registry = CheckpointRegistry(self.paths.ckpt_dirs, self.hashes)
        self.settings = Settings(self.paths.config_file, build_options(self._checkpoint_titles, self._vae_names),
                                 options.exposed)
        self.models = ModelManager(self.registry, self.device_config(options.device or default_device()),
                                   self.settings["sd_checkpoints_limit"], vae_dir=self.paths.vae_dir)
        self.models.preferred = self.settings["sd_model_checkpoint"] or None
        self.previews = Previews(self.paths.models_dir / "VAE-approx")
        self.networks = ExtraNetworks([self.paths.lora_dir], [self.paths.embeddings_dir], self.hashes,
                                      [self.paths.hypernetwork_dir])
        self.upscalers = UpscalerRegistry(self.paths.models_dir, lambda: torch.device(self.models.config.device),
                                          extra_dirs=options.model_dirs,
                                          tiles=self._tile_settings)
        self.faces = FaceRestorers(self.paths.models_dir, lambda: torch.device(self.models.config.device),
                                   gfpgan_dirs=[d for kind, d in options.model_dirs if kind == "GFPGAN"],
                                   codeformer_dirs=[d for kind, d in options.model_dirs if kind == "Codeformer"])
        self.interrogators = Interrogators(self.paths.models_dir, lambda: torch.device(self.models.config.device),
                                           [d for kind, d in options.model_dirs if kind == "CLIP"])
        self.engine = Engine(self.models, self.networks, self.upscalers, self.faces)
        self.scripts = ScriptRegistry(builtin_scripts(self))
        self.handlers = builtin_handlers()
        self.workers: Any = None  # the generation workers (modules.workers.ray_pool.RayWorkers) with --workers
        slots = self._start_workers() if options.workers else None
        # jobs and their results are kept in <data dir>/jobs.sqlite3: queued jobs run again after a restart
        self.queue = JobQueue(self._run_job, max_size=self.settings["queue_max_size"],
                              store=JobStore(self.paths.data_dir / JOBS_FILE,
                                             lambda: float(self.settings["jobs_keep_hours"])), slots=slots)
        if self.workers is not None:
            self.workers.on_ready = self.queue.wake
        self.model_status = ModelStatus()
        self.admin_users = frozenset(options.admin_users)
        self.launch_flags: dict[str, Any] = {}
        self.settings.on_change(self._setting_changed)
        self.extensions = ExtensionManager(self)
        self.extensions.load()  # last: an extension's setup may use every service

    # -- lifecycle
    def start(self) -> None:
        self.paths.remove_leftovers(self.settings.output_dirs())
        self.queue.start()
        if not self.options.skip_load_model:
            wanted = self.options.ckpt or self.settings["sd_model_checkpoint"] or None
            if self.options.ckpt:
                self.models.allow_path(Path(self.options.ckpt))
            self.models.preferred = wanted  # when it cannot be loaded, the next loadable checkpoint is used
            if wanted or self.registry.list():
                self.queue.submit(LoadModelJob(wanted))

    def stop(self) -> None:
        self.queue.stop()
        if self.workers is not None:
            self.workers.stop()

    # -- generation workers (--workers)
    def _start_workers(self) -> list[Slot]:
        """The generation workers' slots, started, and this process's slot for every other kind of job."""
        from modules.workers import WORKER_KINDS
        from modules.workers.ray_pool import RayWorkers, default_setup, parse_address

        assert self.options.workers is not None
        setup = default_setup(self.paths.data_dir, self.options.worker_models_dir, self.paths,
                              self.options.precision, self.options.worker_threads)
        self.workers = RayWorkers(parse_address(self.options.workers), self.options.worker_count, setup,
                                  self.settings.snapshot, self._checkpoint_file_name, self._save_worker_result)
        local = LocalSlot(self._run_job, kinds=frozenset(self.handlers.kinds()) - WORKER_KINDS)
        return [local, *self.workers.start()]

    def _checkpoint_file_name(self, name: str | None) -> str | None:
        """A job's checkpoint as the workers list it (its file name), when this process knows it."""
        info = self.registry.find(name) if name else None
        return info.name if info is not None else name

    def _save_worker_result(self, job: Job, result: JobResult) -> JobResult:
        """A worker's result as this process keeps it: a generation's images saved here, as the job asked."""
        from modules.engine import save_images_result
        from modules.job_types import ImagesResult, ModelResult

        spec = job.spec
        if isinstance(result, ImagesResult) and isinstance(spec, (Txt2ImgJob, Img2ImgJob)) and spec.output:
            return save_images_result(result, spec.output, spec.return_grid, job.control.warn)
        if isinstance(result, ModelResult) and result.title:
            self.model_status = ModelStatus("loaded", result.title, f"on {job.worker}")
            self._remember_worker_model(result.title)
        return result

    def _remember_worker_model(self, title: str) -> None:
        """After a worker loaded a model, ``sd_model_checkpoint`` names it, as after a load here (A1111 keeps the
        option naming the loaded checkpoint); not the demo model when nothing was chosen."""
        info = self.registry.find(title)
        if info is None or (is_demo(info) and not self.settings["sd_model_checkpoint"]):
            return
        self.models.preferred = info.title
        if self.settings["sd_model_checkpoint"] != info.title:
            try:
                self.settings.update({"sd_model_checkpoint": info.title})
            except Exception:  # saving the setting is a convenience; never fail a job for it
                log.warning("could not save sd_model_checkpoint", exc_info=True)

    def workers_model_action(self, action: str) -> list[str]:
        """With ``--workers``: every worker unloads (``unload``) or reloads (``reload``) its model too, as this process
        did; the workers that could not, one line each. Without workers: nothing to do."""
        return self.workers.model_action(action) if self.workers is not None else []

    def workers_status(self) -> list[dict[str, Any]]:
        """The generation workers and their state; without --workers, this process as the one worker."""
        if self.workers is not None:
            return list(self.workers.describe(self.queue.busy()))
        import os
        import socket

        job = self.queue.current
        cur = self.models.current
        return [{"id": "local", "state": "busy" if job is not None else "ready", "message": "",
                 "node": socket.gethostname(), "node_id": None, "pid": os.getpid(),
                 "device": self.models.config.device,
                 "model": cur.info.title if cur is not None and cur.info is not None else None,
                 "checkpoints": len(self.registry.list()), "job": job.id if job is not None else None,
                 "jobs_done": None, "busy_seconds": None, "restarts": 0}]

    # -- users
    def is_admin(self, user: str | None) -> bool:
        """Whether ``user`` may change settings and models: the single local user (``None``, no auth) may; with
        auth, the users named by ``--admin-users``, or every user when none is named."""
        return user is None or not self.admin_users or user in self.admin_users

    def require_admin(self, user: str | None) -> None:
        if not self.is_admin(user):
            raise Forbidden(ADMIN_ONLY)

    # -- settings-derived snapshots
    def _checkpoint_titles(self) -> list[str]:
        return [i.title for i in self.registry.list()]

    def _vae_names(self) -> list[str]:
        from modules.models.vae import list_vaes

        return [v.name for v in list_vaes(self.paths.vae_dir)]

    def limits(self) -> Limits:
        s = self.settings
        return Limits(upscalers=tuple(self.upscalers.names()),
                      max_size=s["max_image_size"], max_steps=s["max_steps"], max_batch_size=s["max_batch_size"],
                      max_n_iter=s["max_batch_count"])

    def output_options(self, kind: str = "txt2img", overrides: Mapping[str, Any] | None = None) -> OutputOptions:
        """The settings' output options for ``kind``, with per-job ``overrides`` (already validated) on top."""
        s = {**self.settings.snapshot(), **(overrides or {})}
        return OutputOptions(
            samples_dir=self._data_path(s[f"outdir_{kind}_samples"]),
            grids_dir=self._data_path(s[f"outdir_{kind}_grids"]),
            save_samples=s["samples_save"], save_grid=s["grid_save"], samples_format=s["samples_format"],
            grid_format=s["grid_format"], filename_pattern=s["samples_filename_pattern"] or "[seed]",
            save_to_dirs=s["save_to_dirs"], grid_save_to_dirs=s["grid_save_to_dirs"],
            directories_pattern=s["directories_filename_pattern"], max_prompt_words=s["directories_max_prompt_words"],
            save_txt=s["save_txt"],
            enable_pnginfo=s["enable_pnginfo"],
            grid_only_if_multiple=s["grid_only_if_multiple"], jpeg_quality=s["jpeg_quality"])

    def extras_output_dir(self) -> Path:
        """Where the Extras tab saves its images (``outdir_extras_samples``)."""
        return self._data_path(self.settings["outdir_extras_samples"])

    def _data_path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.paths.data_dir / path

    def selected_checkpoint(self) -> str | None:
        """The checkpoint shown as selected: the setting, else the resident model (the demo model, loaded because
        nothing else is there, is not written into the setting)."""
        wanted: str | None = self.settings["sd_model_checkpoint"] or None
        cur = self.models.current
        return wanted or (cur.info.title if cur is not None and cur.info is not None else None)

    def model_defaults(self, checkpoint: str | None = None) -> dict[str, Any]:
        """The generation defaults the checkpoint a job naming ``checkpoint`` would use carries in its metadata
        (the demo model's 128x128, ...); {} for most models."""
        info = self.models.expected(checkpoint)
        return read_defaults(info.path) if info is not None else {}

    def request_defaults(self, kind: str = "txt2img") -> dict[str, object]:
        """Request fields whose defaults come from the settings (A1111 keeps them there), from the table."""
        return setting_values(self.settings.get, kind)

    def preview_every(self) -> int:
        return self.settings["show_progress_every_n_steps"] if self.settings["live_previews_enable"] else 0

    # -- jobs
    def submit(self, spec: JobSpec, owner: str | None = None, tag: object = None, durable: bool = False,
               pin: str | None = None) -> Job:
        """Check ``spec`` (raising :class:`ValidationError` before anything is queued) and queue it; ``durable``
        (the jobs API): kept in the job store across restarts; ``pin``: the worker it must run on."""
        self.handlers.check(self, spec)
        return self.queue.submit(spec, owner, tag, durable, pin)

    def _tile_settings(self, kind: str) -> tuple[int, int]:
        size, overlap = TILE_SETTINGS.get(kind, DEFAULT_TILE_SETTINGS)
        return int(self.settings[size]), int(self.settings[overlap])

    def interrogate_options(self) -> tuple[tuple[str, object], ...]:
        """The interrogate settings as they are now (for a job to carry)."""
        snapshot = self.settings.snapshot()
        return tuple((k, snapshot[k]) for k in self.settings.options if k.startswith(("interrogate_", "deepbooru_")))

    def extras_tools(self, options: tuple[tuple[str, object], ...] = ()) -> ExtrasTools:
        """Extras' face restorers and captioners (with the interrogate settings ``options``)."""
        settings = dict(options)

        def deepbooru(image: Image.Image) -> str:
            return self.interrogators.interrogate(image, "deepdanbooru", settings)

        def blip(image: Image.Image) -> str:
            return self.interrogators.clip.caption(image, clip_options(settings))

        return ExtrasTools(self.faces, {"Deepbooru": deepbooru, "BLIP": blip})

    def interrogate_job(self, image: Image.Image, model: str) -> InterrogateJob:
        """The spec of an interrogation, with the interrogate settings as they are now."""
        return InterrogateJob(image, model, self.interrogate_options())

    def generation_job(self, req: GenerationRequest, save: bool = True,
                       output_overrides: Mapping[str, Any] | None = None, return_grid: bool | None = None,
                       script: ScriptCall | None = None, alwayson: tuple[ScriptCall, ...] = ()
                       ) -> Txt2ImgJob | Img2ImgJob:
        """The spec of a txt2img or img2img request: its checkpoint, output options and grid taken from the
        settings now, so that nothing changes once it is queued."""
        if req.checkpoint is None:
            req = req.replace(checkpoint=self.settings["sd_model_checkpoint"] or None)
        alwayson = self.extensions.with_hooks(alwayson)  # extensions' generation hooks run for every job
        grid = self.settings["return_grid"] if return_grid is None else return_grid
        if isinstance(req, Img2ImgRequest):
            out = self.output_options("img2img", output_overrides) if save else None
            return Img2ImgJob(req, out, self.preview_every(), grid, script, alwayson)
        out = self.output_options("txt2img", output_overrides) if save else None
        return Txt2ImgJob(req, out, self.preview_every(), grid, script, alwayson)

    def submit_txt2img(self, req: GenerationRequest, save: bool = True, owner: str | None = None,
                       output_overrides: Mapping[str, Any] | None = None) -> Job:
        return self.submit(self.generation_job(req, save, output_overrides), owner)

    def submit_img2img(self, req: Img2ImgRequest, save: bool = True, owner: str | None = None,
                       output_overrides: Mapping[str, Any] | None = None) -> Job:
        return self.submit(self.generation_job(req, save, output_overrides), owner)

    def _run_job(self, job: Job) -> JobResult:
        return self.handlers.run(self, job.spec, job.control)

    # -- the resident model
    def load_model(self, name: str | None) -> str | None:
        """Make ``name`` (or the first checkpoint) the resident model; its title. Runs in the worker."""
        self.model_status = ModelStatus("loading", name)
        try:
            parts = self.models.get(name)
        except BaseException as exc:
            self.model_status = ModelStatus("failed", name, str(exc))
            self._keep_resident_setting(name)
            raise
        self.remember_model()
        title = parts.info.title if parts.info else name
        self.model_status = ModelStatus("loaded", title)
        return title

    def remember_model(self, update_setting: bool = True) -> None:
        """Show the resident model's status; with ``update_setting`` (or when the setting names a checkpoint that
        cannot be loaded), keep ``sd_model_checkpoint`` naming it, as A1111 does (not after a job that asked for
        another checkpoint for itself)."""
        cur = self.models.current
        if cur is not None and cur.info is not None:
            self.model_status = ModelStatus("loaded", cur.info.title)
            if not (update_setting or self._default_unloadable()):
                return
            if is_demo(cur.info) and not self.settings["sd_model_checkpoint"]:
                return  # loaded because nothing else is there: a model added later is the default
            self.models.preferred = cur.info.title  # the default from now on: tried first when none is named
            if self.settings["sd_model_checkpoint"] != cur.info.title:
                try:
                    self.settings.update({"sd_model_checkpoint": cur.info.title})
                except Exception:  # saving the setting is a convenience; never fail a job for it
                    log.warning("could not save sd_model_checkpoint", exc_info=True)

    def _keep_resident_setting(self, failed: str | None) -> None:
        """After ``failed`` could not be loaded, ``sd_model_checkpoint`` names the resident model again (as A1111)."""
        cur = self.models.current
        if cur is None or cur.info is None or not failed or self.settings["sd_model_checkpoint"] != failed:
            return
        try:
            self.settings.update({"sd_model_checkpoint": cur.info.title})
        except Exception:  # the setting is a convenience; the load's own error is what the user sees
            log.warning("could not restore sd_model_checkpoint", exc_info=True)

    def _default_unloadable(self) -> bool:
        """Whether ``sd_model_checkpoint`` names a checkpoint that is gone or cannot be loaded."""
        wanted = self.settings["sd_model_checkpoint"]
        info = self.registry.find(wanted) if wanted else None
        return bool(wanted) and (info is None or self.registry.error_of(info) is not None)

    def model_unloaded(self) -> None:
        self.model_status = ModelStatus("unloaded", None)

    # -- settings
    def update_settings(self, changes: Mapping[str, Any], save: bool = True, user: str | None = None
                        ) -> SettingsChange:
        """Validate and apply ``changes`` together; the keys that changed and the jobs they need (a model switch,
        a reload), already queued, owned by ``user``.

        A user who is not an administrator gets :class:`Forbidden`; a checkpoint that does not exist is refused
        before anything changes.
        """
        self.require_admin(user)
        wanted = changes.get("sd_model_checkpoint")
        if wanted:
            info = self.registry.find(str(wanted))
            if info is None:
                raise ValidationError(f"sd_model_checkpoint: checkpoint not found: {wanted!r}",
                                      field="sd_model_checkpoint")
            changes = {**changes, "sd_model_checkpoint": info.title}
        changed = self.settings.update(dict(changes), save)
        jobs: list[Job] = []
        if wanted:  # asked for by name: load it unless it is the resident model (even when the setting was equal)
            cur = self.models.current
            title = self.settings["sd_model_checkpoint"]
            if not (cur is not None and cur.info is not None and title in cur.info.aliases()):
                jobs.append(self.queue.submit(LoadModelJob(title), user))
        if set(DEVICE_SETTINGS) & set(changed) and self.models.current is not None:
            jobs.append(self.queue.submit(DeviceConfigJob(self.settings["precision"],
                                                          self.settings["cross_attention_optimization"]), user))
        return SettingsChange(changed, jobs)

    def device_config(self, device: str) -> DeviceConfig:
        """How models are placed on ``device``: the settings, with the command line's precision first."""
        st = self.settings
        return DeviceConfig(device=device, precision=self.options.precision or st["precision"],
                            attention=st["cross_attention_optimization"], memory=st["memory_mode"],
                            medvram_sdxl=self.options.medvram_sdxl, no_half_vae=self.options.no_half_vae,
                            lowram=self.options.lowram,
                            fp8=st["fp8_storage"], channels_last=st["channels_last"], compile=st["torch_compile"])

    def _setting_changed(self, key: str, value: Any) -> None:
        """Changes that take effect without a job (the model switches and reloads go through the queue)."""
        if key == "sd_checkpoints_limit":
            self.models.set_cache_limit(value)
        elif key == "queue_max_size":
            self.queue.max_size = value
        elif key in DEVICE_SETTINGS and self.models.current is None:
            self.models.config = self.device_config(self.models.config.device)
