"""The result buttons under the txt2img and img2img galleries (A1111's output panel), their handlers called directly
(no browser): 💾 / 🗃️ write the images with their infotext into log/images, 📂 opens the output folder only on a
local server, 🖼️ / 🎨️ / 📐 put the selected image into the img2img tab or Extras."""

from __future__ import annotations

import csv
import dataclasses
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import running_app


@pytest.fixture(scope="module")
def app(tmp_path_factory, model_store):
    with running_app(tmp_path_factory.mktemp("result-buttons-data"), model_store, ("tiny",)) as app:
        yield app


@pytest.fixture(scope="module")
def generated(app, tmp_path_factory):
    """A txt2img batch of two (gallery: grid, image 1, image 2) as gradio hands the gallery to an event."""
    from webui.ui.txt2img_handlers import Txt2ImgHandlers, default_values

    values = default_values(app)
    values.update(prompt="a lighthouse", negative_prompt="fog", width=64, height=64, steps=2, seed=5, batch_size=2,
                  sampler_name="Euler a")
    last = list(Txt2ImgHandlers(app).generate_values(values))[-1]
    assert last.results["grid"] and len(last.gallery) == 3 and len(last.results["infotexts"]) == 2
    folder = tmp_path_factory.mktemp("gallery")
    gallery = []
    for i, image in enumerate(last.gallery):
        path = folder / f"g{i}.png"
        image.save(path)  # as the gallery serves them: PNG without the infotext
        gallery.append((str(path), None))
    return {"gallery": gallery, "results": last.results, "values": values, "images": last.gallery}


@pytest.fixture
def save_dir(app):
    import shutil

    folder = app.paths.data_dir / "log" / "images"
    shutil.rmtree(folder, ignore_errors=True)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def infotext_of(path: Path) -> str | None:
    from modules.images import read_parameters

    with Image.open(path) as image:
        return read_parameters(image)


def test_save_selected_image_writes_it_with_its_infotext_and_a_log_row(app, generated, save_dir):
    from webui.ui.result_buttons import save_handler

    results = {**generated["results"], "selected": 2}  # the second image (the grid is first in the gallery)
    update, message = save_handler(app, "txt2img", generated["gallery"], results, False, False)
    files = sorted(save_dir.glob("*.png"))
    assert len(files) == 1 and files[0].name.endswith("-6.png")  # [seed]: the second image's seed
    assert infotext_of(files[0]) == results["infotexts"][1]
    assert np.array_equal(px(Image.open(files[0])), px(generated["images"][2]))
    assert message == f"<p>Saved: {files[0].name}</p>"
    assert update["visible"] is True and len(update["value"]) == 1
    assert Path(update["value"][0]).read_bytes() == files[0].read_bytes()  # the download is the saved file
    with open(save_dir / "log.csv", encoding="utf8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["prompt", "seed", "width", "height", "sampler", "cfgs", "steps", "filename", "negative_prompt",
                       "sd_model_name", "sd_model_hash"]
    assert rows[1][:8] == ["a lighthouse", "6", "64", "64", "Euler a", "7.0", "2", files[0].name]
    assert rows[1][8] == "fog" and rows[1][9] == "tiny"


def test_save_with_the_grid_or_nothing_selected_saves_all(app, generated, save_dir):
    from webui.ui.result_buttons import save_files

    results = generated["results"]
    saved = save_files(app, "txt2img", generated["gallery"], results, 0, False)  # the grid is selected
    assert len(saved.paths) == 3
    assert [infotext_of(p) for p in saved.paths] == [results["infotexts"][0], *results["infotexts"]]
    assert Image.open(saved.paths[0]).size == (128, 64)  # the grid, with the first image's infotext
    saved = save_files(app, "txt2img", generated["gallery"], results, -1, False)  # preview closed: none selected
    assert len(saved.paths) == 3
    with open(save_dir / "log.csv", encoding="utf8", newline="") as f:
        assert len(list(csv.reader(f))) == 3  # the header and one row per click


