"""Generation workers on a real local Ray cluster: two CPU workers on the tiny model, behind a real HTTP server.

Jobs run on both workers at once; a pinned job runs where it is pinned; killing a worker's process in the middle of
a job gets the job run again on the other worker and finished, and the killed worker comes back and gets work;
progress, results and the saved images come through the normal APIs; a checkpoint the workers do not have is a
clear error; unloading and reloading the checkpoint reach every worker. One cluster for the module (starting the
workers takes a few seconds each)."""

from __future__ import annotations

import base64
import io
import os
import signal
import time
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import LiveServer, install_model

pytestmark = pytest.mark.slow
STEP_BODY = {"prompt": "a red circle", "steps": 8, "width": 64, "height": 64, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, model_store):
    from modules.app import App, StartOptions
    from webui.launch_options import ServerConfig

    data = tmp_path_factory.mktemp("cluster")
    install_model(data, model_store("sd1", "safetensors"), "tiny")
    install_model(data, model_store("sd1", "safetensors"), "frontonly")  # this server has it, the workers do not
    worker_root = data / "shared"
    install_model(worker_root, model_store("sd1", "safetensors"), "tiny")
    app = App(StartOptions(data_dir=data, device="cpu", workers="ray", worker_count=2,
                           worker_models_dir=worker_root / "models"))
    config = ServerConfig("127.0.0.1", 0, True, {}, {}, False, {"api_auth": None})
    server = LiveServer(app, config)
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            _wait_workers(client, lambda ws: all(w["state"] == "ready" for w in ws), 180)
            assert app.queue.wait_idle(120)  # the start-up model load (on a worker)
            yield client, app, data
    finally:
        server.stop()


def _workers(client: httpx.Client) -> list[dict[str, Any]]:
    r = client.get("/sdapi/v2/workers")
    assert r.status_code == 200, r.text
    return r.json()


