"""Typed options with defaults in sections, validated, persisted atomically to ``config.json`` (A1111's names).

A corrupt ``config.json`` (unreadable, not an object, nested too deeply) is moved aside and the defaults are used,
with a message; a value that is invalid (NaN, NUL, a wrong type...) is ignored with a warning. Unknown keys found in
the file (an A1111 config copied over) are kept when saving but otherwise ignored.

Where a value comes from matters for folders and file name patterns: a value in ``config.json`` is the user's own
choice and may point anywhere, while a change through :meth:`Settings.validate`/:meth:`Settings.update` (the API,
the UI, ``override_settings``) must stay inside the data folder (output folders) or name a plain file (patterns).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modules.errors import ValidationError
from modules.fileio import atomic_write_text, json_finite, load_json_object
from modules.outputs import pattern_problem
from modules.paths import folder_problem, name_problem

log = logging.getLogger(__name__)
Choices = Callable[[], list[str]] | tuple[str, ...] | None


@dataclass(frozen=True)
class Option:
    key: str
    default: Any
    label: str
    section: str
    kind: str  # bool, int, float, str, choice
    choices: Choices = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    locked_when_exposed: bool = False  # output paths: not changeable by remote users
    strict_choices: bool = True  # dynamic lists (checkpoints) may name something not present yet
    confine: str = ""  # "folder": stays in the data folder, "pattern": a file name, "name": a model name

    def choice_list(self) -> list[str]:
        if self.choices is None:
            return []
        return list(self.choices()) if callable(self.choices) else list(self.choices)

    def coerce(self, value: Any) -> Any:
        """The value converted to this option's type, or :class:`ValidationError` naming the option."""
        try:
            value = self._convert(value)
        except (TypeError, ValueError):
            raise ValidationError(f"{self.key}: expected {self.kind}, got {value!r}", field=self.key) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ValidationError(f"{self.key}: must be a finite number (got {value})", field=self.key)
        if isinstance(value, str) and "\0" in value:
            raise ValidationError(f"{self.key}: must not contain a NUL character", field=self.key)
        problem = name_problem(value) if self.confine == "name" and isinstance(value, str) else None
        if problem:
            raise ValidationError(f"{self.key}: {problem} (got {value!r})", field=self.key)
        if self.kind in ("int", "float"):
            if (self.minimum is not None and value < self.minimum) or (
                    self.maximum is not None and value > self.maximum):
                raise ValidationError(f"{self.key}: must be between {self.minimum:g} and {self.maximum:g}"
                                      f" (got {value})", field=self.key)
        if self.kind == "choice" and self.strict_choices:
            allowed = self.choice_list()
            if value not in allowed:
                raise ValidationError(f"{self.key}: must be one of {', '.join(allowed)} (got {value!r})",
                                      field=self.key)
        return value

    def _convert(self, value: Any) -> Any:
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise TypeError
        if self.kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if self.kind == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if value is None or isinstance(value, (dict, list)):
            raise TypeError
        return str(value)


_SD = "Stable Diffusion"
_SAVE = "Saving images/grids"
_PATHS = "Paths for saving"
_OPT = "Optimizations"
_PREVIEW = "Live previews"
_LIMITS = "API and limits"
_SAMPLER = "Sampler parameters"
_INFOTEXT = "Infotext"
_UPSCALING = "Upscaling"
_FACES = "Face restoration"
_INTERROGATE = "Interrogate"
_POSTPROCESSING = "Postprocessing"
_TRAINING = "Training"


