"""The UI's handlers called directly (no browser): generate, errors, interrupt, paste, settings, token counter."""

from __future__ import annotations

import json
import threading

import pytest

from tests.conftest import log_problems, running_app, wait_for_progress

A1111_INFOTEXT = (
    "masterpiece, a cat (sitting:1.2)\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 12345, Size: 512x768, Model hash: abcdef1234, "
    "Model: someModel_v1, Denoising strength: 0.45, Clip skip: 2, Hires upscale: 1.5, Hires steps: 10, "
    "Hires upscaler: Latent (nearest), Version: v1.10.1"
)


@pytest.fixture(scope="module")
def app(tmp_path_factory, model_store):
    with running_app(tmp_path_factory.mktemp("ui-data"), model_store, ("tiny",)) as app:
        yield app


@pytest.fixture
def settings_app(data_dir):
    from modules.app import App, StartOptions

    app = App(StartOptions(data_dir=data_dir, device="cpu", skip_load_model=True))
    yield app
    app.stop()


@pytest.fixture
def handlers(app):
    from webui.ui.txt2img_handlers import Txt2ImgHandlers

    return Txt2ImgHandlers(app)


def small(app, **changes):
    from webui.ui.txt2img_handlers import default_values

    values = default_values(app)
    values.update(prompt="a lighthouse", width=64, height=64, steps=2, seed=42)
    values.update(changes)
    return values


def run(handlers, values):
    updates = list(handlers.generate_values(values))
    return updates, updates[-1]


# -- generate

def test_generate_shows_images_grid_first_and_infotext(app, handlers):
    from PIL import Image

    updates, last = run(handlers, small(app, batch_size=2))
    assert updates[0].job_id and last.job_id is None  # the job id is kept while it runs, cleared at the end
    assert len(last.gallery) == 3  # grid first, then the two images
    assert all(isinstance(im, Image.Image) for im in last.gallery)
    assert last.gallery[0].size == (128, 64) and last.gallery[1].size == (64, 64)
    assert "Steps: 2" in last.infotext and "Seed: 42" in last.infotext and "Size: 64x64" in last.infotext
    assert log_problems(last.log) == "" and last.progress == ""
    assert last.results["seeds"] == [42, 43] and last.results["grid"] is True
    saved = list((app.paths.outputs_dir / "txt2img-images").rglob("*.png"))
    assert len(saved) >= 2


def test_infotext_is_escaped(app, handlers):
    _, last = run(handlers, small(app, prompt="<script>alert(1)</script> & co"))
    assert "<script>" not in last.infotext
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in last.infotext


def test_form_fields_match_defaults(app):
    from webui.ui.txt2img_handlers import FIELDS, default_values

    assert tuple(default_values(app)) == FIELDS


def test_generate_positional_args_follow_fields(app, handlers):
    from webui.ui.txt2img_handlers import FIELDS

    values = small(app)
    *_, last = list(handlers.generate(*[values[name] for name in FIELDS]))
    assert len(last.gallery) == 1 and "Steps: 2" in last.infotext


def test_bad_width_shows_error_and_queues_nothing(app, handlers):
    before = len(app.queue.jobs())
    updates, last = run(handlers, small(app, width=65))
    assert len(updates) == 1
    assert "width" in last.log and "multiple of 8" in last.log and "sd-error" in last.log
    assert "Traceback" not in last.log
    assert last.job_id is None
    assert len(app.queue.jobs()) == before


def test_unknown_sampler_is_a_message(app, handlers):
    _, last = run(handlers, small(app, sampler_name="Nope"))
    assert "unknown sampler" in last.log


def test_queue_full_is_a_message(app, handlers):
    old = app.queue.max_size
    app.queue.max_size = 0
    try:
        _, last = run(handlers, small(app))
    finally:
        app.queue.max_size = old
    assert "QueueFull" in last.log and "queue is full" in last.log


