"""Face restoration: the RetinaFace detector (key layout, anchors, decoding, NMS), alignment and paste-back, the
restore pipeline with stand-in networks, and the GFPGAN/CodeFormer service over a models folder."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from modules.errors import ValidationError
from modules.faces import restorers as restorers_module
from modules.faces.align import (
    BORDER_RGB,
    FFHQ_TEMPLATE_512,
    align_face,
    apply_affine,
    invert_affine,
    paste_face,
    similarity_transform,
    square_mask,
    warp_affine,
)
from modules.faces.boxes import decode_boxes, decode_landmarks, nms, prior_boxes
from modules.faces.imageops import erode, gaussian_blur, gaussian_kernel, resize_lanczos4
from modules.faces.parsenet import ParseNet, mask_from_labels
from modules.faces.pipeline import restore_faces
from modules.faces.restorers import (
    DETECTOR_FILE,
    FaceRestorers,
    blend_visibility,
    restorer_from_state_dict,
)
from modules.faces.retinaface import Face, RetinaFace, decode_faces, load_retinaface
from modules.faces.weights import FaceModelError, UnsafeFaceModelError
from modules.upscalers.spandrel_loader import spandrel

CPU = torch.device("cpu")


def _close(actual: torch.Tensor, expected: object) -> None:
    want = torch.as_tensor(expected, dtype=torch.float64)
    assert actual.shape == want.shape
    assert actual.flatten().tolist() == pytest.approx(want.flatten().tolist(), abs=1e-5)
# landmark offsets from an anchor's centre, in units of 0.1 anchor sizes: the template's shape, centred, eyes 0.2 apart
EYES = tuple((float(x), float(y)) for x, y in (FFHQ_TEMPLATE_512 - 256) / 640)
UNIT = 25.6  # pixels per offset unit for a stride-32 anchor (256 px) at the detector's scale


def _biased_detector(eyes: tuple[tuple[float, float], ...] = EYES) -> RetinaFace:
    """A random RetinaFace whose heads ignore the image: the first (256-pixel) anchor of every stride-32 cell is a
    face, nothing else; its box is the anchor itself and its landmarks lie at ``eyes`` offsets."""
    torch.manual_seed(0)
    net = RetinaFace().eval()
    with torch.no_grad():
        for level in range(3):
            for head in (net.ClassHead, net.BboxHead, net.LandmarkHead):
                conv = head[level].get_submodule("conv1x1")
                conv.weight.zero_()
                conv.bias.zero_()
            face = 10.0 if level == 2 else -10.0
            net.ClassHead[level].get_submodule("conv1x1").bias.copy_(torch.tensor([-face, face, 10.0, -10.0]))
            offsets = torch.tensor([v for point in eyes for v in point])
            net.LandmarkHead[level].get_submodule("conv1x1").bias.copy_(offsets.repeat(2))
    return net


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The biased detector saved as facexlib's file is: ``module.``-prefixed keys, no ``num_batches_tracked``."""
    state = {f"module.{k}": v for k, v in _biased_detector().state_dict().items()
             if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("facexlib") / DETECTOR_FILE
    torch.save(state, path)
    return path


# --- the detector -------------------------------------------------------------------------------------------------


def test_retinaface_has_the_key_layout_of_detection_resnet50_final() -> None:
    state = RetinaFace().state_dict()
    expected = {
        "body.conv1.weight": (64, 3, 7, 7), "body.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "body.layer2.3.conv2.weight": (128, 128, 3, 3), "body.layer3.5.bn3.running_var": (1024,),
        "body.layer4.2.conv3.weight": (2048, 512, 1, 1), "fpn.output1.0.weight": (256, 512, 1, 1),
        "fpn.output3.0.weight": (256, 2048, 1, 1), "fpn.merge2.1.bias": (256,),
        "ssh1.conv3X3.0.weight": (128, 256, 3, 3), "ssh2.conv5X5_2.1.running_mean": (64,),
        "ssh3.conv7x7_3.0.weight": (64, 64, 3, 3), "ClassHead.0.conv1x1.weight": (4, 256, 1, 1),
        "BboxHead.1.conv1x1.bias": (8,), "LandmarkHead.2.conv1x1.weight": (20, 256, 1, 1),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    assert not any(k.startswith(("body.fc", "body.avgpool")) for k in state)
    assert sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked")) == 27_351_584


def test_detector_file_loads_strictly_and_bad_files_name_themselves(detector_file: Path, tmp_path: Path) -> None:
    net = load_retinaface(detector_file)
    assert not net.training
    partial = torch.load(detector_file, weights_only=True)
    partial.pop("module.ssh2.conv3X3.0.weight")
    torch.save(partial, tmp_path / "broken.pth")
    with pytest.raises(FaceModelError, match=r"broken\.pth.*ssh2\.conv3X3\.0\.weight"):
        load_retinaface(tmp_path / "broken.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a pickle")
    with pytest.raises(FaceModelError, match=r"garbage\.pth: cannot be read"):
        load_retinaface(tmp_path / "garbage.pth")


def test_prior_boxes_by_hand() -> None:
    priors = prior_boxes(32, 48)  # (ceil(32/s) x ceil(48/s)) cells x 2 sizes at strides 8, 16, 32
    assert priors.shape == (4 * 6 * 2 + 2 * 3 * 2 + 1 * 2 * 2, 4)
    _close(priors[0], torch.tensor([4 / 48, 4 / 32, 16 / 48, 16 / 32]))
    _close(priors[1], torch.tensor([4 / 48, 4 / 32, 32 / 48, 32 / 32]))
    _close(priors[2], torch.tensor([12 / 48, 4 / 32, 16 / 48, 16 / 32]))
    _close(priors[12], torch.tensor([4 / 48, 12 / 32, 16 / 48, 16 / 32]))  # second row
    _close(priors[48], torch.tensor([8 / 48, 8 / 32, 64 / 48, 64 / 32]))  # stride 16
    _close(priors[-1], torch.tensor([48 / 48, 16 / 32, 512 / 48, 512 / 32]))


def test_box_and_landmark_decoding_by_hand() -> None:
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.1]])
    box = decode_boxes(torch.tensor([[1.0, -1.0, math.log(2) / 0.2, 0.0]]), prior)
    _close(box, torch.tensor([[0.32, 0.44, 0.72, 0.54]]))
    points = decode_landmarks(torch.tensor([[1.0, 2.0, 0, 0, -1, 0, 0, -2, 5, 5]]), prior)
    expected = [[0.52, 0.52], [0.5, 0.5], [0.48, 0.5], [0.5, 0.48], [0.6, 0.55]]
    _close(points, torch.tensor([expected]))


