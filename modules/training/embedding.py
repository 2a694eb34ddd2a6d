"""Textual-inversion embeddings: created from an initialization text and trained, in A1111's file format.

A file is A1111's ``.pt``: ``{"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name", "step",
"sd_checkpoint", "sd_checkpoint_name"}``. An SDXL embedding is the ``clip_l``/``clip_g`` pair A1111 reads, written as
``.safetensors`` with the step and checkpoint in its metadata. Every write is atomic.
"""

from __future__ import annotations

import errno
import io
import json
from pathlib import Path
from typing import Any

import torch

from modules import fileio
from modules.errors import ValidationError, WebUIError
from modules.models.loader import ModelParts
from modules.networks.embeddings import PAIR_KEYS, Embedding

Tensor = torch.Tensor
MAX_VECTORS = 75
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class TrainingError(WebUIError):
    """A training could not save its file (disk full, no permission); what was there before is unchanged."""


def write_file(path: Path, data: bytes) -> None:
    """``data`` to ``path`` atomically: readers see the old file or the new one, never half of one."""
    try:
        fileio.atomic_write_bytes(path, data)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise TrainingError(f"not enough disk space in {path.parent} to save {path.name} "
                                f"({len(data) / 2**20:.1f} MiB); nothing was written") from None
        raise TrainingError(f"could not save {path} ({exc.strerror or exc}); nothing was written") from None


def clean_name(name: str) -> str:
    """A1111's file-name rule for embeddings: letters, digits and ``._- `` only."""
    return "".join(c for c in name if c.isalnum() or c in "._- ").strip()


