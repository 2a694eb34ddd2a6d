"""LoRA and LyCORIS networks on a tiny SD 1.x model: applied for a job as A1111 merges them, and taken off after."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import install_model
from modules.models.convert import UNET_PREFIX, unet_to_ldm
from modules.networks import lora_deltas
from modules.networks.lora import LoraTag, lora_hashes, parse_tag
from modules.networks.lora_files import addnet_sha256, read_metadata
from modules.requests import GenerationRequest

SMALL = {"width": 64, "height": 64, "steps": 3, "cfg_scale": 5.0, "sampler_name": "Euler"}
RANK, ALPHA = 4, 2.0


@pytest.fixture
def engine(data_dir, model_store, engine_factory):
    install_model(data_dir, model_store("sd1", "safetensors"), "tiny")
    (data_dir / "models" / "Lora").mkdir(parents=True)
    eng = engine_factory()
    eng.txt2img(GenerationRequest(prompt="warm up", seed=1, **SMALL))  # loads the model
    return eng


def _layers(parts) -> dict[str, tuple[str, torch.nn.Module]]:
    """kohya names -> (component, module) for the layers the test networks patch: attention and feed-forward
    Linears, one 3x3 convolution, the text encoder's projections."""
    out = {}
    for name, module in parts.unet.named_modules():
        if (isinstance(module, torch.nn.Linear) and ".attentions." in name) or name == "down_blocks.0.resnets.0.conv1":
            out["lora_unet_" + name.replace(".", "_")] = ("unet", name, module)
    for name, module in parts.text_encoder.named_modules():
        if isinstance(module, torch.nn.Linear):
            hf = name if name.startswith("text_model.") else f"text_model.{name}"
            out["lora_te_" + hf.replace(".", "_")] = ("te", name, module)
    return out


def _kohya(parts, seed: int = 0, alpha: float | None = ALPHA) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for key, (_, _, module) in _layers(parts).items():
        w = module.weight
        if w.dim() == 4:
            down = torch.randn(RANK, w.shape[1], *w.shape[2:], generator=gen) * 0.2
            up = torch.randn(w.shape[0], RANK, 1, 1, generator=gen) * 0.2
        else:
            down = torch.randn(RANK, w.shape[1], generator=gen) * 0.2
            up = torch.randn(w.shape[0], RANK, generator=gen) * 0.2
        sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = down, up
        if alpha is not None:
            sd[f"{key}.alpha"] = torch.tensor(alpha)
    return sd


@torch.no_grad()
def _merge(parts, sd, te: float, unet: float) -> None:
    """W + weight * alpha/rank * up @ down, written out by hand."""
    for key, (component, _, module) in _layers(parts).items():
        up, down = sd[f"{key}.lora_up.weight"], sd[f"{key}.lora_down.weight"]
        scale = float(sd[f"{key}.alpha"]) / RANK if f"{key}.alpha" in sd else 1.0
        if down.dim() == 4:
            delta = torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
        else:
            delta = up @ down
        module.weight += (te if component == "te" else unet) * scale * delta


def _pixels(job) -> np.ndarray:
    return np.asarray(job.result.images[0], dtype=np.int16)


def _state(parts) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.clone() for n, m in (("unet", parts.unet), ("te", parts.text_encoder))
            for k, v in m.state_dict().items()}


def _restore(parts, state) -> None:
    for n, m in (("unet", parts.unet), ("te", parts.text_encoder)):
        m.load_state_dict({k[len(n) + 1:]: v for k, v in state.items() if k.startswith(n + ".")})