def test_nms_keeps_the_best_of_each_overlapping_group() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 5], [5, 0, 15, 10]],
                         dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.95, 0.7, 0.6])
    # IoU with box 0: box 1 81/119, box 3 50/100 (> 0.4, dropped), box 4 50/150 (kept)
    assert nms(boxes, scores, 0.4).tolist() == [2, 0, 4]
    assert nms(boxes, scores, 0.6).tolist() == [2, 0, 3, 4]
    assert nms(boxes[:0], scores[:0], 0.4).tolist() == []


def test_decode_faces_filters_scales_and_suppresses() -> None:
    width, height = 64, 32
    priors = prior_boxes(height, width)
    loc, landmarks = torch.zeros(len(priors), 4), torch.zeros(len(priors), 10)
    scores = torch.zeros(len(priors))
    scores[[0, 1, 9]] = torch.tensor([0.98, 0.99, 0.975])  # 0 and 1 share a centre; 9 is far off
    loc[1, 2:] = math.log(0.5) / 0.2  # anchor 1 (32 px) shrunk onto anchor 0 (16 px): suppressed by it
    landmarks[9, 0:2] = torch.tensor([1.0, -1.0])
    faces = decode_faces(loc, scores, landmarks, (width, height), 0.97, 0.4)
    assert [round(score, 3) for _, score, _ in faces] == [0.99, 0.975]
    box, _, points = faces[1]  # anchor 9: cell (0, 4), 32 px, centre (36, 4)
    assert box == pytest.approx([20.0, -12.0, 52.0, 20.0])
    assert points[0] == pytest.approx([36 + 3.2, 4 - 3.2])
    assert decode_faces(loc, scores, landmarks, (width, height), 0.995, 0.4) == []


