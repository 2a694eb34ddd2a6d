"""The CompVis ``scripts/txt2img.py`` command line: end to end in a subprocess (a generation, and a refused pickle),
the rest through the same ``main`` the script calls, in this process (each subprocess spends seconds importing)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from modules.images import read_parameters

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "txt2img.py"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", SDWEBUI_DATA_DIR=str(cwd))
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def run_main(args: list[str], cwd: Path, monkeypatch, capsys, caplog) -> tuple[int, str, str]:
    """``main(args)`` in this process, as ``run_cli`` runs the script (``cwd``, ``SDWEBUI_DATA_DIR``): (exit code,
    stdout, stderr). A traceback is neither raised nor logged."""
    from webui.compvis import main

    monkeypatch.chdir(cwd)
    monkeypatch.setenv("SDWEBUI_DATA_DIR", str(cwd))
    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    return code, out, err


def test_generates_samples_and_grid_like_the_original(tmp_path, model_store, monkeypatch, capsys, caplog):
    ckpt = model_store("sd1", "safetensors")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\na blue bird\na green frog\n")
    out = tmp_path / "out"
    args = ["--ckpt", str(ckpt), "--outdir", str(out), "--H", "64", "--W", "64", "--ddim_steps", "2",
            "--n_samples", "2", "--n_iter", "1", "--seed", "7"]
    first = run_cli(*args, "--prompt", "a photo of a cat", "--plms", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "Your samples are ready and waiting for you here" in first.stdout
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["00000.png", "00001.png"]
    assert (out / "grid-0000.png").is_file()
    with Image.open(out / "samples" / "00001.png") as im:
        info = read_parameters(im)
    assert info.startswith("a photo of a cat\n") and "Sampler: PLMS" in info and "Seed: 8," in info
    with Image.open(out / "grid-0000.png") as grid:
        assert grid.size == (128, 64) and read_parameters(grid)

    # the second run continues the numbering; main() in this process (the script itself ran above)
    code, _, err = run_main([*args, "--from-file", str(prompts), "--skip_grid", "--fixed_code"], tmp_path,
                            monkeypatch, capsys, caplog)
    assert code == 0, err
    names = sorted(p.name for p in (out / "samples").iterdir())
    assert names == [f"{i:05}.png" for i in range(5)]
    assert not (out / "grid-0001.png").exists()
    infos = []
    for name in names[2:]:
        with Image.open(out / "samples" / name) as im:
            infos.append(read_parameters(im))
    assert infos[0].startswith("a red fox\n") and "Sampler: DDIM" in infos[0]
    assert infos[2].startswith("a green frog\n") and "Seed: 7," in infos[2]  # --fixed_code: same start per chunk


def test_config_flag_accepts_a_diffusers_config_folder(tmp_path, model_store, monkeypatch, capsys, caplog):
    src = model_store("sd2", "safetensors")
    ckpt = tmp_path / "bare.safetensors"
    shutil.copy2(src, ckpt)  # no config beside it: the narrow model needs --config
    code, _, err = run_main(["--ckpt", str(ckpt), "--config", str(src.with_suffix("")), "--outdir",
                             str(tmp_path / "o"), "--H", "64", "--W", "64", "--ddim_steps", "1", "--n_samples", "1",
                             "--n_iter", "1", "--skip_grid"], tmp_path, monkeypatch, capsys, caplog)
    assert code == 0, err
    assert (tmp_path / "o" / "samples" / "00000.png").is_file()


@pytest.mark.parametrize("args,message", [
    (["--H", "100"], "--H must be a multiple of 8"),
    (["--W", "0"], "--W must be a multiple of 8"),
    (["--ckpt", "missing.safetensors"], "checkpoint not found: missing.safetensors"),
    (["--C", "8"], "--C 4 and --f 8"),
    (["--config", "nope.yaml", "--ckpt", "x"], "config not found: nope.yaml"),
])
def test_bad_input_one_line_nonzero(tmp_path, args, message, capsys, monkeypatch):
    """The same ``main`` the script calls, in this process (the end-to-end runs above and below go through the real
    script in a subprocess; these only check the one-line messages)."""
    from webui.compvis import main

    (tmp_path / "x").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    code = main(list(args))
    err = capsys.readouterr().err
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err


class _Payload:
    """Pickles as a call of ``os.system``: what a malicious .ckpt carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unreadable_and_malicious_checkpoints(tmp_path, monkeypatch, capsys, caplog):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a model")
    code, _, err = run_main(["--ckpt", str(junk), "--H", "64", "--W", "64"], tmp_path, monkeypatch, capsys, caplog)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and "junk.safetensors" in lines[0] and "Traceback" not in err
    picture = tmp_path / "picture.ckpt"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(picture, "PNG")
    code, _, err = run_main(["--ckpt", str(picture), "--H", "64", "--W", "64"], tmp_path, monkeypatch, capsys,
                            caplog)
    assert code != 0 and "picture.ckpt is not a model file (a PNG image)" in err and "Traceback" not in err
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.ckpt"
    import torch

    torch.save({"state_dict": {}, "x": _Payload(marker)}, evil)
    result = run_cli("--ckpt", str(evil), "--H", "64", "--W", "64", cwd=tmp_path)  # the real script refuses it
    assert result.returncode != 0 and "refused" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()
