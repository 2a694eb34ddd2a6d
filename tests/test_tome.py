"""Token merging (A1111's "Token merging ratio", ToMe for SD) on tiny random UNets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from modules.generation import tome
from modules.models.tiny import build_components

Tensor = torch.Tensor


@pytest.fixture(scope="module")
def sd1() -> Any:
    return build_components("sd1")["unet"]


@pytest.fixture(scope="module")
def sdxl() -> Any:
    return build_components("sdxl")["unet"]


def _inputs(h: int = 32, w: int = 32, batch: int = 2, width: int = 32, seed: int = 1) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"sample": torch.randn(batch, 4, h, w, generator=g), "timestep": torch.tensor([500] * batch),
            "encoder_hidden_states": torch.randn(batch, 77, width, generator=g)}


def _run(unet: Any, inputs: dict[str, Any]) -> Tensor:
    with torch.no_grad():
        out: Tensor = unet(**inputs, return_dict=False)[0]
    return out


def _xl_inputs(h: int = 16, w: int = 16) -> dict[str, Any]:
    inputs: dict[str, Any] = _inputs(h, w, width=96)
    inputs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 64, generator=torch.Generator().manual_seed(2)),
                                   "time_ids": torch.tensor([[h * 8, w * 8, 0, 0, h * 8, w * 8]] * 2).float()}
    return inputs


def _corr(a: Tensor, b: Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


def _hooks(unet: torch.nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in unet.modules())


class _Recorder:
    """Delegates to a layer's own processor, noting the sequence length the attention computation gets."""

    def __init__(self, inner: Any, seen: list[int]) -> None:
        self.inner, self.seen = inner, seen

    def __call__(self, attn: Any, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        self.seen.append(int(hidden_states.shape[1]))
        out: Tensor = self.inner(attn, hidden_states, *args, **kwargs)
        return out


@contextlib.contextmanager
def _recording(unet: Any) -> Iterator[list[int]]:
    """Sequence lengths reaching the self-attention (``attn1``) processors, in call order."""
    seen: list[int] = []
    layers = [m.attn1 for m in unet.modules() if hasattr(m, "attn1")]
    saved = [a.processor for a in layers]
    for a in layers:
        a.set_processor(_Recorder(a.processor, seen))
    try:
        yield seen
    finally:
        for a, p in zip(layers, saved, strict=True):
            a.set_processor(p)


def test_ratio_zero_changes_nothing(sd1: Any) -> None:
    inputs = _inputs()
    base = _run(sd1, inputs)
    hooks = _hooks(sd1)
    with tome.token_merging(sd1, 0.0):
        assert _hooks(sd1) == hooks and tome.active(sd1) is None
        assert torch.equal(_run(sd1, inputs), base)


def test_half_ratio_merges_top_blocks_and_stays_close(sd1: Any) -> None:
    inputs = _inputs()
    with _recording(sd1) as plain:
        base = _run(sd1, inputs)
    with _recording(sd1) as seen, tome.token_merging(sd1, 0.5):
        merged = _run(sd1, inputs)
        calls, tokens = tome.stats(sd1)
    # sd1: two transformer blocks at full resolution going down, three coming up; the lower levels are untouched
    assert plain.count(1024) == 5 and seen.count(512) == 5 and 1024 not in seen
    assert sorted(x for x in plain if x != 1024) == sorted(x for x in seen if x != 512)
    assert calls == 5 and tokens == (1024, 512)
    assert not torch.equal(merged, base)
    assert _corr(merged, base) > 0.99  # measured 0.9995 on this model


def test_restores_model_after_exit_and_exception(sd1: Any) -> None:
    inputs = _inputs()
    base = _run(sd1, inputs)
    processors = dict(sd1.attn_processors)
    hooks = _hooks(sd1)
    with tome.token_merging(sd1, 0.5):
        assert _hooks(sd1) > hooks
        _run(sd1, inputs)
    assert torch.equal(_run(sd1, inputs), base)
    with pytest.raises(RuntimeError, match="boom"), tome.token_merging(sd1, 0.5):
        _run(sd1, inputs)
        raise RuntimeError("boom")
    assert torch.equal(_run(sd1, inputs), base)
    assert _hooks(sd1) == hooks and tome.active(sd1) is None
    after = sd1.attn_processors
    assert after.keys() == processors.keys() and all(after[k] is processors[k] for k in processors)


def test_nested_blocks_stack(sd1: Any) -> None:
    inputs = _inputs()
    base = _run(sd1, inputs)
    with tome.token_merging(sd1, 0.5):
        outer = _run(sd1, inputs)
        with tome.token_merging(sd1, 0.0):  # a pass without merging inside a job with it
            assert torch.equal(_run(sd1, inputs), base)
        with tome.token_merging(sd1, 0.3):  # the hires pass's own ratio
            _run(sd1, inputs)
            assert tome.stats(sd1)[1] == (1024, 1024 - int(1024 * 0.3))
        assert torch.equal(_run(sd1, inputs), outer)
    assert torch.equal(_run(sd1, inputs), base) and tome.active(sd1) is None


@pytest.mark.parametrize("use_rand", [False, True])
def test_deterministic(sd1: Any, use_rand: bool) -> None:
    inputs = _inputs()
    outs = []
    for _ in range(2):
        with tome.token_merging(sd1, 0.5, use_rand=use_rand):
            outs.append(_run(sd1, inputs))
    assert torch.equal(outs[0], outs[1])


def test_random_destinations_come_from_the_generator(sd1: Any) -> None:
    inputs = _inputs()
    state = torch.get_rng_state()
    with tome.token_merging(sd1, 0.5):
        fixed = _run(sd1, inputs)
    outs = []
    for seed in (5, 5, 6):
        with tome.token_merging(sd1, 0.5, use_rand=True, generator=torch.Generator().manual_seed(seed)):
            outs.append(_run(sd1, inputs))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2]) and not torch.equal(outs[0], fixed)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never drawn from