def test_a_kohya_lora_gives_the_image_of_the_model_with_it_merged_and_the_model_stays_clean(engine, data_dir):
    parts = engine.models.current
    sd = _kohya(parts)
    save_file(sd, str(data_dir / "models" / "Lora" / "style.safetensors"), metadata={"ss_output_name": "styleAlias"})
    engine.networks.refresh()
    before = _state(parts)
    req = GenerationRequest(prompt="a red house <lora:style:0.8:0.6>", negative_prompt="blurry", seed=7, **SMALL)
    with_lora = engine.txt2img(req)
    after = _state(parts)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the cached model is back as loaded
    plain = engine.txt2img(req.replace(prompt="a red house"))
    assert np.abs(_pixels(with_lora) - _pixels(plain)).max() > 10  # the network changes the image
    _merge(parts, sd, te=0.8, unet=0.6)
    try:
        merged = engine.txt2img(req.replace(prompt="a red house"))
    finally:
        _restore(parts, before)
    assert np.abs(_pixels(with_lora) - _pixels(merged)).max() <= 1
    # the alias finds it too; weight 0 is the plain image; the infotext has A1111's hash
    assert np.array_equal(_pixels(engine.txt2img(req.replace(prompt="a red house <lora:styleAlias:0.8:0.6>"))),
                          _pixels(with_lora))
    assert np.array_equal(_pixels(engine.txt2img(req.replace(prompt="a red house <lora:style:0>"))), _pixels(plain))
    short = addnet_sha256(data_dir / "models" / "Lora" / "style.safetensors")[:12]
    assert f'Lora hashes: "style: {short}"' in with_lora.result.infotexts[0]
    assert with_lora.result.infotexts[0].startswith("a red house <lora:style:0.8:0.6>\n")


def test_compvis_and_peft_key_layouts_give_the_kohya_image(engine, data_dir):
    parts = engine.models.current
    folder = data_dir / "models" / "Lora"
    kohya = _kohya(parts, seed=3, alpha=float(RANK))
    save_file(kohya, str(folder / "kohya.safetensors"))
    compvis, peft = {}, {}
    for key, (component, name, _) in _layers(parts).items():
        up, down = kohya[f"{key}.lora_up.weight"], kohya[f"{key}.lora_down.weight"]
        if component == "unet":
            (ldm,) = unet_to_ldm({f"{name}.weight": up}, parts.unet.config)
            ck = "lora_unet_" + ldm[len(UNET_PREFIX):-len(".weight")].replace(".", "_")
            peft[f"unet.{name}.lora_A.weight"], peft[f"unet.{name}.lora_B.weight"] = down, up
        else:
            ck = key
            hf = name if name.startswith("text_model.") else f"text_model.{name}"
            peft[f"text_encoder.{hf}.lora_A.weight"], peft[f"text_encoder.{hf}.lora_B.weight"] = down, up
        compvis[f"{ck}.lora_down.weight"], compvis[f"{ck}.lora_up.weight"] = down, up
        compvis[f"{ck}.alpha"] = torch.tensor(float(RANK))
    save_file(compvis, str(folder / "compvis.safetensors"))
    torch.save(peft, folder / "peft.pt")
    engine.networks.refresh()
    req = GenerationRequest(prompt="a boat <lora:kohya:0.7>", seed=4, **SMALL)
    want = _pixels(engine.txt2img(req))
    for name in ("compvis", "peft"):
        job = engine.txt2img(req.replace(prompt=f"a boat <lora:{name}:0.7>"))
        assert not [w for w in job.result.warnings if "LoRA" in w], job.result.warnings
        assert np.abs(_pixels(job) - want).max() <= 1, name


def test_several_loras_and_the_lyco_alias(engine, data_dir):
    parts = engine.models.current
    folder = data_dir / "models" / "Lora" / "sub"
    folder.mkdir()
    a, b = _kohya(parts, seed=1), _kohya(parts, seed=2)
    save_file(a, str(folder / "a.safetensors"))
    save_file(b, str(folder / "b.safetensors"))
    engine.networks.refresh()
    before = _state(parts)
    req = GenerationRequest(prompt="x <lora:a:0.5> <lyco:b:unet=0.3:te=0.4>", seed=2, **SMALL)
    both = engine.txt2img(req)
    _merge(parts, a, te=0.5, unet=0.5)
    _merge(parts, b, te=0.4, unet=0.3)
    try:
        merged = engine.txt2img(req.replace(prompt="x"))
    finally:
        _restore(parts, before)
    assert np.abs(_pixels(both) - _pixels(merged)).max() <= 1
    assert 'Lora hashes: "a: ' in both.result.infotexts[0] and ", b: " in both.result.infotexts[0]


