"""A kill during a batch loses at most the image being made: every image is saved as soon as it is decoded, and a
file under a final name is always complete. A full or unwritable output folder still gives the images back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from conftest import install_model
from modules.images import read_parameters
from modules.output_options import OutputOptions
from modules.requests import GenerationRequest

ROOT = Path(__file__).resolve().parents[1]
BATCH = """
import sys
from pathlib import Path
from modules.app import build_engine
from modules.output_options import OutputOptions
from modules.paths import Paths
from modules.requests import GenerationRequest

data = Path(sys.argv[1])
engine = build_engine(Paths.create(data), device="cpu", precision="fp32")
engine.txt2img(GenerationRequest(prompt="a kill test", seed=5, n_iter=60, width=64, height=64, steps=2),
               out=OutputOptions.under(data / "outputs"))
"""


def _finished(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.png") if not p.name.startswith("."))


def test_sigkill_mid_batch_keeps_every_finished_image(data_dir, model_store):
    install_model(data_dir, model_store("sd1", "safetensors"), "tiny")
    samples = data_dir / "outputs" / "txt2img-images"
    proc = subprocess.Popen([sys.executable, "-c", BATCH, str(data_dir)], cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(_finished(samples)) < 3:  # another process: its files are all there is to watch
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the batch did not start saving"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    saved = _finished(samples)
    assert 3 <= len(saved) < 60
    for i, path in enumerate(saved):
        with Image.open(path) as image:
            image.load()  # complete, not truncated
            assert image.size == (64, 64)
            text = read_parameters(image)
        assert text is not None and f"Seed: {5 + i}," in text
    assert sorted(int(p.name.split("-")[0]) for p in saved) == list(range(len(saved)))


def test_unwritable_output_folder_still_returns_the_images(data_dir, model_store, engine_factory):
    install_model(data_dir, model_store("sd1", "safetensors"), "tiny")
    blocked = data_dir / "outputs" / "txt2img-images"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the folder should be")  # every save fails, as on a full or read-only disk
    engine = engine_factory()
    out = engine.txt2img(GenerationRequest(prompt="x", seed=1, batch_size=2, width=64, height=64, steps=2),
                         out=OutputOptions.under(data_dir / "outputs"))
    assert len(out.result.images) == 2 and out.saved == []
    assert any("could not be saved" in w for w in out.result.warnings)