def test_non_square_latent(sd1: Any) -> None:
    inputs = _inputs(24, 40)
    base = _run(sd1, inputs)
    with _recording(sd1) as seen, tome.token_merging(sd1, 0.5):
        merged = _run(sd1, inputs)
    assert merged.shape == base.shape and seen.count(480) == 5 and 960 not in seen
    assert _corr(merged, base) > 0.99


def test_odd_latent_and_high_ratio(sd1: Any) -> None:
    inputs = _inputs(25, 19, batch=1)  # edge rows/columns outside whole 2x2 cells are all sources
    base = _run(sd1, inputs)
    with tome.token_merging(sd1, 0.9):  # A1111's slider maximum: capped at every source (3/4 of whole cells)
        merged = _run(sd1, inputs)
        n = 25 * 19
        assert tome.stats(sd1)[1] == (n, 12 * 9)
    assert torch.isfinite(merged).all() and _corr(merged, base) > 0.9


def test_batch_rows_are_merged_independently(sd1: Any) -> None:
    inputs = _inputs(batch=2)  # cond + uncond rows with different contexts
    with tome.token_merging(sd1, 0.5):
        both = _run(sd1, inputs)
        rows = [_run(sd1, {k: v[i:i + 1] for k, v in inputs.items()}) for i in range(2)]
    assert torch.allclose(both, torch.cat(rows), atol=1e-5)


def test_sdxl(sdxl: Any) -> None:
    inputs = _xl_inputs()
    base = _run(sdxl, inputs)
    # SDXL has no transformer blocks at full resolution: A1111's max_downsample=1 merges nothing there
    with tome.token_merging(sdxl, 0.5):
        assert torch.equal(_run(sdxl, inputs), base) and tome.stats(sdxl)[0] == 0
    with _recording(sdxl) as seen, tome.token_merging(sdxl, 0.5, max_downsample=2):
        merged = _run(sdxl, inputs)
    assert 32 in seen and 64 not in seen  # the 8x8 level: 64 tokens down to 32
    assert not torch.equal(merged, base) and _corr(merged, base) > 0.99
    assert torch.equal(_run(sdxl, inputs), base)


def test_matches_tomesd_matching() -> None:
    merge = pytest.importorskip("tomesd.merge")
    for h, w, r, seed in [(8, 8, 20, None), (7, 9, 25, None), (6, 10, 40, 3)]:
        x = torch.randn(2, h * w, 16, generator=torch.Generator().manual_seed(0))
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        m, u = merge.bipartite_soft_matching_random2d(x, w, h, 2, 2, r, no_rand=seed is None, generator=gen)
        ours = tome.bipartite_soft_matching(x, h, w, 2, 2, r, None if seed is None else
                                            torch.Generator().manual_seed(seed))
        assert ours is not None
        a, b = m(x), ours.merge(x)  # the same tokens, in another order
        assert torch.allclose(a.sort(dim=1).values, b.sort(dim=1).values, atol=1e-6)

        def attend(t: Tensor) -> Tensor:
            return torch.softmax(t @ t.transpose(1, 2), -1) @ t

        assert torch.allclose(u(attend(a)), ours.unmerge(attend(b)), atol=1e-5)