def test_interrupt_keeps_partial_results(app, handlers):
    gen = handlers.generate_values(small(app, n_iter=40))
    first = next(gen)
    job = app.queue.get(first.job_id)
    updates = [first]
    for update in gen:  # polls every 0.25 s while the job runs
        updates.append(update)
        if job.control.progress.job_no >= 1 and not job.control.interrupted:
            handlers.interrupt(first.job_id)
    last = updates[-1]
    assert job.state.value == "cancelled"
    images = last.gallery[1:] if last.results["grid"] else last.gallery
    assert 1 <= len(images) < 40
    assert f"Interrupted: {len(images)} of 40 images" in last.log
    assert any("%" in str(u.progress) for u in updates[:-1])  # the progress bar was shown


def test_interrupt_and_skip_without_a_job_do_nothing(app, handlers):
    handlers.interrupt(None)
    handlers.skip(None)
    handlers.skip("no-such-job")


def test_skip_skips_a_batch_but_the_job_goes_on(app, handlers):
    gen = handlers.generate_values(small(app, n_iter=3, steps=4))
    first = next(gen)
    job = app.queue.get(first.job_id)
    skipped = threading.Event()

    def skip_when_running() -> None:
        wait_for_progress(job, lambda p: p.sampling_step > 0)
        handlers.skip(first.job_id)
        skipped.set()

    threading.Thread(target=skip_when_running, daemon=True).start()
    *_, last = list(gen)
    assert skipped.is_set()
    assert job.state.value == "succeeded"
    assert len(last.gallery) == 4  # grid + 3: skip ends one batch early, it does not cancel the job


# -- gallery selection and seed buttons

def test_select_image_and_reuse_seed(app, handlers):
    from webui.ui.txt2img_handlers import reuse_seed, select_image

    _, last = run(handlers, small(app, batch_size=2, seed=100))
    results = last.results
    assert reuse_seed(results) == 100  # the grid counts as the first image
    html, results = select_image(results, 2)
    assert "Seed: 101" in html
    assert reuse_seed(results) == 101
    assert reuse_seed(None) == {"__type__": "update"}  # gr.skip(): unchanged


def test_styles_are_applied(app):
    from webui.ui.txt2img_handlers import build_request

    app.paths.styles_file.write_text('name,prompt,negative_prompt\n"Cine","cinematic still of {prompt}","cartoon"\n',
                                     encoding="utf-8")
    try:
        req = build_request(app, small(app, styles=["Cine"], negative_prompt="ugly"))
    finally:
        app.paths.styles_file.unlink()
    assert req.prompt == "cinematic still of a lighthouse"
    assert req.negative_prompt == "ugly, cartoon"
    assert req.styles == ("Cine",)


def test_pasting_finds_the_styles_in_the_prompts(app, handlers):
    app.paths.styles_file.write_text('name,prompt,negative_prompt\n"Cine","cinematic still of {prompt}","cartoon"\n',
                                     encoding="utf-8")
    text = "cinematic still of a fox\nNegative prompt: ugly, cartoon\nSteps: 12, Sampler: Euler, CFG scale: 6, Seed: 3"
    try:
        values, _ = handlers.read_parameters(text)
        app.settings.update({"infotext_styles": "Ignore"}, save=False)
        ignored, _ = handlers.read_parameters(text)
    finally:
        app.settings.update({"infotext_styles": "Apply if any"}, save=False)
        app.paths.styles_file.unlink()
    assert (values["prompt"], values["negative_prompt"], values["styles"]) == ("a fox", "ugly", ("Cine",))
    assert ignored["prompt"] == "cinematic still of a fox" and "styles" not in ignored


def test_seed_extras_only_count_when_shown(app):
    from webui.ui.txt2img_handlers import SAME_SCHEDULER, build_request

    values = small(app, subseed=7, subseed_strength=0.5, seed_resize_from_w=128, seed_resize_from_h=128,
                   hr_scheduler=SAME_SCHEDULER)
    assert build_request(app, values).subseed_strength == 0.0
    req = build_request(app, {**values, "seed_extra": True})
    assert (req.subseed, req.subseed_strength, req.seed_resize_from_w) == (7, 0.5, 128)
    assert req.hr_scheduler is None and req.hr_sampler_name is None


# -- ↙️ read generation parameters

