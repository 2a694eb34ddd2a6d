"""The CLIP model that ranks the categories: image and text embeddings from a Hugging Face CLIP folder.

Texts are tokenized as A1111 does, truncated to the model's context (77 tokens). A folder without tokenizer files
uses the CLIP vocabulary bundled with the application; one without a preprocessor config uses CLIP's own
preprocessing (bicubic resize of the short side, centre crop, CLIP normalisation) at the model's image size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import CLIPModel, CLIPTokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from modules.errors import ModelLoadError
from modules.interrogate.clip_files import LoadedModel, ModelEntry, find_hf_folders, prefers_safetensors
from modules.interrogate.errors import InterrogateUnavailable

TEXT_BATCH = 256
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


@dataclass
class ClipEncoder(LoadedModel):
    """A loaded CLIP model with its tokenizer and image preprocessing."""

    model: CLIPModel
    image_processor: CLIPImageProcessorPil

    @property
    def context_length(self) -> int:
        text: Any = self.model.config.text_config
        return min(77, int(text.max_position_embeddings))

    @torch.no_grad()
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """The image's embedding, ``(1, d)``, float32 on the CPU, not normalised."""
        pixels = self.image_processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        output = self.model.get_image_features(pixel_values=pixels.to(device=self.device, dtype=self.dtype))
        return _pooled(output).float().cpu()

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = TEXT_BATCH) -> torch.Tensor:
        """The texts' embeddings, ``(len(texts), d)``, float32 on the CPU, not normalised."""
        parts = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                                    max_length=self.context_length, return_tensors="pt")
            output = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                  attention_mask=tokens["attention_mask"].to(self.device))
            parts.append(_pooled(output).float().cpu())
        if not parts:
            config: Any = self.model.config
            return torch.zeros(0, int(config.projection_dim))
        return torch.cat(parts)


def _pooled(output: Any) -> torch.Tensor:
    """The projected embedding, whether transformers returns it bare or as the pooled output of a model output."""
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output  # type: ignore[no-any-return]


def find_clip_models(root: Path) -> list[ModelEntry]:
    """Hugging Face CLIP folders under ``root`` (``models/CLIP``)."""
    return find_hf_folders(root, "clip")


def _tokenizer(folder: Path) -> Any:
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    from modules.models.tokenizer import build_clip_tokenizer

    return build_clip_tokenizer()


def _image_processor(folder: Path, model: CLIPModel) -> CLIPImageProcessorPil:
    if (folder / "preprocessor_config.json").is_file():
        return CLIPImageProcessorPil.from_pretrained(folder, local_files_only=True)
    vision: Any = model.config.vision_config
    size = int(vision.image_size)
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def load_clip(entry: ModelEntry) -> ClipEncoder:
    """A Hugging Face CLIP folder, read offline."""
    folder = entry.path
    try:
        model = CLIPModel.from_pretrained(folder, local_files_only=True,
                                          use_safetensors=prefers_safetensors(folder) or None)
        tokenizer = _tokenizer(folder)
        processor = _image_processor(folder, model)
    except (OSError, ValueError, RuntimeError, KeyError, ModelLoadError) as exc:
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise InterrogateUnavailable(f"the CLIP model in {folder} cannot be read: {message}") from exc
    return ClipEncoder(model.eval(), tokenizer, processor, folder)
