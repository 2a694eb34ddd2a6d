"""The merge engine: A1111's arithmetic exactly, options, metadata, inpainting rules, formats, failures."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from modules.errors import Interrupted, ModelLoadError, ValidationError
from modules.merge import Merge, MergeError, MergeOptions, ModelRef
from modules.merge import merger as merger_mod
from modules.merge.safetensors_io import StreamingWriter
from modules.models.checkpoint_file import load_pickle_checkpoint

UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
POS_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"
TOKENS = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"


def synth(path: Path, seed: int, family: str = "sd1", in_ch: int = 4, dtype: torch.dtype = torch.float32,
          drop: tuple[str, ...] = (), extra: dict[str, torch.Tensor] | None = None,
          metadata: dict[str, str] | None = None) -> Path:
    """A small checkpoint with the key layout (prefixes, odd keys) of a real one, random values from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g).to(dtype)  # noqa: E731
    te = "conditioner.embedders.0.transformer.text_model." if family == "sdxl" else \
        "cond_stage_model.transformer.text_model."
    sd = {
        UNET_IN: r(8, in_ch, 3, 3), "model.diffusion_model.input_blocks.0.0.bias": r(8),
        "model.diffusion_model.out.2.weight": r(4, 8, 3, 3), "model.diffusion_model.time_embed.0.weight": r(33, 7),
        "first_stage_model.decoder.conv_in.weight": r(8, 4, 3, 3), "first_stage_model.encoder.conv_in.bias": r(8),
        te + "embeddings.token_embedding.weight": r(100, 16), te + "embeddings.position_ids": torch.arange(77)[None],
        "alphas_cumprod": r(10), "model_ema.decay": torch.tensor(0.999, dtype=dtype),
    }
    if family == "sdxl":
        sd["conditioner.embedders.1.model.ln_final.weight"] = r(16)
    sd.update(extra or {})
    for key in drop:
        sd.pop(key, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata=metadata)
    return path


def ref(path: Path) -> ModelRef:
    return ModelRef.from_path(path)


def merge(tmp: Path, a: Path, b: Path | None = None, c: Path | None = None, **options) -> merger_mod.MergeResult:
    options.setdefault("chunk_bytes", 100)  # several chunks per tensor: chunking must not change a bit
    with Merge(ref(a), b and ref(b), c and ref(c), MergeOptions(**options), output_dir=tmp / "out") as m:
        return m.run()


def merged_key(key: str) -> bool:
    return "model" in key and not key.endswith("position_ids")


@pytest.mark.parametrize("m", [0.0, 0.3, 0.75, 1.0])
def test_weighted_sum_exact(tmp_path, m):
    a = synth(tmp_path / "a.safetensors", 1)
    b = synth(tmp_path / "b.safetensors", 2, extra={"model.only_b": torch.ones(3)})
    result = merge(tmp_path, a, b, multiplier=m)
    assert result.path.name == f"{round(1 - m, 2)}(a) + {round(m, 2)}(b).safetensors"
    A, B, out = load_file(a), load_file(b), load_file(result.path)
    assert set(out) == set(A)  # keys only in B are dropped, keys only in A kept
    for key in A:
        expected = ((1 - m) * A[key]) + (m * B[key]) if merged_key(key) else A[key]
        assert out[key].dtype == expected.dtype and torch.equal(out[key], expected), key
    assert torch.equal(out[POS_IDS], A[POS_IDS]) and out[POS_IDS].dtype == torch.int64
    assert hashlib.sha256(result.path.read_bytes()).hexdigest() == result.sha256


def test_add_difference_exact_and_key_missing_from_c(tmp_path):
    a, b = synth(tmp_path / "a.safetensors", 1), synth(tmp_path / "b.safetensors", 2)
    c = synth(tmp_path / "c.safetensors", 3, drop=(TOKENS,))
    result = merge(tmp_path, a, b, c, method="add_difference", multiplier=0.6)
    assert result.path.name == "a + 0.6(b - c).safetensors"
    A, B, C, out = load_file(a), load_file(b), load_file(c), load_file(result.path)
    for key in A:
        if not merged_key(key):
            expected = A[key]
        elif key in C:
            expected = A[key] + (0.6 * (B[key] - C[key]))
        else:
            expected = A[key] + (0.6 * torch.zeros_like(B[key]))
        assert torch.equal(out[key], expected), key