def test_read_parameters_fills_fields_from_a1111_infotext(handlers):
    values, message = handlers.read_parameters(A1111_INFOTEXT)
    assert values["prompt"] == "masterpiece, a cat (sitting:1.2)"
    assert values["negative_prompt"] == "blurry, lowres"
    assert values["steps"] == 28 and values["cfg_scale"] == 6.5 and values["seed"] == 12345
    assert (values["sampler_name"], values["scheduler"]) == ("DPM++ 2M", "Karras")
    assert (values["width"], values["height"]) == (512, 768)
    assert values["clip_skip"] == 2
    assert values["enable_hr"] is True and values["hr_scale"] == 1.5 and values["hr_second_pass_steps"] == 10
    assert values["hr_upscaler"] == "Latent (nearest)" and values["denoising_strength"] == 0.45
    assert values["tiling"] is False
    assert "someModel_v1" in message


def test_read_parameters_round_trips_a_generated_image(app, handlers):
    from webui.ui.txt2img_handlers import build_request

    original = small(app, sampler_name="Euler", scheduler="Karras", cfg_scale=5.5, seed=777, clip_skip=2)
    _, last = run(handlers, original)
    values, _ = handlers.read_parameters("", last.results)  # empty prompt box: the last image's parameters
    assert build_request(app, {**small(app), **values}) == build_request(app, original)


def test_read_parameters_without_parameters_changes_nothing(handlers):
    values, message = handlers.read_parameters("just a prompt")
    assert values == {} and "No generation parameters" in message
    values, message = handlers.read_parameters("", None)
    assert values == {} and "Paste" in message


def test_read_parameters_skips_unknown_names(handlers):
    values, message = handlers.read_parameters("a\nSteps: 5, Sampler: Mystery, Size: 64x64")
    assert "sampler_name" not in values and "Mystery" in message and values["steps"] == 5


# -- token counter

def test_token_counter():
    from webui.ui.common import TokenCounter

    counter = TokenCounter()
    assert counter.count("a cat") == (2, 75)
    assert counter.html("") == '<div class="sd-token-counter">0/75</div>'
    count, limit = counter.count(", ".join(["a red apple"] * 30))
    assert count > 75 and limit == 150
    assert counter.count("a <lora:foo:0.8> cat # comment") == (2, 75)


# -- quicksettings

def test_quicksettings_checkpoint_selection(app):
    from webui.ui.quicksettings import model_status_html, select_checkpoint, tick

    assert "not found" in select_checkpoint(app, "missing.safetensors")
    title = app.registry.list()[0].title
    assert "sd-error" not in select_checkpoint(app, title)
    app.queue.wait_idle(60)
    title = app.registry.list()[0].title  # with its hash, once loaded
    assert app.settings["sd_model_checkpoint"] == title
    assert "Loaded" in model_status_html(app)
    dropdown, status = tick(app, None, "")
    assert dropdown["value"] == title and "Loaded" in status


# -- settings

def test_settings_apply_persists_and_reports(settings_app):
    from webui.ui.settings_tab import SettingsHandlers

    h = SettingsHandlers(settings_app)
    values = dict(zip(h.keys, h.component_values(), strict=True))
    values = {k: (v["value"] if isinstance(v, dict) else v) for k, v in values.items()}
    values.update(CLIP_stop_at_last_layers=2.0, samples_format="jpg")  # sliders send floats
    message = h.apply(*[values[k] for k in h.keys])
    assert "2 settings changed" in message and "CLIP_stop_at_last_layers" in message
    saved = json.loads(settings_app.paths.config_file.read_text())
    assert saved["CLIP_stop_at_last_layers"] == 2 and saved["samples_format"] == "jpg"
    assert "0 settings changed" in h.apply(*[values[k] for k in h.keys])


