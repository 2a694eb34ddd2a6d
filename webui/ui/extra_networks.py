"""The extra-networks panel of the txt2img and img2img tabs: A1111's cards of Textual Inversion, Hypernetworks,
Checkpoints and Lora, shown and hidden by the prompt row's 🎴 button.

Each page is a ``gr.HTML`` of cards built here (names, descriptions and paths escaped) with a small script that
searches, sorts and picks a folder in the browser, as A1111's ``extraNetworks.js``, and sends a card's key to the
server when it is clicked. The server finds the card among the files it lists now (a key from the page never reaches
the file system) and returns the prompt with the card's text added or taken out; a checkpoint card switches the model
as the checkpoint dropdown does. Previews travel inside the page as thumbnails, so no route serves model folders.
The metadata editor writes ``name.json`` beside the network file (only administrators, when auth is on).
"""

from __future__ import annotations

import datetime
import html
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.app import ADMIN_ONLY, App
from modules.networks import user_metadata as um
from modules.networks.user_metadata import PAGES, Card, Thumbnails, find_card, list_cards
from webui.ui.common import REFRESH, error_html, tool_button, user_message
from webui.ui.quicksettings import select_checkpoint
from webui.ui.txt2img_handlers import request_user

if TYPE_CHECKING:
    from webui.ui.generation_rows import GenerationUI

SYMBOL = "\U0001f3b4"  # 🎴 A1111's "Show/hide extra networks"
TITLES = {"textual_inversion": "Textual Inversion", "hypernetworks": "Hypernetworks", "checkpoints": "Checkpoints",
          "lora": "Lora"}
SORTS = (("path", "Path"), ("name", "Name"), ("date_created", "Date Created"), ("date_modified", "Date Modified"))
QUIET: dict[str, Any] = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}

CSS = """
.sd-en-controls { display: flex; gap: 0.5em; align-items: center; margin: 0.3em 0; }
.sd-en-search { flex: 1; max-width: 24em; padding: 0.3em 0.5em; }
.sd-en-dirs { display: flex; flex-wrap: wrap; gap: 0.3em; margin-bottom: 0.4em; }
.sd-en-dir { font-size: 0.85em; padding: 0.1em 0.6em; border-radius: 4px; border: 1px solid rgba(127,127,127,0.4); }
.sd-en-cards { display: flex; flex-wrap: wrap; gap: 0.6em; max-height: 34em; overflow-y: auto; }
.card { position: relative; width: 10em; height: 14em; border-radius: 8px; overflow: hidden; cursor: pointer;
        background: rgba(127,127,127,0.25); box-shadow: 0 0 3px rgba(0,0,0,0.4); }
.card .preview { width: 100%; height: 100%; object-fit: cover; }
.card .actions { position: absolute; bottom: 0; left: 0; right: 0; padding: 0.4em; color: white;
                 background: linear-gradient(transparent, rgba(0,0,0,0.85)); text-shadow: 0 0 3px black; }
.card .name { display: block; font-weight: bold; word-break: break-word; }
.card .description { display: block; font-size: 0.8em; max-height: 4.5em; overflow: hidden; }
.card .edit-button { position: absolute; top: 0.2em; right: 0.3em; display: none; font-size: 1.2em; }
.card:hover .edit-button { display: block; }
.sd-en-hidden { display: none !important; }
"""

