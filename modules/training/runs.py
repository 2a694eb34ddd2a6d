"""Running a training: copies of the model, the dataset's latents, the loop, saves, previews, the final file.

Training runs on copies of the loaded model's UNet and text encoders in float32 (under CUDA autocast when mixed
precision is asked), so the cached inference model is never changed; previews are made with the cached model and
the weights saved so far, through the same loaders a user's files go through.
"""

from __future__ import annotations

import copy
import datetime as _dt
import gc
import logging
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from modules import fileio, outputs
from modules import images as image_utils
from modules.errors import ValidationError, WebUIError
from modules.generation.conditioning import TextEncoder
from modules.generation.control import JobControl
from modules.models.loader import ModelParts
from modules.networks.embeddings import build_set, fits
from modules.requests import GenerationRequest, validate
from modules.training import core, dataset, schedule
from modules.training.embedding import EmbeddingSubject, TrainingError, clean_name
from modules.training.lora_train import LoraSubject, kohya_metadata
from modules.training.service import data_folder, log_root, lora_file, resume_path
from modules.training.specs import TrainEmbeddingJob, TrainLoraJob, TrainOptions, TrainResult
from modules.training.templates import read_template

if TYPE_CHECKING:
    from modules.app import App

log = logging.getLogger(__name__)


def training_parts(parts: ModelParts, train_unet: bool, train_text: bool, checkpointing: bool) -> ModelParts:
    """float32 copies of the UNet and text encoders (frozen; the subject unfreezes what learns), the VAE shared."""
    def twin(module: Any) -> Any:
        if module is None:
            return None
        out = copy.deepcopy(module).float()
        out.requires_grad_(False)
        return out

    copies = replace(parts, unet=twin(parts.unet), text_encoder=twin(parts.text_encoder),
                     text_encoder_2=twin(parts.text_encoder_2))
    if checkpointing:
        copies.unet.enable_gradient_checkpointing()
        if train_text:
            for encoder in (copies.text_encoder, copies.text_encoder_2):
                if encoder is not None:  # transformers 5 renamed it; CLIP checkpoints only in training mode
                    enable = getattr(encoder, "activation_checkpointing_enable", None)
                    if enable is not None:
                        enable(activation_checkpointing_kwargs={"use_reentrant": False})
                    else:
                        encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # type: ignore[no-untyped-call]
                    encoder.train()
        copies.unet.train()
    return copies


@dataclass
class Run:
    """One training's surroundings: the app, the cached model, the copies, the folders."""

    app: App
    kind: str  # "embedding" or "lora"
    name: str
    opts: TrainOptions
    cached: ModelParts
    control: JobControl
    log_dir: Path
    seed: int

    def folder(self, sub: str) -> Path:
        path = self.log_dir / sub
        path.mkdir(parents=True, exist_ok=True)
        return path


def _log_dir(app: App, opts: TrainOptions, name: str) -> Path:
    root = log_root(app, opts)
    return root / _dt.date.today().isoformat() / name


def _seed(opts: TrainOptions) -> int:
    return opts.seed if opts.seed >= 0 else random.randrange(2**32)


def _preview(run: Run, subject: Any, step: int, caption: str) -> Path | None:
    """Save the weights so far, make one image with them on the cached model, write it to ``images/``."""
    from modules.generation.txt2img import txt2img
    from modules.networks.service import ExtraNetworks

    ext = ".safetensors" if run.kind == "lora" or run.cached.family.is_xl else ".pt"
    folder = run.folder("preview")
    subject.save(folder / f"{run.name}{ext}", step, None)
    networks = ExtraNetworks([folder] if run.kind == "lora" else [],
                             [folder] if run.kind == "embedding" else [], run.app.hashes)
    p = run.opts.preview
    if run.opts.preview_from_txt2img:
        req = GenerationRequest(prompt=p.prompt, negative_prompt=p.negative_prompt, steps=p.steps,
                                sampler_name=p.sampler_name, cfg_scale=p.cfg_scale, seed=p.seed, width=p.width,
                                height=p.height)
    else:
        req = GenerationRequest(prompt=caption, steps=20, seed=(run.seed + step) % 2**31,
                                width=run.opts.training_width, height=run.opts.training_height)
    if run.kind == "lora" and f"<lora:{run.name}:" not in req.prompt:
        req = req.replace(prompt=f"{req.prompt} <lora:{run.name}:1>".strip())
    try:
        validate(req, run.app.limits())
        result = txt2img(run.cached, req, JobControl(), networks=networks)
    except WebUIError as exc:
        run.control.warn(f"preview image not made: {exc}")
        return None
    except Exception as exc:  # out of memory, say: training goes on without this preview
        log.warning("preview at step %d failed", step, exc_info=True)
        run.control.warn(f"preview image not made at step {step}: {type(exc).__name__}")
        return None
    image, info = result.images[0], result.infotexts[0]
    run.control.update(preview=image, preview_id=run.control.progress.preview_id + 1)
    path = outputs.save_image(image, run.folder("images"), "png", info, forced_name=f"{run.name}-{step}")
    if run.kind == "embedding" and run.opts.save_image_with_stored_embedding:
        data = image_utils.encode_image(image, "png", info, extra_text={"sd-ti-embedding": subject.png_chunk(step)})
        fileio.atomic_write_bytes(run.folder("image_embeddings") / f"{run.name}-{step}.png", data)
    return path


