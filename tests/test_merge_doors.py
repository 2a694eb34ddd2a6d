"""The merger's doors: the ``webui merge`` command line, ``POST /sdapi/v1/merge-checkpoints``, the tab's handlers."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from modules.merge.safetensors_io import StreamingWriter
from tests.test_merge import TOKENS, synth
from webui.merge_cli import main as merge_main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def models(tmp_path) -> dict[str, Path]:
    folder = tmp_path / "in"
    return {"a": synth(folder / "a.safetensors", 1), "b": synth(folder / "b.safetensors", 2),
            "c": synth(folder / "c.safetensors", 3), "xl": synth(folder / "xl.safetensors", 4, family="sdxl")}


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = merge_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_end_to_end_in_a_subprocess(tmp_path, models):
    out = tmp_path / "merged.safetensors"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "webui", "merge", str(models["a"]), str(models["b"]),
                           "--method", "weighted_sum", "--multiplier", "0.4", "--out", str(out), "--fp16"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"Checkpoint saved to {out}" in proc.stdout and "sha256: " in proc.stdout
    A, B, merged = load_file(models["a"]), load_file(models["b"]), load_file(out)
    assert torch.equal(merged[TOKENS], ((0.6 * A[TOKENS]) + (0.4 * B[TOKENS])).half())


def test_cli_methods_and_options(tmp_path, models, capsys):
    code, out, _ = _run(capsys, models["a"], models["b"], models["c"], "--method", "add_difference", "-m", "1",
                        "--out", f"{tmp_path}/")
    assert code == 0 and "a + 1.0(b - c).safetensors" in out
    code, out, _ = _run(capsys, models["a"], "--out", tmp_path / "conv", "--format", "ckpt", "--discard", "^model_ema")
    assert code == 0 and (tmp_path / "conv.ckpt").is_file()
    code, _, _ = _run(capsys, models["a"], "--out", tmp_path / "plain.safetensors", "--no-metadata")
    with safe_open(str(tmp_path / "plain.safetensors"), "pt") as f:
        assert not f.metadata()


@pytest.mark.parametrize("case,expected", [
    ("missing", "checkpoint not found"),
    ("truncated", "corrupt or not a safetensors file"),
    ("not_a_checkpoint", "corrupt or not a safetensors file"),
    ("shapes", "mismatched shapes"),
    ("families", "A (a.safetensors) is SD 1.x, B (xl.safetensors) is SDXL"),
    ("regex", "invalid regular expression"),
    ("exists", "already exists"),
    ("disk_full", "not enough disk space"),
    ("count", "takes 3 models"),
])
def test_cli_errors_one_line_non_zero(tmp_path, models, capsys, monkeypatch, case, expected):
    a, b = models["a"], models["b"]
    out = tmp_path / "out.safetensors"
    args: list = [a, b, "--out", out]
    if case == "missing":
        args = [a, tmp_path / "nope.safetensors", "--out", out]
    elif case == "truncated":
        (tmp_path / "t.safetensors").write_bytes(b.read_bytes()[:-64])
        args = [a, tmp_path / "t.safetensors", "--out", out]
    elif case == "not_a_checkpoint":
        (tmp_path / "x.safetensors").write_text("hello")
        args = [a, tmp_path / "x.safetensors", "--out", out]
    elif case == "shapes":
        args = [a, synth(tmp_path / "s.safetensors", 5, extra={TOKENS: torch.zeros(3, 16)}), "--out", out]
    elif case == "families":
        args = [a, models["xl"], "--out", out]
    elif case == "regex":
        args += ["--discard", "(unclosed"]
    elif case == "exists":
        out.write_bytes(b"keep me")
    elif case == "disk_full":
        def full(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(StreamingWriter, "_put", full)
    elif case == "count":
        args += ["--method", "add_difference"]
    code, stdout, stderr = _run(capsys, *args)
    assert code != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and lines[0].startswith("webui merge: error:"), stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merge-")]
    if case == "exists":
        assert out.read_bytes() == b"keep me"
    elif case != "exists":
        assert not out.exists()


@pytest.fixture
def api(live_server, data_dir):
    folder = data_dir / "models" / "Stable-diffusion"
    synth(folder / "a.safetensors", 1)
    synth(folder / "b.safetensors", 2)
    synth(folder / "xl.safetensors", 4, family="sdxl")
    server = live_server(models=(), load=False)
    with httpx.Client(base_url=server.url, timeout=120) as client:
        client.server = server
        yield client


def test_api_merge_runs_as_a_job_and_lists_the_result(api, data_dir):
    r = api.post("/sdapi/v1/merge-checkpoints", json={
        "primary_model_name": "a.safetensors", "secondary_model_name": "b", "interp_method": "Weighted sum",
        "multiplier": 0.5, "save_as_half": True, "custom_name": "", "id_task": "ignored"})
    assert r.status_code == 200, r.text
    body = r.json()
    path = data_dir / "models" / "Stable-diffusion" / "0.5(a) + 0.5(b).safetensors"
    assert body["path"] == str(path) and path.is_file()
    assert body["title"] == f"0.5(a) + 0.5(b).safetensors [{body['hash']}]" and body["sha256"].startswith(body["hash"])
    job = api.server.app.queue.get(body["job_id"])
    assert job.kind == "merge" and job.state.value == "succeeded"
    listed = api.get(f"/sdapi/v2/jobs/{body['job_id']}").json()  # merges are jobs like any other
    assert listed["kind"] == "merge" and listed["result"]["title"] == body["title"]
    titles = [m["title"] for m in api.get("/sdapi/v1/sd-models").json()]
    assert body["title"] in titles
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["sd_merge_recipe"])["save_as_half"] is True


@pytest.mark.parametrize("change,field", [
    ({"discard_weights": "(["}, "discard_weights"),
    ({"secondary_model_name": "nope"}, "secondary_model_name"),
    ({"secondary_model_name": "xl"}, "secondary_model_name"),
    ({"interp_method": "Add difference"}, "tertiary_model_name"),
    ({"custom_name": "../../evil"}, "custom_name"),
    ({"multiplier": 1.5}, "multiplier"),
    ({"checkpoint_format": "pickle"}, "checkpoint_format"),
    ({"bake_in_vae": "missing.safetensors"}, "bake_in_vae"),
])
def test_api_bad_input_refused_before_queueing(api, change, field):
    before = len(api.server.app.queue.jobs())
    body = {"primary_model_name": "a", "secondary_model_name": "b", **change}
    r = api.post("/sdapi/v1/merge-checkpoints", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert len(api.server.app.queue.jobs()) == before
    assert api.get("/internal/ping").status_code == 200


def test_tab_handlers(tmp_path, data_dir):
    from modules.app import App, StartOptions
    from webui.ui.merger import FIELDS, MergerHandlers

    folder = data_dir / "models" / "Stable-diffusion"
    synth(folder / "a.safetensors", 1, metadata={"ss_x": "1"})
    synth(folder / "b.safetensors", 2)
    app = App(StartOptions(data_dir=data_dir, device="cpu", skip_load_model=True))
    app.start()
    try:
        h = MergerHandlers(app)
        values = {"primary_model_name": "a.safetensors", "secondary_model_name": "b.safetensors",
                  "tertiary_model_name": None, "custom_name": "ui", "multiplier": 0.3,
                  "interp_method": "Weighted sum", "checkpoint_format": "safetensors", "save_as_half": False,
                  "config_source": 0, "bake_in_vae": "None", "discard_weights": "", "save_metadata": True,
                  "add_merge_recipe": True, "copy_metadata_fields": True, "metadata_json": "{}", "overwrite": False}
        updates = list(h.merge(*[values[k] for k in FIELDS]))
        final = updates[-1]
        assert "Checkpoint saved to" in final[1] and "ui.safetensors" in final[1], final[1]
        assert any("ui.safetensors" in c for c in final[5]["choices"])  # the quicksettings list is refreshed
        again = list(h.merge(*[values[k] for k in FIELDS]))
        assert "already exists" in again[-1][1] and "sd-error" in again[-1][1]
        assert json.loads(h.read_metadata("a.safetensors", None, None)) == {"ss_x": "1"}
    finally:
        app.stop()
