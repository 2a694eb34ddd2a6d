"""The A1111 HTTP API and the async jobs API against a live server on a random loopback port."""

from __future__ import annotations

import base64
import io
import json
import threading

import httpx
import pytest
from PIL import Image

from modules.images import read_parameters
from tests.conftest import running_job, wait_for_progress

pytestmark = pytest.mark.usefixtures("frozen_gc")  # full GC passes scan only what this module makes

SMALL = {"width": 64, "height": 64, "steps": 3}

# what webuiapi 0.9.17 sends for txt2img (every key, its defaults; null where it sends None)
WEBUIAPI_TXT2IMG = {
    "enable_hr": False, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "hr_resize_x": 0,
    "hr_resize_y": 0, "hr_checkpoint_name": None, "hr_sampler_name": None, "hr_scheduler": None, "hr_prompt": "",
    "hr_negative_prompt": "", "denoising_strength": 0.7, "firstphase_width": 0, "firstphase_height": 0,
    "prompt": "cute squirrel", "styles": [], "seed": 1003, "subseed": -1, "subseed_strength": 0.0,
    "seed_resize_from_h": 0, "seed_resize_from_w": 0, "batch_size": 1, "n_iter": 1, "steps": 3, "cfg_scale": 7.0,
    "width": 64, "height": 64, "restore_faces": False, "tiling": False, "do_not_save_samples": False,
    "do_not_save_grid": False, "negative_prompt": "ugly", "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0,
    "s_noise": 1, "override_settings": {}, "override_settings_restore_afterwards": True,
    "sampler_name": "Euler a", "scheduler": "automatic", "sampler_index": "Euler a", "script_name": None,
    "script_args": [], "send_images": True, "save_images": False, "alwayson_scripts": {},
}


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_txt2img_as_webuiapi_sends_it(api):
    r = api.post("/sdapi/v1/txt2img", json=WEBUIAPI_TXT2IMG)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"images", "parameters", "info"}
    assert body["parameters"]["prompt"] == "cute squirrel"
    info = json.loads(body["info"])
    for key in ("prompt", "all_prompts", "negative_prompt", "seed", "all_seeds", "subseed", "all_subseeds",
                "width", "height", "sampler_name", "cfg_scale", "steps", "sd_model_name", "sd_model_hash",
                "infotexts", "index_of_first_image", "job_timestamp", "clip_skip", "version", "styles"):
        assert key in info, key
    assert info["seed"] == 1003 and info["all_seeds"] == [1003]
    image = _image(body["images"][0])
    assert image.size == (64, 64)
    assert read_parameters(image) == info["infotexts"][0]
    assert "Sampler: Euler a" in info["infotexts"][0]
    assert not (api.server.app.paths.outputs_dir).exists()  # save_images false: nothing written


def test_defaults_unknown_fields_nulls_and_sampler_index(module_api):
    r = module_api.post("/sdapi/v1/txt2img", json={"prompt": "x", "sampler_index": "DDIM", "steps": 2, "width": 64,
                                                   "height": 64, "seed": None, "styles": None, "hr_sampler_name": None,
                                                   "not_a_field": {"anything": 1}, "cfg_scale": None})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert "Sampler: DDIM" in info["infotexts"][0] and "CFG scale: 7" in info["infotexts"][0]


