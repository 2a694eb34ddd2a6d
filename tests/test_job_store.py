"""The job queue kept in SQLite: every spec and result kind round-trips, a restart (a stop or a kill) runs the queued
jobs again, shows the finished ones through /sdapi/v2 and marks the running one interrupted; expired jobs are
purged; a corrupt file is moved aside."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import typing
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image

from modules import job_types
from modules.errors import ErrorKind
from modules.extras import ExtrasImage, ExtrasRequest, ExtrasResult
from modules.job_codec import TooLarge, Undecodable, Unstorable, decode, encode
from modules.job_handlers import builtin_handlers
from modules.job_store import JOBS_FILE, JobStore, Unrestorable
from modules.jobs import INTERRUPTED_BY_STOP, STOPPED_BEFORE_RUN, JobQueue, JobState
from modules.merge.service import MergeRequest
from modules.output_options import OutputOptions
from modules.requests import GenerationRequest, Img2ImgRequest, Limits
from modules.scripts.registry import ScriptCall
from modules.training.specs import (
    CreateEmbeddingJob,
    PreviewOptions,
    TrainEmbeddingJob,
    TrainLoraJob,
    TrainOptions,
    TrainResult,
)
from modules.training_prep.options import CaptionOptions, FlipOptions, SplitOptions, TrainingPrepOptions

ROOT = Path(__file__).resolve().parents[1]


def _image(mode: str = "RGB", size: tuple[int, int] = (8, 6)) -> Image.Image:
    image = Image.new("RGB", size)
    image.putdata([(x * 30 % 256, y * 40 % 256, (x + y) * 7 % 256) for y in range(size[1]) for x in range(size[0])])
    return image.convert(mode)


def _png(color: int = 10) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (color, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def every_spec(tmp: Path) -> list[object]:
    rgb, rgba = _image("RGB"), _image("RGBA")
    request = GenerationRequest(prompt="a cat", negative_prompt="dog", styles=("s1",), seed=2**64 - 1, steps=3,
                                eta=None, checkpoint="tiny [abc]", enable_hr=True, hr_sampler_name="Euler")
    img2img = Img2ImgRequest(prompt="x", init_images=(rgb, rgba), mask=_image("L"), latent_mask=_image("1"),
                             image_cfg_scale=1.5, batch_size=2)
    scripts = ScriptCall("x/y/z plot", (1, "Seed", [1, 2, 3], None, True, 0.5, {"a": [1, (2, 3)]}, rgb))
    prep = TrainingPrepOptions(target_width=64, target_height=64, split=SplitOptions(True, 0.4, 0.1),
                               flip=FlipOptions(True, ("Horizontal", "Vertical")),
                               caption=CaptionOptions(True, ("BLIP",)), operation_order=("Split oversized images",))
    return [
        job_types.Txt2ImgJob(request, OutputOptions.under(tmp), 5, True, scripts,
                             (ScriptCall("hook", ()), ScriptCall("other", ("v", 2)))),
        job_types.Img2ImgJob(img2img, None, 0, False, None),
        job_types.Img2ImgBatchJob(img2img.replace(init_images=()), (tmp / "a.png", tmp / "b.jpg"), tmp / "out",
                                  tmp / "masks", ("Prompt", "Seed"), 1.5, Limits(max_size=1024, upscalers=("A",))),
        job_types.LoadModelJob("tiny"), job_types.LoadModelJob(None), job_types.ReloadModelJob(),
        job_types.UnloadModelJob(), job_types.DeviceConfigJob("fp32", "sdp"),
        job_types.MergeJob(MergeRequest(primary_model_name="a", secondary_model_name="b", multiplier=0.25,
                                        config_source="B", metadata_json='{"k": 1}')),
        job_types.ExtrasJob(ExtrasRequest(images=(("a.png", rgb), ("b.png", rgba)), input_paths=(tmp / "c.png",),
                                          upscaler_1="Lanczos", training=prep), tmp / "extras", "webp", True,
                            (("interrogate_return_ranks", True), ("deepbooru_filter_tags", ""))),
        job_types.InterrogateJob(rgb, "deepdanbooru", (("interrogate_clip_num_beams", 2),)),
        CreateEmbeddingJob("e", 2, True, "a cat"),
        TrainEmbeddingJob("e", TrainOptions(data_root=str(tmp), preview=PreviewOptions(prompt="p", seed=3))),
        TrainLoraJob("l", resume="l-10", unet_lr=1e-4, text_targets=("q_proj",)),
    ]


def every_result(tmp: Path) -> list[object]:
    out = job_types.OutputImage(_png(1), "a cat\nSteps: 3", 5, 6, "a cat", "dog", tmp / "00001-5.png")
    return [
        job_types.ImagesResult(GenerationRequest(prompt="a cat", seed=5), (out, job_types.OutputImage(_png(2), "")),
                               job_types.OutputImage(_png(3), "grid"), tmp / "grid.png", "tiny", "abc", None, None,
                               {"Hires upscale": 2.0, "Lora hashes": "x: 1"}, ("a warning",), True, "20240101",
                               1, "X/Y/Z plot"),
        job_types.ImagesResult(Img2ImgRequest(prompt="y", denoising_strength=0.4), ()),
        job_types.BatchResult((out,), (("bad.png", "unreadable"),), tmp, True),
        job_types.ModelResult("tiny [abc]"), job_types.ModelResult(None),
        job_types.MergeResultSummary(str(tmp / "m.safetensors"), "m", "m [1]", "f" * 64, "1234", None, 1.5, "ok"),
        ExtrasResult((ExtrasImage("a.png", _png(4), "Upscale: 2", tmp / "a.png", "caption"),), False,
                     (("c.png", "gone"),), (tmp / "a.png",), "Upscale: 2", ("w",)),
        job_types.InterrogateResult("a cat, sitting"),
        TrainResult("done", "e.pt", "e", "embedding", 10, ((1, 0.5), (2, 0.25)), ("e-5.pt",), ("e-5.png",), "log",
                    False, None),
    ]


def _same_images(a: object, b: object) -> bool:
    """Deep equality where images compare by mode, size and pixels (and are plain images, not files)."""
    if isinstance(a, Image.Image):
        return (isinstance(b, Image.Image) and type(b) is Image.Image and a.mode == b.mode and a.size == b.size
                and a.tobytes() == b.tobytes())
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(_same_images(getattr(a, f.name), getattr(b, f.name))
                                          for f in dataclasses.fields(a))
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same_images, a, b))
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(_same_images(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def test_every_spec_kind_round_trips(tmp_path):
    specs = every_spec(tmp_path)
    assert {type(s) for s in specs} == set(typing.get_args(job_types.JobSpec))
    assert {s.kind for s in specs} == set(builtin_handlers().kinds())
    for spec in specs:
        again = decode(encode(spec))
        assert _same_images(spec, again), spec
        assert again == spec  # and as the dataclasses compare themselves


def test_every_result_kind_round_trips(tmp_path):
    results = every_result(tmp_path)
    assert {type(r) for r in results} == set(typing.get_args(job_types.JobResult))
    for result in results:
        again = decode(encode(result))
        assert _same_images(result, again) and again == result, result
    images = decode(encode(results[0])).images
    assert images[0].to_pil().size == (4, 4) and images[0].png == results[0].images[0].png  # bytes kept as they are


class Colour(Enum):
    RED = "red"


@dataclass(frozen=True)
class Echo:
    """A job spec for the queue's own tests (module level: the store finds its type again)."""

    kind: ClassVar[str] = "echo"
    value: object = None


