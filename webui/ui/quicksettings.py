"""The top bar (A1111's quicksettings): the checkpoint list, its refresh button and the model's status."""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.app import ADMIN_ONLY, App
from modules.errors import WebUIError
from webui.ui.common import REFRESH, error_html, tool_button, user_message
from webui.ui.txt2img_handlers import request_user

STATUS_SECONDS = 1.0
NOTICE_SECONDS = 8.0  # how long an error from the dropdown stays before the timer's status replaces it


def checkpoint_titles(app: App) -> list[str]:
    return [info.title for info in app.registry.list()]


def checkpoint_choices(app: App, titles: list[str] | None = None) -> list[tuple[str, str]]:
    """(label, title) for the dropdown: a checkpoint that cannot be loaded is labelled "(broken: why)"."""
    labels = {}
    for info in app.registry.list():
        error = app.registry.error_of(info)
        labels[info.title] = f"{info.title} (broken: {error[:80]})" if error else info.title
    return [(labels.get(t, t), t) for t in (titles if titles is not None else list(labels))]


def model_status_html(app: App) -> str:
    st = app.model_status
    title = html.escape(st.title or "")
    if st.state == "loading":
        return f'<span class="sd-info">\u23f3 Loading {title}\u2026</span>'
    if st.state == "loaded":
        return f'<span class="sd-info">Loaded: {title}</span>'
    if st.state == "failed":
        return error_html(f"Model load failed: {st.message or 'unknown error'}")
    if not app.registry.list():
        where = app.paths.models_dir / "Stable-diffusion"
        return error_html(f"No model: put a checkpoint (.safetensors) in {where} and press \U0001f504, or bring "
                          "back the built-in demo model (models/Stable-diffusion/demo-shapes.safetensors, "
                          "from the repository)")
    return '<span class="sd-info">No model loaded yet</span>'


def select_checkpoint(app: App, title: str | None, user: str | None = None) -> str:
    """Switch to ``title`` (queued; the status shows progress); an error message when it does not exist or
    ``user`` may not change the model."""
    if not title:
        return model_status_html(app)
    if not app.is_admin(user):
        return error_html(ADMIN_ONLY)
    if app.registry.find(title) is None:
        app.registry.refresh()
        if app.registry.find(title) is None:
            return error_html(f"Checkpoint not found: {title}")
    try:
        app.update_settings({"sd_model_checkpoint": title}, user=user)
    except WebUIError as exc:
        return error_html(user_message(exc))
    return model_status_html(app)


def refresh_checkpoints(app: App) -> Any:
    app.registry.refresh()
    current = app.selected_checkpoint()
    return gr.update(choices=checkpoint_choices(app), value=current)


def tick(app: App, shown: str | None, status: str | None, notice: tuple[str, float] | None = None
         ) -> tuple[Any, Any]:
    """The timer: the model's status, and the dropdown following the setting once no load is under way."""
    if notice and time.monotonic() < notice[1]:
        return gr.skip(), gr.skip()
    wanted = app.selected_checkpoint()
    dropdown: Any = gr.skip()
    if wanted != (shown or None) and app.model_status.state != "loading":
        titles = checkpoint_titles(app)
        shown_titles = titles if wanted in titles or wanted is None else [wanted, *titles]
        dropdown = gr.update(choices=checkpoint_choices(app, shown_titles), value=wanted)
    now = model_status_html(app)
    return dropdown, (gr.skip() if now == status else now)


@dataclass
class QuickSettings:
    checkpoint: gr.Dropdown
    refresh: gr.Button
    status: gr.HTML
    timer: gr.Timer


def build_quicksettings(app: App) -> QuickSettings:
    current = app.selected_checkpoint()
    titles = checkpoint_titles(app)
    with gr.Row(elem_id="quicksettings", equal_height=False):
        dropdown = gr.Dropdown(label="Stable Diffusion checkpoint", choices=checkpoint_choices(app, titles),
                               value=current, allow_custom_value=True, elem_id="sd_model_checkpoint_dropdown",
                               scale=0, min_width=360)
        refresh = tool_button(REFRESH, "refresh_sd_model_checkpoint")
        status = gr.HTML(model_status_html(app), elem_id="sd_model_status", scale=1, min_width=240)
    timer = gr.Timer(STATUS_SECONDS)
    qs = QuickSettings(dropdown, refresh, status, timer)
    notice = gr.State(None)
    quiet: dict[str, Any] = {"show_progress": "hidden", "api_visibility": "private"}

    def on_select(title: str | None, request: gr.Request) -> tuple[str, tuple[str, float] | None]:
        message = select_checkpoint(app, title, request_user(request))
        return message, ((message, time.monotonic() + NOTICE_SECONDS) if "sd-error" in message else None)

    dropdown.input(on_select, inputs=[dropdown], outputs=[status, notice], **quiet)
    refresh.click(lambda: refresh_checkpoints(app), outputs=[dropdown], **quiet)
    timer.tick(lambda shown, status_html, note: tick(app, shown, status_html, note), inputs=[dropdown, status, notice],
               outputs=[dropdown, status], concurrency_limit=None, **quiet)
    return qs
