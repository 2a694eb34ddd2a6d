"""Memory modes (A1111's --medvram / --lowvram), the Automatic choice and its retry after running out of memory,
and the speed and precision options that change how a model is placed (fp8 storage, channels-last, split
attention, --no-half-vae). On the CPU the device is RAM, so the modes move nothing: these tests show that each mode
is really installed (its hooks, the order parts come to the device), that it gives the same image, and that the
retry and the choice follow their rules."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import install_model
from modules.models import memory
from modules.models.families import FAMILIES
from modules.models.manager import DeviceConfig
from modules.requests import GenerationRequest

SMALL = {"width": 64, "height": 64, "steps": 3, "cfg_scale": 5.0, "sampler_name": "Euler"}
REQ = GenerationRequest(prompt="a red house", negative_prompt="blurry", seed=11, **SMALL)


@pytest.fixture
def engine(data_dir, model_store, engine_factory):
    install_model(data_dir, model_store("sd1", "safetensors"), "tiny")
    eng = engine_factory()
    eng.txt2img(REQ)  # loads the model
    return eng


def _pixels(job) -> np.ndarray:
    return np.asarray(job.result.images[0], dtype=np.int16)


def _group_hooks(module: torch.nn.Module) -> int:
    return sum(1 for m in module.modules()
               if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.get_hook("group_offloading"))


def test_each_mode_is_installed_gives_the_same_image_and_comes_off(engine, monkeypatch):
    parts = engine.models.current
    normal = _pixels(engine.txt2img(REQ))
    brought: list[str] = []
    real_bring = memory._OneAtATime.bring
    monkeypatch.setattr(memory._OneAtATime, "bring",
                        lambda self, module: (brought.append(type(module).__name__), real_bring(self, module)))

    engine.models._place(parts, "medvram")
    assert memory.current_mode(parts) == "medvram"
    assert all(hasattr(m, "_hf_hook") for m in (parts.unet, parts.vae, parts.text_encoder))
    assert np.array_equal(_pixels(engine.txt2img(REQ)), normal)
    # each part comes to the device when it runs, one after the other: text encoder, UNet, VAE
    assert [n for i, n in enumerate(brought) if i == 0 or brought[i - 1] != n] == [
        "CLIPTextModel", "UNet2DConditionModel", "AutoencoderKL"]

    brought.clear()
    engine.models._place(parts, "lowvram")
    assert memory.current_mode(parts) == "lowvram"
    assert not hasattr(parts.unet, "_hf_hook") and _group_hooks(parts.unet) >= 4  # the UNet in blocks
    assert hasattr(parts.text_encoder, "_hf_hook") and hasattr(parts.vae, "_hf_hook")
    assert np.array_equal(_pixels(engine.txt2img(REQ)), normal)
    assert "UNet2DConditionModel" not in brought and {"CLIPTextModel", "AutoencoderKL"} <= set(brought)

    engine.models._place(parts, "normal")
    assert memory.current_mode(parts) == "normal" and _group_hooks(parts.unet) == 0
    assert not any(hasattr(m, "_hf_hook") for m in parts.modules())
    assert np.array_equal(_pixels(engine.txt2img(REQ)), normal)


def test_a_lora_under_medvram_gives_the_normal_image_and_the_model_stays_clean(engine, data_dir):
    parts = engine.models.current
    (data_dir / "models" / "Lora").mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for name, module in parts.unet.named_modules():
        if isinstance(module, torch.nn.Linear) and ".attentions." in name:
            key = "lora_unet_" + name.replace(".", "_")
            sd[f"{key}.lora_down.weight"] = torch.randn(4, module.weight.shape[1], generator=gen) * 0.3
            sd[f"{key}.lora_up.weight"] = torch.randn(module.weight.shape[0], 4, generator=gen) * 0.3
    save_file(sd, str(data_dir / "models" / "Lora" / "style.safetensors"))
    engine.networks.refresh()
    req = REQ.replace(prompt="a red house <lora:style:1>")
    normal, plain = _pixels(engine.txt2img(req)), _pixels(engine.txt2img(REQ))
    assert np.abs(normal - plain).max() > 10
    engine.models._place(parts, "medvram")
    assert np.array_equal(_pixels(engine.txt2img(req)), normal)
    assert np.array_equal(_pixels(engine.txt2img(REQ)), plain)  # taken off again


def test_automatic_picks_from_the_free_memory(engine, monkeypatch):
    parts = engine.models.current
    size = memory.model_bytes(parts)
    unet = sum(p.numel() * p.element_size() for p in parts.unet.parameters())
    working = memory._WORKING_BYTES["other"]
    cuda = torch.device("cuda")
    assert memory.pick(parts, torch.device("cpu")) == "normal"  # RAM is the device: nothing to offload
    for free, expected in ((size + working, "normal"), (size + working - 1, "medvram"), (unet + working, "medvram"),
                           (unet + working - 1, "lowvram")):
        monkeypatch.setattr(memory, "free_device_bytes", lambda device, free=free: free)
        assert memory.pick(parts, cuda) == expected, free
    # what the model itself already holds on the device counts as free
    monkeypatch.setattr(memory, "free_device_bytes", lambda device: working)
    assert memory.pick(parts, cuda, resident_bytes=size) == "normal"
    assert [memory.lower(m) for m in memory.MODES] == ["medvram", "lowvram", None]


def _inject_oom(parts, modes: set[str], times: int) -> list[str]:
    """The UNet raises CUDA's out-of-memory error ``times`` times while the model is in one of ``modes``."""
    seen: list[str] = []

    def hook(module, args):
        mode = memory.current_mode(parts)
        seen.append(mode)
        if mode in modes and len([m for m in seen if m in modes]) <= times:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    parts.unet.register_forward_pre_hook(hook)
    return seen