# The page's script (gradio's js_on_load: `element`, `trigger`, `watch`); TAB and PAGE are set before it.
JS = """
let term = "", shownTerm = "", sortKey = "path", descending = false;
const find = (cls) => element.querySelector("." + cls);
const apply = () => {
  const box = find("sd-en-cards");
  if (!box) return;
  const cards = Array.from(box.querySelectorAll(".card"));
  for (const c of cards) {
    const hidden = !c.dataset.search.includes(term) || (c.hasAttribute("data-search-only") && term.length < 4);
    c.classList.toggle("sd-en-hidden", hidden);
  }
  const attr = "data-sort-" + sortKey;
  cards.sort((a, b) => {
    const x = a.getAttribute(attr) || "", y = b.getAttribute(attr) || "";
    if (x !== "" && y !== "" && !isNaN(x) && !isNaN(y)) return Number(x) - Number(y);
    return x < y ? -1 : (x > y ? 1 : 0);
  });
  if (descending) cards.reverse();
  for (const c of cards) box.appendChild(c);
};
const restore = () => {
  const search = find("sd-en-search"), sort = find("sd-en-sort"), dir = find("sd-en-sort-dir");
  if (search) search.value = shownTerm;
  if (sort) sort.value = sortKey;
  if (dir) {
    dir.dataset.sortdir = descending ? "Descending" : "Ascending";
    dir.textContent = descending ? "\\u2193" : "\\u2191";
  }
};
const setTerm = (text) => { shownTerm = text; term = text.toLowerCase(); };
element.addEventListener("input", (e) => {
  if (e.target.classList.contains("sd-en-search")) { setTerm(e.target.value); apply(); }
});
element.addEventListener("change", (e) => {
  if (e.target.classList.contains("sd-en-sort")) { sortKey = e.target.value; apply(); }
});
element.addEventListener("click", (e) => {
  const t = e.target;
  const folder = t.closest(".sd-en-dir");
  if (folder) { setTerm(folder.dataset.dir); restore(); apply(); return; }
  if (t.closest(".sd-en-sort-dir")) { descending = !descending; restore(); apply(); return; }
  const card = t.closest(".card");
  if (!card) return;
  if (t.closest(".edit-button")) { trigger("edit", {page: PAGE, key: card.dataset.key}); return; }
  const negative = Boolean((window.sdExtraNetworksNegative || {})[TAB]);
  trigger("click", {page: PAGE, key: card.dataset.key, negative: negative});
});
watch("value", () => { restore(); apply(); });
restore();
apply();
"""

# Which prompt box of each tab had the focus last (A1111's activePromptTextarea), followed from the page's start by
# a hidden element outside the panel: an embedding goes to the negative prompt when that box was the last.
FOCUS_JS = """
if (!window.sdExtraNetworksNegative) {
  window.sdExtraNetworksNegative = {};
  document.addEventListener("focusin", (e) => {
    const t = e.target;
    if (!t || !t.closest) return;
    for (const tab of ["txt2img", "img2img"]) {
      if (t.closest("#" + tab + "_neg_prompt")) window.sdExtraNetworksNegative[tab] = true;
      else if (t.closest("#" + tab + "_prompt")) window.sdExtraNetworksNegative[tab] = false;
    }
  });
}
"""


def page_script(tab: str, page: str) -> str:
    return f"const TAB = {json.dumps(tab)}, PAGE = {json.dumps(page)};\n{JS}"


# --- rendering -------------------------------------------------------------------------------------------------------


def _attr(value: object) -> str:
    return html.escape(str(value), quote=True)


def card_html(card: Card, thumbnails: Thumbnails) -> str:
    """One card (A1111's ``extra-networks-card.html`` classes): preview or placeholder, name, description, the
    edit button, and what the script searches and sorts by."""
    preview = um.find_preview(card.path, card.root)
    uri = thumbnails.preview(preview) if preview is not None else None
    uri = uri or thumbnails.cover(card.path, card.metadata)
    image = f'<img class="preview" src="{uri}" alt="" loading="lazy">' if uri else '<div class="placeholder"></div>'
    created, modified = card.times()
    description = card.description
    data = {"key": card.key, "name": card.name, "search": f"{card.search_terms} {description}".lower(),
            "sort-path": card.index, "sort-name": card.path.name.lower(), "sort-date_created": int(created),
            "sort-date_modified": int(modified)}
    attrs = " ".join(f'data-{k}="{_attr(v)}"' for k, v in data.items())
    hidden = " data-search-only" if card.search_only else ""
    return (f'<div class="card" {attrs}{hidden}>{image}'
            '<div class="button-row"><span class="edit-button card-button" title="Edit metadata">\U0001f6e0\ufe0f'
            f'</span></div><div class="actions"><span class="name">{html.escape(card.name)}</span>'
            f'<span class="description">{html.escape(description)}</span></div></div>')


