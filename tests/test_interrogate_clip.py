"""Interrogate CLIP on tiny random-weight BLIP and CLIP models in the user's folder layout: the caption, the ranked
category picks, ranks, skipped categories, the line limit, user categories over built-in ones, A1111's original BLIP
file, and the error a missing model gives."""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from modules.errors import ValidationError
from modules.interrogate.blip_original import convert_original_state_dict, rename_original_key
from modules.interrogate.clip import ClipInterrogateOptions, ClipInterrogator
from modules.interrogate.clip_categories import BUILTIN_DIR, load_categories
from modules.interrogate.clip_rank import Pick, format_interrogation, rank, rank_texts
from modules.interrogate.errors import InterrogateUnavailable

BLIP_WORDS = ("a picture of cat dog red blue green on the with sitting table tree house man woman small large "
              "and in near old new bright dark sky field road").split()
CATEGORIES = {
    "artists.txt": ["by someone", "by nobody", "by a painter", "by a sculptor", "by a photographer"],
    "flavors.top3.txt": ["highly detailed", "soft light", "dramatic", "muted colors", "sharp focus", "vivid", "calm"],
    "mediums.txt": ["an oil sketch", "a snapshot", "a fresco", "a linocut"],
}
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Tiny:
    root: Path  # the models root
    blip: Path
    clip: Path


def _bert_vocab(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *BLIP_WORDS]) + "\n", encoding="utf-8")
    return path


def _write_blip(folder: Path) -> None:
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    tokenizer = BertTokenizer(str(_bert_vocab(folder)))
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    text = {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 48, "num_hidden_layers": 2,
            "num_attention_heads": 1, "max_position_embeddings": 64, "encoder_hidden_size": 64,
            "bos_token_id": tokenizer.bos_token_id, "sep_token_id": tokenizer.sep_token_id,
            "pad_token_id": tokenizer.pad_token_id}
    vision = {"hidden_size": 64, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 1,
              "image_size": 32, "patch_size": 16, "layer_norm_eps": 1e-6}
    torch.manual_seed(1)
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=16,
                        architectures=["BlipForConditionalGeneration"])
    BlipForConditionalGeneration(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    BlipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)


