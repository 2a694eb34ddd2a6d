"""A1111 hypernetworks on a tiny SD 1.x model: ``<hypernet:name:multiplier>`` runs the UNet's attention keys and
values through the file's MLPs for the job, and the model is as loaded afterwards."""

from __future__ import annotations

import json
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import NV_NOTE, install_model
from modules.networks.hypernetworks import (
    Active,
    HypernetTag,
    Hypernetwork,
    HypernetworkAttnProcessor,
    HypernetworkRegistry,
    Layout,
    build_module,
    load_hypernetwork,
    parse_tag,
    processors_installed,
)
from modules.paths import Paths
from modules.requests import GenerationRequest

SMALL = {"width": 64, "height": 64, "steps": 3, "cfg_scale": 5.0, "sampler_name": "Euler"}
StateDict = dict[str, torch.Tensor]


@pytest.fixture
def engine(data_dir, model_store, engine_factory):
    install_model(data_dir, model_store("sd1", "safetensors"), "tiny")
    (data_dir / "models" / "hypernetworks").mkdir(parents=True)
    eng = engine_factory()
    eng.txt2img(GenerationRequest(prompt="warm up", seed=1, **SMALL))  # loads the model
    return eng


def _folder(data_dir: Path) -> Path:
    return data_dir / "models" / "hypernetworks"


def _widths(unet: torch.nn.Module) -> list[int]:
    """The context widths of the UNet's key projections (text context and the blocks' own features)."""
    from diffusers.models.attention_processor import Attention

    return sorted({m.to_k.in_features for m in unet.modules() if isinstance(m, Attention)})


def _mlp(width: int, gen: torch.Generator, scale: float = 0.3, zero_last: bool = False) -> StateDict:
    """A1111's default-layout MLP ([1, 2, 1], relu between the layers, none after the last): its state dict keys
    are ``linear.0`` and ``linear.2`` because the activation takes place 1."""
    last_w = torch.zeros(width, 2 * width) if zero_last else torch.randn(width, 2 * width, generator=gen) * scale
    last_b = torch.zeros(width) if zero_last else torch.randn(width, generator=gen) * scale
    return OrderedDict([("linear.0.weight", torch.randn(2 * width, width, generator=gen) * scale),
                        ("linear.0.bias", torch.randn(2 * width, generator=gen) * scale),
                        ("linear.2.weight", last_w), ("linear.2.bias", last_b)])


def _network(widths: list[int], seed: int, zero_last: bool = False) -> dict[object, object]:
    gen = torch.Generator().manual_seed(seed)
    data: dict[object, object] = {w: (_mlp(w, gen, zero_last=zero_last), _mlp(w, gen, zero_last=zero_last))
                                  for w in widths}
    data.update({"step": 100, "name": f"net{seed}", "layer_structure": [1, 2, 1], "activation_func": "relu",
                 "is_layer_norm": False, "weight_initialization": "Normal", "sd_checkpoint": "abc",
                 "sd_checkpoint_name": "tiny", "activate_output": False, "use_dropout": False,
                 "dropout_structure": [0, 0, 0], "last_layer_dropout": False, "optional_info": None})
    return data


def _hand(sd: StateDict, x: torch.Tensor, multiplier: float) -> torch.Tensor:
    """``x + mlp(x) * multiplier`` written out for the default layout."""
    hidden = torch.relu(x @ sd["linear.0.weight"].T + sd["linear.0.bias"])
    return x + (hidden @ sd["linear.2.weight"].T + sd["linear.2.bias"]) * multiplier


class _ReferenceAttention:
    """Attention computed the plain way (scores, softmax, weighted sum) with the key and value contexts through
    the given networks' MLPs by hand, in chain order."""

    def __init__(self, networks: list[tuple[dict[object, object], float]]) -> None:
        self.networks = networks

    def contexts(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        context_k = context_v = context
        for data, multiplier in self.networks:
            pair = data.get(int(context.shape[-1]))
            if isinstance(pair, tuple):
                context_k, context_v = _hand(pair[0], context_k, multiplier), _hand(pair[1], context_v, multiplier)
        return context_k, context_v

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        context_k, context_v = self.contexts(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context_k))
        value = attn.head_to_batch_dim(attn.to_v(context_v))
        weights = (query @ key.transpose(-1, -2) * attn.scale).softmax(dim=-1)
        out = attn.batch_to_head_dim(weights @ value)
        return attn.to_out[1](attn.to_out[0](out))