def _wait_workers(client: httpx.Client, predicate, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        ws = _workers(client)
        if predicate(ws):
            return ws
        assert time.monotonic() < deadline, ws
        time.sleep(0.5)


def _submit(client: httpx.Client, body: dict[str, Any], worker: str | None = None) -> str:
    r = client.post("/sdapi/v2/txt2img", json=body, params={"worker": worker} if worker else None)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _wait(client: httpx.Client, job_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/sdapi/v2/jobs/{job_id}", params={"preview": False}).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def test_the_workers_are_listed_with_their_process_and_device(cluster):
    client, _, _ = cluster
    ws = _workers(client)
    assert [w["id"] for w in ws] == ["worker-1", "worker-2"]
    for w in ws:
        assert w["device"] == "cpu" and w["node"] and isinstance(w["pid"], int) and w["pid"] != os.getpid()
        assert w["state"] in ("ready", "busy") and w["checkpoints"] >= 1
    assert ws[0]["pid"] != ws[1]["pid"]


def test_jobs_run_on_both_workers_at_once_and_come_back_through_the_api(cluster):
    client, app, data = cluster
    ids = [_submit(client, {**STEP_BODY, "seed": seed, "steps": 16, "save_images": seed == 1}) for seed in range(4)]
    jobs = [_wait(client, job_id) for job_id in ids]
    assert [j["state"] for j in jobs] == ["succeeded"] * 4, [j["error"] for j in jobs]
    assert {j["worker"] for j in jobs} == {"worker-1", "worker-2"}
    spans = sorted((j["started"], j["finished"]) for j in jobs)
    assert any(a_end > b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False)), spans
    for seed, job in enumerate(jobs):
        result = job["result"]
        image = Image.open(io.BytesIO(base64.b64decode(result["images"][0])))
        assert image.size == (64, 64)
        assert f"Seed: {seed}," in result["info"] and "Steps: 16" in result["info"]
    # the one job that asked to save: written by this server into its own outputs, nothing by the workers
    saved = list((data / "outputs" / "txt2img-images").rglob("*.png"))
    assert len(saved) == 1 and "Seed: 1," in Image.open(saved[0]).info["parameters"]
    assert not list((data / "workers").rglob("*.png"))


def test_a_pinned_job_runs_on_its_worker(cluster):
    client, _, _ = cluster
    for worker in ("worker-2", "worker-1", "worker-2"):
        job = _wait(client, _submit(client, STEP_BODY, worker=worker))
        assert job["state"] == "succeeded" and job["worker"] == worker
    r = client.post("/sdapi/v2/txt2img", json=STEP_BODY, params={"worker": "worker-9"})
    assert r.status_code == 422 and "worker-9" in r.text
    # the A1111 API waits for its job as always, whichever worker runs it
    v1 = client.post("/sdapi/v1/txt2img", json={**STEP_BODY, "seed": 3})
    assert v1.status_code == 200 and len(v1.json()["images"]) == 1 and '"seed": 3' in v1.json()["info"]


def test_progress_comes_through_while_a_worker_runs_the_job(cluster):
    client, _, _ = cluster
    job_id = _submit(client, {**STEP_BODY, "steps": 40, "n_iter": 3})
    deadline = time.monotonic() + 120
    seen = None
    while time.monotonic() < deadline:
        job = client.get(f"/sdapi/v2/jobs/{job_id}").json()
        if job["state"] == "running" and job["progress"]["step"] > 0:
            seen = job
            break
        assert job["state"] in ("queued", "running"), job
        time.sleep(0.1)
    assert seen is not None and seen["worker"] in ("worker-1", "worker-2")
    assert seen["progress"]["steps"] == 40 and 0 < seen["progress"]["fraction"] < 1
    v1 = client.get("/sdapi/v1/progress").json()
    assert v1["state"]["job_count"] >= 1
    assert _wait(client, job_id)["state"] == "succeeded"


def test_killing_a_worker_mid_job_runs_the_job_again_elsewhere_and_the_worker_comes_back(cluster):
    client, _, _ = cluster
    job_id = _submit(client, {**STEP_BODY, "steps": 40, "n_iter": 4, "seed": 7})
    deadline = time.monotonic() + 120
    while True:
        job = client.get(f"/sdapi/v2/jobs/{job_id}", params={"preview": False}).json()
        if job["state"] == "running" and job["progress"]["step"] > 0:
            break
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    victim = job["worker"]
    pid = next(w["pid"] for w in _workers(client) if w["id"] == victim)
    os.kill(pid, signal.SIGKILL)
    done = _wait(client, job_id, 300)
    assert done["state"] == "succeeded", done["error"]
    assert done["attempts"] == 1 and done["worker"] != victim
    assert any("stopped during the job" in w and "ran again" in w for w in done["warnings"]), done["warnings"]
    assert len(done["result"]["images"]) == 4
    # the killed worker starts again (a new process) and gets work as soon as it is ready
    back = _wait_workers(client, lambda ws: any(w["id"] == victim and w["state"] == "ready" and w["pid"] != pid
                                                for w in ws), 240)
    assert next(w for w in back if w["id"] == victim)["restarts"] >= 1
    again = _wait(client, _submit(client, STEP_BODY, worker=victim))
    assert again["state"] == "succeeded" and again["worker"] == victim


def test_a_checkpoint_the_workers_do_not_have_is_a_clear_error(cluster):
    client, _, _ = cluster
    body = {**STEP_BODY, "override_settings": {"sd_model_checkpoint": "frontonly"}}
    job = _wait(client, _submit(client, body))
    assert job["state"] == "failed"
    assert "no worker can run this job" in job["error"]
    assert "worker-1: checkpoint frontonly.safetensors is not in this worker's model folder" in job["error"]
    ok = _wait(client, _submit(client, {**STEP_BODY, "override_settings": {"sd_model_checkpoint": "tiny"}}))
    assert ok["state"] == "succeeded"


def test_unload_and_reload_checkpoint_reach_every_worker(cluster):
    client, _, _ = cluster
    for worker in ("worker-1", "worker-2"):  # each has run a job: its model is resident
        assert _wait(client, _submit(client, STEP_BODY, worker=worker))["state"] == "succeeded"
    assert all(w["model"] and w["model"].startswith("tiny") for w in _workers(client))
    # the option names the model the workers loaded at the start, as A1111's names its loaded model
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny")
    unloaded = client.post("/sdapi/v1/unload-checkpoint")
    assert unloaded.status_code == 200 and unloaded.json() == {}
    assert [w["model"] for w in _workers(client)] == [None, None]  # answered once the workers have unloaded
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny")  # the option stays
    assert client.post("/sdapi/v1/reload-checkpoint").status_code == 200
    assert all(w["model"] and w["model"].startswith("tiny") for w in _workers(client))
    assert _wait(client, _submit(client, STEP_BODY))["state"] == "succeeded"
