"""Files stay where they belong, and broken files or a kill lose nothing.

Output folders, file name patterns and checkpoint names from a request stay inside the data and model folders;
config.json stays the user's own; NaN and deep nesting are refused; leftovers of killed writes go at start.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from modules import fileio, outputs
from modules.errors import ModelLoadError, ValidationError
from modules.hashing import HashCache
from modules.models.registry import CheckpointRegistry
from modules.outputs import pattern_problem, save_image
from modules.settings import Settings, build_options

OUTDIRS = ("outdir_txt2img_samples", "outdir_txt2img_grids", "outdir_img2img_samples", "outdir_img2img_grids")
OLD = time.time() - 3600


def settings(data: Path) -> Settings:
    return Settings(data / "config.json", build_options(lambda: ["a.safetensors"], lambda: []))


def strict_json(path: Path) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} written to {path.name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def outside_link(data: Path, tmp_path: Path) -> Path:
    """``data/outputs/link`` pointing to a folder outside ``data``."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    (data / "outputs").mkdir(parents=True, exist_ok=True)
    link = data / "outputs" / "link"
    link.symlink_to(elsewhere, target_is_directory=True)
    return link


# -- output folders and patterns from a request


@pytest.mark.parametrize("value", ["/etc", "../../", "..", "..\\..\\", "outputs/../../x", "..\\x", "a\x00b",
                                   "outputs/link", "outputs/link/sub", "~/outside"])
def test_request_folders_leaving_the_data_folder_are_refused(tmp_path: Path, value: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    outside_link(data, tmp_path)
    s = settings(data)
    for key in OUTDIRS:
        with pytest.raises(ValidationError) as err:
            s.update({key: value, "samples_format": "jpg"})
        assert err.value.field == key and key in str(err.value)
        with pytest.raises(ValidationError):
            s.validate({key: value})  # override_settings goes through validate
    assert s["samples_format"] == "png" and not (data / "config.json").exists()


def test_request_folders_inside_the_data_folder_are_accepted(tmp_path: Path) -> None:
    s = settings(tmp_path)
    for value in ("outputs/mine", "outputs/../outputs/x", str(tmp_path / "abs" / "inside"), "new folder", ""):
        s.update({"outdir_txt2img_samples": value})
        assert s["outdir_txt2img_samples"] == value


@pytest.mark.parametrize("pattern", ["../../../x", "a/b", "x\\y", "[seed]/[prompt]", "[seed]..[steps]", "..",
                                     "[seed]\x00"])
def test_request_patterns_naming_other_folders_are_refused(tmp_path: Path, pattern: str) -> None:
    s = settings(tmp_path)
    assert pattern_problem(pattern)
    with pytest.raises(ValidationError) as err:
        s.update({"samples_filename_pattern": pattern})
    assert err.value.field == "samples_filename_pattern"
    assert s["samples_filename_pattern"] == ""


def test_patterns_whose_values_are_sanitised_are_accepted(tmp_path: Path) -> None:
    s = settings(tmp_path)
    for pattern in ("[seed]-[prompt_words]", "[datetime<%Y/%m/%d>]-[seed]", "[prompt]", "[model_name] x", ""):
        assert pattern_problem(pattern) is None, pattern
        s.update({"samples_filename_pattern": pattern})


def test_config_file_values_are_the_users_own(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    outside = tmp_path / "big disk"
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.json").write_text(json.dumps({
        "outdir_txt2img_samples": str(outside), "outdir_txt2img_grids": "../grids",
        "samples_filename_pattern": "../[seed]", "outdir_img2img_samples": "bad\x00name",
        "sd_model_checkpoint": "../../../etc/passwd"}))
    with caplog.at_level(logging.WARNING):
        s = settings(data)
    assert s["outdir_txt2img_samples"] == str(outside) and s["outdir_txt2img_grids"] == "../grids"
    assert s["samples_filename_pattern"] == "../[seed]"
    assert s["outdir_img2img_samples"] == "outputs/img2img-images"  # NUL: never, even from the file
    assert s["sd_model_checkpoint"] == ""  # a path is not a checkpoint name
    assert "outdir_img2img_samples" in caplog.text and "sd_model_checkpoint" in caplog.text
    # the same values sent back unchanged (the settings page sends every value) are still accepted
    s.update({"outdir_txt2img_samples": str(outside), "samples_filename_pattern": "../[seed]", "grid_save": False})
    with pytest.raises(ValidationError):
        s.update({"outdir_txt2img_samples": str(outside / "sub")})
    assert s.output_dirs()[:2] == [str(outside), "../grids"]