def test_batch_returns_grid_first_and_saves_when_asked(api):
    r = api.post("/sdapi/v1/txt2img", json={"prompt": "x", "seed": 5, "batch_size": 2, "save_images": True,
                                            **SMALL})
    assert r.status_code == 200, r.text
    body = r.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 3 and info["index_of_first_image"] == 1
    assert _image(body["images"][0]).size == (128, 64)
    assert info["all_seeds"] == [5, 6] and len(info["infotexts"]) == 3
    saved = sorted((api.server.app.paths.outputs_dir / "txt2img-images").rglob("*.png"))
    assert [p.name for p in saved] == ["00000-5.png", "00001-6.png"]
    grids = list((api.server.app.paths.outputs_dir / "txt2img-grids").rglob("grid-*.png"))
    assert len(grids) == 1
    no_send = api.post("/sdapi/v1/txt2img", json={"prompt": "x", "send_images": False, **SMALL})
    assert no_send.json()["images"] == []
    # A1111's save_txt and directories_filename_pattern, for one job through override_settings
    r = api.post("/sdapi/v1/txt2img", json={"prompt": "x", "seed": 77, "save_images": True, **SMALL,
                                            "override_settings": {"save_txt": True,
                                                                  "directories_filename_pattern": "s[seed]"}})
    assert r.status_code == 200, r.text
    [png] = (api.server.app.paths.outputs_dir / "txt2img-images" / "s77").glob("*.png")
    assert png.with_suffix(".txt").read_text(encoding="utf-8") == json.loads(r.json()["info"])["infotexts"][0] + "\n"


def test_override_settings_apply_to_that_job_only(module_api):
    before = module_api.get("/sdapi/v1/options").json()
    r = module_api.post("/sdapi/v1/txt2img", json={"prompt": "x", "seed": 1, **SMALL,
                                                   "override_settings": {"CLIP_stop_at_last_layers": 2,
                                                                         "samples_format": "jpg"}})
    assert r.status_code == 200
    assert "Clip skip: 2" in json.loads(r.json()["info"])["infotexts"][0]
    assert module_api.get("/sdapi/v1/options").json() == before
    r = module_api.post("/sdapi/v1/txt2img", json={"prompt": "x", "seed": 1, **SMALL})
    assert "Clip skip" not in json.loads(r.json()["info"])["infotexts"][0]


def test_restore_faces_succeeds_with_a_warning(module_api):
    r = module_api.post("/sdapi/v1/txt2img", json={"prompt": "x", "restore_faces": True, **SMALL})
    assert r.status_code == 200
    info = json.loads(r.json()["info"])
    assert any("CodeFormer is not installed" in w for w in info["warnings"])
    assert info["face_restoration_model"] == "CodeFormer" and "Face restoration: CodeFormer" in info["infotexts"][0]


def test_infotext_field_fills_the_request(module_api):
    text = "a red fox\nNegative prompt: lowres\nSteps: 2, Sampler: DDIM, CFG scale: 5, Seed: 77, Size: 64x64"
    r = module_api.post("/sdapi/v1/txt2img", json={"infotext": text, "width": 64})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["prompt"] == "a red fox" and info["seed"] == 77 and info["steps"] == 2
    assert "CFG scale: 5" in info["infotexts"][0] and "Sampler: DDIM" in info["infotexts"][0]


@pytest.mark.parametrize("body,field", [
    ({"width": 65}, "width"), ({"steps": -1}, "steps"), ({"steps": "many"}, "steps"), ({"height": 100000}, "height"),
    ({"batch_size": 1000}, "batch_size"), ({"sampler_name": "Turbo Euler"}, "sampler_name"),
    ({"scheduler": "wiggly"}, "scheduler"), ({"cfg_scale": "high"}, "cfg_scale"), ({"n_iter": 0}, "n_iter"),
    ({"enable_hr": True, "hr_scale": 50}, "hr_scale"), ({"alwayson_scripts": {"ADetailer": {"args": []}}},
                                                          "alwayson_scripts"),
    ({"script_name": "no such script"}, "script_name"), ({"script_name": "x/y/z plot"}, "script_args"),
    ({"override_settings": {"sd_model_checkpoint": "no-such-model"}}, "sd_model_checkpoint"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 99}}, "CLIP_stop_at_last_layers"),
])
def test_bad_input_is_4xx_naming_the_field_and_queues_nothing(module_api, body, field):
    count = len(module_api.server.app.queue.jobs())
    r = module_api.post("/sdapi/v1/txt2img", json={"prompt": "x", **body})
    assert r.status_code in (400, 422), r.text
    assert r.json()["field"] == field and field.split(".")[-1] in r.json()["detail"]
    assert len(module_api.server.app.queue.jobs()) == count
    r2 = module_api.post("/sdapi/v2/txt2img", json={"prompt": "x", **body})
    assert r2.status_code in (400, 422) and len(module_api.server.app.queue.jobs()) == count


