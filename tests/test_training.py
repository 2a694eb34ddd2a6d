"""Training on a tiny SD 1.x model through the job queue: LoRA (kohya files) and textual inversion (A1111 files).

One application (worker running) serves the module; each test trains under its own name.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from modules.errors import ValidationError
from modules.jobs import JobState
from modules.training.specs import (
    CreateEmbeddingJob,
    PreviewOptions,
    TrainEmbeddingJob,
    TrainLoraJob,
    TrainOptions,
)
from tests.conftest import install_model

pytestmark = pytest.mark.usefixtures("frozen_gc")


def _dataset(folder, count: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        arr = np.zeros((64, 64, 3), np.uint8)
        arr[:, :32] = [200, 30, 30]
        arr[:, 32:] = [20, 20, 160 + 30 * i]
        Image.fromarray(arr).save(folder / f"{i:02d}-red blue.png")
    (folder / "00-red blue.txt").write_text("red, blue, split", encoding="utf-8")


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, model_store):
    from modules.app import App, StartOptions

    root = tmp_path_factory.mktemp("training")
    install_model(root, model_store("sd1", "safetensors"), "tiny")
    _dataset(root / "data")
    app = App(StartOptions(data_dir=root, device="cpu", skip_load_model=True))
    app.start()
    try:
        yield app
    finally:
        app.stop()


def _opts(app, **changes) -> TrainOptions:
    base = TrainOptions(data_root=str(app.paths.data_dir / "data"), training_width=64, training_height=64, steps=6,
                        learn_rate="0.01", create_image_every=0, save_every=0, seed=3, write_csv_every=1,
                        template_filename="filewords.txt", log_directory="train_logs")
    return replace(base, **changes)


def _run(app, spec, timeout: float = 300):
    job = app.submit(spec)
    assert job.wait(timeout)
    assert job.state is JobState.SUCCEEDED, job.error
    return job.result, job


def _eval_loss(app, tag: str | None) -> float:
    """The denoising loss on the dataset for fixed noise and timesteps, with the LoRA applied through the
    extra-networks loader (``tag``) or without."""
    from modules.generation import latents
    from modules.generation.conditioning import TextEncoder
    from modules.generation.passes import alphas_cumprod
    from modules.networks.lora import LoraTag

    parts = app.models.get(None)
    app.networks.loras.registry.refresh()
    images = sorted((app.paths.data_dir / "data").glob("*.png"))
    x0 = latents.encode(parts.vae, latents.from_pil([Image.open(p) for p in images]))
    abar = alphas_cumprod(parts)
    gen = torch.Generator().manual_seed(0)
    tags = [LoraTag(tag)] if tag else []
    total = 0.0
    with torch.no_grad(), app.networks.loras.applied(parts, tags, print):
        context = TextEncoder(parts).encode_with_grad("red, blue, split").context.repeat(len(images), 1, 1)
        for _ in range(12):
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.randint(0, 1000, (len(images),), generator=gen)
            a = abar[t].view(-1, 1, 1, 1)
            pred = parts.unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, encoder_hidden_states=context).sample
            total += float(((pred - noise) ** 2).mean())
    return total / 12


def test_lora_loss_falls_and_the_file_loads_in_generation(trainer):
    spec = TrainLoraJob(name="redblue", options=_opts(trainer, steps=40, learn_rate="0.01"), rank=4, alpha=4,
                        train_text_encoder=True)
    result, _ = _run(trainer, spec)
    path = trainer.paths.lora_dir / "redblue.safetensors"
    assert result.filename == str(path) and result.step == 40 and not result.interrupted
    assert result.info == f"train lora complete: filename: {path} error: None"
    # the loss falls: on fixed noise, the trained LoRA (read from its file by the loader) denoises better
    before, after = _eval_loss(trainer, None), _eval_loss(trainer, "redblue")
    assert after < before * 0.97, (before, after)
    # kohya's layout and metadata
    tensors = load_file(str(path))
    assert any(k.startswith("lora_unet_down_blocks_") and k.endswith("_attn1_to_q.lora_down.weight")
               for k in tensors)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.") for k in tensors)
    down = next(v for k, v in tensors.items() if k.endswith(".lora_down.weight"))
    assert down.shape[0] == 4 and float(next(v for k, v in tensors.items() if k.endswith(".alpha"))) == 4.0
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "4"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_output_name"] == "redblue"
    assert meta["ss_steps"] == "40" and meta["ss_network_module"] == "networks.lora"
    freq = json.loads(meta["ss_tag_frequency"])["data"]
    assert freq["red"] == 1 and freq["red blue"] == 2  # one caption file, two file-name captions
    # it changes the generated image, and the cached model is untouched afterwards
    from modules.requests import GenerationRequest

    req = GenerationRequest(prompt="red, blue", seed=5, steps=3, width=64, height=64)
    plain = trainer.engine.txt2img(req).result.images[0]
    with_lora = trainer.engine.txt2img(req.replace(prompt="red, blue <lora:redblue:1>")).result
    assert "Lora hashes" in with_lora.infotexts[0]
    assert not np.array_equal(np.asarray(plain), np.asarray(with_lora.images[0]))
    again = trainer.engine.txt2img(req).result.images[0]
    assert np.array_equal(np.asarray(plain), np.asarray(again))


def test_lora_saves_along_the_way_and_resumes_from_the_saved_step(trainer):
    opts = _opts(trainer, steps=4, save_every=2)
    first, _ = _run(trainer, TrainLoraJob(name="resumable", options=opts))
    log_dir = first.log_directory
    assert [s.rsplit("/", 1)[-1] for s in first.saved] == ["resumable-2.safetensors", "resumable-4.safetensors"]
    assert (trainer.paths.data_dir / log_dir / "lora" / "resumable-4.safetensors.optim").is_file()
    rows = list(csv.DictReader(open(f"{log_dir}/lora_loss.csv", encoding="utf-8")))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"] and set(rows[0]) >= {"loss", "learn_rate", "epoch"}
    resumed, _ = _run(trainer, TrainLoraJob(name="resumable", options=_opts(trainer, steps=7), resume="resumable-4"))
    assert resumed.step == 7 and [s for s, _ in resumed.losses] == [5, 6, 7]
    with safe_open(resumed.filename, "pt") as f:
        assert f.metadata()["ss_steps"] == "7"
    done, _ = _run(trainer, TrainLoraJob(name="resumable", options=_opts(trainer, steps=7),
                                         resume=resumed.filename))
    assert done.info == "Model has already been trained beyond specified max steps"


def test_interrupt_saves_the_weights_so_far(trainer):
    job = trainer.submit(TrainLoraJob(name="stopped", options=_opts(trainer, steps=100000)))
    deadline = time.monotonic() + 120
    while len(job.control.losses) < 3 and not job.done.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    job.control.interrupt()
    assert job.wait(120) and job.state is JobState.SUCCEEDED, job.error
    result = job.result
    assert result.interrupted and 3 <= result.step < 100000
    tensors = load_file(result.filename)
    ups = [v for k, v in tensors.items() if k.endswith("lora_up.weight")]
    assert ups and any(float(v.abs().max()) > 0 for v in ups)  # learnt (the up weights start at zero)
    with safe_open(result.filename, "pt") as f:
        assert f.metadata()["ss_steps"] == str(result.step)
    assert job.control.progress.sampling_steps == 100000


def test_embedding_create_train_resume_in_a1111_format(trainer):
    from modules.networks.embeddings import load_embedding

    created, _ = _run(trainer, CreateEmbeddingJob(name="my emb!", num_vectors_per_token=3, init_text="red thing"))
    path = trainer.paths.embeddings_dir / "my emb.pt"
    assert created.info == f"create embedding filename: {path}"
    data = torch.load(path, weights_only=True)
    assert data["string_to_token"] == {"*": 265} and data["step"] == 0 and data["name"] == "my emb"
    assert data["string_to_param"]["*"].shape == (3, 32)  # the tiny text encoder's width
    with pytest.raises(ValidationError, match="already exists"):
        trainer.submit(CreateEmbeddingJob(name="my emb"))
    opts = _opts(trainer, steps=4, learn_rate="0.05", template_filename="subject_filewords.txt",
                 create_image_every=4, save_every=2, preview_from_txt2img=True,
                 preview=PreviewOptions(prompt="a photo of my emb", steps=2, width=64, height=64))
    trained, job = _run(trainer, TrainEmbeddingJob("my emb", opts))
    assert trained.info == f"train embedding complete: filename: {path} error: None"
    emb = load_embedding(path)
    assert emb.step == 4 and emb.vectors == 3 and emb.sd_checkpoint_name == "tiny"
    assert emb.sd_checkpoint == trainer.models.current.info.shorthash
    assert not torch.equal(emb.vec, data["string_to_param"]["*"])
    log_dir = trainer.paths.data_dir / trained.log_directory
    assert (log_dir / "embeddings" / "my emb-2.pt").is_file() and (log_dir / "embeddings" / "my emb-4.pt").is_file()
    assert (log_dir / "images" / "my emb-4.png").is_file() and job.control.progress.preview is not None
    with Image.open(log_dir / "image_embeddings" / "my emb-4.png") as im:
        assert "sd-ti-embedding" in im.text and "Steps: 2" in im.text["parameters"]
    header = (log_dir / "textual_inversion_loss.csv").read_text().splitlines()[0]
    assert header == "step,epoch,epoch_step,loss,learn_rate"
    # A1111 continues an embedding from its step
    with pytest.raises(ValidationError, match=r"filewords.txt has no \[name\]"):
        trainer.submit(TrainEmbeddingJob("my emb", _opts(trainer, steps=6)))
    more, _ = _run(trainer, TrainEmbeddingJob("my emb", _opts(trainer, steps=6, template_filename="style.txt")))
    assert more.step == 6 and [s for s, _ in more.losses] == [5, 6] and load_embedding(path).step == 6


@pytest.mark.parametrize(("change", "message"), [
    ({"training_width": 60}, "training_width: must be a multiple of 8"),
    ({"data_root": ""}, "Dataset directory is empty"),
    ({"data_root": "nowhere"}, "Dataset directory doesn't exist"),
    ({"learn_rate": "fast"}, "invalid learning rate schedule"),
    ({"template_filename": "missing.txt"}, "prompt template file 'missing.txt' not found"),
    ({"tag_drop_out": 2.0}, "tag_drop_out: must be between 0 and 1"),
    ({"preview_from_txt2img": True, "create_image_every": 5, "preview": PreviewOptions(sampler_name="Nope")},
     "preview: sampler_name"),
])
def test_bad_options_are_refused_before_queueing(trainer, change, message):
    with pytest.raises(ValidationError, match=message):
        trainer.submit(TrainLoraJob(name="bad", options=_opts(trainer, **change)))


def test_bad_datasets_and_names(trainer, tmp_path):
    empty = trainer.paths.data_dir / "empty"
    empty.mkdir()
    with pytest.raises(ValidationError, match="Dataset directory is empty"):
        trainer.submit(TrainLoraJob(name="x", options=_opts(trainer, data_root=str(empty))))
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ValidationError, match="no images in the dataset directory"):
        trainer.submit(TrainLoraJob(name="x", options=_opts(trainer, data_root=str(empty))))
    (empty / "broken.png").write_bytes(b"not a png")
    job = trainer.submit(TrainLoraJob(name="x", options=_opts(trainer, data_root=str(empty))))
    job.wait(60)
    assert job.state is JobState.FAILED and "none of the images" in job.error and "broken.png" in job.error
    mixed = trainer.paths.data_dir / "mixed"
    _dataset(mixed, 1)
    (mixed / "broken.png").write_bytes(b"not a png")
    _, done = _run(trainer, TrainLoraJob(name="mixed", options=_opts(trainer, data_root=str(mixed), steps=1)))
    assert any("broken.png" in w for w in done.control.warnings)
    with pytest.raises(ValidationError, match="already exists"):
        trainer.submit(TrainLoraJob(name="mixed", options=_opts(trainer, data_root=str(mixed), steps=1)))
    with pytest.raises(ValidationError, match="create it first"):
        trainer.submit(TrainEmbeddingJob("no such embedding", _opts(trainer)))


def test_sdxl_lora_in_kohya_sdxl_names_loads_and_resumes(tmp_path, model_store):
    from modules.app import App, StartOptions
    from modules.requests import GenerationRequest

    install_model(tmp_path, model_store("sdxl", "safetensors"), "tinyxl")
    _dataset(tmp_path / "data", 2)
    app = App(StartOptions(data_dir=tmp_path, device="cpu", skip_load_model=True))
    app.start()
    try:
        spec = TrainLoraJob(name="xl", options=_opts(app, steps=2, save_every=2), rank=2, alpha=2,
                            train_text_encoder=True)
        result, _ = _run(app, spec)
        keys = set(load_file(result.filename))
        assert any(k.startswith("lora_unet_input_blocks_") for k in keys)  # SGM names, as kohya writes SDXL
        assert any(k.startswith("lora_te1_text_model_") for k in keys)
        assert any(k.startswith("lora_te2_text_model_") for k in keys)
        with safe_open(result.filename, "pt") as f:
            assert f.metadata()["ss_base_model_version"] == "sdxl_base_v1-0"
        req = GenerationRequest(prompt="red", seed=2, steps=2, width=64, height=64)
        plain = app.engine.txt2img(req).result
        with_lora = app.engine.txt2img(req.replace(prompt="red <lora:xl:1>")).result
        assert not [w for w in with_lora.warnings if "lora" in w.lower()] and "Lora hashes" in with_lora.infotexts[0]
        assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(with_lora.images[0]))
        resumed, _ = _run(app, replace(spec, options=_opts(app, steps=3), resume=result.saved[-1]))
        assert resumed.step == 3
    finally:
        app.stop()


def test_a_full_disk_leaves_the_previous_file_whole(trainer, monkeypatch):
    import errno
    import os

    from modules import fileio

    first, _ = _run(trainer, TrainLoraJob(name="diskfull", options=_opts(trainer, steps=1)))
    before = open(first.filename, "rb").read()

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", full)
    job = trainer.submit(TrainLoraJob(name="diskfull", options=_opts(trainer, steps=2, save_every=1),
                                      overwrite=True))
    assert job.wait(120) and job.state is JobState.FAILED
    assert job.error.startswith("not enough disk space in ") and "diskfull.safetensors" in job.error
    assert any("step 1: not enough disk space" in w for w in job.control.warnings)
    assert open(first.filename, "rb").read() == before
    leftovers = [p for p in trainer.paths.data_dir.rglob("*") if p.name.startswith(".tmp-")]
    assert not leftovers and os.path.getsize(first.filename) == len(before)


def test_an_interrupt_before_the_first_step_writes_nothing(trainer):
    from modules.generation.control import JobControl
    from modules.training.runs import run_train_lora

    control = JobControl()
    control.interrupt()
    result = run_train_lora(trainer, TrainLoraJob(name="never", options=_opts(trainer)), control)
    assert result.interrupted and result.step == 0 and result.filename == ""
    assert result.info == "interrupted before the first step: nothing was saved"
    assert not (trainer.paths.lora_dir / "never.safetensors").exists()


def test_an_embedding_keeps_its_file_format_and_learns_with_empty_captions(trainer):
    from safetensors.torch import save_file

    from modules.networks.embeddings import load_embedding

    path = trainer.paths.embeddings_dir / "st emb.safetensors"
    save_file({"emb_params": torch.randn(2, 32) * 0.01}, str(path))
    opts = _opts(trainer, steps=3, template_filename="subject.txt", caption_dropout=0.5, learn_rate="0.05")
    result, _ = _run(trainer, TrainEmbeddingJob("st emb", opts))
    assert result.filename == str(path) and result.step == 3
    emb = load_embedding(path)  # still a safetensors file, now with its step in the metadata
    assert emb.step == 3 and emb.vectors == 2
    with pytest.raises(ValidationError, match="seed: must be between -1 and"):
        trainer.submit(TrainEmbeddingJob("st emb", _opts(trainer, seed=2**40, template_filename="subject.txt")))