def test_detect_runs_the_network_and_maps_back_to_image_pixels(detector_file: Path) -> None:
    net = load_retinaface(detector_file)
    image = Image.new("RGB", (96, 64), (120, 100, 90))
    faces = net.detect(image, resize=32)  # detected at 48 x 32, so every coordinate doubles
    assert len(faces) == 1  # the two face anchors (centres 16 and 48, 256 px) overlap: the first survives
    face = faces[0]
    assert face.score > 0.99
    assert face.box == pytest.approx((2 * (16 - 128), 2 * (16 - 128), 2 * (16 + 128), 2 * (16 + 128)))
    expected = [(2 * (16 + dx * UNIT), 2 * (16 + dy * UNIT)) for dx, dy in EYES]
    assert [tuple(p) for p in face.landmarks] == [pytest.approx(p, abs=1e-3) for p in expected]
    assert face.eye_distance == pytest.approx(2 * (EYES[1][0] - EYES[0][0]) * UNIT, abs=1e-3)


def test_faces_with_eyes_too_close_are_skipped() -> None:
    net = _biased_detector(eyes=((0.0, 0.0),) * 5)
    image = Image.new("RGB", (64, 64))
    assert net.detect(image, resize=None) == []
    assert len(net.detect(image, resize=None, eye_distance=None)) == 1


# --- image filters and alignment ----------------------------------------------------------------------------------


def test_gaussian_kernels_and_filters_follow_opencv() -> None:
    _close(gaussian_kernel(3), [0.25, 0.5, 0.25])
    k11 = gaussian_kernel(11)  # no sigma: 0.3 * ((11 - 1) / 2 - 1) + 0.8 = 2.0
    assert float(k11[5] / k11[6]) == pytest.approx(math.exp(1 / 8))
    assert float(k11.sum()) == pytest.approx(1.0)
    ramp = torch.arange(5.0).repeat(3, 1)
    assert gaussian_blur(ramp, 3)[1].tolist() == pytest.approx([0.5, 1, 2, 3, 3.5])  # mirrored: 1,0,1 ... 3,4,3
    square = torch.zeros(6, 6)
    square[1:5, 1:5] = 1
    eroded = erode(square, 2)  # the window reaches one pixel up and left
    assert eroded.nonzero().min().item() == 2 and eroded.sum().item() == 9
    assert erode(torch.ones(4, 4), 3).sum().item() == 16  # outside the image does not erode
    constant = torch.full((3, 10, 14), 77.0)
    _close(resize_lanczos4(constant, 33, 21), torch.full((3, 21, 33), 77.0))


