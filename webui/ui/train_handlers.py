"""The Train tab's pure parts: the job specs built from the form's values, the tag a trained network is used with,
and the views of a running or finished training (progress line, loss plot data, files saved, final text)."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import gradio as gr
import pandas as pd  # type: ignore[import-untyped]
from PIL import Image

from modules.app import ADMIN_ONLY, App
from modules.errors import ValidationError, WebUIError
from modules.jobs import Job, JobState
from modules.training.service import with_settings
from modules.training.specs import (
    CreateEmbeddingJob,
    PreviewOptions,
    TrainEmbeddingJob,
    TrainLoraJob,
    TrainOptions,
    TrainResult,
)
from modules.training.templates import list_templates
from webui.ui.common import error_html, escape_lines, format_eta, progress_html, user_message, warning_html
from webui.ui.txt2img_handlers import request_user

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5

EMBEDDING, LORA = "Embedding", "LoRA"
KINDS = (EMBEDDING, LORA)
MAX_PLOT_POINTS = 1000
SAVED_SUFFIXES = (".safetensors", ".pt", ".bin", ".ckpt", ".png", ".jpg", ".jpeg", ".webp")

# The form's fields that become TrainOptions (and PreviewOptions, prefixed ``preview_``), then the LoRA's own; the
# other options come from the Training settings when the job is made.
OPTION_FIELDS = ("data_root", "log_directory", "template_filename", "training_width", "training_height", "varsize",
                 "buckets", "steps", "epochs", "batch_size", "gradient_step", "learn_rate", "lr_scheduler",
                 "lr_warmup_steps", "clip_grad_mode", "clip_grad_value", "shuffle_tags", "tag_drop_out", "flip",
                 "noise_offset", "min_snr_gamma", "latent_sampling_method", "use_weight", "mixed_precision",
                 "gradient_checkpointing", "seed", "create_image_every", "save_every",
                 "save_image_with_stored_embedding", "preview_from_txt2img")
PREVIEW_FIELDS = tuple(f"preview_{f}" for f in PreviewOptions.__dataclass_fields__)
LORA_FIELDS = ("lora_name", "rank", "alpha", "train_unet", "train_text_encoder", "unet_lr", "text_encoder_lr",
               "unet_targets", "text_targets", "lora_overwrite", "resume")
FIELDS = ("train_kind", "embedding_name", *LORA_FIELDS, *OPTION_FIELDS, *PREVIEW_FIELDS)
KIND_DEFAULTS = ("learn_rate", "log_directory", "template_filename")  # per kind, from the specs' defaults


def kind_defaults(kind: str) -> dict[str, Any]:
    """The options whose defaults differ between an embedding and a LoRA (learning rate, log folder, template)."""
    options = TrainLoraJob("").options if kind == LORA else TrainEmbeddingJob("").options
    return {name: getattr(options, name) for name in KIND_DEFAULTS}


def default_values() -> dict[str, Any]:
    """The form's initial values, in :data:`FIELDS` order: the specs' defaults (A1111's, for an embedding)."""
    lora, options, preview = TrainLoraJob(""), TrainOptions(), PreviewOptions()
    values: dict[str, Any] = {name: getattr(lora, name, None) for name in LORA_FIELDS}
    values.update(train_kind=EMBEDDING, embedding_name=None, lora_name="", lora_overwrite=lora.overwrite, unet_lr="",
                  text_encoder_lr="", unet_targets=list(lora.unet_targets), text_targets=list(lora.text_targets))
    values.update({name: getattr(options, name) for name in OPTION_FIELDS})
    values.update({f"preview_{name}": getattr(preview, name) for name in PreviewOptions.__dataclass_fields__})
    return {name: values[name] for name in FIELDS}


def _number(values: Mapping[str, Any], name: str, label: str) -> float:
    """A form number; a cleared or non-numeric field is a message naming it."""
    value = values.get(name)
    if isinstance(value, str):
        value = value.strip()
    if value is None or value == "":
        raise ValidationError(f"{label}: enter a number", field=name)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{label}: {value!r} is not a number", field=name) from None


def _int(values: Mapping[str, Any], name: str, label: str) -> int:
    number = _number(values, name, label)
    if number != int(number):
        raise ValidationError(f"{label}: enter a whole number", field=name)
    return int(number)


def _optional_rate(values: Mapping[str, Any], name: str, label: str) -> float | None:
    """A per-part learning rate: blank means the common one."""
    return _number(values, name, label) if _text(values, name) else None


def _text(values: Mapping[str, Any], name: str, required: str = "") -> str:
    """A text field, stripped; with ``required``, a blank one is that message."""
    text = str(values.get(name) or "").strip()
    if required and not text:
        raise ValidationError(required, field=name)
    return text


def preview_options(values: Mapping[str, Any]) -> PreviewOptions:
    """The preview image's parameters (used when "Read parameters ... when making previews" is on)."""
    if not values.get("preview_from_txt2img"):
        return PreviewOptions()
    return PreviewOptions(
        prompt=_text(values, "preview_prompt"), negative_prompt=_text(values, "preview_negative_prompt"),
        steps=_int(values, "preview_steps", "Preview sampling steps"),
        sampler_name=_text(values, "preview_sampler_name") or PreviewOptions.sampler_name,
        cfg_scale=_number(values, "preview_cfg_scale", "Preview CFG scale"),
        seed=_int(values, "preview_seed", "Preview seed"),
        width=_int(values, "preview_width", "Preview width"), height=_int(values, "preview_height", "Preview height"))


def train_options(values: Mapping[str, Any], default: TrainOptions | None = None) -> TrainOptions:
    """The options both trainings share, from the form (the dataset directory is required); ``default`` gives
    what a blank log directory or an unset choice falls back to."""
    ints = {"training_width": "Width", "training_height": "Height", "steps": "Max steps", "epochs": "Epochs",
            "batch_size": "Batch size", "gradient_step": "Gradient accumulation steps",
            "lr_warmup_steps": "Warm-up steps", "seed": "Seed",
            "create_image_every": "Save an image to log directory every N steps",
            "save_every": "Save a copy to log directory every N steps"}
    floats = {"tag_drop_out": "Drop out tags", "noise_offset": "Noise offset", "min_snr_gamma": "Min-SNR gamma"}
    flags = ("varsize", "buckets", "shuffle_tags", "flip", "use_weight", "gradient_checkpointing",
             "save_image_with_stored_embedding", "preview_from_txt2img")
    choices = ("lr_scheduler", "latent_sampling_method", "clip_grad_mode", "mixed_precision")
    default = default or TrainOptions()
    fields: dict[str, Any] = {name: _int(values, name, label) for name, label in ints.items()}
    fields.update({name: _number(values, name, label) for name, label in floats.items()})
    fields.update({name: bool(values.get(name)) for name in flags})
    fields.update({name: str(values.get(name) or getattr(default, name)) for name in choices})
    return TrainOptions(
        data_root=_text(values, "data_root", "Dataset directory: enter the folder of training images"),
        log_directory=_text(values, "log_directory") or default.log_directory,
        template_filename=_text(values, "template_filename", "Prompt template: choose a template file"),
        learn_rate=_text(values, "learn_rate", "Learning rate: enter a rate, e.g. 0.005 or 0.005:100, 1e-5"),
        clip_grad_value=_text(values, "clip_grad_value") or default.clip_grad_value,
        preview=preview_options(values), **fields)


def train_job(values: Mapping[str, Any]) -> TrainEmbeddingJob | TrainLoraJob:
    """The job the Train sub-tab describes: an embedding's or a LoRA's, by the "Train" radio."""
    if values.get("train_kind") == LORA:
        name = _text(values, "lora_name", "LoRA name: enter a name for the new LoRA")
        options = train_options(values, TrainLoraJob(name).options)
        return TrainLoraJob(
            name=name, options=options, rank=_int(values, "rank", "Rank"), alpha=_number(values, "alpha", "Alpha"),
            train_unet=bool(values.get("train_unet")), train_text_encoder=bool(values.get("train_text_encoder")),
            unet_lr=_optional_rate(values, "unet_lr", "UNet learning rate"),
            text_encoder_lr=_optional_rate(values, "text_encoder_lr", "Text encoder learning rate"),
            unet_targets=tuple(values.get("unet_targets") or ()),
            text_targets=tuple(values.get("text_targets") or ()),
            overwrite=bool(values.get("lora_overwrite")), resume=_text(values, "resume"))
    name = _text(values, "embedding_name", "Embedding: choose the embedding to train (or create one first)")
    return TrainEmbeddingJob(embedding_name=name, options=train_options(values))


def create_embedding_job(name: Any, num_vectors_per_token: Any, overwrite_old: Any, init_text: Any
                         ) -> CreateEmbeddingJob:
    """A1111's "Create embedding" from the sub-tab's fields."""
    values = {"name": name, "nvpt": num_vectors_per_token}
    return CreateEmbeddingJob(name=_text(values, "name", "Name: enter a name for the new embedding"),
                              num_vectors_per_token=_int(values, "nvpt", "Number of vectors per token"),
                              overwrite_old=bool(overwrite_old), init_text=str(init_text or ""))


# -- using what was trained

def network_tag(kind: str, name: str) -> str:
    """What goes in a prompt to use it: ``<lora:NAME:1>`` for a LoRA, the embedding's name for an embedding."""
    if not name:
        return ""
    return f"<lora:{name}:1>" if kind.lower() == "lora" else name


def insert_tag(prompt: str, tag: str, separator: str = " ") -> str:
    """``prompt`` with ``tag`` added at its end (left as it is when the tag is already there)."""
    prompt = prompt or ""
    if not tag or tag in prompt:
        return prompt
    return prompt + separator + tag if prompt.strip() else tag


# -- views of a training

def loss_frame(losses: Iterable[tuple[int, float]], max_points: int = MAX_PLOT_POINTS) -> pd.DataFrame:
    """The loss plot's data (columns ``step``, ``loss``), thinned to about ``max_points`` rows, the last kept."""
    rows = list(losses)
    if len(rows) > max_points:
        stride = -(-len(rows) // max_points)
        rows = rows[::stride] + ([rows[-1]] if (len(rows) - 1) % stride else [])
    return pd.DataFrame({"step": [int(s) for s, _ in rows], "loss": [float(v) for _, v in rows]})


def saved_files(textinfo: str, known: Sequence[str] = ()) -> list[str]:
    """``known`` plus the files a progress line names (``Last saved file: path``, ...), in order."""
    found = list(known)
    for piece in re.split(r"\s+\u00b7\s+|[|;\n]", textinfo or ""):
        label, sep, rest = piece.partition(": ")
        if sep and "saved" not in label.lower():
            continue
        candidate = (rest if sep else label).strip().strip("'\"")
        if candidate.lower().endswith(SAVED_SUFFIXES) and candidate not in found:
            found.append(candidate)
    return found


def progress_view(step: int, total: int, losses: Sequence[tuple[int, float]], textinfo: str,
                  eta: float | None, phase: str = "") -> str:
    """The progress bar (training step of total) and a line: loss, the job's own text, ETA."""
    frac = step / total if total else 0.0
    text = f"Step {step}/{total}" if total else (phase or "Starting")
    parts = [f"loss {losses[-1][1]:.4f}" if losses and "loss" not in textinfo.lower() else "", textinfo]
    if eta is not None and total:
        parts.append(f"ETA {format_eta(eta)}")
    return progress_html(frac, text, " \u00b7 ".join(p for p in parts if p))


def result_view(result: TrainResult) -> tuple[str, str]:
    """(the final text as HTML, the files saved, one a line) of a finished training or embedding creation."""
    notes = [f"Interrupted at step {result.step}; the current weights were saved"] if result.interrupted else []
    notes += [result.error] if result.error else []
    info = f'<div class="sd-infotext" id="train_result_info"><p>{escape_lines(result.info)}</p></div>'
    lines = list(dict.fromkeys([*result.saved, *([result.filename] if result.filename else [])]))
    if result.images:
        count = len(result.images)
        lines.append(f"{count} preview image{'s' if count != 1 else ''}, last: {result.images[-1]}")
    return info + warning_html(notes), "\n".join(lines)


# -- the events

class TrainUpdate(NamedTuple):
    """One update of the Train sub-tab's output column, in the order of the Train event's outputs."""

    progress: Any
    losses: Any
    preview: Any
    saved: Any
    info: Any
    job_id: Any
    trained: Any


def _open_image(path: str) -> Image.Image | None:
    """A preview image the job wrote, decoded (None when it cannot be read)."""
    try:
        with Image.open(path) as image:
            return image.copy()
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


class TrainHandlers:
    fields: tuple[str, ...] = FIELDS  # the Train event's inputs, in order

    def __init__(self, app: App) -> None:
        self.app = app

    # -- lists
    def embedding_names(self) -> list[str]:
        return sorted({e.name for e in self.app.networks.embeddings.embeddings}, key=str.lower)

    def template_names(self) -> list[str]:
        return list_templates(self.app.paths.data_dir)

    def refresh_embeddings(self, current: str | None) -> Any:
        self.app.networks.embeddings.refresh()
        choices = self.embedding_names()
        return gr.update(choices=choices, value=current if current in choices else None)

    def refresh_templates(self, current: str | None) -> Any:
        choices = self.template_names()
        fallback = TrainOptions().template_filename
        return gr.update(choices=choices, value=current if current in choices else fallback)

    def switch_kind(self, kind: str, *current: Any) -> list[Any]:
        """The "Train" radio: show the embedding's or the LoRA's fields, relabel the button, and move the values of
        :data:`KIND_DEFAULTS` (given in that order) to the new kind's defaults unless the user changed them."""
        new = kind_defaults(kind)
        old = kind_defaults(LORA if kind != LORA else EMBEDDING)
        moved = [new[name] if value == old[name] or not str(value or "").strip() else gr.skip()
                 for name, value in zip(KIND_DEFAULTS, current, strict=True)]
        is_lora = kind == LORA
        return [gr.update(visible=not is_lora), gr.update(visible=is_lora), gr.update(value=f"Train {kind}"),
                *moved]

    # -- create embedding
    def create_embedding(self, name: Any, nvpt: Any, overwrite: Any, init_text: Any,
                         request: gr.Request | None = None) -> tuple[str, Any]:
        """(info HTML, embedding dropdown update): A1111's "Create embedding", run as a queued job."""
        user, skip = request_user(request), gr.skip()
        if not self.app.is_admin(user):
            return error_html(ADMIN_ONLY), skip
        try:
            job = self.app.submit(create_embedding_job(name, nvpt, overwrite, init_text), user)
        except Exception as exc:  # noqa: BLE001 - shown as a message; the traceback goes to the log
            _log_unexpected(exc, "create embedding")
            return error_html(user_message(exc)), skip
        job.wait()
        result = job.result
        if job.state is JobState.FAILED:
            return error_html(f"Create embedding failed: {job.error or 'unknown error'}"), skip
        if not isinstance(result, TrainResult):
            return warning_html(["Interrupted"]), skip
        self.app.networks.embeddings.refresh()
        choices = self.embedding_names()
        info, _ = result_view(result)
        return info, gr.update(choices=choices, value=result.name if result.name in choices else skip)

    # -- train
    def train_as(self, request: gr.Request | None, *args: Any) -> Iterator[TrainUpdate]:
        """The Train event: gradio passes the ``request`` (its logged-in user owns the job), then the form."""
        yield from self.train_values(dict(zip(self.fields, args, strict=True)), request_user(request))

    def train_values(self, values: dict[str, Any], user: str | None = None) -> Iterator[TrainUpdate]:
        skip = gr.skip()
        if not self.app.is_admin(user):
            yield TrainUpdate("", skip, skip, skip, error_html(ADMIN_ONLY), None, skip)
            return
        try:
            spec = train_job(values)
            spec = dataclasses.replace(spec, options=with_settings(self.app, spec.options))
            job = self.app.submit(spec, user)
        except Exception as exc:  # noqa: BLE001 - shown as a message; the traceback goes to the log
            _log_unexpected(exc, "training")
            yield TrainUpdate("", skip, skip, skip, error_html(user_message(exc)), None, skip)
            return
        yield TrainUpdate(self.progress(job), loss_frame(()), None, "", "", job.id, skip)
        yield from self.poll(job)
        yield self.finish(job)

    def progress(self, job: Job) -> str:
        if job.state is JobState.QUEUED:
            return progress_html(0.0, f"Waiting in queue: position {self.app.queue.position(job)}")
        p = job.control.progress
        return progress_view(p.sampling_step, p.sampling_steps, list(job.control.losses), p.textinfo, p.eta(),
                             p.phase)

    def poll(self, job: Job) -> Iterator[TrainUpdate]:
        """Updates until ``job`` has finished: the progress line always; the plot, preview and files when changed."""
        skip = gr.skip()
        shown_losses, shown_preview = 0, None
        files: list[str] = []
        while not job.wait(POLL_SECONDS):
            p, losses = job.control.progress, list(job.control.losses)
            plot = loss_frame(losses) if len(losses) != shown_losses else skip
            shown_losses = len(losses)
            preview: Any = skip
            if p.preview is not None and p.preview is not shown_preview:
                shown_preview = preview = p.preview
            found = saved_files(p.textinfo, files)
            saved = "\n".join(found) if found != files else skip
            files = found
            yield TrainUpdate(self.progress(job), plot, preview, saved, skip, job.id, skip)

    def finish(self, job: Job) -> TrainUpdate:
        """The last update: the final text, the whole loss curve, the files saved, what "Use in txt2img" sends."""
        skip, result = gr.skip(), job.result
        if job.state is JobState.FAILED or not isinstance(result, TrainResult):
            message = (error_html(f"Training failed: {job.error or 'unknown error'}") if job.state is JobState.FAILED
                       else warning_html(["Interrupted before training started"]))
            return TrainUpdate("", skip, skip, skip, message, None, skip)
        info, saved = result_view(result)
        plot = loss_frame(result.losses or job.control.losses)
        preview = _open_image(result.images[-1]) if result.images else None
        trained = {"kind": result.kind, "name": result.name} if result.name else skip
        return TrainUpdate("", plot, preview if preview is not None else skip, saved,
                           info, None, trained)

    def interrupt(self, job_id: str | None, request: gr.Request | None = None) -> None:
        """Stop this session's training after the current step (its weights are saved)."""
        if job_id:
            self.app.queue.cancel(job_id, request_user(request))

    # -- use in txt2img
    def use_in_txt2img(self, trained: dict[str, str] | None, kind: str, embedding: str | None, lora_name: str,
                       prompt: str) -> tuple[Any, Any, str]:
        """(main tabs, txt2img prompt, message): the last trained network's tag (else the form's) added to the
        prompt, and the txt2img tab shown."""
        if trained and trained.get("name"):
            tag = network_tag(trained.get("kind", ""), trained["name"])
        else:
            tag = network_tag("lora" if kind == LORA else "embedding",
                              str((lora_name if kind == LORA else embedding) or "").strip())
        if not tag:
            return gr.skip(), gr.skip(), warning_html(["Train or choose an embedding or LoRA first"])
        separator = str(self.app.settings.snapshot().get("extra_networks_add_text_separator", " "))
        return gr.Tabs(selected="txt2img"), insert_tag(prompt, tag, separator), ""


def _log_unexpected(exc: BaseException, what: str) -> None:
    if not isinstance(exc, WebUIError):  # a bug, not bad input: the traceback goes to the log
        log.error("%s submission failed", what, exc_info=exc)