def folders(cards: list[Card]) -> list[str]:
    """The sub-folders holding cards (and their parents), as A1111's folder buttons name them: ``sub/``."""
    found: set[str] = set()
    for card in cards:
        parts = card.relative.split("/")[:-1]
        found.update("/".join(parts[:n]) + "/" for n in range(1, len(parts) + 1))
    return sorted(found, key=str.lower)


def page_html(app: App, tab: str, page: str, thumbnails: Thumbnails) -> str:
    """A page: search box, sort order and direction, folder buttons, then the cards (or where to put files)."""
    cards = list_cards(app, page)
    full = f"{tab}_{page}"
    sorts = "".join(f'<option value="{key}">{label}</option>' for key, label in SORTS)
    dirs = folders(cards)
    buttons = "".join(f'<button class="sd-en-dir" data-dir="{_attr(d)}">{html.escape(d or "all")}</button>'
                      for d in ([""] + dirs if dirs else []))
    body = "".join(card_html(c, thumbnails) for c in cards) or _no_cards(app, page)
    return (f'<div class="sd-en-page" id="{full}_pane"><div class="sd-en-controls" id="{full}_controls">'
            f'<input type="search" class="sd-en-search" id="{full}_extra_search" placeholder="Search">'
            f'<select class="sd-en-sort" id="{full}_extra_sort" title="Sort by">{sorts}</select>'
            f'<button class="sd-en-sort-dir" id="{full}_extra_sort_dir" title="Sort direction"></button></div>'
            f'<div class="sd-en-dirs" id="{full}_dirs">{buttons}</div>'
            f'<div class="sd-en-cards" id="{full}_cards">{body}</div></div>')


def _no_cards(app: App, page: str) -> str:
    """A1111's "Nothing here" with the page's folders, named below the data folder when they are inside it."""
    folders_ = {"lora": app.networks.loras.registry.dirs, "textual_inversion": app.networks.embeddings.dirs,
                "hypernetworks": [um.hypernetwork_dir(app)], "checkpoints": app.paths.ckpt_dirs}[page]
    names = []
    for folder in folders_:
        name = folder.relative_to(app.paths.data_dir) if folder.is_relative_to(app.paths.data_dir) else folder
        names.append(f"<li>{html.escape(str(name))}</li>")
    return ("<div class='nocards'><h3>Nothing here. Add some content to the following directories:</h3>"
            f"<ul>{''.join(names)}</ul></div>")


# --- the panel -------------------------------------------------------------------------------------------------------


@dataclass
class Panel:
    """One tab's panel: its pages by name, the editor's fields, and the card thumbnails it keeps."""

    tab: str
    app: App
    thumbnails: Thumbnails = field(default_factory=Thumbnails)
    parts: dict[str, Any] = field(default_factory=dict)
    pages: dict[str, Any] = field(default_factory=dict)
    editor: dict[str, Any] = field(default_factory=dict)

    def render(self, only: str | None = None) -> list[Any]:
        """Every page's HTML in :data:`PAGES` order (``only``: that page, the others left as they are)."""
        return [page_html(self.app, self.tab, page, self.thumbnails) if only in (None, page) else gr.skip()
                for page in PAGES]