def _init_vectors(encoder: Any, tokenizer: Any, init_text: str, count: int) -> Tensor:
    """A1111's ``encode_embedding_init_text`` spread over ``count`` vectors: the init text's token embeddings
    (no start/end tokens) picked at even intervals; zeros without an init text."""
    layer = encoder.get_input_embeddings()
    width = int(layer.weight.shape[1])
    if not init_text:
        return torch.zeros((count, width))
    ids = tokenizer(init_text, add_special_tokens=False, truncation=False)["input_ids"][:count]
    if not ids:
        ids = tokenizer("*", add_special_tokens=False)["input_ids"][:1]
    with torch.no_grad():
        embedded = layer(torch.tensor(ids, device=layer.weight.device)).float().cpu()
    return torch.stack([embedded[i * embedded.shape[0] // count] for i in range(count)])


def initial_vectors(parts: ModelParts, init_text: str, count: int) -> Tensor | dict[str, Tensor]:
    vec = _init_vectors(parts.text_encoder, parts.tokenizer, init_text, count)
    if parts.family.is_xl:
        assert parts.text_encoder_2 is not None and parts.tokenizer_2 is not None
        return {"clip_l": vec, "clip_g": _init_vectors(parts.text_encoder_2, parts.tokenizer_2, init_text, count)}
    return vec


def embedding_path(folder: Path, name: str, parts: ModelParts) -> Path:
    return folder / f"{name}{'.safetensors' if parts.family.is_xl else '.pt'}"


def create_embedding(parts: ModelParts, folder: Path, name: str, num_vectors_per_token: int = 1,
                     overwrite_old: bool = False, init_text: str = "*") -> Path:
    """Write a new embedding at step 0 and return its path (A1111's ``create_embedding``)."""
    cleaned = clean_name(name)
    if not cleaned:
        raise ValidationError("name: the embedding needs a name (letters, digits, '.', '_', '-' or spaces)",
                              field="name")
    if not 1 <= num_vectors_per_token <= MAX_VECTORS:
        raise ValidationError(f"num_vectors_per_token: must be between 1 and {MAX_VECTORS} "
                              f"(got {num_vectors_per_token})", field="num_vectors_per_token")
    path = embedding_path(folder, cleaned, parts)
    if not overwrite_old and path.exists():
        raise ValidationError(f"name: file {path} already exists", field="name")
    vec = initial_vectors(parts, init_text, num_vectors_per_token)
    save_embedding(path, cleaned, vec, 0, None, None)
    path.with_name(path.name + ".optim").unlink(missing_ok=True)  # an earlier embedding's optimizer state
    return path


def embedding_bytes(name: str, vec: Tensor | dict[str, Tensor], step: int, checkpoint_hash: str | None,
                    checkpoint_name: str | None, suffix: str = ".pt") -> bytes:
    """The file's bytes in the format its suffix says: ``.safetensors`` (the vectors, with the step and checkpoint
    in the metadata) or A1111's pickled ``.pt`` (an SDXL pair holds only its two tensors there, as A1111 reads it)."""
    if isinstance(vec, dict):
        tensors = {key: vec[key].detach().float().cpu().contiguous() for key in PAIR_KEYS}
    else:
        tensors = {"emb_params": vec.detach().float().cpu().contiguous()}
    if suffix.lower() == ".safetensors":
        from safetensors.torch import save

        meta = {"name": name, "step": str(step), "sd_checkpoint": checkpoint_hash or "",
                "sd_checkpoint_name": checkpoint_name or ""}
        return save(tensors, metadata=meta)
    data: dict[str, Any] = dict(tensors) if isinstance(vec, dict) else {
        "string_to_token": {"*": 265}, "string_to_param": {"*": tensors["emb_params"]}, "name": name, "step": step,
        "sd_checkpoint": checkpoint_hash, "sd_checkpoint_name": checkpoint_name}
    buf = io.BytesIO()
    torch.save(data, buf)
    return buf.getvalue()


def save_embedding(path: Path, name: str, vec: Tensor | dict[str, Tensor], step: int,
                   checkpoint_hash: str | None, checkpoint_name: str | None) -> Path:
    write_file(path, embedding_bytes(name, vec, step, checkpoint_hash, checkpoint_name, path.suffix))
    return path


def save_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> None:
    """The optimizer's state beside a saved file (``<file>.optim``, as A1111 names it), to resume from."""
    buf = io.BytesIO()
    torch.save({"optimizer_state_dict": optimizer.state_dict()}, buf)
    write_file(path.with_name(path.name + ".optim"), buf.getvalue())


def load_optimizer(path: Path) -> dict[str, Any] | None:
    """The optimizer state saved beside ``path``, or None (missing or unreadable: training starts it afresh)."""
    optim = path.with_name(path.name + ".optim")
    if not optim.is_file():
        return None
    try:
        data = torch.load(optim, map_location="cpu", weights_only=True)
    except Exception:  # a corrupt or foreign file: resume without it
        return None
    state = data.get("optimizer_state_dict") if isinstance(data, dict) else None
    return state if isinstance(state, dict) else None


class EmbeddingSubject:
    """An embedding being trained: its vectors as parameters, its step, and how it is saved."""

    def __init__(self, embedding: Embedding, device: torch.device, checkpoint_hash: str | None,
                 checkpoint_name: str | None) -> None:
        self.name = embedding.name
        self.source = embedding.path
        self.step = embedding.step or 0
        self.checkpoint_hash = checkpoint_hash
        self.checkpoint_name = checkpoint_name
        vec = embedding.vec
        if isinstance(vec, dict):
            self.vec: Tensor | dict[str, Tensor] = {k: self._param(v, device) for k, v in vec.items()}
        else:
            self.vec = self._param(vec, device)
        self.trainable = Embedding(embedding.name, embedding.path, self.vec, embedding.step,
                                   embedding.sd_checkpoint, embedding.sd_checkpoint_name, embedding.shorthash)
        self.optimizer_state = load_optimizer(embedding.path)

    @staticmethod
    def _param(vec: Tensor, device: torch.device) -> Tensor:
        return torch.nn.Parameter(vec.detach().to(device=device, dtype=torch.float32).clone())

    def param_groups(self) -> list[dict[str, Any]]:
        params = list(self.vec.values()) if isinstance(self.vec, dict) else [self.vec]
        return [{"params": params, "weight_decay": 0.0, "lr_scale": 1.0}]

    def save(self, path: Path, step: int, optimizer: torch.optim.Optimizer | None) -> Path:
        save_embedding(path, path.stem, self.vec, step, self.checkpoint_hash, self.checkpoint_name)
        if optimizer is not None:
            save_optimizer(path, optimizer)
        return path

    def png_chunk(self, step: int) -> str:
        """A1111's ``sd-ti-embedding`` PNG text: the embedding as JSON (tensors as nested lists), base64."""
        import base64

        def encode(value: Tensor) -> dict[str, Any]:
            return {"TORCHTENSOR": value.detach().float().cpu().tolist()}

        vec = self.vec
        data: dict[str, Any] = (
            {k: encode(v) for k, v in vec.items()} if isinstance(vec, dict) else
            {"string_to_token": {"*": 265}, "string_to_param": {"*": encode(vec)}, "name": self.name, "step": step,
             "sd_checkpoint": self.checkpoint_hash, "sd_checkpoint_name": self.checkpoint_name})
        return base64.b64encode(json.dumps(data).encode("utf-8")).decode("ascii")
