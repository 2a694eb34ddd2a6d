"""The one batch loop of txt2img and img2img: seeds, prompts and noise per batch, sample, decode, infotext.

Each mode gives :func:`run_batches` a ``sample`` step that turns one :class:`Batch` into latents (and, for img2img,
how to finish each decoded image); everything else, the interrupt and skip handling included, is shared.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TypeVar

import torch
from PIL import Image

from modules import infotext, param_io
from modules.errors import GenerationError, ValidationError
from modules.generation import latents as lat
from modules.generation.conditioning import TextEncoder
from modules.generation.control import JobControl
from modules.generation.noise import ImageRNG, all_seeds, effective_source, pick_seed
from modules.generation.prompts import PreparedPrompts, prepare_prompts
from modules.generation.result import GenerationResult, infotext_context
from modules.models.loader import ModelParts
from modules.networks.embeddings import EmbeddingSet, ti_hashes
from modules.networks.hypernetworks import TAG_KIND as HYPERNET_KIND
from modules.networks.hypernetworks import HypernetTag, hypernet_tags
from modules.networks.lora import TAG_KINDS, LoraTag, lora_hashes, lora_tags
from modules.networks.service import ExtraNetworks
from modules.requests import GenerationRequest

log = logging.getLogger(__name__)
Tensor = torch.Tensor
Finish = Callable[[int, Image.Image], Image.Image]  # (index in the batch, decoded image) -> final image
ImageListener = Callable[[GenerationResult, int], None]  # (result so far, index of the image just added)
FaceRestore = Callable[[Image.Image, GenerationRequest, JobControl], Image.Image]  # "Restore faces" on one image


@dataclass
class Batch:
    """One batch (one of ``n_iter``) of a job."""

    number: int
    seeds: list[int]
    subseeds: list[int]
    prompts: PreparedPrompts
    encoder: TextEncoder
    first: int  # index of the batch's first image in the job

    @property
    def size(self) -> int:
        return len(self.seeds)


@dataclass
class Sampled:
    latents: Tensor
    finish: Finish | None = None
    parts: ModelParts | None = None  # the model whose VAE decodes them, when the job switched checkpoints


ModelSource = Callable[[str], ModelParts]  # checkpoint name -> the model, loaded (hires checkpoint, refiner)


@dataclass
class JobModels:
    """The model a job runs on now, and how it switches checkpoints inside the job (hires checkpoint, refiner)."""

    current: ModelParts
    load: ModelSource | None = None

    def restore(self, parts: ModelParts) -> None:
        """Back to the job's own model (each batch starts on it)."""
        if self.current is parts:
            return
        if self.load is not None and parts.info is not None:
            self.current = self.load(parts.info.title)
        else:
            self.current = parts

    def switch(self, name: str, field: str) -> ModelParts:
        if self.load is None:
            raise ValidationError(f"{field}: switching checkpoints inside a job is not available here", field=field)
        parts = self.load(name)
        if parts.family.is_xl != self.current.family.is_xl or parts.unet.config["out_channels"] != \
                self.current.unet.config["out_channels"]:
            raise ValidationError(f"{field}: {name} is a {parts.family.label} model; it cannot continue a "
                                  f"{self.current.family.label} image", field=field)
        self.current = parts
        return parts


Sample = Callable[[Batch], Sampled]
R = TypeVar("R", bound=GenerationRequest)


def resolve_seeds(req: R) -> R:
    """Replace -1 seeds by random ones, recorded in the returned request."""
    return req.replace(seed=pick_seed(req.seed), subseed=pick_seed(req.subseed))


