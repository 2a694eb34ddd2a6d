"""Postprocessing for training: split, focal crop, auto-sized crop, flips, captions and the run order.

Expected sizes and boxes are worked out by hand in the comments; the one photo's focal point is the value A1111's
own autocrop gives for it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from modules.training_prep import (
    AutosizedCropOptions,
    CaptionFileError,
    CaptionOptions,
    FlipOptions,
    FocalCropOptions,
    SplitOptions,
    TrainingPrepError,
    TrainingPrepOptions,
    autosized_crop,
    autosized_size,
    caption_path,
    caption_to_write,
    center_crop_box,
    entropy_point,
    flipped_copies,
    focal_crop,
    generate_caption,
    name_suffixes,
    options_from_script_args,
    read_caption,
    run,
    run_detailed,
    split_oversized,
    upscale_target_size,
)
from modules.training_prep.points import Point, good_corners

PHOTO = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "photos" / "chelsea.png"


def rows(width: int, height: int) -> Image.Image:
    """Each row a different grey (row y has value y % 256), so a crop's first row tells where it came from."""
    values = (np.arange(height, dtype=np.uint8)[:, None] * np.ones((1, width), dtype=np.uint8)).astype(np.uint8)
    return Image.fromarray(values, "L").convert("RGB")


def first_grey(image: Image.Image) -> int:
    return int(np.asarray(image.convert("L"))[0, 0])


def checker_scene() -> Image.Image:
    """300x100 black with a 40x40 white-and-black checkerboard (8 px squares) at x 200..239, y 30..69."""
    image = Image.new("RGB", (300, 100))
    draw = ImageDraw.Draw(image)
    for i in range(5):
        for j in range(5):
            if (i + j) % 2 == 0:
                draw.rectangle((200 + 8 * i, 30 + 8 * j, 207 + 8 * i, 37 + 8 * j), fill="white")
    return image


# split oversized -------------------------------------------------------------------------------------------------


def test_split_portrait_into_evenly_spaced_pieces() -> None:
    # 100x400 to 100x100: ratio 0.25 <= 0.5; count ceil((400 - 20) / 80) = 5; step (400 - 100) / 4 = 75
    image = rows(100, 400)
    pieces = split_oversized(image, 100, 100)
    assert [p.size for p in pieces] == [(100, 100)] * 5
    assert [first_grey(p) for p in pieces] == [0, 75, 150, 225, 300 % 256]


def test_split_landscape_cuts_left_to_right_after_resizing() -> None:
    # 1000x200 to 100x100: resized to 500x100; count ceil((500 - 20) / 80) = 6; step 400 / 5 = 80
    image = rows(200, 1000).transpose(Image.Transpose.TRANSPOSE)
    pieces = split_oversized(image, 100, 100)
    assert [p.size for p in pieces] == [(100, 100)] * 6
    resized = image.resize((500, 100), Image.Resampling.BICUBIC)
    for piece, x in zip(pieces, [0, 80, 160, 240, 320, 400], strict=True):
        assert piece.tobytes() == resized.crop((x, 0, x + 100, 100)).tobytes()


def test_split_leaves_an_image_close_to_the_target_alone() -> None:
    image = rows(100, 150)  # ratio 100*100 / (150*100) = 0.67 > 0.5
    assert split_oversized(image, 100, 100) == [image]
    assert split_oversized(image, 100, 100, threshold=0.7)[0].size == (100, 100)
    assert len(split_oversized(image, 100, 100, threshold=0.7)) == 2  # ceil((150 - 20) / 80) = 2


def test_split_with_one_piece_does_not_divide_by_zero() -> None:
    # 1000x1001 to 512x512 at threshold 1: resized to 512x512 exactly, so a single piece
    assert [p.size for p in split_oversized(rows(1000, 1001), 512, 512, threshold=1.0)] == [(512, 512)]


def test_split_refuses_an_absurd_aspect_ratio() -> None:
    with pytest.raises(TrainingPrepError) as err:
        split_oversized(Image.new("RGB", (1, 1000)), 512, 512)  # 512x512000
    assert err.value.field == "image"


# auto-sized crop -------------------------------------------------------------------------------------------------