def test_save_selected_only_off_saves_all(app, generated, save_dir):
    from webui.ui.result_buttons import option, save_files

    app.settings.update({"save_selected_only": False}, save=False)
    try:
        assert option(app, "save_selected_only") is False
        saved = save_files(app, "txt2img", generated["gallery"], generated["results"], 2, False)
    finally:
        app.settings.update({"save_selected_only": True}, save=False)
    assert len(saved.paths) == 3


def test_zip_holds_the_images_with_their_infotexts(app, generated, save_dir):
    from modules.images import read_parameters
    from webui.ui.result_buttons import save_handler

    results = generated["results"]
    update, message = save_handler(app, "txt2img", generated["gallery"], results, True, True)  # nothing selected
    files = update["value"]
    assert files[0].endswith(".zip") and len(files) == 4
    archive = sorted(save_dir.glob("*.zip"))
    assert len(archive) == 1 and "_[tiny]_5-6" in archive[0].name  # [datetime]_[[model_name]]_[seed]-[seed_last]
    assert message.startswith("<p>Saved: 0000") and f"and 2 more, in {archive[0].name}</p>" in message
    with zipfile.ZipFile(archive[0]) as z:
        names = z.namelist()
        assert len(names) == 3 and all(n.endswith(".png") for n in names)
        texts = []
        for name in names:
            with z.open(name) as f, Image.open(f) as image:
                texts.append(read_parameters(image))
    assert sorted(map(str, texts)) == sorted([results["infotexts"][0], *results["infotexts"]])


def test_save_into_a_dated_subfolder(app, generated, save_dir):
    import datetime

    from webui.ui.result_buttons import save_files

    app.settings.update({"use_save_to_dirs_for_ui": True}, save=False)
    try:
        saved = save_files(app, "txt2img", generated["gallery"], generated["results"], 1, False)
    finally:
        app.settings.update({"use_save_to_dirs_for_ui": False}, save=False)
    today = datetime.date.today().isoformat()
    assert saved.paths[0].parent == save_dir / today and saved.names[0].startswith(f"{today}/")


def test_save_without_images_is_a_plain_message(app, save_dir):
    import gradio as gr

    from webui.ui.result_buttons import save_handler

    for gallery, results in (([], None), (None, None), ([("/nonexistent.png", None)], {"infotexts": ["x"]})):
        update, message = save_handler(app, "img2img", gallery, results, False, False)
        assert isinstance(update, type(gr.skip())) and "sd-warning" in message and "Traceback" not in message
    assert not save_dir.exists() or not list(save_dir.glob("*.png"))


def test_folder_opens_only_on_a_local_server(app, monkeypatch):
    from webui.ui import result_buttons

    opened: list[Path] = []
    monkeypatch.setattr(result_buttons, "open_folder", opened.append)
    folder = app.output_options("img2img").samples_dir
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    message = result_buttons.open_output_folder(app, "img2img")
    assert opened == [] and "does not exist" in message and str(folder) in message
    folder.mkdir(parents=True)
    assert result_buttons.open_output_folder(app, "img2img") == ""
    assert opened == [folder]
    monkeypatch.setattr(app, "options", dataclasses.replace(app.options, exposed=True))
    message = result_buttons.open_output_folder(app, "img2img")
    assert opened == [folder] and "reachable from other machines" in message
    assert str(folder) not in message  # a remote user learns nothing of the server's folders


def test_folder_opens_todays_subfolder_after_generating(app, generated, monkeypatch):
    from webui.ui import result_buttons

    opened: list[Path] = []
    monkeypatch.setattr(result_buttons, "open_folder", opened.append)
    assert result_buttons.open_output_folder(app, "txt2img", generated["results"]) == ""
    root = app.output_options("txt2img").samples_dir
    assert opened[0].parent == root  # the images' dated folder, as A1111's "Subdirectory" choice
    assert list(opened[0].glob("*.png"))


