"""TAESD live previews: the decoder files A1111 reads from models/VAE-approx, in the original network's layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from modules.models import taesd
from modules.requests import GenerationRequest


class _Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(n, n, 3, padding=1), nn.ReLU(), nn.Conv2d(n, n, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(n, n, 3, padding=1))
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


def original_decoder() -> nn.Sequential:
    """The published TAESD decoder's layout (the keys of ``taesd_decoder.pth``), written out for the test;
    its output is in [0, 1]."""
    def up() -> list[nn.Module]:
        return [nn.Upsample(scale_factor=2), nn.Conv2d(64, 64, 3, padding=1, bias=False)]

    return nn.Sequential(_Clamp(), nn.Conv2d(4, 64, 3, padding=1), nn.ReLU(),
                         _Block(64), _Block(64), _Block(64), *up(), _Block(64), _Block(64), _Block(64), *up(),
                         _Block(64), _Block(64), _Block(64), *up(), _Block(64), nn.Conv2d(64, 3, 3, padding=1))


@pytest.fixture(scope="module")
def original():
    torch.manual_seed(0)
    net = original_decoder().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.5)
    return net


def test_the_original_files_load_into_diffusers_decoder_and_decode_the_same(tmp_path, original):
    torch.save(original.state_dict(), tmp_path / "taesd_decoder.pth")
    assert taesd.find(tmp_path, False) == tmp_path / "taesd_decoder.pth" and taesd.find(tmp_path, True) is None
    ours = taesd.load(tmp_path / "taesd_decoder.pth")
    z = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = original(z)  # [0, 1]
        got = (ours(z) + 1) / 2  # diffusers' DecoderTiny gives [-1, 1]
    assert got.shape == (1, 3, 64, 96)
    assert torch.allclose(got, expected, atol=1e-5)
    # A1111's own copies carry the keys under "decoder."
    torch.save({f"decoder.{k}": v for k, v in original.state_dict().items()}, tmp_path / "taesdxl_decoder.pth")
    assert torch.allclose((taesd.load(tmp_path / "taesdxl_decoder.pth")(z) + 1) / 2, expected, atol=1e-5)


def test_a_file_that_is_not_a_taesd_decoder_is_refused_by_name(tmp_path):
    torch.save({"1.weight": torch.zeros(3)}, tmp_path / "taesd_decoder.pth")
    with pytest.raises(taesd.TaesdError, match="taesd_decoder.pth is not a TAESD decoder"):
        taesd.load(tmp_path / "taesd_decoder.pth")
    (tmp_path / "taesdxl_decoder.pth").write_bytes(b"not a pickle")
    with pytest.raises(Exception):  # noqa: B017  # torch's own unpickling error
        taesd.load(tmp_path / "taesdxl_decoder.pth")


def test_live_previews_follow_the_setting(data_dir, model_store, original, caplog):
    from conftest import running_app

    folder = data_dir / "models" / "VAE-approx"
    folder.mkdir(parents=True)
    req = GenerationRequest(prompt="a red house", seed=3, width=64, height=64, steps=4, sampler_name="Euler")

    def previews(app, kind: str) -> set[tuple[int, int]]:
        """The size of the last step's preview (every step makes one, the last always)."""
        app.settings.update({"show_progress_type": kind, "show_progress_every_n_steps": 1}, save=False)
        job = app.submit_txt2img(req, save=False)
        assert job.wait(120) and job.error is None
        return {job.control.progress.preview.size}

    with running_app(data_dir, model_store) as app:
        assert previews(app, "Approx cheap") == {(8, 8)}  # one pixel per latent
        assert previews(app, "TAESD") == {(8, 8)}  # no decoder file yet: the cheap one, with a warning
        assert "TAESD previews need taesd_decoder.pth" in caplog.text
        torch.save(original.state_dict(), folder / "taesd_decoder.pth")
        assert previews(app, "TAESD") == {(64, 64)}
        assert previews(app, "Full") == {(64, 64)}
        full = app.previews.decoder("Full")
        parts = app.models.current
        z = torch.randn(1, 4, 8, 8)
        image = np.asarray(full(z, parts))
        assert image.shape == (64, 64, 3) and image.std() > 0
