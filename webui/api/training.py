"""Training routes: A1111's ``/sdapi/v1/create/embedding`` and ``/train/embedding`` (its argument names, its response
text), ``/train/lora``, the hypernetwork routes (501), and the same jobs through ``/sdapi/v2``.

A1111 answers every outcome, even a failed training, with 200 and an ``info`` text. Here bad input is a 422 naming
the field, before anything is queued; a training that runs answers as A1111 does:
``{"info": "train embedding complete: filename: <path> error: None"}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from modules.app import App
from modules.training.service import with_settings
from modules.training.specs import (
    UNET_TARGETS,
    CreateEmbeddingJob,
    PreviewOptions,
    TrainEmbeddingJob,
    TrainLoraJob,
    TrainOptions,
    TrainResult,
)
from webui.api.waiting import finished_result

HYPERNETWORK_MESSAGE = ("hypernetwork training is not supported; train a LoRA instead (POST /sdapi/v1/train/lora), "
                        "which A1111, Forge and ComfyUI all load. Existing hypernetworks still work in prompts.")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class CreateEmbeddingBody(_Body):
    name: str
    num_vectors_per_token: int = 1
    overwrite_old: bool = False
    init_text: str = "*"


class TrainCommonBody(_Body):
    """The options both trainings share, with A1111's names (``data_root``, ``training_width``...)."""

    data_root: str = ""
    log_directory: str = "textual_inversion"
    template_filename: str = "style_filewords.txt"
    training_width: int = 512
    training_height: int = 512
    varsize: bool = False
    buckets: bool = False
    steps: int = 100000
    epochs: int = 0
    batch_size: int = 1
    gradient_step: int = 1
    learn_rate: str | float = "0.005"
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    clip_grad_mode: str = "disabled"
    clip_grad_value: str | float = "0.1"
    shuffle_tags: bool = False
    tag_drop_out: float = 0.0
    caption_dropout: float = 0.0
    flip: bool = False
    noise_offset: float = 0.0
    min_snr_gamma: float = 0.0
    latent_sampling_method: str = "once"
    use_weight: bool = False
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    seed: int = -1
    create_image_every: int = 500
    save_embedding_every: int = 500
    save_image_with_stored_embedding: bool = True
    preview_from_txt2img: bool = False
    preview_prompt: str = ""
    preview_negative_prompt: str = ""
    preview_steps: int = 20
    preview_sampler_name: str | int = "Euler a"
    preview_cfg_scale: float = 7.0
    preview_seed: int = -1
    preview_width: int = 512
    preview_height: int = 512

    def options(self, app: App) -> TrainOptions:
        preview = PreviewOptions(self.preview_prompt, self.preview_negative_prompt, self.preview_steps,
                                 _sampler_name(self.preview_sampler_name), self.preview_cfg_scale, self.preview_seed,
                                 self.preview_width, self.preview_height)
        fields = {name: getattr(self, name) for name in TrainOptions.__dataclass_fields__ if hasattr(self, name)}
        fields.update(learn_rate=str(self.learn_rate), clip_grad_value=str(self.clip_grad_value),
                      save_every=self.save_embedding_every, preview=preview)
        return with_settings(app, TrainOptions(**fields))


def _sampler_name(value: str | int) -> str:
    """A1111's UI sends the preview sampler's index; its API the name."""
    if isinstance(value, int):
        from modules.samplers import SAMPLERS

        names = [s.name for s in SAMPLERS]
        return names[value] if 0 <= value < len(names) else str(value)
    return value


class TrainEmbeddingBody(TrainCommonBody):
    embedding_name: str


class TrainLoraBody(TrainCommonBody):
    name: str
    log_directory: str = "lora_training"
    template_filename: str = "filewords.txt"
    learn_rate: str | float = "0.0001"
    save_embedding_every: int = Field(500, description="save a copy every N steps (also: save_every)")
    save_every: int | None = None
    width: int | None = None  # the short names of /train/lora
    height: int | None = None
    rank: int = 4
    alpha: float = 1.0
    train_unet: bool = True
    train_text_encoder: bool = False
    unet_lr: float | None = None
    text_encoder_lr: float | None = None
    unet_targets: list[str] = Field(default_factory=lambda: list(UNET_TARGETS))
    text_targets: list[str] | None = None
    overwrite: bool = False
    resume: str = ""

    def spec(self, app: App) -> TrainLoraJob:
        body = self.model_copy(update={
            "training_width": self.width or self.training_width, "training_height": self.height or
            self.training_height, "save_embedding_every": self.save_every if self.save_every is not None else
            self.save_embedding_every})
        extra: dict[str, Any] = {"text_targets": tuple(self.text_targets)} if self.text_targets else {}
        return TrainLoraJob(name=self.name, options=body.options(app), rank=self.rank, alpha=self.alpha,
                            train_unet=self.train_unet, train_text_encoder=self.train_text_encoder,
                            unet_lr=self.unet_lr, text_encoder_lr=self.text_encoder_lr,
                            unet_targets=tuple(self.unet_targets), overwrite=self.overwrite, resume=self.resume,
                            **extra)


def result_info(result: TrainResult) -> dict[str, Any]:
    """A training job's result for ``/sdapi/v2/jobs/{id}``."""
    return {"info": result.info, "filename": result.filename, "name": result.name, "kind": result.kind,
            "step": result.step, "losses": [list(x) for x in result.losses], "saved": list(result.saved),
            "images": list(result.images), "log_directory": result.log_directory,
            "interrupted": result.interrupted}


async def _finish(app: App, spec: Any, request: Request) -> Any:
    result = await finished_result(app, spec, request, TrainResult)
    return result if isinstance(result, JSONResponse) else {"info": result.info}


def _not_supported() -> JSONResponse:
    return JSONResponse({"error": "NotImplemented", "detail": HYPERNETWORK_MESSAGE}, status_code=501)


def build_router(app: App) -> APIRouter:
    r = APIRouter(prefix="/sdapi/v1", tags=["Training"])

    @r.post("/create/embedding")
    async def create_embedding(body: CreateEmbeddingBody, request: Request) -> Any:
        return await _finish(app, create_spec(body), request)

    @r.post("/train/embedding")
    async def train_embedding(body: TrainEmbeddingBody, request: Request) -> Any:
        return await _finish(app, TrainEmbeddingJob(body.embedding_name, body.options(app)), request)

    @r.post("/train/lora")
    async def train_lora(body: TrainLoraBody, request: Request) -> Any:
        return await _finish(app, body.spec(app), request)

    @r.post("/create/hypernetwork")
    def create_hypernetwork() -> JSONResponse:
        return _not_supported()

    @r.post("/train/hypernetwork")
    def train_hypernetwork() -> JSONResponse:
        return _not_supported()

    return r


def create_spec(body: CreateEmbeddingBody) -> CreateEmbeddingJob:
    return CreateEmbeddingJob(body.name, body.num_vectors_per_token, body.overwrite_old, body.init_text)