def _pixels(job) -> np.ndarray:
    return np.asarray(job.result.images[0], dtype=np.int16)


def _processors(unet) -> dict[str, int]:
    return {name: id(p) for name, p in unet.attn_processors.items()}


def _weights(parts) -> StateDict:
    return {k: v.clone() for k, v in parts.unet.state_dict().items()}


def test_a_zero_output_network_is_the_plain_image_and_weights_change_it(engine, data_dir):
    parts = engine.models.current
    widths = _widths(parts.unet)
    torch.save(_network(widths, 1, zero_last=True), _folder(data_dir) / "zero.pt")
    torch.save(_network(widths, 2), _folder(data_dir) / "real.pt")
    engine.networks.refresh()
    req = GenerationRequest(prompt="a red house", negative_prompt="blurry", seed=7, **SMALL)
    plain = engine.txt2img(req)
    zero = engine.txt2img(req.replace(prompt="a red house <hypernet:zero:1.5>"))
    assert np.array_equal(_pixels(zero), _pixels(plain))
    real = engine.txt2img(req.replace(prompt="a red house <hypernet:real:0.8>"))
    assert np.abs(_pixels(real) - _pixels(plain)).max() > 10
    assert [w for w in real.result.warnings if not w.startswith(NV_NOTE)] == []
    assert real.result.infotexts[0].startswith("a red house <hypernet:real:0.8>\n")
    assert "Hypernet" not in real.result.infotexts[0].split("\n", 1)[1]  # A1111 writes no key for them


def test_chained_networks_give_the_image_of_a_hand_written_attention(engine, data_dir):
    parts = engine.models.current
    widths = _widths(parts.unet)
    first, second = _network(widths, 3), _network(widths[:1], 4)  # the second one knows only the first width
    torch.save(first, _folder(data_dir) / "first.pt")
    (_folder(data_dir) / "deeper").mkdir()
    torch.save(second, _folder(data_dir) / "deeper" / "second.pt")
    engine.networks.refresh()
    req = GenerationRequest(prompt="a boat", seed=4, **SMALL)
    with_nets = engine.txt2img(req.replace(prompt="a boat <hypernet:first:0.7> <hypernet:second:-0.4>"))
    assert np.abs(_pixels(with_nets) - _pixels(engine.txt2img(req))).max() > 10
    own = dict(parts.unet.attn_processors)
    parts.unet.set_attn_processor(_ReferenceAttention([(first, 0.7), (second, -0.4)]))
    try:
        reference = engine.txt2img(req)
    finally:
        parts.unet.set_attn_processor(own)
    assert np.abs(_pixels(with_nets) - _pixels(reference)).max() <= 1
    swapped = engine.txt2img(req.replace(prompt="a boat <hypernet:second:-0.4> <hypernet:first:0.7>"))
    assert np.abs(_pixels(swapped) - _pixels(with_nets)).max() > 0  # the order counts: they chain


def test_the_processor_computes_attention_on_the_rewritten_key_and_value_contexts():
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    cross = Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=4).eval()
    own = Attention(query_dim=16, heads=2, dim_head=4).eval()
    hidden, text = torch.randn(2, 5, 16), torch.randn(2, 3, 8)
    data = _network([8, 16], 5)
    layout = Layout((1, 2, 1), "relu", False, False, (0, 0, 0))
    network = Hypernetwork(Path("in-memory.pt"),
                           {w: (build_module(w, layout, data[w][0]), build_module(w, layout, data[w][1]))
                            for w in (8, 16)})
    processor = HypernetworkAttnProcessor([Active(network, 0.6)])
    reference = _ReferenceAttention([(data, 0.6)])
    with torch.no_grad():
        for attn, context in ((cross, text), (own, None)):  # the text context, then the hidden states themselves
            got = processor(attn, hidden, context)
            assert torch.allclose(got, reference(attn, hidden, context), atol=1e-5), context is None
            assert not torch.allclose(got, _ReferenceAttention([])(attn, hidden, context), atol=1e-3)
        zero_v = OrderedDict((k, v * 0 if k.startswith("linear.2") else v) for k, v in data[8][1].items())
        key_only = _ReferenceAttention([({8: (data[8][0], zero_v)}, 0.6)])
        assert not torch.allclose(processor(cross, hidden, text), key_only(cross, hidden, text), atol=1e-3)


