"""Model formats, family detection, safe pickle loading, hashes and the model manager."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import FAMILIES, install_model
from modules.errors import ModelLoadError, UnsafeCheckpointError
from modules.hashing import HashCache, legacy_hash
from modules.models import families
from modules.models.checkpoint_file import CheckpointFile, load_pickle_checkpoint
from modules.models.loader import load_model
from modules.models.registry import CheckpointInfo, CheckpointRegistry

pytestmark = pytest.mark.usefixtures("frozen_gc")  # full GC passes scan only what this module makes


def _info(path: Path) -> CheckpointInfo:
    kind = "diffusers" if path.is_dir() else path.suffix.lstrip(".")
    return CheckpointInfo(path, path.name, kind)


@pytest.mark.parametrize("family", FAMILIES)
def test_detects_family_from_keys(model_store, family):
    path = model_store(family, "safetensors")
    ckpt = CheckpointFile(path)
    detected, prediction = families.detect_family(ckpt.shapes, "model.safetensors")
    expected = "sd2" if family == "sd2-v" else family  # v-prediction is not visible in the weights
    assert detected == expected
    assert prediction is None


def test_v_prediction_hints(model_store):
    shapes = CheckpointFile(model_store("sd2", "safetensors")).shapes
    assert families.detect_family(shapes, "sd21_768-v-ema.safetensors")[0] == "sd2-v"
    assert families.detect_family(shapes, "x.safetensors", {"modelspec.prediction_type": "v"})[0] == "sd2-v"
    xl = CheckpointFile(model_store("sdxl", "safetensors")).shapes
    assert families.detect_family(xl, "noobai-vpred.safetensors") == ("sdxl", "v_prediction")


def test_ldm_yaml_selects_family(tmp_path):
    doc = {"model": {"params": {"parameterization": "v", "unet_config": {"params": {"context_dim": 1024,
                                                                                   "in_channels": 4}}}}}
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps(doc))  # JSON is valid YAML
    assert families.family_from_ldm_yaml(path) == ("sd2-v", None)
    doc["model"]["params"] = {"unet_config": {"params": {"context_dim": 768, "in_channels": 9}}}
    path.write_text(json.dumps(doc))
    assert families.family_from_ldm_yaml(path) == ("sd1-inpaint", None)
    sgm = {"model": {"params": {"network_config": {"params": {"in_channels": 4}},
                                "conditioner": {"params": {"emb_models": [1, 2, 3, 4]}}}}}
    path.write_text(json.dumps(sgm))
    assert families.family_from_ldm_yaml(path) == ("sdxl", None)


def test_non_sd_keys_are_refused(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ModelLoadError, match="not a Stable Diffusion checkpoint"):
        load_model(_info(path), torch.float32)


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_matches_diffusers_folder(model_store, family):
    """The reverse key map and diffusers' loader agree: single file == the folder it came from."""
    a = load_model(_info(model_store(family, "safetensors")), torch.float32)
    b = load_model(_info(model_store(family, "diffusers")), torch.float32)
    assert a.family.name == b.family.name == family
    assert a.prediction_type == b.prediction_type
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ma, mb = getattr(a, name), getattr(b, name)
        if ma is None:
            assert mb is None
            continue
        sa, sb = ma.state_dict(), mb.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name


def test_ckpt_format_loads(model_store):
    parts = load_model(_info(model_store("sd1", "ckpt")), torch.float32)
    ref = load_model(_info(model_store("sd1", "safetensors")), torch.float32)
    assert all(torch.equal(v, ref.unet.state_dict()[k]) for k, v in parts.unet.state_dict().items())


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "boom": _Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        load_pickle_checkpoint(path)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):
        load_model(_info(path), torch.float32)
    assert not marker.exists()


def test_plain_pickle_protocol_payload_refused(tmp_path):
    marker = tmp_path / "pwned2"
    path = tmp_path / "evil2.ckpt"
    with open(path, "wb") as f:
        pickle.dump(_Payload(marker), f)
    with pytest.raises(UnsafeCheckpointError):
        load_pickle_checkpoint(path)
    assert not marker.exists()


