"""The Train tab's handlers called directly (no browser): the specs built from the form, the kind switch, bad input
shown as messages, progress / loss plot / preview / files while a job runs, interrupt and "Use in txt2img"."""

from __future__ import annotations

import dataclasses
import html

import gradio as gr
import pytest
from PIL import Image

from modules.errors import ValidationError
from modules.jobs import Job, JobState
from modules.training.specs import (
    TEXT_TARGETS,
    UNET_TARGETS,
    CreateEmbeddingJob,
    PreviewOptions,
    TrainEmbeddingJob,
    TrainLoraJob,
    TrainOptions,
    TrainResult,
)
from webui.ui import train_handlers as th
from webui.ui.train_handlers import EMBEDDING, FIELDS, LORA, TrainHandlers, default_values, train_job

SKIP = gr.skip()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """An application whose worker never starts: jobs are driven by the tests."""
    from modules.app import App, StartOptions

    app = App(StartOptions(data_dir=tmp_path_factory.mktemp("train-ui"), device="cpu", skip_load_model=True))
    yield app
    app.stop()


@pytest.fixture
def handlers(app):
    return TrainHandlers(app)


@pytest.fixture
def submitted(app, monkeypatch):
    """``app.submit`` replaced: records the specs and hands back a job that is not queued anywhere."""
    specs: list[object] = []

    def submit(spec, owner=None, tag=None):
        specs.append(spec)
        return Job(spec, owner)

    monkeypatch.setattr(app, "submit", submit)
    return specs


def form(**changes):
    values = default_values()
    values.update(data_root="dataset", embedding_name="mine")
    values.update(changes)
    return values


def finished(job: Job, result, state: JobState = JobState.SUCCEEDED) -> Job:
    job.result, job.state = result, state
    job.done.set()
    return job


# -- the specs the form builds

def test_form_defaults_are_the_specs_defaults_and_a1111s():
    values = default_values()
    assert list(values) == list(FIELDS)
    spec = train_job(form())
    assert spec == TrainEmbeddingJob("mine", TrainOptions(data_root="dataset"))
    o = spec.options
    assert (o.learn_rate, o.log_directory, o.template_filename, o.training_width, o.training_height, o.steps,
            o.create_image_every, o.save_every, o.batch_size, o.gradient_step) == (
        "0.005", "textual_inversion", "style_filewords.txt", 512, 512, 100000, 500, 500, 1, 1)
    assert o.save_image_with_stored_embedding and not o.preview_from_txt2img and o.latent_sampling_method == "once"
    assert values["unet_targets"] == list(UNET_TARGETS) and values["text_targets"] == list(TEXT_TARGETS)


def test_lora_defaults_follow_the_lora_spec():
    values = form(train_kind=LORA, lora_name="style", **th.kind_defaults(LORA))
    spec = train_job(values)
    want = TrainLoraJob("style")
    assert spec == dataclasses.replace(want, options=dataclasses.replace(want.options, data_root="dataset"))
    assert (spec.options.learn_rate, spec.options.log_directory) == ("0.0001", "lora_training")
    assert (spec.rank, spec.alpha, spec.unet_lr, spec.text_encoder_lr) == (4, 1.0, None, None)


def test_form_values_become_the_lora_spec():
    spec = train_job(form(
        train_kind=LORA, lora_name=" cats ", rank=8, alpha=4, train_text_encoder=True, unet_lr="2e-4",
        text_encoder_lr=" ", unet_targets=["to_q", "to_v"], text_targets=[], lora_overwrite=True, resume="old",
        learn_rate="1e-4:100, 1e-5", lr_scheduler="cosine", lr_warmup_steps=10, batch_size=2, gradient_step=4,
        log_directory="", training_width=768, training_height=640, varsize=True, buckets=True, steps=300, epochs=3,
        create_image_every=0, save_every=50, shuffle_tags=True, tag_drop_out=0.2, flip=True, noise_offset=0.05,
        min_snr_gamma=5, latent_sampling_method="random", clip_grad_mode="norm", clip_grad_value="1.0",
        mixed_precision="bf16", gradient_checkpointing=True, seed=7, use_weight=True, preview_from_txt2img=True,
        preview_prompt="a cat", preview_negative_prompt="blurry", preview_steps=12, preview_sampler_name="Euler",
        preview_cfg_scale=5.5, preview_seed=3, preview_width=576, preview_height=448))
    assert isinstance(spec, TrainLoraJob)
    assert (spec.name, spec.rank, spec.alpha, spec.train_unet, spec.train_text_encoder) == ("cats", 8, 4.0, True, True)
    assert (spec.unet_lr, spec.text_encoder_lr, spec.unet_targets, spec.text_targets) == (2e-4, None, ("to_q", "to_v"),
                                                                                        ())
    assert spec.overwrite and spec.resume == "old"
    o = spec.options
    assert o.log_directory == "lora_training"  # blank: the LoRA's default folder
    assert (o.learn_rate, o.lr_scheduler, o.lr_warmup_steps, o.batch_size, o.gradient_step) == (
        "1e-4:100, 1e-5", "cosine", 10, 2, 4)
    assert (o.training_width, o.training_height, o.varsize, o.buckets, o.steps, o.epochs) == (768, 640, True, True,
                                                                                              300, 3)
    assert (o.shuffle_tags, o.tag_drop_out, o.flip, o.noise_offset, o.min_snr_gamma) == (True, 0.2, True, 0.05, 5.0)
    assert (o.latent_sampling_method, o.clip_grad_mode, o.clip_grad_value, o.mixed_precision) == (
        "random", "norm", "1.0", "bf16")
    assert o.gradient_checkpointing and o.use_weight and o.seed == 7 and o.create_image_every == 0
    assert o.preview == PreviewOptions("a cat", "blurry", 12, "Euler", 5.5, 3, 576, 448)
    assert train_job(form(preview_prompt="ignored")).options.preview == PreviewOptions()  # box off: the defaults


