""""Restore faces" wired through generation, Extras and the API: the restorer runs on each decoded image (before
img2img's overlay), at the model and weight the request carries from the settings, blended at Extras' visibilities;
a restorer that is not installed is a warning in generation and a 422 in Extras. The restorers themselves are
tested in test_faces.py; here a stand-in with the same interface inverts the image."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageChops

from conftest import install_model
from modules.errors import ValidationError
from modules.extras import ExtrasRequest, run_extras, validate_extras
from modules.extras_steps import ExtrasTools
from modules.faces.restorers import FaceRestoreResult
from modules.param_io import read_infotext
from modules.requests import GenerationRequest, Img2ImgRequest

SMALL = {"steps": 2, "width": 64, "height": 64, "seed": 5, "randn_source": "CPU"}


class InvertingRestorer:
    """The FaceRestorers interface; "restores" by inverting, and records the weight it was given."""

    def __init__(self, names: tuple[str, ...] = ("CodeFormer", "GFPGAN")) -> None:
        self._names = list(names)
        self.calls: list[tuple[str, float]] = []

    def names(self) -> list[str]:
        return list(self._names)

    def restore(self, image, name, *, codeformer_weight=0.5, on_progress=None, cancel=None):
        self.calls.append((name, codeformer_weight))
        return FaceRestoreResult(ImageChops.invert(image.convert("RGB")), faces=1)


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture
def engine(data_dir, model_store, engine_factory):
    install_model(data_dir, model_store("sd1", "safetensors"), "tiny")
    made = engine_factory()
    made.faces = InvertingRestorer()
    return made


def test_txt2img_and_img2img_restore_faces(engine):
    plain = engine.txt2img(GenerationRequest(prompt="x", **SMALL)).result
    restored = engine.txt2img(GenerationRequest(prompt="x", restore_faces=True, face_restoration_model="GFPGAN",
                                                code_former_weight=0.25, **SMALL)).result
    assert np.array_equal(px(restored.images[0]), 255 - px(plain.images[0]))
    assert engine.faces.calls == [("GFPGAN", 0.25)]
    assert "Face restoration: GFPGAN" in restored.infotexts[0] and "Face restoration" not in plain.infotexts[0]
    values, _ = read_infotext(restored.infotexts[0])
    assert values["restore_faces"] is True and values["face_restoration_model"] == "GFPGAN"

    engine.faces._names = ["GFPGAN"]  # CodeFormer not installed: the image is kept, with a warning
    kept = engine.txt2img(GenerationRequest(prompt="x", restore_faces=True, **SMALL)).result
    assert np.array_equal(px(kept.images[0]), px(plain.images[0]))
    assert any("CodeFormer is not installed" in w and "models/Codeformer" in w for w in kept.warnings)

    # inpainting: restoration comes before the overlay, so the unmasked area stays the init image's
    init = Image.new("RGB", (64, 64), (200, 120, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    req = Img2ImgRequest(prompt="x", init_images=(init,), mask=mask, restore_faces=True,
                         face_restoration_model="GFPGAN", denoising_strength=0.8, mask_blur_x=0, mask_blur_y=0,
                         **SMALL)
    out = px(engine.img2img(req).result.images[0])
    assert np.abs(out[:8, :8] - px(init)[:8, :8]).max() <= 1


def _image() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))


def test_extras_blends_each_restorer_at_its_visibility(engine):
    tools = ExtrasTools(InvertingRestorer())  # type: ignore[arg-type]
    source = _image()
    req = ExtrasRequest(images=(("", source),), gfpgan_visibility=0.5, codeformer_visibility=1.0,
                        codeformer_weight=0.3)
    validate_extras(req, engine.upscalers, tools)
    result = run_extras(engine.upscalers, req, tools=tools)
    out = Image.open(io.BytesIO(result.images[0].png))
    half = Image.blend(source, ImageChops.invert(source), 0.5)  # GFPGAN at 0.5, then CodeFormer in full
    assert np.abs(px(out) - (255 - px(half))).max() <= 1
    assert result.images[0].postprocessing == "GFPGAN visibility: 0.5, CodeFormer visibility: 1.0, " \
                                              "CodeFormer weight: 0.3"
    assert tools.faces.calls == [("GFPGAN", 0.3), ("CodeFormer", 0.3)]  # type: ignore[union-attr]
    missing = ExtrasTools(InvertingRestorer(("GFPGAN",)))  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="codeformer_visibility: CodeFormer is not installed.*models/Codeformer"):
        validate_extras(req, engine.upscalers, missing)


def test_api_lists_installed_restorers_and_refuses_missing_ones(api, data_dir):
    assert api.get("/sdapi/v1/face-restorers").json() == []
    buf = io.BytesIO()
    _image().save(buf, "PNG")
    body = {"image": base64.b64encode(buf.getvalue()).decode(), "codeformer_visibility": 1}
    r = api.post("/sdapi/v1/extra-single-image", json=body)
    assert r.status_code == 422 and "models/Codeformer" in r.text
    (data_dir / "models" / "GFPGAN").mkdir(parents=True)
    (data_dir / "models" / "GFPGAN" / "GFPGANv1.4.pth").write_bytes(b"weights")
    assert api.get("/sdapi/v1/face-restorers").json() == [{"name": "GFPGAN", "cmd_dir": None}]