def test_malformed_json_and_wrong_body_types(module_api):
    r = module_api.post("/sdapi/v1/txt2img", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "detail" in r.json()
    r = module_api.post("/sdapi/v1/txt2img", json=["a", "list"])
    assert r.status_code == 422
    r = module_api.post("/sdapi/v1/options", json={"samples_format": "bmp"})
    assert r.status_code == 422 and r.json()["field"] == "samples_format"
    r = module_api.post("/sdapi/v1/options", json={"no_such_option": 1})
    assert r.status_code == 422


def test_listing_routes(api):
    models = api.get("/sdapi/v1/sd-models").json()
    assert models[0]["title"].startswith("tiny.safetensors [") and len(models[0]["hash"]) == 10
    assert {"title", "model_name", "hash", "sha256", "filename", "config"} <= set(models[0])
    names = [s["name"] for s in api.get("/sdapi/v1/samplers").json()]
    assert "Euler a" in names and "DPM++ 2M" in names and "UniPC" in names
    scheds = api.get("/sdapi/v1/schedulers").json()
    assert {"name": "karras", "label": "Karras"}.items() <= scheds[2].items()
    assert [u["name"] for u in api.get("/sdapi/v1/upscalers").json()] == ["None", "Lanczos", "Nearest"]
    assert {"name": "Latent"} in api.get("/sdapi/v1/latent-upscale-modes").json()
    assert api.get("/sdapi/v1/scripts").json() == {
        "txt2img": ["prompt matrix", "prompts from file or textbox", "x/y/z plot"],
        "img2img": ["loopback", "outpainting mk2", "poor man's outpainting", "prompt matrix",
                    "prompts from file or textbox", "sd upscale", "x/y/z plot"]}
    assert api.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    for route in ("sd-vae", "loras", "prompt-styles", "face-restorers", "realesrgan-models", "hypernetworks"):
        assert isinstance(api.get(f"/sdapi/v1/{route}").json(), list), route
    mem = api.get("/sdapi/v1/memory").json()
    assert mem["ram"]["total"] > 0 and "cuda" in mem
    progress = api.get("/sdapi/v1/progress").json()
    assert progress["progress"] == 0 and progress["state"]["job_count"] == 0
    assert api.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert api.post("/sdapi/v1/refresh-vae").status_code == 200
    assert api.post("/sdapi/v1/interrupt").json() == {} and api.post("/sdapi/v1/skip").json() == {}
    assert api.get("/docs").status_code == 200 and "/sdapi/v1/txt2img" in api.get("/openapi.json").text


def test_prompt_styles_are_applied(api):
    (api.server.app.paths.styles_file).write_text('name,prompt,negative_prompt\n'
                                                  '"Cinematic","cinematic still of {prompt}","cartoon"\n')
    assert api.get("/sdapi/v1/prompt-styles").json() == [
        {"name": "Cinematic", "prompt": "cinematic still of {prompt}", "negative_prompt": "cartoon"}]
    r = api.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "styles": ["Cinematic", "unknown"], **SMALL})
    info = json.loads(r.json()["info"])
    assert info["prompt"] == "cinematic still of a fox" and info["negative_prompt"] == "cartoon"


