"""The training loop both kinds share: latents of the dataset, the diffusion loss, optimizer steps with gradient
accumulation, learning rates, clipping, mixed precision, interrupts, and the saves and previews along the way.

The loss is the one the model was trained with (LDM's ``p_losses``): noise the latents to a uniformly drawn
timestep of the model's own schedule, predict the noise (or ``v`` for v-prediction models) and take the mean
squared error, optionally weighted per image by min-SNR-gamma and per pixel by the images' alpha channels. What
learns (an embedding's vectors, LoRA layers) is the :class:`Subject`'s business.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from modules.errors import GenerationError, ValidationError
from modules.generation.conditioning import TextEncoder
from modules.generation.control import JobControl
from modules.generation.passes import alphas_cumprod, full_mask_conditioning, sdxl_time_ids
from modules.models.loader import ModelParts
from modules.training import dataset
from modules.training.schedule import RatePlan, parse_rates
from modules.training.specs import TrainOptions

log = logging.getLogger(__name__)
Tensor = torch.Tensor
_FLIP = Image.Transpose.FLIP_LEFT_RIGHT


class Subject(Protocol):
    """What learns: its optimizer parameter groups (each with an ``lr_scale``), and how it is saved."""

    step: int

    def param_groups(self) -> list[dict[str, Any]]: ...

    def save(self, path: Path, step: int, optimizer: torch.optim.Optimizer | None) -> Path: ...


@dataclass
class Latent:
    """One image's VAE posterior (scaled): its mean and std, for the plain and the flipped image."""

    mean: Tensor
    std: Tensor
    sample: Tensor  # the sample drawn once ("once"), or the mean ("deterministic")
    weight: Tensor | None = None


@dataclass
class Prepared:
    items: list[dataset.Item]
    latents: list[list[Latent]]  # per item: [plain] or [plain, flipped]
    groups: list[list[int]]


@torch.no_grad()
def _posterior(vae: Any, image: Tensor) -> tuple[Tensor, Tensor]:
    param = next(vae.parameters())
    x = image.to(device=param.device, dtype=param.dtype) * 2 - 1
    dist = vae.encode(x, return_dict=False)[0]
    if not bool(torch.isfinite(dist.mean).all()) and param.dtype != torch.float32:
        dtype = param.dtype
        vae.to(torch.float32)  # a half-precision VAE's overflow (SDXL's): once more in float32
        try:
            dist = vae.encode(x.float(), return_dict=False)[0]
        finally:
            vae.to(dtype)
    if not bool(torch.isfinite(dist.mean).all()):
        raise GenerationError("the VAE gives NaNs for a training image; try another VAE or --no-half")
    scale = float(vae.config["scaling_factor"])
    shift = float(vae.config.get("shift_factor") or 0.0)
    return ((dist.mean.float() - shift) * scale).cpu()[0], (dist.std.float() * scale).cpu()[0]


def prepare(parts: ModelParts, items: list[dataset.Item], opts: TrainOptions, generator: torch.Generator,
            control: JobControl) -> Prepared:
    """Encode every image (and its mirror image when flipping) once."""
    latents: list[list[Latent]] = []
    for i, item in enumerate(items):
        if control.interrupted:  # what is encoded so far is enough for the loop to stop at once
            break
        control.update(phase=f"preparing dataset: {i + 1}/{len(items)}")
        images = [item.image] + ([item.image.transpose(_FLIP)] if opts.flip else [])
        alphas = [item.alpha] + ([item.alpha.transpose(_FLIP) if item.alpha else None] if opts.flip else [])
        entries = []
        for image, alpha in zip(images, alphas, strict=True):
            mean, std = _posterior(parts.vae, dataset.pixels(image))
            sample = mean if opts.latent_sampling_method == "deterministic" else (
                mean + std * torch.randn(tuple(mean.shape), generator=generator))
            weight = dataset.alpha_weight(alpha, tuple(mean.shape)) if opts.use_weight else None
            entries.append(Latent(mean, std, sample, weight))
        latents.append(entries)
    items = items[:len(latents)]
    return Prepared(items, latents, dataset.size_groups([item.size for item in items]))


