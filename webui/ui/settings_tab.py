"""The Settings tab: a group per section, a component per option, "Apply settings" and "Reset to defaults"; at the
end, the generation workers (``--workers``; else this process) and their state, read again on "Refresh"."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from gradio.context import Context

from modules.app import ADMIN_ONLY, App
from modules.errors import ValidationError, WebUIError
from modules.settings import Option
from webui.ui.common import error_html, user_message, warning_html
from webui.ui.txt2img_handlers import request_user

MAX_SLIDER_STOPS = 2000  # wider ranges get a number box
KEEP_ON_RESET = ("sd_model_checkpoint",)  # resetting must not unload the model in use
# the Workers table: its headers, and the keys of App.workers_status() they show
WORKER_COLUMNS = (("id", "id"), ("state", "state"), ("node", "node"), ("pid", "pid"), ("device", "device"),
                  ("model", "model"), ("job", "job"), ("jobs done", "jobs_done"))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _is_slider(o: Option) -> bool:
    if o.minimum is None or o.maximum is None:
        return False
    step = o.step or (1 if o.kind == "int" else 0.01)
    return (o.maximum - o.minimum) / step <= MAX_SLIDER_STOPS


def _plain(o: Option, value: Any) -> Any:
    """What the UI sends for "nothing": an empty text for text and choice options."""
    return "" if value is None and o.kind in ("str", "choice") else value


def component_for(o: Option, value: Any, locked: bool = False) -> gr.components.Component:
    """The component for option ``o`` by its kind; ``locked`` makes it read-only."""
    common: dict[str, Any] = {"label": o.label, "elem_id": f"setting_{o.key}", "interactive": not locked}
    if o.kind == "bool":
        return gr.Checkbox(value=bool(value), **common)
    if o.kind in ("int", "float"):
        step = o.step or (1 if o.kind == "int" else 0.01)
        if o.minimum is not None and o.maximum is not None and _is_slider(o):
            return gr.Slider(o.minimum, o.maximum, value=value, step=step, **common)
        return gr.Number(value=value, minimum=o.minimum, maximum=o.maximum, step=step,
                         precision=0 if o.kind == "int" else None, **common)
    if o.kind == "choice":
        choices = o.choice_list()
        if value not in choices and value not in (None, ""):
            choices = [value, *choices]
        return gr.Dropdown(choices=choices, value=value if value not in (None, "") else None,
                           allow_custom_value=not o.strict_choices, **common)
    return gr.Textbox(value="" if value is None else str(value), lines=1, **common)


class SettingsHandlers:
    """Apply/reset/reload of every option; values travel in the order of :attr:`keys`."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.keys: list[str] = list(app.settings.options)

    def locked(self, key: str) -> bool:
        return bool(self.app.settings.options[key].locked_when_exposed and self.app.settings.exposed)

    def changes(self, values: dict[str, Any]) -> dict[str, Any]:
        """The entries of ``values`` that differ from the current settings (invalid ones always count)."""
        current = self.app.settings.snapshot()
        out: dict[str, Any] = {}
        for key, value in values.items():
            option = self.app.settings.options.get(key)
            if option is None:
                continue
            value = _plain(option, value)
            try:
                if option.coerce(value) == current[key]:
                    continue
            except ValidationError:
                pass
            out[key] = value
        return out

    def apply_values(self, values: dict[str, Any], user: str | None = None) -> str:
        """Validate and save the changed values together (``user`` must be an administrator); the message HTML."""
        if not self.app.is_admin(user):
            return error_html(f"Not saved: {ADMIN_ONLY}")
        changes = self.changes(values)
        checkpoint = changes.get("sd_model_checkpoint")
        if checkpoint and self.app.registry.find(str(checkpoint)) is None:
            self.app.registry.refresh()
            if self.app.registry.find(str(checkpoint)) is None:
                return error_html(f"Not saved: Stable Diffusion checkpoint {checkpoint!r} was not found")
        try:
            changed = self.app.update_settings(changes, user=user).changed
        except ValidationError as exc:
            option = self.app.settings.options.get(exc.field or "")
            label = f"{option.label} ({option.key})" if option else (exc.field or "settings")
            return error_html(f"Not saved: {label}: {_reason(exc, exc.field)}")
        except WebUIError as exc:
            return error_html(f"Not saved: {user_message(exc)}")
        return _changed_html(changed)

    def apply(self, *values: Any) -> str:
        """``values`` in the order of :attr:`keys` (as the single local user)."""
        return self.apply_values(dict(zip(self.keys, values, strict=False)))

    def apply_as(self, request: gr.Request | None, *values: Any) -> str:
        """The Apply event: gradio passes the ``request`` (its logged-in user), then the values."""
        return self.apply_values(dict(zip(self.keys, values, strict=False)), request_user(request))

    def reset(self, request: gr.Request | None = None) -> list[Any]:
        """Restore every default (but the current checkpoint and locked paths); message, then component updates."""
        if not self.app.is_admin(request_user(request)):
            return [error_html(f"Not reset: {ADMIN_ONLY}"), *self.component_values()]
        s = self.app.settings
        defaults = {k: o.default for k, o in s.options.items() if k not in KEEP_ON_RESET and not self.locked(k)}
        try:
            changed = s.update(defaults)
        except WebUIError as exc:
            return [error_html(f"Not reset: {user_message(exc)}"), *self.component_values()]
        return [_changed_html(changed, "reset to default"), *self.component_values()]

    def model_action(self, action: str, request: gr.Request | None = None) -> str:
        """A1111's Settings actions: ``unload`` the checkpoint from memory or ``reload`` it (on every worker too),
        through the queue as the API's unload-checkpoint / reload-checkpoint; the message HTML."""
        from modules.job_types import ReloadModelJob, UnloadModelJob

        user = request_user(request)
        if not self.app.is_admin(user):
            return error_html(f"Not done: {ADMIN_ONLY}")
        job = self.app.submit(UnloadModelJob() if action == "unload" else ReloadModelJob(), user)
        job.wait()
        if job.error:
            return error_html(f"Not done: {job.error}")
        if action == "unload":
            text = "The checkpoint was unloaded from memory."
        else:
            title = getattr(job.result, "title", None)
            text = f"Loaded {title}." if title else "No checkpoint to load: none was loaded before."
        warnings = job.control.warnings
        return f'<div class="sd-info">{html.escape(text)}</div>' + (warning_html(warnings) if warnings else "")

    def unload_as(self, request: gr.Request | None = None) -> str:
        """The "Unload SD checkpoint to RAM" button (gradio passes the ``request``: its logged-in user)."""
        return self.model_action("unload", request)

    def reload_as(self, request: gr.Request | None = None) -> str:
        """The "Load SD checkpoint to VRAM from RAM" button."""
        return self.model_action("reload", request)

    def worker_rows(self) -> list[list[str]]:
        """The Workers table: a row per worker of :meth:`App.workers_status`, empty where a value is not known."""
        return [["" if w.get(key) is None else str(w[key]) for _, key in WORKER_COLUMNS]
                for w in self.app.workers_status()]

    def component_values(self) -> list[Any]:
        """Updates carrying the current values (and current choice lists) for every component."""
        snap = self.app.settings.snapshot()
        out = []
        for key in self.keys:
            o, value = self.app.settings.options[key], snap[key]
            if o.kind == "choice":
                choices = o.choice_list()
                if value not in choices and value not in (None, ""):
                    choices = [value, *choices]
                out.append(gr.update(choices=choices, value=value if value not in (None, "") else None))
            else:
                out.append(value)
        return out