def test_layouts_are_built_as_a1111_builds_them(tmp_path):
    gen = torch.Generator().manual_seed(0)
    width = 6
    # [1, 2, 2, 1], tanh after every layer (activate_output), layer norm, dropout 0.3 in the middle: per step the
    # list holds Linear, Tanh, LayerNorm (+ Dropout), so the Linears sit at 0, 4, 8 and the norms at 2, 6, 10
    sd: StateDict = OrderedDict()
    for index, (n_in, n_out) in zip((0, 4, 8), ((6, 12), (12, 12), (12, 6)), strict=True):
        sd[f"linear.{index}.weight"] = torch.randn(n_out, n_in, generator=gen)
        sd[f"linear.{index}.bias"] = torch.randn(n_out, generator=gen)
        sd[f"linear.{index + 2}.weight"] = torch.rand(n_out, generator=gen) + 0.5
        sd[f"linear.{index + 2}.bias"] = torch.randn(n_out, generator=gen)
    data = {width: (sd, sd), "layer_structure": [1, 2, 2, 1], "activation_func": "tanh", "is_layer_norm": True,
            "activate_output": True, "use_dropout": True, "dropout_structure": [0, 0.3, 0.3, 0]}
    torch.save(data, tmp_path / "deep.pt")
    module = load_hypernetwork(tmp_path / "deep.pt").layers[width][0]
    x = torch.randn(3, width, generator=gen)
    h = x
    for index, n_out in zip((0, 4, 8), (12, 12, 6), strict=True):
        h = torch.tanh(h @ sd[f"linear.{index}.weight"].T + sd[f"linear.{index}.bias"])
        h = torch.nn.functional.layer_norm(h, (n_out,), sd[f"linear.{index + 2}.weight"],
                                           sd[f"linear.{index + 2}.bias"])
    with torch.no_grad():
        assert torch.allclose(module(x, 0.5), x + h * 0.5, atol=1e-5)
    # the oldest files: no options (A1111's defaults: [1, 2, 1], no activation), keys linear1 / linear2
    old = OrderedDict([("linear1.weight", torch.randn(12, 6, generator=gen)), ("linear1.bias", torch.zeros(12)),
                       ("linear2.weight", torch.randn(6, 12, generator=gen)), ("linear2.bias", torch.ones(6))])
    torch.save({width: [old, old]}, tmp_path / "old.pt")
    module = load_hypernetwork(tmp_path / "old.pt").layers[width][1]
    with torch.no_grad():
        want = x + ((x @ old["linear1.weight"].T) @ old["linear2.weight"].T + 1) * 2.0
        assert torch.allclose(module(x, 2.0), want, atol=1e-5)


def test_multiplier_zero_is_the_plain_image_and_the_model_is_untouched_after_a_job(engine, data_dir):
    parts = engine.models.current
    torch.save(_network(_widths(parts.unet), 6), _folder(data_dir) / "style.pt")
    engine.networks.refresh()
    processors, weights = _processors(parts.unet), _weights(parts)
    req = GenerationRequest(prompt="a cat", seed=3, **SMALL)
    plain = engine.txt2img(req)
    assert np.array_equal(_pixels(engine.txt2img(req.replace(prompt="a cat <hypernet:style:0>"))), _pixels(plain))
    engine.txt2img(req.replace(prompt="a cat <hypernet:style>"))
    assert _processors(parts.unet) == processors
    after = _weights(parts)
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    assert np.array_equal(_pixels(engine.txt2img(req)), _pixels(plain))


def test_the_processors_come_back_when_the_job_fails(engine, data_dir):
    parts = engine.models.current
    processors = _processors(parts.unet)
    network = load_hypernetwork(_save(data_dir, "x", _network(_widths(parts.unet), 7)))
    with pytest.raises(RuntimeError), processors_installed(parts.unet, [Active(network, 1.0)]):
        assert all(isinstance(p, HypernetworkAttnProcessor) for p in parts.unet.attn_processors.values())
        raise RuntimeError("the job failed")
    assert _processors(parts.unet) == processors


def _save(data_dir: Path, name: str, data: object) -> Path:
    path = _folder(data_dir) / f"{name}.pt"
    torch.save(data, path)
    return path