def test_out_of_memory_in_automatic_mode_runs_the_job_again_in_the_next_lower_mode(engine):
    parts = engine.models.current
    normal = _pixels(engine.txt2img(REQ))
    seen = _inject_oom(parts, {"normal"}, times=1)
    job = engine.txt2img(REQ)
    assert np.array_equal(_pixels(job), normal)
    assert seen[0] == "normal" and set(seen[1:]) == {"medvram"}
    assert any("out of memory in the normal memory mode: the job ran again in medvram mode" in w
               for w in job.result.warnings)
    assert memory.current_mode(parts) == "medvram"  # kept for the next jobs
    job = engine.txt2img(REQ)
    assert not any("memory" in w for w in job.result.warnings) and np.array_equal(_pixels(job), normal)


def test_the_retry_is_made_once_and_only_in_automatic_mode(engine):
    parts = engine.models.current
    seen = _inject_oom(parts, {"normal", "medvram"}, times=5)
    with pytest.raises(torch.OutOfMemoryError):
        engine.txt2img(REQ)
    assert seen == ["normal", "medvram"]  # two tries, not three
    engine.models.config = DeviceConfig(device="cpu", precision="fp32", memory="medvram")
    engine.models._place(parts)
    seen.clear()
    with pytest.raises(torch.OutOfMemoryError):
        engine.txt2img(REQ)
    assert seen == ["medvram"]  # a mode the user chose is kept: no retry


def test_the_memory_setting_and_flags_place_the_model_again_without_reloading(data_dir, model_store):
    from conftest import running_app
    from webui.launch_options import settings_from_flags

    with running_app(data_dir, model_store) as app:
        assert app.submit_txt2img(REQ, save=False).wait(60)
        parts = app.models.current
        loads = app.models.load_count
        change = app.update_settings({"memory_mode": "lowvram"}, save=False)
        assert change.jobs and all(job.wait(60) for job in change.jobs)
        assert memory.current_mode(app.models.current) == "lowvram" and app.models.load_count == loads
        assert app.models.current is parts
        assert app.submit_txt2img(REQ, save=False).wait(60)
        change = app.update_settings({"memory_mode": "Automatic"}, save=False)
        assert all(job.wait(60) for job in change.jobs)
        assert memory.current_mode(app.models.current) == "normal"  # on the CPU
        assert app.models.load_count == loads

    def flags(**kw):
        base = {"xformers": False, "force_enable_xformers": False, "opt_sdp_attention": False,
                "opt_split_attention": False, "medvram": False, "lowvram": False, "opt_channelslast": False}
        return settings_from_flags(argparse.Namespace(**{**base, **kw}))

    assert flags(medvram=True) == {"memory_mode": "medvram"}
    assert flags(medvram=True, lowvram=True) == {"memory_mode": "lowvram"}  # as A1111: --lowvram wins
    assert flags(opt_split_attention=True, opt_channelslast=True) == {
        "cross_attention_optimization": "Doggettx", "channels_last": True}


def test_medvram_sdxl_applies_to_sdxl_models_only(engine):
    parts = engine.models.current
    engine.models.config = DeviceConfig(device="cpu", precision="fp32", medvram_sdxl=True)
    assert engine.models.memory_mode(parts) == "normal"  # an SD 1.x model
    xl = dataclasses.replace(parts, family=FAMILIES["sdxl"])  # the family alone decides
    assert engine.models.memory_mode(xl) == "medvram"


