"""Image metadata readers: other tools' real images (values compared with sd-parsers' expectations), images this
product writes, and every container built here (PNG chunks anywhere, eXIf, JPEG/WebP EXIF, comments, XMP, stealth).
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import piexif
import pytest
from PIL import Image

from modules.images import encode_image
from modules.metadata import read_metadata
from tests.conftest import TESTDATA

IMAGES = TESTDATA / "image-metadata"
INFOTEXT = ("a red fox in the snow, (detailed fur:1.2)\nNegative prompt: lowres, watermark\n"
            "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, Size: 512x768, "
            "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Clip skip: 2, "
            "Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, Version: v1.10.1")


# -- builders shared by the other metadata tests
def chunk(kind: bytes, body: bytes, crc: int | None = None) -> bytes:
    value = zlib.crc32(body, zlib.crc32(kind)) if crc is None else crc
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", value)


def text_chunk(key: str, value: str, kind: str = "tEXt") -> bytes:
    if kind == "tEXt":
        return chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))
    if kind == "zTXt":
        return chunk(b"zTXt", key.encode("latin-1") + b"\0\0" + zlib.compress(value.encode("latin-1")))
    return chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8"))


def png(before: list[bytes] = (), after: list[bytes] = (), image: Image.Image | None = None) -> bytes:
    """A PNG with extra chunks inserted before the first IDAT and after the last one."""
    buf = io.BytesIO()
    (image or Image.new("RGB", (8, 8), "gray")).save(buf, "PNG")
    data = buf.getvalue()
    first = data.index(b"IDAT") - 4
    end = data.index(b"IEND") - 4
    return data[:first] + b"".join(before) + data[first:end] + b"".join(after) + data[end:]


def exif_user_comment(text: str, prefix: bytes = b"UNICODE\0", encoding: str = "utf-16-be", **ifd0) -> bytes:
    zeroth = {getattr(piexif.ImageIFD, k): v for k, v in ifd0.items()}
    return piexif.dump({"0th": zeroth, "Exif": {piexif.ExifIFD.UserComment: prefix + text.encode(encoding)}})


def jpeg(exif: bytes | None = None, comment: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    kwargs = {"exif": exif} if exif else {}
    if comment:
        kwargs["comment"] = comment
    Image.new("RGB", (8, 8), "gray").save(buf, "JPEG", **kwargs)
    return buf.getvalue()


def stealth_png(text: str, mode: str = "alpha", compressed: bool = True, size=(32, 32)) -> bytes:
    """An image hiding ``text`` as A1111's stealth-pnginfo extension writes it (column-major LSBs)."""
    sig = f"stealth_{'png' if mode == 'alpha' else 'rgb'}{'comp' if compressed else 'info'}".encode()
    payload = gzip.compress(text.encode()) if compressed else text.encode()
    bits = np.unpackbits(np.frombuffer(sig + struct.pack(">I", len(payload) * 8) + payload, np.uint8))
    rgba = np.random.default_rng(1).integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    planes = rgba[:, :, 3:4] if mode == "alpha" else rgba[:, :, :3]
    flat = planes.transpose(1, 0, 2).reshape(-1).copy()
    assert len(bits) <= len(flat)
    flat[: len(bits)] = (flat[: len(bits)] & 0xFE) | bits
    planes[...] = flat.reshape(planes.shape[1], planes.shape[0], planes.shape[2]).transpose(1, 0, 2)
    image = Image.fromarray(rgba if mode == "alpha" else rgba[:, :, :3].copy())
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


# -- other tools' images, compared with sd-parsers' expected values
def _cases() -> list[Path]:
    if not IMAGES.is_dir():
        return []
    return sorted(p for p in IMAGES.rglob("*") if p.suffix in (".png", ".jpg") and p.parent.name != "negative")


needs_testdata = pytest.mark.skipif(not IMAGES.is_dir(), reason=f"shared test data absent ({IMAGES})")


def _same_number(a, b) -> bool:
    return float(a) == pytest.approx(float(b))