def test_options_switch_model_unload_reload(live_server):
    server = live_server(models=("sd1", "sd2"))
    with httpx.Client(base_url=server.url, timeout=120) as api:
        titles = [m["title"] for m in api.get("/sdapi/v1/sd-models").json()]
        current = api.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
        other = next(t for t in titles if t != current)
        assert api.post("/sdapi/v1/options", json={"sd_model_checkpoint": other}).status_code == 200
        other = server.app.models.current.info.title  # hashed at load: "name [shorthash]"
        assert other.startswith(other.split(" [")[0]) and other != current
        assert api.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == other
        saved = json.loads(server.app.paths.config_file.read_text())
        assert saved["sd_model_checkpoint"] == other
        r = api.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL})
        assert json.loads(r.json()["info"])["sd_model_name"] == server.app.models.current.info.model_name
        loads = server.app.models.load_count
        unloaded = api.post("/sdapi/v1/unload-checkpoint")
        assert unloaded.status_code == 200 and unloaded.json() == {} and server.app.models.current is None
        assert api.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == other  # the option stays, as in A1111
        assert api.get("/internal/ping").json()["model"] == "unloaded"
        reloaded = api.post("/sdapi/v1/reload-checkpoint")
        assert reloaded.status_code == 200 and reloaded.json() == {}
        assert server.app.models.load_count == loads  # A1111's unload keeps the model in RAM: not read again
        assert server.app.models.current.info.title == other
        r = api.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL,
                                                "override_settings": {"sd_model_checkpoint": current}})
        assert r.status_code == 200 and json.loads(r.json()["info"])["sd_model_hash"] in current
        assert api.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == other  # a job never changes settings
        # a model unloaded to RAM is let go once another one loads (the RAM cache keeps its size)
        assert api.post("/sdapi/v1/unload-checkpoint").status_code == 200
        assert server.app.models.loaded_titles() == [current]
        r = api.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL})  # the default, other, loads
        assert r.status_code == 200 and server.app.models.loaded_titles() == [other]


def _job(api, job_id: str):
    job = api.server.app.queue.get(job_id)
    assert job is not None
    return job


def test_async_jobs_end_to_end(api):
    r = api.post("/sdapi/v2/txt2img", json={"prompt": "x", "seed": 9, "n_iter": 2, **SMALL})
    assert r.status_code == 202
    job_id = r.json()["id"]
    assert r.headers["location"] == f"/sdapi/v2/jobs/{job_id}"
    assert _job(api, job_id).wait(120)
    detail = api.get(f"/sdapi/v2/jobs/{job_id}").json()
    assert detail["state"] == "succeeded", detail
    assert detail["progress"]["fraction"] == 1.0
    result = detail["result"]
    # save_images is off: A1111 makes no grid, so a batch of 2 gives exactly its 2 images
    assert set(result) == {"images", "parameters", "info"} and len(result["images"]) == 2
    assert json.loads(result["info"])["all_seeds"] == [9, 10]
    listed = api.get("/sdapi/v2/jobs").json()
    assert any(j["id"] == job_id and j["state"] == "succeeded" and j["kind"] == "txt2img" for j in listed)
    assert any(j["kind"] == "load-model" for j in listed)  # every kind is listed, the start-up load included
    assert api.get("/sdapi/v2/jobs/nope").status_code == 404


def test_async_cancel_queued_and_running(api):
    slow = {"prompt": "x", "width": 64, "height": 64, "steps": 150, "n_iter": 20}
    first = api.post("/sdapi/v2/txt2img", json=slow).json()["id"]
    second = api.post("/sdapi/v2/txt2img", json=slow).json()
    assert second["position"] >= 1
    assert api.delete(f"/sdapi/v2/jobs/{second['id']}").json()["state"] == "cancelled"
    wait_for_progress(_job(api, first), lambda p: p.sampling_step > 0)
    detail = api.get(f"/sdapi/v2/jobs/{first}").json()
    assert detail["state"] == "running" and detail["progress"]["steps"] == 150 and detail["eta"] is not None
    api.delete(f"/sdapi/v2/jobs/{first}")
    assert _job(api, first).wait(60)
    detail = api.get(f"/sdapi/v2/jobs/{first}").json()
    assert detail["state"] == "cancelled" and len(detail["result"]["images"]) >= 1
    assert detail["interrupted"] is True
    assert any(w.startswith("interrupted: ") and w.endswith(" of 20 images generated") for w in detail["warnings"])
    queued = api.get(f"/sdapi/v2/jobs/{second['id']}").json()
    assert queued["state"] == "cancelled" and queued["interrupted"] is False and queued["result"] is None