def test_no_interpolation_fp16_discard_and_dtype_promotion(tmp_path):
    a = synth(tmp_path / "a.safetensors", 1)
    result = merge(tmp_path, a, method="none", save_as_half=True, discard_weights=r"^first_stage_model\.",
                   custom_name="halved")
    out, A = load_file(result.path), load_file(a)
    assert result.path.name == "halved.safetensors"
    assert not any(k.startswith("first_stage_model.") for k in out)
    assert set(out) == {k for k in A if not k.startswith("first_stage_model.")}
    for key, value in out.items():
        assert torch.equal(value, A[key].half() if A[key].dtype == torch.float32 else A[key]), key
    # fp16 A + fp32 B: computed as torch promotes (float32); with "Save as float16" halved
    b32 = synth(tmp_path / "b32.safetensors", 2)
    a16 = synth(tmp_path / "a16.safetensors", 1, dtype=torch.float16)
    out = load_file(merge(tmp_path, a16, b32, multiplier=0.5).path)
    assert out[TOKENS].dtype == torch.float32
    assert torch.equal(out[TOKENS], (0.5 * load_file(a16)[TOKENS]) + (0.5 * load_file(b32)[TOKENS]))
    out = load_file(merge(tmp_path, a16, b32, multiplier=0.5, save_as_half=True, custom_name="h").path)
    assert out[TOKENS].dtype == torch.float16


@pytest.mark.parametrize("channels,suffix", [(9, "inpainting"), (8, "instruct-pix2pix")])
def test_inpainting_a_merges_first_four_channels(tmp_path, channels, suffix):
    a = synth(tmp_path / "a.safetensors", 1, in_ch=channels)
    b = synth(tmp_path / "b.safetensors", 2)
    result = merge(tmp_path, a, b, multiplier=0.25)
    assert result.path.name == f"0.75(a) + 0.25(b).{suffix}.safetensors"
    assert (result.is_inpainting, result.is_instruct_pix2pix) == (channels == 9, channels == 8)
    A, B, out = load_file(a), load_file(b), load_file(result.path)
    assert torch.equal(out[UNET_IN][:, :4], (0.75 * A[UNET_IN][:, :4]) + (0.25 * B[UNET_IN]))
    assert torch.equal(out[UNET_IN][:, 4:], A[UNET_IN][:, 4:])
    with safe_open(str(result.path), "pt") as f:
        recipe = json.loads(f.metadata()["sd_merge_recipe"])
    assert recipe["is_inpainting"] is (channels == 9) and recipe["is_instruct_pix2pix"] is (channels == 8)
    with pytest.raises(ValidationError, match=f"A must be the {suffix} model"):
        merge(tmp_path, b, a)


def test_different_families_refused_naming_both(tmp_path):
    a, b = synth(tmp_path / "a.safetensors", 1), synth(tmp_path / "xl.safetensors", 2, family="sdxl")
    with pytest.raises(ValidationError, match=r"A \(a.safetensors\) is SD 1.x, B \(xl.safetensors\) is SDXL"):
        merge(tmp_path, a, b)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_metadata_recipe_as_a1111_writes_it(tmp_path):
    a = synth(tmp_path / "a.safetensors", 1, metadata={"ss_note": "from a"})
    b = synth(tmp_path / "b.safetensors", 2)
    first = merge(tmp_path, a, b, multiplier=0.5, metadata_json='{"author": "me", "n": 3}')
    with safe_open(str(first.path), "pt") as f:
        meta = f.metadata()
    sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    recipe = json.loads(meta["sd_merge_recipe"])
    assert recipe == {"type": "webui", "primary_model_hash": sha(a), "secondary_model_hash": sha(b),
                      "tertiary_model_hash": None, "interp_method": "Weighted sum", "multiplier": 0.5,
                      "save_as_half": False, "custom_name": "", "config_source": 0, "bake_in_vae": "None",
                      "discard_weights": "", "is_inpainting": False, "is_instruct_pix2pix": False}
    models = json.loads(meta["sd_merge_models"])
    assert models[sha(a)]["name"] == "a.safetensors" and models[sha(a)]["sd_merge_recipe"] is None
    assert len(models[sha(b)]["legacy_hash"]) == 8
    assert meta["format"] == "pt" and meta["ss_note"] == "from a" and meta["author"] == "me" and meta["n"] == "3"
    # merging the merge nests its recipe and keeps the models it came from
    second = merge(tmp_path, first.path, a, method="weighted_sum", multiplier=0.1, custom_name="again")
    with safe_open(str(second.path), "pt") as f:
        nested = json.loads(f.metadata()["sd_merge_models"])
    assert nested[first.sha256]["sd_merge_recipe"]["multiplier"] == 0.5 and sha(b) in nested
    bare = merge(tmp_path, a, b, save_metadata=False, custom_name="bare")
    with safe_open(str(bare.path), "pt") as f:
        assert not f.metadata()


