"""Model upscalers through spandrel: found in the model folders, detected, run (tiled and whole), in hires fix."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import install_model
from modules.requests import GenerationRequest
from modules.upscalers.registry import UpscalerError, UpscalerRegistry
from modules.upscalers.spandrel_loader import spandrel
from modules.upscalers.tiles import from_bgr_tensor, tile_starts, to_bgr_tensor


def _arch(module: str, name: str):
    spandrel()  # imports the package (without torchvision) first
    return getattr(__import__(f"spandrel.architectures.{module}", fromlist=[name]), name)


def _esrgan_new_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original ``model.N`` keys of an ESRGAN as Real-ESRGAN names them (``conv_first``, ``body.N.rdbK``...)."""
    steps = sorted({int(k.split(".")[1]) for k in sd})
    hr = steps[-2]
    ups = [i for i in steps if 1 < i < hr]
    out = {}
    for key, value in sd.items():
        index, kind = int(key.split(".")[1]), key.rsplit(".", 1)[1]
        block = re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.", key)
        if index == 0:
            out[f"conv_first.{kind}"] = value
        elif block:
            out[f"body.{block[1]}.rdb{block[2]}.conv{block[3]}.{kind}"] = value
        elif index == 1:
            out[f"conv_body.{kind}"] = value
        elif index in ups:
            out[f"conv_up{ups.index(index) + 1}.{kind}"] = value
        else:
            out[f"{'conv_hr' if index == hr else 'conv_last'}.{kind}"] = value
    return out


def _models() -> dict[str, tuple[str, dict[str, torch.Tensor], str, int]]:
    """name -> (folder, state dict, architecture id, scale): tiny random-weight models of spandrel's classes."""
    torch.manual_seed(0)
    esrgan = _arch("ESRGAN", "ESRGAN")(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4).state_dict()
    compact = _arch("Compact", "Compact")(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4)
    swinir = _arch("SwinIR", "SwinIR")(img_size=16, in_chans=3, embed_dim=12, depths=[1], num_heads=[2],
                                       window_size=8, mlp_ratio=2.0, upscale=2, upsampler="pixelshuffle",
                                       resi_connection="1conv")
    return {
        "4x_tiny_esrgan": ("ESRGAN", esrgan, "ESRGAN", 4),
        "tiny_esrgan_new": ("ESRGAN", _esrgan_new_layout(esrgan), "ESRGAN", 4),
        "realesr-tiny-compact": ("RealESRGAN", compact.state_dict(), "Compact", 4),
        "tiny_swinir_x2": ("SwinIR", swinir.state_dict(), "SwinIR", 2),
    }


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("upscalers")
    for name, (folder, sd, _, _) in _models().items():
        (root / folder).mkdir(exist_ok=True)
        if name == "tiny_esrgan_new":
            torch.save(sd, root / folder / f"{name}.pth")
        else:
            save_file({k: v.contiguous() for k, v in sd.items()}, str(root / folder / f"{name}.safetensors"))
    (root / "ESRGAN" / "broken.pth").write_bytes(b"not a model")
    (root / "DAT").mkdir()
    save_file({"some.weight": torch.zeros(2, 2)}, str(root / "DAT" / "unknown.safetensors"))
    return root


@pytest.fixture(scope="module")
def registry(models_dir):
    return UpscalerRegistry(models_dir, lambda: torch.device("cpu"), tiles=lambda kind: (0, 0))


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    return Image.fromarray(np.clip(x + rng.normal(0, 30, (height, width, 3)), 0, 255).astype(np.uint8))


def test_every_model_is_found_detected_and_runs_as_spandrel_runs_it(registry, models_dir):
    names = registry.names()
    assert names[:3] == ["None", "Lanczos", "Nearest"]
    image = _image(24, 20)
    for name, (_, _, arch, scale) in _models().items():
        assert name in names
        descriptor = registry.model(registry.find(name))
        assert descriptor.architecture.id == arch and descriptor.scale == scale
        out = registry.upscale(image, name, scale)
        assert out.size == (24 * scale, 20 * scale)
        with torch.inference_mode():  # spandrel's own run on the same BGR tensor
            want = from_bgr_tensor(descriptor(to_bgr_tensor(image, torch.float32, torch.device("cpu"))))
        assert np.array_equal(np.asarray(out), np.asarray(want)), name
    esrgan = np.asarray(registry.upscale(image, "4x_tiny_esrgan", 4))
    assert np.array_equal(esrgan, np.asarray(registry.upscale(image, "tiny_esrgan_new", 4)))  # same weights


def test_tiled_and_whole_agree_on_an_image_larger_than_a_tile(models_dir):
    image = _image(90, 70, seed=3)
    whole = UpscalerRegistry(models_dir, lambda: torch.device("cpu"), tiles=lambda kind: (0, 0))
    tiled = UpscalerRegistry(models_dir, lambda: torch.device("cpu"), tiles=lambda kind: (32, 8))
    seen: list[tuple[int, int]] = []
    a = np.asarray(whole.upscale(image, "realesr-tiny-compact", 4), dtype=np.int16)
    b = np.asarray(tiled.upscale(image, "realesr-tiny-compact", 4, on_tile=lambda d, t: seen.append((d, t)) or True),
                   dtype=np.int16)
    assert seen[-1] == (12, 12) and len(seen) == 12  # 4 columns x 3 rows of 32-pixel tiles
    diff = np.abs(a - b)
    assert a.shape == b.shape and diff.mean() < 0.5 and (diff <= 2).mean() > 0.99
    stopped = tiled.upscale(image, "realesr-tiny-compact", 4, on_tile=lambda d, t: d < 3)
    assert stopped.size == (360, 280)  # interrupted: the image as it was, resized to the target