def test_autosized_size_by_hand() -> None:
    # a square: 640x640 has exactly the largest allowed area (640*640) and no error
    assert autosized_size((1000, 1000)) == (640, 640)
    # 16:9 (1.778): aspects within 10% are 1.6..1.975; the largest area among them is 768x448 (1.714),
    # the smallest error 704x384 (1.833: error 0.030 against 0.036)
    assert autosized_size((1600, 900)) == (768, 448)
    assert autosized_size((1600, 900), objective="Minimize error") == (704, 384)
    # 384x448 and 448x384 tie on area and error: the narrower one wins
    assert autosized_size((1000, 1000), mindim=384, maxdim=448, maxarea=384 * 448, threshold=0.2) == (384, 448)
    # the candidate sides start at mindim: 100, 164, 228, 292 (not multiples of 64)
    assert autosized_size((1000, 1000), mindim=100, maxdim=300, threshold=0.0) == (292, 292)
    assert autosized_size((100, 1000)) is None


def test_autosized_crop_takes_the_centre() -> None:
    box = center_crop_box((1600, 900), (768, 448))  # 900 / 448 = 2.009 < 1600 / 768: full height, 1542.86 wide
    assert box == pytest.approx((28.5714, 0, 1571.4286, 900), abs=1e-4)
    image = rows(1600, 900)
    cropped = autosized_crop(image)
    assert cropped is not None and cropped.size == (768, 448)
    assert autosized_crop(rows(100, 1000)) is None


# flipped copies --------------------------------------------------------------------------------------------------


def test_flips_in_a_fixed_order() -> None:
    image = Image.fromarray(np.array([[1, 2], [3, 4]], dtype=np.uint8), "L")
    copies = flipped_copies(image, ["Both", "Horizontal", "Vertical"])
    assert [np.asarray(c).ravel().tolist() for c in copies] == [[2, 1, 4, 3], [3, 4, 1, 2], [4, 3, 2, 1]]
    assert flipped_copies(image, []) == []


# focal crop ------------------------------------------------------------------------------------------------------


def test_edges_put_the_focus_on_the_detail() -> None:
    # the corners are the checkerboard's: their centroid is (219.7, 49.7); the crop is centred there
    result = focal_crop(checker_scene(), 100, 100, face_weight=0, entropy_weight=0, edges_weight=0.5)
    assert result.focus == (220, 50)
    assert result.box == (170, 0, 270, 100)
    assert result.image.size == (100, 100)
    assert result.debug_image is None


def test_entropy_window_is_the_first_that_reaches_the_detail() -> None:
    # the score, -log2(share of black) - log2(share of white), is largest when white is rarest: the first window
    # (sliding by 4 px) that reaches x=200 is x=104..204, centre (154, 50)
    assert entropy_point(checker_scene(), 100, 100) == [Point(154, 50)]
    # edges 0.5 and entropy 0.15 share the weight: 154 * 0.15/0.65 + 219.7 * 0.5/0.65 = 204.6 -> 205
    result = focal_crop(checker_scene(), 100, 100)
    assert result.focus == (205, 50)
    assert result.box == (155, 0, 255, 100)


def test_faces_weigh_in_with_a_point_a_third_down_the_box() -> None:
    image = Image.new("RGB", (400, 200))  # no corners
    result = focal_crop(image, 200, 200, entropy_weight=0, faces=lambda _im: [(300, 40, 360, 140)])
    assert result.focus == (330, 73)  # x: 300 + 60/2; y: int(40 + 100 * 0.33)
    assert result.box == (200, 0, 400, 200)  # centred at 330 would pass the right edge: moved back in
    # a one-colour image scores 0 everywhere: the entropy point is that of the window one step past the last one
    # (x 200..400, centre (300, 100)), and it weighs in at 0.15 against the face's 0.9
    assert entropy_point(image, 200, 200) == [Point(300, 100)]
    result = focal_crop(image, 200, 200, faces=lambda _im: [(300, 40, 360, 140)])
    assert result.focus == (326, 77)  # (330 * 0.9 + 300 * 0.15) / 1.05, (73 * 0.9 + 100 * 0.15) / 1.05


def test_focal_crop_scales_the_short_side_to_the_target() -> None:
    portrait = Image.new("RGB", (100, 300))
    result = focal_crop(portrait, 50, 50, edges_weight=0, entropy_weight=0)
    assert result.focus == (0, 0)  # nothing found: A1111's point is the origin
    assert result.box == (0, 0, 50, 50)
    assert result.image.size == (50, 50)


