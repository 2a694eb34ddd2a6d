"""A1111's "Script" dropdown at the bottom of txt2img's and img2img's parameters: "None" and every selectable
script of the tab, each script's controls shown only while it is selected. On Generate, the selected script and its
controls' values (in the controls' order, which is A1111's ``script_args`` order) go with the job."""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules.scripts.base import Control, Script
from modules.scripts.registry import ScriptCall

NONE = "None"


def _key(script: Script, index: int) -> str:
    return f"script:{script.name}:{index}"


def component(control: Control, elem_id: str) -> Any:
    """The Gradio component of one script control."""
    c = control
    common: dict[str, Any] = {"label": control.label, "elem_id": elem_id, "visible": control.visible}
    choices = c.choice_list()
    if c.kind == "checkbox":
        return gr.Checkbox(bool(c.value), **common)
    if c.kind == "slider":
        top = c.maximum if c.maximum is not None else 100
        return gr.Slider(c.minimum or 0, top, value=c.value, step=c.step, **common)
    if c.kind == "number":
        return gr.Number(c.value, minimum=c.minimum, maximum=c.maximum, step=c.step or 1, **common)
    if c.kind == "dropdown":
        value = c.value if not c.multiselect else list(c.value or [])
        return gr.Dropdown(choices or [], value=value, type="index" if c.index else "value",
                           multiselect=c.multiselect, allow_custom_value=False, **common)
    if c.kind == "radio":
        return gr.Radio(choices or [], value=c.value, type="index" if c.index else "value", **common)
    if c.kind == "checkboxgroup":
        return gr.CheckboxGroup(choices or [], value=list(c.value or []), **common)
    if c.kind == "html":
        return gr.HTML(str(c.value or ""), elem_id=elem_id, visible=c.visible)
    if c.kind == "state":
        return gr.State(c.value)
    return gr.Textbox(str(c.value or ""), lines=max(1, c.lines), **common)


def build_scripts(fields: dict[str, Any], scripts: list[Script], kind: str) -> list[str]:
    """The dropdown and each script's controls (hidden until chosen) into ``fields``; their field names."""
    fields["script_name"] = gr.Dropdown([NONE, *(s.title for s in scripts)], value=NONE, label="Script",
                                        elem_id=f"{kind}_script")
    names, groups = ["script_name"], []
    for n, script in enumerate(scripts):
        with gr.Group(visible=False, elem_id=f"{kind}_script_{n}") as group:
            for i, control in enumerate(script.controls(kind)):
                fields[_key(script, i)] = component(control, control.elem_id or f"{kind}_script_{n}_{i}")
                names.append(_key(script, i))
        groups.append(group)

        _link_choices(fields, script, kind)

    def show(title: str | None) -> list[Any]:
        return [gr.update(visible=title == s.title) for s in scripts]

    fields["script_name"].change(show, inputs=[fields["script_name"]], outputs=groups, show_progress="hidden",
                                 queue=False, api_visibility="private")
    return names


def _link_choices(fields: dict[str, Any], script: Script, kind: str) -> None:
    """A dropdown shown in place of its text box while its source's value offers choices (X/Y/Z's axis values)."""
    for source, text, dropdown in script.linked_choices(kind):
        def update(value: Any, source: int = source) -> tuple[Any, Any]:
            choices = script.choices_for(kind, source, value)
            if choices is None:
                return gr.update(visible=True), gr.update(visible=False, choices=[], value=[])
            return gr.update(visible=False), gr.update(visible=True, choices=choices, value=[])

        fields[_key(script, source)].change(update, inputs=[fields[_key(script, source)]],
                                            outputs=[fields[_key(script, text)], fields[_key(script, dropdown)]],
                                            show_progress="hidden", queue=False, api_visibility="private")


def script_call(app: Any, values: dict[str, Any], kind: str) -> ScriptCall | None:
    """The script the form selects, with its controls' values (None for "None")."""
    title = values.get("script_name")
    if not title or title == NONE:
        return None
    script = app.scripts.find(str(title), kind)
    if script is None:
        return app.scripts.selected(str(title), [], kind)  # type: ignore[no-any-return]  # raises, naming it
    count = len(script.controls(kind))
    args = [values.get(_key(script, i)) for i in range(count)]
    return app.scripts.selected(script.name, args, kind)  # type: ignore[no-any-return]
