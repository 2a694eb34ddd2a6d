"""A ``<name>.yaml`` (original LDM/SGM inference config) beside a single file gives every size and the schedule."""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from modules.errors import ModelLoadError
from modules.models import convert
from modules.models.checkpoint_file import CheckpointFile
from modules.models.families import bundled_config_dir
from modules.models.ldm_yaml import read_ldm_yaml
from modules.models.loader import ModelParts, load_model, resolve_single_file_config
from modules.models.registry import CheckpointInfo
from tests.ldm_support import CLIP_CONFIG, byte_symbols, tiny_v1_params, write_clip_folder

# ---------------------------------------------------------------- a tiny SD 1.x model, built independently

# What the yaml below means, written out by hand in diffusers' terms: two levels of 32 and 64 channels, attention at
# the first level (ds=1) and in the middle, heads of 8 channels (so 4 and 8 heads), one res block per level.
_UNET = {
    "sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
    "block_out_channels": [32, 64], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "attention_head_dim": [4, 8],
    "cross_attention_dim": 32, "norm_num_groups": 32,
}
_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 32,
    "block_out_channels": [32, 64, 64, 64], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
_CLIP = CLIP_CONFIG


def _v1_yaml(**schedule: Any) -> dict[str, Any]:
    """An SD 1.x inference config (the layout of v1-inference.yaml) with the tiny model's sizes."""
    params = tiny_v1_params("clip-tiny")
    params.update(schedule)
    return {"model": {"base_learning_rate": 1.0e-4, "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
                      "params": params}}


_byte_symbols = byte_symbols
_write_clip_folder = write_clip_folder


def _components(seed: int = 0) -> dict[str, Any]:
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**_UNET).eval()
    with torch.no_grad():  # diffusers zero-initialises some output layers; give every path a say
        for p in unet.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    return {"unet": unet, "vae": AutoencoderKL(**_VAE).eval(),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**_CLIP)).eval()}


def _write_model(folder: Path, doc: dict[str, Any] | str | None = None, seed: int = 0,
                 clip_dir: str | None = "clip-tiny") -> tuple[Path, dict[str, Any]]:
    folder.mkdir(parents=True, exist_ok=True)
    parts = _components(seed)
    sd = convert.unet_to_ldm(parts["unet"].state_dict(), parts["unet"].config)
    sd.update(convert.vae_to_ldm(parts["vae"].state_dict(), parts["vae"].config))
    sd.update(convert.clip_to_ldm(parts["text_encoder"].state_dict(), "cond_stage_model.transformer."))
    path = folder / "tiny.safetensors"
    save_file({k: v.detach().contiguous().clone() for k, v in sd.items()}, str(path))
    if clip_dir is not None:
        _write_clip_folder(folder / clip_dir)
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc if doc is not None else _v1_yaml())
    path.with_suffix(".yaml").write_text(text)
    return path, parts


def _load(path: Path, config: Path | None = None) -> ModelParts:
    return load_model(CheckpointInfo(path, path.name, "safetensors"), torch.float32, config)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], ModelParts]:
    path, parts = _write_model(tmp_path_factory.mktemp("yaml-model"))
    return path, parts, _load(path)


def _same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


# ---------------------------------------------------------------- it loads, with the yaml's sizes


def test_tiny_model_loads_with_the_yaml_sizes(tiny):
    path, ref, parts = tiny
    assert parts.family.name == "sd1"
    assert parts.config_path == path.with_suffix(".yaml")
    unet = parts.unet.config
    assert list(unet.block_out_channels) == [32, 64]
    assert list(unet.down_block_types) == ["CrossAttnDownBlock2D", "DownBlock2D"]
    assert list(unet.up_block_types) == ["UpBlock2D", "CrossAttnUpBlock2D"]
    assert unet.layers_per_block == 1 and unet.cross_attention_dim == 32
    assert list(unet.attention_head_dim) == [4, 8]  # 32 and 64 channels in heads of num_head_channels=8
    assert not unet.use_linear_projection
    assert list(parts.vae.config.block_out_channels) == [32, 64, 64, 64]
    assert parts.vae.config.layers_per_block == 1 and parts.vae.config.latent_channels == 4
    assert parts.vae.config.scaling_factor == pytest.approx(0.18215)
    te = parts.text_encoder.config
    assert (te.hidden_size, te.num_hidden_layers, te.num_attention_heads, te.vocab_size) == (32, 2, 4, 514)
    for name in ("unet", "vae", "text_encoder"):
        assert _same_parameters(getattr(parts, name), ref[name]), name