def test_similarity_transform_maps_landmarks_onto_the_template() -> None:
    angle, scale, shift = 0.3, 0.4, np.array([70.0, 40.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) * scale
    landmarks = FFHQ_TEMPLATE_512 @ rotation.T + shift
    matrix = similarity_transform(landmarks, FFHQ_TEMPLATE_512)
    assert np.abs(apply_affine(matrix, landmarks) - FFHQ_TEMPLATE_512).max() < 1e-6
    assert matrix[0, 0] == pytest.approx(math.cos(-angle) / scale) and matrix[1, 0] == pytest.approx(
        math.sin(-angle) / scale)
    noisy = landmarks + np.random.default_rng(0).normal(0, 0.3, landmarks.shape)
    fitted = apply_affine(similarity_transform(noisy, FFHQ_TEMPLATE_512), noisy)
    assert np.abs(fitted - FFHQ_TEMPLATE_512).max() < 0.5 / scale
    round_trip = apply_affine(invert_affine(matrix), apply_affine(matrix, [[1.0, 2.0]]))
    assert round_trip == pytest.approx(np.array([[1.0, 2.0]]))


def test_warp_affine_samples_pixel_centres_with_a_constant_border() -> None:
    image = torch.arange(12.0).view(1, 3, 4)
    shifted = warp_affine(image, np.array([[1.0, 0, 1], [0, 1, 0]]), (4, 3), border=-1.0)
    assert shifted[0].tolist() == [[-1, 0, 1, 2], [-1, 4, 5, 6], [-1, 8, 9, 10]]
    half = warp_affine(image, np.array([[1.0, 0, -0.5], [0, 1, 0]]), (3, 1))
    assert half[0, 0].tolist() == pytest.approx([0.5, 1.5, 2.5])
    grey = warp_affine(torch.zeros(3, 2, 2), np.eye(2, 3) * 0.5, (4, 4), BORDER_RGB)
    assert grey[:, 3, 3].tolist() == list(BORDER_RGB)


def test_square_mask_by_hand() -> None:
    area = torch.zeros(60, 60)
    area[10:50, 10:50] = 1
    eroded, soft = square_mask(area)  # eroded: 39 x 39, so edge = 39 // 20 = 1: erode by 2, blur with [1 2 1]/4
    assert eroded.sum().item() == 39 * 39
    assert soft[30, 30].item() == 1.0
    assert soft[12, 12].item() == pytest.approx(0.75 * 0.75)  # the first pixel of the 38 x 38 square
    assert soft[11, 30].item() == pytest.approx(0.25) and soft[10, 30].item() == 0


def test_align_and_paste_back_change_only_the_face_region() -> None:
    canvas = torch.full((3, 200, 300), 40.0)
    landmarks = FFHQ_TEMPLATE_512 * 0.25 + [150, 50]  # a 128-pixel face with its top left at (150, 50)
    face, matrix = align_face(canvas, landmarks)
    assert face.shape == (3, 512, 512) and float(face.min()) == float(face.max()) == 40.0
    region, (x0, y0, x1, y1) = paste_face(canvas, torch.full((3, 512, 512), 240.0), matrix)
    assert (x0, y0) <= (150, 50) and x1 >= 150 + 128 and y1 >= 50 + 128
    inside = region[:, 50 + 64 - y0, 150 + 64 - x0]
    assert inside.tolist() == [240.0] * 3
    assert region[:, 0, 0].tolist() == [40.0] * 3
    outside = align_face(canvas, FFHQ_TEMPLATE_512 * 0.25 + [1000, 1000])[0]
    assert outside[:, 256, 256].tolist() == list(BORDER_RGB)


# --- the pipeline with stand-ins ----------------------------------------------------------------------------------


def _face_at(x: float, y: float, scale: float = 0.25) -> Face:
    points = FFHQ_TEMPLATE_512 * scale + [x, y]
    return Face((x, y, x + 512 * scale, y + 512 * scale), 0.99, tuple((float(a), float(b)) for a, b in points))


def test_pipeline_restores_each_face_and_pastes_it_back() -> None:
    image = Image.new("RGB", (320, 200), (100, 150, 200))
    faces = [_face_at(10, 20), _face_at(180, 40)]
    progress: list[tuple[int, int]] = []
    result = restore_faces(image, lambda _img: faces, lambda x: -x, device=CPU,
                           on_progress=lambda done, total: progress.append((done, total)))
    assert (result.faces, result.found, result.failed, result.interrupted) == (2, 2, 0, False)
    assert progress == [(1, 2), (2, 2)]
    out = np.asarray(result.image).astype(int)
    for x, y in ((10, 20), (180, 40)):  # the middle of each face is inverted
        assert np.abs(out[y + 64, x + 64] - [155, 105, 55]).max() <= 1
    changed = (out != [100, 150, 200]).any(axis=2)
    inside = np.zeros_like(changed)
    for x, y in ((10, 20), (180, 40)):  # each face's 128-pixel square, and a pixel for the bilinear edge
        inside[max(0, y - 1):y + 129, max(0, x - 1):x + 129] = True
    assert changed.any() and not (changed & ~inside).any()


def test_pipeline_without_faces_cancelled_or_failing() -> None:
    image = Image.new("RGB", (64, 48), (10, 20, 30))
    assert restore_faces(image, lambda _img: [], lambda x: -x, device=CPU).faces == 0
    cancelled = restore_faces(image, lambda _img: [_face_at(0, 0, 0.1)], lambda x: -x, device=CPU,
                              cancel=lambda: True)
    assert (cancelled.faces, cancelled.found, cancelled.interrupted) == (0, 1, True)
    assert cancelled.image.tobytes() == image.tobytes()

    def broken(_x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the network failed")

    failed = restore_faces(image, lambda _img: [_face_at(0, 0, 0.1)], broken, device=CPU)
    assert (failed.faces, failed.failed) == (1, 1)
    assert np.abs(np.asarray(failed.image).astype(int) - [10, 20, 30]).max() <= 2  # pasted back as it was


def test_pipeline_blends_with_a_parsing_mask() -> None:
    image = Image.new("RGB", (200, 200), (100, 100, 100))
    faces = [_face_at(30, 30)]
    nothing = restore_faces(image, lambda _img: faces, lambda x: -x, device=CPU,
                            mask=lambda face: torch.zeros(face.shape[1:]))
    assert nothing.image.tobytes() == image.tobytes()
    everything = restore_faces(image, lambda _img: faces, lambda x: -x, device=CPU,
                               mask=lambda face: torch.ones(face.shape[1:]))
    assert np.asarray(everything.image)[40, 40].tolist() == [155, 155, 155]  # no feathering: corners too


def test_parsenet_layout_and_mask() -> None:
    state = ParseNet().state_dict()
    assert tuple(state["encoder.0.conv2d.weight"].shape) == (64, 3, 3, 3)
    assert tuple(state["encoder.1.shortcut_func.conv2d.weight"].shape) == (128, 64, 3, 3)
    assert tuple(state["body.9.conv2.norm.norm.running_var"].shape) == (256,)
    assert tuple(state["decoder.3.conv1.conv2d.weight"].shape) == (64, 128, 3, 3)
    assert tuple(state["out_mask_conv.conv2d.weight"].shape) == (19, 64, 3, 3)
    with torch.no_grad():
        logits, rgb = ParseNet().eval()(torch.zeros(1, 3, 32, 32))
    assert logits.shape == (1, 19, 32, 32) and rgb.shape == (1, 3, 32, 32)
    skin = mask_from_labels(torch.ones(128, 128, dtype=torch.long))
    assert skin[64, 64].item() == pytest.approx(1.0) and skin[9, 64].item() == 0 and skin[10, 64].item() > 0.99
    assert mask_from_labels(torch.full((128, 128), 17)).abs().max().item() == 0  # hair


def test_visibility_blends_like_a1111() -> None:
    original, restored = Image.new("RGB", (4, 4), (0, 0, 0)), Image.new("RGB", (4, 4), (200, 100, 50))
    assert blend_visibility(original, restored, 1.0) is restored
    assert blend_visibility(original, restored, 0.5).getpixel((0, 0)) == (100, 50, 25)
    assert blend_visibility(original, restored, 0.0).getpixel((0, 0)) == (0, 0, 0)


# --- the service --------------------------------------------------------------------------------------------------


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _place(source: Path, path: Path) -> Path:
    """``source`` at ``path`` too (a hard link, so the 100 MB detector is not copied)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.hardlink_to(source)
    except OSError:
        path.write_bytes(source.read_bytes())
    return path


def test_names_follow_a1111s_file_rules(tmp_path: Path) -> None:
    models = tmp_path / "models"
    service = FaceRestorers(models, lambda: CPU)
    assert service.names() == []
    _touch(models / "GFPGAN" / DETECTOR_FILE)
    _touch(models / "GFPGAN" / "gfpgan-lowercase.pth")
    _touch(models / "Codeformer" / "parsing_parsenet.pth")
    assert service.names() == []
    _touch(models / "GFPGAN" / "sub" / "GFPGANv1.4.pth")
    _touch(models / "Codeformer" / "codeformer-v0.1.0.pth")
    assert service.names() == ["CodeFormer", "GFPGAN"]
    assert service.api() == [{"name": "CodeFormer", "cmd_dir": None}, {"name": "GFPGAN", "cmd_dir": None}]
    extra = _touch(tmp_path / "elsewhere" / "GFPGANv1.3.safetensors")
    assert FaceRestorers(models, lambda: CPU, gfpgan_dirs=[extra.parent]).model_path("GFPGAN") == extra


def test_missing_files_give_the_image_back_with_a_warning(tmp_path: Path) -> None:
    models = tmp_path / "models"
    service = FaceRestorers(models, lambda: CPU)
    image = Image.new("RGBA", (32, 32), (1, 2, 3, 255))
    result = service.restore(image, "GFPGAN")
    assert (result.faces, result.image.mode) == (0, "RGB") and "models/GFPGAN" in (result.warning or "")
    _touch(models / "GFPGAN" / "GFPGANv1.4.pth")
    result = service.restore(image, "GFPGAN")
    assert result.image.tobytes() == image.convert("RGB").tobytes()
    assert DETECTOR_FILE in (result.warning or "") and "models/GFPGAN" in (result.warning or "")
    assert "models/facexlib" in (result.warning or "")
    with pytest.raises(ValidationError, match="unknown face restorer"):
        service.restore(image, "RestoreFormer")


class _Hostile:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("code ran",))


def test_unusable_model_files_raise_naming_the_file(tmp_path: Path, detector_file: Path) -> None:
    models = tmp_path / "models"
    _place(detector_file, models / "facexlib" / DETECTOR_FILE)
    service = FaceRestorers(models, lambda: CPU)
    image = Image.new("RGB", (16, 16))
    target = models / "GFPGAN" / "GFPGANv1.4.pth"
    _touch(target, b"garbage")
    with pytest.raises(FaceModelError, match=r"GFPGANv1\.4\.pth: cannot be read"):
        service.restore(image, "GFPGAN")
    torch.save({"weight": _Hostile()}, target)
    with pytest.raises(UnsafeFaceModelError, match=r"GFPGANv1\.4\.pth was refused"):
        service.restore(image, "GFPGAN")
    torch.save({"some.unknown.weight": torch.zeros(3)}, target)
    with pytest.raises(FaceModelError, match=r"GFPGANv1\.4\.pth: not a model architecture spandrel knows"):
        service.restore(image, "GFPGAN")
    spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    esrgan = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4).state_dict()
    target.unlink()
    save_file(esrgan, models / "GFPGAN" / "GFPGAN-esrgan.safetensors")
    with pytest.raises(FaceModelError, match=r"GFPGAN-esrgan\.safetensors: a ESRGAN model, not GFPGAN"):
        service.restore(image, "GFPGAN")


class _FakeRestorer(torch.nn.Module):
    """Inverts the colours, adds GFPGAN-style noise drawn from the global generator, records its keyword args."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.calls: list[dict[str, object]] = []

    def forward(self, x: torch.Tensor, **kwargs: object) -> tuple[torch.Tensor, None]:
        self.calls.append(kwargs)
        return -x * self.scale + 0.002 * x.new_empty(x.shape).normal_(), None


def test_restore_runs_the_detector_and_network_as_a1111_calls_them(
        tmp_path: Path, detector_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"
    _place(detector_file, models / "facexlib" / DETECTOR_FILE)
    _touch(models / "GFPGAN" / "GFPGANv1.4.pth")
    _touch(models / "Codeformer" / "codeformer-v0.1.0.pth")
    fakes: list[_FakeRestorer] = []

    def fake_load(path: Path, architecture: str, device: torch.device) -> torch.nn.Module:
        fakes.append(_FakeRestorer())
        return fakes[-1]

    monkeypatch.setattr(restorers_module, "load_restorer", fake_load)
    service = FaceRestorers(models, lambda: CPU, detect_size=32)
    image = Image.new("RGB", (256, 256), (90, 120, 150))
    done: list[tuple[int, int]] = []
    state = torch.random.get_rng_state()
    first = service.restore(image, "GFPGAN", on_progress=lambda d, t: done.append((d, t)))
    assert torch.equal(torch.random.get_rng_state(), state)  # the seeded noise leaves the global generator alone
    again = service.restore(image, "GFPGAN")
    assert (first.faces, first.warning, done) == (1, None, [(1, 1)])
    assert first.image.tobytes() == again.image.tobytes()  # the same noise each time
    assert len(fakes) == 1 and fakes[0].calls == [{"return_rgb": False}] * 2
    out = np.asarray(first.image).astype(int)
    assert out[5, 5].tolist() == out[250, 250].tolist() == [90, 120, 150]  # the face is about 45..211
    assert np.abs(out[128, 128] - [165, 135, 105]).max() <= 2
    result = service.restore(image, "CodeFormer", codeformer_weight=0.7)
    assert result.faces == 1 and fakes[-1].calls == [{"weight": 0.7, "adain": True}]

    masks: list[int] = []

    def fake_parser(path: Path, device: torch.device) -> torch.nn.Module:
        masks.append(1)
        return ParseNet()

    monkeypatch.setattr(restorers_module, "load_parsenet", fake_parser)
    monkeypatch.setattr(restorers_module, "face_mask", lambda net, face: torch.zeros(face.shape[1:]))
    _touch(models / "facexlib" / "parsing_parsenet.pth")
    masked = service.restore(image, "CodeFormer")
    assert masks == [1] and masked.image.tobytes() == image.tobytes()  # the parsing mask (here empty) is used


@pytest.fixture(scope="module")
def gfpgan_state() -> dict[str, torch.Tensor]:
    spandrel()
    from spandrel.architectures.GFPGAN import GFPGAN

    torch.manual_seed(0)
    net = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None, fix_decoder=False,
                 num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
    return dict(net.state_dict())


def test_spandrel_identifies_gfpgan_and_codeformer(gfpgan_state: dict[str, torch.Tensor]) -> None:
    net = restorer_from_state_dict({"params_ema": dict(gfpgan_state)}, "GFPGANv1.4.pth", "GFPGAN", CPU)
    assert type(net).__name__ == "GFPGANv1Clean" and not net.training
    assert next(net.parameters()).dtype == torch.float32
    partial = {k: v for k, v in gfpgan_state.items() if k != "final_linear.weight"}
    with pytest.raises(FaceModelError, match=r"GFPGANv1\.4\.pth: cannot be loaded .*final_linear\.weight"):
        restorer_from_state_dict(partial, "GFPGANv1.4.pth", "GFPGAN", CPU)
    spandrel()
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    codeformer = CodeFormer(dim_embd=64, n_head=8, n_layers=1, codebook_size=64, latent_size=256,
                            connect_list=[]).state_dict()
    with pytest.raises(FaceModelError, match=r"cf\.pth: a CodeFormer model, not GFPGAN"):
        restorer_from_state_dict(dict(codeformer), "cf.pth", "GFPGAN", CPU)
    assert type(restorer_from_state_dict(dict(codeformer), "cf.pth", "CodeFormer", CPU)).__name__ == "CodeFormer"


@pytest.mark.slow
def test_gfpgan_end_to_end_from_the_models_folder(tmp_path: Path, detector_file: Path,
                                                  gfpgan_state: dict[str, torch.Tensor]) -> None:
    models = tmp_path / "models"
    _place(detector_file, models / "GFPGAN" / DETECTOR_FILE)
    torch.save({"params_ema": gfpgan_state}, models / "GFPGAN" / "GFPGANv1.4.pth")
    service = FaceRestorers(models, lambda: CPU, detect_size=32)
    assert service.names() == ["GFPGAN"]
    image = Image.new("RGB", (256, 256), (90, 120, 150))
    result = service.restore(image, "GFPGAN")
    assert (result.faces, result.warning) == (1, None)
    out, before = np.asarray(result.image), np.asarray(image)
    assert (out[100:156, 100:156] != before[100:156, 100:156]).any()  # the face went through the network
    assert (out[:30, :30] == before[:30, :30]).all() and (out[226:, 226:] == before[226:, 226:]).all()
    (models / "GFPGAN" / "GFPGANv1.4.pth").unlink()  # 330 MB


def test_face_boxes_for_the_focal_crop_use_the_installed_detector(tmp_path: Path, detector_file: Path) -> None:
    models = tmp_path / "models"
    restorers = FaceRestorers(models, lambda: CPU, detect_size=32)
    image = Image.new("RGB", (96, 64), (120, 100, 90))
    assert restorers.face_boxes(image) == []  # no detector file: no faces, nothing downloaded
    _place(detector_file, models / "facexlib" / DETECTOR_FILE)
    assert restorers.face_boxes(image) == [pytest.approx((2 * (16 - 128), 2 * (16 - 128), 2 * (16 + 128),
                                                          2 * (16 + 128)))]
