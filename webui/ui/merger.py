"""The Checkpoint Merger tab, laid out as A1111's (``modules/ui_checkpoint_merger.py``), run as a queued job.

The merge streams tensor by tensor (see :mod:`modules.merge`); the tab shows per-tensor progress, then the new file's
path and hash, and refreshes every checkpoint list (its own dropdowns and the quicksettings one) so the new model can
be picked at once.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from modules.app import ADMIN_ONLY, App
from modules.errors import WebUIError
from modules.job_types import MergeResultSummary
from modules.jobs import Job, JobState
from modules.merge import CONFIG_SOURCES, METHODS, service
from modules.models.vae import list_vaes
from webui.ui.common import REFRESH, error_html, progress_html, tool_button, user_message
from webui.ui.txt2img_handlers import request_user

log = logging.getLogger(__name__)
POLL_SECONDS = 0.25
FIELDS = ("primary_model_name", "secondary_model_name", "tertiary_model_name", "custom_name", "multiplier",
          "interp_method", "checkpoint_format", "save_as_half", "config_source", "bake_in_vae", "discard_weights",
          "save_metadata", "add_merge_recipe", "copy_metadata_fields", "metadata_json", "overwrite")


def checkpoint_choices(app: App) -> list[str]:
    return [info.title for info in app.registry.list()]


def vae_choices(app: App) -> list[str]:
    return [service.NO_VAE, *(v.name for v in list_vaes(app.paths.vae_dir))]


def _keep(value: str | None, choices: list[str]) -> str | None:
    return value if value in choices else None


def progress_view(app: App, job: Job) -> str:
    if job.state is JobState.QUEUED:
        return progress_html(0.0, f"Waiting in queue: position {app.queue.position(job)}")
    p = job.control.progress
    frac = p.sampling_step / p.sampling_steps if p.sampling_steps else 0.0
    info = f"{p.sampling_step}/{p.sampling_steps} tensors" if p.sampling_steps > 1 else ""
    phase = p.phase if p.phase.startswith(("hashing", "opening")) else ""
    return progress_html(frac, f"{frac * 100:.0f}%", " \u00b7 ".join(x for x in (info, phase) if x))


def result_html(summary: dict[str, Any]) -> str:
    rows = [("Checkpoint saved to", summary["path"]), ("Title", summary["title"]),
            ("Hash", f"{summary['hash']} (sha256 {summary['sha256']})")]
    if summary.get("config"):
        rows.append(("Config copied to", summary["config"]))
    rows.append(("Time taken", f"{summary['seconds']:.1f} s"))
    body = "".join(f"<p><b>{html.escape(k)}:</b> <span class='modelmerger-{i}'>{html.escape(str(v))}</span></p>"
                   for i, (k, v) in enumerate(rows))
    return f'<div class="sd-infotext" id="modelmerger_saved">{body}</div>'


class MergerHandlers:
    def __init__(self, app: App) -> None:
        self.app = app

    def refresh_checkpoints(self, *current: str | None) -> list[Any]:
        self.app.registry.refresh()
        choices = checkpoint_choices(self.app)
        return [gr.update(choices=choices, value=_keep(v, choices)) for v in current]

    def refresh_vaes(self, current: str | None) -> Any:
        choices = vae_choices(self.app)
        return gr.update(choices=choices, value=current if current in choices else service.NO_VAE)

    def read_metadata(self, *names: str | None) -> str:
        """A1111's "Read metadata from selected checkpoints": the safetensors metadata of A, B and C as JSON."""
        from modules.merge.sources import SafetensorsSource

        metadata: dict[str, Any] = {}
        for name in names:
            info = self.app.registry.find(name) if name else None
            if info is None or info.kind != "safetensors":
                continue
            try:
                with SafetensorsSource(info.path) as src:
                    metadata.update(src.metadata)
            except WebUIError:
                continue
        return json.dumps(metadata, indent=4, ensure_ascii=False)

    def merge(self, *args: Any) -> Iterator[tuple[Any, ...]]:
        """(progress, result, A, B, C, quicksettings checkpoint, job id) updates, as the single local user."""
        yield from self.merge_values(dict(zip(FIELDS, args, strict=False)))

    def merge_as(self, request: gr.Request | None, *args: Any) -> Iterator[tuple[Any, ...]]:
        """The Merge event: gradio passes the ``request`` (its logged-in user, who must be an administrator)."""
        yield from self.merge_values(dict(zip(FIELDS, args, strict=False)), request_user(request))

    def merge_values(self, values: dict[str, Any], user: str | None = None) -> Iterator[tuple[Any, ...]]:
        skip = gr.skip()
        if not self.app.is_admin(user):
            yield "", error_html(ADMIN_ONLY), skip, skip, skip, skip, None
            return
        req = service.MergeRequest.from_dict(values)
        try:
            job = service.submit(self.app, req, user)
        except WebUIError as exc:
            yield "", error_html(user_message(exc)), skip, skip, skip, skip, None
            return
        except Exception as exc:  # noqa: BLE001 - shown as a message; the traceback goes to the log
            log.exception("merge submission failed")
            yield "", error_html(user_message(exc)), skip, skip, skip, skip, None
            return
        yield progress_view(self.app, job), "", skip, skip, skip, skip, job.id
        while not job.wait(POLL_SECONDS):
            yield progress_view(self.app, job), skip, skip, skip, skip, skip, job.id
        if job.state is JobState.FAILED:
            yield "", error_html(f"Merge failed: {job.error or 'unknown error'}"), skip, skip, skip, skip, None
            return
        if job.state is JobState.CANCELLED or not isinstance(job.result, MergeResultSummary):
            yield "", error_html("Merge interrupted; nothing was written"), skip, skip, skip, skip, None
            return
        choices = checkpoint_choices(self.app)
        update = gr.update(choices=choices)
        yield "", result_html(job.result.as_dict()), update, update, update, update, None

    def interrupt(self, job_id: str | None, request: gr.Request | None = None) -> None:
        if job_id:
            self.app.queue.cancel(job_id, request_user(request))