def test_settings_reject_invalid_values(settings_app):
    from webui.ui.settings_tab import SettingsHandlers

    h = SettingsHandlers(settings_app)
    message = h.apply_values({"CLIP_stop_at_last_layers": 20, "samples_format": "jpg"})
    assert "sd-error" in message and "Clip skip" in message and "between 1 and 12" in message
    assert settings_app.settings["samples_format"] == "png"  # nothing applied
    assert not settings_app.paths.config_file.exists()
    assert "samples_format" in h.apply_values({"samples_format": "bmp"})
    assert "not found" in h.apply_values({"sd_model_checkpoint": "nope.safetensors"})


def test_settings_reset_restores_defaults(settings_app):
    from webui.ui.settings_tab import SettingsHandlers

    h = SettingsHandlers(settings_app)
    h.apply_values({"CLIP_stop_at_last_layers": 3, "jpeg_quality": 50})
    message, *values = h.reset()
    assert "2 settings reset to default" in message
    assert settings_app.settings["CLIP_stop_at_last_layers"] == 1 and settings_app.settings["jpeg_quality"] == 80
    assert len(values) == len(h.keys)
    assert values[h.keys.index("jpeg_quality")] == 80
    assert json.loads(settings_app.paths.config_file.read_text())["jpeg_quality"] == 80


# -- the page

def test_build_ui_has_a1111_layout_and_ids(app):
    import gradio as gr

    from webui.ui import build_ui

    demo = build_ui(app)
    assert isinstance(demo, gr.Blocks)
    blocks = list(demo.blocks.values())
    ids = {b.elem_id for b in blocks if getattr(b, "elem_id", None)}
    for elem_id in ("txt2img_prompt", "txt2img_neg_prompt", "txt2img_generate", "txt2img_interrupt", "txt2img_skip",
                    "txt2img_gallery", "txt2img_steps", "txt2img_seed", "txt2img_width", "txt2img_height",
                    "txt2img_cfg_scale", "txt2img_sampling", "txt2img_scheduler", "txt2img_enable_hr",
                    "html_info_txt2img", "html_log_txt2img", "txt2img_progress", "settings_submit",
                    "setting_CLIP_stop_at_last_layers", "setting_samples_format", "sd_model_checkpoint_dropdown"):
        assert elem_id in ids, elem_id
    tabs = [b.label for b in blocks if isinstance(b, gr.Tab) and (b.elem_id or "").startswith("tab_")]
    assert tabs[0] == "txt2img" and tabs[-2:] == ["Settings", "Extensions"]  # A1111's order
    by_id = {b.elem_id: b for b in blocks if getattr(b, "elem_id", None)}
    assert by_id["txt2img_sampling"].value == "DPM++ 2M" and by_id["txt2img_scheduler"].value == "Automatic"
    steps = by_id["txt2img_steps"]
    assert (steps.minimum, steps.maximum, steps.value) == (1, 150, 20)
    assert (by_id["txt2img_cfg_scale"].step, by_id["txt2img_cfg_scale"].value) == (0.5, 7.0)
    assert by_id["txt2img_seed"].value == -1
    load = next(f for f in demo.fns.values() if f.name == "on_load")
    values = load.fn()
    assert len(values) == len(load.outputs)
    assert values[2] == app.settings["CLIP_stop_at_last_layers"]


SHARED_IDS = ("{}_toprow", "{}_prompt", "{}_neg_prompt", "{}_token_counter", "{}_negative_token_counter",
              "{}_generate", "{}_interrupt", "{}_skip", "{}_clear_prompt", "{}_styles_refresh", "{}_styles",
              "{}_sampler_row", "{}_sampling", "{}_scheduler", "{}_steps", "{}_width", "{}_height",
              "{}_res_switch_btn", "{}_batch_count", "{}_batch_size", "{}_cfg_scale", "{}_seed_row", "{}_seed",
              "{}_random_seed", "{}_reuse_seed", "{}_subseed_show", "{}_seed_extras", "{}_subseed",
              "{}_random_subseed", "{}_reuse_subseed", "{}_subseed_strength", "{}_seed_resize_from_w",
              "{}_seed_resize_from_h", "{}_extra_options", "{}_clip_skip", "{}_tiling", "{}_results", "{}_progress",
              "{}_preview", "{}_gallery", "html_info_{}", "html_log_{}")