def test_invalid_arguments(sd1: Any) -> None:
    for ratio, sx in ((1.0, 2), (-0.1, 2), (0.5, 0)):
        with pytest.raises(ValueError), tome.token_merging(sd1, ratio, sx=sx):
            pass
    assert tome.active(sd1) is None


def test_a1111_pass_ratios() -> None:
    assert tome.pass_ratio(0.5) == 0.5
    assert tome.pass_ratio(0.5, 0.0, hires=True) == 0.5  # hires falls back to the first pass's ratio
    assert tome.pass_ratio(0.5, 0.3, hires=True) == 0.3
    assert tome.pass_ratio(0.0, 0.3, hires=True) == 0.3
    assert tome.pass_ratio(0.5, 0.3, 0.2, img2img=True) == 0.2  # img2img's own wins over the txt2img setting
    assert tome.pass_ratio(0.5, 0.3, 0.0, img2img=True) == 0.5
    assert tome.pass_ratio(0.5, 0.3, 0.2, img2img=True, ratio_overridden=True) == 0.5  # e.g. pasted infotext
    assert tome.pass_ratio(0.0, 0.3, 0.0, img2img=True, ratio_overridden=True) == 0.0


# -- in generation: the settings, the passes, the infotext -----------------------------------------------------------
def test_generation_uses_each_pass_ratio_writes_and_reads_the_infotext(data_dir, model_store, engine_factory,
                                                                        monkeypatch):
    import numpy as np

    from conftest import install_model
    from modules import param_io
    from modules.generation import img2img as img2img_module
    from modules.generation import txt2img as txt2img_module
    from modules.requests import GenerationRequest, Img2ImgRequest, ValidationError, validate

    install_model(data_dir, model_store("sd1", "safetensors"), "tiny")
    engine = engine_factory()
    used: list[tuple[float, int]] = []

    @contextlib.contextmanager
    def recording(unet: Any, ratio: float, **kw: Any) -> Iterator[None]:
        with tome.token_merging(unet, ratio, **kw):
            yield
            used.append((ratio, tome.stats(unet)[0]))  # attention calls that ran on merged tokens

    monkeypatch.setattr(txt2img_module, "token_merging", recording)
    monkeypatch.setattr(img2img_module, "token_merging", recording)
    base = GenerationRequest(prompt="a red house", seed=5, width=64, height=64, steps=3, sampler_name="Euler")
    plain = engine.txt2img(base).result
    assert used == [(0.0, 0)] and "Token merging" not in plain.infotexts[0]
    used.clear()
    merged = engine.txt2img(base.replace(token_merging_ratio=0.5)).result
    assert used[0][0] == 0.5 and used[0][1] > 0
    a, b = (np.asarray(r.images[0], dtype=np.int16) for r in (plain, merged))
    assert 0 < np.abs(a - b).mean() < 20  # merged tokens: the image moves a little
    assert "Token merging ratio: 0.5" in merged.infotexts[0] and "Token merging ratio hr" not in merged.infotexts[0]
    values, _ = param_io.read_infotext(merged.infotexts[0])
    assert values["token_merging_ratio"] == 0.5

    used.clear()
    hires = engine.txt2img(base.replace(token_merging_ratio=0.3, token_merging_ratio_hr=0.6, enable_hr=True,
                                        hr_scale=1.5, hr_upscaler="Latent", denoising_strength=0.5)).result
    assert [r for r, _ in used] == [0.3, 0.6]
    assert "Token merging ratio: 0.3" in hires.infotexts[0] and "Token merging ratio hr: 0.6" in hires.infotexts[0]

    used.clear()
    init = plain.images[0]
    i2i = Img2ImgRequest(prompt="a red house", seed=5, width=64, height=64, steps=3, sampler_name="Euler",
                         init_images=(init,), denoising_strength=0.6, token_merging_ratio=0.2,
                         token_merging_ratio_img2img=0.4)
    result = engine.img2img(i2i).result
    assert [r for r, _ in used] == [0.4] and "Token merging ratio: 0.4" in result.infotexts[0]
    # pasted into img2img, the image's ratio wins over the img2img setting (an override in A1111)
    values, _ = param_io.read_infotext(merged.infotexts[0], "img2img")
    assert values["token_merging_ratio"] == 0.5 and values["token_merging_ratio_img2img"] == 0.0

    with pytest.raises(ValidationError, match="token_merging_ratio"):
        validate(base.replace(token_merging_ratio=0.95))
