"""Tiny LDM-format models for tests: the SD 1.x inference yaml with tiny sizes, and a local CLIP folder (text config
and a byte-level tokenizer without merges) that a yaml's text encoder ``version`` can name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CLIP_CONFIG: dict[str, Any] = {
    "vocab_size": 514, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
    "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 32, "layer_norm_eps": 1e-5,
    "bos_token_id": 512, "eos_token_id": 513, "pad_token_id": 513,
}


def tiny_v1_params(version: str, in_channels: int = 4) -> dict[str, Any]:
    """``model.params`` of SD 1.x's v1-inference.yaml with the tiny sizes: UNet levels of 32 and 64 channels
    (attention at the first, heads of 8 channels), a 4-level f=8 VAE of 32 channels, the CLIP text encoder of
    :data:`CLIP_CONFIG` loaded from the folder ``version``."""
    return {
        "linear_start": 0.00085, "linear_end": 0.012, "num_timesteps_cond": 1, "log_every_t": 200,
        "timesteps": 1000, "first_stage_key": "jpg", "cond_stage_key": "txt", "image_size": 64, "channels": 4,
        "cond_stage_trainable": False, "conditioning_key": "crossattn", "monitor": "val/loss_simple_ema",
        "scale_factor": 0.18215, "use_ema": False,
        "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": {
            "image_size": 32, "in_channels": in_channels, "out_channels": 4, "model_channels": 32,
            "attention_resolutions": [1], "num_res_blocks": 1, "channel_mult": [1, 2], "num_heads": -1,
            "num_head_channels": 8, "use_spatial_transformer": True, "transformer_depth": 1, "context_dim": 32,
            "use_checkpoint": False, "legacy": False}},
        "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
            "embed_dim": 4, "monitor": "val/rec_loss",
            "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                         "ch": 32, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 1, "attn_resolutions": [],
                         "dropout": 0.0},
            "lossconfig": {"target": "torch.nn.Identity"}}},
        "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                              "params": {"version": version}},
    }


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE for the bytes 0..255."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def write_clip_folder(folder: Path) -> None:
    """The text encoder's config and a byte-level BPE tokenizer without merges (514 tokens: every byte, alone and
    ending a word, and the two special tokens), as a local folder."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        **special, "model_max_length": 77, "do_lower_case": True, "errors": "replace",
        "tokenizer_class": "CLIPTokenizer"}))
    (folder / "config.json").write_text(json.dumps({"architectures": ["CLIPTextModel"],
                                                    "model_type": "clip_text_model", **CLIP_CONFIG}))
