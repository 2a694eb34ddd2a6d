"""Settings: typed, validated, persisted atomically, reloaded, and a corrupt config.json survived."""

from __future__ import annotations

import json

import pytest

from modules.errors import ValidationError
from modules.settings import Settings, build_options


def make(path, exposed=False):
    return Settings(path, build_options(lambda: ["a.safetensors"], lambda: ["v.safetensors"]), exposed)


def test_defaults_validation_and_persistence(tmp_path):
    path = tmp_path / "config.json"
    s = make(path)
    assert s["CLIP_stop_at_last_layers"] == 1 and s["samples_format"] == "png" and not path.exists()
    changed = s.update({"CLIP_stop_at_last_layers": "2", "samples_format": "webp", "grid_save": False})
    assert sorted(changed) == ["CLIP_stop_at_last_layers", "grid_save", "samples_format"]
    saved = json.loads(path.read_text())
    assert saved["CLIP_stop_at_last_layers"] == 2 and saved["samples_format"] == "webp"
    again = make(path)
    assert again["CLIP_stop_at_last_layers"] == 2 and again["grid_save"] is False
    for bad, field in (({"CLIP_stop_at_last_layers": 13}, "CLIP_stop_at_last_layers"),
                       ({"samples_format": "bmp"}, "samples_format"), ({"grid_save": "perhaps"}, "grid_save"),
                       ({"jpeg_quality": 2.5}, "jpeg_quality"), ({"nope": 1}, "nope")):
        with pytest.raises(ValidationError) as err:
            again.update({"samples_format": "jpg", **bad})
        assert err.value.field == field
    assert again["samples_format"] == "webp"  # nothing applied when one value is invalid
    again.reset()
    assert make(path)["samples_format"] == "png"
    assert not list(tmp_path.glob(".tmp-*"))


def test_unknown_keys_from_an_a1111_config_are_kept(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"sd_model_checkpoint": "x.safetensors [abc]", "show_progressbar": True,
                                "CLIP_stop_at_last_layers": 2}))
    s = make(path)
    assert s["CLIP_stop_at_last_layers"] == 2 and s["sd_model_checkpoint"] == "x.safetensors [abc]"
    s.update({"grid_save": False})
    assert json.loads(path.read_text())["show_progressbar"] is True


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "", "\x00\x01"])
def test_corrupt_config_is_moved_aside(tmp_path, content):
    path = tmp_path / "config.json"
    path.write_text(content)
    s = make(path)
    assert s["samples_format"] == "png"
    assert s.load_message and "moved to" in s.load_message
    asides = list(tmp_path.glob("config.json.corrupt-*"))
    assert len(asides) == 1 and asides[0].read_text() == content
    s.update({"samples_format": "jpg"})
    assert json.loads(path.read_text())["samples_format"] == "jpg"


def test_paths_locked_when_exposed(tmp_path):
    s = make(tmp_path / "config.json", exposed=True)
    with pytest.raises(ValidationError, match="network"):
        s.update({"outdir_txt2img_samples": "/etc"})
    s.update({"samples_format": "jpg"})
    local = make(tmp_path / "other.json")
    local.update({"outdir_txt2img_samples": "elsewhere"})


def test_change_hooks_run_after_saving(tmp_path):
    s = make(tmp_path / "config.json")
    seen = []
    s.on_change(lambda key, value: seen.append((key, value)))
    s.update({"sd_checkpoints_limit": 3, "samples_format": "png"})
    assert seen == [("sd_checkpoints_limit", 3)]