def test_bake_vae_in_each_layout(tmp_path, model_store):
    from modules.models import convert
    from modules.models.tiny import build_components

    a = model_store("sd1", "safetensors")
    vae = build_components("sd1", seed=7)["vae"]
    layouts = {"diffusers": {k: v.contiguous() for k, v in vae.state_dict().items()}}
    ldm = convert.vae_to_ldm(layouts["diffusers"], vae.config)
    layouts["prefixed"] = {k: v.contiguous() for k, v in ldm.items()}
    layouts["bare"] = {k.removeprefix("first_stage_model."): v.contiguous() for k, v in ldm.items()}
    for name, sd in layouts.items():
        path = tmp_path / "VAE" / f"{name}.safetensors"
        path.parent.mkdir(exist_ok=True)
        save_file(sd, str(path))
        result = merge(tmp_path, a, method="none", vae=path, vae_name=path.name, custom_name=f"baked-{name}",
                       save_as_half=name == "bare", chunk_bytes=1 << 16)
        out, A = load_file(result.path), load_file(a)
        assert set(out) == set(A)
        for key, value in ldm.items():
            expected = value.half() if name == "bare" else value
            assert torch.equal(out[key], expected), (name, key)
        assert torch.equal(out[UNET_IN], A[UNET_IN].half() if name == "bare" else A[UNET_IN])
        with safe_open(str(result.path), "pt") as f:
            assert json.loads(f.metadata()["sd_merge_recipe"])["bake_in_vae"] == path.name
    with pytest.raises(ValidationError, match="VAE does not fit"):
        merge(tmp_path, synth(tmp_path / "s.safetensors", 1), method="none", vae=tmp_path / "VAE" / "bare.safetensors")


def test_diffusers_folder_converts_and_generates_the_same_image(data_dir, model_store, engine_factory):
    import numpy as np

    from modules.requests import GenerationRequest
    from tests.conftest import install_model

    folder = install_model(data_dir, model_store("sd1", "diffusers"), "folder")
    target = data_dir / "models" / "Stable-diffusion"
    with Merge(ref(folder), None, None, MergeOptions(method="none", custom_name="converted"),
               output_dir=target) as m:
        result = m.run()
    assert result.path == target / "converted.safetensors" and result.config == target / "converted"
    assert not list(result.config.rglob("*.safetensors"))  # the config folder carries no weights
    engine = engine_factory()
    req = GenerationRequest(prompt="a cat", seed=11, width=64, height=64, steps=3)
    images = [engine.txt2img(req.replace(checkpoint=name)).result.images[0]
              for name in ("folder", "converted.safetensors")]
    diff = np.abs(np.asarray(images[0], dtype=int) - np.asarray(images[1], dtype=int))
    # the same weights; the summation order of a matmul may differ with the thread count and memory layout
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())


def test_ckpt_input_and_output(tmp_path, model_store):
    st, ck = model_store("sd1", "safetensors"), model_store("sd1", "ckpt")
    from_st = merge(tmp_path, st, method="none", custom_name="st", chunk_bytes=1 << 16)
    result = merge(tmp_path, ck, method="none", checkpoint_format="ckpt", custom_name="ck")
    assert result.path.suffix == ".ckpt"
    out = load_pickle_checkpoint(result.path)
    assert set(out) == set(load_file(from_st.path))
    assert all(torch.equal(out[k], v) for k, v in load_file(from_st.path).items())


