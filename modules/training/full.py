"""Full training: every weight of the UNet (and of the text encoder, all but its token embedding) learns.

This is how a model is trained from scratch (the demo model's recipe, ``scripts/train_demo_model.py``); it uses the
same loss, loop, schedules and saves as the embedding and LoRA trainings. A state is saved as the components'
diffusers weights (``unet.*``, ``text_encoder.*``) in one ``.safetensors`` with the step in its metadata, and the
optimizer beside it (``.optim``), so a run can be continued.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from modules.models.loader import ModelParts
from modules.training.embedding import load_optimizer, save_optimizer, write_file

Tensor = torch.Tensor
PREFIXES = ("unet.", "text_encoder.")


class FullSubject:
    """The UNet and (with ``train_text_encoder``) the text encoder of ``parts`` learning as a whole. The token
    embedding stays as it is: a prompt uses a handful of its 49,408 rows, and updating the table each step would
    cost more than the rest of the text encoder."""

    def __init__(self, parts: ModelParts, train_text_encoder: bool = True, text_encoder_lr_scale: float = 1.0
                 ) -> None:
        self.parts = parts
        self.step = 0
        self.optimizer_state: dict[str, Any] | None = None
        self.modules: dict[str, torch.nn.Module] = {"unet": parts.unet}
        if train_text_encoder:
            self.modules["text_encoder"] = parts.text_encoder
        self.scales = {"unet": 1.0, "text_encoder": text_encoder_lr_scale}
        frozen = parts.text_encoder.get_input_embeddings().weight
        for module in self.modules.values():
            module.train()
            for param in module.parameters():
                param.requires_grad_(param is not frozen)

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [p for p in module.parameters() if p.requires_grad], "weight_decay": 1e-2,
                 "lr_scale": self.scales[name]} for name, module in self.modules.items()]

    def state_dict(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for name, module in self.modules.items():
            out.update({f"{name}.{k}": v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()})
        return out

    def save(self, path: Path, step: int, optimizer: torch.optim.Optimizer | None) -> Path:
        from safetensors.torch import save

        write_file(path, save(self.state_dict(), metadata={"step": str(step)}))
        if optimizer is not None:
            save_optimizer(path, optimizer)
        return path

    def load(self, path: Path) -> None:
        """Continue from a state saved by :meth:`save`: the weights, the step and the optimizer's moments."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            step = (f.metadata() or {}).get("step", "0")
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open has no iterator
        for name, module in self.modules.items():
            prefix = f"{name}."
            module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        self.step = int(step) if step.isdigit() else 0
        self.optimizer_state = load_optimizer(path)