def build_panel(ui: GenerationUI, app: App) -> Panel:
    """The hidden panel below the prompt row, wired to the tab's 🎴 button and prompt boxes."""
    tab = ui.tab
    panel = Panel(tab, app)
    p = panel.parts
    gr.HTML("", js_on_load=FOCUS_JS, visible="hidden", elem_id=f"{tab}_extra_networks_focus")
    with gr.Column(visible=False, elem_id=f"{tab}_extra_networks_panel") as p["column"]:
        with gr.Row(equal_height=False):
            p["status"] = gr.HTML("", elem_id=f"{tab}_extra_networks_status")
            p["refresh"] = tool_button(REFRESH, f"{tab}_extra_refresh")
        with gr.Tabs(elem_id=f"{tab}_extra_tabs", elem_classes=["extra-networks"]):
            for page in PAGES:
                with gr.Tab(TITLES[page], id=f"{tab}_{page}", elem_id=f"{tab}_{page}"):
                    panel.pages[page] = gr.HTML("", elem_id=f"{tab}_{page}_cards_html", css_template=CSS,
                                                js_on_load=page_script(tab, page), apply_default_css=False)
        _editor(panel)
    p["shown"], p["loaded"] = gr.State(False), gr.State(False)
    _wire(panel, ui)
    ui.parts["extra_networks_panel"] = panel
    return panel


def _editor(panel: Panel) -> None:
    """A1111's "Edit metadata" dialog, shown below the pages: description and notes; LoRA's own fields."""
    e, tab = panel.editor, panel.tab
    with gr.Group(visible=False, elem_id=f"{tab}_edit_user_metadata") as e["box"]:
        e["title"] = gr.HTML("", elem_id=f"{tab}_edit_user_metadata_name")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2):
                e["description"] = gr.Textbox(label="Description", lines=4, elem_id=f"{tab}_edit_user_metadata_desc")
                with gr.Column(visible=False) as e["lora"]:
                    e["sd_version"] = gr.Dropdown(list(um.SD_VERSIONS), value="Unknown",
                                                  label="Stable Diffusion version", elem_id=f"{tab}_edit_sd_version")
                    e["activation"] = gr.Textbox(label="Activation text", info="Will be added to prompt along with "
                                                 "Lora", elem_id=f"{tab}_edit_user_metadata_activation_text")
                    e["weight"] = gr.Slider(0.0, 2.0, value=0.0, step=0.01, label="Preferred weight",
                                            info="Set to 0 to disable", elem_id=f"{tab}_edit_user_metadata_weight")
                    e["negative"] = gr.Textbox(label="Negative prompt", info="Will be added to negative prompts",
                                               elem_id=f"{tab}_edit_user_metadata_negative_text")
                e["notes"] = gr.Textbox(label="Notes", lines=4, elem_id=f"{tab}_edit_user_metadata_notes")
            with gr.Column(scale=1, min_width=160):
                e["preview"] = gr.HTML("")
                e["filedata"] = gr.HTML("")
        with gr.Row():
            e["cancel"] = gr.Button("Cancel", elem_id=f"{tab}_edit_user_metadata_cancel")
            e["save"] = gr.Button("Save", variant="primary", elem_id=f"{tab}_edit_user_metadata_save")
    e["editing"] = gr.State(None)


def _event_card(app: App, evt: gr.EventData) -> Card | None:
    """The card an event from a page names, looked up among the listed files."""
    data = evt._data if isinstance(evt._data, dict) else {}
    page, key = data.get("page"), data.get("key")
    return find_card(app, page, key) if isinstance(page, str) and isinstance(key, str) else None


def pretty_bytes(size: float) -> str:
    """A1111's file sizes: "136B", "2KB", "143MB"."""
    for unit in ("", "K", "M", "G", "T", "P", "E", "Z"):
        if abs(size) < 1024:
            return f"{size:.0f}{unit}B"
        size /= 1024
    return f"{size:.0f}YB"