@dataclass
class MergerUI:
    handlers: MergerHandlers
    fields: dict[str, gr.components.Component] = field(default_factory=dict)
    parts: dict[str, Any] = field(default_factory=dict)

    def inputs(self) -> list[gr.components.Component]:
        return [self.fields[name] for name in FIELDS]


def _form(ui: MergerUI, app: App) -> None:
    f, p = ui.fields, ui.parts
    gr.HTML("<p>A merger of the two checkpoints will be generated in your <b>checkpoint</b> directory "
            f"(<code>{html.escape(str(app.paths.ckpt_dirs[0]))}</code>).</p>")
    choices = checkpoint_choices(app)
    with gr.Row(elem_id="modelmerger_models", equal_height=False):
        for key, label, suffix in (("primary_model_name", "Primary model (A)", "A"),
                                   ("secondary_model_name", "Secondary model (B)", "B"),
                                   ("tertiary_model_name", "Tertiary model (C)", "C")):
            f[key] = gr.Dropdown(choices=choices, value=None, label=label, elem_id=f"modelmerger_{key}",
                                 allow_custom_value=True, min_width=160)
            p[f"refresh_{suffix}"] = tool_button(REFRESH, f"refresh_checkpoint_{suffix}")
    f["custom_name"] = gr.Textbox(label="Custom Name (Optional)", elem_id="modelmerger_custom_name")
    f["multiplier"] = gr.Slider(0.0, 1.0, value=0.3, step=0.05, label="Multiplier (M) - set to 0 to get model A",
                                elem_id="modelmerger_interp_amount")
    f["interp_method"] = gr.Radio(choices=list(METHODS.values()), value=METHODS["weighted_sum"],
                                  label="Interpolation Method", elem_id="modelmerger_interp_method")
    with gr.Row():
        f["checkpoint_format"] = gr.Radio(choices=["ckpt", "safetensors"], value="safetensors",
                                          label="Checkpoint format", elem_id="modelmerger_checkpoint_format")
        f["save_as_half"] = gr.Checkbox(value=False, label="Save as float16", elem_id="modelmerger_save_as_half")
    with gr.Row(equal_height=False):
        f["config_source"] = gr.Radio(choices=list(CONFIG_SOURCES), value=CONFIG_SOURCES[0], type="index",
                                      label="Copy config from", elem_id="modelmerger_config_method")
        with gr.Row():
            f["bake_in_vae"] = gr.Dropdown(choices=vae_choices(app), value=service.NO_VAE, label="Bake in VAE",
                                           elem_id="modelmerger_bake_in_vae")
            p["refresh_vae"] = tool_button(REFRESH, "modelmerger_refresh_bake_in_vae")
    f["discard_weights"] = gr.Textbox(value="", label="Discard weights with matching name",
                                      elem_id="modelmerger_discard_weights")
    with gr.Accordion("Metadata", open=False, elem_id="modelmerger_metadata"):
        with gr.Row():
            f["save_metadata"] = gr.Checkbox(value=True, label="Save metadata", elem_id="modelmerger_save_metadata")
            f["add_merge_recipe"] = gr.Checkbox(value=True, label="Add merge recipe metadata",
                                                elem_id="modelmerger_add_recipe")
            f["copy_metadata_fields"] = gr.Checkbox(value=True, label="Copy metadata from merged models",
                                                    elem_id="modelmerger_copy_metadata")
        f["metadata_json"] = gr.TextArea("{}", label="Metadata in JSON format", elem_id="modelmerger_metadata_json")
        p["read_metadata"] = gr.Button("Read metadata from selected checkpoints",
                                       elem_id="modelmerger_read_metadata")
    f["overwrite"] = gr.Checkbox(value=False, label="Overwrite an existing file of the same name",
                                 elem_id="modelmerger_overwrite")
    with gr.Row():
        p["merge"] = gr.Button("Merge", variant="primary", elem_id="modelmerger_merge")
        p["interrupt"] = gr.Button("Interrupt", variant="stop", elem_id="modelmerger_interrupt", scale=0)


