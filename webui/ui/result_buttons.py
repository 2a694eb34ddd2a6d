"""A1111's result buttons under the txt2img and img2img galleries (its ``create_output_panel``): 📂 opens the tab's
output folder, 💾 Save and 🗃️ Zip write the selected image (or all of them) into the log folder and offer them as
downloads, 🖼️ / 🎨️ / 📐 send the selected image to img2img, inpaint or Extras (wired in :mod:`webui.ui.send_to`).

Element ids are A1111's: ``image_buttons_{tab}`` (the row), ``{tab}_open_folder``, ``save_{tab}``,
``save_zip_{tab}``, ``{tab}_send_to_img2img``, ``{tab}_send_to_inpaint``, ``{tab}_send_to_extras`` and
``download_files_{tab}``.

The images come from the gallery, their infotexts from the tab's results state (``{"infotexts", "grid",
"selected", ...}``, see :func:`webui.ui.txt2img_handlers.results_state`): the gallery shows the grid first when
there is one, and the grid carries the first image's infotext, as in A1111."""

from __future__ import annotations

import csv
import html
import io
import logging
import os
import platform
import subprocess
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from modules import fileio, images, outputs
from modules.app import App
from modules.errors import ValidationError
from modules.infotext import parse_infotext
from webui.ui.common import error_html, user_message, warning_html
from webui.ui.img2img_inputs import load_image

log = logging.getLogger(__name__)

FOLDER = "\U0001f4c2"  # 📂
SAVE = "\U0001f4be"  # 💾
ZIP = "\U0001f5c3\ufe0f"  # 🗃️
SEND_IMG2IMG = "\U0001f5bc\ufe0f"  # 🖼️
SEND_INPAINT = "\U0001f3a8\ufe0f"  # 🎨️
SEND_EXTRAS = "\U0001f4d0"  # 📐
QUIET: dict[str, Any] = {"api_visibility": "private", "queue": False, "show_progress": "hidden"}
NO_IMAGES = "Generate an image first: there is nothing to save"

# A1111 settings the buttons follow that the app's settings do not have: a value in config.json (an A1111 user's)
# is honoured, else A1111's default is used.
A1111_DEFAULTS: dict[str, Any] = {
    "outdir_save": "log/images",  # "Directory for saving images using the Save button"
    "save_selected_only": True,  # "When using 'Save' button, only save a single selected image"
    "save_write_log_csv": True,  # "Write log.csv when saving images using 'Save' button"
    "grid_zip_filename_pattern": "",  # "Archive filename pattern"
    "export_for_4chan": True,  # "Save copy of large images as JPG"
    "img_downscale_threshold": 4.0,  # "File size limit for the above option, MB"
    "target_side_length": 4000,  # "Width/height limit for the above option, in pixels"
    "open_dir_button_choice": "Subdirectory",  # "What directory the [📂] button opens"
    "send_size": True,  # "Send size when sending prompt or image to another interface"
}
ZIP_PATTERN = "[datetime]_[[model_name]]_[seed]-[seed_last]"
LOG_FIELDS = ("prompt", "seed", "width", "height", "sampler", "cfgs", "steps", "filename", "negative_prompt",
              "sd_model_name", "sd_model_hash")
_SAVE_LOCK = threading.Lock()


def option(app: App, key: str) -> Any:
    """The value of an A1111 setting the buttons follow: the app's option when it has one, else the value kept in
    config.json (of A1111's type), else A1111's default (:data:`A1111_DEFAULTS`)."""
    if key in app.settings.options:
        return app.settings[key]
    default = A1111_DEFAULTS[key]
    value = app.settings.stored(key, default)
    try:
        if isinstance(default, bool):
            return value if isinstance(value, bool) else default
        if isinstance(default, (int, float)) and isinstance(value, (int, float)) and not isinstance(value, bool):
            return type(default)(value)
        if isinstance(default, str) and isinstance(value, str) and "\0" not in value:
            return value
    except (TypeError, ValueError, OverflowError):
        pass
    return default


