"""``/sdapi/v2/workers`` and a job's worker through the jobs API, against a live server without ``--workers``: this
process is the one worker, ``local``; jobs run in it name no worker; ``?worker=`` pins a job to a worker and an
unknown one is refused before anything is queued."""

from __future__ import annotations

import base64
import io
import os
import time

import httpx
import pytest
from PIL import Image

from tests.conftest import wait_for_progress

pytestmark = pytest.mark.usefixtures("frozen_gc")

SMALL = {"prompt": "x", "width": 64, "height": 64, "steps": 2}
WORKER_KEYS = {"id", "state", "message", "node", "node_id", "pid", "device", "model", "checkpoints", "job",
               "jobs_done", "busy_seconds", "restarts"}


def _png_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 40, 10)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _finished(api, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        detail = api.get(f"/sdapi/v2/jobs/{job_id}", params={"preview": False}).json()
        if detail["state"] in ("succeeded", "failed", "cancelled"):
            return detail
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def test_workers_lists_this_process_as_the_one_worker(module_api):
    r = module_api.get("/sdapi/v2/workers")
    assert r.status_code == 200
    [worker] = r.json()
    assert set(worker) == WORKER_KEYS
    assert worker["id"] == "local" and worker["pid"] == os.getpid() and worker["device"] == "cpu"
    assert worker["state"] == "ready" and worker["job"] is None and worker["checkpoints"] >= 1
    assert worker["model"] == module_api.server.app.models.current.info.title


def test_a_running_job_shows_on_its_worker(module_api):
    slow = {**SMALL, "steps": 150, "n_iter": 20}
    job_id = module_api.post("/sdapi/v2/txt2img", json=slow).json()["id"]
    job = module_api.server.app.queue.get(job_id)
    try:
        wait_for_progress(job, lambda p: p.sampling_step > 0)
        [worker] = module_api.get("/sdapi/v2/workers").json()
        assert worker["state"] == "busy" and worker["job"] == job_id
    finally:
        module_api.delete(f"/sdapi/v2/jobs/{job_id}")
        assert job.wait(60)
    assert module_api.get("/sdapi/v2/workers").json()[0]["job"] is None


def test_a_job_run_in_process_names_no_worker(module_api):
    r = module_api.post("/sdapi/v2/txt2img", json=SMALL)
    assert r.status_code == 202
    accepted = r.json()
    assert accepted["worker"] is None and accepted["attempts"] == 0
    detail = _finished(module_api, accepted["id"])
    assert detail["state"] == "succeeded" and detail["worker"] is None and detail["attempts"] == 0
    listed = {j["id"]: j for j in module_api.get("/sdapi/v2/jobs").json()}
    assert listed[accepted["id"]]["worker"] is None and listed[accepted["id"]]["attempts"] == 0


@pytest.mark.parametrize("route", ["txt2img", "img2img"])
def test_an_unknown_worker_is_refused_with_422(module_api, route):
    before = len(module_api.get("/sdapi/v2/jobs").json())
    body = dict(SMALL)
    if route == "img2img":
        body["init_images"] = [_png_b64()]
    r = module_api.post(f"/sdapi/v2/{route}", params={"worker": "nope"}, json=body)
    assert r.status_code == 422, r.text
    error = r.json()
    assert error["field"] == "worker" and "'nope'" in error["detail"] and "local" in error["detail"]
    assert len(module_api.get("/sdapi/v2/jobs").json()) == before  # nothing queued


def test_a_job_pinned_to_local_runs(module_api):
    r = module_api.post("/sdapi/v2/txt2img", params={"worker": "local"}, json=SMALL)
    assert r.status_code == 202, r.text
    assert _finished(module_api, r.json()["id"])["state"] == "succeeded"
    r = module_api.post("/sdapi/v2/txt2img", params={"worker": ""}, json=SMALL)  # empty: any worker
    assert r.status_code == 202, r.text
    assert _finished(module_api, r.json()["id"])["state"] == "succeeded"


def test_workers_needs_a_login_but_no_administrator(live_server):
    server = live_server(api_auth={"alice": "a", "bob": "b"}, load=False)
    server.app.admin_users = frozenset({"alice"})
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.get("/sdapi/v2/workers")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
        assert c.get("/sdapi/v2/workers", auth=("bob", "wrong")).status_code == 401
        r = c.get("/sdapi/v2/workers", auth=("bob", "b"))
        assert r.status_code == 200 and [w["id"] for w in r.json()] == ["local"]
        assert c.post("/sdapi/v1/options", json={}, auth=("bob", "b")).status_code == 403  # bob is no administrator