@dataclass
class LossInputs:
    parts: ModelParts  # the training copies
    encoder: TextEncoder
    abar: Tensor
    opts: TrainOptions
    generator: torch.Generator
    rng: random.Random
    template: list[str]
    placeholder: str
    _image_cond: dict[tuple[int, int, int], Tensor] = field(default_factory=dict)

    @classmethod
    def build(cls, parts: ModelParts, encoder: TextEncoder, opts: TrainOptions, seed: int, template: list[str],
              placeholder: str) -> LossInputs:
        return cls(parts, encoder, alphas_cumprod(parts).to(parts.device), opts,
                   torch.Generator().manual_seed(seed), random.Random(seed), template, placeholder)


def _conditioning(inputs: LossInputs, texts: list[str]) -> tuple[Tensor, Tensor | None]:
    cond = inputs.encoder.encode_batch_with_grad(texts)
    return cond.context, cond.pooled


def batch_loss(inputs: LossInputs, prepared: Prepared, indices: list[int]) -> tuple[Tensor, list[str]]:
    """The mean training loss of one batch of images (all of one size), and the prompts used."""
    opts, parts, gen = inputs.opts, inputs.parts, inputs.generator
    picks = [prepared.latents[i][inputs.rng.randrange(len(prepared.latents[i]))] for i in indices]
    if opts.latent_sampling_method == "random":
        x0 = torch.stack([p.mean + p.std * torch.randn(tuple(p.mean.shape), generator=gen) for p in picks])
    else:
        x0 = torch.stack([p.sample for p in picks])
    texts = ["" if opts.caption_dropout and inputs.rng.random() < opts.caption_dropout else
             dataset.prompt_text(inputs.template, prepared.items[i].caption, inputs.placeholder, inputs.rng,
                                 opts.shuffle_tags, opts.tag_drop_out) for i in indices]
    batch = len(indices)
    noise = torch.randn(tuple(x0.shape), generator=gen)
    if opts.noise_offset:
        noise = noise + opts.noise_offset * torch.randn((batch, x0.shape[1], 1, 1), generator=gen)
    t = torch.randint(0, int(inputs.abar.shape[0]), (batch,), generator=gen)
    device = parts.device
    x0, noise, t = x0.to(device), noise.to(device), t.to(device)
    a = inputs.abar[t].view(-1, 1, 1, 1).float()
    noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
    v_pred = parts.prediction_type == "v_prediction"
    target = a.sqrt() * noise - (1 - a).sqrt() * x0 if v_pred else noise
    context, pooled = _conditioning(inputs, texts)
    unet_in = noisy
    height, width = x0.shape[2] * 8, x0.shape[3] * 8
    if parts.is_inpaint:  # an inpainting model learns to draw everything: a full mask, as A1111 trains it
        key = (batch, width, height)
        if key not in inputs._image_cond:
            cond = full_mask_conditioning(parts, batch, width, height)
            assert cond is not None
            inputs._image_cond[key] = cond
        unet_in = torch.cat([noisy, inputs._image_cond[key]], dim=1)
    dtype = next(parts.unet.parameters()).dtype
    kwargs: dict[str, Any] = {}
    if parts.family.is_xl:
        assert pooled is not None
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled.to(device, dtype),
                                       "time_ids": sdxl_time_ids(width, height, batch).to(device, dtype)}
    pred = parts.unet(unet_in.to(dtype), t, encoder_hidden_states=context.to(dtype), return_dict=False, **kwargs)[0]
    err = (pred.float() - target) ** 2
    if opts.use_weight:
        err = err * torch.stack([p.weight if p.weight is not None else torch.ones_like(p.mean)
                                 for p in picks]).to(device)
    per_image = err.mean(dim=(1, 2, 3))
    if opts.min_snr_gamma > 0:
        snr = (a / (1 - a)).view(-1).clamp(min=1e-8)  # a zero-terminal-SNR schedule's last step
        weight = snr.clamp(max=opts.min_snr_gamma) / (snr + 1 if v_pred else snr)
        per_image = per_image * weight
    return per_image.mean(), texts