def _reason(exc: ValidationError, key: str | None) -> str:
    text = str(exc)
    return text[len(key) + 2:] if key and text.startswith(f"{key}: ") else text


def _changed_html(changed: list[str], verb: str = "changed") -> str:
    names = ", ".join(changed)
    text = f"{len(changed)} settings {verb}{': ' if changed else ''}{names}."
    return f'<div class="sd-info">{html.escape(text)}</div>'


@dataclass
class SettingsUI:
    handlers: SettingsHandlers
    components: dict[str, gr.components.Component] = field(default_factory=dict)
    parts: dict[str, Any] = field(default_factory=dict)

    def outputs(self) -> list[gr.components.Component]:
        return [self.components[k] for k in self.handlers.keys]


def build_settings_tab(app: App) -> SettingsUI:
    """Create the tab's components inside the current ``gr.Tab`` and wire Apply and Reset."""
    ui = SettingsUI(SettingsHandlers(app))
    p = ui.parts
    if app.settings.load_message:
        gr.HTML(warning_html([app.settings.load_message]), elem_id="settings_load_message")
    with gr.Row(elem_id="settings_top"):
        p["submit"] = gr.Button("Apply settings", variant="primary", elem_id="settings_submit")
        p["reset"] = gr.Button("Reset to defaults", elem_id="settings_reset")
    p["result"] = gr.HTML("", elem_id="settings_result")
    snap = app.settings.snapshot()
    for section, options in app.settings.sections().items():
        with gr.Accordion(section, open=True, elem_id=f"settings_section_{_slug(section)}"):
            for o in options:
                ui.components[o.key] = component_for(o, snap[o.key], ui.handlers.locked(o.key))
    p["submit"].click(ui.handlers.apply_as, inputs=ui.outputs(), outputs=[p["result"]], api_visibility="private",
                      show_progress="hidden")
    p["reset"].click(ui.handlers.reset, outputs=[p["result"], *ui.outputs()], api_visibility="private",
                     show_progress="hidden")
    with gr.Accordion("Actions", open=True, elem_id="settings_actions_section"):
        with gr.Row():
            p["unload_model"] = gr.Button("Unload SD checkpoint to RAM", elem_id="sett_unload_sd_model")
            p["reload_model"] = gr.Button("Load SD checkpoint to VRAM from RAM", elem_id="sett_reload_sd_model")
        p["actions_result"] = gr.HTML("", elem_id="settings_actions_result")
    p["unload_model"].click(ui.handlers.unload_as, outputs=[p["actions_result"]], api_visibility="private")
    p["reload_model"].click(ui.handlers.reload_as, outputs=[p["actions_result"]], api_visibility="private")
    with gr.Accordion("Workers", open=True, elem_id="settings_workers_section"):
        p["workers"] = gr.Dataframe(ui.handlers.worker_rows(), headers=[h for h, _ in WORKER_COLUMNS], type="array",
                                    interactive=False, label="Workers", show_label=False, elem_id="settings_workers")
        p["workers_refresh"] = gr.Button("Refresh", elem_id="settings_workers_refresh")
    p["workers_refresh"].click(ui.handlers.worker_rows, outputs=[p["workers"]], api_visibility="private",
                               show_progress="hidden")
    page = Context.root_block  # the page being built: the table is read again on every load
    if page is not None:
        page.load(ui.handlers.worker_rows, outputs=[p["workers"]], api_visibility="private", show_progress="hidden")
    return ui