@pytest.mark.parametrize(("changes", "message"), [
    ({"embedding_name": None}, "Embedding: choose the embedding"),
    ({"data_root": "  "}, "Dataset directory: enter"),
    ({"train_kind": LORA, "lora_name": ""}, "LoRA name: enter"),
    ({"batch_size": None}, "Batch size: enter a number"),
    ({"steps": 10.5}, "Max steps: enter a whole number"),
    ({"train_kind": LORA, "lora_name": "x", "unet_lr": "fast"}, "UNet learning rate: 'fast' is not a number"),
    ({"learn_rate": ""}, "Learning rate: enter a rate"),
])
def test_bad_input_is_a_message_and_nothing_is_queued(handlers, submitted, changes, message):
    updates = list(handlers.train_values(form(**changes)))
    assert len(updates) == 1 and submitted == []
    assert "sd-error" in updates[0].info and message in html.unescape(updates[0].info) and updates[0].job_id is None


def test_the_submitted_job_carries_the_training_settings(app, handlers, submitted):
    app.settings.update({"training_write_csv_every": 25, "dataset_filename_join_string": "_"}, save=False)
    try:
        updates = handlers.train_values(form())
        first = next(updates)
    finally:
        app.settings.update({"training_write_csv_every": 500, "dataset_filename_join_string": " "}, save=False)
    [spec] = submitted
    assert first.job_id and "sd-error" not in first.info
    assert (spec.options.write_csv_every, spec.options.filename_join_string) == (25, "_")
    assert dataclasses.replace(spec.options, write_csv_every=500, filename_join_string=" ") == train_job(form()).options


def test_errors_from_the_job_check_are_shown_not_raised(app, handlers, monkeypatch):
    def refuse(spec, owner=None, tag=None):
        raise ValidationError("training_width: must be a multiple of 8, got 500", field="training_width")

    monkeypatch.setattr(app, "submit", refuse)
    [update] = handlers.train_values(form(training_width=500))
    assert "ValidationError: training_width: must be a multiple of 8" in update.info
    def unknown(spec, owner=None, tag=None):
        raise ValueError("no handler x")

    monkeypatch.setattr(app, "submit", unknown)
    [update] = handlers.train_values(form())
    assert "ValueError: no handler x" in update.info and "Traceback" not in update.info
    info, dropdown = handlers.create_embedding("new", 1, False, "*")
    assert "ValueError: no handler x" in info and dropdown == SKIP


def test_only_administrators_train(app, handlers, submitted, monkeypatch):
    monkeypatch.setattr(app, "is_admin", lambda user: False)
    [update] = handlers.train_values(form(), "guest")
    assert "administrator" in update.info and submitted == []
    info, _ = handlers.create_embedding("new", 1, False, "*")
    assert "administrator" in info and submitted == []


# -- create embedding, lists