def test_tile_positions_as_a1111_spreads_them():
    assert tile_starts(100, 192, 8) == [-92]  # smaller than a tile: one tile, the image at its far end, black before
    assert tile_starts(400, 192, 8) == [0, 104, 208]
    assert tile_starts(192, 192, 8) == [0]


def test_unknown_names_and_unusable_files_are_errors_naming_them(registry):
    with pytest.raises(UpscalerError, match="unknown upscaler 'nope'; available: None, Lanczos"):
        registry.upscale(_image(16, 16), "nope", 2)
    with pytest.raises(UpscalerError, match="broken.pth: cannot be read"):
        registry.model(registry.find("broken"))
    with pytest.raises(UpscalerError, match="unknown.safetensors: not a model architecture spandrel knows"):
        registry.model(registry.find("unknown"))


def test_hires_fix_with_a_model_upscaler(data_dir, model_store, engine_factory, models_dir):
    import shutil

    install_model(data_dir, model_store("sd1", "safetensors"), "tiny")
    shutil.copytree(models_dir / "RealESRGAN", data_dir / "models" / "RealESRGAN")
    engine = engine_factory()
    req = GenerationRequest(prompt="a boat", seed=2, width=64, height=64, steps=2, enable_hr=True, hr_scale=2,
                            hr_upscaler="realesr-tiny-compact", denoising_strength=0.5)
    job = engine.txt2img(req)
    assert job.result.images[0].size == (128, 128)
    assert "Hires upscaler: realesr-tiny-compact" in job.result.infotexts[0]
    lanczos = engine.txt2img(req.replace(hr_upscaler="Lanczos"))
    assert not np.array_equal(np.asarray(job.result.images[0]), np.asarray(lanczos.result.images[0]))


def test_upscaler_routes_and_an_unknown_hires_upscaler(api, data_dir):
    folder = data_dir / "models" / "RealESRGAN"
    folder.mkdir(parents=True, exist_ok=True)
    compact = _arch("Compact", "Compact")(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    save_file(compact.state_dict(), str(folder / "RealESRGAN_x2plus.safetensors"))
    listed = {u["name"]: u for u in api.get("/sdapi/v1/upscalers").json()}
    assert list(listed)[:3] == ["None", "Lanczos", "Nearest"]
    assert listed["RealESRGAN_x2plus"]["scale"] == 2 and listed["RealESRGAN_x2plus"]["model_name"] == "RealESRGAN"
    assert api.get("/sdapi/v1/realesrgan-models").json() == [
        {"name": "RealESRGAN_x2plus", "path": str(folder / "RealESRGAN_x2plus.safetensors"), "scale": 2}]
    r = api.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64,
                                           "enable_hr": True, "hr_upscaler": "4x-Nonexistent"})
    assert r.status_code == 422 and "RealESRGAN_x2plus" in r.text
    r = api.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64, "enable_hr": True,
                                           "hr_scale": 1.5, "hr_upscaler": "RealESRGAN_x2plus"})
    assert r.status_code == 200, r.text


def test_a1111_model_path_flags_add_folders(models_dir, tmp_path):
    from webui.launch import parse_launch_args, start_options

    args, _ = parse_launch_args(["--realesrgan-models-path", str(models_dir / "RealESRGAN"),
                                 "--dat-models-path", str(tmp_path)], {})
    options = start_options(args, exposed=False)
    assert options.model_dirs == (("RealESRGAN", models_dir / "RealESRGAN"), ("DAT", tmp_path))
    empty = tmp_path / "models"
    registry = UpscalerRegistry(empty, lambda: torch.device("cpu"), extra_dirs=options.model_dirs)
    found = {u.name: u.folder for u in registry.entries() if u.path is not None}
    assert found and set(found.values()) == {"RealESRGAN"}
    assert all(registry.find(n).path.parent == models_dir / "RealESRGAN" for n in found)  # type: ignore[union-attr]


def test_swinir_and_scunet_tiling_averages_overlaps_as_a1111():
    from modules.upscalers.tiles import upscale_weighted

    calls: list[tuple[int, ...]] = []

    def numbered(x: torch.Tensor) -> torch.Tensor:  # tile k gives the constant k/8 at twice the size
        calls.append(tuple(x.shape))
        return torch.full((1, 3, x.shape[2] * 2, x.shape[3] * 2), len(calls) / 8, dtype=x.dtype)

    image = Image.new("RGB", (20, 12))
    out = upscale_weighted(numbered, image, 8, 2, 2, torch.float32, torch.device("cpu"))
    # columns start at 0, 6, 12 (the last at the edge); rows at 0, 4 (the last at the edge, 12 - 8)
    assert calls == [(1, 3, 8, 8)] * 6 and out is not None and out.size == (40, 24)
    px = np.asarray(out)[:, :, 0]
    assert px[0, 0] == round(1 / 8 * 255)  # tile 1 alone
    assert px[0, 13] == round((1 + 2) / 2 / 8 * 255)  # tiles 1 and 2 overlap (x 12..15 at twice the size)
    assert px[10, 13] == round((1 + 2 + 4 + 5) / 4 / 8 * 255)  # four tiles over it
    assert px[23, 39] == round(6 / 8 * 255)  # the last tile alone
    whole = upscale_weighted(lambda x: x.repeat_interleave(2, 2).repeat_interleave(2, 3), _image(20, 12), 8, 2, 2,
                             torch.float32, torch.device("cpu"))
    nearest = _image(20, 12).resize((40, 24), Image.Resampling.NEAREST)
    assert np.array_equal(np.asarray(whole), np.asarray(nearest))  # averaging equal values changes nothing
