"""Tiled VAE passes: when they are used (the ``vae_tiling`` option), that the tiles are really used, and that a
tiled decode or encode gives nearly the same pixels or latents as a whole one (the group norms see the whole image).

The tiny random VAE is enough to tell: its group norms matter (the same tiles normalised each on its own are tens of
grey levels off, and so are diffusers' tiles), so a pass whose statistics were not the whole image's would fail."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules.generation import latents as lat
from modules.generation import vae_tiles
from modules.models import demo
from modules.models.tiny import build_components

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "Stable-diffusion" / f"{demo.DEMO_NAME}.safetensors"



@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    """Tiles of the tiny VAE's own size (64 px), so that small test images have several."""
    from modules.generation import vae_tiles

    monkeypatch.setattr(vae_tiles, "MIN_TILE", 1)

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


def _picture(height: int = 192, width: int = 256) -> torch.Tensor:
    """Flat coloured blocks and a white bar across them: every tile has other colours than the whole image."""
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.1, 0.2, 0.9], [0.95, 0.9, 0.2], [0.5, 0.5, 0.5],
                            [0.1, 0.1, 0.1]])
    image = torch.empty(1, 3, height, width)
    for k, (y, x) in enumerate((y, x) for y in range(0, height, 64) for x in range(0, width, 128)):
        image[0, :, y : y + 64, x : x + 128] = colours[k % len(colours)][:, None, None]
    image[0, :, 40:150, 60:120] = 1.0
    return image


def _levels(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    """Mean, 99th percentile and largest difference of two images in [0, 1], in 8-bit grey levels."""
    diff = ((a - b).abs() * 255).flatten().numpy()
    return float(diff.mean()), float(np.percentile(diff, 99)), float(diff.max())


@pytest.fixture(scope="module")
def whole(vae):
    """A picture's latent (encoded whole) and its whole decode."""
    z = lat.encode(vae, _picture(), tiling="Never")
    return z, lat.decode(vae, z, tiling="Never")


def test_always_decodes_and_encodes_in_tiles(vae, monkeypatch):
    calls = {"decode": 0, "encode": 0}
    real_decode, real_encode = vae_tiles.tiled_decode, vae_tiles.tiled_encode

    def tiled_decode(*args, **kwargs):
        calls["decode"] += 1
        return real_decode(*args, **kwargs)

    def tiled_encode(*args, **kwargs):
        calls["encode"] += 1
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(vae_tiles, "tiled_decode", tiled_decode)
    monkeypatch.setattr(vae_tiles, "tiled_encode", tiled_encode)
    seen: dict[str, list[tuple[int, ...]]] = {"decode": [], "encode": []}
    hooks = [vae.decoder.conv_out.register_forward_hook(lambda m, i, o: seen["decode"].append(tuple(o.shape[-2:]))),
             vae.encoder.conv_in.register_forward_hook(lambda m, i, o: seen["encode"].append(tuple(o.shape[-2:])))]
    try:
        z = torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(0))
        image = lat.decode(vae, z, tiling="Always")
        assert image.shape == (1, 3, 192, 192) and calls["decode"] == 1 and not vae.use_tiling
        # 3 x 3 tiles of 64 pixels, each with a halo of at most a pixel a side: the layers never see the whole image
        assert len(seen["decode"]) == 9 and max(max(s) for s in seen["decode"]) <= 66
        lat.decode(vae, z, tiling="Never")
        assert calls["decode"] == 1 and seen["decode"][-1] == (192, 192)
        assert lat.encode(vae, image, tiling="Always").shape == (1, 4, 24, 24) and calls["encode"] == 1
        assert len(seen["encode"]) == 9 and max(max(s) for s in seen["encode"]) <= 66
    finally:
        for hook in hooks:
            hook.remove()


def test_a_layout_it_does_not_know_falls_back_to_diffusers_tiles(vae, monkeypatch):
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
    monkeypatch.setattr(vae_tiles, "supports", lambda vae, part="decoder": False)
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    image = lat.decode(vae, z, tiling="Always")
    assert image.shape == (1, 3, 128, 128) and calls["decode"] == 1 and not vae.use_tiling
    assert lat.encode(vae, image, tiling="Always").shape == (1, 4, 16, 16) and calls["encode"] == 1


def test_a_tiled_decode_is_the_whole_one(vae, whole, monkeypatch):
    z, image = whole
    tiled = lat.decode(vae, z, tiling="Always")
    mean, p99, top = _levels(tiled, image)
    assert mean < 0.05 and p99 < 0.5 and top < 2  # measured: 0.00005, 0.0005 and 0.002 levels
    # diffusers' tiles (each normalised on its own, blended at the seams) are far off on the same VAE
    with lat._tiled(vae, True), torch.no_grad():
        theirs = ((vae.decode(z / vae.config.scaling_factor, return_dict=False)[0] + 1) / 2).clamp(0, 1)
    mean, p99, _ = _levels(theirs, image)
    assert mean > 5 and p99 > 40  # measured: 39 and 146 levels
    # and so are the same tiles as ours with each tile's own statistics: the whole image's are what matters
    monkeypatch.setattr(vae_tiles._Stats, "normaliser", lambda self, norm, device: (
        lambda t: torch.nn.functional.group_norm(t, norm.num_groups, norm.weight, norm.bias, norm.eps)))
    mean, _, _ = _levels(lat.decode(vae, z, tiling="Always"), image)
    assert mean > 5  # measured: 31 levels