def _listing(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("failure", ["exception", "disk_full", "interrupt"])
def test_failure_leaves_no_partial_file_and_inputs_untouched(tmp_path, monkeypatch, failure):
    a = synth(tmp_path / "in" / "a.safetensors", 1)
    b = synth(tmp_path / "in" / "b.safetensors", 2)
    before = _listing(tmp_path / "in")
    calls = {"n": 0}
    real_write = StreamingWriter.write

    def failing_write(self, key, tensor):
        calls["n"] += 1
        if calls["n"] == 5 and failure != "interrupt":
            if failure == "disk_full":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise RuntimeError("injected failure")
        return real_write(self, key, tensor)

    monkeypatch.setattr(StreamingWriter, "write", failing_write)
    expected = {"exception": RuntimeError, "disk_full": MergeError, "interrupt": Interrupted}[failure]
    with Merge(ref(a), ref(b), None, MergeOptions(chunk_bytes=100), output_dir=tmp_path / "in") as m:
        with pytest.raises(expected) as info:
            m.run(should_stop=(lambda: calls["n"] >= 3) if failure == "interrupt" else None)
    if failure == "disk_full":
        assert "not enough disk space" in str(info.value)
    assert _listing(tmp_path / "in") == before  # no output, no temporary file, inputs byte for byte the same


def test_bad_inputs(tmp_path, monkeypatch):
    a = synth(tmp_path / "a.safetensors", 1)
    b = synth(tmp_path / "b.safetensors", 2, extra={TOKENS: torch.zeros(99, 16)})
    with pytest.raises(ModelLoadError, match="not found"):
        merge(tmp_path, a, tmp_path / "missing.safetensors")
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(a.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match="corrupt or not a safetensors file"):
        merge(tmp_path, a, truncated)
    text = tmp_path / "notes.safetensors"
    text.write_text("not a model")
    with pytest.raises(ModelLoadError, match="corrupt or not a safetensors file"):
        merge(tmp_path, a, text)
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.weight": torch.zeros(2)}, str(lora))
    with pytest.raises(ModelLoadError, match="not a Stable Diffusion checkpoint"):
        merge(tmp_path, a, lora)
    with pytest.raises(ValidationError, match=r"mismatched shapes for .*token_embedding.*\[100, 16\].*\[99, 16\]"):
        merge(tmp_path, a, b)
    with pytest.raises(ValidationError, match="invalid regular expression"):
        merge(tmp_path, a, method="none", discard_weights="([")
    with pytest.raises(ValidationError, match="requires a tertiary model"):
        merge(tmp_path, a, a, method="add_difference")
    with pytest.raises(ValidationError, match="invalid custom name"):
        merge(tmp_path, a, method="none", custom_name="../escape")
    first = merge(tmp_path, a, method="none")
    with pytest.raises(ValidationError, match="already exists"):
        merge(tmp_path, a, method="none")
    assert merge(tmp_path, a, method="none", overwrite=True, save_as_half=True).path == first.path
    with pytest.raises(ValidationError, match="would replace model A"):
        with Merge(ref(a), None, None, MergeOptions(method="none", overwrite=True), output=a):
            pass
    monkeypatch.setattr(merger_mod.shutil, "disk_usage", lambda p: type("U", (), {"free": 10})())
    with pytest.raises(MergeError, match="not enough disk space"):
        merge(tmp_path, a, method="none", custom_name="nospace")
    assert not (tmp_path / "out" / "nospace.safetensors").exists()


@pytest.mark.parametrize("dtypes", [(torch.float16, torch.float32, torch.bfloat16), (torch.bfloat16,) * 3,
                                    (torch.float32, torch.float16, torch.float16),
                                    (torch.float64, torch.float16, None)])
def test_planned_dtype_is_what_the_arithmetic_gives(dtypes):
    from modules.merge.plan import combine, result_dtype

    a, b, c = (torch.ones(2, 3, dtype=d) if d is not None else None for d in dtypes)
    for method in ("weighted_sum", "add_difference"):
        in_c = c is not None and method == "add_difference"
        out = combine(method, 0.3, a, b, c if in_c else None, False, in_c)
        assert out.dtype == result_dtype(a.dtype, b.dtype, c.dtype if in_c else None, False)