def test_api_refuses_folders_patterns_and_nan(live_server) -> None:
    server = live_server(load=False)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        before = client.get("/sdapi/v1/options").json()
        for body in ({"outdir_txt2img_samples": "/etc"}, {"outdir_txt2img_grids": "../../"},
                     {"outdir_img2img_samples": "x\x00y"}, {"samples_filename_pattern": "../../../x"},
                     {"sd_model_checkpoint": "../../../etc/passwd"}, {"eta_ddim": float("inf")}):
            r = client.post("/sdapi/v1/options", content=json.dumps(body), headers={"content-type": "application/json"})
            assert r.status_code == 422, (body, r.text)
            assert "Traceback" not in r.text
        r = client.post("/sdapi/v1/options", content=b'{"eta_ddim": NaN}', headers={"content-type": "application/json"})
        assert r.status_code == 422
        assert client.get("/sdapi/v1/options").json() == before


# -- the final path of a saved image


def test_saved_file_stays_in_its_folder_past_a_symlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outputs, "next_sequence_number", lambda folder, basename="": 0)  # a stale scan
    folder, secret = tmp_path / "out", tmp_path / "secret.png"
    folder.mkdir()
    secret.write_bytes(b"keep")
    (folder / "00000-1.png").symlink_to(secret)  # a squatted name pointing outside
    (folder / "00001-1.png").symlink_to(tmp_path / "dangling.png")
    path = save_image(Image.new("RGB", (8, 8)), folder, "png", None, values={"seed": 1})
    assert path.parent == folder and path.resolve().is_relative_to(folder.resolve())
    assert path.name == "00002-1.png" and not path.is_symlink()
    assert secret.read_bytes() == b"keep" and not (tmp_path / "dangling.png").exists()


def test_write_new_file_refuses_names_leaving_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    for name in ("../x.png", "..", "/abs.png", "x\x00.png"):
        with pytest.raises(ValueError):
            fileio.write_new_file(folder, lambda n, name=name: name, 0, lambda f: f.write(b"x"))
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []


# -- NaN and infinities


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "nan", "Infinity", "-inf"])
def test_non_finite_numbers_are_refused(tmp_path: Path, value: object) -> None:
    s = settings(tmp_path)
    for key in ("eta_ddim", "jpeg_quality"):
        with pytest.raises(ValidationError) as err:
            s.update({key: value})
        assert err.value.field == key


def test_non_finite_numbers_are_never_loaded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"eta_ddim": NaN, "jpeg_quality": Infinity, "max_steps": -Infinity, "foreign": [1, NaN],'
                    ' "kept": 1.5, "samples_format": "jpg"}')
    with caplog.at_level(logging.WARNING):
        s = settings(tmp_path)
    assert (s["eta_ddim"], s["jpeg_quality"], s["max_steps"], s["samples_format"]) == (0.0, 80, 150, "jpg")
    for key in ("eta_ddim", "jpeg_quality", "max_steps", "foreign"):
        assert key in caplog.text
    s.update({"grid_save": False})
    saved = strict_json(path)
    assert "foreign" not in saved and saved["kept"] == 1.5 and saved["eta_ddim"] == 0.0


# -- deeply nested or corrupt JSON


@pytest.mark.parametrize("text", ["[" * 200_000, '{"a": ' + "[" * 100 + "]" * 100 + "}",
                                  '{"samples_format": "jpg", "x": ' + '{"y": ' * 5000 + "1" + "}" * 5001])
