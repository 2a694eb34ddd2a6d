"""The Extensions tab (installed extensions with enable/disable, installing from a git URL, a folder or a .zip) and
the tabs the loaded extensions add."""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from modules.app import App
from modules.errors import WebUIError
from modules.extensions import Extension
from modules.extensions.manager import DISABLE_ALL_CHOICES
from modules.extensions.manifest import requirement_status
from webui.ui.common import error_html, user_message, warning_html
from webui.ui.txt2img_handlers import request_user

log = logging.getLogger(__name__)
CELL = "text-align: left; vertical-align: top; padding: 0.3em 0.6em; border-bottom: 1px solid #8884"
RESTART_NOTE = ("Enabling, disabling and installing take effect when the server is restarted: an extension's code "
                "is loaded at start only. Extensions run with the server's rights; install only what you trust.")


def _info(text: str) -> str:
    return f'<div class="sd-info">{html.escape(text)}</div>'


def _row(ext: Extension, status: str, enabled: bool) -> str:
    """One line of the list (an extension that cannot run has no "Enabled" value)."""
    m = ext.manifest
    description = m.description if m else ""
    requirements = ", ".join(m.requirements) if m and m.requirements else ""
    source = ext.git.remote if ext.git and ext.git.remote else str(ext.path)
    cells = [f"<b>{html.escape(ext.title)}</b><br><code>{html.escape(ext.name)}</code>"
             + (" (shipped)" if ext.builtin else ""),
             html.escape(ext.version), ("yes" if enabled else "no") if ext.kind == "extension" else "-",
             html.escape(status),
             html.escape(description) + (f"<br>Requirements: {html.escape(requirements)}" if requirements else ""),
             html.escape(source)]
    return "<tr>" + "".join(f'<td style="{CELL}">{c}</td>' for c in cells) + "</tr>"


class ExtensionsHandlers:
    """The tab's events, callable without a browser."""

    def __init__(self, app: App) -> None:
        self.app = app

    @property
    def refusal(self) -> str | None:
        return self.app.extensions.management_refusal()

    def notice_html(self) -> str:
        refusal, off = self.refusal, self.app.options.disable_extensions
        warnings = [f"Read only: {refusal}."] if refusal else []
        if off != "none":
            warnings.append(f"--disable-{off}-extensions: {'no' if off == 'all' else 'only the shipped'} extensions "
                            f"run, whatever is ticked below.")
        return warning_html(warnings) + _info(RESTART_NOTE)

    def table_html(self) -> str:
        manager = self.app.extensions
        rows = [_row(e, manager.status(e), manager.enabled(e)) for e in manager.scan()]
        if not rows:
            return _info(f"No extension is installed (extensions live in {manager.target}).")
        head = "".join(f'<th style="{CELL}">{h}</th>'
                       for h in ("Extension", "Version", "Enabled", "State", "Description", "Source"))
        return (f'<table id="extensions_table" style="width: 100%; border-collapse: collapse">'
                f'<tr>{head}</tr>{"".join(rows)}</table>')

    def toggles(self) -> tuple[list[str], list[str]]:
        """The checkbox list: every extension that can run (choices), and those enabled (value)."""
        manager = self.app.extensions
        runnable = [e for e in manager.scan() if e.kind == "extension"]
        return [e.name for e in runnable], [e.name for e in runnable if manager.enabled(e)]

    def toggle_update(self) -> dict[str, Any]:
        choices, value = self.toggles()
        return gr.update(choices=choices, value=value, interactive=self.refusal is None)

    def refresh(self) -> list[Any]:
        return [self.table_html(), self.toggle_update(), self.app.extensions.disable_all()]

    def apply(self, enabled: list[str] | None, disable_all: str, request: gr.Request | None = None) -> list[Any]:
        """Save the ticked extensions (and "Disable all extensions") for the next start."""
        manager = self.app.extensions
        user = request_user(request)
        wanted = set(enabled or [])
        changed: list[str] = []
        try:
            for ext in manager.scan():
                if ext.kind == "extension" and (ext.name in wanted) != manager.enabled(ext):
                    manager.set_enabled(ext.name, ext.name in wanted, user)
                    changed.append(f"{ext.name} {'enabled' if ext.name in wanted else 'disabled'}")
            if disable_all != manager.disable_all():
                manager.set_disable_all(disable_all, user)
                changed.append(f"disable all extensions: {disable_all}")
        except WebUIError as exc:
            return [error_html(f"Not saved: {user_message(exc)}"), *self.refresh()]
        text = ("Saved: " + "; ".join(changed) + ". Restart the server to apply.") if changed else "Nothing changed."
        return [_info(text), *self.refresh()]

    def check(self, source: str, branch: str, upload: str | None, request: gr.Request | None = None
              ) -> tuple[str, str]:
        """Fetch and read an extension (nothing of it runs) and show what it declares; (html, staged token)."""
        where = str(upload) if upload else (source or "").strip()
        if not where:
            return error_html("Give a git URL, a folder or a .zip file on the server, or upload a .zip."), ""
        try:
            staged = self.app.extensions.stage(where, (branch or "").strip() or None, request_user(request))
        except WebUIError as exc:
            return error_html(user_message(exc)), ""
        except OSError as exc:
            log.exception("staging an extension from %s failed", where)
            return error_html(f"Cannot read the extension: {exc.strerror or exc}"), ""
        m = staged.manifest
        requirements = "".join(f"<li>{html.escape(requirement_status(r))}</li>" for r in m.requirements)
        body = (f"<h3>{html.escape(m.title)} <code>{html.escape(m.name)}</code> {html.escape(m.version)}</h3>"
                f"<p>{html.escape(m.description)}</p>"
                + (f"<p>Requirements (not installed by this program: install them into its environment yourself "
                   f"before enabling the extension):</p><ul>{requirements}</ul>" if requirements
                   else "<p>No requirements declared.</p>")
                + "<p>Nothing of it has run. Install it, then restart the server to load it.</p>")
        return f'<div id="extensions_preview">{body}</div>', staged.token

    def install(self, token: str, name: str, request: gr.Request | None = None) -> list[Any]:
        if not token:
            return [error_html("Check an extension first."), "", *self.refresh()]
        try:
            ext = self.app.extensions.install_staged(token, (name or "").strip() or None, request_user(request))
        except WebUIError as exc:
            return [error_html(f"Not installed: {user_message(exc)}"), token, *self.refresh()]
        except OSError as exc:
            log.exception("installing an extension failed")
            return [error_html(f"Not installed: {exc.strerror or exc}"), token, *self.refresh()]
        state = "enabled" if self.app.extensions.enabled(ext) else "disabled (enable it in the list)"
        text = f"Installed {ext.name} in {ext.path}, {state}. Restart the server to load it."
        return [_info(text), "", *self.refresh()]