def test_tiny_model_computes_like_the_original(tiny):
    """Same weights are not enough: the heads must be split as the yaml says, or attention differs."""
    _, ref, parts = tiny
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 5, 32, generator=g)
    t = torch.tensor([321.0])
    with torch.no_grad():
        ours = parts.unet(x, t, encoder_hidden_states=ctx).sample
        theirs = ref["unet"](x, t, encoder_hidden_states=ctx).sample
        assert torch.allclose(ours, theirs, atol=1e-5)
        wrong = copy.deepcopy(ref["unet"])
        for module in wrong.modules():
            if hasattr(module, "heads") and hasattr(module, "to_q"):
                module.heads = 1
        assert not torch.allclose(ours, wrong(x, t, encoder_hidden_states=ctx).sample, atol=1e-3)
        ids = torch.tensor([[512, 70, 71, 513]])
        assert torch.allclose(parts.text_encoder(input_ids=ids).last_hidden_state,
                              ref["text_encoder"](input_ids=ids).last_hidden_state, atol=1e-5)
        z = torch.randn(1, 4, 4, 4, generator=g)
        assert torch.allclose(parts.vae.decode(z).sample, ref["vae"].decode(z).sample, atol=1e-5)


def test_tokenizer_comes_from_the_version_folder(tiny):
    _, _, parts = tiny
    tok = parts.tokenizer
    assert len(tok) == 514  # the folder's vocabulary, not the bundled 49,408 tokens
    ids = tok("ab").input_ids
    symbols = _byte_symbols()
    assert ids == [512, symbols.index("a"), 256 + symbols.index("b"), 513]
    assert tok.model_max_length == 77


def test_scheduler_config_carries_the_yaml_schedule(tmp_path):
    path, _ = _write_model(tmp_path, _v1_yaml(linear_start=0.0012, linear_end=0.018, timesteps=800,
                                              parameterization="v"))
    parts = _load(path)
    sc = parts.scheduler_config
    assert (sc["beta_start"], sc["beta_end"], sc["num_train_timesteps"]) == (0.0012, 0.018, 800)
    assert sc["beta_schedule"] == "scaled_linear"
    assert sc["prediction_type"] == parts.prediction_type == "v_prediction"
    assert parts.family.name == "sd1"
    assert not sc.get("rescale_betas_zero_snr", False)
    # LDM's "linear" schedule: betas = linspace(sqrt(start), sqrt(end), T)^2, in float64
    betas = np.linspace(0.0012**0.5, 0.018**0.5, 800, dtype=np.float64) ** 2
    expected = torch.from_numpy(np.cumprod(1 - betas)).float()
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler.from_config({k: v for k, v in sc.items() if not k.startswith("_")})
    assert torch.allclose(sched.alphas_cumprod, expected, atol=2e-6)


def test_zero_terminal_snr_and_other_schedules(tmp_path):
    path, _ = _write_model(tmp_path, _v1_yaml(zero_terminal_snr=True, beta_schedule="sqrt_linear",
                                              linear_start=1e-4, linear_end=2e-2))
    parts = _load(path)
    sc = parts.scheduler_config
    assert sc["rescale_betas_zero_snr"] is True and sc["beta_schedule"] == "linear"
    assert parts.ldm_config is not None and parts.ldm_config.zero_terminal_snr
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config({k: v for k, v in sc.items() if not k.startswith("_")})
    assert float(sched.alphas_cumprod[-1]) < 1e-6  # the last step is pure noise


def test_version_may_be_absolute_or_beside_the_checkpoint(tmp_path):
    model_dir = tmp_path / "models"
    path, ref = _write_model(model_dir, clip_dir="clip-tiny")
    elsewhere = tmp_path / "configs" / "tiny.yaml"
    elsewhere.parent.mkdir()
    elsewhere.write_text(path.with_suffix(".yaml").read_text())  # relative version: found beside the checkpoint
    parts = _load(path, elsewhere)
    assert parts.config_path == elsewhere and len(parts.tokenizer) == 514
    doc = _v1_yaml()
    doc["model"]["params"]["cond_stage_config"]["params"]["version"] = str(model_dir / "clip-tiny")
    path.with_suffix(".yaml").write_text(yaml.safe_dump(doc))
    assert _same_parameters(_load(path).text_encoder, ref["text_encoder"])
    family, prediction, _ = resolve_single_file_config(path, CheckpointFile(path))
    assert (family, prediction) == ("sd1", None)


# ---------------------------------------------------------------- full-size configs read as the bundled ones