@dataclass
class LoopState:
    step: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    last_prompt: str = ""
    interrupted: bool = False
    optimizer: torch.optim.Optimizer | None = None  # to save the final weights with their optimizer state


@dataclass
class Hooks:
    """What runs every so many steps: ``save(step)`` returns the file written, ``preview(step, prompt)`` the
    image written (or None)."""

    save: Callable[[int, torch.optim.Optimizer], Path | None]
    preview: Callable[[int, str], Path | None]


def _autocast(opts: TrainOptions, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if opts.mixed_precision == "no" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16 if opts.mixed_precision == "fp16" else torch.bfloat16)


def write_loss(log_dir: Path, filename: str, step: int, epoch_len: int, values: dict[str, object]) -> None:
    """A1111's loss log: ``step,epoch,epoch_step,loss,learn_rate`` rows appended to ``filename``."""
    path = log_dir / filename
    new = not path.exists()
    log_dir.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "epoch", "epoch_step", *values])
        if new:
            writer.writeheader()
        writer.writerow({"step": step, "epoch": (step - 1) // epoch_len, "epoch_step": (step - 1) % epoch_len,
                         **values})


def total_steps(opts: TrainOptions, prepared: Prepared) -> int:
    """``steps``, or with ``epochs`` the optimizer steps that many passes over the dataset take."""
    if opts.epochs > 0:
        per_epoch = max(1, dataset.batches_per_epoch(prepared.groups, opts.batch_size) // opts.gradient_step)
        return opts.epochs * per_epoch
    return opts.steps


def _epochs(prepared: Prepared, batch_size: int, rng: random.Random) -> Iterator[list[int]]:
    while prepared.groups:
        yield from dataset.batches(prepared.groups, batch_size, rng)


def run_loop(inputs: LossInputs, prepared: Prepared, subject: Subject, rates: RatePlan, control: JobControl,
             hooks: Hooks, log_dir: Path, loss_file: str, write_csv_every: int) -> LoopState:
    """Train ``subject`` from its step to the rate plan's end (or an interrupt); returns what happened."""
    opts, device = inputs.opts, inputs.parts.device
    groups = subject.param_groups()
    optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "lr_scale"} for g in groups],
                                  lr=rates.rate(subject.step), weight_decay=groups[0].get("weight_decay", 0.0))
    load_optimizer_state(subject, optimizer)
    scaler = torch.amp.GradScaler("cuda", enabled=opts.mixed_precision == "fp16" and device.type == "cuda")
    clip = None if opts.clip_grad_mode == "disabled" else parse_rates(opts.clip_grad_value, rates.max_steps,
                                                                      field="clip_grad_value")
    params = [p for g in groups for p in g["params"]]
    state = LoopState(subject.step, interrupted=control.interrupted)
    epoch_len = max(1, dataset.batches_per_epoch(prepared.groups, opts.batch_size) // opts.gradient_step)
    first_step = subject.step
    accumulated, running, skipped = 0, 0.0, 0
    for indices in _epochs(prepared, opts.batch_size, inputs.rng):
        if subject.step >= rates.end_step:
            break
        if control.interrupted:
            state.interrupted = True
            break
        for group, spec in zip(optimizer.param_groups, groups, strict=True):
            group["lr"] = rates.rate(subject.step) * float(spec.get("lr_scale", 1.0))
        with _autocast(opts, device):
            loss, texts = batch_loss(inputs, prepared, indices)
        if not loss.requires_grad or not bool(torch.isfinite(loss)):
            # a batch whose prompts name nothing being trained (an empty caption, a template line without
            # [name]) teaches nothing; a non-finite loss would ruin the weights: both are passed over
            skipped += 1
            _too_many_skipped(skipped, loss, texts[0], control)
            continue
        skipped = 0
        scaler.scale(loss / opts.gradient_step).backward()  # type: ignore[no-untyped-call]
        running += float(loss.detach()) / opts.gradient_step
        accumulated += 1
        if accumulated < opts.gradient_step:
            continue
        if clip is not None:
            scaler.unscale_(optimizer)
            limit = RatePlan(clip, rates.max_steps).base_rate(subject.step)
            if opts.clip_grad_mode == "value":
                torch.nn.utils.clip_grad_value_(params, limit)
            else:
                torch.nn.utils.clip_grad_norm_(params, limit)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        subject.step += 1
        step_loss, accumulated, running = running, 0, 0.0
        state.losses.append((subject.step, step_loss))
        control.losses.append((subject.step, step_loss))
        state.last_prompt = texts[0]
        if write_csv_every and subject.step % write_csv_every == 0:
            write_loss(log_dir, loss_file, subject.step, epoch_len,
                       {"loss": f"{step_loss:.7f}", "learn_rate": rates.rate(subject.step - 1)})
        if opts.save_every and subject.step % opts.save_every == 0:
            saved = hooks.save(subject.step, optimizer)
            if saved is not None:
                state.saved.append(str(saved))
        if opts.create_image_every and subject.step % opts.create_image_every == 0:
            image = hooks.preview(subject.step, texts[0])
            if image is not None:
                state.images.append(str(image))
        _publish(subject, state, control, step_loss, rates, first_step)
    state.step = subject.step
    state.optimizer = optimizer
    return state


MAX_SKIPPED = 50


def _too_many_skipped(skipped: int, loss: Tensor, prompt: str, control: JobControl) -> None:
    if bool(torch.isfinite(loss)):
        if skipped >= MAX_SKIPPED:
            raise ValidationError(f"nothing being trained is used by the prompts (e.g. {prompt!r}); check the "
                                  "prompt template and the caption dropout", field="template_filename")
        return
    control.warn("a batch gave a non-finite loss and was passed over (a learning rate too high, or fp16 "
                 "overflow)")
    if skipped >= MAX_SKIPPED:
        raise GenerationError("the loss stays NaN or infinite; lower the learning rate or use float32")


def _publish(subject: Subject, state: LoopState, control: JobControl, loss: float, rates: RatePlan,
             first_step: int) -> None:
    last = state.saved[-1] if state.saved else "<none>"
    control.update(phase="training", sampling_step=subject.step - first_step,
                   sampling_steps=max(1, rates.end_step - first_step),
                   textinfo=f"Loss: {loss:.7f}; Step: {subject.step}; Last prompt: {state.last_prompt}; "
                            f"Last saved file: {last}")


def load_optimizer_state(subject: Subject, optimizer: torch.optim.Optimizer) -> None:
    """The optimizer state saved beside the file being resumed, when the subject found one."""
    saved = getattr(subject, "optimizer_state", None)
    if not saved or not _fits(saved, optimizer):
        return
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, RuntimeError) as exc:  # another shape or layout: start the moments afresh
        log.info("saved optimizer state not used: %s", exc)


def _fits(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> bool:
    """Whether a saved AdamW state belongs to these parameters (same count and shapes): a stale one (an embedding
    created anew with another vector count) is left out and the moments start afresh."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = saved.get("state")
    if not isinstance(state, dict) or len(saved.get("param_groups", ())) != len(optimizer.param_groups):
        return False
    for index, values in state.items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(values, dict):
            return False
        moment = values.get("exp_avg")
        if isinstance(moment, torch.Tensor) and moment.shape != params[index].shape:
            return False
    return True