def _write_clip(folder: Path) -> None:
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    symbols = [c for c in string.printable if c.strip()]
    merges = ["o f</w>", "t h", "th e</w>", "i n", "a n", "e r"]
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}), encoding="utf-8")
    eos = vocab["<|endoftext|>"]
    text = {"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": eos, "pad_token_id": eos}
    vision = {"hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    torch.manual_seed(2)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval().save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    root = tmp_path_factory.mktemp("models")
    blip, clip = root / "BLIP" / "tiny-blip", root / "CLIP" / "tiny-clip"
    _write_blip(blip)
    _write_clip(clip)
    categories = root / "interrogate"
    categories.mkdir()
    for name, lines in CATEGORIES.items():
        (categories / name).write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    return Tiny(root, blip, clip)


@pytest.fixture(scope="module")
def service(tiny: Tiny) -> ClipInterrogator:
    return ClipInterrogator(tiny.root, lambda: CPU)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.fromarray((np.random.default_rng(3).random((40, 48, 3)) * 255).astype(np.uint8))


@dataclass(frozen=True)
class Reference:
    """The tiny models loaded straight from transformers, to check the interrogator against."""

    blip: Any
    blip_tokenizer: Any
    blip_pixels: Any
    clip: Any
    clip_tokenizer: Any
    clip_pixels: Any


@pytest.fixture(scope="module")
def ref(tiny: Tiny) -> Reference:
    from transformers import BertTokenizer, BlipForConditionalGeneration, CLIPModel, CLIPTokenizer
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return Reference(
        BlipForConditionalGeneration.from_pretrained(tiny.blip, local_files_only=True).eval(),
        BertTokenizer.from_pretrained(tiny.blip, local_files_only=True),
        BlipImageProcessorPil.from_pretrained(tiny.blip),
        CLIPModel.from_pretrained(tiny.clip, local_files_only=True).eval(),
        CLIPTokenizer.from_pretrained(tiny.clip, local_files_only=True),
        CLIPImageProcessorPil.from_pretrained(tiny.clip))


def direct_caption(ref: Reference, image: Image.Image, opts: ClipInterrogateOptions) -> str:
    """BLIP's caption straight from transformers: the prompt, beam search, the prompt cut off."""
    pixels = ref.blip_pixels(images=image, return_tensors="pt")["pixel_values"]
    ids = ref.blip_tokenizer("a picture of ", return_tensors="pt").input_ids
    with torch.no_grad():
        out = ref.blip.generate(pixel_values=pixels, input_ids=ids, num_beams=opts.num_beams,
                                min_length=opts.min_length, max_length=opts.max_length, do_sample=False)
    text = ref.blip_tokenizer.decode(out[0], skip_special_tokens=True)
    assert text.startswith("a picture of")
    return str(text[len("a picture of"):].strip())


def manual_picks(ref: Reference, image: Image.Image, lines: list[str], top: int) -> list[tuple[str, float]]:
    """The best lines by softmax(100 * cosine similarity) over the category, computed here from CLIP directly."""
    tokens = ref.clip_tokenizer(lines, padding=True, return_tensors="pt")
    pixels = ref.clip_pixels(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        img = ref.clip.get_image_features(pixel_values=pixels).pooler_output[0]
        txt = ref.clip.get_text_features(**tokens).pooler_output
    sims = [float(torch.dot(img, t) / (img.norm() * t.norm())) for t in txt]
    exp = np.exp(100 * (np.array(sims) - max(sims)))
    probs = exp / exp.sum()
    order = sorted(range(len(lines)), key=lambda i: -probs[i])[:top]
    return [(lines[i], float(probs[i])) for i in order]


def expected_picks(tiny: Tiny, ref: Reference, image: Image.Image, skip: tuple[str, ...] = (), limit: int = 0
                   ) -> list[tuple[str, float]]:
    files = {**{p.name: p for p in BUILTIN_DIR.glob("*.txt")}, **{n: tiny.root / "interrogate" / n for n in CATEGORIES}}
    picks = []
    for name in sorted(files):
        stem = name.removesuffix(".txt")
        if stem in skip or stem.split(".")[0] in skip:
            continue
        lines = [x.strip() for x in files[name].read_text(encoding="utf-8").splitlines() if x.strip()]
        top = int(stem.rsplit(".top", 1)[1]) if ".top" in stem else 1
        picks += manual_picks(ref, image, lines[:limit] if limit else lines, top)
    return picks


def test_caption_is_blips_caption(service: ClipInterrogator, tiny: Tiny, ref: Reference, image: Image.Image) -> None:
    opts = ClipInterrogateOptions(num_beams=2, min_length=6, max_length=12)
    caption = service.caption(image, opts)
    assert caption == direct_caption(ref, image, opts)
    assert len(caption.split()) >= 2


def test_interrogate_is_caption_then_ranked_picks(service: ClipInterrogator, tiny: Tiny, ref: Reference,
                                                  image: Image.Image) -> None:
    result = service.interrogate(image)
    caption = direct_caption(ref, image, ClipInterrogateOptions())
    picks = expected_picks(tiny, ref, image)
    assert len(picks) == 1 + 3 + 1 + 1  # artists, flavors.top3, the user's mediums, the built-in movements
    assert result == ", ".join([caption, *(text for text, _ in picks)])


def test_return_ranks(service: ClipInterrogator, tiny: Tiny, ref: Reference, image: Image.Image) -> None:
    result = service.interrogate(image, ClipInterrogateOptions(return_ranks=True))
    ranked = re.findall(r", \(([^()]+):(\d\.\d{3})\)", result)
    expected = expected_picks(tiny, ref, image)
    assert [text for text, _ in ranked] == [text for text, _ in expected]
    for (_, shown), (_, prob) in zip(ranked, expected, strict=True):
        assert float(shown) == pytest.approx(prob, abs=1.5e-3)


def test_skip_categories_by_stem_or_name(service: ClipInterrogator, tiny: Tiny, ref: Reference,
                                         image: Image.Image) -> None:
    skip = ("flavors", "movements")
    result = service.interrogate(image, ClipInterrogateOptions(skip_categories=skip))
    expected = expected_picks(tiny, ref, image, skip=skip)
    assert len(expected) == 2
    assert result.split(", ")[-2:] == [text for text, _ in expected]
    assert service.category_names() == ["artists", "flavors.top3", "mediums", "movements"]
    names = [c.name for c in service.categories(ClipInterrogateOptions(skip_categories=("flavors.top3", "ARTISTS")))]
    assert names == ["mediums", "movements"]


def test_dict_limit(service: ClipInterrogator, tiny: Tiny, ref: Reference, image: Image.Image) -> None:
    result = service.interrogate(image, ClipInterrogateOptions(dict_limit=2))
    expected = expected_picks(tiny, ref, image, limit=2)
    assert result.endswith(", ".join(text for text, _ in expected))
    for category in service.categories(ClipInterrogateOptions(dict_limit=2)):
        assert len(category.items) == 2
    assert len(service.categories(ClipInterrogateOptions(dict_limit=0))[1].items) == 7


def test_user_category_files_override_builtin(tmp_path: Path, tiny: Tiny) -> None:
    builtin = {c.name: c for c in load_categories(tmp_path / "nothing-here")}
    assert sorted(builtin) == ["mediums", "movements"] and all(c.builtin for c in builtin.values())
    assert len(builtin["mediums"].items) >= 24 and len(builtin["movements"].items) >= 24
    user = {c.name: c for c in load_categories(tiny.root / "interrogate")}
    assert user["mediums"].items == tuple(CATEGORIES["mediums.txt"]) and not user["mediums"].builtin
    assert user["movements"].builtin
    (tmp_path / "movements.top2.txt").write_text("one\ntwo\n", encoding="utf-8")
    overridden = {c.name: c for c in load_categories(tmp_path)}
    assert sorted(overridden) == ["mediums", "movements.top2"]
    assert overridden["movements.top2"].top_count == 2


def test_models_stay_loaded_and_text_features_are_reused(tiny: Tiny, image: Image.Image,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from modules.interrogate.clip_model import ClipEncoder

    calls: list[int] = []
    original = ClipEncoder.encode_texts

    def counting(self: ClipEncoder, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        calls.append(len(texts))
        return original(self, texts, batch_size=2)  # several batches give the same embeddings as one

    interrogator = ClipInterrogator(tiny.root, lambda: CPU, ClipInterrogateOptions(keep_models_in_memory=True))
    unbatched = interrogator.interrogate(image)
    interrogator.unload()
    monkeypatch.setattr(ClipEncoder, "encode_texts", counting)
    first = interrogator.interrogate(image)
    assert first == unbatched
    assert len(calls) == 4
    assert interrogator.interrogate(image) == first and len(calls) == 4
    interrogator.unload()
    assert interrogator.interrogate(image) == first and len(calls) == 8


def test_missing_models_name_the_folder(tmp_path: Path, tiny: Tiny, image: Image.Image) -> None:
    empty = ClipInterrogator(tmp_path, lambda: CPU)
    assert not empty.available()
    with pytest.raises(InterrogateUnavailable, match=re.escape(str(tmp_path / "BLIP"))) as err:
        empty.interrogate(image)
    assert "config.json" in str(err.value) and isinstance(err.value, ValueError)
    (tmp_path / "BLIP").mkdir()
    (tmp_path / "BLIP" / "tiny").symlink_to(tiny.blip, target_is_directory=True)
    (tmp_path / "CLIP").mkdir()
    (tmp_path / "CLIP" / "ViT-L-14.pt").write_bytes(b"not read")
    with pytest.raises(InterrogateUnavailable, match=re.escape(str(tmp_path / "CLIP"))) as err:
        empty.interrogate(image)
    assert "TorchScript" in str(err.value)
    with pytest.raises(InterrogateUnavailable, match="'nope' not found"):
        ClipInterrogator(tiny.root, lambda: CPU).interrogate(image, ClipInterrogateOptions(blip_model="nope"))


def test_hub_cache_layout_is_found(tmp_path: Path, tiny: Tiny) -> None:
    snapshot = tmp_path / "CLIP" / "models--openai--clip-tiny" / "snapshots" / "0123abc"
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(tiny.clip, target_is_directory=True)
    assert ClipInterrogator(tmp_path, lambda: CPU).clip_models() == ["openai/clip-tiny"]


def _to_original_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' BLIP keys in Salesforce's original layout, as A1111's BLIP file has them."""
    renames = [(r"^vision_model\.embeddings\.class_embedding$", "visual_encoder.cls_token"),
               (r"^vision_model\.embeddings\.position_embedding$", "visual_encoder.pos_embed"),
               (r"^vision_model\.embeddings\.patch_embedding\.", "visual_encoder.patch_embed.proj."),
               (r"^vision_model\.post_layernorm\.", "visual_encoder.norm."),
               (r"^vision_model\.encoder\.layers\.", "visual_encoder.blocks."),
               (r"\.layer_norm([12])\.", r".norm\1."), (r"\.self_attn\.projection\.", ".attn.proj."),
               (r"\.self_attn\.qkv\.", ".attn.qkv.")]
    out = {}
    for key, value in state.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        out[key] = value.clone()
    out["text_decoder.bert.embeddings.position_ids"] = torch.arange(64).unsqueeze(0)
    out["visual_encoder_m.cls_token"] = torch.zeros(1)  # a momentum encoder's key, not the captioner's
    return out


def test_original_blip_file(tmp_path: Path, tiny: Tiny, ref: Reference, image: Image.Image) -> None:
    from safetensors.torch import load_file

    state = load_file(tiny.blip / "model.safetensors")
    original = _to_original_layout(state)
    assert convert_original_state_dict(original).keys() == state.keys()
    assert rename_original_key("visual_encoder.blocks.3.attn.proj.weight") == \
        "vision_model.encoder.layers.3.self_attn.projection.weight"
    blip = tmp_path / "BLIP"
    blip.mkdir()
    torch.save({"model": original}, blip / "model_base_caption_capfilt_large.pth")
    (tmp_path / "CLIP").symlink_to(tiny.clip.parent, target_is_directory=True)
    interrogator = ClipInterrogator(tmp_path, lambda: CPU)
    assert interrogator.blip_models() == ["model_base_caption_capfilt_large.pth"]
    with pytest.raises(InterrogateUnavailable, match="vocab.txt"):
        interrogator.caption(image)
    _bert_vocab(blip / "bert-base-uncased")
    opts = ClipInterrogateOptions(num_beams=2, min_length=6, max_length=12)
    assert interrogator.caption(image, opts) == direct_caption(ref, image, opts)


def test_rank_is_a_softmax_over_the_category() -> None:
    image = torch.tensor([[2.0, 0.0]])
    texts = torch.tensor([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    cos = torch.tensor([1.0, 0.0, 2 ** -0.5])
    probs = (100 * cos).softmax(0)
    assert rank(image, texts, 2) == [(0, pytest.approx(float(probs[0]))), (2, pytest.approx(float(probs[2])))]
    assert [i for i, _ in rank(image[0], texts, 10)] == [0, 2, 1]
    assert rank(image, texts, 0) == []
    two = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # probabilities are averaged over the image rows
    averaged = rank(two, texts, 3)
    assert sum(p for _, p in averaged) == pytest.approx(1.0)
    assert dict(averaged)[1] == pytest.approx(float(((100 * torch.tensor([0.0, 1.0, 2 ** -0.5])).softmax(0)[1]
                                                     + probs[1]) / 2))
    (pick,) = rank_texts(image, texts, ["a", "b", "c"], 1)
    assert pick.text == "a" and pick.score == pytest.approx(float(probs[0]))
    with pytest.raises(ValueError):
        rank_texts(image, texts, ["a"], 1)


def test_format() -> None:
    picks = [Pick("oil", 0.98765), Pick("by someone", 0.1)]
    assert format_interrogation("a cat", picks) == "a cat, oil, by someone"
    assert format_interrogation("a cat", picks, return_ranks=True) == "a cat, (oil:0.988), (by someone:0.100)"
    assert format_interrogation("a cat", []) == "a cat"


def test_options_are_checked() -> None:
    with pytest.raises(ValidationError):
        ClipInterrogateOptions(num_beams=0)
    with pytest.raises(ValidationError):
        ClipInterrogateOptions(skip_categories="artists")  # type: ignore[arg-type]
    assert ClipInterrogateOptions(skip_categories=["a"]).skip_categories == ("a",)  # type: ignore[arg-type]