def _file_table(card: Card) -> str:
    """A1111's file table of the editor: file name (below its folder), size, hash, modification time."""
    try:
        st = card.path.stat()
        rows = [("Filename:", card.relative), ("File size:", pretty_bytes(st.st_size)),
                ("Hash:", card.hash[:10] if card.page == "checkpoints" else card.hash[:12]),
                ("Modified:", datetime.datetime.fromtimestamp(st.st_mtime).strftime("%Y-%m-%d %H:%M"))]
    except OSError as exc:
        return error_html(user_message(exc))
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows if v)
    return f'<table class="file-metadata">{cells}</table>'


def editor_values(panel: Panel, card: Card) -> list[Any]:
    """What the editor shows for ``card`` (outputs of :func:`_wire`'s open event, in order)."""
    user = um.read_user_metadata(card.path)
    description = str(user.get(um.DESCRIPTION, "")) if user else card.description
    weight = user.get(um.PREFERRED_WEIGHT, 0.0)
    preview = um.find_preview(card.path, card.root)
    uri = (panel.thumbnails.preview(preview) if preview else None) or panel.thumbnails.cover(card.path, card.metadata)
    version = um.lora_version(card.metadata, user) if card.page == "lora" else "Unknown"
    return [(card.page, card.key), gr.update(visible=True), f"<h3>{html.escape(card.name)}</h3>", description,
            gr.update(visible=card.page == "lora"), version, str(user.get(um.ACTIVATION_TEXT, "") or ""),
            _weight(weight) if isinstance(weight, (int, float)) and 0 <= weight <= 2 else 0.0,
            str(user.get(um.NEGATIVE_TEXT, "") or ""), str(user.get(um.NOTES, "") or ""),
            f'<img src="{uri}" alt="" style="max-width:100%">' if uri else "", _file_table(card)]


def _weight(value: Any) -> float:
    """The editor's preferred weight, to its slider's step; 0 (the default multiplier) for anything else."""
    try:
        weight = float(value or 0.0)
    except (TypeError, ValueError):
        return 0.0
    return round(weight, 2) if math.isfinite(weight) else 0.0


def save_metadata(app: App, editing: Any, values: dict[str, Any], user: str | None) -> tuple[str, str | None]:
    """Write the editor's values beside the card's file; (message HTML, the page to render again or None)."""
    if not app.is_admin(user):
        return error_html(ADMIN_ONLY), None
    page, key = editing if isinstance(editing, (list, tuple)) and len(editing) == 2 else (None, None)
    card = find_card(app, str(page), str(key))
    if card is None:
        return error_html("The network is gone: press refresh"), None
    text = {name: str(values.get(name) or "") for name in ("description", "activation", "negative", "notes")}
    changes: dict[str, Any] = {um.DESCRIPTION: text["description"]}
    if card.page == "lora":  # A1111's order of the keys
        version = values.get("sd_version")
        changes.update({um.SD_VERSION: version if version in um.SD_VERSIONS else "Unknown",
                        um.ACTIVATION_TEXT: text["activation"], um.PREFERRED_WEIGHT: _weight(values.get("weight")),
                        um.NEGATIVE_TEXT: text["negative"]})
    changes[um.NOTES] = text["notes"]
    try:
        um.write_user_metadata(card.path, changes)
    except (OSError, ValueError) as exc:
        return error_html(f"Could not save {um.metadata_file(card.path).name}: {user_message(exc)}"), None
    return "", card.page


def card_click(app: App, card: Card | None, prompt: str, negative_prompt: str, to_negative: bool,
               user: str | None) -> tuple[Any, Any, str]:
    """(prompt, negative prompt, status) after a click on ``card``: its text toggled in the prompt (an embedding's
    in the negative prompt when that box had the focus last); a checkpoint card switches the model instead."""
    if card is None:
        return gr.skip(), gr.skip(), error_html("The network is gone: press refresh")
    if card.page == "checkpoints":
        return gr.skip(), gr.skip(), select_checkpoint(app, card.insert, user)
    settings = app.settings.snapshot()
    default = float(settings.get("extra_networks_default_multiplier", um.DEFAULT_MULTIPLIER))
    separator = str(settings.get("extra_networks_add_text_separator", um.SEPARATOR))
    if card.page == "lora":
        text, negative_text = um.lora_texts(card.insert, card.user, default)
    else:
        text = um.hypernetwork_text(card.insert, default) if card.page == "hypernetworks" else card.insert
        negative_text = ""
    if negative_text:
        return (um.toggle_network_text(prompt or "", text, separator),
                um.toggle_network_text(negative_prompt or "", negative_text, separator, negative=True), "")
    if to_negative and card.page == "textual_inversion":
        return gr.skip(), um.toggle_network_text(negative_prompt or "", text, separator), ""
    return um.toggle_network_text(prompt or "", text, separator), gr.skip(), ""


