"""Textual-inversion embeddings in real jobs: found in the embeddings folder, used in prompts, named in infotext."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from safetensors.torch import save_file

from conftest import install_model
from modules.requests import GenerationRequest

SMALL = {"width": 64, "height": 64, "steps": 3, "cfg_scale": 5.0, "sampler_name": "Euler"}


def _word_embedding(parts, word: str) -> torch.Tensor:
    ids = parts.tokenizer(word, add_special_tokens=False).input_ids
    return parts.text_encoder.get_input_embeddings().weight[ids].detach().clone()


def test_an_embedding_of_a_words_own_vectors_gives_that_words_image(data_dir, model_store, engine_factory):
    install_model(data_dir, model_store("sd1", "safetensors"), "tiny")
    folder = data_dir / "models" / "embeddings"
    folder.mkdir(parents=True)
    engine = engine_factory()
    engine.txt2img(GenerationRequest(prompt="warm up", seed=1, **SMALL))
    parts = engine.models.current
    save_file({"emb_params": _word_embedding(parts, "lighthouse")}, str(folder / "mylight.safetensors"))
    req = GenerationRequest(prompt="a (mylight:1.2) at night", negative_prompt="mylight, fog", seed=9, **SMALL)
    job = engine.txt2img(req)
    want = engine.txt2img(req.replace(prompt="a (lighthouse:1.2) at night", negative_prompt="lighthouse, fog"))
    assert np.array_equal(np.asarray(job.result.images[0]), np.asarray(want.result.images[0]))
    other = engine.txt2img(req.replace(prompt="a (harbour:1.2) at night", negative_prompt="harbour, fog"))
    assert not np.array_equal(np.asarray(job.result.images[0]), np.asarray(other.result.images[0]))
    short = hashlib.sha256((folder / "mylight.safetensors").read_bytes()).hexdigest()[:12]
    assert f'TI hashes: "mylight: {short}"' in job.result.infotexts[0]
    assert "TI hashes" not in want.result.infotexts[0]


def test_embeddings_route_lists_loaded_and_skipped(api, data_dir):
    folder = data_dir / "models" / "embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"string_to_param": {"*": torch.zeros(2, 1024)}, "step": 500, "name": "wide"}, folder / "wide.pt")
    assert api.post("/sdapi/v1/refresh-embeddings").status_code == 200
    body = api.get("/sdapi/v1/embeddings").json()
    assert body["loaded"] == {}
    assert body["skipped"]["wide"] == {"step": 500, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                       "shape": 1024, "vectors": 2}


def test_a_prompt_naming_an_embedding_of_another_width_gets_a_warning(data_dir, model_store, engine_factory):
    install_model(data_dir, model_store("sd1", "safetensors"), "tiny")
    folder = data_dir / "models" / "embeddings"
    folder.mkdir(parents=True)
    torch.save({"string_to_param": {"*": torch.zeros(1, 1024)}}, folder / "sd2only.pt")
    engine = engine_factory()
    job = engine.txt2img(GenerationRequest(prompt="a sd2only cat", seed=1, **SMALL))
    assert any("embedding sd2only" in w and "does not fit" in w for w in job.result.warnings), job.result.warnings
    quiet = engine.txt2img(GenerationRequest(prompt="a sd2onlyx cat", seed=1, **SMALL))
    assert not any("sd2only" in w for w in quiet.result.warnings)
