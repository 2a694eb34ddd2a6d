from __future__ import annotations

import io
import struct
from pathlib import Path

import piexif
import piexif.helper
import pytest
from PIL import Image

from modules.images import ImageFormatLimitError, encode_image, grid_shape, image_grid, read_parameters

TESTDATA = Path("/work/shared/testdata/image-metadata/automatic1111")
INFOTEXT = "a cat, sitting\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 8x8"


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        chunks.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


def text_chunks(data: bytes) -> dict[bytes, bytes]:
    return {body.split(b"\x00", 1)[0]: kind for kind, body in png_chunks(data) if kind in (b"tEXt", b"iTXt", b"zTXt")}


def open_bytes(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def small(mode: str = "RGB", size: tuple[int, int] = (8, 8)) -> Image.Image:
    color = {"RGB": (200, 10, 10), "RGBA": (200, 10, 10, 128), "L": 100, "LA": (100, 50), "P": 3}[mode]
    return Image.new(mode, size, color)


def test_png_latin1_infotext_is_text_chunk() -> None:
    data = encode_image(small(), "png", INFOTEXT + ", Note: café")
    assert text_chunks(data) == {b"parameters": b"tEXt"}
    assert read_parameters(open_bytes(data)) == INFOTEXT + ", Note: café"


def test_png_non_latin1_infotext_is_itxt() -> None:
    text = "猫 🦊\nNegative prompt: 犬\nSteps: 20, Sampler: Euler, Seed: 1"
    data = encode_image(small(), "PNG", text)
    assert text_chunks(data) == {b"parameters": b"iTXt"}
    chunk = next(body for kind, body in png_chunks(data) if kind == b"iTXt")
    assert text.encode("utf-8") in chunk  # uncompressed UTF-8
    assert read_parameters(open_bytes(data)) == text


def test_png_extra_text_and_no_infotext() -> None:
    extra = {"prompt": "{}", "workflow": "ключ", "parameters": "x"}
    data = encode_image(small(), "png", INFOTEXT, extra_text=extra)
    assert text_chunks(data) == {b"parameters": b"tEXt", b"prompt": b"tEXt", b"workflow": b"iTXt"}
    assert read_parameters(open_bytes(data)) == INFOTEXT
    bare = encode_image(small(), "png", None)
    assert text_chunks(bare) == {} and read_parameters(open_bytes(bare)) is None


@pytest.mark.parametrize("fmt", ["jpg", "jpeg", "JPG", "webp"])
def test_exif_user_comment_round_trip(fmt: str) -> None:
    text = INFOTEXT + ", Note: \"日本語\""
    image = open_bytes(encode_image(small(), fmt, text))
    assert image.format == ("WEBP" if fmt == "webp" else "JPEG")
    assert read_parameters(image) == text
    comment = piexif.load(image.info["exif"])["Exif"][piexif.ExifIFD.UserComment]
    assert comment.startswith(b"UNICODE\x00")
    assert piexif.helper.UserComment.load(comment) == text  # what A1111's reader does


def test_rgba_to_jpeg_and_webp_alpha() -> None:
    jpeg = open_bytes(encode_image(small("RGBA"), "jpg", "x, y: z"))
    assert jpeg.mode == "RGB" and jpeg.format == "JPEG"
    for mode in ("P", "LA", "L"):
        assert open_bytes(encode_image(small(mode), "jpeg", None)).format == "JPEG"
    webp = open_bytes(encode_image(small("RGBA"), "webp", None))
    assert webp.mode == "RGBA"
    assert webp.getpixel((0, 0))[3] == 128


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="png, jpg, jpeg, webp"):
        encode_image(small(), "gif", None)


def test_oversize_raises_limit_error() -> None:
    wide = Image.new("L", (16384, 1))
    with pytest.raises(ImageFormatLimitError):
        encode_image(wide, "webp", None)
    assert isinstance(ImageFormatLimitError("x"), ValueError)
    assert encode_image(wide, "jpg", None)[:2] == b"\xff\xd8"  # within the JPEG limit
    with pytest.raises(ValueError):
        encode_image(Image.new("L", (65536, 1)), "jpg", None)


def test_infotext_too_long_for_jpeg_exif() -> None:
    with pytest.raises(ImageFormatLimitError):
        encode_image(small(), "jpg", "x" * 40000)
    assert read_parameters(open_bytes(encode_image(small(), "webp", "x" * 40000))) == "x" * 40000


def test_exif_ascii_comment_is_read() -> None:
    exif = piexif.dump({"Exif": {piexif.ExifIFD.UserComment: piexif.helper.UserComment.dump("a, b", "ascii")}})
    buffer = io.BytesIO()
    small().save(buffer, format="JPEG", exif=exif)
    assert read_parameters(open_bytes(buffer.getvalue())) == "a, b"


def test_reads_real_a1111_jpeg_and_png() -> None:
    if not TESTDATA.exists():
        pytest.skip("shared test data (/work/shared/testdata) is not available")
    expected = ("photo of a duck\nNegative prompt: monochrome\nSteps: 15, Sampler: UniPC, CFG scale: 5, "
                "Seed: 235284042, Size: 512x400, Model hash: c0d1994c73, Model: realistic_realisticVisionV20_v20")
    for name in ("automatic1111_cropped.png", "automatic1111_cropped.jpg"):
        with Image.open(TESTDATA / name) as image:
            assert read_parameters(image) == expected, name


@pytest.mark.parametrize("count,shape", [(1, (1, 1)), (2, (1, 2)), (3, (2, 2)), (4, (2, 2)), (5, (2, 3)),
                                         (6, (2, 3)), (9, (3, 3))])
def test_grid_sizes(count: int, shape: tuple[int, int]) -> None:
    tiles = [Image.new("RGB", (10, 6), (i * 20, 255, 0)) for i in range(count)]
    grid = image_grid(tiles)
    rows, cols = shape
    assert grid_shape(count) == shape
    assert grid.size == (cols * 10, rows * 6) and grid.mode == "RGB"
    for i in range(count):  # row-major placement
        assert grid.getpixel((i % cols * 10 + 5, i // cols * 6 + 3)) == (i * 20, 255, 0)
    for i in range(count, rows * cols):  # empty spots stay black
        assert grid.getpixel((i % cols * 10 + 5, i // cols * 6 + 3)) == (0, 0, 0)


def test_grid_rows_argument() -> None:
    tiles = [Image.new("RGB", (4, 4))] * 4
    assert image_grid(tiles, rows=1).size == (16, 4)
    assert image_grid(tiles, rows=4).size == (4, 16)
    assert image_grid(tiles, rows=9).size == (4, 16)  # capped at the number of images
    assert image_grid(tiles, rows=3).size == (8, 12)  # A1111: cols = ceil(4/3) = 2, three rows kept
    with pytest.raises(ValueError):
        image_grid([])
