"""Progress on the command lines: tqdm bars on stderr, a one-line summary on stdout, and a clean one-line error for
a file that is no model at all. The CompVis ``scripts/txt2img.py`` and ``python -m webui merge`` run as real
subprocesses on the tiny model, with stderr a pipe (what a log sees) or a pseudo-terminal (what a user sees)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "txt2img.py"
RATE = re.compile(r"\d+(\.\d+)?(it/s|s/it|tensor/s|s/tensor)")
SMALL = ["--H", "64", "--W", "64", "--seed", "3"]


def _env(cwd: Path) -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", SDWEBUI_DATA_DIR=str(cwd),
                PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def compvis(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=_env(cwd), capture_output=True,
                          text=True, timeout=300)


def merge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "webui", "merge", *args], cwd=cwd, env=_env(cwd),
                          capture_output=True, text=True, timeout=300)


def on_terminal(args: list[str], cwd: Path, timeout: float = 300) -> tuple[int, str, str]:
    """Run ``args`` with stderr on a 120x30 pseudo-terminal: (exit code, stdout, what the terminal received)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    proc = subprocess.Popen(args, cwd=cwd, env=_env(cwd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave)
    os.close(slave)
    received = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child has closed its end
                break
            if not chunk:
                break
            received += chunk
        out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out.decode(), received.decode(errors="replace")


def _final_bar(stderr: str) -> str:
    """The last state the bar printed (tqdm redraws with ``\\r``)."""
    states = [s for s in re.split(r"[\r\n]+", stderr) if s.strip()]
    assert states, stderr
    return states[-1]


def test_compvis_progress_on_a_terminal_and_the_summary(tmp_path, model_store):
    out = tmp_path / "out"
    code, stdout, terminal = on_terminal(
        [sys.executable, str(SCRIPT), "--ckpt", str(model_store("sd1", "safetensors")), "--outdir", str(out),
         "--n_samples", "1", "--n_iter", "2", "--ddim_steps", "12", "--plms", *SMALL], tmp_path)
    assert code == 0, terminal
    assert "Traceback" not in terminal and "WARNING" not in terminal, terminal
    # the phases, as they come: the bar is redrawn with each
    for phase in ("loading model: ", "sampling (batch 1/2): ", "decoding (batch 1/2): ", "saving (batch 1/2): ",
                  "sampling (batch 2/2): ", "saving grid: "):
        assert phase in terminal, (phase, terminal)
    # step by step (the bar is redrawn at most ten times a second: some step between the batch's first and last)
    assert re.search(r"sampling \(batch 2/2\): +\d+%\|[^|]*\| (1[3-9]|2[0-3])/24 ", terminal), terminal
    final = _final_bar(terminal)
    assert final.startswith("done: 100%|") and " 24/24 [" in final and RATE.search(final), terminal
    assert "█" in terminal  # the bar itself, not only the counts
    lines = stdout.splitlines()
    # the original's words, as scripts read them, then the summary as the last line
    assert lines[:4] == ["Your samples are ready and waiting for you here: ", f"{out} ", " ", "Enjoy."]
    assert len(lines) == 5
    assert re.fullmatch(re.escape(f"txt2img.py: 2 images in {out / 'samples'} (00000.png to 00001.png), grid "
                                  f"{out / 'grid-0000.png'}, ") + r"\d+\.\d s \(\d+\.\d s loading the model\)",
                        lines[4]), lines[4]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["00000.png", "00001.png"]


def test_compvis_progress_in_a_log(tmp_path, model_store, monkeypatch, capsys):
    """stderr a pipe or a file, as in a log: no redraw per phase, the final state of the bar at the end. The
    same ``main`` the script calls, in this process (the run above is the real script)."""
    from webui.compvis import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\na blue bird\na green frog\n")
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SDWEBUI_DATA_DIR", str(tmp_path))
    capsys.readouterr()
    # two chunks of --n_samples 2: (fox, bird) are two batches (different prompts), (frog) a third: 3 x 2 steps.
    # DDIM at 2 steps makes 1 model call (A1111's timesteps): each batch still completes its share of the bar.
    code = main(["--ckpt", str(model_store("sd1", "safetensors")), "--outdir", str(out), "--from-file", str(prompts),
                 "--n_samples", "2", "--n_iter", "1", "--ddim_steps", "2", *SMALL])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert "loading model" not in stderr  # a log gets no line per phase: none before the first step
    final = _final_bar(stderr)
    assert final.startswith("done: 100%|") and " 6/6 [" in final and RATE.search(final), stderr
    assert stderr.endswith("\n")
    assert re.fullmatch(re.escape(f"txt2img.py: 3 images in {out / 'samples'} (00000.png to 00002.png), grid "
                                  f"{out / 'grid-0000.png'}, ") + r"\d+\.\d s \(\d+\.\d s loading the model\)",
                        stdout.splitlines()[-1]), stdout
    with Image.open(out / "grid-0000.png") as grid:
        assert grid.size == (128, 128)


def test_compvis_disable_console_progressbars(tmp_path, model_store, monkeypatch, capsys):
    """A1111's flag: no bar at all (in this process: the flag's way into the bar, not the terminal's)."""
    from webui.compvis import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SDWEBUI_DATA_DIR", str(tmp_path))
    capsys.readouterr()
    code = main(["--ckpt", str(model_store("sd1", "safetensors")), "--outdir", str(tmp_path / "o"), "--n_samples",
                 "1", "--n_iter", "1", "--ddim_steps", "1", "--skip_save", "--skip_grid",
                 "--disable-console-progressbars", *SMALL])
    out, err = capsys.readouterr()
    assert code == 0 and err == "", err
    assert re.fullmatch(r"txt2img\.py: 1 image not saved \(--skip_save\), no grid, \d+\.\d s \(\d+\.\d s loading "
                        r"the model\)", out.splitlines()[-1]), out
    assert not (tmp_path / "o" / "samples").exists() or not any((tmp_path / "o" / "samples").iterdir())


def test_step_total_follows_the_engine(capsys):
    """A sampler that reports another step count than ``--ddim_steps``: the bar's total follows, and the count of
    every call continues from the calls before."""
    from modules.generation.control import Progress
    from webui.compvis import _StepProgress
    from webui.merge_cli import ConsoleBar

    with ConsoleBar("loading model", 2 * 3) as bar:
        steps = _StepProgress(bar, calls=2, steps=3)
        steps.start(0)
        for i in range(1, 5):
            steps(Progress(phase="sampling", sampling_step=i, sampling_steps=4))
        assert (bar.n, bar.total, bar.desc, bar.bar.n, bar.bar.total) == (4, 8, "sampling (batch 1/2)", 4, 8)
        steps.start(1)
        steps(Progress(phase="sampling", sampling_step=1, sampling_steps=4))
        steps(Progress(phase="decoding", sampling_step=4, sampling_steps=4))
        assert (bar.n, bar.desc, bar.bar.n) == (5, "decoding (batch 2/2)", 5)
    assert "5/8" in capsys.readouterr().err


def test_merge_progress_and_summary(tmp_path, model_store):
    a = model_store("sd1", "safetensors")
    b = tmp_path / "b.safetensors"
    shutil.copy2(a, b)
    out = tmp_path / "merged.safetensors"
    result = merge(str(a), str(b), "--method", "weighted_sum", "--multiplier", "0.5", "--out", str(out),
                   cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"Checkpoint saved to {out}" and lines[1].startswith("sha256: ")  # unchanged for scripts
    tensors = int(re.search(r", (\d+) tensors, ", lines[1]).group(1))
    summary = re.fullmatch(re.escape(f"webui merge: wrote {out} (") + r"(\d+\.\d) MiB, (\d+) tensors\) in \d+\.\d s",
                           lines[-1])
    assert summary, lines[-1]
    assert float(summary.group(1)) == round(out.stat().st_size / 2**20, 1) and int(summary.group(2)) == tensors
    final = _final_bar(result.stderr)
    assert final.startswith("saved: 100%|") and f" {tensors}/{tensors} [" in final and RATE.search(final), final


def test_merge_quiet_prints_no_bar(tmp_path, model_store, capsys):
    from webui.merge_cli import main

    a = model_store("sd1", "safetensors")
    capsys.readouterr()
    code = main([str(a), "--out", str(tmp_path / "copy.safetensors"), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0 and err == "" and out.splitlines()[-1].startswith("webui merge: wrote ")


def _png(path: Path) -> Path:
    Image.new("RGB", (8, 8), "red").save(path, "PNG")
    return path


def _one_error_line(stderr: str, prefix: str, message: str) -> None:
    lines = [line for line in re.split(r"[\r\n]+", stderr) if line.strip()]
    assert len(lines) == 1 and lines[0] == f"{prefix}{message}", stderr
    assert "Traceback" not in stderr


def test_a_png_is_not_a_model_in_either_command(tmp_path, model_store):
    picture = _png(tmp_path / "picture.png")
    result = compvis("--ckpt", str(picture), *SMALL, cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    _one_error_line(result.stderr, "txt2img.py: error: ", "picture.png is not a model file (a PNG image)")
    result = merge(str(model_store("sd1", "safetensors")), str(picture), "--out", str(tmp_path / "m.safetensors"),
                   cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    _one_error_line(result.stderr, "webui merge: error: ", "picture.png is not a model file (a PNG image)")
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("name,content,kind", [
    ("notes.txt", b"a prompt, not a model\n", "a text file"),
    ("image.safetensors", None, "a PNG image"),  # a renamed picture: what it is, not a header error
    ("photo.ckpt", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "a JPEG image"),
    ("empty.ckpt", b"", "an empty file"),
    ("README.ckpt", "un modèle? non\n".encode(), "a text file"),
])
def test_other_files_that_are_not_models(tmp_path, model_store, monkeypatch, capsys, name, content, kind):
    """The same ``main``s the commands call, in this process: one line, exit 1, for each CLI."""
    from webui.compvis import main as compvis_main
    from webui.merge_cli import main as merge_main

    path = tmp_path / name
    if content is None:
        _png(path)
    else:
        path.write_bytes(content)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert compvis_main(["--ckpt", str(path), *SMALL]) == 1
    _one_error_line(capsys.readouterr().err, "txt2img.py: error: ", f"{name} is not a model file ({kind})")
    assert merge_main([str(model_store("sd1", "safetensors")), str(path), "--out", "m.safetensors"]) == 1
    _one_error_line(capsys.readouterr().err, "webui merge: error: ", f"{name} is not a model file ({kind})")


def test_real_models_are_not_mistaken_for_other_files(tmp_path, model_store):
    """The check reads only a file's first bytes and lets every model format through."""
    import torch

    from webui.merge_cli import not_a_model_file

    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, ckpt)
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    text_safetensors = tmp_path / "t.safetensors"
    text_safetensors.write_text("hello")  # left to the loader: "corrupt or not a safetensors file"
    for path in (model_store("sd1", "safetensors"), ckpt, legacy, text_safetensors, tmp_path, tmp_path / "missing"):
        assert not_a_model_file(path) is None, path
