"""A1111's own BLIP file, ``model_base_caption_capfilt_large.pth`` (Salesforce's original layout), read into
transformers' BLIP by renaming keys.

The text decoder's keys (``text_decoder.bert.*``, ``text_decoder.cls.*``) are the same in both layouts; the vision
transformer's are renamed (``visual_encoder.blocks.N.attn.qkv`` -> ``vision_model.encoder.layers.N.self_attn.qkv``
and so on). The architecture is read from the tensor shapes (64-dimension attention heads, as every released BLIP
has). The tokenizer is BERT's uncased vocabulary plus the ``[DEC]`` and ``[ENC]`` tokens, from a ``vocab.txt``
beside the file. Pickles are read with ``torch.load(weights_only=True)``; a ``.safetensors`` file of the same layout
is read too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration

from modules.interrogate.blip import BlipCaptioner, blip_image_processor
from modules.interrogate.errors import InterrogateUnavailable

HEAD_DIM = 64
VISION_LAYER_NORM_EPS = 1e-6
VOCAB_FOLDERS = ("", "bert-base-uncased", "bert")

_VISION_RENAMES = (
    (re.compile(r"^visual_encoder\.cls_token$"), "vision_model.embeddings.class_embedding"),
    (re.compile(r"^visual_encoder\.pos_embed$"), "vision_model.embeddings.position_embedding"),
    (re.compile(r"^visual_encoder\.patch_embed\.proj\."), "vision_model.embeddings.patch_embedding."),
    (re.compile(r"^visual_encoder\.norm\."), "vision_model.post_layernorm."),
    (re.compile(r"^visual_encoder\.blocks\.(\d+)\.norm([12])\."), r"vision_model.encoder.layers.\1.layer_norm\2."),
    (re.compile(r"^visual_encoder\.blocks\.(\d+)\.attn\.qkv\."), r"vision_model.encoder.layers.\1.self_attn.qkv."),
    (re.compile(r"^visual_encoder\.blocks\.(\d+)\.attn\.proj\."),
     r"vision_model.encoder.layers.\1.self_attn.projection."),
    (re.compile(r"^visual_encoder\.blocks\.(\d+)\.mlp\.(fc[12])\."), r"vision_model.encoder.layers.\1.mlp.\2."),
)


def rename_original_key(key: str) -> str | None:
    """The transformers name of an original BLIP captioner key, or None for keys the captioner does not use."""
    if key.startswith("text_decoder."):
        return None if key.endswith(".position_ids") else key
    for pattern, replacement in _VISION_RENAMES:
        renamed, count = pattern.subn(replacement, key)
        if count:
            return renamed
    return None


def convert_original_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    converted = {}
    for key, value in state_dict.items():
        renamed = rename_original_key(key)
        if renamed is not None:
            converted[renamed] = value
    return converted


def _count_layers(keys: list[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for key in keys if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def config_from_state_dict(converted: dict[str, torch.Tensor], special_tokens: dict[str, int] | None = None
                           ) -> BlipConfig:
    """The BLIP configuration the converted weights describe."""
    keys = list(converted)
    try:
        patch = converted["vision_model.embeddings.patch_embedding.weight"]
        positions = converted["vision_model.embeddings.position_embedding"].shape[-2]
        vision_width = int(patch.shape[0])
        words = converted["text_decoder.bert.embeddings.word_embeddings.weight"]
        text_width = int(words.shape[1])
        cross = converted["text_decoder.bert.encoder.layer.0.crossattention.self.key.weight"]
    except KeyError as exc:
        raise ValueError(f"not a BLIP captioning checkpoint (no {exc.args[0]})") from exc
    grid = round((positions - 1) ** 0.5)
    vision = {
        "hidden_size": vision_width, "num_attention_heads": max(vision_width // HEAD_DIM, 1),
        "intermediate_size": int(converted["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        "num_hidden_layers": _count_layers(keys, "vision_model.encoder.layers."),
        "patch_size": int(patch.shape[-1]), "image_size": grid * int(patch.shape[-1]),
        "layer_norm_eps": VISION_LAYER_NORM_EPS,
    }
    text = {
        "vocab_size": int(words.shape[0]), "hidden_size": text_width,
        "num_attention_heads": max(text_width // HEAD_DIM, 1),
        "intermediate_size": int(converted["text_decoder.bert.encoder.layer.0.intermediate.dense.weight"].shape[0]),
        "num_hidden_layers": _count_layers(keys, "text_decoder.bert.encoder.layer."),
        "max_position_embeddings": int(converted["text_decoder.bert.embeddings.position_embeddings.weight"].shape[0]),
        "encoder_hidden_size": int(cross.shape[1]), **(special_tokens or {}),
    }
    return BlipConfig(text_config=text, vision_config=vision)


def read_original_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an original BLIP file: safetensors, or a pickle read with ``weights_only=True``."""
    if path.suffix.lower() == ".safetensors":
        return load_file(path)
    data = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict):
        raise ValueError("the file holds no state dict")
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def find_vocab(path: Path) -> Path | None:
    """A BERT ``vocab.txt`` beside the file: in its folder, in a folder named like it, or in ``bert-base-uncased/``."""
    for folder in (path.parent / path.stem, *(path.parent / name for name in VOCAB_FOLDERS)):
        candidate = folder / "vocab.txt"
        if candidate.is_file():
            return candidate
    return None


def build_blip_tokenizer(vocab: Path) -> BertTokenizer:
    """BERT's uncased tokenizer with BLIP's ``[DEC]`` start token and ``[ENC]`` token appended."""
    tokens = vocab.read_text(encoding="utf-8").split("\n")
    if tokens and not tokens[-1]:
        tokens.pop()
    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(tokens)}, do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    return tokenizer


_TIED = {"text_decoder.cls.predictions.decoder.weight", "text_decoder.cls.predictions.decoder.bias"}


def _build_model(converted: dict[str, torch.Tensor], tokenizer: BertTokenizer) -> BlipForConditionalGeneration:
    special = {"bos_token_id": tokenizer.convert_tokens_to_ids("[DEC]"), "sep_token_id": tokenizer.sep_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    config = config_from_state_dict(converted, special)
    text: Any = config.text_config
    if text.vocab_size != len(tokenizer):
        raise ValueError(f"the weights have {text.vocab_size} tokens, the tokenizer {len(tokenizer)}")
    model = BlipForConditionalGeneration(config)
    expected = set(model.state_dict())
    missing = sorted(expected - set(converted) - _TIED)
    if missing:
        raise ValueError(f"{len(missing)} weights are missing, e.g. {missing[0]}")
    model.load_state_dict({k: v for k, v in converted.items() if k in expected}, strict=False)
    model.tie_weights()
    model.eval()
    return model


def load_original_blip(path: Path) -> BlipCaptioner:
    vocab = find_vocab(path)
    if vocab is None:
        raise InterrogateUnavailable(
            f"{path.name} needs BERT's vocab.txt (bert-base-uncased) beside it: place it in {path.parent} or in "
            f"{path.parent / 'bert-base-uncased'}")
    try:
        tokenizer = build_blip_tokenizer(vocab)
        model = _build_model(convert_original_state_dict(read_original_checkpoint(path)), tokenizer)
    except (OSError, ValueError, RuntimeError, KeyError, EOFError) as exc:
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise InterrogateUnavailable(f"the BLIP file {path} cannot be read: {message}") from exc
    return BlipCaptioner(model, tokenizer, blip_image_processor(None, model.config), path)