def test_focal_crop_debug_image_is_the_annotated_scaled_image() -> None:
    result = focal_crop(checker_scene(), 100, 100, debug=True)
    assert result.debug_image is not None and result.debug_image.size == (300, 100)
    pixels = np.asarray(result.debug_image)
    assert ((pixels == (0, 255, 0)).all(axis=2)).any()  # the chosen point and the crop in green
    assert ((pixels == (0, 0, 255)).all(axis=2)).any()  # the corner points in blue


def test_focal_point_of_a_photo_matches_a1111() -> None:
    if not PHOTO.is_file():
        pytest.skip("shared test photos are absent")
    with Image.open(PHOTO) as photo:
        image = photo.convert("RGB")
    # 451x300 scaled to 384x256; A1111's autocrop gives the focal point (165, 104) (faces off)
    result = focal_crop(image, 256, 256, face_weight=0.0)
    assert result.focus == (165, 104)
    assert result.box == (37, 0, 293, 256)


def test_corners_respect_their_spacing() -> None:
    gray = np.zeros((40, 40), dtype=np.uint8)
    gray[10:30, 10:30] = 255
    corners = good_corners(gray, 6.0)
    assert len(corners) == 4
    for x, y in corners:
        assert min(abs(x - 10), abs(x - 29)) <= 1 and min(abs(y - 10), abs(y - 29)) <= 1


# captions --------------------------------------------------------------------------------------------------------


def test_caption_file_beside_the_image(tmp_path: Path) -> None:
    image_path = tmp_path / "cat.photo.png"
    assert caption_path(image_path) == tmp_path / "cat.photo.txt"
    assert read_caption(image_path) is None
    (tmp_path / "cat.photo.txt").write_text("  a cat, sitting \n", encoding="utf-8")
    assert read_caption(image_path) == "a cat, sitting"
    (tmp_path / "cat.photo.txt").write_bytes("\ufeffcafé au lait".encode())
    assert read_caption(image_path) == "café au lait"
    (tmp_path / "cat.photo.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(CaptionFileError, match="cat.photo.txt: the caption file is not UTF-8 text"):
        read_caption(str(image_path))
    assert issubclass(CaptionFileError, ValueError)


def test_generated_caption_joins_the_captioners_deepbooru_first() -> None:
    image = Image.new("RGBA", (4, 4))
    captioners = {"BLIP": lambda im: f"a {im.mode} square", "Deepbooru": lambda im: "tag1, tag2"}
    assert generate_caption(image, ["BLIP", "Deepbooru"], captioners) == "tag1, tag2, a RGB square"
    assert generate_caption(image, ["BLIP"], {"BLIP": lambda im: ""}, start="old") == "old"
    with pytest.raises(TrainingPrepError) as err:
        generate_caption(image, ["BLIP"], {})
    assert err.value.field == "caption.option"


@pytest.mark.parametrize(
    ("action", "expected"),
    [("Ignore", "new"), ("Keep", "old"), ("Prepend", "old new"), ("Append", "new old")],
)
def test_existing_caption_actions(action: str, expected: str) -> None:
    assert caption_to_write("new", "old", action) == expected
    assert caption_to_write("new", "", action) == "new"
    assert caption_to_write("", "old", action) is None  # nothing generated: no file, as in A1111


# options ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: SplitOptions(overlap_ratio=0.95), "split.overlap_ratio"),
        (lambda: SplitOptions(split_threshold=float("nan")), "split.split_threshold"),
        (lambda: FocalCropOptions(face_weight=-0.1), "focal_crop.face_weight"),
        (lambda: FocalCropOptions(edges_weight=True), "focal_crop.edges_weight"),
        (lambda: AutosizedCropOptions(mindim=63), "autosized_crop.mindim"),
        (lambda: AutosizedCropOptions(maxarea=512.5), "autosized_crop.maxarea"),  # type: ignore[arg-type]
        (lambda: AutosizedCropOptions(objective="Biggest"), "autosized_crop.objective"),
        (lambda: FlipOptions(option=("Diagonal",)), "flip.option"),
        (lambda: FlipOptions(option="Horizontal"), "flip.option"),  # type: ignore[arg-type]
        (lambda: CaptionOptions(option=("CLIP",)), "caption.option"),
        (lambda: TrainingPrepOptions(existing_caption_action="Merge"), "existing_caption_action"),
        (lambda: TrainingPrepOptions(target_width=-1), "target_width"),
        (lambda: TrainingPrepOptions(operation_order=("Sharpen",)), "operation_order"),
        (lambda: TrainingPrepOptions(split={"enable": True}), "split"),  # type: ignore[arg-type]
        (lambda: run(Image.new("RGB", (8, 8)), None, TrainingPrepOptions(caption=CaptionOptions(enable=True))),
         "caption.option"),
        (lambda: options_from_script_args({"Caption": {"enable": True, "mode": []}}), "caption.mode"),
        (lambda: options_from_script_args({"Upscale": {}}), "Upscale"),
        (lambda: split_oversized(Image.new("RGB", (8, 8)), 0, 8), "target_width"),
        (lambda: focal_crop(Image.new("RGB", (8, 8)), 8, 8, entropy_weight=2), "entropy_weight"),
        (lambda: autosized_size((8, 8), threshold=-1), "threshold"),
        (lambda: flipped_copies(Image.new("RGB", (8, 8)), ["Sideways"]), "flip"),
    ],
)
def test_bad_options_name_the_field(build: Callable[[], object], field: str) -> None:
    with pytest.raises(ValueError, match=field.split(".")[-1]) as err:
        build()
    assert isinstance(err.value, TrainingPrepError) and err.value.field == field


