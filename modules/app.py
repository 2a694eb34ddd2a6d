"""The application object: services built once at start-up and passed down; a test builds its own."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.engine import Engine, JobOutput, OutputOptions
from modules.errors import ModelLoadError
from modules.hashing import HashCache
from modules.jobs import Job, JobQueue
from modules.models.manager import DeviceConfig, ModelManager, default_device
from modules.models.registry import CheckpointRegistry
from modules.paths import Paths
from modules.requests import GenerationRequest, Img2ImgRequest, Limits
from modules.settings import Settings, build_options

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
    registry = CheckpointRegistry(paths.ckpt_dirs, HashCache(paths.hash_cache_file))
    config = DeviceConfig(device=device or default_device(), precision=precision, attention=attention)
    return Engine(ModelManager(registry, config, cache_limit, vae_dir=paths.vae_dir))


@dataclass(frozen=True)
class StartOptions:
    """What the command line decides about the application (the rest lives in the settings)."""

    data_dir: Path | None = None
    models_dir: Path | None = None
    ckpt_dirs: tuple[Path, ...] = ()
    ckpt: str | None = None
    device: str | None = None
    precision: str | None = None  # overrides the setting when given on the command line
    skip_load_model: bool = False
    exposed: bool = False


@dataclass
class JobOptions:
    output: OutputOptions | None
    preview_every: int = 0
    api_prepared: Any = None  # set by the jobs API to render the result in the v1 shape
    api_parameters: Any = None


@dataclass
class ModelStatus:
    state: str = "idle"  # idle, loading, loaded, failed
    title: str | None = None
    message: str | None = None
    since: float = field(default_factory=time.time)


class App:
    def __init__(self, options: StartOptions = StartOptions()) -> None:
        quiet_libraries()
        self.options = options
        self.started = time.time()
        self.paths = Paths.create(options.data_dir, options.models_dir, options.ckpt_dirs)
        self.registry = CheckpointRegistry(self.paths.ckpt_dirs, HashCache(self.paths.hash_cache_file))
        self.settings = Settings(self.paths.config_file, build_options(self._checkpoint_titles, self._vae_names),
                                 options.exposed)
        precision = options.precision or self.settings["precision"]
        device_config = DeviceConfig(device=options.device or default_device(), precision=precision,
                                     attention=self.settings["cross_attention_optimization"])
        self.models = ModelManager(self.registry, device_config, self.settings["sd_checkpoints_limit"],
                                   vae_dir=self.paths.vae_dir)
        self.engine = Engine(self.models)
        self.queue = JobQueue(self._run_job, max_size=self.settings["queue_max_size"])
        self.model_status = ModelStatus()
        self.launch_flags: dict[str, Any] = {}
        self.settings.on_change(self._setting_changed)

    # -- lifecycle
    def start(self) -> None:
        self.queue.start()
        if not self.options.skip_load_model:
            wanted = self.options.ckpt or self.settings["sd_model_checkpoint"] or None
            if wanted or self.registry.list():
                self.queue.submit("load_model", wanted)

    def stop(self) -> None:
        self.queue.stop()

    # -- settings-derived snapshots
    def _checkpoint_titles(self) -> list[str]:
        return [i.title for i in self.registry.list()]

    def _vae_names(self) -> list[str]:
        from modules.models.vae import list_vaes

        return [v.name for v in list_vaes(self.paths.vae_dir)]

    def limits(self) -> Limits:
        s = self.settings
        return Limits(max_size=s["max_image_size"], max_steps=s["max_steps"], max_batch_size=s["max_batch_size"],
                      max_n_iter=s["max_batch_count"])

    def output_options(self, kind: str = "txt2img", save: bool = True,
                       overrides: dict[str, Any] | None = None) -> OutputOptions | None:
        """The settings' output options, with per-job ``overrides`` (already validated) on top."""
        if not save:
            return None
        s = {**self.settings.snapshot(), **(overrides or {})}
        return OutputOptions(
            samples_dir=self._data_path(s[f"outdir_{kind}_samples"]), grids_dir=self._data_path(s[f"outdir_{kind}_grids"]),
            save_samples=s["samples_save"], save_grid=s["grid_save"], samples_format=s["samples_format"],
            grid_format=s["grid_format"], filename_pattern=s["samples_filename_pattern"] or "[seed]",
            save_to_dirs=s["save_to_dirs"], enable_pnginfo=s["enable_pnginfo"],
            grid_only_if_multiple=s["grid_only_if_multiple"], jpeg_quality=s["jpeg_quality"])

    def _data_path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.paths.data_dir / path

    def request_defaults(self) -> dict[str, Any]:
        """Request fields whose defaults come from the settings (A1111 keeps them there)."""
        s = self.settings
        return {"clip_skip": s["CLIP_stop_at_last_layers"], "randn_source": s["randn_source"],
                "eta_noise_seed_delta": s["eta_noise_seed_delta"], "vae": s["sd_vae"]}

    def preview_every(self) -> int:
        return self.settings["show_progress_every_n_steps"] if self.settings["live_previews_enable"] else 0

    # -- jobs
    def submit_txt2img(self, req: GenerationRequest, save: bool = True, owner: str | None = None,
                       output_overrides: dict[str, Any] | None = None) -> Job:
        """Validate (raising before anything is queued) and queue a txt2img job."""
        from modules.requests import validate

        validate(req, self.limits())
        self.engine.limits = self.limits()
        if req.checkpoint is None:
            req = req.replace(checkpoint=self.settings["sd_model_checkpoint"] or None)
        out = self.output_options("txt2img", save, output_overrides)
        return self.queue.submit("txt2img", req, JobOptions(out, self.preview_every()), owner)

    def submit_img2img(self, req: Img2ImgRequest, save: bool = True, owner: str | None = None,
                       output_overrides: dict[str, Any] | None = None) -> Job:
        """Validate (raising before anything is queued) and queue an img2img or inpainting job."""
        from modules.requests import validate_img2img

        validate_img2img(req, self.limits())
        self.engine.limits = self.limits()
        if req.checkpoint is None:
            req = req.replace(checkpoint=self.settings["sd_model_checkpoint"] or None)
        out = self.output_options("img2img", save, output_overrides)
        return self.queue.submit("img2img", req, JobOptions(out, self.preview_every()), owner)

    def _run_job(self, job: Job) -> Any:
        if job.kind == "load_model":
            return self._load_model(job.payload)
        if job.kind == "txt2img":
            opts: JobOptions = job.options
            out: JobOutput = self.engine.txt2img(job.payload, job.control, opts.output, opts.preview_every)
            if job.payload.checkpoint is None:  # the default model was used: make the setting name it
                self._remember_model()
            return out
        if job.kind == "img2img":
            opts = job.options
            out = self.engine.img2img(job.payload, job.control, opts.output, opts.preview_every)
            if job.payload.checkpoint is None:
                self._remember_model()
            return out
        if job.kind == "callable":
            return job.payload(job)
        raise ValueError(f"unknown job kind {job.kind}")

    def _load_model(self, name: str | None) -> str:
        self.model_status = ModelStatus("loading", name)
        try:
            parts = self.models.get(name)
        except BaseException as exc:
            self.model_status = ModelStatus("failed", name, str(exc))
            raise
        self._remember_model()
        title = parts.info.title if parts.info else name
        self.model_status = ModelStatus("loaded", title)
        return title

    def _remember_model(self) -> None:
        """Keep ``sd_model_checkpoint`` naming the resident model, as A1111 does."""
        cur = self.models.current
        if cur is not None and cur.info is not None:
            self.model_status = ModelStatus("loaded", cur.info.title)
            if self.settings["sd_model_checkpoint"] != cur.info.title:
                try:
                    self.settings.update({"sd_model_checkpoint": cur.info.title})
                except Exception:  # saving the setting is a convenience; never fail a job for it
                    log.warning("could not save sd_model_checkpoint", exc_info=True)

    def _setting_changed(self, key: str, value: Any) -> None:
        if key == "sd_model_checkpoint":
            cur = self.models.current
            if value and not (cur is not None and cur.info is not None and value in cur.info.aliases()):
                if self.registry.find(value) is None:
                    raise ModelLoadError(f"checkpoint not found: {value!r}")
                self.queue.submit("load_model", value)
        elif key == "sd_checkpoints_limit":
            self.models.set_cache_limit(value)
        elif key == "queue_max_size":
            self.queue.max_size = value
        elif key in ("cross_attention_optimization", "precision"):
            cfg = self.models.config
            self.models.config = DeviceConfig(cfg.device, self.settings["precision"],
                                              self.settings["cross_attention_optimization"])
            if self.models.current is not None:
                self.queue.submit("callable", lambda job: self.models.reload())