def _wire(panel: Panel, ui: GenerationUI) -> None:
    """The 🎴 button shows and hides the panel (the pages are built the first time it opens); refresh rescans."""
    p, app = panel.parts, panel.app
    pages = [panel.pages[page] for page in PAGES]

    def toggle(shown: bool, loaded: bool) -> list[Any]:
        show = not shown
        return [show, loaded or show, gr.update(visible=show),
                *(panel.render() if show and not loaded else [gr.skip()] * len(PAGES))]

    ui.parts["extra_networks"].click(toggle, inputs=[p["shown"], p["loaded"]],
                                     outputs=[p["shown"], p["loaded"], p["column"], *pages], **QUIET)

    def refresh() -> list[Any]:
        app.registry.refresh()
        app.networks.refresh()
        return ["", *panel.render()]

    p["refresh"].click(refresh, outputs=[p["status"], *pages], **QUIET)
    _wire_cards(panel, ui)
    _wire_editor(panel)


def _wire_cards(panel: Panel, ui: GenerationUI) -> None:
    """A card's click changes the tab's prompts (or the model); its edit button opens the editor."""
    p, e, app = panel.parts, panel.editor, panel.app
    prompts = [ui.fields["prompt"], ui.fields["negative_prompt"]]
    editor_outputs = [e["editing"], e["box"], e["title"], e["description"], e["lora"], e["sd_version"],
                      e["activation"], e["weight"], e["negative"], e["notes"], e["preview"], e["filedata"]]

    def clicked(prompt: str, negative: str, evt: gr.EventData, request: gr.Request) -> tuple[Any, Any, str]:
        to_negative = bool(evt._data.get("negative")) if isinstance(evt._data, dict) else False
        return card_click(app, _event_card(app, evt), prompt, negative, to_negative, request_user(request))

    def open_editor(evt: gr.EventData) -> list[Any]:
        card = _event_card(app, evt)
        if card is None:
            return [gr.skip()] * len(editor_outputs) + [error_html("The network is gone: press refresh")]
        return [*editor_values(panel, card), ""]

    for page in PAGES:
        panel.pages[page].click(clicked, inputs=prompts, outputs=[*prompts, p["status"]], **QUIET)
        panel.pages[page].edit(open_editor, outputs=[*editor_outputs, p["status"]], **QUIET)


def _wire_editor(panel: Panel) -> None:
    """Save writes the metadata file, closes the editor and redraws the card's page; cancel closes it."""
    p, e, app = panel.parts, panel.editor, panel.app
    fields = ["description", "sd_version", "activation", "weight", "negative", "notes"]

    def save(editing: Any, request: gr.Request, *values: Any) -> list[Any]:
        message, page = save_metadata(app, editing, dict(zip(fields, values, strict=True)), request_user(request))
        return [message, gr.update(visible=page is None), *(panel.render(page) if page else [gr.skip()] * len(PAGES))]

    e["save"].click(save, inputs=[e["editing"], *(e[name] for name in fields)],
                    outputs=[p["status"], e["box"], *(panel.pages[page] for page in PAGES)], **QUIET)
    e["cancel"].click(lambda: gr.update(visible=False), outputs=[e["box"]], **QUIET)
