"""The training jobs as plain, serialisable specs, with A1111's argument names where A1111 has the argument.

- :class:`CreateEmbeddingJob`: A1111's "Create embedding" (``/sdapi/v1/create/embedding``).
- :class:`TrainEmbeddingJob`: A1111's "Train" for an embedding (``/sdapi/v1/train/embedding``).
- :class:`TrainLoraJob`: a LoRA, written in kohya's format (``/sdapi/v1/train/lora``).

Both trainings share :class:`TrainOptions`: the dataset, the steps, the learning rate and its schedule, the
augmentations, the previews and the saves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

LATENT_SAMPLING = ("once", "deterministic", "random")
CLIP_GRAD_MODES = ("disabled", "value", "norm")
LR_SCHEDULERS = ("constant", "cosine")
MIXED_PRECISION = ("no", "fp16", "bf16")
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the UNet's attention projections
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")  # the text encoder's attention projections


@dataclass(frozen=True)
class PreviewOptions:
    """The image made every ``create_image_every`` steps: A1111's "Read parameters (prompt, etc...) from txt2img
    tab when making previews" gives ``prompt`` and the rest; an empty prompt uses the step's first caption and
    A1111's defaults (20 steps at the training size)."""

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    sampler_name: str = "Euler a"
    cfg_scale: float = 7.0
    seed: int = -1
    width: int = 512
    height: int = 512


@dataclass(frozen=True)
class TrainOptions:
    data_root: str = ""
    log_directory: str = "textual_inversion"
    template_filename: str = "style_filewords.txt"
    training_width: int = 512
    training_height: int = 512
    varsize: bool = False  # "Do not resize images": each image at its own size (rounded down to a multiple of 8)
    buckets: bool = False  # aspect-ratio buckets of about width x height pixels
    steps: int = 100000
    epochs: int = 0  # > 0: train this many passes over the dataset instead of ``steps``
    batch_size: int = 1
    gradient_step: int = 1  # gradient accumulation steps
    learn_rate: str = "0.005"  # A1111's schedule syntax: "0.005" or "0.005:100, 1e-5:1000"
    lr_scheduler: str = "constant"  # or "cosine" (from the rate down to 0)
    lr_warmup_steps: int = 0
    clip_grad_mode: str = "disabled"
    clip_grad_value: str = "0.1"
    shuffle_tags: bool = False
    tag_drop_out: float = 0.0
    caption_dropout: float = 0.0  # the share of steps whose prompt is empty (kohya's caption_dropout_rate)
    flip: bool = False  # random horizontal flips
    noise_offset: float = 0.0
    min_snr_gamma: float = 0.0  # 0: plain MSE; else min-SNR-gamma weighting (Hang et al. 2023), e.g. 5
    latent_sampling_method: str = "once"
    use_weight: bool = False  # "Use PNG alpha channel as loss weight"
    mixed_precision: str = "no"  # CUDA only: autocast in fp16 (with a gradient scaler) or bf16
    gradient_checkpointing: bool = False
    seed: int = -1
    create_image_every: int = 500
    save_every: int = 500  # A1111's save_embedding_every
    save_image_with_stored_embedding: bool = True
    preview_from_txt2img: bool = False
    preview: PreviewOptions = field(default_factory=PreviewOptions)
    # from the Training settings when the job is made: A1111's training_write_csv_every and the file-name caption
    # rules dataset_filename_word_regex / dataset_filename_join_string
    write_csv_every: int = 500
    clip_skip: int = 1  # CLIP_stop_at_last_layers, for the captions as for prompts
    filename_word_regex: str = ""
    filename_join_string: str = " "


@dataclass(frozen=True)
class CreateEmbeddingJob:
    kind: ClassVar[str] = "create-embedding"
    name: str
    num_vectors_per_token: int = 1
    overwrite_old: bool = False
    init_text: str = "*"


@dataclass(frozen=True)
class TrainEmbeddingJob:
    kind: ClassVar[str] = "train-embedding"
    embedding_name: str
    options: TrainOptions = field(default_factory=TrainOptions)


@dataclass(frozen=True)
class TrainLoraJob:
    """A LoRA on the loaded checkpoint. ``resume``: a LoRA file saved by an earlier run (a name in the LoRA folder
    or the log folder, or a path), continued from its step with its optimizer state when that was saved."""

    kind: ClassVar[str] = "train-lora"
    name: str
    options: TrainOptions = field(default_factory=lambda: TrainOptions(learn_rate="0.0001",
                                                                       log_directory="lora_training",
                                                                       template_filename="filewords.txt"))
    rank: int = 4
    alpha: float = 1.0
    train_unet: bool = True
    train_text_encoder: bool = False
    unet_lr: float | None = None  # None: the learning rate of ``options``
    text_encoder_lr: float | None = None
    unet_targets: tuple[str, ...] = UNET_TARGETS
    text_targets: tuple[str, ...] = TEXT_TARGETS
    overwrite: bool = False
    resume: str = ""


@dataclass(frozen=True)
class TrainResult:
    """What a training job gives back. ``info`` is A1111's response text; ``losses`` is ``(step, loss)``."""

    info: str
    filename: str = ""
    name: str = ""
    kind: str = ""  # "embedding" or "lora"
    step: int = 0
    losses: tuple[tuple[int, float], ...] = ()
    saved: tuple[str, ...] = ()  # the files saved along the way, in order
    images: tuple[str, ...] = ()  # the preview images written, in order
    log_directory: str = ""
    interrupted: bool = False
    error: str | None = None