def test_create_embedding_shows_the_file_and_selects_it(app, handlers, monkeypatch):
    import torch
    from safetensors.torch import save_file

    folder = app.paths.embeddings_dir
    folder.mkdir(parents=True, exist_ok=True)
    specs = []

    def submit(spec, owner=None, tag=None):
        specs.append(spec)
        save_file({"emb_params": torch.zeros(1, 32)}, str(folder / "newbie.safetensors"))
        return finished(Job(spec), TrainResult(info=f"create embedding filename: {folder / 'newbie.safetensors'}",
                                               filename=str(folder / "newbie.safetensors"), name="newbie",
                                               kind="embedding"))

    monkeypatch.setattr(app, "submit", submit)
    info, dropdown = handlers.create_embedding(" newbie ", 3, True, "a cat")
    assert specs == [CreateEmbeddingJob("newbie", 3, True, "a cat")]
    assert "create embedding filename: " in info and "newbie.safetensors" in info
    assert "newbie" in dropdown["choices"] and dropdown["value"] == "newbie"
    info, _ = handlers.create_embedding("", 1, False, "*")
    assert "Name: enter a name" in info and len(specs) == 1


def test_refresh_lists(app, handlers):
    user = app.paths.data_dir / "textual_inversion_templates"
    user.mkdir(exist_ok=True)
    (user / "mine.txt").write_text("a photo of [name]\n", encoding="utf-8")
    update = handlers.refresh_templates("gone.txt")
    assert "mine.txt" in update["choices"] and "style_filewords.txt" in update["choices"]
    assert update["value"] == "style_filewords.txt"
    assert handlers.refresh_templates("mine.txt")["value"] == "mine.txt"
    assert handlers.refresh_embeddings("missing")["value"] is None


def test_switching_kind_moves_untouched_defaults_only(handlers):
    emb = th.kind_defaults(EMBEDDING)
    emb_group, lora_group, button, lr, log_dir, template = handlers.switch_kind(
        LORA, emb["learn_rate"], emb["log_directory"], emb["template_filename"])
    assert emb_group["visible"] is False and lora_group["visible"] is True and button["value"] == "Train LoRA"
    assert (lr, log_dir) == ("0.0001", "lora_training")
    assert template == th.kind_defaults(LORA)["template_filename"]
    *_, lr, log_dir, _ = handlers.switch_kind(EMBEDDING, "0.0001", "my_runs", "style.txt")
    assert lr == "0.005" and log_dir == SKIP  # the user's folder stays
    *_, lr, _, _ = handlers.switch_kind(LORA, "0.002", "", "")
    assert lr == SKIP


# -- a running job, as the tab sees it

def test_progress_plot_preview_and_files_while_running_then_the_result(app, handlers, submitted, monkeypatch):
    monkeypatch.setattr(th, "POLL_SECONDS", 0.001)
    spec = train_job(form(train_kind=LORA, lora_name="mine"))
    job = Job(spec)
    updates = handlers.poll(job)
    first = next(updates)
    assert "Waiting in queue" in first.progress and first.losses == SKIP and first.saved == SKIP
    job.state = JobState.RUNNING
    preview = Image.new("RGB", (8, 8), "red")
    job.control.losses.extend([(1, 0.5), (2, 0.25), (3, 0.125)])
    line = "Loss: 0.1250000; Step: 3; Last prompt: a cat; Last saved file: /logs/mine-3.safetensors"
    job.control.update(sampling_step=3, sampling_steps=10, preview=preview, textinfo=line)
    update = next(updates)
    assert "Step 3/10" in update.progress and "Loss: 0.1250000" in update.progress and "ETA" in update.progress
    assert list(update.losses["step"]) == [1, 2, 3] and list(update.losses["loss"]) == [0.5, 0.25, 0.125]
    assert update.preview is preview and update.saved == "/logs/mine-3.safetensors" and update.job_id == job.id
    again = next(updates)
    assert again.losses == SKIP and again.preview == SKIP and again.saved == SKIP  # nothing new: nothing resent
    image_path = app.paths.data_dir / "mine-3.png"
    Image.new("RGB", (8, 8), "blue").save(image_path)
    finished(job, TrainResult(info="Training finished at 3 steps.\nLoRA saved to /models/Lora/mine.safetensors",
                              filename="/models/Lora/mine.safetensors", name="mine", kind="lora", step=3,
                              losses=((1, 0.5), (2, 0.25), (3, 0.125)), saved=("/logs/mine-3.safetensors",),
                              images=(str(image_path),)))
    assert list(updates) == []
    last = handlers.finish(job)
    assert "Training finished at 3 steps.<br>LoRA saved to" in last.info and last.job_id is None
    assert last.saved.splitlines()[:2] == ["/logs/mine-3.safetensors", "/models/Lora/mine.safetensors"]
    assert "1 preview image" in last.saved and last.preview.size == (8, 8) and len(last.losses) == 3
    assert last.trained == {"kind": "lora", "name": "mine"} and last.progress == ""


