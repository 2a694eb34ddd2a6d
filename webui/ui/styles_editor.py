"""The styles editor of the txt2img and img2img tabs, as A1111's: a 🖌️ button beside the Styles menu opens a panel
to pick a style (or type a new name), edit its prompt and negative prompt, save or delete it, copy the tab's prompts
into it (📝), or write the selected styles into the tab's prompts (📋). Saved styles go back to the styles file they
came from (new ones to the first file)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.styles import Style
from webui.ui import common
from webui.ui.common import tool_button

if TYPE_CHECKING:
    from modules.app import App

EDIT = "\U0001f58c\ufe0f"  # 🖌️
MATERIALIZE = "\U0001f4cb"  # 📋
COPY = "\U0001f4dd"  # 📝
QUIET: dict[str, Any] = {"api_visibility": "private", "queue": False, "show_progress": "hidden"}
STYLE_HELP = ("Styles add text to the prompt: {prompt} in a style is replaced by the prompt when the style is "
              "applied; without it the style's text is added at the end.")


# --- what the buttons do (plain functions, tested without a browser) ------------------------------------------------

def select_style(app: App, name: str | None) -> tuple[Any, Any, Any, Any]:
    """The editor's prompt, negative prompt, Delete and Save buttons for the name picked or typed."""
    style = app.styles.get(name) if name else None
    return (style.prompt if style else gr.skip(), style.negative_prompt if style else gr.skip(),
            gr.update(visible=style is not None), gr.update(visible=bool(name)))


def save_style(app: App, name: str | None, prompt: str, negative: str) -> tuple[Any, str]:
    """Save the style; (Delete button update, message)."""
    name = (name or "").strip()
    if not name:
        return gr.update(visible=False), common.warning_html(["Name the style first"])
    try:
        app.styles.save(Style(name, prompt or "", negative or ""))
    except (OSError, ValueError) as exc:
        return gr.skip(), common.error_html(f"Style not saved: {exc}")
    return gr.update(visible=True), ""


def delete_style(app: App, name: str | None) -> tuple[str, str, str, str]:
    """Delete the style (an empty name, as the confirmation's "cancel" gives, deletes nothing)."""
    if not name:
        return gr.skip(), gr.skip(), gr.skip(), ""
    try:
        app.styles.delete(name)
    except OSError as exc:
        return gr.skip(), gr.skip(), gr.skip(), common.error_html(f"Style not deleted: {exc}")
    return "", "", "", ""


def materialize(app: App, prompt: str, negative: str, names: list[str] | None) -> tuple[str, str, list[str]]:
    """The tab's prompts with the selected styles written into them, and no style selected any more."""
    new_prompt, new_negative = app.styles.apply(tuple(names or ()), prompt or "", negative or "")
    return new_prompt, new_negative, []


def style_choices(app: App) -> Any:
    return gr.update(choices=app.styles.names())


# --- layout -------------------------------------------------------------------------------------------------------

@dataclass
class StylesEditor:
    open: gr.Button
    dialog: gr.Group
    selection: gr.Dropdown
    prompt: gr.Textbox
    negative: gr.Textbox
    save: gr.Button
    delete: gr.Button
    close: gr.Button
    refresh: gr.Button
    materialize: gr.Button
    copy: gr.Button
    message: gr.HTML


def edit_button(tab: str) -> gr.Button:
    """The 🖌️ button, placed by the caller beside the Styles menu."""
    return tool_button(EDIT, f"{tab}_styles_edit_button", "Edit styles")


def build_dialog(app: App, tab: str, open_button: gr.Button) -> StylesEditor:
    """The editor panel (hidden until the 🖌️ button is pressed)."""
    with gr.Group(visible=False, elem_id=f"{tab}_styles_dialog", elem_classes=["popup-dialog"]) as dialog:
        with gr.Row():
            selection = gr.Dropdown(label="Styles", choices=app.styles.names(), value=None, allow_custom_value=True,
                                    info=STYLE_HELP, elem_id=f"{tab}_styles_edit_select", scale=6)
            refresh = tool_button(common.REFRESH, f"refresh_{tab}_styles")
            materialize_button = tool_button(MATERIALIZE, f"{tab}_style_apply_dialog")
            copy = tool_button(COPY, f"{tab}_style_copy")
        prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{tab}_edit_style_prompt")
        negative = gr.Textbox(label="Negative prompt", lines=3, elem_id=f"{tab}_edit_style_neg_prompt")
        with gr.Row():
            save = gr.Button("Save", variant="primary", visible=False, elem_id=f"{tab}_edit_style_save")
            delete = gr.Button("Delete", variant="stop", visible=False, elem_id=f"{tab}_edit_style_delete")
            close = gr.Button("Close", variant="secondary", elem_id=f"{tab}_edit_style_close")
        message = gr.HTML("", elem_id=f"{tab}_edit_style_message")
    return StylesEditor(open_button, dialog, selection, prompt, negative, save, delete, close, refresh,
                        materialize_button, copy, message)


def wire(app: App, ed: StylesEditor, tab_prompt: gr.Textbox, tab_negative: gr.Textbox, menu: gr.Dropdown) -> None:
    """Connect the editor to the tab's prompts and its Styles menu."""
    ed.open.click(lambda: gr.update(visible=True), outputs=[ed.dialog], **QUIET)
    ed.close.click(lambda: gr.update(visible=False), outputs=[ed.dialog], **QUIET)
    ed.selection.change(lambda name: select_style(app, name), inputs=[ed.selection],
                        outputs=[ed.prompt, ed.negative, ed.delete, ed.save], **QUIET)
    ed.save.click(lambda n, p, neg: save_style(app, n, p, neg), inputs=[ed.selection, ed.prompt, ed.negative],
                  outputs=[ed.delete, ed.message], **QUIET).then(
        lambda: (style_choices(app), style_choices(app)), outputs=[menu, ed.selection], **QUIET)
    ed.delete.click(lambda name: delete_style(app, name), inputs=[ed.selection],
                    outputs=[ed.selection, ed.prompt, ed.negative, ed.message],
                    js="(name) => (name && confirm('Delete style ' + name + '?')) ? name : ''", **QUIET).then(
        lambda: (style_choices(app), style_choices(app)), outputs=[menu, ed.selection], **QUIET)
    ed.refresh.click(lambda: (style_choices(app), style_choices(app)), outputs=[menu, ed.selection], **QUIET)
    ed.copy.click(lambda p, n: (p, n), inputs=[tab_prompt, tab_negative], outputs=[ed.prompt, ed.negative], **QUIET)
    ed.materialize.click(lambda p, n, names: materialize(app, p, n, names), inputs=[tab_prompt, tab_negative, menu],
                         outputs=[tab_prompt, tab_negative, menu], **QUIET).then(
        lambda: gr.update(visible=False), outputs=[ed.dialog], **QUIET)
