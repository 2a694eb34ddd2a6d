"""Training's pure parts (captions, templates, buckets, learning-rate schedules, loss weights) and one run with every
option switched on."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from modules.errors import ValidationError
from modules.training import dataset, schedule
from modules.training.specs import TrainLoraJob
from modules.training.templates import list_templates, read_template
from tests.test_training import _opts, _run, trainer  # noqa: F401 - the module's application fixture


def test_filename_captions_as_a1111():
    assert dataset.filename_caption(dataset.Path("0012-a red fox.png")) == "a red fox"
    assert dataset.filename_caption(dataset.Path("12 3-fox.png")) == "3-fox"
    assert dataset.filename_caption(dataset.Path("7_fox_in_snow.jpg"), r"[a-z]+", " ") == "fox in snow"


def test_prompt_text_fills_the_template_and_drops_and_shuffles_tags():
    rng = random.Random(0)
    assert dataset.prompt_text(["a [name], [filewords]"], "red,blue", "tok", rng) == "a tok, red,blue"
    kept = {dataset.prompt_text(["[filewords]"], "a,b,c,d", "x", random.Random(i), tag_drop_out=0.5)
            for i in range(30)}
    assert "" in kept and "a,b,c,d" in kept and all(set(k.split(",")) <= {"a", "b", "c", "d", ""} for k in kept)
    shuffled = {dataset.prompt_text(["[filewords]"], "a,b,c", "x", random.Random(i), shuffle_tags=True)
                for i in range(30)}
    assert len(shuffled) > 1 and all(sorted(s.split(",")) == ["a", "b", "c"] for s in shuffled)


def test_templates_builtin_and_the_users(tmp_path):
    assert {"none.txt", "style.txt", "style_filewords.txt", "subject.txt", "subject_filewords.txt",
            "hypernetwork.txt", "filewords.txt"} <= set(list_templates(None))
    assert all("[name]" in line for line in read_template("subject.txt", None))
    user = tmp_path / "textual_inversion_templates"
    user.mkdir()
    (user / "mine.txt").write_text("\n  one [name]\n\n")
    (user / "empty.txt").write_text("\n")
    assert read_template("mine.txt", tmp_path) == ["one [name]"]
    with pytest.raises(ValidationError, match="no prompt lines"):
        read_template("empty.txt", tmp_path)


def test_buckets_keep_the_area_and_pick_the_nearest_shape():
    buckets = dataset.bucket_sizes(512, 512)
    assert all(w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 for w, h in buckets)
    assert dataset.nearest_bucket((1000, 1000), buckets) == (512, 512)
    wide = dataset.nearest_bucket((1600, 900), buckets)
    assert wide[0] > wide[1] and abs(wide[0] / wide[1] - 16 / 9) < 0.25
    assert dataset.train_size((100, 61), 64, 64, True, None) == (96, 56)


def test_learning_rate_schedules():
    plan = schedule.plan("0.01:2, 0.001:4, 1e-4:-1", 10)
    assert [plan.rate(s) for s in (0, 1, 2, 3, 4, 9)] == [0.01, 0.01, 0.001, 0.001, 1e-4, 1e-4]
    assert plan.end_step == 10
    assert schedule.plan("0.01:3", 10).end_step == 3  # A1111 stops at the last rate's step
    assert schedule.plan("0.01:3, 0.001:8", 10, start_step=5).pairs == ((0.001, 8),)
    cosine = schedule.plan("0.1", 10, scheduler="cosine", warmup=2)
    rates = [cosine.rate(s) for s in range(10)]
    assert rates[0] < rates[1] < rates[2] and rates[2] == pytest.approx(0.1) and rates[-1] < 0.01
    for bad in ("fast", "0.1:x", "-1", "0"):
        with pytest.raises(ValidationError, match="learn_rate"):
            schedule.parse_rates(bad, 10)
    with pytest.raises(ValidationError, match="empty or 0"):
        schedule.parse_rates("", 10)


def test_alpha_channel_weight_is_a1111s():
    alpha = Image.fromarray(np.array([[0, 255], [255, 255]], np.uint8))
    weight = dataset.alpha_weight(alpha, (4, 2, 2))
    assert weight.shape == (4, 2, 2) and float(weight.min()) == 0 and float(weight.mean()) == pytest.approx(1.0)
    assert torch.equal(dataset.alpha_weight(None, (4, 2, 2)), torch.ones(4, 2, 2))


def test_every_option_at_once(trainer, tmp_path):  # noqa: F811
    data = trainer.paths.data_dir / "shapes"
    data.mkdir()
    for i, size in enumerate([(96, 64), (64, 96), (80, 80), (96, 64)]):
        rgba = np.zeros((size[1], size[0], 4), np.uint8)
        rgba[..., 0] = 60 * i
        rgba[..., 3] = 255
        rgba[: size[1] // 2, :, 3] = 0
        Image.fromarray(rgba).save(data / f"{i}-tag{i}, shared.png")
    opts = replace(_opts(trainer, data_root=str(data), steps=0, epochs=2, batch_size=2, gradient_step=2),
                   buckets=True, shuffle_tags=True, tag_drop_out=0.3, flip=True, noise_offset=0.05,
                   min_snr_gamma=5.0, latent_sampling_method="random", use_weight=True, clip_grad_mode="norm",
                   clip_grad_value="1.0", lr_scheduler="cosine", lr_warmup_steps=1, gradient_checkpointing=True,
                   mixed_precision="fp16")
    with pytest.raises(ValidationError, match="steps: must be between 1"):
        trainer.submit(TrainLoraJob(name="everything", options=opts))
    opts = replace(opts, steps=100)
    result, job = _run(trainer, TrainLoraJob(name="everything", options=opts, train_text_encoder=True,
                                             unet_lr=1e-3, text_encoder_lr=1e-4))
    # 4 images in buckets of different shapes: 3 batches of at most 2 per epoch, accumulated in pairs
    assert result.step == 2 and all(np.isfinite(loss) for _, loss in result.losses)
    assert any("mixed precision (fp16) needs CUDA" in w for w in job.control.warnings)


def test_a_batch_of_captions_is_encoded_as_each_alone(trainer):  # noqa: F811
    from modules.generation.conditioning import TextEncoder

    parts = trainer.models.get(None)
    encoder = TextEncoder(parts)
    texts = ["a red circle", "a blue square on a green background", "(red:1.0) tags"]
    with torch.no_grad():
        batch = encoder.encode_batch_with_grad(texts).context
        alone = torch.cat([encoder.encode_with_grad(t).context for t in texts])
    assert batch.shape == alone.shape and torch.allclose(batch, alone, atol=1e-6)
    long = encoder.encode_batch_with_grad(["word " * 100, "short"]).context
    assert long.shape[1] == 154  # the short text padded with an empty chunk, as A1111