def test_bad_network_files_are_named_in_a_warning_and_the_image_is_made(engine, data_dir):
    folder = data_dir / "models" / "Lora"
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    good = _kohya(engine.models.current)
    save_file(good, str(folder / "truncated.safetensors"))
    data = (folder / "truncated.safetensors").read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "evil.pt").write_bytes(pickle.dumps({"lora_te_x.lora_up.weight": Evil()}))
    xl = {"lora_unet_label_emb_0_0.lora_down.weight": torch.zeros(4, 2816),  # SDXL's own layers only
          "lora_unet_label_emb_0_0.lora_up.weight": torch.zeros(1280, 4),
          "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 1280),
          "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(5120, 4)}
    save_file(xl, str(folder / "sdxl.safetensors"))
    wrong = {k: (v[:, :-1].contiguous() if k.endswith("down.weight") else v) for k, v in good.items()}  # misfit
    save_file(wrong, str(folder / "wrong.safetensors"))
    engine.networks.refresh()
    parts = engine.models.current
    before = _state(parts)
    job = engine.txt2img(GenerationRequest(
        prompt="a cat <lora:broken:1> <lora:truncated:1> <lora:evil:1> <lora:sdxl:1> <lora:wrong:1> <lora:nope:1>",
        seed=1, **SMALL))
    assert len(job.result.images) == 1
    text = "\n".join(job.result.warnings)
    for name in ("broken.safetensors", "truncated.safetensors", "evil.pt", "sdxl.safetensors", "wrong.safetensors",
                 "LoRA not found: nope"):
        assert name in text, (name, text)
    assert "another model family" in text
    after = _state(parts)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "Lora hashes" not in job.result.infotexts[0]


def test_lora_tag_arguments_as_a1111_reads_them():
    assert parse_tag(["n"]) == LoraTag("n", 1.0, 1.0, None)
    assert parse_tag(["n", "0.5"]) == LoraTag("n", 0.5, 0.5, None)
    assert parse_tag(["n", "0.5", "0.2"]) == LoraTag("n", 0.5, 0.2, None)
    assert parse_tag(["n", "unet=0.3", "te=0.7"]) == LoraTag("n", 0.7, 0.3, None)
    assert parse_tag(["n", "1", "1", "8"]) == LoraTag("n", 1.0, 1.0, 8)
    assert parse_tag(["n", "te=0.2", "dyn=4"]) == LoraTag("n", 0.2, 0.2, 4)
    with pytest.raises(ValueError):
        parse_tag(["n", "heavy"])
    assert lora_hashes({"a:b,c": "0123456789ab", "d": "ba9876543210"}) == "abc: 0123456789ab, d: ba9876543210"
    assert lora_hashes({}) is None


def test_addnet_hash_and_metadata_as_a1111_reads_them(tmp_path):
    path = tmp_path / "n.safetensors"
    metadata = {"ss_output_name": "nice", "ss_tag_frequency": '{"a": {"b": 2}}', "odd": "[NaN]", "plain": "text"}
    save_file({"w": torch.ones(3)}, str(path), metadata=metadata)
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert addnet_sha256(path) == hashlib.sha256(raw[8 + length:]).hexdigest()
    meta = read_metadata(path)
    assert meta["ss_tag_frequency"] == {"a": {"b": 2}} and meta["odd"] == "[NaN]" and meta["plain"] == "text"
    json.dumps(meta, allow_nan=False)


def test_lycoris_changes_follow_their_formulas():
    torch.manual_seed(0)
    weight = torch.randn(6, 4)
    a1, b1, a2, b2 = torch.randn(6, 2), torch.randn(2, 4), torch.randn(6, 2), torch.randn(2, 4)
    loha = lora_deltas.compute_delta({"hada_w1_a": a1, "hada_w1_b": b1, "hada_w2_a": a2, "hada_w2_b": b2,
                                      "alpha": torch.tensor(1.0)}, weight, False)
    assert torch.allclose(loha.weight, (a1 @ b1) * (a2 @ b2) * 0.5)
    w1, w2 = torch.randn(2, 2), torch.randn(3, 2)
    lokr = lora_deltas.compute_delta({"lokr_w1": w1, "lokr_w2": w2}, weight, False)
    assert torch.allclose(lokr.weight, torch.kron(w1, w2))
    scale = torch.randn(6)
    ia3 = lora_deltas.compute_delta({"weight": scale, "on_input": torch.tensor(False)}, weight, False)
    assert torch.allclose(ia3.weight, weight * scale[:, None])
    diff = torch.randn(6, 4)
    full = lora_deltas.compute_delta({"diff": diff, "diff_b": torch.ones(6)}, weight, True)
    assert torch.equal(full.weight, diff) and torch.equal(full.bias, torch.ones(6))
    norm = lora_deltas.compute_delta({"w_norm": torch.ones(4), "b_norm": torch.zeros(4)}, torch.ones(4), True)
    assert torch.equal(norm.weight, torch.ones(4))
    rotation = torch.linalg.qr(torch.randn(3, 3))[0]
    oft = lora_deltas.compute_delta({"oft_diag": torch.stack([rotation, rotation])}, weight, False)
    rows = weight.reshape(2, 3, 4)
    assert torch.allclose(oft.weight, torch.einsum("knm,knc->kmc", torch.stack([rotation] * 2), rows).reshape(6, 4)
                          - weight, atol=1e-6)
    with pytest.raises(lora_deltas.UnsupportedModule):
        lora_deltas.compute_delta({"lora_up.weight": a1, "lora_down.weight": b1, "dora_scale": torch.ones(6)},
                                  weight, False)


def test_loras_route_lists_files_with_alias_and_metadata_and_refresh_finds_new_ones(api, data_dir):
    folder = data_dir / "models" / "Lora" / "people"
    folder.mkdir(parents=True, exist_ok=True)
    assert api.get("/sdapi/v1/loras").json() == []
    save_file({"lora_te_x.lora_up.weight": torch.zeros(2, 1)}, str(folder / "face.safetensors"),
              metadata={"ss_output_name": "faceAlias", "ss_network_dim": "4"})
    (folder / "bad.safetensors").write_bytes(b"\xff" * 4)
    assert api.post("/sdapi/v1/refresh-loras").status_code == 200
    listed = {e["name"]: e for e in api.get("/sdapi/v1/loras").json()}
    assert set(listed) == {"face", "bad"}
    assert listed["face"]["alias"] == "faceAlias" and listed["face"]["metadata"]["ss_network_dim"] == "4"
    assert listed["face"]["path"].endswith("face.safetensors") and listed["bad"]["metadata"] == {}


def test_pasting_an_infotext_finds_a_renamed_lora_by_its_hash(tmp_path):
    from modules.networks.service import ExtraNetworks

    folder = tmp_path / "Lora"
    folder.mkdir()
    save_file({"lora_te_x.lora_up.weight": torch.ones(2, 1)}, str(folder / "renamed.safetensors"))
    save_file({"lora_te_x.lora_up.weight": torch.zeros(2, 1)}, str(folder / "other.safetensors"))
    networks = ExtraNetworks([folder])
    short = addnet_sha256(folder / "renamed.safetensors")[:12]
    text = (f"a <lora:oldname:0.7> and <lora:other:0.2> <lora:gone:1>\nSteps: 3, Seed: 1, "
            f'Lora hashes: "oldname: {short}, gone: 0123456789ab"')
    values = networks.pasted({"prompt": "a <lora:oldname:0.7> and <lora:other:0.2> <lora:gone:1>"}, text)
    assert values["prompt"] == "a <lora:renamed:0.7> and <lora:other:0.2> <lora:gone:1>"
    assert networks.pasted({"prompt": "p"}, "p\nSteps: 3, Seed: 1, Sampler: Euler") == {"prompt": "p"}


def test_the_api_infotext_field_renames_loras_by_hash(api, data_dir):
    parts_file = data_dir / "models" / "Lora"
    parts_file.mkdir(parents=True, exist_ok=True)
    save_file({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(1, 1)},
              str(parts_file / "newname.safetensors"))
    api.post("/sdapi/v1/refresh-loras")
    short = addnet_sha256(parts_file / "newname.safetensors")[:12]
    infotext = f'a tree <lora:oldname:0.5>\nSteps: 2, Seed: 3, Size: 64x64, Lora hashes: "oldname: {short}"'
    r = api.post("/sdapi/v1/txt2img", json={"infotext": infotext, "width": 64, "height": 64})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["prompt"] == "a tree <lora:newname:0.5>"
    assert not [w for w in info.get("warnings", []) if "not found" in w]


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_kohya_files_of_sd2_and_sdxl_patch_every_layer_they_name(data_dir, model_store, engine_factory, family):
    """kohya's SD 2.x names (diffusers UNet paths, HF CLIP) and SDXL names (the original SGM UNet paths,
    ``lora_te1_``/``lora_te2_`` for the two text encoders): each layer gets W + weight * alpha/rank * up @ down."""
    install_model(data_dir, model_store(family, "safetensors"), f"tiny-{family}")
    (data_dir / "models" / "Lora").mkdir(parents=True)
    engine = engine_factory()
    parts = engine.models.get(None)
    gen = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    expected: list[tuple[torch.nn.Module, torch.Tensor]] = []
    layers = [(n, m) for n, m in parts.unet.named_modules() if isinstance(m, torch.nn.Linear) and ".attentions." in n]
    ldm = unet_to_ldm({f"{n}.weight": n for n, _ in layers}, parts.unet.config) if family == "sdxl" else None
    names = {n: k for k, n in ldm.items()} if ldm else {}
    encoders = [("lora_te1_" if family == "sdxl" else "lora_te_", parts.text_encoder)]
    if family == "sdxl":
        encoders.append(("lora_te2_", parts.text_encoder_2))
    targets = []
    for n, m in layers:
        path = names[n][len(UNET_PREFIX):-len(".weight")] if names else n
        targets.append(("lora_unet_" + path.replace(".", "_"), m, 0.6))
    for prefix, encoder in encoders:
        for n, m in encoder.named_modules():
            if isinstance(m, torch.nn.Linear) and "layers." in n:
                hf = n if n.startswith("text_model.") else f"text_model.{n}"
                targets.append((prefix + hf.replace(".", "_"), m, 0.9))
    for key, module, weight in targets:
        down = torch.randn(2, module.in_features, generator=gen)
        up = torch.randn(module.out_features, 2, generator=gen)
        sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = down, up
        sd[f"{key}.alpha"] = torch.tensor(1.0)
        expected.append((module, module.weight.detach().clone() + weight * 0.5 * (up @ down)))
    save_file(sd, str(data_dir / "models" / "Lora" / "net.safetensors"))
    engine.networks.refresh()
    warnings: list[str] = []
    with engine.networks.loras.applied(parts, [LoraTag("net", 0.9, 0.6)], warnings.append) as applied:
        assert not warnings and applied.hashes
        for module, want in expected:
            assert torch.allclose(module.weight, want, atol=1e-5)
    assert all(not torch.allclose(module.weight, want, atol=1e-5) for module, want in expected[:3])
