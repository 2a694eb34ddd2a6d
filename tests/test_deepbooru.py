"""DeepDanbooru: the network's layout against the released file, tiny-model loading, and A1111's tag strings."""

from __future__ import annotations

import hashlib
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules.interrogate.deepbooru import (
    MODEL_FILE,
    DeepBooru,
    InterrogateUnavailable,
    format_tags,
    image_array,
    read_tagger,
)
from modules.interrogate.deepbooru_net import DeepDanbooruNet, build_layout, parameter_shapes

DIVISOR, TAGS = 32, ["1girl", "solo", "long_(hair)", "rating:safe", "smile", "blue_eyes"]
CPU = torch.device("cpu")


def seeded_state(width_divisor: int, tag_count: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with the released key names, scaled so activations stay finite and scores spread out."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in parameter_shapes(build_layout(width_divisor, tag_count)).items():
        scale = 0.6 / math.prod(shape[1:]) ** 0.5 if key.endswith("weight") else 0.05
        state[key] = torch.randn(shape, generator=gen) * scale
    state["n_Conv_178.weight"] *= 30
    return state


def test_layout_is_the_released_files():
    """Key names and shapes of model-resnet_custom_v3.pt: 179 convolutions (the last without bias), 160,956,544
    parameters; the digest is of sorted ``key:shape`` lines, as A1111's DeepDanbooruModel declares them."""
    shapes = parameter_shapes(build_layout())
    assert len(shapes) == 357 and sum(k.endswith(".weight") for k in shapes) == 179
    assert sum(math.prod(s) for s in shapes.values()) == 160_956_544
    assert shapes["n_Conv_0.weight"] == (64, 3, 7, 7) and shapes["n_Conv_1.weight"] == (256, 64, 1, 1)
    assert shapes["n_Conv_13.weight"] == (128, 128, 3, 3) and shapes["n_Conv_100.weight"] == (1024, 1024, 1, 1)
    assert shapes["n_Conv_178.weight"] == (9176, 4096, 1, 1) and "n_Conv_178.bias" not in shapes
    text = "\n".join(f"{k}:{'x'.join(map(str, v))}" for k, v in sorted(shapes.items()))
    assert hashlib.sha256(text.encode()).hexdigest() == \
        "1dc662150f80798c0be59676efacfb5b73d224b8ca8a7159b06fa0f11ebb43fc"
    with torch.device("meta"):
        net = DeepDanbooruNet()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == shapes


def test_small_model_has_the_released_key_names_and_loads_strictly():
    small = parameter_shapes(build_layout(DIVISOR, len(TAGS)))
    assert small.keys() == parameter_shapes(build_layout()).keys()
    net = DeepDanbooruNet(DIVISOR, len(TAGS))
    net.load_state_dict(seeded_state(DIVISOR, len(TAGS)), strict=True)
    wrong = seeded_state(DIVISOR, len(TAGS))
    wrong["n_Conv_5.weight"] = torch.zeros(3, 3, 1, 1)
    with pytest.raises(RuntimeError, match="n_Conv_5"):
        net.load_state_dict(wrong, strict=True)
    with pytest.raises(ValueError, match="divide"):
        build_layout(3)


def test_forward_matches_a1111_numbers():
    """Values from A1111 1.10.1's DeepDanbooruModel forward, its widths divided by 32, on the same weights/input."""
    net = DeepDanbooruNet(DIVISOR, len(TAGS)).eval()
    net.load_state_dict(seeded_state(DIVISOR, len(TAGS)))
    images = torch.rand(1, 512, 512, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = net(images)
    expected = torch.tensor([[0.3655093, 0.7080460, 0.7504615, 0.7738051, 0.3511651, 0.1048615]])
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=0)


# --- the service over a tiny model file -------------------------------------------------------------------------------

@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "models" / "deepbooru"
    folder.mkdir(parents=True)
    torch.save({**seeded_state(DIVISOR, len(TAGS)), "tags": TAGS}, folder / MODEL_FILE)
    return folder


def gradient_image(width: int = 300, height: int = 200) -> Image.Image:
    x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1).astype(np.uint8), "RGB")


def test_tags_are_a1111s_string(model_dir: Path):
    """The strings A1111's tag_multi gave for this image and model (its resize, its model, its formatting)."""
    asked: list[torch.device] = []

    def device() -> torch.device:
        asked.append(CPU)
        return CPU

    booru = DeepBooru(model_dir, device)
    assert booru.available() and not booru.loaded  # nothing read before the first image
    image = gradient_image()
    assert booru.tags(image) == "long \\(hair\\), solo"
    assert booru.loaded and asked
    assert booru.tags(image, sort_alpha=False, return_ranks=True, threshold=0.3) == \
        "(long \\(hair\\):0.750), (solo:0.708), (1girl:0.366), (smile:0.351)"
    booru.unload()
    assert not booru.loaded
    assert booru.tags(image, use_spaces=False, escape=False, filter_tags="solo") == "long_(hair)"


def test_tagger_reads_weights_only_file(model_dir: Path):
    tagger = read_tagger(model_dir / MODEL_FILE)
    assert tagger.tags == tuple(TAGS) and tagger.net.tag_count == len(TAGS)
    assert not any(p.requires_grad for p in tagger.net.parameters())