@needs_testdata
@pytest.mark.parametrize("path", _cases(), ids=lambda p: p.name)
def test_other_tools_images_match_expected_values(path):
    md = read_metadata(path.read_bytes())
    assert md.tool, (md.errors, md.warnings)
    assert md.infotext and not md.errors
    p = md.parameters
    expected_file = path.with_name(path.name + ".expected.json")
    if not expected_file.exists():  # no expectations: a prompt and the sampler's values were found
        assert p["Prompt"] and p["Steps"] and p["Seed"]
        return
    expected = json.loads(expected_file.read_text())["expectations"][0]["expected"]
    for i, sampler in enumerate(expected["samplers"]):
        prefix = "" if i == 0 else "Hires "
        params = sampler["parameters"]
        prompts = {x["value"].strip() for x in sampler["prompts"]}
        negatives = {x["value"].strip() for x in sampler["negative_prompts"]}
        prompt = p["Prompt"] if i == 0 else p.get("Hires prompt") or p["Prompt"]
        assert set(prompt.split("\nAND\n")) == prompts, prompt
        negative = p["Negative prompt"] if i == 0 else p.get("Hires negative prompt") or p["Negative prompt"]
        assert negative == ", ".join(sorted(negatives)) if negatives else negative == ""
        assert _same_number(p["Seed" if i == 0 else "Hires seed"], params["seed"])
        if "steps" in params:
            assert _same_number(p[f"{prefix}Steps" if i == 0 else "Hires steps"], params["steps"])
        elif "steps" in expected.get("metadata", {}):
            assert p["Steps"] == expected["metadata"]["steps"]
        cfg = p["CFG scale"] if i == 0 else p.get("Hires CFG scale", p["CFG scale"])
        assert _same_number(cfg, params["cfg_scale"])
        if "denoise" in params and params["denoise"] < 1:
            assert _same_number(p["Denoising strength"], params["denoise"])
        if "strength" in params:
            assert _same_number(p["Denoising strength"], params["strength"])
        sampler_name = p["Sampler"] if i == 0 else p.get("Hires sampler", p["Sampler"])
        assert sampler_name == _A1111_NAMES.get(sampler["name"], sampler["name"])
        model = sampler.get("model")
        if model:
            name = p["Model"] if i == 0 else p.get("Hires checkpoint", p["Model"])
            assert Path(model["name"]).stem == name or model["name"] == name
            if model.get("hash"):
                assert model["hash"].lower().startswith(str(p["Model hash"]).lower())
    size = expected.get("metadata", {}).get("Size")
    width = expected.get("metadata", {}).get("width")
    if size:
        assert f"{p['Size-1']}x{p['Size-2']}" == size
    elif width:
        assert (p["Size-1"], p["Size-2"]) == (width, expected["metadata"]["height"])


_A1111_NAMES = {"sample_dpmpp_2m": "DPM++ 2M", "dpmpp_sde": "DPM++ SDE", "dpmpp_2m": "DPM++ 2M",
                "dpmpp_2m_sde_gpu": "DPM++ 2M SDE", "k_lms": "LMS", "euler": "Euler", "k_euler_ancestral": "Euler a"}


@needs_testdata
def test_tools_named_and_special_cases():
    tools = {p.name: read_metadata(p.read_bytes()) for p in _cases()}
    assert tools["automatic1111_cropped.png"].tool == "A1111"
    assert tools["automatic1111_cropped.jpg"].source == "UserComment"
    stealth = tools["automatic1111_stealth.png"]
    assert stealth.parameters["Clip skip"] == 2 and "stealth" in " ".join(stealth.warnings)
    assert tools["fooocus1_cropped.png"].tool == "Fooocus"
    assert tools["fooocus1_cropped.png"].parameters["Schedule type"] == "Karras"
    assert tools["novelai1_cropped.png"].parameters["ENSD"] == 31337
    night = tools["night_evening_day_morning_cropped.png"].parameters
    sizes = (night["Size-1"], night["Size-2"], night["Hires resize-1"], night["Hires resize-2"])
    assert sizes == (704, 1280, 1088, 1920)
    assert night["Clip skip"] == 2 and night["Schedule type"] == "Normal" and night["Hires schedule type"] == "Simple"
    assert {t.tool for t in tools.values()} == {"A1111", "ComfyUI", "Fooocus", "InvokeAI", "NovelAI"}


@needs_testdata
def test_negative_files():
    from modules.errors import ValidationError

    with pytest.raises(ValidationError, match="not an image"):
        read_metadata((IMAGES / "negative/empty_file.png").read_bytes())
    for name in ("empty_image.jpg", "empty_image.png"):
        md = read_metadata((IMAGES / "negative" / name).read_bytes())
        assert md.tool is None and md.infotext == "" and md.parameters == {} and not md.errors
    after = read_metadata((IMAGES / "negative/text_after_idat.png").read_bytes())
    assert after.parameters["Seed"] == 235284042 and after.parameters["Prompt"] == "photo of a duck"


# -- what this product writes
@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
@pytest.mark.parametrize("text", [INFOTEXT, INFOTEXT.replace("a red fox", "\u72d0\u72f8 \U0001f98a")])
def test_product_images_read_back_exactly(fmt, text):
    data = encode_image(Image.new("RGB", (16, 16), "red"), fmt, text.replace("v1.10.1", "sdwebui 0.1.0"))
    md = read_metadata(data)
    assert md.infotext == text.replace("v1.10.1", "sdwebui 0.1.0")
    assert md.tool == "sdwebui" and md.format == {"jpg": "JPEG"}.get(fmt, fmt.upper())
    assert md.parameters["Hires upscale"] == 2 and md.parameters["Seed"] == 1234567890
    assert md.parameters["Prompt"].startswith(("a red fox", "\u72d0"))