def test_codec_plain_values_images_and_refusals():
    values = {"ints": (0, -1, 2**70), "float": 1.5, "s": "é\0x", "none": None, "bools": [True, False],
              "bytes": b"\x00\xff", "path": Path("/a/b"), "set": {1, 2}, "fs": frozenset({"a"}),
              "keys": {1: "one", (2, 3): "pair"}, "enum": Colour.RED, "nested": [[{"$tuple": "not special"}]]}
    assert decode(encode(values)) == values
    assert math.isnan(decode(encode(float("nan")))) and decode(encode(float("-inf"))) == float("-inf")
    for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK", "YCbCr", "HSV"):
        image = _image("RGB").convert(mode) if mode not in ("I;16",) else _image("L").convert("I").convert(mode)
        again = decode(encode(image))
        assert _same_images(image, again), mode
    palette = _image("RGB").convert("P")
    palette.info["transparency"] = 3
    assert decode(encode(palette)).info.get("transparency") == 3
    texted = _image()
    texted.info["parameters"] = "a cat\nSteps: 3"
    assert decode(encode(texted)).info["parameters"] == "a cat\nSteps: 3"

    class Local:
        pass

    @dataclass
    class LocalData:
        x: int = 1

    for bad in (object(), Local(), LocalData(), lambda: 1, [1, threading.Lock()]):
        with pytest.raises(Unstorable):
            encode(bad)
    with pytest.raises(TooLarge):
        encode(b"x" * 1000, limit=500)
    with pytest.raises(TooLarge):
        encode(["x" * 1000], limit=500)
    for broken in (b"", b"garbage", encode(Echo(1))[:-3] + b"}}}", encode(b"abc")[:-2]):
        with pytest.raises(Undecodable):
            decode(broken)
    renamed = encode(Echo(1)).replace(b"Echo", b"Ecko")
    with pytest.raises(Undecodable, match="no type"):
        decode(renamed)