# -- the row ----------------------------------------------------------------------------------------------------
def _tool(symbol: str, elem_id: str, visible: bool = True) -> gr.Button:
    """A small square button like A1111's ``ToolButton`` (as :func:`webui.ui.common.tool_button`)."""
    return gr.Button(symbol, elem_id=elem_id, elem_classes=["sd-tool"], size="sm", variant="secondary",
                     min_width=40, scale=0, visible=visible)


def build_result_row(ui: Any, app: App) -> None:
    """The buttons row and the (hidden) download box, for ``output_column``'s ``below_gallery``; call
    :func:`wire_result_row` once the tab's output column is complete. The send buttons are wired by
    :mod:`webui.ui.send_to`. 📂 is hidden with ``--hide-ui-dir-config``, as in A1111."""
    p, tab = ui.parts, ui.tab
    hide_folder = bool((getattr(app, "launch_flags", None) or {}).get("hide_ui_dir_config"))
    with gr.Row(elem_id=f"image_buttons_{tab}", elem_classes=["image-buttons"]):
        p["open_folder"] = _tool(FOLDER, f"{tab}_open_folder", visible=not hide_folder)
        p["save"] = _tool(SAVE, f"save_{tab}")
        p["save_zip"] = _tool(ZIP, f"save_zip_{tab}")
        p["send_to_img2img"] = _tool(SEND_IMG2IMG, f"{tab}_send_to_img2img")
        p["send_to_inpaint"] = _tool(SEND_INPAINT, f"{tab}_send_to_inpaint")
        p["send_to_extras"] = _tool(SEND_EXTRAS, f"{tab}_send_to_extras")
    p["download_files"] = gr.File(None, file_count="multiple", interactive=False, show_label=False, visible=False,
                                  elem_id=f"download_files_{tab}")
    p["gallery_closed"] = gr.State(False)  # the preview was closed: no image is selected (A1111's index -1)


def wire_result_row(ui: Any, app: App) -> None:
    """📂, 💾 and 🗃️, and whether an image of the gallery is selected (closing the preview deselects it)."""
    p, tab = ui.parts, ui.tab
    gallery, results, closed = p["gallery"], p["results"], p["gallery_closed"]
    gallery.preview_close(lambda: True, outputs=[closed], **QUIET)
    for event in (gallery.preview_open, gallery.select, gallery.change):
        event(lambda: False, outputs=[closed], **QUIET)

    p["open_folder"].click(lambda r: open_output_folder(app, tab, r), inputs=[results], outputs=[p["log"]], **QUIET)
    for button, make_zip in ((p["save"], False), (p["save_zip"], True)):
        def save(gallery: Any, results: dict[str, Any] | None, closed: bool, make_zip: bool = make_zip
                 ) -> tuple[Any, str]:
            return save_handler(app, tab, gallery, results, closed, make_zip)

        button.click(save, inputs=[gallery, results, closed], outputs=[p["download_files"], p["log"]],
                     show_progress="hidden", api_visibility="private")


# -- selection --------------------------------------------------------------------------------------------------
def selected_index(results: dict[str, Any] | None, closed: bool = False) -> int:
    """The gallery index of the selected image, as A1111's ``selected_gallery_index()``: -1 when none is (the
    preview was closed, or nothing was generated)."""
    if closed or not results:
        return -1
    try:
        return max(int(results.get("selected", 0) or 0), -1)
    except (TypeError, ValueError):
        return 0


def send_results(results: dict[str, Any] | None, closed: bool = False) -> dict[str, Any] | None:
    """The results state for a send-to: with no image selected the first one is sent (A1111's
    ``extract_image_from_gallery``)."""
    if results is None:
        return None
    return {**results, "selected": max(selected_index(results, closed), 0)}


def gallery_items(gallery: Any) -> list[Any]:
    """The gallery's images as gradio hands them to an event (``(path, caption)`` pairs), or as tests give them."""
    out = []
    for item in list(gallery or []):
        if isinstance(item, (tuple, list)):
            item = item[0] if item else None
        if isinstance(item, dict):
            item = item.get("image", item)
        if hasattr(item, "path") and not isinstance(item, (str, Path)):
            item = item.path
        if item is not None:
            out.append(item)
    return out