def _release() -> None:
    """Give back the memory of a training's copies (called once they are out of scope)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _prepared(run: Run, copies: ModelParts, rng_seed: int) -> core.Prepared:
    opts = run.opts
    items = dataset.load_items(data_folder(run.app, opts.data_root, "data_root"), opts.training_width,
                               opts.training_height, opts.varsize, opts.buckets, run.control.warn,
                               opts.filename_word_regex, opts.filename_join_string, run.control.should_stop)
    if opts.mixed_precision != "no" and copies.device.type != "cuda":
        run.control.warn(f"mixed precision ({opts.mixed_precision}) needs CUDA; trained in float32")
    return core.prepare(copies, items, opts, torch.Generator().manual_seed(rng_seed), run.control)


def _train(run: Run, copies: ModelParts, subject: Any, encoder: TextEncoder, placeholder: str, loss_file: str,
           prepared: core.Prepared, rates: schedule.RatePlan) -> core.LoopState:
    template = read_template(run.opts.template_filename, run.app.paths.data_dir)
    inputs = core.LossInputs.build(copies, encoder, run.opts, run.seed, template, placeholder)
    ext = ".safetensors" if run.kind == "lora" or copies.family.is_xl else ".pt"
    sub = "lora" if run.kind == "lora" else "embeddings"

    def save(step: int, optimizer: torch.optim.Optimizer) -> Path | None:
        try:
            return subject.save(run.folder(sub) / f"{run.name}-{step}{ext}", step, optimizer)  # type: ignore[no-any-return]
        except TrainingError as exc:  # training goes on; the final save says whether the disk has room again
            run.control.warn(f"step {step}: {exc}")
            return None

    hooks = core.Hooks(save=save, preview=lambda step, caption: _preview(run, subject, step, caption))
    with torch.enable_grad():
        return core.run_loop(inputs, prepared, subject, rates, run.control, hooks, run.log_dir, loss_file,
                             run.opts.write_csv_every)


def _train_saving(run: Run, copies: ModelParts, subject: Any, encoder: TextEncoder, placeholder: str,
                  loss_file: str, prepared: core.Prepared, rates: schedule.RatePlan, suffix: str) -> core.LoopState:
    """:func:`_train`; when it fails part way (out of memory...), the weights reached are saved to the log folder
    first, so the work since the last copy is not lost."""
    start = subject.step
    try:
        return _train(run, copies, subject, encoder, placeholder, loss_file, prepared, rates)
    except Exception:
        if subject.step > start:
            sub = "lora" if run.kind == "lora" else "embeddings"
            try:
                path = subject.save(run.folder(sub) / f"{run.name}-{subject.step}{suffix}", subject.step, None)
                log.warning("training failed at step %d; the weights reached are in %s", subject.step, path)
            except Exception:  # the disk, too: nothing more can be done
                log.warning("training failed and its weights could not be saved", exc_info=True)
        raise


def _start(app: App, kind: str, name: str, opts: TrainOptions, control: JobControl) -> Run:
    control.update(phase="loading model")
    cached = app.models.get(None)
    before = app.models.ensure_mode(cached, "normal")  # gradients need the weights where they compute
    if before != "normal":
        control.warn(f"training runs with the whole model on the device: the {before} memory mode is off until the "
                     "model is loaded again")
    control.losses.clear()
    return Run(app, kind, name, opts, cached, control, _log_dir(app, opts, name), _seed(opts))


def _finish(run: Run, subject: Any, state: core.LoopState, first_step: int, target: Path) -> Path | None:
    """Save the weights reached (and, in the log folder, a copy with the optimizer state to resume from); nothing
    when an interrupt came before the first step."""
    if state.step == first_step:
        return None
    final: Path = subject.save(target, state.step, None)
    if state.optimizer is not None and (run.kind == "lora" or run.opts.save_every):
        sub = "lora" if run.kind == "lora" else "embeddings"
        try:
            subject.save(run.folder(sub) / f"{run.name}-{state.step}{target.suffix}", state.step, state.optimizer)
        except TrainingError as exc:  # the weights are saved; only the copy to resume from is missing
            run.control.warn(f"the copy in the log folder was not saved: {exc}")
    return final


def _outcome(run: Run, state: core.LoopState, final: Path | None) -> TrainResult:
    if final is None:
        return TrainResult(info="interrupted before the first step: nothing was saved", name=run.name,
                           kind=run.kind, step=state.step, log_directory=str(run.log_dir), interrupted=True)
    what = "embedding" if run.kind == "embedding" else "lora"
    return TrainResult(info=f"train {what} complete: filename: {final} error: None", filename=str(final),
                       name=run.name, kind=run.kind, step=state.step, losses=tuple(state.losses),
                       saved=tuple(state.saved), images=tuple(state.images), log_directory=str(run.log_dir),
                       interrupted=state.interrupted)


def run_train_embedding(app: App, spec: TrainEmbeddingJob, control: JobControl) -> TrainResult:
    try:
        return _train_embedding(app, spec, control)
    finally:
        _release()


def _train_embedding(app: App, spec: TrainEmbeddingJob, control: JobControl) -> TrainResult:
    run = _start(app, "embedding", spec.embedding_name, spec.options, control)
    app.networks.embeddings.refresh()
    found = [e for e in app.networks.embeddings.embeddings if e.name == spec.embedding_name]
    if not found:
        raise ValidationError(f"embedding_name: no embedding named {spec.embedding_name!r}; create it first",
                              field="embedding_name")
    embedding = found[-1]
    if not fits(embedding, run.cached):
        raise ValidationError(f"embedding_name: {embedding.name} was made for another model family (vectors of "
                              f"width {embedding.shape})", field="embedding_name")
    info = run.cached.info
    copies = training_parts(run.cached, False, False, spec.options.gradient_checkpointing)
    subject = EmbeddingSubject(embedding, copies.device, info.shorthash if info else None,
                               info.model_name if info else None)
    others = [e for e in app.networks.embeddings.embeddings if e.name != embedding.name]
    encoder = TextEncoder(copies, spec.options.clip_skip, build_set([*others, subject.trainable], copies))
    prepared = _prepared(run, copies, run.seed)
    rates = schedule.plan(spec.options.learn_rate, core.total_steps(spec.options, prepared), subject.step,
                          spec.options.lr_scheduler, spec.options.lr_warmup_steps)
    if subject.step >= rates.end_step:
        return TrainResult(info="Model has already been trained beyond specified max steps",
                           filename=str(embedding.path), name=embedding.name, kind="embedding", step=subject.step)
    first_step = subject.step
    state = _train_saving(run, copies, subject, encoder, embedding.name, "textual_inversion_loss.csv", prepared,
                          rates, embedding.path.suffix)
    final = _finish(run, subject, state, first_step, embedding.path)
    app.networks.embeddings.refresh()
    return _outcome(run, state, final)


def run_train_lora(app: App, spec: TrainLoraJob, control: JobControl) -> TrainResult:
    try:
        return _train_lora(app, spec, control)
    finally:
        _release()


def _train_lora(app: App, spec: TrainLoraJob, control: JobControl) -> TrainResult:
    name = clean_name(spec.name)
    run = _start(app, "lora", name, spec.options, control)
    resume = resume_path(app, spec) if spec.resume else None
    copies = training_parts(run.cached, spec.train_unet, spec.train_text_encoder, spec.options.gradient_checkpointing)
    prepared = _prepared(run, copies, run.seed)
    total = core.total_steps(spec.options, prepared)
    meta = kohya_metadata(run.cached, spec, len(prepared.items), dataset.tag_frequency(prepared.items),
                          data_folder(app, spec.options.data_root, "data_root"), total, run.seed)
    base_lr = schedule.parse_rates(spec.options.learn_rate, total)[0][0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.seed)  # the LoRA layers' initial weights
        subject = LoraSubject(copies, spec, base_lr, meta, resume)
    rates = schedule.plan(spec.options.learn_rate, total, subject.step, spec.options.lr_scheduler,
                          spec.options.lr_warmup_steps)
    if subject.step >= rates.end_step:
        return TrainResult(info="Model has already been trained beyond specified max steps",
                           filename=str(resume), name=name, kind="lora", step=subject.step)
    encoder = TextEncoder(copies, spec.options.clip_skip, app.networks.embeddings.for_model(run.cached))
    first_step = subject.step
    state = _train_saving(run, copies, subject, encoder, name, "lora_loss.csv", prepared, rates, ".safetensors")
    final = _finish(run, subject, state, first_step, lora_file(app, name))
    app.networks.loras.registry.refresh()
    return _outcome(run, state, final)