def build_options(checkpoints: Callable[[], list[str]] = list, vaes: Callable[[], list[str]] = list
                  ) -> tuple[Option, ...]:
    """Every option, in section order. ``checkpoints``/``vaes`` list the current choices."""
    return (
        Option("sd_model_checkpoint", "", "Stable Diffusion checkpoint", _SD, "choice", checkpoints,
               strict_choices=False, confine="name"),
        Option("sd_checkpoints_limit", 1, "Maximum number of checkpoints loaded at the same time", _SD, "int",
               minimum=1, maximum=10, step=1),
        Option("sd_vae", "Automatic", "SD VAE", _SD, "choice", lambda: ["Automatic", "None", *vaes()]),
        Option("CLIP_stop_at_last_layers", 1, "Clip skip", _SD, "int", minimum=1, maximum=12, step=1),
        Option("randn_source", "GPU", "Random number generator source (NV: an NVIDIA GPU's numbers on any device)",
               _SD, "choice", ("GPU", "CPU", "NV")),
        Option("eta_noise_seed_delta", 0, "Eta noise seed delta (ENSD)", _SAMPLER, "int", minimum=0,
               maximum=2**31 - 1, step=1),
        Option("eta_ddim", 0.0, "Eta for DDIM", _SAMPLER, "float", minimum=0, maximum=1, step=0.01),
        Option("eta_ancestral", 1.0, "Eta for k-diffusion samplers", _SAMPLER, "float", minimum=0, maximum=1,
               step=0.01),
        Option("s_min_uncond", 0.0, "Negative Guidance minimum sigma (skip the negative prompt on alternate steps "
               "below it)", _SAMPLER, "float", minimum=0, maximum=15, step=0.01),
        Option("sigma_min", 0.0, "sigma min (0 = the model's)", _SAMPLER, "float", minimum=0, maximum=1000,
               step=0.01),
        Option("sigma_max", 0.0, "sigma max (0 = the model's)", _SAMPLER, "float", minimum=0, maximum=1000,
               step=0.01),
        Option("rho", 0.0, "rho (0 = the schedule's default)", _SAMPLER, "float", minimum=0, maximum=100, step=0.01),
        Option("beta_dist_alpha", 0.6, "Beta scheduler - alpha", _SAMPLER, "float", minimum=0.01, maximum=1,
               step=0.01),
        Option("beta_dist_beta", 0.6, "Beta scheduler - beta", _SAMPLER, "float", minimum=0.01, maximum=1,
               step=0.01),
        Option("use_old_karras_scheduler_sigmas", False, "Use old karras scheduler sigmas (0.1 to 10)", _SAMPLER,
               "bool"),
        Option("inpainting_mask_weight", 1.0, "Inpainting conditioning mask strength", _SAMPLER, "float", minimum=0,
               maximum=1, step=0.01),
        Option("hires_fix_refiner_pass", "second pass", "Hires fix: which pass to enable refiner for", _SAMPLER,
               "choice", ("first pass", "second pass", "both passes")),
        Option("always_discard_next_to_last_sigma", False, "Always discard next-to-last sigma", _SAMPLER, "bool"),
        Option("sgm_noise_multiplier", False, "SGM noise multiplier (match the initial noise to the official SDXL "
               "implementation)", _SAMPLER, "bool"),
        Option("infotext_styles", "Apply if any", "Infer styles from prompts of pasted infotext (Ignore: keep the "
               "prompt; Apply: take the styles out and select them; Discard: take them out only; Apply if any: "
               "Apply when some are found)", _INFOTEXT, "choice", ("Ignore", "Apply", "Discard", "Apply if any")),
        Option("ESRGAN_tile", 192, "Tile size for model upscalers (0 = no tiling)", _UPSCALING, "int", minimum=0,
               maximum=512, step=16),
        Option("ESRGAN_tile_overlap", 8, "Tile overlap for model upscalers (low values = visible seams)", _UPSCALING,
               "int", minimum=0, maximum=48, step=1),
        Option("SWIN_tile", 192, "Tile size for all SwinIR", _UPSCALING, "int", minimum=16, maximum=512, step=16),
        Option("SWIN_tile_overlap", 8, "Tile overlap, in pixels for SwinIR (low values = visible seam)", _UPSCALING,
               "int", minimum=0, maximum=48, step=1),
        Option("SCUNET_tile", 256, "Tile size for SCUNET upscalers (0 = no tiling)", _UPSCALING, "int", minimum=0,
               maximum=512, step=16),
        Option("SCUNET_tile_overlap", 8, "Tile overlap for SCUNET upscalers (low values = visible seam)",
               _UPSCALING, "int", minimum=0, maximum=64, step=1),
        Option("DAT_tile", 192, "Tile size for DAT upscalers (0 = no tiling)", _UPSCALING, "int", minimum=0,
               maximum=512, step=16),
        Option("DAT_tile_overlap", 8, "Tile overlap for DAT upscalers (low values = visible seam)", _UPSCALING,
               "int", minimum=0, maximum=48, step=1),
        Option("face_restoration", False, "Restore faces (uses a face restoration model on generation results)",
               _FACES, "bool"),
        Option("face_restoration_model", "CodeFormer", "Face restoration model", _FACES, "choice",
               ("CodeFormer", "GFPGAN")),
        Option("code_former_weight", 0.5, "CodeFormer weight (0 = maximum effect; 1 = minimum effect)", _FACES,
               "float", minimum=0, maximum=1, step=0.01),
        Option("interrogate_keep_models_in_memory", False, "Keep models in VRAM", _INTERROGATE, "bool"),
        Option("interrogate_return_ranks", False, "Include ranks of model tags matches in results (booru only)",
               _INTERROGATE, "bool"),
        Option("interrogate_clip_num_beams", 1, "BLIP: num_beams", _INTERROGATE, "int", minimum=1, maximum=16,
               step=1),
        Option("interrogate_clip_min_length", 24, "BLIP: minimum description length", _INTERROGATE, "int",
               minimum=1, maximum=128, step=1),
        Option("interrogate_clip_max_length", 48, "BLIP: maximum description length", _INTERROGATE, "int",
               minimum=1, maximum=256, step=1),
        Option("interrogate_clip_dict_limit", 1500, "CLIP: maximum number of lines in text file (0 = No limit)",
               _INTERROGATE, "int", minimum=0, maximum=1000000, step=1),
        Option("interrogate_deepbooru_score_threshold", 0.5, "deepbooru: score threshold", _INTERROGATE, "float",
               minimum=0, maximum=1, step=0.01),
        Option("deepbooru_sort_alpha", True, "deepbooru: sort tags alphabetically (if not: sort by score)",
               _INTERROGATE, "bool"),
        Option("deepbooru_use_spaces", True, "deepbooru: use spaces in tags (if not: use underscores)", _INTERROGATE,
               "bool"),
        Option("deepbooru_escape", True, "deepbooru: escape (\\) brackets (so they are used as literal brackets and "
               "not for emphasis)", _INTERROGATE, "bool"),
        Option("deepbooru_filter_tags", "", "deepbooru: filter out those tags (separate by comma)", _INTERROGATE,
               "str"),
        Option("postprocessing_existing_caption_action", "Ignore", "Action for existing captions (when generating "
               "captions; Ignore = use generated; Keep = use original; Prepend/Append = combine both)",
               _POSTPROCESSING, "choice", ("Ignore", "Keep", "Prepend", "Append")),
        Option("training_write_csv_every", 500, "Save a csv containing the loss to log directory every N steps, 0 to "
               "disable", _TRAINING, "int", minimum=0, maximum=1000000, step=1),
        Option("dataset_filename_word_regex", "", "Filename word regex", _TRAINING, "str"),
        Option("dataset_filename_join_string", " ", "Filename join string", _TRAINING, "str"),
        Option("vae_tiling", "Automatic", "VAE tiling: decode and encode large images in overlapping tiles "
               "(Automatic: when the whole image would not fit in memory)", _OPT, "choice",
               ("Automatic", "Always", "Never")),
        Option("cross_attention_optimization", "Automatic", "Cross attention optimization (Doggettx: attention in "
               "slices, for small cards)", _OPT, "choice", ("Automatic", "xformers", "sdp", "Doggettx")),
        Option("token_merging_ratio", 0.0, "Token merging ratio (0 = off; merges similar tokens in the "
               "self-attention of the largest blocks: faster at large sizes, slightly different images)", _OPT,
               "float", minimum=0.0, maximum=0.9, step=0.1),
        Option("token_merging_ratio_img2img", 0.0, "Token merging ratio for img2img (only applies if non-zero and "
               "overrides above)", _OPT, "float", minimum=0.0, maximum=0.9, step=0.1),
        Option("token_merging_ratio_hr", 0.0, "Token merging ratio for high-res pass (only applies if non-zero and "
               "overrides above)", _OPT, "float", minimum=0.0, maximum=0.9, step=0.1),
        Option("memory_mode", "Automatic", "GPU memory mode (medvram: one part of the model on the GPU at a time; "
               "lowvram: one block at a time; Automatic: from the free memory, and once more in a lower mode after "
               "running out of memory)", _OPT, "choice", ("Automatic", "normal", "medvram", "lowvram")),
        Option("fp8_storage", "Disable", "FP8 weight (keep the UNet's weights in 8 bits; computes at the model's "
               "precision)", _OPT, "choice", ("Disable", "Enable for SDXL", "Enable")),
        Option("channels_last", False, "Channels-last memory format for the UNet (--opt-channelslast)", _OPT, "bool"),
        Option("torch_compile", False, "Compile the UNet with torch.compile (slow first image at each size, then "
               "faster; only in the normal memory mode)", _OPT, "bool"),
        Option("precision", "auto", "Precision (auto: float16 on CUDA, float32 on CPU)", _OPT, "choice",
               ("auto", "fp16", "bf16", "fp32")),
        Option("samples_save", True, "Always save all generated images", _SAVE, "bool"),
        Option("samples_format", "png", "File format for images", _SAVE, "choice", ("png", "jpg", "webp")),
        Option("samples_filename_pattern", "", "Images filename pattern (empty: [seed])", _SAVE, "str",
               confine="pattern"),
        Option("save_to_dirs", True, "Save images to a subdirectory", _SAVE, "bool"),
        Option("grid_save_to_dirs", True, "Save grids to a subdirectory", _SAVE, "bool"),
        Option("directories_filename_pattern", "[date]", "Directory name pattern (the subdirectory; parts "
               "separated by /; empty: [prompt_words])", _SAVE, "str"),
        Option("directories_max_prompt_words", 8, "Max prompt words for [prompt_words] pattern", _SAVE, "int",
               minimum=1, maximum=20, step=1),
        Option("grid_save", True, "Always save all generated image grids", _SAVE, "bool"),
        Option("grid_format", "png", "File format for grids", _SAVE, "choice", ("png", "jpg", "webp")),
        Option("grid_only_if_multiple", True, "Do not save grids consisting of one picture", _SAVE, "bool"),
        Option("return_grid", True, "Show grid in gallery and return it from the API", _SAVE, "bool"),
        Option("enable_pnginfo", True, "Save text information about generation parameters as chunks to png "
               "files", _SAVE, "bool"),
        Option("save_txt", False, "Create a text file with infotext next to every generated image", _SAVE, "bool"),
        Option("use_original_name_batch", True, "Use original name for output filename during batch process in "
               "extras tab", _SAVE, "bool"),
        Option("jpeg_quality", 80, "Quality for saved jpeg and webp images", _SAVE, "int", minimum=1, maximum=100,
               step=1),
        Option("save_selected_only", True, "When using 'Save' button, only save a single selected image", _SAVE,
               "bool"),
        Option("save_write_log_csv", True, "Write log.csv when saving images using 'Save' button", _SAVE, "bool"),
        Option("use_save_to_dirs_for_ui", False, "When using \"Save\" button, save images to a subdirectory",
               _SAVE, "bool"),
        Option("grid_zip_filename_pattern", "", "Archive filename pattern (empty: [datetime]_[[model_name]]_[seed]-"
               "[seed_last])", _SAVE, "str", confine="pattern"),
        Option("export_for_4chan", True, "Save copy of large images as JPG (Save button)", _SAVE, "bool"),
        Option("img_downscale_threshold", 4.0, "File size limit for the above option, MB", _SAVE, "float",
               minimum=0.0, maximum=1000.0, step=0.1),
        Option("target_side_length", 4000, "Width/height limit for the above option, in pixels", _SAVE, "int",
               minimum=64, maximum=65536, step=1),
        Option("open_dir_button_choice", "Subdirectory", "What directory the [\U0001f4c2] button opens", _SAVE,
               "choice", ("Output Root", "Subdirectory", "Subdirectory (even temp dir)")),
        Option("send_size", True, "Send size when sending prompt or image to another interface", _SAVE, "bool"),
        Option("outdir_txt2img_samples", "outputs/txt2img-images", "Output directory for txt2img images", _PATHS,
               "str", locked_when_exposed=True, confine="folder"),
        Option("outdir_txt2img_grids", "outputs/txt2img-grids", "Output directory for txt2img grids", _PATHS,
               "str", locked_when_exposed=True, confine="folder"),
        Option("outdir_img2img_samples", "outputs/img2img-images", "Output directory for img2img images",
               _PATHS, "str", locked_when_exposed=True, confine="folder"),
        Option("outdir_img2img_grids", "outputs/img2img-grids", "Output directory for img2img grids", _PATHS,
               "str", locked_when_exposed=True, confine="folder"),
        Option("outdir_extras_samples", "outputs/extras-images", "Output directory for images from extras tab",
               _PATHS, "str", locked_when_exposed=True, confine="folder"),
        Option("outdir_save", "log/images", "Directory for saving images using the Save button", _PATHS, "str",
               locked_when_exposed=True, confine="folder"),
        Option("live_previews_enable", True, "Show live previews of the created image", _PREVIEW, "bool"),
        Option("show_progress_type", "Approx NN", "Live preview method (TAESD: its decoder files in "
               "models/VAE-approx; Approx NN shows Approx cheap here)", _PREVIEW, "choice",
               ("Full", "Approx NN", "Approx cheap", "TAESD")),
        Option("show_progress_every_n_steps", 5, "Live preview display period (sampling steps)", _PREVIEW, "int",
               minimum=1, maximum=32, step=1),
        Option("max_image_size", 2048, "Largest width or height a request may ask for", _LIMITS, "int",
               minimum=256, maximum=8192, step=64),
        Option("max_steps", 150, "Most sampling steps a request may ask for", _LIMITS, "int", minimum=10,
               maximum=1000, step=1),
        Option("max_batch_size", 8, "Largest batch size", _LIMITS, "int", minimum=1, maximum=64, step=1),
        Option("max_batch_count", 100, "Largest batch count", _LIMITS, "int", minimum=1, maximum=1000, step=1),
        Option("queue_max_size", 64, "Most jobs waiting in the queue", _LIMITS, "int", minimum=1, maximum=10000,
               step=1),
        Option("jobs_keep_hours", 24.0, "Hours a finished job stays readable (GET /sdapi/v2/jobs/{id}), also after a "
               "restart (0 = not kept across restarts)", _LIMITS, "float", minimum=0, maximum=8760, step=1),
    )