def infotext_at(results: dict[str, Any] | None, index: int) -> str | None:
    """The infotext of the gallery image at ``index`` (the grid, first when shown, has the first image's)."""
    infotexts = list((results or {}).get("infotexts") or [])
    i = max(index - (1 if (results or {}).get("grid") else 0), 0)
    return str(infotexts[i]) if i < len(infotexts) and infotexts[i] is not None else None


# -- 📂 -------------------------------------------------------------------------------------------------------------
def open_folder(path: Path) -> None:
    """Open ``path`` in the desktop's file manager (A1111's ``util.open_folder``). Tests replace this function."""
    path = Path(os.path.normpath(path))
    if platform.system() == "Windows":
        os.startfile(path)  # type: ignore[attr-defined]  # noqa: S606 - Windows only
    elif platform.system() == "Darwin":
        subprocess.Popen(["open", str(path)])  # noqa: S603, S607
    elif "microsoft-standard-WSL2" in platform.uname().release:
        windows_path = subprocess.check_output(["wslpath", "-w", str(path)], text=True).strip()  # noqa: S603, S607
        subprocess.Popen(["explorer.exe", windows_path])  # noqa: S603, S607
    else:
        subprocess.Popen(["xdg-open", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603, S607


def output_folder(app: App, tab: str, results: dict[str, Any] | None = None) -> Path:
    """The folder 📂 opens: the tab's images folder (``outdir_{tab}_samples``); with A1111's default "Subdirectory"
    choice and images generated, the subdirectory the first of them went to (``directories_filename_pattern``)
    when images are saved into one and it exists."""
    out = app.output_options(tab)
    folder = out.samples_dir
    choice = str(option(app, "open_dir_button_choice"))
    if "Sub" in choice and results and out.save_to_dirs:
        infotexts = results.get("infotexts") or [None]
        parsed = parse_infotext(str(infotexts[0])) if infotexts[0] else {}
        sub = folder / outputs.subfolder(out.directories_pattern, _values(parsed, [parsed.get("Seed")]))
        if sub.is_dir():
            return sub
    return folder


def open_output_folder(app: App, tab: str, results: dict[str, Any] | None = None,
                       opener: Callable[[Path], None] | None = None) -> str:
    """📂: open the tab's output folder in the file manager of the machine the server runs on; '' when it was
    opened, else the message (HTML) saying why not: the server is reachable from other machines (the folder would
    open on the server, not for the user), or the folder does not exist yet."""
    if app.options.exposed:
        return warning_html(["The output folder is not opened: the server is reachable from other machines, and it "
                             "would open on the server's screen, not yours"])
    try:
        folder = output_folder(app, tab, results)
    except (OSError, ValueError, KeyError) as exc:
        return error_html(f"The output folder could not be found: {user_message(exc)}")
    if not folder.exists():
        return warning_html([f'Folder "{folder}" does not exist. After you save an image, the folder will be '
                             "created."])
    if not folder.is_dir():
        return warning_html([f'"{folder}" is not a folder; it was not opened'])
    try:
        (opener or open_folder)(folder)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return error_html(f'The folder "{folder}" could not be opened: {user_message(exc)}')
    return ""


# -- 💾 / 🗃️ --------------------------------------------------------------------------------------------------------
@dataclass
class SavedFiles:
    """What Save or Zip wrote: the files to offer (the zip first), their names below the log folder, and the
    folder."""

    paths: list[Path] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    folder: Path | None = None
    zip_path: Path | None = None

    @property
    def message(self) -> str:
        if not self.names:
            return ""
        images = [n for n in self.names if not n.endswith(".txt")]
        text = f"Saved: {self.names[0]}" + (f" and {len(images) - 1} more" if len(images) > 1 else "")
        if self.zip_path is not None:
            text += f", in {self.zip_path.name}"
        return f"<p>{html.escape(text)}</p>"


def _values(parsed: dict[str, object], seeds: list[object]) -> dict[str, object]:
    """File name pattern values from a parsed infotext."""
    return {
        "seed": parsed.get("Seed"), "seeds": seeds, "steps": parsed.get("Steps"), "cfg_scale": parsed.get("CFG scale"),
        "width": parsed.get("Size-1"), "height": parsed.get("Size-2"), "sampler": parsed.get("Sampler"),
        "scheduler": parsed.get("Schedule type"), "model_hash": parsed.get("Model hash"),
        "model_name": parsed.get("Model"), "prompt": parsed.get("Prompt"),
        "negative_prompt": parsed.get("Negative prompt"), "clip_skip": parsed.get("Clip skip"),
        "denoising_strength": parsed.get("Denoising strength"),
    }


def _update_logfile(path: Path) -> None:
    """A1111's ``update_logfile``: an older log.csv gets the current header, its rows padded."""
    with open(path, encoding="utf8", newline="") as f:
        rows = list(csv.reader(f))
    if not rows or len(rows[0]) == len(LOG_FIELDS):
        return
    rows[0] = list(LOG_FIELDS)
    for row in rows[1:]:
        row.extend([""] * (len(LOG_FIELDS) - len(row)))
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    fileio.atomic_write_text(path, buffer.getvalue())


def _write_log(root: Path, parsed: dict[str, object], filename: str) -> None:
    path = root / "log.csv"
    if path.exists():
        _update_logfile(path)
    with open(path, "a", encoding="utf8", newline="") as f:
        writer = csv.writer(f)
        if f.tell() == 0:
            writer.writerow(LOG_FIELDS)
        cfg = parsed.get("CFG scale", "")
        if isinstance(cfg, int) and not isinstance(cfg, bool):
            cfg = float(cfg)  # A1111 writes the form's value: 7.0
        writer.writerow([parsed.get("Prompt", ""), parsed.get("Seed", ""), parsed.get("Size-1", ""),
                         parsed.get("Size-2", ""), parsed.get("Sampler", ""), cfg,
                         parsed.get("Steps", ""), filename, parsed.get("Negative prompt", ""),
                         parsed.get("Model", ""), parsed.get("Model hash", "")])


def _export_jpeg(app: App, image: Image.Image, path: Path, infotext: str | None) -> None:
    """A1111's ``export_for_4chan``: a JPG copy next to an image above the size limits (downscaled when a side is
    over ``target_side_length``)."""
    if not option(app, "export_for_4chan") or path.suffix.lower() in (".jpg", ".jpeg"):
        return
    side = float(option(app, "target_side_length"))
    oversize = image.width > side or image.height > side
    if not oversize and path.stat().st_size <= float(option(app, "img_downscale_threshold")) * 1024 * 1024:
        return
    if oversize:
        scale = side / max(image.width, image.height)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS)
    try:
        data = images.encode_image(image, "jpg", infotext, quality=int(app.settings["jpeg_quality"]))
    except ValueError as exc:  # beyond JPEG's limits: no copy
        log.warning("no JPG copy of %s: %s", path.name, exc)
        return
    fileio.atomic_write_bytes(path.with_suffix(".jpg"), data)


def save_files(app: App, tab: str, gallery: Any, results: dict[str, Any] | None, index: int,
               make_zip: bool = False) -> SavedFiles:
    """A1111's ``save_files``: the image at gallery ``index`` (when ``save_selected_only`` is on and it is not the
    grid) or all of them, into the Save folder (``outdir_save``, A1111's ``log/images``; a subfolder by
    ``directories_filename_pattern`` with ``use_save_to_dirs_for_ui``), in the samples format and file name pattern,
    each with its infotext; a ``log.csv`` row (``save_write_log_csv``); with ``make_zip`` one .zip of them (named by
    ``grid_zip_filename_pattern``) in the Save folder, first in the list. Raises ``ValidationError`` when there is
    no image, ``OSError`` when a file cannot be written."""
    items = gallery_items(gallery)
    if not items:
        raise ValidationError(NO_IMAGES)
    first_image = 1 if (results or {}).get("grid") else 0
    indices = list(range(len(items)))
    if index >= len(items):
        index = -1
    if index > -1 and option(app, "save_selected_only") and index >= first_image:
        indices = [index]
    root = app.paths.data_path(str(option(app, "outdir_save")))
    out = app.output_options(tab)
    fmt = str(app.settings["samples_format"])
    saved = SavedFiles(folder=root)
    entries: list[tuple[int, Image.Image, str | None, dict[str, object]]] = []
    for i in indices:
        image = load_image(items[i], "gallery image")
        if image is None:
            continue
        info = infotext_at(results, i)
        entries.append((i, image, info, parse_infotext(info) if info else {}))
    if not entries:
        raise ValidationError(NO_IMAGES)
    seeds = [parsed.get("Seed") for _, _, _, parsed in entries]
    with _SAVE_LOCK:
        root.mkdir(parents=True, exist_ok=True)
        for _, image, info, parsed in entries:
            values = {**_values(parsed, seeds), "max_prompt_words": out.max_prompt_words}
            folder = root
            if option(app, "use_save_to_dirs_for_ui"):
                folder = root / outputs.subfolder(out.directories_pattern, values)
            path = outputs.save_image(image, folder, fmt, info if out.enable_pnginfo else None,
                                      pattern=out.filename_pattern or "[seed]", values=values,
                                      quality=out.jpeg_quality)
            saved.paths.append(path)
            saved.names.append(path.relative_to(root).as_posix())
            _export_jpeg(app, image, path, info if out.enable_pnginfo else None)
            if out.save_txt and info is not None:
                txt = outputs.write_infotext_file(path, info)
                saved.paths.append(txt)
                saved.names.append(txt.relative_to(root).as_posix())
        if option(app, "save_write_log_csv"):
            _write_log(root, entries[0][3], saved.names[0])
        if make_zip:
            saved.zip_path = _write_zip(app, root, saved, entries[0][3], seeds)
            saved.paths.insert(0, saved.zip_path)
    return saved


def _write_zip(app: App, root: Path, saved: SavedFiles, parsed: dict[str, object], seeds: list[object]) -> Path:
    values = {**_values(parsed, seeds), "seeds": [s for s in seeds if s is not None]}
    pattern = str(option(app, "grid_zip_filename_pattern") or ZIP_PATTERN)
    name = outputs.sanitize_filename_part(outputs.FilenameGenerator(values).apply(pattern), replace_spaces=False)
    path = root / f"{name or 'images'}.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for file, arcname in zip(saved.paths, saved.names, strict=True):
            archive.writestr(arcname, file.read_bytes())
    fileio.atomic_write_bytes(path, buffer.getvalue())
    return path


def downloadable(paths: list[Path]) -> list[str]:
    """The files as the download box may serve them: copied into gradio's upload folder, which it always serves
    (the Save folder need not be among the server's allowed paths)."""
    try:
        from gradio.processing_utils import save_file_to_cache
        from gradio.utils import get_upload_folder
    except ImportError:  # another gradio: let it check the paths itself
        return [str(p) for p in paths]
    return [save_file_to_cache(p, get_upload_folder()) for p in paths]


def save_handler(app: App, tab: str, gallery: Any, results: dict[str, Any] | None, closed: bool, make_zip: bool
                 ) -> tuple[Any, str]:
    """💾 / 🗃️: (the download box's update, the log message). Never raises: every problem is a message."""
    try:
        saved = save_files(app, tab, gallery, results, selected_index(results, closed), make_zip)
        files = downloadable(saved.paths)
    except ValidationError as exc:
        return gr.skip(), warning_html([str(exc)])
    except OSError as exc:
        log.warning("Save: %s", exc)
        return gr.skip(), error_html(f"The images could not be saved: {exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - the UI shows a message; the traceback goes to the log
        log.exception("Save failed")
        return gr.skip(), error_html(f"The images could not be saved: {user_message(exc)}")
    return gr.update(value=files, visible=True), saved.message