def _open(tmp_path: Path, **kwargs) -> tuple[JobStore, JobQueue]:
    store = JobStore(tmp_path / JOBS_FILE, **kwargs)
    return store, JobQueue(lambda job: job_types.ModelResult(str(job.spec.value)), store=store)


def test_a_spec_that_cannot_be_stored_still_runs_and_is_logged_once(tmp_path, caplog):
    store, q = _open(tmp_path)
    q.start()
    with caplog.at_level(logging.WARNING, logger="modules.job_store"):
        jobs = [q.submit(Echo(threading.Lock())) for _ in range(3)] + [q.submit(Echo("kept"))]
    assert all(j.wait(10) for j in jobs) and all(j.state is JobState.SUCCEEDED for j in jobs)
    assert [r.message for r in caplog.records].count("echo jobs are not kept across restarts: cannot store a "
                                                     "_thread.lock") == 1
    assert store.states() == {jobs[3].id: "succeeded"}
    q.stop()
    assert not store.available  # closed with the queue


class Results:
    """A result type whose instances cannot be stored."""

    interrupted = False


def test_results_too_large_or_unstorable_are_left_out_with_a_warning(tmp_path):
    store = JobStore(tmp_path / JOBS_FILE, max_record_bytes=4000)
    outcomes = {"big": job_types.InterrogateResult("x" * 5000), "odd": Results(), "ok": job_types.ModelResult("m")}
    q = JobQueue(lambda job: outcomes[job.spec.value], store=store)
    q.start()
    jobs = [q.submit(Echo(name)) for name in outcomes]
    assert all(j.wait(10) for j in jobs)
    q.stop()
    again = {job.spec.value: job for job in JobQueue(lambda job: None, store=JobStore(tmp_path / JOBS_FILE)).jobs()}
    assert again["big"].result is None and again["odd"].result is None
    assert again["ok"].result == job_types.ModelResult("m") and again["big"].state is JobState.SUCCEEDED
    assert "more than the 0 MiB kept per job" in again["big"].control.warnings[0]
    assert f"cannot store a {__name__}.Results" in again["odd"].control.warnings[0]


CRASHING = """
import os, sys, threading
from modules.job_store import JobStore
from modules.job_types import LoadModelJob, ModelResult
from modules.jobs import JobQueue

block, started = threading.Event(), threading.Event()
def runner(job):
    if job.spec.checkpoint == "block":
        print("running", flush=True)
        started.set()
        block.wait()
    return ModelResult(job.spec.checkpoint)

q = JobQueue(runner, store=JobStore(sys.argv[1]))
q.start()
q.submit(LoadModelJob("done"), owner="alice").wait(30)
q.submit(LoadModelJob("block"))
started.wait(30)
for name in ("q1", "q2", "q3"):
    q.submit(LoadModelJob(name))
print("ready", flush=True)
block.wait()
"""