def test_missing_file_names_the_file_to_place(tmp_path: Path):
    booru = DeepBooru(tmp_path / "models" / "deepbooru", lambda: CPU)
    assert not booru.available()
    assert "models/deepbooru/model-resnet_custom_v3.pt" in booru.missing_message()
    with pytest.raises(InterrogateUnavailable, match="models/deepbooru/model-resnet_custom_v3.pt"):
        booru.tags(gradient_image())
    assert issubclass(InterrogateUnavailable, ValueError)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_with_code_is_refused(tmp_path: Path, model_dir: Path):
    marker = tmp_path / "ran"
    torch.save({"tags": TAGS, "n_Conv_0.weight": _Payload(marker)}, model_dir / MODEL_FILE)
    with pytest.raises(InterrogateUnavailable, match=r"was refused: .* \(getattr\)") as caught:
        DeepBooru(model_dir, lambda: CPU).tags(gradient_image())
    assert "weights_only" not in str(caught.value)
    (model_dir / MODEL_FILE).write_bytes(pickle.dumps({"tags": TAGS, "n_Conv_0.weight": _Payload(marker)}, protocol=2))
    with pytest.raises(InterrogateUnavailable, match="was refused"):
        read_tagger(model_dir / MODEL_FILE)
    assert not marker.exists()


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("tags"), "tag names"),
    (lambda s: s.update(tags=TAGS[:-1]), "tag names"),
    (lambda s: s.pop("n_Conv_7.bias"), "does not fit"),
    (lambda s: s.update(extra=3), "not weights"),
    (lambda s: s.pop("n_Conv_0.weight"), "not a DeepDanbooru"),
    (lambda s: s.update({"n_Conv_0.weight": torch.tensor(1.0)}), "not a DeepDanbooru"),
    (lambda s: s.update({"n_Conv_0.weight": torch.zeros(5, 3, 7, 7)}), "not a DeepDanbooru"),
])
def test_unusable_files_are_reported(model_dir: Path, change, message):
    state = {**seeded_state(DIVISOR, len(TAGS)), "tags": list(TAGS)}
    change(state)
    torch.save(state, model_dir / MODEL_FILE)
    with pytest.raises(InterrogateUnavailable, match=message):
        read_tagger(model_dir / MODEL_FILE)


def test_truncated_file_is_reported(model_dir: Path):
    path = model_dir / MODEL_FILE
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(InterrogateUnavailable, match="not a readable model"):
        read_tagger(path)


# --- preprocessing ----------------------------------------------------------------------------------------------------

def test_image_is_resized_and_filled_to_512():
    """A 2:1 image is fitted to 512x256 and the bands above and below repeat its top and bottom rows."""
    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[:50, :, 0] = 255
    pixels[50:, :, 2] = 255
    array = image_array(Image.fromarray(pixels).convert("RGBA"))
    assert array.shape == (1, 512, 512, 3) and array.dtype == np.float32
    assert np.allclose(array[0, :128, :, :], [1, 0, 0]) and np.allclose(array[0, -128:, :, :], [0, 0, 1])


# --- probabilities -> string ------------------------------------------------------------------------------------------

SCORES = [("1girl", 0.99), ("solo", 0.95), ("long_hair", 0.7), ("smile", 0.5), ("blush", 0.4999),
          ("rating:safe", 0.98), ("standing_(pose)", 0.7), ("back\\slash", 0.55)]


def test_default_options():
    assert format_tags(SCORES) == "1girl, back\\\\slash, long hair, smile, solo, standing \\(pose\\)"


def test_threshold_keeps_equal_scores_and_compares_in_double_precision():
    assert format_tags([("a", 0.5), ("b", 0.49999)]) == "a"
    assert format_tags([("a", float(np.float32(0.35)))], threshold=0.35) == ""
    assert format_tags(SCORES, threshold=0.96) == "1girl"
    assert format_tags(SCORES, threshold=0.0).startswith("1girl, back\\\\slash, blush,")
    assert format_tags(SCORES, threshold=1.0) == ""


def test_sort_by_score_keeps_model_order_on_ties():
    assert format_tags(SCORES, sort_alpha=False) == \
        "1girl, solo, long hair, standing \\(pose\\), back\\\\slash, smile"


def test_underscores_and_no_escaping():
    assert format_tags(SCORES, use_spaces=False, escape=False) == \
        "1girl, back\\slash, long_hair, smile, solo, standing_(pose)"


def test_filter_tags_accept_spaces_or_underscores():
    assert format_tags(SCORES, filter_tags=" long hair,solo , standing_(pose)") == "1girl, back\\\\slash, smile"
    assert format_tags(SCORES, filter_tags="long_hair", use_spaces=False) == \
        "1girl, back\\\\slash, smile, solo, standing_\\(pose\\)"


def test_ranks():
    assert format_tags(SCORES[:3], return_ranks=True, sort_alpha=False) == \
        "(1girl:0.990), (solo:0.950), (long hair:0.700)"
    assert format_tags([("x_(y)", 0.12345)], threshold=0.1, return_ranks=True) == "(x \\(y\\):0.123)"


def test_rating_tags_are_never_listed_and_repeats_keep_first_place():
    assert format_tags([("rating:explicit", 1.0), ("rating:safe", 1.0)]) == ""
    assert format_tags([("a", 0.9), ("b", 0.8), ("a", 0.6)], sort_alpha=False, return_ranks=True) == \
        "(b:0.800), (a:0.600)"