def test_bad_files_and_missing_names_are_warnings_naming_them_and_the_image_is_made(engine, data_dir, capfd):
    parts = engine.models.current
    widths = _widths(parts.unet)
    folder = _folder(data_dir)
    (folder / "broken.pt").write_bytes(b"PK\x03\x04 not a zip at all")
    _save(data_dir, "truncated", _network(widths, 8))
    raw = (folder / "truncated.pt").read_bytes()
    (folder / "truncated.pt").write_bytes(raw[: len(raw) // 2])

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "evil.pt").write_bytes(pickle.dumps({32: Evil()}))
    _save(data_dir, "sd2", _network([1024], 9))  # widths of another model family
    misfit = _network(widths, 10)
    misfit[widths[0]] = (_mlp(widths[0] + 1, torch.Generator()), _mlp(widths[0] + 1, torch.Generator()))
    _save(data_dir, "misfit", misfit)
    _save(data_dir, "oddact", {**_network(widths, 11), "activation_func": "nosuch"})
    _save(data_dir, "nolayers", {"name": "x", "layer_structure": [1, 2, 1]})
    _save(data_dir, "good", _network(widths, 12))
    engine.networks.refresh()
    processors, weights = _processors(parts.unet), _weights(parts)
    names = ["broken", "truncated", "evil", "sd2", "misfit", "oddact", "nolayers", "nope"]
    tags = " ".join(f"<hypernet:{n}:1>" for n in names)
    job = engine.txt2img(GenerationRequest(prompt=f"a cat {tags} <hypernet:good:heavy> <foo:bar>", seed=1,
                                           **SMALL))
    assert len(job.result.images) == 1
    assert "pwned" not in capfd.readouterr().out  # the pickle's code never ran
    text = "\n".join(job.result.warnings)
    for name in [f"{n}.pt" for n in names[:-1]] + ["Hypernetwork not found: nope", "<hypernet:good:heavy>"]:
        assert name in text, (name, text)
    assert "none of its widths (1024)" in text and "nosuch" in text
    assert "extra networks not supported yet, ignored: foo" in text and "hypernet," not in text
    plain = engine.txt2img(GenerationRequest(prompt="a cat", seed=1, **SMALL))
    assert np.array_equal(_pixels(job), _pixels(plain))
    assert _processors(parts.unet) == processors
    after = _weights(parts)
    assert all(torch.equal(weights[k], after[k]) for k in weights)


def test_tags_and_listing_as_a1111(tmp_path):
    assert parse_tag(["n"]) == HypernetTag("n", 1.0)
    assert parse_tag(["n", "0.25"]) == HypernetTag("n", 0.25)
    with pytest.raises(ValueError):
        parse_tag(["n", "heavy"])
    (tmp_path / "b" / ".hidden").mkdir(parents=True)
    for name in ("a/Zed.pt", "b/alpha.pt", "b/.hidden/secret.pt", "None.pt", "b/notes.txt", "b/upper.PT"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    registry = HypernetworkRegistry([tmp_path])
    assert [(i.name, i.path.relative_to(tmp_path).as_posix()) for i in registry.files] == \
        [("Zed", "a/Zed.pt"), ("alpha", "b/alpha.pt")]
    root = tmp_path.resolve()
    assert Paths.create(root).hypernetwork_dir == root / "models" / "hypernetworks"
    assert Paths.create(root, hypernetwork_dir=root / "h").hypernetwork_dir == root / "h"


def test_hypernetwork_dir_flag_is_honoured():
    from webui.launch import parse_launch_args, start_options

    args, unknown = parse_launch_args(["--hypernetwork-dir", "/h"], {"COMMANDLINE_ARGS": ""})
    assert unknown == [] and start_options(args, exposed=False).hypernetwork_dir == "/h"


def test_the_route_lists_the_files(api, data_dir):
    assert api.get("/sdapi/v1/hypernetworks").json() == []
    folder = _folder(data_dir) / "people"
    folder.mkdir(parents=True)
    torch.save(_network([32], 1), folder / "face.pt")
    torch.save(_network([32], 2), _folder(data_dir) / "Anime.pt")
    assert api.get("/sdapi/v1/hypernetworks").json() == [
        {"name": "Anime", "path": str(_folder(data_dir) / "Anime.pt")},
        {"name": "face", "path": str(folder / "face.pt")}]
    r = api.post("/sdapi/v1/txt2img", json={"prompt": "a face <hypernet:face:0.5> <hypernet:gone>", **SMALL})
    assert r.status_code == 200 and len(r.json()["images"]) == 1
    warnings = [w for w in json.loads(r.json()["info"])["warnings"] if not w.startswith(NV_NOTE)]
    assert warnings == ["Hypernetwork not found: gone"]
