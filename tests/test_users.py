"""Several users under --api-auth: each acts on their own jobs only; settings and models are for administrators."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest

from tests.conftest import LiveServer, install_model, running_job

USERS = {"alice": "pw-alice", "bob": "pw-bob"}
SLOW = {"prompt": "x", "width": 64, "height": 64, "steps": 60, "n_iter": 20}
SMALL = {"prompt": "x", "width": 64, "height": 64, "steps": 2}


def client(server, user: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=120, auth=(user, USERS[user]))


@pytest.fixture
def admin_server(data_dir, model_store):
    """A live server with both users and ``--admin-users alice``, built as conftest's ``live_server`` builds one."""
    from modules.app import App, StartOptions
    from webui.launch_options import ServerConfig

    install_model(data_dir, model_store("sd1", "safetensors"), "tiny")
    app = App(StartOptions(data_dir=data_dir, device="cpu", admin_users=("alice",)))
    config = ServerConfig("127.0.0.1", 0, True, dict(USERS), {}, False, {"api_auth": "<redacted>"})
    server = LiveServer(app, config)
    app.queue.wait_idle(60)
    yield server
    server.stop()


def _start_slow(alice: httpx.Client, app):
    r = alice.post("/sdapi/v2/txt2img", json=SLOW)
    assert r.status_code == 202, r.text
    job = running_job(app)
    assert job.id == r.json()["id"] and job.owner == "alice"
    return job


def test_interrupt_skip_and_progress_are_per_user(live_server):
    server = live_server(api_auth=USERS)
    with client(server, "alice") as alice, client(server, "bob") as bob:
        job = _start_slow(alice, server.app)
        assert bob.post("/sdapi/v1/interrupt").status_code == 200
        assert bob.post("/sdapi/v1/skip").status_code == 200
        assert not job.control.interrupted and not job.control.skipped  # bob cannot stop alice's job
        theirs = bob.get("/sdapi/v1/progress").json()
        assert theirs["current_task"] is None and theirs["current_image"] is None
        assert theirs["state"]["job"] == "" and theirs["state"]["job_count"] == 0
        mine = alice.get("/sdapi/v1/progress").json()
        assert mine["current_task"] == job.id and mine["state"]["job_count"] >= 1
        assert alice.post("/sdapi/v1/interrupt").status_code == 200
        assert job.wait(60)
        detail = alice.get(f"/sdapi/v2/jobs/{job.id}").json()
        assert detail["interrupted"] is True


def test_bob_cannot_see_or_cancel_alices_jobs(live_server):
    server = live_server(api_auth=USERS)
    with client(server, "alice") as alice, client(server, "bob") as bob:
        job = _start_slow(alice, server.app)
        assert job.id not in [j["id"] for j in bob.get("/sdapi/v2/jobs").json()]
        assert bob.get(f"/sdapi/v2/jobs/{job.id}").status_code == 403
        assert bob.delete(f"/sdapi/v2/jobs/{job.id}").status_code == 403
        assert not job.control.interrupted and server.app.queue.cancel(job.id, "bob") is None
        assert alice.delete(f"/sdapi/v2/jobs/{job.id}").status_code == 200
        assert job.wait(60) and job.state.value == "cancelled"


def test_ui_jobs_belong_to_the_logged_in_user(live_server):
    from webui.ui.txt2img_handlers import Txt2ImgHandlers, default_values

    server = live_server(api_auth=USERS)
    handlers = Txt2ImgHandlers(server.app)
    values = {**default_values(server.app), "width": 64, "height": 64, "steps": 60, "n_iter": 20}
    as_alice = SimpleNamespace(username="alice")
    gen = handlers.generate_as(as_alice, *[values[name] for name in handlers.fields])
    first = next(gen)
    job = server.app.queue.get(first.job_id)
    assert job is not None and job.owner == "alice"
    with client(server, "bob") as bob:
        assert job.id not in [j["id"] for j in bob.get("/sdapi/v2/jobs").json()]
        assert bob.delete(f"/sdapi/v2/jobs/{job.id}").status_code == 403
    handlers.interrupt(job.id, SimpleNamespace(username="bob"))  # another user's Interrupt button does nothing
    handlers.skip(job.id, SimpleNamespace(username="bob"))
    assert not job.control.interrupted and not job.control.skipped and not job.cancel_requested
    handlers.interrupt(job.id, as_alice)
    *_, last = list(gen)
    assert job.state.value == "cancelled"
    assert last.job_id is None