def test_fp8_storage_split_attention_channels_last_and_no_half_vae(engine):
    parts = engine.models.current
    normal = _pixels(engine.txt2img(REQ))
    models = engine.models
    models.apply_config(DeviceConfig(device="cpu", precision="fp32", attention="Doggettx", channels_last=True))
    assert type(next(iter(parts.unet.attn_processors.values()))).__name__ == "SlicedAttnProcessor"
    conv = parts.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert np.abs(_pixels(engine.txt2img(REQ)) - normal).max() <= 1
    models.apply_config(DeviceConfig(device="cpu", precision="fp32"))
    assert type(next(iter(parts.unet.attn_processors.values()))).__name__ == "AttnProcessor2_0"

    loads = models.load_count
    models.apply_config(DeviceConfig(device="cpu", precision="fp32", fp8="Enable"))
    parts = models.current
    assert parts.unet.down_blocks[0].resnets[0].conv1.weight.dtype == torch.float8_e4m3fn
    fp8 = _pixels(engine.txt2img(REQ))
    assert 0 < np.abs(fp8 - normal).mean() < 12  # 8-bit weights: near the image, not the same
    models.apply_config(DeviceConfig(device="cpu", precision="fp32"))  # the weights come back from the file
    assert models.load_count == loads + 1
    assert models.current.unet.down_blocks[0].resnets[0].conv1.weight.dtype == torch.float32
    assert np.array_equal(_pixels(engine.txt2img(REQ)), normal)

    # --no-half-vae: a half-precision model keeps its VAE in float32
    models.apply_config(DeviceConfig(device="cpu", precision="bf16", no_half_vae=True))
    parts = models.current
    assert parts.dtype == torch.bfloat16 and next(parts.vae.parameters()).dtype == torch.float32
    assert _pixels(engine.txt2img(REQ)).shape == normal.shape


def test_a_tiled_vae_pass_under_medvram_brings_the_vae_first(engine, monkeypatch):
    """The tiled passes call the VAE's layers themselves (no forward hook fires): the VAE is brought explicitly."""
    from modules.generation import vae_tiles

    parts = engine.models.current
    engine.models._place(parts, "medvram")
    brought: list[str] = []
    real_bring = memory._OneAtATime.bring
    monkeypatch.setattr(memory._OneAtATime, "bring",
                        lambda self, module: (brought.append(type(module).__name__), real_bring(self, module)))
    calls: list[int] = []
    real_tiled = vae_tiles.tiled_decode
    monkeypatch.setattr(vae_tiles, "tiled_decode", lambda *a, **k: (calls.append(1), real_tiled(*a, **k))[1])
    job = engine.txt2img(REQ.replace(width=128, height=64, vae_tiling="Always"))
    assert calls and "AutoencoderKL" in brought and job.result.images[0].size == (128, 64)


def test_lowram_reads_the_weights_straight_to_the_gpu_only_where_it_can(model_store, tmp_path, monkeypatch):
    """--lowram: a safetensors checkpoint's UNet and VAE are read into the GPU's memory (here: the loader is asked
    to, and a CPU load with a device reads the same weights); not on a CPU, nor where a memory mode keeps the
    weights in RAM; a load that fails that way is done through RAM."""
    from modules.hashing import HashCache
    from modules.models import loader
    from modules.models.manager import DeviceConfig
    from modules.models.registry import CheckpointRegistry

    assert DeviceConfig(device="cuda", lowram=True).load_to == "cuda"
    assert DeviceConfig(device="cuda:1", lowram=True, memory="normal").load_to == "cuda:1"
    assert DeviceConfig(device="cuda", lowram=True, memory="medvram").load_to is None
    assert DeviceConfig(device="cpu", lowram=True).load_to is None
    assert DeviceConfig(device="cuda").load_to is None
    source = model_store("sd1", "safetensors")
    info = CheckpointRegistry([source.parent], HashCache(tmp_path / "h.json")).find(source.name)
    assert info is not None
    plain = loader.load_model(info, torch.float32)
    direct = loader.load_model(info, torch.float32, None, "cpu")  # the same path, with the device named
    for a, b in ((plain.unet, direct.unet), (plain.vae, direct.vae)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    calls = []
    real = loader.load_single_file

    def flaky(path, dtype, override=None, load_to=None):
        calls.append(load_to)
        if load_to:
            raise loader.ModelLoadError("no such device")
        return real(path, dtype, override)

    monkeypatch.setattr(loader, "load_single_file", flaky)
    assert loader.load_model(info, torch.float32, None, "cuda").unet is not None and calls == ["cuda", None]