def test_interrupt_and_skip_mid_job(api):
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 60, "n_iter": 4}
    results = {}

    def call():
        results["r"] = api.post("/sdapi/v1/txt2img", json=body)

    t = threading.Thread(target=call)
    t.start()
    app = api.server.app
    job = running_job(app)
    api.post("/sdapi/v1/skip")
    wait_for_progress(job, lambda p: p.job_no >= 1 and p.sampling_step > 0)
    api.post("/sdapi/v1/interrupt")
    t.join(120)
    r = results["r"]
    assert r.status_code == 200
    info = json.loads(r.json()["info"])
    assert len(r.json()["images"]) == 2  # the skipped batch's image + the interrupted batch's image, no grid
    assert info["all_seeds"][:2] == [info["seed"], info["seed"] + 1]
    assert info["interrupted"] is True and "interrupted: 2 of 4 images generated" in info["warnings"]
    assert api.post("/sdapi/v1/txt2img", json={"prompt": "after", **SMALL}).status_code == 200


def test_v2_job_cut_by_interrupt_says_so(api):
    """/interrupt keeps what was made (A1111): the job succeeded, marked interrupted, with a warning."""
    r = api.post("/sdapi/v2/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 60, "n_iter": 5})
    job = _job(api, r.json()["id"])
    wait_for_progress(job, lambda p: p.job_no >= 1 and p.sampling_step > 0)
    api.post("/sdapi/v1/interrupt")
    assert job.wait(60)
    detail = api.get(f"/sdapi/v2/jobs/{job.id}").json()
    assert detail["state"] == "succeeded" and detail["interrupted"] is True and detail["error_kind"] is None
    assert "interrupted: 2 of 5 images generated" in detail["warnings"]
    info = json.loads(detail["result"]["info"])
    assert info["interrupted"] is True and "interrupted: 2 of 5 images generated" in info["warnings"]
    whole = api.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL})
    assert json.loads(whole.json()["info"])["interrupted"] is False
    assert not any(w.startswith("interrupted") for w in json.loads(whole.json()["info"])["warnings"])


def test_grid_only_when_a1111_returns_one(module_api):
    """A1111's API makes a grid only with save_images; then it comes first and index_of_first_image is 1."""
    batch = {"prompt": "x", "batch_size": 2, **SMALL}
    plain = module_api.post("/sdapi/v1/txt2img", json=batch).json()
    assert len(plain["images"]) == 2 and json.loads(plain["info"])["index_of_first_image"] == 0
    saved = module_api.post("/sdapi/v1/txt2img", json={**batch, "save_images": True}).json()
    info = json.loads(saved["info"])
    assert len(saved["images"]) == 3 and info["index_of_first_image"] == 1 and len(info["infotexts"]) == 3
    assert _image(saved["images"][0]).size == (128, 64)
    off = module_api.post("/sdapi/v1/txt2img", json={**batch, "save_images": True,
                                                      "override_settings": {"return_grid": False}}).json()
    assert len(off["images"]) == 2


def test_options_waits_for_the_model_switch_and_ping_tells_the_truth(api):
    assert api.get("/internal/ping").json()["model"] == "loaded"
    assert api.post("/sdapi/v1/unload-checkpoint").status_code == 200
    assert api.get("/internal/ping").json()["model"] == "unloaded"
    title = api.get("/sdapi/v1/sd-models").json()[0]["title"]
    assert api.post("/sdapi/v1/options", json={"sd_model_checkpoint": title}).status_code == 200
    assert api.get("/internal/ping").json()["model"] == "loaded"  # the load job was awaited, not guessed
    assert api.post("/sdapi/v1/options", json={"sd_model_checkpoint": "missing.safetensors"}).status_code == 422


def test_memory_reports_the_process_like_a1111(module_api):
    ram = module_api.get("/sdapi/v1/memory").json()["ram"]
    with open("/proc/self/statm", encoding="ascii") as f:  # the server runs in this test process
        rss = int(f.read().split()[1]) * __import__("os").sysconf("SC_PAGE_SIZE")
    assert 0.5 * rss < ram["used"] < 2 * rss and ram["free"] == ram["total"] - ram["used"]