class Settings:
    """The live option values; thread-safe. ``on_change(key, value)`` hooks apply changes without a restart."""

    def __init__(self, path: Path | None, options: Iterable[Option], exposed: bool = False,
                 root: Path | None = None) -> None:
        self.path = path
        self.root = (root or (path.parent if path is not None else Path.cwd())).resolve()  # the data folder
        self.options = {o.key: o for o in options}
        self.exposed = exposed
        self._lock = threading.RLock()
        self._values: dict[str, Any] = {k: o.default for k, o in self.options.items()}
        self._foreign: dict[str, Any] = {}
        self._hooks: list[Callable[[str, Any], None]] = []
        self.load_message: str | None = None
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        if not path.exists():
            return
        try:
            data = load_json_object(path)
        except (OSError, ValueError) as exc:
            aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            try:
                path.replace(aside)
            except OSError:
                aside = path
            self.load_message = f"{path.name} could not be read ({exc}); it was moved to {aside.name} and " \
                                f"the default settings are used"
            log.warning(self.load_message)
            return
        for key, value in data.items():
            option = self.options.get(key)
            if option is None and not json_finite(value):
                log.warning("ignoring the saved value of %s: it holds NaN or an infinity", key)
            elif option is None:
                self._foreign[key] = value
            else:
                self._load_value(option, value)

    def _load_value(self, option: Option, value: Any) -> None:
        """A value from the file: the user's own, so folders and patterns may point anywhere (but not hold NUL)."""
        try:
            self._values[option.key] = option.coerce(value)
        except ValidationError as exc:
            log.warning("ignoring the saved value of %s: %s", option.key, exc)

    def on_change(self, hook: Callable[[str, Any], None]) -> None:
        self._hooks.append(hook)

    def add_options(self, options: Iterable[Option]) -> None:
        """More options after start-up (an extension's); the values saved in ``config.json`` are taken up. A key
        that is already an option refuses them all."""
        added = list(options)
        keys = [o.key for o in added]
        with self._lock:
            taken = next((k for i, k in enumerate(keys) if k in self.options or k in keys[:i]), None)
            if taken is not None:
                raise ValueError(f"option {taken!r} already exists")
            for option in added:
                self.options[option.key] = option
                self._values[option.key] = option.default
                if option.key in self._foreign:
                    self._load_value(option, self._foreign.pop(option.key))

    def stored(self, key: str, default: Any = None) -> Any:
        """A value kept in ``config.json`` that is not an option (A1111's hidden ones, e.g. ``disabled_extensions``)."""
        with self._lock:
            return json.loads(json.dumps(self._foreign.get(key, default)))

    def store(self, values: dict[str, Any]) -> None:
        """Keep ``values`` (JSON values; no option keys) in ``config.json`` and save."""
        with self._lock:
            if any(key in self.options for key in values):
                raise ValueError("store() keeps values that are not options")
            self._foreign.update(json.loads(json.dumps(values, allow_nan=False)))
            self.save()

    def get(self, key: str) -> Any:
        with self._lock:
            return self._values[key]

    def __getitem__(self, key: str) -> Any:
        return self.get(key)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._values)

    def validate(self, changes: dict[str, Any]) -> dict[str, Any]:
        """The coerced values of ``changes``; raises on the first unknown key or invalid value."""
        out = {}
        for key, value in changes.items():
            option = self.options.get(key)
            if option is None:
                raise ValidationError(f"unknown option {key!r}", field=key)
            coerced = option.coerce(value)
            if option.locked_when_exposed and self.exposed and coerced != self.get(key):
                raise ValidationError(f"{key} cannot be changed while the server is reachable from the network",
                                      field=key)
            self._check_confined(option, coerced)
            out[key] = coerced
        return out

    def _check_confined(self, option: Option, value: Any) -> None:
        """Refuse a requested folder outside the data folder or a pattern naming anything but a file; the current
        value and the default are kept as they are (the current one may come from the user's config.json)."""
        if not option.confine or not isinstance(value, str) or value in (self.get(option.key), option.default):
            return
        if option.confine == "folder":
            problem = folder_problem(value, self.root)
            hint = "; another folder can be set in config.json while the server is stopped"
        else:
            problem = pattern_problem(value) if option.confine == "pattern" else None
            hint = ""
        if problem:
            raise ValidationError(f"{option.key}: {problem} (got {value!r}){hint}", field=option.key)

    def update(self, changes: dict[str, Any], save: bool = True) -> list[str]:
        """Validate all of ``changes``, then apply them together and save; returns the keys that changed."""
        with self._lock:
            coerced = self.validate(changes)
            changed = [k for k, v in coerced.items() if self._values[k] != v]
            self._values.update(coerced)
            if save:
                self.save()
        for key in changed:
            for hook in self._hooks:
                hook(key, coerced[key])
        return changed

    def reset(self) -> list[str]:
        return self.update({k: o.default for k, o in self.options.items()
                            if not (o.locked_when_exposed and self.exposed)})

    def save(self) -> None:
        if self.path is None:
            return
        with self._lock:
            data = {**self._foreign, **self._values}
            atomic_write_text(self.path, json.dumps(data, indent=4, ensure_ascii=False))

    def output_dirs(self) -> list[str]:
        """The current values of the output folder options (``outdir_*``)."""
        with self._lock:
            return [str(self._values[k]) for k, o in self.options.items() if o.confine == "folder"]

    def sections(self) -> dict[str, list[Option]]:
        out: dict[str, list[Option]] = {}
        for option in self.options.values():
            out.setdefault(option.section, []).append(option)
        return out