def _sd2_v_yaml() -> dict[str, Any]:
    doc = _v1_yaml(parameterization="v", image_size=96)
    params = doc["model"]["params"]
    params["unet_config"]["params"].update(
        model_channels=320, attention_resolutions=[4, 2, 1], num_res_blocks=2, channel_mult=[1, 2, 4, 4],
        num_head_channels=64, use_linear_in_transformer=True, context_dim=1024, use_fp16=True)
    del params["unet_config"]["params"]["num_heads"]
    params["first_stage_config"]["params"]["ddconfig"].update(ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2)
    params["cond_stage_config"] = {"target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
                                   "params": {"freeze": True, "layer": "penultimate"}}
    return doc


def _v1_full_yaml() -> dict[str, Any]:
    doc = _v1_yaml()
    params = doc["model"]["params"]
    params["unet_config"]["params"].update(model_channels=320, attention_resolutions=[4, 2, 1], num_res_blocks=2,
                                           channel_mult=[1, 2, 4, 4], num_heads=8, context_dim=768)
    del params["unet_config"]["params"]["num_head_channels"]
    params["first_stage_config"]["params"]["ddconfig"].update(ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2)
    params["cond_stage_config"]["params"] = {}
    return doc


def _sdxl_yaml() -> dict[str, Any]:
    size = {"target": "sgm.modules.encoders.modules.ConcatTimestepEmbedderND", "is_trainable": False,
            "params": {"outdim": 256}}
    return {"model": {"target": "sgm.models.diffusion.DiffusionEngine", "params": {
        "scale_factor": 0.13025, "disable_first_stage_autocast": True,
        "denoiser_config": {"target": "sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser", "params": {
            "num_idx": 1000,
            "weighting_config": {"target": "sgm.modules.diffusionmodules.denoiser_weighting.EpsWeighting"},
            "scaling_config": {"target": "sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling"},
            "discretization_config": {
                "target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"}}},
        "network_config": {"target": "sgm.modules.diffusionmodules.openaimodel.UNetModel", "params": {
            "adm_in_channels": 2816, "num_classes": "sequential", "use_checkpoint": True, "in_channels": 4,
            "out_channels": 4, "model_channels": 320, "attention_resolutions": [4, 2], "num_res_blocks": 2,
            "channel_mult": [1, 2, 4], "num_head_channels": 64, "use_spatial_transformer": True,
            "use_linear_in_transformer": True, "transformer_depth": [1, 2, 10], "context_dim": 2048,
            "spatial_transformer_attn_type": "softmax-xformers", "legacy": False}},
        "conditioner_config": {"target": "sgm.modules.GeneralConditioner", "params": {"emb_models": [
            {"is_trainable": False, "input_key": "txt",
             "target": "sgm.modules.encoders.modules.FrozenCLIPEmbedder",
             "params": {"layer": "hidden", "layer_idx": 11}},
            {"is_trainable": False, "input_key": "txt",
             "target": "sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2",
             "params": {"arch": "ViT-bigG-14", "version": "laion2b_s39b_b160k", "freeze": True,
                        "layer": "penultimate", "always_return_pooled": True, "legacy": False}},
            size, size, size]}},
        "first_stage_config": {"target": "sgm.models.autoencoder.AutoencoderKLInferenceWrapper", "params": {
            "embed_dim": 4, "monitor": "val/rec_loss",
            "ddconfig": {"attn_type": "vanilla-xformers", "double_z": True, "z_channels": 4, "resolution": 256,
                         "in_channels": 3, "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                         "attn_resolutions": [], "dropout": 0.0},
            "lossconfig": {"target": "torch.nn.Identity"}}}}}}


_UNET_KEYS = ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block", "cross_attention_dim",
              "use_linear_projection", "in_channels", "out_channels", "addition_embed_type",
              "addition_time_embed_dim", "projection_class_embeddings_input_dim", "class_embed_type", "sample_size")


def _as_list(value: Any, n: int) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


@pytest.mark.parametrize(("doc", "family", "prediction"), [
    (_v1_full_yaml, "sd1", "epsilon"), (_sd2_v_yaml, "sd2-v", "v_prediction"), (_sdxl_yaml, "sdxl", "epsilon")])
def test_real_configs_match_the_bundled_diffusers_configs(tmp_path, doc, family, prediction):
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(doc()))
    cfg = read_ldm_yaml(path)
    assert (cfg.family, cfg.prediction_type) == (family, prediction)
    bundled = bundled_config_dir(family)
    unet = json.loads((bundled / "unet" / "config.json").read_text())
    n = len(unet["block_out_channels"])
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

    defaults = {k: p.default for k, p in inspect.signature(UNet2DConditionModel.__init__).parameters.items()}
    for key in _UNET_KEYS:
        assert cfg.unet.get(key, defaults[key]) == unet.get(key, defaults[key]), key
    for key in ("attention_head_dim", "transformer_layers_per_block"):
        assert _as_list(cfg.unet[key], n) == _as_list(unet.get(key, 1), n), key
    vae = json.loads((bundled / "vae" / "config.json").read_text())
    for key in ("block_out_channels", "layers_per_block", "latent_channels", "scaling_factor", "sample_size"):
        assert cfg.vae[key] == vae[key], key
    for i, te in enumerate(cfg.text_encoders):
        sub = "text_encoder_2" if i else "text_encoder"
        assert te.config == json.loads((bundled / sub / "config.json").read_text())
        assert te.tokenizer_dir is None
    sc = cfg.scheduler
    assert (sc["beta_start"], sc["beta_end"], sc["num_train_timesteps"], sc["prediction_type"]) == (
        0.00085, 0.012, 1000, prediction)