def test_automatic_tiles_on_a_cpu_keep_their_stores_in_bfloat16_and_nearly_the_pixels(vae, whole, monkeypatch):
    z, image = whole
    kept: list[torch.dtype] = []
    real_sweep = vae_tiles._Pass.sweep

    def sweep(self, *args, **kwargs):
        out, st = real_sweep(self, *args, **kwargs)
        kept.append(out.dtype)
        return out, st

    monkeypatch.setattr(vae_tiles._Pass, "sweep", sweep)
    monkeypatch.setattr(lat, "_free_bytes", lambda device: lat.pass_bytes(vae, 64, 64))  # the image does not fit
    compact = lat.decode(vae, z, tiling="Automatic")
    assert torch.bfloat16 in kept and kept[-1] == torch.float32  # the stores; the pixels in full precision
    mean, p99, _ = _levels(compact, image)
    assert mean < 1.5 and p99 < 6, (mean, p99)  # nearly the whole pass's pixels, not exactly
    kept.clear()
    exact = lat.decode(vae, z, tiling="Always")  # chosen tiles: the whole pass's pixels
    assert torch.bfloat16 not in kept and _levels(exact, image)[0] < 0.05


def test_a_tiled_encode_is_the_whole_one(vae, whole):
    z, image = whole
    tiled = lat.encode(vae, image, tiling="Always")
    ref = lat.encode(vae, image, tiling="Never")
    spread = float(ref.std())
    assert float((tiled - ref).abs().max()) < 1e-3 * spread  # measured: about 1e-5 of the spread
    with lat._tiled(vae, True), torch.no_grad():
        theirs = vae.encode(image * 2 - 1, return_dict=False)[0].mean * vae.config.scaling_factor
    assert float((theirs - ref).abs().mean()) > 0.1 * spread  # measured: about half the spread
    # a sample of the posterior: the same noise from the same seed, the same latent
    sampled = [lat.encode(vae, image, torch.Generator().manual_seed(3), tiling=mode) for mode in ("Always", "Never")]
    assert float((sampled[0] - sampled[1]).abs().max()) < 1e-3 * spread


def test_seamless_tiles_wrap_around(vae):
    """With circular convolutions (the "Tiling" option) a tile's halo comes from the other side of the image."""
    z = torch.randn(1, 4, 16, 24, generator=torch.Generator().manual_seed(2))
    with lat.seamless([vae], True):
        whole = lat.decode(vae, z, tiling="Never")
        tiled = lat.decode(vae, z, tiling="Always")
        assert _levels(tiled, whole)[2] < 2
        ref = lat.encode(vae, whole, tiling="Never")
        assert float((lat.encode(vae, whole, tiling="Always") - ref).abs().max()) < 1e-3 * float(ref.std())


def test_the_attention_in_chunks_is_the_whole_one(vae, whole, monkeypatch):
    """On a long latent the mid block's attention goes in chunks of queries: the same result."""
    z, image = whole
    monkeypatch.setattr(vae_tiles, "_ATTENTION_BYTES", 4 * 768 * 100)  # 768 queries in 8 chunks
    assert _levels(lat.decode(vae, z, tiling="Always"), image)[2] < 2


def test_the_tiles_bound_what_the_layers_hold(vae, whole):
    """What lives on the VAE's device at once: the largest output of any layer, whole and tiled. (The whole maps
    between layers are in the store: the CPU when the VAE is on an accelerator and they would not fit beside it.)"""
    z, _ = whole
    largest = {"now": 0}

    def hook(module, inputs, output):
        if isinstance(output, torch.Tensor):
            largest["now"] = max(largest["now"], output.numel())

    hooks = [m.register_forward_hook(hook) for m in vae.modules() if not list(m.children())]
    try:
        sizes = {}
        for mode in ("Never", "Always"):
            largest["now"] = 0
            lat.decode(vae, z, tiling=mode)
            sizes[mode] = largest["now"]
    finally:
        for h in hooks:
            h.remove()
    assert sizes["Always"] < sizes["Never"] / 5  # 66 x 66 windows of a 256 x 192 image; measured: about 1/9


def test_the_setting_reaches_the_request(engine_factory, data_dir, model_store):
    from conftest import install_model
    from modules.app import App, StartOptions

    install_model(data_dir, model_store("sd1", "safetensors"), "tiny")
    app = App(StartOptions(data_dir=data_dir, device="cpu", skip_load_model=True))
    assert app.request_defaults()["vae_tiling"] == "Automatic"
    app.settings.update({"vae_tiling": "Never"})
    assert app.request_defaults()["vae_tiling"] == "Never"


@pytest.mark.skipif(not SHIPPED.is_file(), reason="the demo model file is not in this checkout")
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
    # the tiles use the whole image's group-norm statistics and exact halos: only float rounding differs (diffusers'
    # tiles were about 24 levels off here)
    assert float(diff.mean()) < 0.5 and float(np.percentile(diff.numpy(), 99)) < 2


def test_a_whole_decode_out_of_memory_is_retried_in_tiles(vae, monkeypatch):
    real = vae_tiles.tiled_decode
    calls = []

    def decode(self, z, *args, **kwargs):
        calls.append("whole")
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    def tiled_decode(*args, **kwargs):
        calls.append("tiled")
        return real(*args, **kwargs)

    monkeypatch.setattr(type(vae), "decode", decode)
    monkeypatch.setattr(vae_tiles, "tiled_decode", tiled_decode)
    warnings: list[str] = []
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    image = lat.decode(vae, z, warnings.append, tiling="Automatic")
    assert image.shape == (2, 3, 128, 128) and calls == ["whole", "tiled", "tiled"]
    assert warnings == ["the VAE ran out of memory decoding the whole image; decoded again in tiles"]
    with pytest.raises(torch.OutOfMemoryError):
        lat.decode(vae, z, warnings.append, tiling="Never")
