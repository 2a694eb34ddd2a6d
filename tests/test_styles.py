"""A1111's styles: several files and wildcards, editing written back to each style's file, and the styles found in
a pasted prompt."""

from __future__ import annotations

import csv

from modules.styles import Style, StyleDatabase, expand_style_files, infer_styles


def _write(path, rows):
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "prompt", "negative_prompt"])
        w.writerows(rows)


def _rows(path):
    with open(path, encoding="utf-8-sig", newline="") as f:
        return [(r["name"], r["prompt"], r["negative_prompt"]) for r in csv.DictReader(f)]


def test_several_files_and_wildcards(tmp_path):
    (tmp_path / "more").mkdir()
    _write(tmp_path / "styles.csv", [("Cine", "cinematic still of {prompt}", "cartoon")])
    _write(tmp_path / "more" / "a.csv", [("Sharp", "sharp focus", ""), ("# comment", "x", "")])
    _write(tmp_path / "more" / "b.csv", [("Cine", "film still, {prompt}", "drawing")])  # a later file wins
    with open(tmp_path / "more" / "old.csv", "w", encoding="utf-8") as f:
        f.write("name,text\nOld,old style text\n")  # A1111's first format
    db = StyleDatabase([str(tmp_path / "styles.csv"), str(tmp_path / "more" / "*.csv")])
    assert db.names() == ["Cine", "Sharp", "Old"]
    assert db.get("Cine") == Style("Cine", "film still, {prompt}", "drawing")
    assert db.get("Old") == Style("Old", "old style text", "")
    assert db.apply(["Cine", "Sharp"], "a cat", "blurry") == ("film still, a cat, sharp focus", "blurry, drawing")
    files, default = expand_style_files([str(tmp_path / "more" / "*.csv")])
    assert default == tmp_path / "more" / "a.csv" and files[0] == default
    assert expand_style_files([str(tmp_path / "none" / "*.csv")])[1] == tmp_path / "none" / "styles.csv"


def test_edits_go_back_to_each_styles_file_with_a_backup(tmp_path):
    first, second = tmp_path / "styles.csv", tmp_path / "extra.csv"
    _write(first, [("A", "a text", "")])
    _write(second, [("B", "b text", "b neg")])
    db = StyleDatabase([str(first), str(second)])
    db.save(Style("B", "b new, {prompt}", ""))
    db.save(Style("New", 'quoted "words", commas', "line"))
    assert _rows(second) == [("B", "b new, {prompt}", "")]
    assert _rows(first) == [("A", "a text", ""), ("New", 'quoted "words", commas', "line")]
    assert _rows(tmp_path / "extra.csv.bak") == [("B", "b text", "b neg")]
    assert db.delete("A") and not db.delete("A")
    assert _rows(first) == [("New", 'quoted "words", commas', "line")]
    assert StyleDatabase([str(first), str(second)]).styles == db.styles  # what was written reads back the same


def test_a_file_changed_outside_is_read_again(tmp_path):
    path = tmp_path / "styles.csv"
    db = StyleDatabase([str(path)])
    assert db.names() == []
    _write(path, [("Later", "later text", "")])
    assert db.names() == ["Later"]


def test_styles_are_found_in_a_pasted_prompt_as_a1111_does(tmp_path):
    path = tmp_path / "styles.csv"
    _write(path, [("Masterpiece", "masterpiece", ""), ("Wrap", "masterpiece, {prompt}", "lowres"),
                  ("Empty", "", "")])
    db = StyleDatabase([str(path)])
    assert db.extract("1girl, art by greg, masterpiece", "") == (["Masterpiece"], "1girl, art by greg", "")
    assert db.extract("masterpiece, 1girl, art by greg", "lowres") == (["Wrap"], "1girl, art by greg", "")
    assert db.extract("exquisite, 1girl", "x") == ([], "exquisite, 1girl", "x")
    values = {"prompt": "a dog, masterpiece", "negative_prompt": "", "steps": 20}
    assert infer_styles(db, values, "Apply if any") == {**values, "prompt": "a dog", "styles": ("Masterpiece",)}
    assert infer_styles(db, values, "Discard") == {**values, "prompt": "a dog"}
    assert infer_styles(db, values, "Ignore") == values
    assert infer_styles(db, {"prompt": "plain", "negative_prompt": ""}, "Apply")["styles"] == ()
    assert "styles" not in infer_styles(db, {"prompt": "plain", "negative_prompt": ""}, "Apply if any")
    hires = {**values, "hr_prompt": "a dog, masterpiece, detailed", "hr_negative_prompt": ""}
    assert infer_styles(db, hires, "Apply if any") == hires  # the hires prompt lacks the style: left as it is


def test_styles_editor_buttons(tmp_path):
    from types import SimpleNamespace

    from webui.ui import styles_editor as ed

    path = tmp_path / "styles.csv"
    _write(path, [("Cine", "cinematic still of {prompt}", "cartoon")])
    app = SimpleNamespace(styles=StyleDatabase([str(path)]))
    prompt, negative, delete, save = ed.select_style(app, "Cine")
    assert (prompt, negative) == ("cinematic still of {prompt}", "cartoon")
    assert delete["visible"] is True and save["visible"] is True
    _, _, delete, save = ed.select_style(app, "Brand new")
    assert delete["visible"] is False and save["visible"] is True
    assert "Name the style" in ed.save_style(app, "  ", "x", "y")[1]
    ed.save_style(app, "Brand new", "{prompt}, oil painting", "photo")
    assert _rows(path)[-1] == ("Brand new", "{prompt}, oil painting", "photo")
    assert ed.materialize(app, "a cat", "dog", ["Cine", "Brand new"]) == (
        "cinematic still of a cat, oil painting", "dog, cartoon, photo", [])
    assert ed.delete_style(app, "Cine")[:3] == ("", "", "") and app.styles.names() == ["Brand new"]
    assert ed.delete_style(app, "")[3] == ""  # the confirmation was cancelled


def test_the_api_infotext_field_finds_styles_and_prompt_styles_lists_every_file(api, data_dir):
    import json

    _write(data_dir / "styles.csv", [("Cine", "cinematic still of {prompt}", "cartoon")])
    infotext = "cinematic still of a fox\nNegative prompt: ugly, cartoon\nSteps: 2, Seed: 3, Size: 64x64"
    r = api.post("/sdapi/v1/txt2img", json={"infotext": infotext})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["styles"] == ["Cine"]
    assert (info["prompt"], info["negative_prompt"]) == ("cinematic still of a fox", "ugly, cartoon")
    assert api.get("/sdapi/v1/prompt-styles").json() == [
        {"name": "Cine", "prompt": "cinematic still of {prompt}", "negative_prompt": "cartoon"}]


def test_styles_file_flag_names_the_files(tmp_path):
    from webui.launch import parse_launch_args, start_options

    args, _ = parse_launch_args(["--styles-file", str(tmp_path / "a.csv"), "--styles-file", str(tmp_path / "*.csv")],
                                {})
    options = start_options(args, exposed=False)
    assert options.styles_files == (str(tmp_path / "a.csv"), str(tmp_path / "*.csv"))
    from modules.paths import Paths

    paths = Paths.create(tmp_path, styles_files=options.styles_files)
    assert paths.styles_patterns == [str(tmp_path / "a.csv"), str(tmp_path / "*.csv")]
    assert Paths.create(tmp_path).styles_patterns == [str(tmp_path / "styles.csv")]
