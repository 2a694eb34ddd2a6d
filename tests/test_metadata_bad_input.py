"""Hostile and damaged files: never an exception out of ``read_metadata`` (but "not an image"), bounded time and
memory, and the damage reported."""

from __future__ import annotations

import io
import random
import struct
import time
import tracemalloc
import zlib

import pytest
from PIL import Image

from modules.errors import ValidationError
from modules.metadata import read_metadata
from modules.metadata.model import MAX_ITEM_CHARS
from tests.test_metadata import INFOTEXT, chunk, exif_user_comment, jpeg, png, stealth_png, text_chunk


@pytest.mark.parametrize("data", [b"", b"hello world", b"GIF89a", b"\x00" * 100, b"<svg/>",
                                  b"%PDF-1.4 not an image", b"RIFF\x00\x00\x00\x00WAVE"])
def test_not_an_image(data):
    with pytest.raises(ValidationError, match="^image: not an image") as info:
        read_metadata(data)
    assert info.value.field == "image"


def test_truncated_png_at_every_length_never_raises():
    data = png(before=[text_chunk("parameters", INFOTEXT, "zTXt")], after=[text_chunk("extra", "after", "iTXt")])
    for cut in range(8, len(data)):
        md = read_metadata(data[:cut])
        assert md.format == "PNG"
        if cut < len(data) - 12:
            assert md.errors, cut
    whole = read_metadata(data)
    assert whole.infotext == INFOTEXT and not whole.errors and whole.items["extra"] == "after"
    head = data[: data.index(b"IDAT") + 20]
    assert read_metadata(head).infotext == INFOTEXT  # text before the cut survives


def test_random_damage_never_raises():
    rng = random.Random(5)
    samples = [png(before=[text_chunk("parameters", INFOTEXT)]), jpeg(exif_user_comment(INFOTEXT)),
               stealth_png(INFOTEXT, size=(48, 48))]
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "WEBP", exif=exif_user_comment(INFOTEXT))
    samples.append(buf.getvalue())
    for sample in samples:
        for _ in range(150):
            data = bytearray(sample)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            try:
                read_metadata(bytes(data))
            except ValidationError as exc:
                assert str(exc).startswith("image: not an image")


def test_corrupt_and_bomb_compressed_text():
    corrupt = read_metadata(png(before=[chunk(b"zTXt", b"parameters\0\0" + b"not zlib at all")]))
    assert corrupt.infotext == "" and any("corrupt" in e for e in corrupt.errors)
    bomb = zlib.compress(b"A" * (64 * 1024 * 1024), 9)  # 64 MB of text in ~64 KB
    started = time.monotonic()
    md = read_metadata(png(before=[chunk(b"zTXt", b"parameters\0\0" + bomb)]))
    assert time.monotonic() - started < 5
    assert len(md.items["parameters"]) == MAX_ITEM_CHARS and any("kept" in w or "cut" in w for w in md.warnings)


def test_fifty_megabyte_text_chunk_is_capped_fast():
    big = b"parameters\0" + b"x" * (50 * 1000 * 1000)
    data = png(before=[chunk(b"tEXt", big)])
    tracemalloc.start()
    started = time.monotonic()
    md = read_metadata(data)
    elapsed = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 10 and peak < 60 * 1024 * 1024, (elapsed, peak)
    assert len(md.items["parameters"]) == MAX_ITEM_CHARS
    assert any("only the first" in w for w in md.warnings)


def test_decompression_bomb_header_is_not_decoded():
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 6, 0, 0, 0))
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 4000))
    data = b"\x89PNG\r\n\x1a\n" + ihdr + text_chunk("parameters", INFOTEXT) + idat + chunk(b"IEND", b"")
    started = time.monotonic()
    md = read_metadata(data)
    assert time.monotonic() - started < 2
    assert md.infotext == INFOTEXT and (md.width, md.height) == (100_000, 100_000)
    no_text = read_metadata(b"\x89PNG\r\n\x1a\n" + ihdr + idat + chunk(b"IEND", b""))
    assert no_text.infotext == "" and any("too large" in w for w in no_text.warnings)
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "BMP")
    huge_bmp = bytearray(buf.getvalue())
    struct.pack_into("<ii", huge_bmp, 18, 200_000, 200_000)
    assert read_metadata(bytes(huge_bmp)).tool is None


def test_invalid_json_and_non_utf8_bytes():
    md = read_metadata(png(before=[text_chunk("prompt", '{"3": {"class_type": "KSampler", '),
                                   text_chunk("workflow", "[[[")]))
    assert md.tool is None and any("invalid JSON" in w for w in md.warnings) and md.items["workflow"] == "[[["
    raw = chunk(b"iTXt", b"parameters\0\0\0\0\0" + b"a \xff\xfe cat\nSteps: 2, Seed: 1, CFG scale: 7")
    md = read_metadata(png(before=[raw]))
    assert md.parameters["Prompt"] == "a \ufffd\ufffd cat" and md.parameters["Steps"] == 2
    latin = read_metadata(png(before=[chunk(b"tEXt", b"Comment\0caf\xe9")]))
    assert latin.items["Comment"] == "caf\u00e9" and latin.tool is None
    bad_comment = read_metadata(jpeg(comment=b"\xff\xfe\xfa bad"))
    assert "comment" in bad_comment.items
    nul = read_metadata(png(before=[chunk(b"tEXt", b"nokeyword")]))
    assert any("keyword" in e for e in nul.errors)


def test_hostile_exif_offsets():
    tiff = bytearray(b"MM\x00*\x00\x00\x00\x08")
    entries = [(0x010E, 2, 0xFFFFFF, 0x7FFFFFF0), (0x8769, 4, 1, 8), (0x0110, 2, 4, 0x41424300)]
    tiff += struct.pack(">H", len(entries) + 1000)  # claims more entries than there are
    for tag, typ, count, value in entries:
        tiff += struct.pack(">HHII", tag, typ, count, value)
    md = read_metadata(png(before=[chunk(b"eXIf", bytes(tiff))]))
    assert md.items.get("Model") == "ABC" and md.tool is None
    junk = read_metadata(png(before=[chunk(b"eXIf", b"not tiff")]))
    assert any("EXIF" in e for e in junk.errors)


def _alpha_stealth(raw: bytes) -> bytes:
    import numpy as np

    rgba = np.full((32, 32, 4), 255, np.uint8)
    bits = np.unpackbits(np.frombuffer(raw, np.uint8))
    column_major = rgba[:, :, 3].T.reshape(-1).copy()
    column_major[: len(bits)] = (column_major[: len(bits)] & 0xFE) | bits
    rgba[:, :, 3] = column_major.reshape(32, 32).T
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, "PNG")
    return buf.getvalue()


def test_stealth_with_lying_length_and_bad_gzip():
    md = read_metadata(_alpha_stealth(b"stealth_pngcomp" + struct.pack(">I", 10**9)))
    assert md.tool is None and any("does not fit" in w for w in md.warnings)
    bad = read_metadata(_alpha_stealth(b"stealth_pngcomp" + struct.pack(">I", 64) + b"not gzip"))
    assert bad.tool is None and any("corrupt" in w for w in bad.warnings)
    odd = read_metadata(_alpha_stealth(b"stealth_pnginfo" + struct.pack(">I", 32) + b"\xff\xfeok"))
    assert odd.parameters["Prompt"] == "\ufffd\ufffdok"
