from __future__ import annotations

import datetime
import hashlib
import os
from pathlib import Path

import pytest
from PIL import Image

from modules import fileio, outputs
from modules.images import read_parameters
from modules.outputs import FilenameGenerator, dated_folder, next_sequence_number, sanitize_filename_part, save_image

INFO = "cat\nSteps: 20, Sampler: Euler, Seed: 123"


def img(size: tuple[int, int] = (8, 8)) -> Image.Image:
    return Image.new("RGB", size, (1, 2, 3))


def names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_sample_names_and_restart(tmp_path: Path) -> None:
    folder = tmp_path / "txt2img-images" / "2024-07-27"  # created on demand
    first = save_image(img(), folder, "png", INFO, values={"seed": 123})
    assert first == folder / "00000-123.png"
    second = save_image(img(), folder, "png", INFO, values={"seed": 456})
    assert second.name == "00001-456.png"
    # a "restart": nothing remembered in memory, the number comes from the folder
    assert next_sequence_number(folder) == 2
    assert save_image(img(), folder, "png", INFO, values={"seed": 7}).name == "00002-7.png"
    with Image.open(first) as image:
        assert read_parameters(image) == INFO
    assert names(folder) == ["00000-123.png", "00001-456.png", "00002-7.png"]


def test_gaps_and_foreign_files(tmp_path: Path) -> None:
    for name in ("00007-1.png", "notes.txt", "grid-0042.png", "abc-99.png", ".hidden", "3.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "00012-dir").mkdir()
    assert next_sequence_number(tmp_path) == 13
    assert next_sequence_number(tmp_path, "grid") == 43
    assert next_sequence_number(tmp_path / "missing") == 0
    assert next_sequence_number(tmp_path, "none") == 0
    assert save_image(img(), tmp_path, "png", None, values={"seed": 5}).name == "00013-5.png"


def test_existing_next_name_not_overwritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = tmp_path / "00000-123.png"
    taken.write_bytes(b"precious")
    monkeypatch.setattr(outputs, "next_sequence_number", lambda folder, basename="": 0)  # a stale scan
    path = save_image(img(), tmp_path, "png", INFO, values={"seed": 123})
    assert path.name == "00001-123.png"
    assert taken.read_bytes() == b"precious"


def test_grid_names(tmp_path: Path) -> None:
    folder = dated_folder(tmp_path, "txt2img-grids", datetime.date(2024, 7, 27))
    assert folder == tmp_path / "txt2img-grids" / "2024-07-27"
    first = save_image(img(), folder, "png", INFO, pattern="", basename="grid", digits=4)
    second = save_image(img(), folder, "png", INFO, pattern="", basename="grid", digits=4)
    assert (first.name, second.name) == ("grid-0000.png", "grid-0001.png")
    assert save_image(img(), folder, "png", None, values={"seed": 1}).name == "00000-1.png"


def test_dated_folder_rejects_paths(tmp_path: Path) -> None:
    for kind in ("..", "a/b", "", "/abs"):
        with pytest.raises(ValueError):
            dated_folder(tmp_path, kind, datetime.date(2024, 1, 1))


def test_formats_and_fallback(tmp_path: Path) -> None:
    assert save_image(img(), tmp_path, "jpg", INFO, values={"seed": 1}).name == "00000-1.jpg"
    assert save_image(img(), tmp_path, "WEBP", INFO, values={"seed": 2}).name == "00001-2.webp"
    tall = Image.new("RGB", (1, 16384))
    path = save_image(tall, tmp_path, "webp", INFO, values={"seed": 3})
    assert path.name == "00002-3.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and read_parameters(image) == INFO
    with pytest.raises(ValueError):
        save_image(img(), tmp_path, "bmp", INFO)
    with pytest.raises(ValueError):
        save_image(img(), tmp_path, "png", INFO, basename="../x")


@pytest.mark.parametrize("prompt", ["../../etc", "/abs/path", "a\x00b", "x" * 300, "..", ".", "..\\..\\win",
                                    " . ", "con:stream?*<>|\"", "日本語/" * 60, "\n\r\t"])
def test_traversal_in_prompt_tokens(tmp_path: Path, prompt: str) -> None:
    folder = tmp_path / "out"
    for pattern in ("[prompt]", "[prompt_spaces]", "[prompt_words]", "[seed]-[prompt_no_styles]", "../[prompt]",
                    "/[prompt]/"):
        path = save_image(img(), folder, "png", None, pattern=pattern, values={"seed": 1, "prompt": prompt})
        assert path.parent == folder
        assert path.resolve().parent == folder.resolve()
        assert "/" not in path.name and "\\" not in path.name and "\x00" not in path.name
        assert not path.name.startswith(".") and path.name not in (".", "..")
        assert len(path.name.encode("utf-8")) <= 255
    assert sorted(p.parent for p in tmp_path.rglob("*") if p.is_file()) == [folder] * 6


def test_no_temp_file_after_writer_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = fileio.write_new_file

    def failing(folder, name_for, start, writer, **kwargs):  # type: ignore[no-untyped-def]
        def broken(f):  # type: ignore[no-untyped-def]
            writer(f)
            raise OSError("disk full")

        return real(folder, name_for, start, broken, **kwargs)

    monkeypatch.setattr(fileio, "write_new_file", failing)
    with pytest.raises(OSError, match="disk full"):
        save_image(img(), tmp_path, "png", INFO, values={"seed": 1})
    assert names(tmp_path) == []


def test_sanitize_filename_part() -> None:
    assert sanitize_filename_part("a b/c") == "a_b_c"
    assert sanitize_filename_part("a b", replace_spaces=False) == "a b"
    assert sanitize_filename_part("  ..x.. ", replace_spaces=False) == "x"
    assert sanitize_filename_part(" x ") == "_x_"  # spaces replaced first, as A1111
    assert sanitize_filename_part("a#b<c>d:e\"f\\g|h?i*j\x00k\x7f") == "a_b_c_d_e_f_g_h_i_j_k_"
    assert len(sanitize_filename_part("y" * 300) or "") == 128
    assert sanitize_filename_part(None) is None


def test_filename_tokens() -> None:
    now = datetime.datetime(2024, 7, 27, 13, 14, 15)
    values = {
        "seed": 42, "seeds": [42, 43, 44], "steps": 20, "cfg_scale": 7.5, "width": 512, "height": 768,
        "styles": ["Cinematic", "None", "Film"], "sampler": "DPM++ 2M", "scheduler": "Karras",
        "model_hash": "6ce0161689", "model_name": "v1-5: pruned", "prompt": "A cat, in (space)!",
        "negative_prompt": "dog", "job_timestamp": now, "batch_number": 2, "generation_number": 5,
        "clip_skip": 2, "denoising_strength": 0.75,
    }
    gen = FilenameGenerator(values, now=now)
    cases = {
        "[seed]": "42", "[SEED]": "42", "[seed_first]-[seed_last]": "42-44", "[steps]-[cfg]": "20-7.5",
        "[width]x[height]": "512x768", "[styles]": "Cinematic, Film", "[sampler]": "DPM++ 2M",
        "[scheduler]": "Karras", "[model_hash]": "6ce0161689", "[model_name]": "v1-5_ pruned",
        "[date]": "2024-07-27", "[datetime]": "20240727131415", "[datetime<%Y/%m>]": "2024_07",
        "[job_timestamp]": "20240727131415", "[prompt]": "A_cat,_in_(space)!",
        "[prompt_spaces]": "A cat, in (space)!", "[prompt_words]": "A cat in space",
        "[prompt_hash]": hashlib.sha256(b"A cat, in (space)!").hexdigest()[:8],
        "[negative_prompt_hash<4>]": hashlib.sha256(b"dog").hexdigest()[:4],
        "[batch_number]-[generation_number]": "2-5", "[clip_skip]": "2", "[denoising]": "0.75", "[none]": "",
        "[unknown]-[seed]": "[unknown]-42", "x[datetime<%H>]": "x13",
    }
    for pattern, expected in cases.items():
        assert gen.apply(pattern) == expected, pattern


def test_tokens_without_values() -> None:
    gen = FilenameGenerator({"seed": 1, "seeds": [1]})
    assert gen.apply("[seed]-[steps]") == "1-[steps]"  # missing values stay as written, as A1111
    assert gen.apply("[seed]-[seed_last]") == "1"  # single seed: token and its leading text vanish
    assert gen.apply("x[seed]-[batch_number]-[denoising]") == "x1"  # the "-" before them goes too
    assert gen.apply("[styles]") == "None" and gen.apply("[prompt_words]") == "empty"
    assert FilenameGenerator({}).apply("[seed]") == ""
    styled = FilenameGenerator({"prompt": "a cat, masterpiece", "style_prompts": ["{prompt}, masterpiece"]})
    assert styled.apply("[prompt_no_styles]") == "a cat"


def test_a_result_made_elsewhere_is_saved_as_the_engine_saves_its_own(tmp_path):
    """A generation worker's result (PNG bytes with infotext) saved by this process: the samples pattern, the
    infotext, the grid only kept when asked for; a folder that cannot be written is a warning, not a failure."""
    from PIL import Image as _Image

    from modules.engine import save_images_result
    from modules.job_types import ImagesResult, OutputImage
    from modules.output_options import OutputOptions
    from modules.requests import GenerationRequest

    def png(colour: str, info: str) -> bytes:
        from modules.images import encode_image

        return encode_image(_Image.new("RGB", (16, 16), colour), "png", info)

    images = tuple(OutputImage(png("red", f"a cat\nSteps: 3, Seed: {s}"), f"a cat\nSteps: 3, Seed: {s}", s,
                               prompt="a cat") for s in (7, 8))
    grid = OutputImage(png("blue", "grid info"), "grid info")
    result = ImagesResult(GenerationRequest(prompt="a cat", steps=3), images, grid=grid, model_name="tiny")
    out = OutputOptions.under(tmp_path, filename_pattern="[seed]-[model_name]", save_to_dirs=False)
    warnings: list[str] = []
    saved = save_images_result(result, out, keep_grid=False, warn=warnings.append)
    assert [p.name for p in saved.saved] == ["00000-7-tiny.png", "00001-8-tiny.png"] and not warnings
    with _Image.open(saved.saved[1]) as first:
        assert first.info["parameters"] == "a cat\nSteps: 3, Seed: 8"
    assert saved.grid is None and saved.grid_path is not None and saved.grid_path.name == "grid-0000.png"
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be")
    again = save_images_result(result, OutputOptions.under(blocked, save_to_dirs=False), keep_grid=True,
                               warn=warnings.append)
    assert again.saved == [] and again.grid is not None and again.grid.path is None
    assert len(warnings) == 3 and "could not be saved" in warnings[0]


def test_save_txt_and_the_directory_name_pattern(tmp_path):
    """A1111's ``save_txt`` (the infotext in a .txt beside each image and grid), ``directories_filename_pattern``
    (the subdirectory, its parts made safe and kept inside the folder) and ``grid_save_to_dirs``."""
    from dataclasses import replace

    from modules.engine import write_grid, write_sample
    from modules.output_options import OutputOptions

    warnings: list[str] = []
    out = OutputOptions.under(tmp_path, save_txt=True, directories_pattern="[seed]/../[steps]", grid_save_to_dirs=False)
    sample = write_sample(img(), INFO, {"seed": 123, "steps": 20}, out, warnings.append)
    assert sample == tmp_path / "txt2img-images" / "123" / "20" / "00000-123.png"
    assert sample.with_suffix(".txt").read_text(encoding="utf-8") == INFO + "\n"
    grid = write_grid(img(), INFO, {"seed": 123}, out, warnings.append)
    assert grid == tmp_path / "txt2img-grids" / "grid-0000.png"  # grids not in a subdirectory here
    assert grid.with_suffix(".txt").read_text(encoding="utf-8") == INFO + "\n"
    plain = write_sample(img(), INFO, {"seed": 5}, replace(out, save_txt=False, directories_pattern="[date]"),
                         warnings.append)
    assert plain.parent == tmp_path / "txt2img-images" / datetime.date.today().isoformat()
    assert not plain.with_suffix(".txt").exists()
    assert outputs.subfolder("", {"prompt": "a red fox, forest"}) == Path("a red fox forest")  # [prompt_words]
    words = write_sample(img(), INFO, {"seed": 5, "prompt": "a red fox, forest"},
                         replace(out, save_txt=False, filename_pattern="[prompt_words]", max_prompt_words=2,
                                 directories_pattern="[prompt_words]"), warnings.append)
    assert words is not None and words.parent.name == "a red" and words.name.endswith("-a red.png")
    assert outputs.subfolder("/../[seed]//.", {"seed": 9}) == Path("9")
    assert not warnings
