"""The training routes over real HTTP: A1111's create/train embedding (its argument names and response texts),
``/train/lora``, the hypernetwork routes, the v2 jobs, bad input as 422s, and exposure confining the folders."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.test_training import _dataset


@pytest.fixture
def trained_api(api, data_dir):
    _dataset(data_dir / "data")
    return api


def _common(data_dir, **changes):
    body = {"data_root": str(data_dir / "data"), "training_width": 64, "training_height": 64, "steps": 3,
            "create_image_every": 0, "save_embedding_every": 0, "seed": 1}
    body.update(changes)
    return body


def test_a1111_embedding_routes_and_lora(trained_api, data_dir):
    api = trained_api
    r = api.post("/sdapi/v1/create/embedding", json={"name": "api emb", "num_vectors_per_token": 2,
                                                      "overwrite_old": False, "init_text": "red"})
    path = data_dir / "models" / "embeddings" / "api emb.pt"
    assert r.status_code == 200 and r.json() == {"info": f"create embedding filename: {path}"}
    assert "api emb" in api.get("/sdapi/v1/embeddings").json()["loaded"]
    again = api.post("/sdapi/v1/create/embedding", json={"name": "api emb"})
    assert again.status_code == 422 and "already exists" in again.json()["detail"]
    # A1111's UI sends every argument, the preview sampler as an index
    body = _common(data_dir, embedding_name="api emb", learn_rate=0.005, batch_size=1, gradient_step=1,
                   log_directory="textual_inversion", varsize=False, clip_grad_mode="disabled",
                   clip_grad_value="0.1", shuffle_tags=False, tag_drop_out=0, latent_sampling_method="once",
                   use_weight=False, template_filename="style_filewords.txt",
                   save_image_with_stored_embedding=True, preview_from_txt2img=False, preview_prompt="",
                   preview_negative_prompt="", preview_steps=20, preview_sampler_name=0, preview_cfg_scale=7,
                   preview_seed=-1, preview_width=512, preview_height=512, id_task="task(abc)")
    r = api.post("/sdapi/v1/train/embedding", json=body)
    assert r.status_code == 200 and r.json() == {"info": f"train embedding complete: filename: {path} error: None"}
    assert api.get("/sdapi/v1/embeddings").json()["loaded"]["api emb"]["step"] == 3
    r = api.post("/sdapi/v1/train/lora", json={"name": "api_lora", "data_root": str(data_dir / "data"),
                                               "steps": 2, "learn_rate": 1e-3, "rank": 2, "alpha": 1,
                                               "batch_size": 2, "width": 64, "height": 64, "save_every": 0,
                                               "create_image_every": 0})
    lora = data_dir / "models" / "Lora" / "api_lora.safetensors"
    assert r.status_code == 200 and r.json() == {"info": f"train lora complete: filename: {lora} error: None"}
    assert any(item["name"] == "api_lora" for item in api.get("/sdapi/v1/loras").json())


@pytest.mark.parametrize(("route", "body", "field"), [
    ("/sdapi/v1/train/lora", {"name": "x", "width": 100}, "training_width"),
    ("/sdapi/v1/train/lora", {"name": "x", "data_root": "/no/such/folder"}, "data_root"),
    ("/sdapi/v1/train/lora", {"name": "", "data_root": "data"}, "name"),
    ("/sdapi/v1/train/lora", {"name": "x", "rank": 0}, "rank"),
    ("/sdapi/v1/train/embedding", {"embedding_name": "missing"}, "embedding_name"),
])
def test_bad_training_requests_are_422(trained_api, data_dir, route, body, field):
    full = {"data_root": str(data_dir / "data"), "width": 64, "height": 64, **body}
    r = trained_api.post(route, json=full)
    assert r.status_code == 422, r.text
    assert r.json().get("field") == field or field in r.json()["detail"]


def test_hypernetwork_routes_answer_501(api):
    for route in ("/sdapi/v1/create/hypernetwork", "/sdapi/v1/train/hypernetwork"):
        r = api.post(route, json={"name": "h"})
        assert r.status_code == 501 and "train a LoRA instead" in r.json()["detail"]


def test_training_through_the_jobs_api_with_progress_and_cancel(trained_api, data_dir):
    api = trained_api
    r = api.post("/sdapi/v2/train/lora", json={"name": "v2lora", **_common(data_dir, steps=100000)})
    assert r.status_code == 202 and r.json()["kind"] == "train-lora"
    job_id = r.json()["id"]
    deadline = time.monotonic() + 120
    while True:
        detail = api.get(f"/sdapi/v2/jobs/{job_id}").json()
        if detail["progress"]["step"] >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert detail["state"] == "running" and detail["progress"]["steps"] == 100000
    assert detail["progress"]["loss"] > 0 and detail["progress"]["textinfo"].startswith("Loss: ")
    progress = api.get("/sdapi/v1/progress").json()
    assert progress["textinfo"].startswith("Loss: ") and progress["state"]["sampling_steps"] == 100000
    assert api.delete(f"/sdapi/v2/jobs/{job_id}").status_code == 200
    while (detail := api.get(f"/sdapi/v2/jobs/{job_id}").json())["state"] in ("queued", "running"):
        time.sleep(0.1)
    result = detail["result"]
    assert detail["interrupted"] and result["interrupted"] and result["step"] >= 2
    assert result["filename"].endswith("v2lora.safetensors") and len(result["losses"]) == result["step"]
    r = api.post("/sdapi/v2/create/embedding", json={"name": "v2emb"})
    assert r.status_code == 202
    job = r.json()["id"]
    while (detail := api.get(f"/sdapi/v2/jobs/{job}").json())["state"] in ("queued", "running"):
        time.sleep(0.05)
    assert detail["result"]["info"].startswith("create embedding filename: ")


def test_exposed_server_keeps_training_folders_inside_the_data_folder(live_server, data_dir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    _dataset(outside)
    server = live_server(exposed=True)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        r = client.post("/sdapi/v1/train/lora", json={"name": "x", "data_root": str(outside), "width": 64,
                                                      "height": 64, "steps": 1})
        assert r.status_code == 422 and "inside the data folder" in r.json()["detail"]
