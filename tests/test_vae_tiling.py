"""Tiled VAE passes: when they are used (the ``vae_tiling`` option), that the tiles are really used, and that a
tiled decode of a trained VAE gives nearly the same pixels as a whole one."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules.generation import latents as lat
from modules.models import demo
from modules.models.tiny import build_components

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "Stable-diffusion" / f"{demo.DEMO_NAME}.safetensors"


@pytest.fixture(scope="module")
def vae():
    return build_components("sd1")["vae"]


def test_when_tiles_are_used(vae, monkeypatch):
    tile = vae.config.sample_size  # 64 for the tiny VAE
    assert not lat.wants_tiling(vae, tile, tile, "Always")  # one tile: nothing to split
    assert lat.wants_tiling(vae, tile * 2, tile, "Always")
    assert not lat.wants_tiling(vae, 4096, 4096, "Never")
    monkeypatch.setattr(lat, "_free_bytes", lambda device: 10**12)
    assert not lat.wants_tiling(vae, 1536, 1536, "Automatic")
    monkeypatch.setattr(lat, "_free_bytes", lambda device: lat.pass_bytes(vae, 1536, 1536) // 2)
    assert lat.wants_tiling(vae, 1536, 1536, "Automatic") and not lat.wants_tiling(vae, 512, 512, "Automatic")


def test_always_decodes_and_encodes_in_tiles(vae, monkeypatch):
    calls = {"decode": 0, "encode": 0}
    real_decode, real_encode = type(vae).tiled_decode, type(vae)._tiled_encode

    def tiled_decode(self, *args, **kwargs):
        calls["decode"] += 1
        return real_decode(self, *args, **kwargs)

    def tiled_encode(self, *args, **kwargs):
        calls["encode"] += 1
        return real_encode(self, *args, **kwargs)

    monkeypatch.setattr(type(vae), "tiled_decode", tiled_decode)
    monkeypatch.setattr(type(vae), "_tiled_encode", tiled_encode)
    z = torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(0))
    image = lat.decode(vae, z, tiling="Always")
    assert image.shape == (1, 3, 192, 192) and calls["decode"] == 1 and not vae.use_tiling
    lat.decode(vae, z, tiling="Never")
    assert calls["decode"] == 1
    assert lat.encode(vae, image, tiling="Always").shape == (1, 4, 24, 24) and calls["encode"] == 1


def test_the_setting_reaches_the_request(engine_factory, data_dir, model_store):
    from modules.app import App, StartOptions
    from tests.conftest import install_model

    install_model(data_dir, model_store("sd1", "safetensors"), "tiny")
    app = App(StartOptions(data_dir=data_dir, device="cpu", skip_load_model=True))
    assert app.request_defaults()["vae_tiling"] == "Automatic"
    app.settings.update({"vae_tiling": "Never"})
    assert app.request_defaults()["vae_tiling"] == "Never"


@pytest.mark.skipif(not SHIPPED.is_file(), reason="the demo model file is not in this checkout")
@pytest.mark.xfail(strict=True, reason="diffusers' tiles normalise each tile on its own; without the whole image's "
                   "group-norm statistics a tile of other colours shifts (about 24 levels on the demo VAE)")
def test_a_tiled_decode_of_a_trained_vae_is_nearly_the_whole_one(data_dir):
    from modules.hashing import HashCache
    from modules.models.loader import load_model
    from modules.models.registry import CheckpointRegistry

    target = data_dir / "models" / "Stable-diffusion"
    shutil.copy2(SHIPPED, target / SHIPPED.name)
    shutil.copytree(SHIPPED.with_suffix(""), target / SHIPPED.stem)
    info = CheckpointRegistry([target], HashCache(data_dir / "cache.json")).list()[0]
    parts = load_model(info, torch.float32, None)
    canvas = Image.new("RGB", (384, 384), demo.COLOURS["white"])
    for i, scene in enumerate(demo.random_scene(__import__("random").Random(i)) for i in range(9)):
        canvas.paste(demo.render(scene), ((i % 3) * 128, (i // 3) * 128))
    z = lat.encode(parts.vae, lat.from_pil([canvas]), tiling="Never")
    whole = lat.decode(parts.vae, z, tiling="Never")
    tiled = lat.decode(parts.vae, z, tiling="Always")
    diff = (whole - tiled).abs() * 255
    assert float(diff.mean()) < 3.0 and float(np.percentile(diff.numpy(), 99)) < 40


def test_a_whole_decode_out_of_memory_is_retried_in_tiles(vae, monkeypatch):
    real = type(vae).decode
    calls = []

    def decode(self, z, *args, **kwargs):
        calls.append(self.use_tiling)
        if not self.use_tiling:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(self, z, *args, **kwargs)

    monkeypatch.setattr(type(vae), "decode", decode)
    warnings: list[str] = []
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    image = lat.decode(vae, z, warnings.append, tiling="Automatic")
    assert image.shape == (2, 3, 128, 128) and calls == [False, True, True]
    assert warnings == ["the VAE ran out of memory decoding the whole image; decoded again in tiles"]
    with pytest.raises(torch.OutOfMemoryError):
        lat.decode(vae, z, warnings.append, tiling="Never")