def test_options_from_script_args_and_upscale_target() -> None:
    opts = options_from_script_args(
        {"Auto focal point crop": {"enable": True, "debug": True}, "Create flipped copies": {"option": ["Both"]}},
        target_width=512, target_height=768,
    )
    assert opts.focal_crop == FocalCropOptions(enable=True, debug=True)
    assert opts.flip.option == ("Both",) and opts.target_size == (512, 768)
    assert upscale_target_size((300, 200), resize_mode=1, upscaling_resize=2, upscaling_resize_w=512,
                               upscaling_resize_h=768) == (512, 768)
    assert upscale_target_size((300, 200), resize_mode=0, upscaling_resize=4, upscaling_resize_w=512,
                               upscaling_resize_h=768, max_side_length=600) == (600, 400)
    # A1111 applies a maximum side of 0 too: the size collapses and split / focal crop do nothing
    assert upscale_target_size((300, 200), resize_mode=0, upscaling_resize=2, upscaling_resize_w=512,
                               upscaling_resize_h=768) is None


# the whole run ---------------------------------------------------------------------------------------------------


def test_run_order_captions_and_names() -> None:
    opts = TrainingPrepOptions(
        target_width=100, target_height=100,
        split=SplitOptions(enable=True),
        focal_crop=FocalCropOptions(enable=True, debug=True),
        flip=FlipOptions(enable=True, option=("Horizontal",)),
        caption=CaptionOptions(enable=True, option=("BLIP",)),
        existing_caption_action="Prepend",
    )
    outputs = run_detailed(rows(100, 250), "old caption", opts, captioners={"BLIP": lambda im: "new"})
    # split: 250 tall in 3 pieces (ceil(230 / 80)); each focal-cropped with a debug image; then one flip of each
    # piece; the debug images are neither flipped nor captioned
    assert [(o.processed, o.nametags) for o in outputs] == (
        [(True, ())] * 3 + [(False, ("focal-crop-debug",))] * 3 + [(True, ())] * 3
    )
    assert [o.caption for o in outputs] == ["old caption new"] * 3 + [None] * 3 + ["old caption new"] * 3
    assert name_suffixes(outputs) == ["", "-1", "-2", "-focal-crop-debug", "-focal-crop-debug-1",
                                      "-focal-crop-debug-2", "-3", "-4", "-5"]
    assert outputs[6].image.tobytes() == outputs[0].image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).tobytes()
    pairs = run(rows(100, 250), None, opts, captioners={"BLIP": lambda im: "new"})
    assert [c for _im, c in pairs] == ["new"] * 3 + [None] * 3 + ["new"] * 3


def test_run_follows_the_operation_order_and_needs_a_target() -> None:
    opts = TrainingPrepOptions(
        target_width=100, target_height=100,
        split=SplitOptions(enable=True),
        flip=FlipOptions(enable=True, option=("Vertical",)),
        operation_order=("Upscale", "Create flipped copies"),
    )
    outputs = run(rows(100, 250), None, opts)
    # flipped first, then both halves split: [piece 0, flipped piece 0, pieces 1-2, flipped pieces 1-2]
    assert [first_grey(im) for im, _c in outputs] == [0, 249, 75, 150, 174, 99]
    untargeted = TrainingPrepOptions(split=SplitOptions(enable=True), focal_crop=FocalCropOptions(enable=True))
    image = rows(100, 250)
    assert run(image, "kept?", untargeted) == [(image, None)]