# ---------------------------------------------------------------- bad yamls: a clear ModelLoadError, no traceback


def _mutate(change: Any) -> str:
    doc = _v1_yaml()
    change(doc["model"])
    return yaml.safe_dump(doc)


def _set(section: str, key: str, value: Any) -> Any:
    def change(model: dict[str, Any]) -> None:
        node = model
        for part in section.split("."):
            node = node[part] if part else node
        if value is _DELETE:
            del node[key]
        else:
            node[key] = value
    return change


_DELETE = object()
_BAD = {
    "unknown model target": (_mutate(_set("", "target", "ldm.models.diffusion.ddpm.LatentUpscaleDiffusion")),
                             r"tiny\.yaml: model\.target 'ldm\.models\.diffusion\.ddpm\.LatentUpscaleDiffusion' is not "
                             r"a supported model"),
    "unknown text encoder": (_mutate(_set("params.cond_stage_config", "target", "modules.xlmr.BertSeriesModel")),
                             r"tiny\.yaml: model\.params\.cond_stage_config\.target .* text encoder"),
    "missing key": (_mutate(_set("params.unet_config.params", "model_channels", _DELETE)),
                    r"tiny\.yaml: model\.params\.unet_config\.params\.model_channels is missing"),
    "missing section": (_mutate(_set("params", "first_stage_config", _DELETE)),
                        r"tiny\.yaml: model\.params\.first_stage_config is missing"),
    "wrong type": (_mutate(_set("params.unet_config.params", "channel_mult", "1,2")),
                   r"tiny\.yaml: model\.params\.unet_config\.params\.channel_mult must be a list of integers"),
    "wrong type, float": (_mutate(_set("params", "linear_start", "small")),
                          r"tiny\.yaml: model\.params\.linear_start must be a number"),
    "wrong type, bool": (_mutate(_set("params.unet_config.params", "use_linear_in_transformer", "yes please")),
                         r"use_linear_in_transformer must be true or false"),
    "params not a mapping": (_mutate(_set("params", "unet_config", ["a"])),
                             r"tiny\.yaml: model\.params\.unet_config must be a mapping"),
    "missing version folder": (_mutate(_set("params.cond_stage_config.params", "version", "no-such-clip")),
                               r"tiny\.yaml: model\.params\.cond_stage_config\.params\.version 'no-such-clip' is "
                               r"not a local CLIP folder"),
    "unsupported parameterization": (_mutate(_set("params", "parameterization", "x0")),
                                     r"model\.params\.parameterization 'x0' is not supported"),
    "heads not set": (_mutate(_set("params.unet_config.params", "num_head_channels", -1)),
                      r"num_heads or num_head_channels must be set"),
    "not yaml": ("model: [unclosed\n", r"tiny\.yaml is not valid YAML"),
    "python tag": ("model: !!python/object/apply:os.system ['true']\n", r"tiny\.yaml is not valid YAML"),
    "not a mapping": ("- 1\n- 2\n", r"tiny\.yaml must be a mapping"),
    "no model key": ("foo: 1\n", r"tiny\.yaml: model is missing"),
    "sizes that do not fit the weights": (_mutate(_set("params.unet_config.params", "model_channels", 64)),
                                          r"tiny\.safetensors could not be loaded as SD 1\.x"),
    "other family than the weights": (
        _mutate(_set("params", "cond_stage_config",
                     {"target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder", "params": {}})),
        r"tiny\.yaml describes an SD 2\.x model, but the text encoder weights in tiny\.safetensors are those of SD "
        r"1\.x"),
}


@pytest.fixture(scope="module")
def bad_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = _write_model(tmp_path_factory.mktemp("bad-yaml"))
    return path


@pytest.mark.parametrize("case", list(_BAD))
def test_bad_yaml_gives_a_clear_error(bad_model, case):
    text, message = _BAD[case]
    bad_model.with_suffix(".yaml").write_text(text)
    with pytest.raises(ModelLoadError, match=message) as err:
        _load(bad_model)
    assert err.value.__cause__ is None and "Traceback" not in str(err.value)
