"""The BLIP captioner: a caption of an image, as A1111's BLIP decoder writes it.

The decoder starts from the prompt ``a picture of `` (the tokenizer's ``[CLS]`` replaced by the ``[DEC]`` start
token, the closing ``[SEP]`` dropped), searches with ``num_beams`` beams, no sampling and no repetition penalty, and
the prompt is cut from the decoded text. ``min_length`` and ``max_length`` count tokens including the prompt's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from PIL import Image
from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from modules.interrogate.clip_files import LoadedModel, ModelEntry, find_hf_folders, prefers_safetensors
from modules.interrogate.errors import InterrogateUnavailable

CAPTION_PROMPT = "a picture of "
ORIGINAL_SUFFIXES = (".pth", ".pt", ".safetensors")


@dataclass
class BlipCaptioner(LoadedModel):
    """A loaded BLIP captioning model with its tokenizer and image preprocessing."""

    model: BlipForConditionalGeneration
    image_processor: BlipImageProcessorPil

    def prompt_ids(self) -> torch.Tensor:
        ids = self.tokenizer(CAPTION_PROMPT, return_tensors="pt").input_ids
        return ids.to(self.device)  # type: ignore[no-any-return]

    def pixel_values(self, image: Image.Image) -> torch.Tensor:
        values = self.image_processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        return values.to(device=self.device, dtype=self.dtype)  # type: ignore[no-any-return]

    @torch.no_grad()
    def caption(self, image: Image.Image, num_beams: int = 1, min_length: int = 24, max_length: int = 48) -> str:
        prompt = cast(torch.LongTensor, self.prompt_ids())
        output = self.model.generate(
            pixel_values=self.pixel_values(image), input_ids=prompt, num_beams=num_beams,
            min_length=min(min_length, max_length), max_length=max_length, do_sample=False, repetition_penalty=1.0,
        )
        tokens = output[0]
        text_config: Any = self.model.config.text_config
        if tokens.numel() and int(tokens[0]) == text_config.bos_token_id:
            tokens = tokens[1:]  # the [DEC] start token, which not every BLIP tokenizer marks as special
        return strip_prompt(self.tokenizer.decode(tokens, skip_special_tokens=True))


def strip_prompt(text: str) -> str:
    """The decoded text without the caption prompt it starts with."""
    prompt = CAPTION_PROMPT.strip()
    text = text.strip()
    return text[len(prompt):].strip() if text.lower().startswith(prompt) else text


def find_blip_models(root: Path) -> list[ModelEntry]:
    """BLIP captioners under ``root`` (``models/BLIP``): Hugging Face folders first, then original-layout files."""
    entries = find_hf_folders(root, "blip", "BlipForConditionalGeneration")
    if root.is_dir():
        files = sorted((p for p in root.iterdir() if p.is_file() and p.suffix.lower() in ORIGINAL_SUFFIXES
                        and not p.name.startswith(("model.", "model-"))), key=lambda p: p.name.lower())
        entries += [ModelEntry(p.name, p, "original") for p in files]
    return entries


def load_hf_blip(folder: Path) -> BlipCaptioner:
    """A Hugging Face BLIP captioning folder, read offline."""
    try:
        model = BlipForConditionalGeneration.from_pretrained(
            folder, local_files_only=True, use_safetensors=prefers_safetensors(folder) or None)
        tokenizer = BertTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise InterrogateUnavailable(f"the BLIP model in {folder} cannot be read: {_first_line(exc)}") from exc
    return BlipCaptioner(model.eval(), tokenizer, blip_image_processor(folder, model.config), folder)


def blip_image_processor(folder: Path | None, config: BlipConfig) -> BlipImageProcessorPil:
    """The folder's preprocessing when it has one, else BLIP's: a bicubic resize to the model's square size and
    CLIP's normalisation."""
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        return BlipImageProcessorPil.from_pretrained(folder, local_files_only=True)
    vision: Any = config.vision_config
    size = int(vision.image_size)
    return BlipImageProcessorPil(size={"height": size, "width": size})


def load_blip(entry: ModelEntry) -> BlipCaptioner:
    if entry.kind == "original":
        from modules.interrogate.blip_original import load_original_blip

        return load_original_blip(entry.path)
    return load_hf_blip(entry.path)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