def test_lightning_callback_objects_are_tolerated(tmp_path, monkeypatch):
    """Old SD 1.x .ckpt files pickle a ModelCheckpoint callback; they load as data without pytorch_lightning."""
    import sys
    import types

    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    cls = type("ModelCheckpoint", (), {"__module__": names[-1]})
    sys.modules[names[-1]].ModelCheckpoint = cls
    obj = cls()
    obj.best_model_score = 1.0
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {"a": torch.ones(2)}, "callbacks": {"ModelCheckpoint": obj}}, path)
    for name in names:
        monkeypatch.delitem(sys.modules, name)
    assert torch.equal(load_pickle_checkpoint(path)["a"], torch.ones(2))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\x00" * 100])
def test_corrupt_files_give_clear_errors(tmp_path, content):
    for suffix in (".safetensors", ".ckpt"):
        path = tmp_path / f"bad{suffix}"
        path.write_bytes(content)
        with pytest.raises(ModelLoadError) as err:
            load_model(_info(path), torch.float32)
        assert "bad" in str(err.value)


def test_truncated_safetensors(model_store, tmp_path):
    src = model_store("sd1", "safetensors")
    path = tmp_path / "cut.safetensors"
    path.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="cut.safetensors"):
        load_model(_info(path), torch.float32)


def test_hashes_match_a1111_and_are_cached(tmp_path, monkeypatch):
    import hashlib

    path = tmp_path / "m.safetensors"
    data = os.urandom(0x100000 + 0x20000)
    path.write_bytes(data)
    cache = HashCache(tmp_path / "hashes.json")
    digest = cache.sha256(path, [path])
    assert digest == hashlib.sha256(data).hexdigest()
    assert legacy_hash(path) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    calls = []
    monkeypatch.setattr("modules.hashing.sha256_of_files", lambda files: calls.append(files) or "x")
    again = HashCache(tmp_path / "hashes.json")  # a second start reads the cache
    assert again.sha256(path, [path]) == digest and not calls
    path.write_bytes(data + b"!")  # size and mtime change: hashed again
    assert again.sha256(path, [path]) == "x" and calls


def test_registry_titles_and_lookup(data_dir, model_store):
    install_model(data_dir, model_store("sd1", "safetensors"), "alpha")
    sub = data_dir / "models" / "Stable-diffusion" / "sub"
    sub.mkdir()
    install_model(data_dir, model_store("sd1", "diffusers"), "beta")
    shutil.move(str(data_dir / "models" / "Stable-diffusion" / "beta"), sub / "beta")
    reg = CheckpointRegistry([data_dir / "models" / "Stable-diffusion"], HashCache(None))
    names = [i.name for i in reg.list()]
    assert names == ["alpha.safetensors", "sub/beta"]  # the config folder "alpha/" is not a model
    alpha = reg.find("alpha")
    assert alpha is not None and alpha.title == "alpha.safetensors"
    sha = reg.ensure_hash(alpha)
    assert alpha.title == f"alpha.safetensors [{sha[:10]}]"
    for query in (alpha.title, "alpha.safetensors", sha[:10], sha, alpha.legacy_hash, "alpha.safetensors [zzz]"):
        assert reg.find(query) is alpha, query
    assert reg.find("sub_beta").name == "sub/beta"
    assert reg.find("nothing-like-this") is None


def test_unknown_family_message(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, str(path))
    with pytest.raises(ModelLoadError, match="unknown checkpoint family"):
        load_model(_info(path), torch.float32)


def test_safetensors_metadata_is_untrusted_text(model_store, tmp_path):
    src = model_store("sd1", "safetensors")
    sd = load_file(str(src))
    path = tmp_path / "meta.safetensors"
    save_file(sd, str(path), metadata={"note": "<script>alert(1)</script>", "modelspec.title": "x"})
    shutil.copytree(src.with_suffix(""), tmp_path / "meta")
    assert CheckpointFile(path).metadata["note"] == "<script>alert(1)</script>"
    assert load_model(_info(path), torch.float32).family.name == "sd1"
