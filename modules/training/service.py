"""The training jobs' handlers and their checks at the edge.

Training runs on copies of the loaded model's UNet and text encoders in float32 (or under CUDA autocast when mixed
precision is asked), so the cached inference model is never changed; previews are made with the cached model and
the weights saved so far, through the same loaders a user's files go through.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from modules.errors import ValidationError
from modules.generation.control import JobControl
from modules.paths import folder_problem, under
from modules.requests import GenerationRequest, validate
from modules.training import dataset, schedule
from modules.training.embedding import clean_name, create_embedding
from modules.training.specs import (
    CLIP_GRAD_MODES,
    LATENT_SAMPLING,
    LR_SCHEDULERS,
    MIXED_PRECISION,
    CreateEmbeddingJob,
    TrainEmbeddingJob,
    TrainLoraJob,
    TrainOptions,
    TrainResult,
)
from modules.training.templates import read_template

if TYPE_CHECKING:
    from modules.app import App

log = logging.getLogger(__name__)


# -- checks ------------------------------------------------------------------------------------------------------
def _bad(field: str, message: str) -> ValidationError:
    return ValidationError(f"{field}: {message}", field=field)


def _check_range(field: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise _bad(field, f"must be between {low:g} and {high:g} (got {value:g})")


def data_folder(app: App, value: str, field: str) -> Path:
    text = str(value).strip()
    if "\0" in text:
        raise _bad(field, "contains a NUL character")
    if app.options.exposed and text:  # a remote user reaches only the data folder
        problem = folder_problem(text, app.paths.data_dir)
        if problem:
            raise _bad(field, f"{problem} while the server is reachable from other machines")
    return under(app.paths.data_dir, text) if text else Path("")


def log_root(app: App, opts: TrainOptions) -> Path:
    """The log folder: the option's, or A1111's ``textual_inversion`` when it is left empty."""
    return data_folder(app, opts.log_directory.strip() or "textual_inversion", "log_directory")


def check_options(app: App, opts: TrainOptions) -> list[Path]:
    """Every option in bounds and the dataset folder holding images; returns the image files."""
    for field, value in (("training_width", opts.training_width), ("training_height", opts.training_height)):
        if value % 8:
            raise _bad(field, f"must be a multiple of 8 (got {value})")
        _check_range(field, value, 64, 4096)
    _check_range("batch_size", opts.batch_size, 1, 256)
    _check_range("gradient_step", opts.gradient_step, 1, 1024)
    _check_range("steps", opts.steps, 1, 10_000_000)
    _check_range("epochs", opts.epochs, 0, 100_000)
    _check_range("tag_drop_out", opts.tag_drop_out, 0, 1)
    _check_range("caption_dropout", opts.caption_dropout, 0, 1)
    _check_range("noise_offset", opts.noise_offset, 0, 1)
    _check_range("min_snr_gamma", opts.min_snr_gamma, 0, 100)
    _check_range("lr_warmup_steps", opts.lr_warmup_steps, 0, 10_000_000)
    _check_range("seed", opts.seed, -1, 2**32 - 1)
    _check_range("create_image_every", opts.create_image_every, 0, 10_000_000)
    _check_range("save_every", opts.save_every, 0, 10_000_000)
    choices: tuple[tuple[str, str, tuple[str, ...]], ...] = (
        ("latent_sampling_method", opts.latent_sampling_method, LATENT_SAMPLING),
        ("clip_grad_mode", opts.clip_grad_mode, CLIP_GRAD_MODES), ("lr_scheduler", opts.lr_scheduler, LR_SCHEDULERS),
        ("mixed_precision", opts.mixed_precision, MIXED_PRECISION))
    for name, choice, allowed in choices:
        if choice not in allowed:
            raise _bad(name, f"must be one of {', '.join(allowed)} (got {choice!r})")
    schedule.parse_rates(opts.learn_rate, opts.steps)
    if opts.clip_grad_mode != "disabled":
        schedule.parse_rates(opts.clip_grad_value, opts.steps, field="clip_grad_value")
    read_template(opts.template_filename, app.paths.data_dir)
    try:
        re.compile(opts.filename_word_regex)
    except re.error as exc:
        raise _bad("dataset_filename_word_regex", f"not a valid regular expression ({exc})") from None
    data_folder(app, opts.log_directory, "log_directory")
    if opts.preview_from_txt2img and opts.create_image_every:  # the preview's own parameters, before hours of work
        p = opts.preview
        try:
            validate(GenerationRequest(prompt=p.prompt, negative_prompt=p.negative_prompt, steps=p.steps,
                                       sampler_name=p.sampler_name, cfg_scale=p.cfg_scale, seed=p.seed,
                                       width=p.width, height=p.height), app.limits())
        except ValidationError as exc:
            raise ValidationError(f"preview: {exc}", field=f"preview_{exc.field}" if exc.field else None) from None
    return dataset.list_images(data_folder(app, opts.data_root, "data_root"))


def with_settings(app: App, opts: TrainOptions) -> TrainOptions:
    """``opts`` with the Training settings of the moment (the loss log interval, the file-name caption rules)."""
    s = app.settings
    return replace(opts, write_csv_every=int(s["training_write_csv_every"]),
                   clip_skip=int(s["CLIP_stop_at_last_layers"]),
                   filename_word_regex=str(s["dataset_filename_word_regex"] or ""),
                   filename_join_string=str(s["dataset_filename_join_string"] or ""))


def check_create_embedding(app: App, spec: CreateEmbeddingJob) -> None:
    name = clean_name(spec.name)
    if not name:
        raise _bad("name", "the embedding needs a name (letters, digits, '.', '_', '-' or spaces)")
    _check_range("num_vectors_per_token", spec.num_vectors_per_token, 1, 75)
    for suffix in (".pt", ".safetensors"):
        path = app.paths.embeddings_dir / f"{name}{suffix}"
        if path.exists() and not spec.overwrite_old:
            raise _bad("name", f"file {path} already exists; tick overwrite or choose another name")


def check_train_embedding(app: App, spec: TrainEmbeddingJob) -> None:
    if not spec.embedding_name:
        raise _bad("embedding_name", "embedding not selected")
    app.networks.embeddings.refresh()
    if not any(e.name == spec.embedding_name for e in app.networks.embeddings.embeddings):
        raise _bad("embedding_name", f"no embedding named {spec.embedding_name!r}; create it first")
    check_options(app, spec.options)
    if not any("[name]" in line for line in read_template(spec.options.template_filename, app.paths.data_dir)):
        raise _bad("template_filename", f"{spec.options.template_filename} has no [name]: the embedding would not "
                   "be in any prompt; choose a template with [name] (e.g. style_filewords.txt)")


def lora_file(app: App, name: str) -> Path:
    return app.paths.lora_dir / f"{clean_name(name)}.safetensors"


def check_train_lora(app: App, spec: TrainLoraJob) -> None:
    if not clean_name(spec.name):
        raise _bad("name", "the LoRA needs a name (letters, digits, '.', '_', '-' or spaces)")
    check_options(app, spec.options)
    _check_range("rank", spec.rank, 1, 1024)
    _check_range("alpha", spec.alpha, 1e-6, 1e6)
    for field, lr in (("unet_lr", spec.unet_lr), ("text_encoder_lr", spec.text_encoder_lr)):
        if lr is not None:
            _check_range(field, lr, 1e-12, 1.0)
    if not (spec.train_unet or spec.train_text_encoder):
        raise _bad("train_unet", "train the UNet, the text encoder or both")
    target = lora_file(app, spec.name)
    if target.exists() and not spec.overwrite and not spec.resume:
        raise _bad("name", f"{target.name} already exists in {target.parent}; tick overwrite or choose another name")
    if spec.resume:
        resume_path(app, spec)


def resume_path(app: App, spec: TrainLoraJob) -> Path:
    """The file ``resume`` names: a path, a name in the LoRA folder, or a file saved in the log folder."""
    text = spec.resume.strip()
    direct = data_folder(app, text, "resume")
    candidates = [direct, app.paths.lora_dir / text, app.paths.lora_dir / f"{text}.safetensors"]
    logs = log_root(app, spec.options)
    if logs.is_dir():
        candidates += sorted(logs.glob(f"*/*/lora/{Path(text).name}"))
        candidates += sorted(logs.glob(f"*/*/lora/{Path(text).name}.safetensors"))
    for path in candidates:
        if path.is_file() and path.suffix == ".safetensors":
            return path
    raise _bad("resume", f"no LoRA file {text!r} (a path, a name in {app.paths.lora_dir}, or a file saved in the "
                         "log directory)")


# -- runs --------------------------------------------------------------------------------------------------------
def run_create_embedding(app: App, spec: CreateEmbeddingJob, control: JobControl) -> TrainResult:
    control.update(phase="creating embedding")
    parts = app.models.get(None)
    path = create_embedding(parts, app.paths.embeddings_dir, spec.name, spec.num_vectors_per_token,
                            spec.overwrite_old, spec.init_text)
    app.networks.embeddings.refresh()
    return TrainResult(info=f"create embedding filename: {path}", filename=str(path), name=path.stem,
                       kind="embedding")
