"""Feedback where the user looks: the ETA counts down, failures as toasts, out-of-range numbers refused by name
without a traceback, the no-model notice."""

from __future__ import annotations

import gradio as gr
import pytest

import webui.ui.common  # noqa: F401  # installs the named bounds check on numbers and sliders
from modules.generation.control import JobControl, Progress


def test_the_eta_comes_from_finished_steps_and_counts_down():
    p = Progress(job_count=1, sampling_steps=10, sampling_step=5, started=100.0, stepped=110.0)
    assert p.eta(now=110.0) == pytest.approx(10.0)  # half done in 10 s: 10 s left
    assert p.eta(now=113.0) == pytest.approx(7.0)  # while the next step runs it counts down, never up
    assert p.eta(now=130.0) == 0.0
    assert Progress(job_count=1, sampling_steps=10).eta() is None  # no step yet: no estimate
    control = JobControl()
    control.update(sampling_steps=4, sampling_step=1)
    assert control.progress.stepped > 0 and control.progress.eta() is not None
    before = control.progress.stepped
    control.update(phase="decoding")  # not a step: the clock of the last step stays
    assert control.progress.stepped == before


@pytest.mark.parametrize("component", [gr.Slider(64, 2048, 512, step=8, label="Width"),
                                       gr.Number(5, minimum=1, maximum=10, label="Queue size")])
def test_out_of_range_numbers_are_refused_by_name_without_a_traceback(component):
    with pytest.raises(gr.Error) as caught:
        component.preprocess(5000)
    assert caught.value.message.startswith(f"{component.label}: Value 5000 is greater than maximum")
    assert caught.value.print_exception is False  # gradio prints no traceback for it
    assert component.preprocess(8 if isinstance(component, gr.Number) else 64) in (8, 64)


def test_generate_with_no_model_says_what_to_do_in_a_toast_and_below(data_dir, monkeypatch):
    from modules.app import App, StartOptions
    from webui.ui import txt2img_handlers
    from webui.ui.quicksettings import model_status_html

    toasts: list[tuple[str, str]] = []
    monkeypatch.setattr(txt2img_handlers, "toast", lambda message, title="Error": toasts.append((title, message)))
    app = App(StartOptions(data_dir=data_dir, device="cpu", skip_load_model=True))
    app.start()
    try:
        status = model_status_html(app)
        assert "No model: put a checkpoint (.safetensors) in" in status and "Stable-diffusion" in status
        handlers = txt2img_handlers.Txt2ImgHandlers(app)
        values = txt2img_handlers.default_values(app)
        values.update(prompt="a red house", steps=2, width=64, height=64)
        updates = list(handlers.generate_values(values))
        shown = " ".join(str(u) for u in updates[-1])
        assert "no checkpoints found" in shown.lower()
        assert toasts and toasts[0][0] == "Generation failed" and "no checkpoints found" in toasts[0][1].lower()
    finally:
        app.stop()


def test_size_from_image_takes_the_current_mode_image_to_a_multiple_of_eight(monkeypatch):
    from webui.ui import img2img
    from webui.ui.img2img_inputs import IMAGE_FIELDS, MODES

    toasts: list[str] = []
    monkeypatch.setattr(img2img, "toast", lambda message, title="": toasts.append(message))
    sizes = {IMAGE_FIELDS[0]: [1021, 771], IMAGE_FIELDS[1]: [3000, 40]}
    assert img2img.size_from_image(sizes, MODES[0]) == (1024, 768)
    assert img2img.size_from_image(sizes, MODES[1]) == (2048, 64)  # within the sliders
    unchanged = img2img.size_from_image({}, MODES[0])
    assert all(isinstance(v, type(gr.skip())) for v in unchanged) and toasts == ["Put an image in first"]