def test_deeply_nested_config_is_moved_aside(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(text)
    s = settings(tmp_path)
    assert s.load_message and "moved to" in s.load_message and s["samples_format"] == "png"
    assert [p.read_text() for p in tmp_path.glob("config.json.corrupt-*")] == [text]
    s.update({"samples_format": "webp"})
    assert strict_json(path)["samples_format"] == "webp"


@pytest.mark.parametrize("text", ["[" * 200_000, '{"hashes": ' + '{"x": ' * 5000 + "1" + "}" * 5001,
                                  '{"hashes": [1, 2]}', "\x00\xff garbage", '{"hashes": {"k": NaN}}'])
def test_broken_hash_cache_is_ignored(tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture) -> None:
    cache_file, model = tmp_path / "cache" / "hashes.json", tmp_path / "m.safetensors"
    cache_file.parent.mkdir()
    cache_file.write_text(text)
    model.write_bytes(b"weights")
    with caplog.at_level(logging.WARNING):
        cache = HashCache(cache_file)
    assert "hash cache" in caplog.text
    digest = cache.sha256(model, [model])
    assert strict_json(cache_file)["hashes"][str(model)]["sha256"] == digest
    assert HashCache(cache_file).cached(model, [model]) == digest


def test_hash_cache_keeps_its_valid_entries(tmp_path: Path) -> None:
    cache_file, model = tmp_path / "hashes.json", tmp_path / "m.safetensors"
    model.write_bytes(b"weights")
    good = HashCache(cache_file).sha256(model, [model])
    data = strict_json(cache_file)
    data["hashes"].update({"list": [1], "text": "x", "bad size": {"size": "7", "mtime": 1.0, "sha256": good},
                           "bad hash": {"size": 7, "mtime": 1.0, "sha256": "../../etc"}, "bool": {"size": True}})
    cache_file.write_text(json.dumps(data))
    cache = HashCache(cache_file)
    assert cache.cached(model, [model]) == good
    assert cache.cached(Path("list"), [model]) is None and cache.cached(Path("bad size"), [model]) is None


# -- checkpoint names


@pytest.fixture
def registry(tmp_path: Path) -> CheckpointRegistry:
    models = tmp_path / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    (models / "a.safetensors").write_bytes(b"not read here")
    return CheckpointRegistry([models], HashCache(tmp_path / "hashes.json"))


def test_checkpoint_names_are_looked_up_among_scanned_ones(tmp_path: Path, registry: CheckpointRegistry) -> None:
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0")
    assert registry.find("a.safetensors") is not None and registry.find("a") is not None
    relative = os.path.relpath(secret, Path.cwd())
    for name in (str(secret), relative, "../../../etc/passwd", "../passwd", "a\x00.safetensors", "/etc/passwd"):
        assert registry.find(name) is None, name


def test_paths_to_other_files_are_never_read_or_hashed(tmp_path: Path, registry: CheckpointRegistry) -> None:
    from modules.models.manager import DeviceConfig, ModelManager

    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0")

    def loader(*args: object) -> object:
        raise AssertionError("nothing may be loaded")

    manager = ModelManager(registry, DeviceConfig(), loader=loader)  # type: ignore[arg-type]
    for name in (str(secret), os.path.relpath(secret, Path.cwd()), str(tmp_path)):
        with pytest.raises(ModelLoadError):
            manager.get(name)
        with pytest.raises(ModelLoadError):
            registry.from_path(Path(name))
    assert not (tmp_path / "hashes.json").exists()


def test_config_checkpoint_path_is_not_followed_at_start(data_dir: Path) -> None:
    from modules.app import App, StartOptions

    (data_dir / "config.json").write_text(json.dumps({"sd_model_checkpoint": "../../../etc/passwd"}))
    app = App(StartOptions(data_dir=data_dir, device="cpu"))
    assert app.settings["sd_model_checkpoint"] == ""
    app.start()  # no checkpoint installed: nothing to load, nothing hashed
    try:
        assert app.queue.wait_idle(30)
    finally:
        app.stop()
    assert not app.paths.hash_cache_file.exists()


# -- leftovers of killed writes


def killed_write(folder: Path, code: str) -> None:
    """Run ``code`` in a process that dies (SIGKILL-like ``os._exit``) inside a write into ``folder``."""
    script = f"import os, pathlib\nfrom modules import fileio\nfolder = pathlib.Path({str(folder)!r})\n{code}\n"
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 9, result.stderr


def test_a_kill_mid_write_loses_nothing(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"samples_format": "jpg"}')
    killed_write(tmp_path, "os.replace = lambda *a: os._exit(9)\n"
                           "fileio.atomic_write_text(folder / 'config.json', '{\"samples_format\": \"webp\"}')")
    out = tmp_path / "outputs" / "txt2img-images"
    out.mkdir(parents=True)
    (out / "00000-1.png").write_bytes(b"old image")
    killed_write(out, "fileio.write_new_file(folder, lambda n: f'{n:05}-1.png', 0, lambda f: os._exit(9))")
    assert config.read_text() == '{"samples_format": "jpg"}' and (out / "00000-1.png").read_bytes() == b"old image"
    left = [p for p in tmp_path.rglob(".*") if p.is_file()]
    assert len(left) == 2 and all(fileio.is_leftover_name(p.name) for p in left)
    size = sum(p.stat().st_size for p in left)
    assert fileio.remove_leftovers([tmp_path / "outputs"], [tmp_path], min_age_s=0) == (2, size)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["00000-1.png", "config.json"]


def leftover(path: Path, size: int, old: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    if old:
        os.utime(path, (OLD, OLD))
    return path


def test_leftovers_removed_at_start(data_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                                    caplog: pytest.LogCaptureFixture) -> None:
    from modules.app import App, StartOptions

    custom = tmp_path_factory.mktemp("custom-out")  # an output folder the user set in config.json
    (data_dir / "config.json").write_text(json.dumps({"outdir_txt2img_samples": str(custom)}))
    removed = [leftover(data_dir / "outputs" / "txt2img-images" / "2024-01-01" / ".tmp-abcd1234.part", 100),
               leftover(data_dir / "models" / "Stable-diffusion" / "sub" / ".merge-x_y1z2w3.part", 1000),
               leftover(data_dir / ".tmp-k2j3h4g5.json", 10), leftover(data_dir / "cache" / ".tmp-aaaaaaaa.json", 1),
               leftover(custom / "2024-01-01" / ".tmp-zzzzzzzz.part", 5)]
    kept = [leftover(data_dir / "outputs" / ".tmp-fresh123.part", 7, old=False),  # may be another instance's
            leftover(data_dir / "outputs" / "notes.part", 3), leftover(data_dir / "outputs" / ".tmp-notes.txt", 3),
            leftover(data_dir / "models" / "Stable-diffusion" / "real.safetensors", 4),
            leftover(data_dir / "src" / ".tmp-abcd1234.part", 2)]  # the data folder itself is not walked through
    outside = leftover(tmp_path_factory.mktemp("outside") / "target.part", 9)
    (data_dir / "outputs" / ".tmp-linklink.part").symlink_to(outside)
    os.utime(data_dir / "outputs" / ".tmp-linklink.part", (OLD, OLD), follow_symlinks=False)
    app = App(StartOptions(data_dir=data_dir, device="cpu", skip_load_model=True))
    with caplog.at_level(logging.INFO, logger="modules.paths"):
        app.start()
    app.stop()
    assert not any(p.exists() for p in removed)
    assert all(p.exists() for p in kept) and outside.read_bytes() == b"x" * 9
    lines = [r.getMessage() for r in caplog.records if "leftover" in r.getMessage()]
    assert len(lines) == 1 and "5 leftover" in lines[0] and "1116 bytes" in lines[0]