@dataclass
class ExtensionsUI:
    handlers: ExtensionsHandlers
    parts: dict[str, Any] = field(default_factory=dict)


def build_extensions_tab(app: App, demo: gr.Blocks) -> ExtensionsUI:
    """Create the tab's components inside the current ``gr.Tab``; ``demo`` refreshes them on page load."""
    ui = ExtensionsUI(ExtensionsHandlers(app))
    h, p = ui.handlers, ui.parts
    editable = h.refusal is None
    p["notice"] = gr.HTML(h.notice_html(), elem_id="extensions_notice")
    with gr.Tabs(elem_id="extensions_tabs"):
        with gr.Tab("Installed", id="extensions_installed"):
            with gr.Row():
                p["apply"] = gr.Button("Apply (takes effect at restart)", variant="primary",
                                       elem_id="extensions_apply", interactive=editable)
                p["disable_all"] = gr.Radio(list(DISABLE_ALL_CHOICES), value=app.extensions.disable_all(),
                                            label="Disable all extensions", elem_id="extensions_disable_all",
                                            interactive=editable)
            choices, value = h.toggles()
            p["enabled"] = gr.CheckboxGroup(choices, value=value, label="Enabled extensions",
                                            elem_id="extensions_enabled", interactive=editable)
            p["message"] = gr.HTML("", elem_id="extensions_message")
            p["table"] = gr.HTML(h.table_html(), elem_id="extensions_list")
        with gr.Tab("Install", id="extensions_install"):
            p["source"] = gr.Textbox(label="Git URL, or a folder or .zip file on the server",
                                     elem_id="extensions_source", interactive=editable)
            p["branch"] = gr.Textbox(label="Branch (git only; empty: the default branch)",
                                     elem_id="extensions_branch", interactive=editable)
            p["upload"] = gr.File(label="Or upload a .zip", file_types=[".zip"], type="filepath",
                                  elem_id="extensions_upload", interactive=editable)
            p["check"] = gr.Button("Check (shows what it declares; runs nothing)", elem_id="extensions_check",
                                   interactive=editable)
            p["preview"] = gr.HTML("", elem_id="extensions_preview_box")
            p["name"] = gr.Textbox(label="Folder name (empty: the extension's own name)", elem_id="extensions_name",
                                   interactive=editable)
            p["install"] = gr.Button("Install", variant="primary", elem_id="extensions_install_button",
                                     interactive=editable)
            p["result"] = gr.HTML("", elem_id="extensions_install_result")
            p["token"] = gr.State("")
    listing = [p["table"], p["enabled"], p["disable_all"]]
    private: dict[str, Any] = {"api_visibility": "private", "show_progress": "hidden"}
    p["apply"].click(h.apply, inputs=[p["enabled"], p["disable_all"]], outputs=[p["message"], *listing], **private)
    p["check"].click(h.check, inputs=[p["source"], p["branch"], p["upload"]], outputs=[p["preview"], p["token"]],
                     api_visibility="private")
    p["install"].click(h.install, inputs=[p["token"], p["name"]], outputs=[p["result"], p["token"], *listing],
                       **private)
    demo.load(h.refresh, outputs=listing, **private)
    return ui


def build_extension_tabs(app: App) -> None:
    """One tab per tab the loaded extensions add; a tab whose build fails shows that, and the page is built."""
    for tab in app.extensions.tabs():
        with gr.Tab(tab.title, id=tab.elem_id, elem_id=tab.elem_id):
            try:
                tab.build()
            except Exception as exc:
                log.exception("extension %s: its tab %r failed to build", tab.extension, tab.title)
                app.extensions.note_error(tab.extension, f"its tab {tab.title!r} failed: {user_message(exc)}")
                gr.HTML(error_html(f"This tab of the extension {tab.extension} could not be built: "
                                   f"{user_message(exc)}"))
