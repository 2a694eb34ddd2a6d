"""LoRA training: peft's LoRA layers on copies of the UNet (and the text encoder), written in kohya's format.

A file holds ``lora_unet_<module>.lora_down.weight`` (rank x in), ``.lora_up.weight`` (out x rank) and ``.alpha``
for every adapted layer; SD 1.x/2.x name UNet modules by their diffusers path and SDXL by the original (SGM) path,
as kohya's sd-scripts do; text encoder modules are ``lora_te_<HF CLIP path>`` (SDXL: ``lora_te1_``/``lora_te2_``).
peft's scale ``alpha / rank`` is kohya's, so the weights go across unchanged. The ``ss_*`` metadata is kohya's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modules.errors import ValidationError
from modules.models.convert import UNET_PREFIX, unet_to_ldm
from modules.models.loader import ModelParts
from modules.networks.lora_files import read_metadata
from modules.training.embedding import load_optimizer, save_optimizer, write_file
from modules.training.specs import TrainLoraJob

Tensor = torch.Tensor
ADAPTER = "default"


def base_model_version(parts: ModelParts) -> str:
    """kohya's ``ss_base_model_version``."""
    if parts.family.is_xl:
        return "sdxl_base_v1-0"
    return "sd_v2" if parts.family.base == "sd2" else "sd_v1"


def _ldm_names(unet: torch.nn.Module) -> dict[str, str]:
    """diffusers module path -> the original layout's path, for the modules the converter knows."""
    config: Mapping[str, Any] = getattr(unet, "config", {})
    names = {f"{n}.weight": n for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)}
    out: dict[str, str] = {}
    for key, name in names.items():
        try:
            converted = unet_to_ldm({key: name}, config)
        except (ValueError, KeyError):
            continue
        for ldm_key, value in converted.items():
            out[value] = ldm_key[len(UNET_PREFIX):-len(".weight")]
    return out


def _inject(module: torch.nn.Module, rank: int, alpha: float, targets: tuple[str, ...], field: str) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha,  # type: ignore[arg-type]  # peft takes a float alpha too
                        target_modules=list(targets), lora_dropout=0.0,
                        init_lora_weights=True)
    try:
        inject_adapter_in_model(config, module, adapter_name=ADAPTER)
    except ValueError as exc:  # no module matched the targets
        raise ValidationError(f"{field}: {exc}", field=field) from None


def _lora_layers(module: torch.nn.Module) -> dict[str, Any]:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in module.named_modules() if isinstance(m, LoraLayer) and ADAPTER in m.lora_A}


@dataclass
class Component:
    prefix: str  # kohya's key prefix: lora_unet_, lora_te_, lora_te1_, lora_te2_
    module: torch.nn.Module
    lr_scale: float
    names: dict[str, str]  # module path -> the name written in the file (before underscoring)

    def layers(self) -> dict[str, Any]:
        return _lora_layers(self.module)

    def key(self, path: str) -> str:
        return self.prefix + self.names.get(path, path).replace(".", "_")