def test_only_admins_change_options_and_models(admin_server):
    app = admin_server.app
    title = app.settings["sd_model_checkpoint"]
    with client(admin_server, "alice") as alice, client(admin_server, "bob") as bob:
        for path, body in (("/sdapi/v1/options", {"samples_format": "jpg"}), ("/sdapi/v1/refresh-checkpoints", None),
                           ("/sdapi/v1/unload-checkpoint", None), ("/sdapi/v1/reload-checkpoint", None),
                           ("/sdapi/v1/merge-checkpoints", {"primary_model_name": title}),
                           ("/sdapi/v1/create/embedding", {"name": "e"}), ("/sdapi/v1/train/lora", {"name": "l"}),
                           ("/sdapi/v2/train/embedding", {"embedding_name": "e"})):
            r = bob.post(path, json=body)
            assert r.status_code == 403, (path, r.text)
            assert r.json()["error"] == "Forbidden" and "admin" in r.json()["detail"]
        assert app.settings["samples_format"] == "png" and app.models.current is not None
        assert bob.get("/sdapi/v1/options").status_code == 200  # reading stays open
        # a user's own job may still override settings for itself
        r = bob.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"CLIP_stop_at_last_layers": 2}})
        assert r.status_code == 200, r.text
        assert alice.post("/sdapi/v1/options", json={"samples_format": "jpg"}).status_code == 200
        assert app.settings["samples_format"] == "jpg"
        assert alice.post("/sdapi/v1/refresh-checkpoints").status_code == 200


def test_every_user_is_admin_without_admin_users(live_server):
    server = live_server(api_auth=USERS, load=False)
    with client(server, "bob") as bob:
        assert bob.post("/sdapi/v1/options", json={"samples_format": "jpg"}).status_code == 200
    assert server.app.settings["samples_format"] == "jpg"


def test_ui_settings_checkpoint_and_merger_are_for_admins(admin_server):
    from webui.ui.merger import MergerHandlers
    from webui.ui.quicksettings import select_checkpoint
    from webui.ui.settings_tab import SettingsHandlers

    app = admin_server.app
    bob, alice = SimpleNamespace(username="bob"), SimpleNamespace(username="alice")
    settings = SettingsHandlers(app)
    snapshot = app.settings.snapshot()
    values = [("jpg" if key == "samples_format" else snapshot[key]) for key in settings.keys]
    assert "administrator" in settings.apply_as(bob, *values)
    assert "administrator" in str(settings.reset(bob)[0])
    assert app.settings["samples_format"] == "png"
    assert "administrator" in select_checkpoint(app, app.settings["sd_model_checkpoint"], "bob")
    updates = list(MergerHandlers(app).merge_as(bob))
    assert len(updates) == 1 and "administrator" in updates[0][1]
    assert "sd-error" not in settings.apply_as(alice, *values)
    assert app.settings["samples_format"] == "jpg"


def test_gradio_passes_the_request_to_the_handlers(live_server):
    """gradio injects ``gr.Request`` only into positional parameters annotated with it: check every handler."""
    import gradio as gr
    from gradio.helpers import special_args

    from webui.ui.merger import MergerHandlers
    from webui.ui.settings_tab import SettingsHandlers
    from webui.ui.txt2img_handlers import Txt2ImgHandlers

    server = live_server(load=False)
    t2i, merger, settings = Txt2ImgHandlers(server.app), MergerHandlers(server.app), SettingsHandlers(server.app)
    request = gr.Request(username="alice")
    for fn, inputs in ((t2i.generate_as, ["a", "b"]), (t2i.interrupt, ["id"]), (t2i.skip, ["id"]),
                       (merger.merge_as, ["a"]), (merger.interrupt, ["id"]), (settings.apply_as, ["a"]),
                       (settings.reset, [])):
        args, *_ = special_args(fn, list(inputs), request)
        assert request in args, fn.__name__