def test_send_from_txt2img_and_img2img(app, generated):
    from webui.ui.send_to import send_from_img2img, send_from_txt2img, send_to_extras

    gallery, results = generated["gallery"], generated["results"]
    updates, message = send_from_txt2img(gallery, {**results, "selected": 2}, False, {}, generated["values"], 0,
                                         "init_img")
    assert message == ""
    image = updates[5]  # main tab, mode tab, mode, inpaint controls, mask alpha, the target image
    assert np.array_equal(px(image), px(generated["images"][2]))
    assert updates[0].selected == "img2img" and "a lighthouse" in updates
    updates, message = send_from_txt2img(gallery, results, True, {}, generated["values"], 2, "init_img_with_mask")
    assert np.array_equal(px(updates[5]["background"]), px(generated["images"][1]))  # none selected: the first
    updates, message = send_from_img2img(app, gallery, {**results, "selected": 1}, False, {}, 0, "init_img")
    assert updates[-3:-1] == [64, 64]  # its size as width and height (A1111's send_size)
    image, message = send_to_extras(gallery, {**results, "selected": 2}, False)
    assert np.array_equal(px(image), px(generated["images"][2])) and message == ""
    for send in (lambda: send_from_txt2img([], None, False, {}, {}, 0, "init_img"),
                 lambda: send_from_img2img(app, None, None, False, {}, 2, "init_img_with_mask"),
                 lambda: send_to_extras([], None, False)):
        value, message = send()
        assert not value and "Generate an image first" in message


def _wired(demo, elem_id: str):
    """The event function a button with ``elem_id`` triggers (the first one)."""
    for fn in demo.fns.values():
        for block, _event in fn.targets:
            target = demo.blocks.get(block)
            if getattr(target, "elem_id", None) == elem_id:
                return fn
    raise AssertionError(f"nothing wired to #{elem_id}")


def test_page_has_the_rows_and_the_sends_fill_their_targets(app, generated):
    import gradio as gr

    from webui.ui import build_ui

    demo = build_ui(app)
    ids = {b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    for tab in ("txt2img", "img2img"):
        for elem_id in (f"image_buttons_{tab}", f"{tab}_open_folder", f"save_{tab}", f"save_zip_{tab}",
                        f"{tab}_send_to_img2img", f"{tab}_send_to_inpaint", f"{tab}_send_to_extras",
                        f"download_files_{tab}"):
            assert elem_id in ids, elem_id
    gallery, results = generated["gallery"], {**generated["results"], "selected": 2}
    for tab in ("txt2img", "img2img"):
        fn = _wired(demo, f"{tab}_send_to_extras")
        outs = [getattr(o, "elem_id", None) for o in fn.outputs]
        assert "extras_image" in outs and f"html_log_{tab}" in outs
        values = fn.fn(gallery, results, False)
        image = values[outs.index("extras_image")]
        assert np.array_equal(px(image), px(generated["images"][2]))
        assert values[0].selected == "extras"
        assert isinstance(fn.fn([], None, False)[outs.index("extras_image")], type(gr.skip()))
    fn = _wired(demo, "img2img_send_to_inpaint")
    outs = [getattr(o, "elem_id", None) for o in fn.outputs]
    values = fn.fn(gallery, results, False, {})
    assert np.array_equal(px(values[outs.index("img2maskimg")]["background"]), px(generated["images"][2]))


def test_save_button_follows_the_directory_pattern_prompt_words_and_save_txt(app, generated, save_dir):
    from modules.images import read_parameters
    from webui.ui.result_buttons import save_files

    changes = {"use_save_to_dirs_for_ui": True, "directories_filename_pattern": "[prompt_words]",
               "directories_max_prompt_words": 1, "save_txt": True}
    before = {k: app.settings[k] for k in changes}
    app.settings.update(changes, save=False)
    try:
        saved = save_files(app, "txt2img", generated["gallery"], generated["results"], 1, False)
    finally:
        app.settings.update(before, save=False)
    first_word = generated["results"]["infotexts"][0].split()[0].strip(",")
    image, txt = saved.paths[0], saved.paths[1]
    assert image.parent == save_dir / first_word and txt == image.with_suffix(".txt")
    with Image.open(image) as saved_image:
        assert txt.read_text(encoding="utf-8") == read_parameters(saved_image) + "\n"  # as A1111 writes it
