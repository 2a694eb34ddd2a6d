from __future__ import annotations

from pathlib import Path

import pytest

from modules import infotext
from modules.infotext import KEY_ORDER, format_infotext, format_value, order_params, parse_infotext, quote

TESTDATA = Path("/work/shared/testdata/image-metadata/automatic1111")

A1111_DUCK = ("photo of a duck\nNegative prompt: monochrome\nSteps: 15, Sampler: UniPC, CFG scale: 5, Seed: 235284042, "
              "Size: 512x400, Model hash: c0d1994c73, Model: realistic_realisticVisionV20_v20")


def test_format_matches_a1111_example() -> None:
    params = {"Steps": 15, "Sampler": "UniPC", "CFG scale": 5.0, "Seed": 235284042, "Size": "512x400",
              "Model hash": "c0d1994c73", "Model": "realistic_realisticVisionV20_v20"}
    assert format_infotext("photo of a duck", "monochrome", params) == A1111_DUCK


def test_format_with_hires_and_quoted_lora_hashes() -> None:
    params = {
        "Steps": 25, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 7, "Seed": 1234567890,
        "Size": (512, 768), "Model hash": "6ce0161689", "Model": "v1-5-pruned-emaonly", "VAE hash": "735e4c3a44",
        "VAE": "vae-ft-mse-840000-ema-pruned.safetensors", "Denoising strength": 0.45, "Clip skip": 2,
        "Hires upscale": 2.0, "Hires steps": 10, "Hires upscaler": "R-ESRGAN 4x+",
        "Lora hashes": "add_detail: 7c6bad76eb54", "Version": "v1.10.1",
    }
    text = format_infotext("a red fox in the snow, (detailed fur:1.2), [blurry], <lora:add_detail:0.8>",
                           "lowres, bad anatomy, watermark", params)
    assert text == (
        "a red fox in the snow, (detailed fur:1.2), [blurry], <lora:add_detail:0.8>\n"
        "Negative prompt: lowres, bad anatomy, watermark\n"
        "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, Size: 512x768, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: 735e4c3a44, "
        "VAE: vae-ft-mse-840000-ema-pruned.safetensors, Denoising strength: 0.45, Clip skip: 2, Hires upscale: 2, "
        "Hires steps: 10, Hires upscaler: R-ESRGAN 4x+, Lora hashes: \"add_detail: 7c6bad76eb54\", Version: v1.10.1")
    parsed = parse_infotext(text)
    assert parsed["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert parsed["Model hash"] == "6ce0161689"
    assert (parsed["Size-1"], parsed["Size-2"]) == (512, 768)
    assert parsed["Hires upscale"] == 2 and parsed["Denoising strength"] == 0.45


def test_no_negative_line_and_none_skipped() -> None:
    text = format_infotext("cat", "", {"Steps": 20, "Sampler": "Euler a", "Seed": None, "CFG scale": 7.5,
                                       "Tiling": True})
    assert text == "cat\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, Tiling: True"


@pytest.mark.parametrize("value,expected", [
    (True, "True"), (False, "False"), (7, "7"), (7.0, "7"), (0.7, "0.7"), (-1, "-1"), (1e-05, "1e-05"),
    (0.1 + 0.2, "0.30000000000000004"), ("DPM++ 2M", "DPM++ 2M"), ((512, 768), "512x768"),
])
def test_format_value(value: object, expected: str) -> None:
    assert format_value(value) == expected


def test_quote_is_a1111s() -> None:
    assert quote("plain") == "plain"
    assert quote(7) == "7"
    assert quote("a, b") == '"a, b"'
    assert quote("k: v") == '"k: v"'
    assert quote("line\nnext") == '"line\\nnext"'
    assert quote('say "hi", ok') == '"say \\"hi\\", ok"'
    assert quote("日本, 語") == '"日本, 語"'  # non-ASCII kept (ensure_ascii=False)


def test_order_params() -> None:
    params = {"User": "me", "Lora hashes": "x", "Version": "v1.10.1", "Seed": 1, "Hires steps": 10, "Steps": 20,
              "Tiling": True, "Sampler": "Euler"}
    assert list(order_params(params)) == ["Steps", "Sampler", "Seed", "Tiling", "Lora hashes", "Hires steps",
                                          "Version", "User"]
    assert KEY_ORDER[:3] == ("Steps", "Sampler", "Schedule type") and KEY_ORDER[-2:] == ("Version", "User")


def test_parse_a1111_duck_text() -> None:
    parsed = parse_infotext(A1111_DUCK)
    assert parsed["Prompt"] == "photo of a duck"
    assert parsed["Negative prompt"] == "monochrome"
    assert parsed["Steps"] == 15 and parsed["Sampler"] == "UniPC" and parsed["CFG scale"] == 5
    assert parsed["Seed"] == 235284042 and parsed["Size-1"] == 512 and parsed["Size-2"] == 400
    assert parsed["Model hash"] == "c0d1994c73" and parsed["Model"] == "realistic_realisticVisionV20_v20"
    assert "Size" not in parsed


def test_parse_real_a1111_png() -> None:
    path = TESTDATA / "automatic1111_cropped.png"
    if not path.exists():
        pytest.skip("shared test data (/work/shared/testdata) is not available")
    from PIL import Image

    with Image.open(path) as image:
        text = image.info["parameters"]
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "photo of a duck" and parsed["Negative prompt"] == "monochrome"
    assert parsed["Steps"] == 15 and parsed["Seed"] == 235284042 and parsed["Sampler"] == "UniPC"
    assert parsed["Schedule type"] == "Automatic" and parsed["Clip skip"] == 1


def test_defaults_for_missing_keys() -> None:
    parsed = parse_infotext("p\nSteps: 20, Sampler: Euler, Seed: 1")
    expected = {
        "Clip skip": 1, "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
        "Hires checkpoint": "Use same checkpoint", "Hires prompt": "", "Hires negative prompt": "", "RNG": "GPU",
        "Schedule type": "Automatic", "Emphasis": "Original", "FP8 weight": "Disable", "Masked area padding": 32,
    }
    for key, value in expected.items():
        assert parsed[key] == value, key
    assert "Cache FP16 weight for LoRA" not in parsed
    given = parse_infotext("p\nSteps: 20, Clip skip: 2, RNG: CPU, Emphasis: No norm, Hires prompt: x")
    assert (given["Clip skip"], given["RNG"], given["Emphasis"], given["Hires prompt"]) == (2, "CPU", "No norm", "x")


@pytest.mark.parametrize("sampler,expected", [
    ("DPM++ 2M Karras", ("DPM++ 2M", "Karras")),
    ("DPM++ 2M SDE Exponential", ("DPM++ 2M SDE", "Exponential")),
    ("DPM++ 2M SDE Heun Karras", ("DPM++ 2M SDE Heun", "Karras")),
    ("Euler SGM Uniform", ("Euler", "SGM Uniform")),
    ("Euler SGMUniform", ("Euler", "SGM Uniform")),
    ("Euler a Align Your Steps", ("Euler a", "Align Your Steps")),
    ("LMS karras", ("LMS", "Karras")),
    ("Euler a", ("Euler a", "Automatic")),
    ("DDIM", ("DDIM", "Automatic")),
    ("UniPC", ("UniPC", "Automatic")),
])
def test_legacy_sampler_split(sampler: str, expected: tuple[str, str]) -> None:
    parsed = parse_infotext(f"p\nSteps: 20, Sampler: {sampler}, CFG scale: 7")
    assert (parsed["Sampler"], parsed["Schedule type"]) == expected


def test_no_split_when_schedule_type_present() -> None:
    parsed = parse_infotext("p\nSteps: 20, Sampler: DPM++ 2M Karras, Schedule type: Uniform")
    assert (parsed["Sampler"], parsed["Schedule type"]) == ("DPM++ 2M Karras", "Uniform")


def test_last_line_needs_three_params() -> None:
    parsed = parse_infotext("a cat\nSteps: 20, Seed: 1")
    assert parsed["Prompt"] == "a cat\nSteps: 20, Seed: 1" and "Steps" not in parsed


def test_multiline_prompts() -> None:
    text = "line one\nline two\nNegative prompt: bad\nworse\nSteps: 20, Sampler: Euler, Seed: 1"
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "line one\nline two" and parsed["Negative prompt"] == "bad\nworse"


def test_old_first_pass_size() -> None:
    parsed = parse_infotext("p\nSteps: 20, Seed: 1, Size: 1024x1024, First pass size: 0x0, Denoising strength: 0.7")
    assert (parsed["Size-1"], parsed["Size-2"]) == (512, 512)
    assert (parsed["Hires resize-1"], parsed["Hires resize-2"]) == (1024, 1024)


def test_typed_values() -> None:
    parsed = parse_infotext('p\nSteps: 20, Tiling: True, CFG scale: 7.5, Version: 1.10, Note: "123", Hash: 123')
    assert parsed["Tiling"] is True and parsed["CFG scale"] == 7.5 and isinstance(parsed["CFG scale"], float)
    assert parsed["Version"] == "1.10"  # names/versions stay text
    assert parsed["Note"] == "123" and parsed["Hash"] == 123


ROUND_TRIP = [
    ("a cat", "", {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7.5}),
    ("a, b: c", "x, y: z", {"Steps": 1, "Seed": -1, "Tiling": False, "Denoising strength": 0.75}),
    ("line1\nline2\n\nline4", "neg1\nneg2", {"Steps": 20, "Size": "512x768", "Note": "multi\nline"}),
    ('she said "hi", then left', 'no "quotes"',
     {"Said": 'say "hi"', "Wrapped": '"wrapped"', "Slash": "back\\slash, x"}),
    ("日本語のプロンプト, 猫", "Ünïcödé – ß", {"Steps": 30, "Model": "モデル", "Comment": "ключ: значение"}),
    ("emoji 🦊 fox", "", {"Steps": 3, "Emoji": "🦊", "Float": 1e-05, "Big": 12345678901234567890}),
    ("p", "n", {"Steps": 20, "Numeric text": "123", "Float text": "0.5", "Bool text": "True", "Empty": ""}),
    ("p", "n", {"Steps": 20, "Spaces": "  padded  ", "Tab": "a\tb", "CR": "a\rb", "Model hash": "1234567890"}),
    ("(x:1.2) [y] <lora:z:0.8>", "", {"Steps": 20, "Lora hashes": "z: 0123456789ab, w: ba9876543210",
                                     "Schedule type": "Karras", "Hires upscale": 1.5}),
    ("", "only negative", {"Steps": 20, "Seed": 42, "Version": "v1.10.1"}),
    ("trailing newline\n", "", {"Steps": 20, "Seed": 42, "User": "someone"}),
]


@pytest.mark.parametrize("prompt,negative,params", ROUND_TRIP)
def test_round_trip(prompt: str, negative: str, params: dict[str, object]) -> None:
    parsed = parse_infotext(format_infotext(prompt, negative, params))
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == negative
    for key, value in params.items():
        if isinstance(value, str) and infotext.RE_IMAGESIZE.match(value):
            width, height = value.split("x")
            assert (parsed[f"{key}-1"], parsed[f"{key}-2"]) == (int(width), int(height))
            continue
        assert parsed[key] == value, key
        assert type(parsed[key]) is type(value) or (isinstance(value, float) and value.is_integer()), key


def test_round_trip_is_readable_by_a1111_regex() -> None:
    # our extra quoting (empty, padded, numeric-looking text) still parses with A1111's own regex + unquote
    params = {"Steps": 20, "Empty": "", "Spaces": " x ", "Numeric text": "123"}
    line = format_infotext("p", "", params).split("\n")[-1]
    found = {k: infotext.unquote(v) for k, v in infotext.RE_PARAM.findall(line)}
    assert found == {"Steps": "20", "Empty": "", "Spaces": " x ", "Numeric text": "123"}