def test_both_tabs_get_the_shared_rows_with_a1111_ids(app):
    from webui.ui import build_ui

    demo = build_ui(app)
    blocks = [b for b in demo.blocks.values() if getattr(b, "elem_id", None)]
    by_id = {b.elem_id: b for b in blocks}
    for tab in ("txt2img", "img2img"):
        for pattern in SHARED_IDS:
            assert pattern.format(tab) in by_id, pattern.format(tab)
    assert {"paste", "img2img_paste"} <= set(by_id) and "txt2img_paste" not in by_id  # A1111's two names
    assert "txtimg_hr_finalres" in by_id
    for pattern in ("{}_width", "{}_seed_resize_from_h", "{}_clip_skip"):
        one, other = by_id[pattern.format("txt2img")], by_id[pattern.format("img2img")]
        assert (one.label, one.minimum, one.maximum, one.step) == (other.label, other.minimum, other.maximum,
                                                                   other.step)
    assert [b.elem_id for b in blocks].count("txt2img_prompt") == 1


def test_typing_into_a_slider_box_does_not_fail_the_events_that_redraw_a_line(app):
    """A slider's number box sends each keystroke ("6" on the way to "64"): the events that only redraw a line
    take it as it is, where gradio's bounds check would log a traceback; Generate still checks the final value."""
    import asyncio

    from webui.ui import build_ui

    demo = build_ui(app)
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}

    def listener(elem_id: str, event: str):
        return next(fn for fn in demo.fns.values() if (by_id[elem_id]._id, event) in fn.targets)

    def call(fn, *values):
        return asyncio.run(demo.process_api(block_fn=fn, inputs=list(values)))["data"]

    for elem_id in ("txt2img_width", "txt2img_height"):
        assert "from <b>6x64</b>" in call(listener(elem_id, "change"), 6, 64, 2.0, 0, 0)[0]
    assert "resize" in call(listener("img2img_scale", "change"), None, None, 0)[0]
    for tab in ("txt2img", "img2img"):
        assert "/75" in call(listener(f"{tab}_prompt", "change"), "a cat", 0)[0]
    generate = listener("txt2img_generate", "click")
    assert generate.preprocess


def test_settings_tab_shows_the_config_load_message(data_dir):
    import gradio as gr

    from modules.app import App, StartOptions
    from webui.ui.settings_tab import build_settings_tab

    (data_dir / "config.json").write_text("{not json", encoding="utf-8")
    app = App(StartOptions(data_dir=data_dir, device="cpu", skip_load_model=True))
    with gr.Blocks() as demo:
        build_settings_tab(app)
    notes = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "settings_load_message"]
    assert notes and "config.json" in notes[0].value and "moved" in notes[0].value


def test_settings_tab_lists_the_workers_and_reads_them_again(settings_app, monkeypatch):
    """The Workers table: without --workers this process as the one worker, "local"; Refresh and every page load
    read App.workers_status() again (private events: not in gradio's API)."""
    import asyncio
    import os

    import gradio as gr

    from webui.ui.settings_tab import build_settings_tab

    with gr.Blocks() as demo:
        ui = build_settings_tab(settings_app)
    table = ui.parts["workers"]
    assert table.value["headers"] == ["id", "state", "node", "pid", "device", "model", "job", "jobs done"]
    assert table.value["data"] == [["local", "ready", settings_app.workers_status()[0]["node"], str(os.getpid()),
                                    "cpu", "", "", ""]]
    workers = [{"id": "worker-1", "state": "busy", "message": "", "node": "gpu-a", "node_id": "n1", "pid": 42,
                "device": "cuda:0", "model": "tiny [abc]", "checkpoints": 2, "job": "j1", "jobs_done": 3,
                "busy_seconds": 1.5, "restarts": 0},
               {"id": "worker-2", "state": "starting", "message": "loading", "node": None, "node_id": None,
                "pid": None, "device": None, "model": None, "checkpoints": 0, "job": None, "jobs_done": 0,
                "busy_seconds": 0.0, "restarts": 1}]
    monkeypatch.setattr(settings_app, "workers_status", lambda: workers)
    expected = [["worker-1", "busy", "gpu-a", "42", "cuda:0", "tiny [abc]", "j1", "3"],
                ["worker-2", "starting", "", "", "", "", "", "0"]]
    assert ui.handlers.worker_rows() == expected
    refresh = next(fn for fn in demo.fns.values() if (ui.parts["workers_refresh"]._id, "click") in fn.targets)
    on_load = next(fn for fn in demo.fns.values()
                   if (demo._id, "load") in fn.targets and table._id in [o._id for o in fn.outputs])
    for fn in (refresh, on_load):
        assert fn.api_visibility == "private"
        [out] = asyncio.run(demo.process_api(block_fn=fn, inputs=[]))["data"]
        assert out["data"] == expected