def build_merger_tab(app: App, checkpoint_dropdown: gr.Dropdown | None = None) -> MergerUI:
    """Create the tab's components inside the current ``gr.Tab``; ``checkpoint_dropdown`` is the quicksettings list,
    refreshed after a merge."""
    ui = MergerUI(MergerHandlers(app))
    f, p, h = ui.fields, ui.parts, ui.handlers
    with gr.Row(equal_height=False, elem_id="modelmerger_row"):
        with gr.Column(scale=1, elem_id="modelmerger_form"):
            _form(ui, app)
        with gr.Column(scale=1, elem_id="modelmerger_results_container"):
            p["progress"] = gr.HTML("", elem_id="modelmerger_progress")
            p["result"] = gr.HTML("", elem_id="modelmerger_result")
            p["job_id"] = gr.State(None)
    quiet = {"show_progress": "hidden", "api_visibility": "private"}
    models = [f["primary_model_name"], f["secondary_model_name"], f["tertiary_model_name"]]
    for suffix in ("A", "B", "C"):
        p[f"refresh_{suffix}"].click(h.refresh_checkpoints, inputs=models, outputs=models, queue=False, **quiet)
    p["refresh_vae"].click(h.refresh_vaes, inputs=[f["bake_in_vae"]], outputs=[f["bake_in_vae"]], queue=False,
                           **quiet)
    p["read_metadata"].click(h.read_metadata, inputs=models, outputs=[f["metadata_json"]], queue=False, **quiet)
    outputs = [p["progress"], p["result"], *models, checkpoint_dropdown, p["job_id"]]
    merge: Callable[..., Iterator[tuple[Any, ...]]] = h.merge_as
    if checkpoint_dropdown is None:  # no quicksettings bar: leave its slot out
        outputs.pop(5)

        def without_dropdown(request: gr.Request, *args: Any) -> Iterator[tuple[Any, ...]]:
            for update in h.merge_as(request, *args):
                yield update[:5] + update[6:]
        merge = without_dropdown
    p["merge"].click(merge, inputs=ui.inputs(), outputs=outputs, concurrency_limit=None,
                     concurrency_id="modelmerger_merge", **quiet)
    p["interrupt"].click(h.interrupt, inputs=[p["job_id"]], outputs=None, queue=False, **quiet)
    return ui