def test_a_failed_or_interrupted_run_is_a_message(handlers):
    spec = train_job(form())
    failed = finished(Job(spec), None, JobState.FAILED)
    failed.error = "out of memory: lower the size"
    assert "Training failed: out of memory" in handlers.finish(failed).info
    cancelled = handlers.finish(finished(Job(spec), None, JobState.CANCELLED))
    assert "Interrupted before training started" in cancelled.info and cancelled.trained == SKIP
    kept = handlers.finish(finished(Job(spec), TrainResult(info="stopped", name="mine", kind="embedding", step=40,
                                                           interrupted=True), JobState.CANCELLED))
    assert "Interrupted at step 40" in kept.info and kept.trained == {"kind": "embedding", "name": "mine"}


def test_interrupt_cancels_this_sessions_job(app, handlers):
    job = app.queue.submit(train_job(form()))  # the worker is not running: it waits in the queue
    assert "Waiting in queue: position 1" in handlers.progress(job)
    handlers.interrupt(None)
    assert job.state is JobState.QUEUED
    handlers.interrupt(job.id)
    assert job.state is JobState.CANCELLED


def test_loss_plot_data_is_thinned_keeping_the_ends():
    frame = th.loss_frame([(i, 1.0 / i) for i in range(1, 5002)], max_points=1000)
    assert list(frame.columns) == ["step", "loss"] and len(frame) <= 1001
    assert frame["step"].iloc[0] == 1 and frame["step"].iloc[-1] == 5001
    assert th.loss_frame([]).empty


def test_saved_files_are_read_from_the_progress_line():
    line = "Loss: 0.1; Step: 5; Last prompt: a photo.png of x; Last saved file: /l/emb-5.pt"
    assert th.saved_files(line) == ["/l/emb-5.pt"]
    assert th.saved_files(line, ["/l/emb-5.pt"]) == ["/l/emb-5.pt"]
    assert th.saved_files("Last saved file: <none>") == []


# -- use in txt2img

def test_use_in_txt2img_adds_the_tag_once(handlers):
    tabs, prompt, message = handlers.use_in_txt2img({"kind": "lora", "name": "mine"}, EMBEDDING, None, "", "a cat")
    assert prompt == "a cat <lora:mine:1>" and message == "" and tabs.selected == "txt2img"
    assert handlers.use_in_txt2img({"kind": "lora", "name": "mine"}, LORA, None, "", prompt)[1] == prompt
    assert handlers.use_in_txt2img({"kind": "embedding", "name": "emb"}, LORA, None, "", "")[1] == "emb"
    assert handlers.use_in_txt2img(None, LORA, "emb", " style ", "x")[1] == "x <lora:style:1>"
    assert handlers.use_in_txt2img(None, EMBEDDING, "emb", "style", "x")[1] == "x emb"
    tabs, prompt, message = handlers.use_in_txt2img(None, EMBEDDING, None, "style", "x")
    assert tabs == SKIP and prompt == SKIP and "Train or choose" in message


def test_the_tab_is_built_after_the_merger_with_its_defaults(app):
    from webui.ui import build_ui

    demo = build_ui(app)
    ids = [b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)]
    assert ids.index("tab_train") > ids.index("tab_modelmerger")
    ui = demo.webui_parts["train"]
    defaults = default_values()
    for name in FIELDS:
        component = ui.fields[name]
        assert component.elem_id.startswith("train_"), name
        if name != "embedding_name":
            assert component.value == defaults[name], name
    assert all(p.elem_id is None or p.elem_id.startswith("train_") for p in ui.parts.values()
               if isinstance(p, gr.components.Component))


# -- a real run

def test_a_tiny_lora_trains_and_is_sent_to_txt2img(tmp_path, model_store):
    from tests.conftest import running_app

    data = tmp_path / "dataset"
    data.mkdir()
    for i, colour in enumerate(("red", "blue")):
        Image.new("RGB", (64, 64), colour).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"a {colour} square", encoding="utf-8")
    with running_app(tmp_path / "app", model_store) as app:
        handlers = TrainHandlers(app)
        values = form(train_kind=LORA, lora_name="tiny", data_root=str(data), training_width=64, training_height=64,
                      steps=2, create_image_every=0, save_every=0, **th.kind_defaults(LORA))
        updates = list(handlers.train_values(values))
        last = updates[-1]
        assert "sd-error" not in last.info, last.info
        assert last.trained == {"kind": "lora", "name": "tiny"} and "tiny.safetensors" in last.saved
        assert len(last.losses) == 2 and "train" in last.info.lower()
        assert handlers.use_in_txt2img(last.trained, LORA, None, "", "a square")[1] == "a square <lora:tiny:1>"