def test_settings_actions_unload_the_checkpoint_to_ram_and_load_it_back(app):
    """A1111's Settings buttons "Unload SD checkpoint to RAM" / "Load SD checkpoint to VRAM from RAM": through the
    queue, the model off the device and back without reading its file again (private events)."""
    import asyncio

    import gradio as gr

    from webui.ui.settings_tab import build_settings_tab

    with gr.Blocks() as demo:
        ui = build_settings_tab(app)
    title, loads = app.models.current.info.title, app.models.load_count

    def click(key: str) -> str:
        fn = next(fn for fn in demo.fns.values() if (ui.parts[key]._id, "click") in fn.targets)
        assert fn.api_visibility == "private"
        [out] = asyncio.run(demo.process_api(block_fn=fn, inputs=[]))["data"]
        return out

    try:
        assert "unloaded from memory" in click("unload_model") and app.models.current is None
        assert app.model_status.state == "unloaded"
        assert f"Loaded {title}" in click("reload_model")
        assert app.models.current.info.title == title and app.models.load_count == loads
    finally:
        if app.models.current is None:
            app.models.reload()
            app.remember_model()


def test_live_preview_is_shown_while_sampling(app, handlers, monkeypatch):
    import webui.ui.txt2img_handlers as th

    monkeypatch.setattr(th, "POLL_SECONDS", 0.02)
    old = app.settings["show_progress_every_n_steps"]
    app.settings.update({"show_progress_every_n_steps": 1}, save=False)
    try:
        updates, last = run(handlers, small(app, steps=12))
    finally:
        app.settings.update({"show_progress_every_n_steps": old}, save=False)
    previews = [u.preview for u in updates[:-1] if isinstance(u.preview, dict) and u.preview.get("value") is not None]
    assert previews and previews[0]["visible"] is True
    assert any("Step " in str(u.progress) for u in updates[:-1])
    assert last.preview == {"__type__": "update", "visible": False, "value": None}


def test_refiner_accordion_and_hires_checkpoint_reach_the_job_and_paste_back(app, handlers):
    title = app.registry.list()[0].title
    _, off = run(handlers, small(app, refiner_checkpoint=title, refiner_switch_at=0.5))  # not enabled: unused
    assert "Refiner" not in off.infotext
    _, on = run(handlers, small(app, refiner_enable=True, refiner_checkpoint=title, refiner_switch_at=0.5))
    assert "Refiner: " in on.infotext and "Refiner switch at: 0.5" in on.infotext
    _, hires = run(handlers, small(app, enable_hr=True, hr_scale=1.0, hr_checkpoint_name=title))
    assert "Hires checkpoint: " in hires.infotext
    values, _ = handlers.read_parameters(
        "a cat\nSteps: 2, Sampler: Euler, Seed: 1, Size: 64x64, Denoising strength: 0.5, Hires upscale: 1.5, "
        "Hires checkpoint: other, Refiner: tiny, Refiner switch at: 0.6", None)
    assert values["refiner_enable"] is True and values["refiner_checkpoint"] == "tiny"
    assert values["refiner_switch_at"] == 0.6 and values["hr_checkpoint_name"] == "other"
    plain, _ = handlers.read_parameters("a cat\nSteps: 2, Sampler: Euler, Seed: 1, Size: 64x64", None)
    assert plain["refiner_enable"] is False