# -- containers
@pytest.mark.parametrize("kind", ["tEXt", "zTXt", "iTXt"])
@pytest.mark.parametrize("where", ["before", "after"])
def test_png_text_chunks_anywhere(kind, where):
    text = INFOTEXT if kind != "iTXt" else INFOTEXT.replace("fox", "\u72d0")
    c = text_chunk("parameters", text, kind)
    md = read_metadata(png(before=[c]) if where == "before" else png(after=[c]))
    assert md.infotext == text and md.tool == "A1111" and not md.errors


def test_png_exif_chunk_and_crc_damage():
    exif = exif_user_comment(INFOTEXT)[6:] if exif_user_comment(INFOTEXT).startswith(b"Exif") else \
        exif_user_comment(INFOTEXT)
    md = read_metadata(png(after=[chunk(b"eXIf", exif)]))
    assert md.infotext == INFOTEXT and md.source == "UserComment"
    damaged = read_metadata(png(before=[chunk(b"tEXt", b"parameters\0" + INFOTEXT.encode(), crc=1)]))
    assert damaged.infotext == INFOTEXT and any("CRC" in e for e in damaged.errors)


@pytest.mark.parametrize("prefix,encoding", [(b"UNICODE\0", "utf-16-be"), (b"UNICODE\0", "utf-16-le"),
                                             (b"ASCII\0\0\0", "ascii"), (b"UNICODE\0", "utf-16")])
def test_jpeg_user_comment_forms(prefix, encoding):
    md = read_metadata(jpeg(exif_user_comment(INFOTEXT, prefix, encoding)))
    assert md.infotext == INFOTEXT and md.format == "JPEG"


def test_jpeg_ifd0_strings_comment_and_xmp():
    exif = piexif.dump({"0th": {piexif.ImageIFD.ImageDescription: INFOTEXT.encode(), piexif.ImageIFD.Make: b"Cam",
                                piexif.ImageIFD.Model: b"X1", piexif.ImageIFD.Software: b"Tool 2"}})
    md = read_metadata(jpeg(exif))
    assert md.infotext == INFOTEXT and md.source == "ImageDescription"
    assert md.items["Make"] == "Cam" and md.items["Model"] == "X1" and md.items["Software"] == "Tool 2"
    com = read_metadata(jpeg(comment=INFOTEXT.encode()))
    assert com.infotext == INFOTEXT and com.source == "comment"
    plain = read_metadata(jpeg(comment=b"just a comment"))
    assert plain.tool is None and plain.items == {"comment": "just a comment"}


def test_webp_exif_and_comfyui_webp_tags():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "WEBP", exif=exif_user_comment(INFOTEXT))
    assert read_metadata(buf.getvalue()).infotext == INFOTEXT
    graph = {"3": {"class_type": "KSampler", "inputs": {"seed": 7, "steps": 9, "cfg": 4.5, "sampler_name": "euler",
                                                         "scheduler": "karras", "denoise": 1.0, "positive": ["6", 0],
                                                         "negative": ["7", 0], "latent_image": ["5", 0]}},
             "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 640, "height": 384, "batch_size": 1}},
             "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a boat"}},
             "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "fog"}}}
    exif = Image.Exif()
    exif[0x0110] = "prompt:" + json.dumps(graph)
    exif[0x010F] = "workflow:" + json.dumps({"nodes": [], "links": []})
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "WEBP", exif=exif.tobytes())
    md = read_metadata(buf.getvalue())
    assert md.tool == "ComfyUI" and md.parameters["Seed"] == 7 and md.parameters["Size-1"] == 640
    assert (md.parameters["Sampler"], md.parameters["Schedule type"]) == ("Euler", "Karras")


@pytest.mark.parametrize("mode", ["alpha", "rgb"])
@pytest.mark.parametrize("compressed", [True, False])
def test_stealth_pnginfo(mode, compressed):
    md = read_metadata(stealth_png(INFOTEXT, mode, compressed, size=(48, 48) if compressed else (64, 64)))
    assert md.infotext == INFOTEXT and md.tool == "A1111"


def test_stealth_novelai_json():
    comment = {"prompt": "1girl", "steps": 28, "scale": 5, "seed": 9, "sampler": "k_euler", "uc": "bad",
               "width": 832, "height": 1216}
    payload = json.dumps({"Description": "1girl", "Software": "NovelAI", "Source": "NovelAI Diffusion V4 4F49EC75",
                          "Comment": json.dumps(comment)})
    md = read_metadata(stealth_png(payload, size=(64, 64)))
    assert md.tool == "NovelAI" and md.parameters["Model hash"] == "4F49EC75" and md.parameters["Size-2"] == 1216


def test_other_pillow_formats_and_gif_comment():
    buf = io.BytesIO()
    Image.new("P", (4, 4)).save(buf, "GIF", comment=INFOTEXT.encode())
    assert read_metadata(buf.getvalue()).infotext == INFOTEXT
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "BMP")
    md = read_metadata(buf.getvalue())
    assert md.format == "BMP" and md.tool is None