class LoraSubject:
    """LoRA layers added to the training copies in ``parts``; saves kohya files."""

    def __init__(self, parts: ModelParts, spec: TrainLoraJob, base_lr: float, meta: dict[str, str],
                 resume: Path | None = None) -> None:
        self.parts = parts
        self.spec = spec
        self.step = 0
        self.meta = meta
        self.rank, self.alpha = spec.rank, spec.alpha
        self.optimizer_state: dict[str, Any] | None = None
        resumed: dict[str, Tensor] = {}
        if resume is not None:
            resumed, self.step = self._read_resume(resume)
        self.components: list[Component] = []
        if spec.train_unet:
            names = _ldm_names(parts.unet) if parts.family.is_xl else {}  # before peft wraps the layers
            _inject(parts.unet, self.rank, self.alpha, spec.unet_targets, "unet_targets")
            scale = (spec.unet_lr or base_lr) / base_lr
            self.components.append(Component("lora_unet_", parts.unet, scale, names))
        if spec.train_text_encoder:
            scale = (spec.text_encoder_lr or base_lr) / base_lr
            first = "lora_te1_" if parts.text_encoder_2 is not None else "lora_te_"
            encoders: list[tuple[str, torch.nn.Module]] = [(first, parts.text_encoder)]
            if parts.text_encoder_2 is not None:
                encoders.append(("lora_te2_", parts.text_encoder_2))
            for prefix, encoder in encoders:
                _inject(encoder, self.rank, self.alpha, spec.text_targets, "text_targets")
                names = {n: n if n.startswith("text_model.") else f"text_model.{n}" for n, _ in encoder.named_modules()}
                self.components.append(Component(prefix, encoder, scale, names))
        if not self.components:
            raise ValidationError("train_unet: train the UNet, the text encoder or both", field="train_unet")
        for component in self.components:
            for layer in component.layers().values():
                for param in (layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight):
                    param.data = param.data.float()
                    param.requires_grad_(True)
        if resumed:
            self._load(resumed)

    def _read_resume(self, path: Path) -> tuple[dict[str, Tensor], int]:
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path), device="cpu")
            meta = read_metadata(path)
        except Exception as exc:  # a foreign or damaged file
            raise ValidationError(f"resume: {path.name} is not a LoRA file this can continue ({exc})",
                                  field="resume") from None
        downs = [v for k, v in tensors.items() if k.endswith(".lora_down.weight")]
        if not downs:
            raise ValidationError(f"resume: {path.name} holds no LoRA layers", field="resume")
        self.rank = int(downs[0].shape[0])
        alphas = [float(v) for k, v in tensors.items() if k.endswith(".alpha")]
        self.alpha = alphas[0] if alphas else float(self.rank)
        step = str(meta.get("ss_steps", "0"))
        self.optimizer_state = load_optimizer(path)
        return tensors, int(step) if step.isdigit() else 0

    def _load(self, tensors: Mapping[str, Tensor]) -> None:
        missing = []
        for component in self.components:
            for path, layer in component.layers().items():
                key = component.key(path)
                down, up = tensors.get(f"{key}.lora_down.weight"), tensors.get(f"{key}.lora_up.weight")
                if down is None or up is None:
                    missing.append(key)
                    continue
                a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
                a.data.copy_(down.reshape(a.shape).float())
                b.data.copy_(up.reshape(b.shape).float())
        if missing:
            raise ValidationError(f"resume: the file lacks {len(missing)} of the layers this training adapts "
                                  f"(e.g. {missing[0]}); use the same target modules", field="resume")

    def param_groups(self) -> list[dict[str, Any]]:
        groups = []
        for component in self.components:
            params = [p for layer in component.layers().values()
                      for p in (layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight)]
            groups.append({"params": params, "weight_decay": 1e-2, "lr_scale": component.lr_scale})
        return groups

    def state_dict(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for component in self.components:
            for path, layer in component.layers().items():
                key = component.key(path)
                down = layer.lora_A[ADAPTER].weight.detach().float().cpu()
                up = layer.lora_B[ADAPTER].weight.detach().float().cpu()
                out[f"{key}.lora_down.weight"] = down.contiguous()
                out[f"{key}.lora_up.weight"] = up.contiguous()
                out[f"{key}.alpha"] = torch.tensor(float(self.alpha))
        return out

    def metadata(self, step: int, name: str) -> dict[str, str]:
        meta = dict(self.meta)
        meta.update({"ss_output_name": name, "ss_steps": str(step), "ss_network_dim": str(self.rank),
                     "ss_network_alpha": f"{self.alpha:g}", "ss_training_finished_at": str(time.time())})
        return meta

    def save(self, path: Path, step: int, optimizer: torch.optim.Optimizer | None) -> Path:
        from safetensors.torch import save

        write_file(path, save(self.state_dict(), metadata=self.metadata(step, path.stem)))
        if optimizer is not None:
            save_optimizer(path, optimizer)
        return path


def kohya_metadata(parts: ModelParts, spec: TrainLoraJob, image_count: int, tag_frequency: dict[str, int],
                   dataset_dir: Path, max_steps: int, seed: int) -> dict[str, str]:
    """kohya's ``ss_*`` keys for a training of ``spec`` (the per-save ones are added by :meth:`LoraSubject.save`)."""
    opts = spec.options
    info = parts.info
    folder = dataset_dir.name or "dataset"
    return {
        "ss_network_module": "networks.lora", "ss_base_model_version": base_model_version(parts),
        "ss_v2": str(parts.family.base == "sd2"), "ss_v_parameterization": str(parts.prediction_type ==
                                                                                "v_prediction"),
        "ss_sd_model_name": info.model_name if info else "", "ss_sd_model_hash": (info.shorthash or "") if info
        else "", "ss_new_sd_model_hash": (info.sha256 or "") if info else "",
        "ss_training_started_at": str(time.time()), "ss_num_train_images": str(image_count),
        "ss_max_train_steps": str(max_steps), "ss_learning_rate": opts.learn_rate,
        "ss_unet_lr": str(spec.unet_lr if spec.unet_lr is not None else opts.learn_rate),
        "ss_text_encoder_lr": str(spec.text_encoder_lr if spec.text_encoder_lr is not None else opts.learn_rate),
        "ss_lr_scheduler": opts.lr_scheduler, "ss_lr_warmup_steps": str(opts.lr_warmup_steps),
        "ss_train_batch_size": str(opts.batch_size), "ss_gradient_accumulation_steps": str(opts.gradient_step),
        "ss_resolution": f"({opts.training_width}, {opts.training_height})", "ss_enable_bucket": str(opts.buckets),
        "ss_min_snr_gamma": str(opts.min_snr_gamma or None), "ss_noise_offset": str(opts.noise_offset or None),
        "ss_mixed_precision": opts.mixed_precision, "ss_gradient_checkpointing": str(opts.gradient_checkpointing),
        "ss_seed": str(seed), "ss_shuffle_caption": str(opts.shuffle_tags),
        "ss_caption_tag_dropout_rate": str(opts.tag_drop_out),
        "ss_caption_dropout_rate": str(opts.caption_dropout), "ss_flip_aug": str(opts.flip),
        "ss_optimizer": "torch.optim.adamw.AdamW", "ss_network_train_unet_only": str(not spec.train_text_encoder),
        "ss_network_args": json.dumps({"unet_targets": list(spec.unet_targets) if spec.train_unet else [],
                                       "text_targets": list(spec.text_targets) if spec.train_text_encoder
                                       else []}),
        "ss_tag_frequency": json.dumps({folder: tag_frequency}),
        "ss_dataset_dirs": json.dumps({folder: {"n_repeats": 1, "img_count": image_count}}),
    }