def make_rng(req: GenerationRequest, parts: ModelParts, seeds: list[int], subseeds: list[int], width: int,
             height: int) -> ImageRNG:
    resize = (0, 0)
    if req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0:
        resize = (req.seed_resize_from_h // 8, req.seed_resize_from_w // 8)
    channels = int(parts.unet.config["out_channels"])
    return ImageRNG((channels, height // 8, width // 8), seeds, subseeds, req.subseed_strength, resize,
                    req.randn_source, parts.device, req.eta_noise_seed_delta)


def _extra_params(req: GenerationRequest, parts: ModelParts) -> dict[str, object]:
    """A1111's ``extra_generation_params``: the infotext keys outside its fixed list (hires and inpaint keys)."""
    params = param_io.infotext_params(req, infotext_context(parts, req.seed, req.subseed))
    return {k: v for k, v in params.items() if k not in infotext.KEY_ORDER}


def _network_tags(prompts: PreparedPrompts, networks: ExtraNetworks | None,
                  control: JobControl) -> tuple[list[LoraTag], list[HypernetTag]]:
    """The prompt's LoRA and hypernetwork tags; the other kinds of tags are named in a warning (not applied here)."""
    others = sorted({kind for kind, _ in prompts.networks if kind not in (*TAG_KINDS, HYPERNET_KIND)})
    if others:
        control.warn(f"extra networks not supported yet, ignored: {', '.join(others)}")
    if networks is None:
        if any(kind in TAG_KINDS for kind, _ in prompts.networks):
            control.warn("LoRA tags ignored: no LoRA folders here")
        if any(kind == HYPERNET_KIND for kind, _ in prompts.networks):
            control.warn("hypernet tags ignored: no hypernetwork folder here")
        return [], []
    return lora_tags(prompts.networks, control.warn), hypernet_tags(prompts.networks, control.warn)


def _warn_skipped_embeddings(found: EmbeddingSet, texts: list[str], parts: ModelParts, control: JobControl) -> None:
    """A prompt naming an embedding made for another model (another width) reads the name as words: say so."""
    for name, emb in found.skipped.items():
        if name not in found.loaded and any(re.search(rf"(?<!\w){re.escape(name)}(?!\w)", t) for t in texts):
            control.warn(f"embedding {name} ({emb.path.name}, width {emb.shape}) does not fit this "
                         f"{parts.family.label} model; its name was read as words")


def run_batches(parts: ModelParts, req: GenerationRequest, control: JobControl, sample: Sample,
                on_image: ImageListener | None = None, networks: ExtraNetworks | None = None,
                faces: FaceRestore | None = None) -> GenerationResult:
    """Run ``req.n_iter`` batches of ``req.batch_size`` images (``req`` validated, seeds resolved), with the
    networks the prompt names applied to the model for the job; ``faces`` restores each decoded image's faces when
    the request asks for it (before img2img's colour correction and overlay, as in A1111)."""
    prompts = prepare_prompts(req, req.image_count)
    tags, hypernets = _network_tags(prompts, networks, control)
    encoder = TextEncoder(parts, req.clip_skip)
    if networks is not None:
        networks.embeddings.refresh()  # cheap: only new or changed files are read
        for problem in networks.embeddings.problems:
            log.debug("embedding not loaded: %s", problem)
        found = networks.embeddings.for_model(parts)
        encoder = TextEncoder(parts, req.clip_skip, found, networks.embeddings.for_model)
        _warn_skipped_embeddings(found, [req.prompt, req.negative_prompt], parts, control)
    if networks is None or not (tags or hypernets):
        return _run_batches(parts, req, control, sample, on_image, prompts, encoder, {}, faces)
    # A1111 writes no infotext key for hypernetworks: the tags stay in the prompt, which is what a paste reads
    with ExitStack() as stack:
        extra: dict[str, str | None] = {}
        if tags:
            applied = stack.enter_context(networks.loras.applied(parts, tags, control.warn))
            extra["Lora hashes"] = lora_hashes(applied.hashes)
        if hypernets:
            stack.enter_context(networks.hypernetworks.applied(parts, hypernets, control.warn))
        return _run_batches(parts, req, control, sample, on_image, prompts, encoder, extra, faces)


def _run_batches(parts: ModelParts, req: GenerationRequest, control: JobControl, sample: Sample,
                 on_image: ImageListener | None, prompts: PreparedPrompts, encoder: TextEncoder,
                 extra: dict[str, str | None], faces: FaceRestore | None) -> GenerationResult:
    total = req.image_count
    # with a variation seed every image keeps the seed and only the variation seed counts up, as in A1111
    seeds = [req.seed] * total if req.subseed_strength > 0 else all_seeds(req.seed, total)
    subseeds = all_seeds(req.subseed, total)
    info = parts.info
    result = GenerationResult(request=req, images=[], infotexts=[], all_prompts=prompts.original_positive,
                              all_negative_prompts=prompts.original_negative, all_seeds=seeds,
                              all_subseeds=subseeds, model_name=info.model_name if info else "",
                              model_hash=info.shorthash if info else None,
                              vae_name=parts.vae_info.name if parts.vae_info else None, vae_hash=parts.vae_hash,
                              extra_params={**_extra_params(req, parts),
                                            **{k: v for k, v in extra.items() if v is not None}})
    control.update(job_count=req.n_iter, job_no=0)
    if req.randn_source == "GPU" and effective_source("GPU", parts.device) == "NV":
        control.warn("RNG: GPU noise was made with NV (no CUDA device here): the image an NVIDIA card gives")
    with torch.inference_mode(), lat.seamless([parts.unet, parts.vae], req.tiling):
        for number in range(req.n_iter):
            if control.interrupted:
                break
            control.clear_skip()
            control.update(job_no=number, sampling_step=0, phase="sampling")
            sl = slice(number * req.batch_size, (number + 1) * req.batch_size)
            batch = Batch(number, seeds[sl], subseeds[sl], prompts.slice(sl), encoder, sl.start)
            sampled = sample(batch)
            if not torch.isfinite(sampled.latents).all():
                raise GenerationError("the UNet produced NaNs; try the --no-half option or another sampler")
            control.update(phase="decoding")
            extra = {**extra, "TI hashes": ti_hashes(encoder.used_embeddings)}
            vae = (sampled.parts or parts).vae
            for k, image in enumerate(lat.to_pil(lat.decode(vae, sampled.latents, control.warn, req.vae_tiling))):
                i = batch.first + k
                if req.restore_faces and faces is not None and not control.interrupted:
                    control.update(phase="restoring faces")
                    image = faces(image, req, control)
                result.images.append(sampled.finish(k, image) if sampled.finish else image)
                ctx = infotext_context(parts, seeds[i], subseeds[i])
                result.infotexts.append(param_io.build_infotext(req, ctx, prompts.original_positive[i],
                                                                prompts.original_negative[i], extra))
                if on_image is not None:
                    on_image(result, len(result.images) - 1)
    result.extra_params.update({k: v for k, v in extra.items() if v is not None})
    result.interrupted = control.interrupted
    result.warnings = list(control.warnings) + prompts.warnings
    control.update(job_no=req.n_iter, phase="done")
    return result