def test_a_killed_server_leaves_a_queue_that_runs_again(tmp_path):
    """SIGKILL while a job runs and three wait: the next start runs the three in order, keeps the finished one
    and marks the running one interrupted."""
    path = tmp_path / JOBS_FILE
    proc = subprocess.Popen([sys.executable, "-c", CRASHING, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip() for _ in range(2)]
        assert lines == ["running", "ready"], lines
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    ran: list[str] = []
    store = JobStore(path)
    q = JobQueue(lambda job: ran.append(job.spec.checkpoint) or job_types.ModelResult("again"),
                 store=store)
    jobs = q.jobs()
    assert [(j.spec.checkpoint, j.state) for j in jobs] == [
        ("done", JobState.SUCCEEDED), ("block", JobState.FAILED), ("q1", JobState.QUEUED),
        ("q2", JobState.QUEUED), ("q3", JobState.QUEUED)]
    done, interrupted = jobs[0], jobs[1]
    assert done.result == job_types.ModelResult("done") and done.owner == "alice" and done.wait(0)
    assert interrupted.error == INTERRUPTED_BY_STOP and interrupted.error_kind is ErrorKind.FAILED
    assert interrupted.started is not None and interrupted.finished is not None and interrupted.wait(0)
    assert q.position(jobs[3]) == 2
    q.start()
    assert q.wait_idle(30) and ran == ["q1", "q2", "q3"]
    q.stop()
    assert set(JobStore(path).states().values()) == {"succeeded", "failed"}  # nothing left running


def test_finished_jobs_expire_after_the_time_kept(tmp_path):
    now = [1000.0]
    keep = [24.0]
    clock = lambda: now[0]  # noqa: E731
    store = JobStore(tmp_path / JOBS_FILE, lambda: keep[0], clock=clock)
    q = JobQueue(lambda job: job_types.ModelResult(str(job.spec.value)), keep_finished=1, store=store)
    q.start()
    first, second = q.submit(Echo(1)), q.submit(Echo(2))
    assert first.wait(10) and second.wait(10)
    third = q.submit(Echo(3))
    assert third.wait(10) and first not in q.jobs()  # a finished job dropped from memory ...
    again = q.get(first.id)  # ... is read back from the store
    assert again is not first and again is not None and again.result == job_types.ModelResult("1")
    assert again.state is JobState.SUCCEEDED and again.wait(0)
    q.stop()
    now[0] = time.time() + 23 * 3600  # within the day: restored, the newest ``keep_finished`` in memory
    store = JobStore(tmp_path / JOBS_FILE, lambda: keep[0], clock=clock)
    assert [j.id for j in JobQueue(lambda job: None, keep_finished=2, store=store).jobs()] == [second.id, third.id]
    assert [j.id for j in JobQueue(lambda job: None, store=store).jobs()] == [first.id, second.id, third.id]
    store.close()
    now[0] = time.time() + 25 * 3600  # past it: purged at the start
    store = JobStore(tmp_path / JOBS_FILE, lambda: keep[0], clock=clock)
    q = JobQueue(lambda job: None, store=store)
    assert q.jobs() == [] and q.get(first.id) is None and store.states() == {}
    store.close()
    now[0] = time.time()  # and while running: a lower setting takes effect at the next purge
    store = JobStore(tmp_path / JOBS_FILE, lambda: keep[0], clock=clock)
    q = JobQueue(lambda job: job_types.ModelResult(str(job.spec.value)), keep_finished=0, store=store)
    q.start()
    assert q.submit(Echo(3)).wait(10) and len(store.states()) == 1
    keep[0] = 0.0
    now[0] += 1
    assert store.purge() == 1 and store.states() == {}
    q.stop()


def test_the_store_keeps_under_its_size_by_dropping_the_oldest_finished_jobs(tmp_path):
    store = JobStore(tmp_path / JOBS_FILE, max_total_bytes=20_000)
    q = JobQueue(lambda job: job_types.InterrogateResult("x" * 6000), store=store)
    q.start()
    jobs = [q.submit(Echo(i)) for i in range(6)]
    assert all(j.wait(10) for j in jobs)
    kept = store.states()
    assert 1 < len(kept) < 6 and list(kept) == [j.id for j in jobs[-len(kept):]]  # the newest ones
    q.stop()


def test_stop_keeps_the_waiting_jobs_queued_and_answers_their_waiters(tmp_path):
    release = threading.Event()

    def runner(job):
        release.wait(10)
        return job_types.ModelResult("x")

    store = JobStore(tmp_path / JOBS_FILE)
    q = JobQueue(runner, store=store)
    q.start()
    running = q.submit(Echo("run"))
    assert q.wait_running(10) is running
    waiting = q.submit(Echo("wait"))
    cancelled = q.submit(Echo("cancel"))
    q.cancel(cancelled.id)
    stopper = threading.Thread(target=q.stop)
    stopper.start()
    assert waiting.wait(10) and waiting.state is JobState.CANCELLED and waiting.error == STOPPED_BEFORE_RUN
    release.set()
    stopper.join(10)
    assert not store.available  # closed once the worker ended
    assert JobStore(tmp_path / JOBS_FILE).states() == {running.id: "succeeded", waiting.id: "queued",
                                                       cancelled.id: "cancelled"}
    q2 = JobQueue(lambda job: job_types.ModelResult("again"), store=JobStore(tmp_path / JOBS_FILE))
    assert [(j.id, j.state) for j in q2.jobs()] == [(running.id, JobState.SUCCEEDED), (waiting.id, JobState.QUEUED),
                                                   (cancelled.id, JobState.CANCELLED)]


def test_the_servers_shutdown_marks_the_running_job_interrupted_and_keeps_the_waiting_ones(tmp_path):
    """SIGTERM: ``stop_jobs`` stops the queue and cancels every unfinished job; the running one ends failed,
    interrupted by the stop (with what it made), the waiting ones stay queued in the store."""
    from types import SimpleNamespace

    from modules.errors import Interrupted
    from webui.server import stop_jobs

    def runner(job):
        if job.spec.value == "partial":
            while not job.control.should_stop():
                time.sleep(0.01)
            return job_types.BatchResult((), interrupted=True)
        while not job.control.should_stop():
            time.sleep(0.01)
        raise Interrupted("stopped")

    for value in ("partial", "raises"):
        path = tmp_path / value / JOBS_FILE
        q = JobQueue(runner, store=JobStore(path))
        q.start()
        running = q.submit(Echo(value))
        assert q.wait_running(10) is running
        waiting = q.submit(Echo("w"))
        stop_jobs(SimpleNamespace(queue=q))
        q.stop()
        assert running.state is JobState.FAILED and running.error == INTERRUPTED_BY_STOP
        assert waiting.state is JobState.CANCELLED and waiting.error == STOPPED_BEFORE_RUN
        again = {j.id: j for j in JobQueue(lambda job: None, store=JobStore(path)).jobs()}
        assert again[running.id].error == INTERRUPTED_BY_STOP and again[waiting.id].state is JobState.QUEUED
        assert again[running.id].result == (job_types.BatchResult((), interrupted=True) if value == "partial"
                                            else None)


def test_unreadable_records_fail_their_job_with_the_reason(tmp_path):
    store, q = _open(tmp_path)
    job = q.submit(Echo("x"))
    conn = sqlite3.connect(tmp_path / JOBS_FILE)
    conn.execute("UPDATE jobs SET spec = ? WHERE id = ?", (encode(Echo(1)).replace(b"Echo", b"Ecko"), job.id))
    conn.commit()
    conn.close()
    store.close()
    q2 = JobQueue(lambda job: None, store=JobStore(tmp_path / JOBS_FILE))
    [again] = q2.jobs()
    assert again.state is JobState.FAILED and again.error is not None and again.kind == "echo"
    assert again.error.startswith(f"could not be restored after a restart: no type {__name__}:Ecko")
    assert isinstance(again.spec, Unrestorable) and q2.pending() == 0


@pytest.mark.parametrize("content", [b"not a database at all, just some bytes" * 200, None], ids=["garbage", "torn"])
def test_a_corrupt_store_is_moved_aside(tmp_path, caplog, content):
    path = tmp_path / JOBS_FILE
    if content is None:  # a real store, its pages damaged
        store, q = _open(tmp_path)
        for i in range(50):
            q.submit(Echo("x" * 2000 + str(i)))
        store.close()
        data = bytearray(path.read_bytes())
        data[4096 + 100:4096 * 3] = b"\xff" * (4096 * 2 - 100)
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="modules.job_store"):
        store, q = _open(tmp_path)
    aside = list(tmp_path.glob(JOBS_FILE + ".corrupt-*"))
    assert len(aside) == 1 and store.moved_aside == aside[0] and store.available
    assert any("moved aside to" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    assert q.jobs() == []
    q.start()
    assert q.submit(Echo(1)).wait(10)
    q.stop()


def test_a_store_that_cannot_be_opened_leaves_the_queue_in_memory(tmp_path, caplog):
    (tmp_path / JOBS_FILE).mkdir()  # a folder where the file should be (as a read-only data folder, even for root)
    with caplog.at_level(logging.ERROR, logger="modules.job_store"):
        store = JobStore(tmp_path / JOBS_FILE)
    assert not store.available and "jobs are kept in memory only" in caplog.text
    q = JobQueue(lambda job: job_types.ModelResult("m"), store=store)
    q.start()
    job = q.submit(Echo(1))
    assert job.wait(10) and job.state is JobState.SUCCEEDED and q.get(job.id) is job and q.get("nope") is None
    q.stop()
    assert (tmp_path / JOBS_FILE).is_dir()  # left alone


def test_the_worker_that_ran_a_job_survives_a_restart(tmp_path):
    """With several slots (workers) each job records the one that ran it: written when it starts and when it ends,
    read back by the next queue over the same file; in-process jobs (one slot) have none."""
    from modules.jobs import LocalSlot

    path = tmp_path / JOBS_FILE
    release = threading.Event()

    def runner(job):
        if job.spec.value == "block":
            release.wait(10)
        return job_types.ModelResult(str(job.spec.value))

    q = JobQueue(runner, store=JobStore(path), slots=[LocalSlot(runner, "worker-1"), LocalSlot(runner, "worker-2")])
    q.start()
    first = q.submit(Echo("one"), pin="worker-2")
    assert first.wait(10) and first.worker == "worker-2"
    blocked = q.submit(Echo("block"), pin="worker-1")
    assert q.wait_running(10) is blocked
    with sqlite3.connect(path) as conn:  # written when it started
        assert conn.execute("SELECT state, worker FROM jobs WHERE id = ?", (blocked.id,)).fetchone() == (
            "running", "worker-1")
    release.set()
    assert blocked.wait(10)
    q.stop()
    inline = JobQueue(lambda job: job_types.ModelResult("here"), store=JobStore(path))
    inline.start()
    local = inline.submit(Echo("local"))
    assert local.wait(10) and local.worker is None
    inline.stop()
    again = {j.id: j for j in JobQueue(lambda job: None, store=JobStore(path)).jobs()}
    assert again[first.id].worker == "worker-2" and again[blocked.id].worker == "worker-1"
    assert again[blocked.id].state is JobState.SUCCEEDED and again[local.id].worker is None


def test_a_pinned_job_keeps_its_pin_across_a_restart(tmp_path):
    """A job queued with a pin runs after a restart on the worker it was pinned to, not on any free one; a pin
    naming a worker the restarted server does not have fails the job with each worker's reason."""
    from modules.jobs import LocalSlot

    path = tmp_path / JOBS_FILE

    def runner(job):
        return job_types.ModelResult(str(job.spec.value))

    slots = [LocalSlot(runner, "worker-1"), LocalSlot(runner, "worker-2"), LocalSlot(runner, "worker-3")]
    q = JobQueue(runner, store=JobStore(path), slots=slots)  # never started: its jobs stay queued in the file
    pinned = [q.submit(Echo(f"p{i}"), pin="worker-2") for i in range(3)]
    gone = q.submit(Echo("gone"), pin="worker-3")
    q.stop()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT pin FROM jobs WHERE id = ?", (pinned[0].id,)).fetchone() == ("worker-2",)
    conn.close()

    restarted = JobQueue(runner, store=JobStore(path),
                         slots=[LocalSlot(runner, "worker-1"), LocalSlot(runner, "worker-2")])
    jobs = {j.id: j for j in restarted.jobs()}
    assert [jobs[j.id].pin for j in pinned] == ["worker-2"] * 3
    restarted.start()
    for job in pinned:
        assert jobs[job.id].wait(10) and jobs[job.id].state is JobState.SUCCEEDED
        assert jobs[job.id].worker == "worker-2"  # worker-1 was free too: the pin held
    assert jobs[gone.id].wait(10) and jobs[gone.id].state is JobState.FAILED
    assert "pinned to worker-3" in (jobs[gone.id].error or "")
    restarted.stop()


SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    owner TEXT,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    error_kind TEXT,
    error_field TEXT,
    warnings TEXT NOT NULL DEFAULT '[]',  -- JSON list of strings
    size INTEGER NOT NULL DEFAULT 0,  -- bytes of spec, tag and result
    -- the blobs last: the columns above are read without reading through them
    spec BLOB NOT NULL,
    tag BLOB,
    result BLOB
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished);
PRAGMA user_version = 1;
"""


def test_a_schema_1_file_is_upgraded_in_place_and_keeps_its_jobs(tmp_path):
    """A file written before the ``worker`` column: opened (not moved aside), the column added, its finished job
    readable and its queued job run again; a file of a newer schema than this code is still moved aside."""
    from modules.job_store import SCHEMA_VERSION
    from modules.jobs import LocalSlot

    path = tmp_path / JOBS_FILE
    now = time.time()
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA_1)
        conn.execute("INSERT INTO jobs (id, kind, owner, state, created, started, finished, warnings, spec, result) "
                     "VALUES ('done', 'echo', 'alice', 'succeeded', ?, ?, ?, '[\"w\"]', ?, ?)",
                     (now - 3, now - 2, now - 1, encode(Echo("done")), encode(job_types.ModelResult("m"))))
        conn.execute("INSERT INTO jobs (id, kind, state, created, spec) VALUES ('waiting', 'echo', 'queued', ?, ?)",
                     (now, encode(Echo("waiting"))))
    conn.close()
    store = JobStore(path)
    assert store.available and store.moved_aside is None
    assert store.states() == {"done": "succeeded", "waiting": "queued"}
    runner = lambda job: job_types.ModelResult(str(job.spec.value))  # noqa: E731
    q = JobQueue(runner, store=store, slots=[LocalSlot(runner, "worker-1"), LocalSlot(runner, "worker-2")])
    done, waiting = q.jobs()
    assert done.result == job_types.ModelResult("m") and done.owner == "alice" and done.worker is None
    assert done.control.warnings == ["w"] and waiting.state is JobState.QUEUED
    q.start()
    assert waiting.wait(10) and waiting.state is JobState.SUCCEEDED
    q.stop()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        assert {"worker", "pin"} <= {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    conn.close()
    again = {j.id: j for j in JobQueue(lambda job: None, store=JobStore(path)).jobs()}
    assert again["done"].worker is None and again["waiting"].result == job_types.ModelResult("waiting")
    assert again["waiting"].worker == waiting.worker and waiting.worker in ("worker-1", "worker-2")
    assert list(tmp_path.glob(JOBS_FILE + ".corrupt-*")) == []

    newer = tmp_path / "newer" / JOBS_FILE
    newer.parent.mkdir()
    with sqlite3.connect(newer) as conn:
        conn.executescript(SCHEMA_1.replace("user_version = 1", f"user_version = {SCHEMA_VERSION + 1}"))
    conn.close()
    store = JobStore(newer)
    assert store.available and store.moved_aside is not None and store.states() == {}
    store.close()


SMALL = {"width": 64, "height": 64, "steps": 2}


def test_an_app_restart_runs_the_queue_again_and_shows_the_finished_jobs(live_server, data_dir):
    """A real server: one job done, one running, two waiting; the server stops. The next one (same data folder)
    runs the two, shows the done one (as it was rendered) and the interrupted one through /sdapi/v2."""
    import httpx

    from conftest import running_job

    first = live_server()
    app = first.app
    assert app.queue.store is not None and app.queue.store.keep_seconds == 24 * 3600
    with httpx.Client(base_url=first.url, timeout=60) as c:
        done = c.post("/sdapi/v2/txt2img", json={"prompt": "done", "seed": 3, **SMALL}).json()["id"]
        assert app.queue.get(done).wait(60)
        long = c.post("/sdapi/v2/txt2img", json={"prompt": "long", **SMALL, "steps": 100, "n_iter": 50}).json()["id"]
        running_job(app)
        waiting = [c.post("/sdapi/v2/txt2img", json={"prompt": f"w{i}", "seed": i, **SMALL}).json()["id"]
                   for i in range(2)]
        before = c.get(f"/sdapi/v2/jobs/{done}").json()
    first.stop()
    assert app.queue.get(long).state is JobState.FAILED
    assert [app.queue.get(i).error for i in waiting] == [STOPPED_BEFORE_RUN] * 2

    second = live_server()  # waits until the queue is idle: the restored jobs have run
    with httpx.Client(base_url=second.url, timeout=60) as c:
        listed = [j["id"] for j in c.get("/sdapi/v2/jobs").json()]
        assert [i for i in listed if i in (done, long, *waiting)] == [done, long, *waiting]  # in their order
        assert listed.index(waiting[1]) < len(listed) - 1  # before the new start's model load
        after = c.get(f"/sdapi/v2/jobs/{done}").json()
        assert after["state"] == "succeeded" and after["result"] == before["result"]
        assert after["result"]["parameters"]["prompt"] == "done"  # rendered with the submitter's options
        assert {k: after[k] for k in ("created", "started", "finished")} == {
            k: before[k] for k in ("created", "started", "finished")}
        cut = c.get(f"/sdapi/v2/jobs/{long}").json()
        assert cut["state"] == "failed" and cut["error"] == INTERRUPTED_BY_STOP and cut["interrupted"] is True
        assert cut["error_kind"] == "failed" and cut["progress"]["phase"] == "failed"
        for i, job_id in enumerate(waiting):
            ran = c.get(f"/sdapi/v2/jobs/{job_id}").json()
            assert ran["state"] == "succeeded" and ran["error"] is None, ran
            assert json.loads(ran["result"]["info"])["all_seeds"] == [i] and len(ran["result"]["images"]) == 1
    assert second.app.queue.store.states()[long] == "failed"


def test_an_app_with_a_corrupt_store_starts_empty(data_dir, caplog):
    from modules.app import App, StartOptions

    (data_dir / JOBS_FILE).write_bytes(b"\x00garbage" * 1000)
    with caplog.at_level(logging.WARNING, logger="modules.job_store"):
        app = App(StartOptions(data_dir=data_dir, device="cpu", skip_load_model=True))
    try:
        assert app.queue.jobs() == [] and len(list(data_dir.glob(JOBS_FILE + ".corrupt-*"))) == 1
        assert "moved aside" in caplog.text
        store = app.queue.store
        assert store is not None and store.available and store.keep_seconds == 24 * 3600
        app.settings.update({"jobs_keep_hours": 1.5}, save=False)
        assert store.keep_seconds == 1.5 * 3600
    finally:
        app.stop()