def test_four_concurrent_clients_all_served(module_api):
    results = []

    def client(i: int) -> None:
        with httpx.Client(base_url=module_api.server.url, timeout=120) as c:
            results.append(c.post("/sdapi/v1/txt2img", json={"prompt": f"p{i}", "seed": i, **SMALL}))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(json.loads(r.json()["info"])["seed"] for r in results if r.status_code == 200) == [0, 1, 2, 3]


def test_failing_job_then_good_job(api):
    bad = api.server.app.paths.models_dir / "Stable-diffusion" / "broken.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    api.post("/sdapi/v1/refresh-checkpoints")
    r = api.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL,
                                            "override_settings": {"sd_model_checkpoint": "broken.safetensors"}})
    assert r.status_code == 422 and r.json()["field"] == "sd_model_checkpoint"
    assert "broken.safetensors" in r.json()["detail"] and "Traceback" not in r.text
    good = api.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL})
    assert good.status_code == 200


def test_full_queue_answers_503(live_server):
    server = live_server()
    server.app.settings.update({"queue_max_size": 1}, save=False)
    with httpx.Client(base_url=server.url, timeout=60) as api:
        slow = {"prompt": "x", "width": 64, "height": 64, "steps": 150, "n_iter": 50}
        ids = [api.post("/sdapi/v2/txt2img", json=slow).json()["id"]]
        running_job(server.app)
        ids.append(api.post("/sdapi/v2/txt2img", json=slow).json()["id"])
        r = api.post("/sdapi/v2/txt2img", json=slow)
        assert r.status_code == 503 and "full" in r.json()["detail"]
        r = api.post("/sdapi/v1/txt2img", json=slow)
        assert r.status_code == 503
        for job_id in ids:
            api.delete(f"/sdapi/v2/jobs/{job_id}")


def test_cross_origin_post_refused(module_api):
    for origin in ("https://evil.example", "null"):
        r = module_api.post("/sdapi/v1/interrupt", headers={"Origin": origin})
        assert r.status_code == 403
    ok = module_api.post("/sdapi/v1/interrupt", headers={"Origin": module_api.server.url})
    assert ok.status_code == 200


def test_cmd_flags_never_show_passwords(live_server):
    server = live_server(api_auth={"alice": "s3cret-pass"})
    with httpx.Client(base_url=server.url, timeout=60, auth=("alice", "s3cret-pass")) as api:
        flags = api.get("/sdapi/v1/cmd-flags")
        assert flags.status_code == 200 and "s3cret-pass" not in flags.text


def test_api_auth_enforced(live_server):
    server = live_server(api_auth={"alice": "pw1"})
    with httpx.Client(base_url=server.url, timeout=60) as anon:
        for method, path in (("GET", "/sdapi/v1/options"), ("POST", "/sdapi/v1/txt2img"),
                             ("GET", "/sdapi/v2/jobs"), ("GET", "/docs"), ("GET", "/openapi.json")):
            r = anon.request(method, path, json={})
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic"), path
        assert anon.get("/sdapi/v1/options", auth=("alice", "wrong")).status_code == 401
        assert "pw1" not in anon.get("/sdapi/v1/options", auth=("alice", "wrong")).text
        assert anon.get("/sdapi/v1/options", auth=("alice", "pw1")).status_code == 200


def test_jobs_belong_to_their_user(live_server):
    server = live_server(api_auth={"alice": "a", "bob": "b"})
    with httpx.Client(base_url=server.url, timeout=60) as c:
        slow = {"prompt": "x", "width": 64, "height": 64, "steps": 150, "n_iter": 50}
        job = c.post("/sdapi/v2/txt2img", json=slow, auth=("alice", "a")).json()["id"]
        assert c.delete(f"/sdapi/v2/jobs/{job}", auth=("bob", "b")).status_code == 403
        assert c.get(f"/sdapi/v2/jobs/{job}", auth=("bob", "b")).status_code == 403
        assert job not in [j["id"] for j in c.get("/sdapi/v2/jobs", auth=("bob", "b")).json()]
        assert c.delete(f"/sdapi/v2/jobs/{job}", auth=("alice", "a")).status_code == 200
