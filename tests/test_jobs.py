"""The job queue: FIFO, one job at a time, states, cancel, failures that leave the queue working."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from modules.errors import ErrorKind, GenerationError, ModelLoadError, UnsafeCheckpointError, ValidationError
from modules.jobs import JobQueue, JobState, QueueFull
from modules.requests import GenerationRequest

pytestmark = pytest.mark.usefixtures("frozen_gc")  # full GC passes scan only what this module makes

SMALL = {"width": 64, "height": 64, "steps": 2}


@dataclass(frozen=True)
class Echo:
    """A job spec for the queue's own tests."""

    kind: ClassVar[str] = "echo"
    value: object = None


def make_queue(runner, **kwargs) -> JobQueue:
    q = JobQueue(runner, **kwargs)
    q.start()
    return q


def test_fifo_and_one_job_at_a_time():
    active, peak, order = [0], [0], []
    lock = threading.Lock()

    def runner(job):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.02)
        order.append(job.spec.value)
        with lock:
            active[0] -= 1
        return job.spec.value * 2

    q = make_queue(runner)
    jobs = [q.submit(Echo(i)) for i in range(10)]
    assert all(j.wait(10) for j in jobs)
    assert order == list(range(10)) and peak[0] == 1
    assert [j.result for j in jobs] == [i * 2 for i in range(10)]
    assert all(j.state is JobState.SUCCEEDED and j.started <= j.finished for j in jobs)
    q.stop()


def test_bounded_queue_and_positions():
    release = threading.Event()
    q = make_queue(lambda job: release.wait(10), max_size=2)
    first = q.submit(Echo(0))
    assert q.wait_running(10) is first
    a, b = q.submit(Echo(1)), q.submit(Echo(2))
    assert (q.position(first), q.position(a), q.position(b)) == (0, 1, 2)
    with pytest.raises(QueueFull, match="full"):
        q.submit(Echo(3))
    assert q.cancel(a.id).state is JobState.CANCELLED and q.position(b) == 1
    release.set()
    assert b.wait(10) and b.state is JobState.SUCCEEDED
    q.stop()


def test_failure_is_reported_and_next_job_runs(monkeypatch):
    freed = []
    monkeypatch.setattr("modules.jobs.free_memory", lambda: freed.append(True))

    def runner(job):
        if job.spec.value == "oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if job.spec.value == "crash":
            raise ZeroDivisionError("division by zero")
        if job.spec.value == "ours":
            raise GenerationError("the UNet produced NaNs; try the --no-half option")
        return "fine"

    q = make_queue(runner)
    jobs = {name: q.submit(Echo(name)) for name in ("oom", "ok1", "crash", "ours", "ok2")}
    for job in jobs.values():
        job.wait(10)
    assert jobs["oom"].state is JobState.FAILED and "out of memory" in jobs["oom"].error
    assert jobs["crash"].error == "ZeroDivisionError: division by zero"
    assert jobs["ours"].error.startswith("the UNet produced NaNs")
    assert jobs["ok1"].result == jobs["ok2"].result == "fine"
    assert len(freed) == 3
    assert [jobs[n].error_kind for n in ("oom", "crash", "ours", "ok1")] == [
        ErrorKind.OUT_OF_MEMORY, ErrorKind.INTERNAL, ErrorKind.NANS, None]
    q.stop()


@pytest.mark.parametrize("exc,kind,status", [
    (ValidationError("steps: must be between 1 and 150", field="steps"), ErrorKind.INVALID, 422),
    (ModelLoadError("broken.safetensors could not be loaded"), ErrorKind.MODEL, 422),
    (UnsafeCheckpointError("evil.ckpt was refused"), ErrorKind.MODEL, 422),
    (GenerationError("the VAE produced NaNs; try another VAE"), ErrorKind.NANS, 422),
    (GenerationError("the finance of sampling failed"), ErrorKind.FAILED, 400),
    (MemoryError(), ErrorKind.OUT_OF_MEMORY, 507),
    (RuntimeError("CUDA error: out of memory"), ErrorKind.OUT_OF_MEMORY, 507),
    (KeyError("unet"), ErrorKind.INTERNAL, 500),
])
def test_a_failed_job_keeps_its_kind_and_answers_by_it(exc, kind, status):
    from webui.api.waiting import failure_body, failure_response

    def runner(job):
        raise exc

    q = make_queue(runner)
    job = q.submit(Echo(None))
    assert job.wait(10) and job.state is JobState.FAILED and job.error_kind is kind
    assert failure_response(job).status_code == status
    body = failure_body(job)
    assert body["kind"] == kind.value and body["job_id"] == job.id and "Traceback" not in body["detail"]
    assert body.get("field") == ("steps" if kind is ErrorKind.INVALID else
                                 "sd_model_checkpoint" if kind is ErrorKind.MODEL else
                                 "sd_vae" if kind is ErrorKind.NANS else None)
    q.stop()


def test_cancel_running_job_interrupts_it():
    started = threading.Event()

    def runner(job):
        started.set()
        stopped = threading.Event()
        while not job.control.should_stop():
            stopped.wait(0.01)  # a job's work loop checks for a stop request between steps
        return "partial"

    q = make_queue(runner)
    job = q.submit(Echo(None))
    started.wait(10)
    q.cancel(job.id)
    assert job.wait(10) and job.state is JobState.CANCELLED and job.result == "partial"
    q.stop()


def test_done_callbacks_fire_once_even_when_late():
    q = make_queue(lambda job: 1)
    job = q.submit(Echo(None))
    job.wait(10)
    seen = []
    job.add_done_callback(lambda j: seen.append(j.id))
    assert seen == [job.id]
    q.stop()


def test_nan_unet_output_fails_the_job_with_a_message(data_dir, model_store, engine_factory, monkeypatch):
    from conftest import install_model
    from modules.generation import denoise

    install_model(data_dir, model_store("sd1", "safetensors"), "tiny")
    engine = engine_factory()
    real = denoise.ModelDenoiser.model_output
    monkeypatch.setattr(denoise.ModelDenoiser, "model_output", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(GenerationError, match="NaN"):
        engine.txt2img(GenerationRequest(prompt="x", seed=1, **SMALL))
    monkeypatch.setattr(denoise.ModelDenoiser, "model_output", real)
    assert engine.txt2img(GenerationRequest(prompt="x", seed=1, **SMALL)).result.images


def test_half_precision_vae_nans_fall_back_to_fp32(data_dir, model_store, monkeypatch):
    from conftest import install_model
    from modules.app import build_engine
    from modules.paths import Paths

    install_model(data_dir, model_store("sd1", "safetensors"), "tiny")
    engine = build_engine(Paths.create(data_dir), device="cpu", precision="bf16")
    engine.txt2img(GenerationRequest(prompt="x", seed=1, **SMALL))
    vae = engine.models.current.vae
    real_decode = vae.decode

    def flaky(z, return_dict=False):
        out = real_decode(z, return_dict=return_dict)
        if z.dtype == torch.bfloat16:
            return (out[0] * float("nan"),)
        return out

    monkeypatch.setattr(vae, "decode", flaky)
    result = engine.txt2img(GenerationRequest(prompt="x", seed=1, **SMALL)).result
    assert result.images and any("float32" in w for w in result.warnings)
    assert next(vae.parameters()).dtype == torch.bfloat16  # restored afterwards


def test_every_job_kind_is_a_serialisable_spec_with_one_handler(tmp_path):
    """Specs are plain frozen data (they pickle, so they can go to another process or machine), and each kind has
    exactly one handler, registered in one place."""
    import dataclasses
    import pickle
    import typing

    from PIL import Image

    from modules import job_types
    from modules.extras import ExtrasRequest
    from modules.job_handlers import builtin_handlers
    from modules.merge.service import MergeRequest
    from modules.output_options import OutputOptions
    from modules.requests import Img2ImgRequest
    from modules.training.specs import CreateEmbeddingJob, TrainEmbeddingJob, TrainLoraJob, TrainOptions

    image = Image.new("RGB", (8, 8), (200, 10, 10))
    specs = [
        job_types.Txt2ImgJob(GenerationRequest(prompt="x"), OutputOptions.under(tmp_path), 5, True),
        job_types.Img2ImgJob(Img2ImgRequest(init_images=(image,), mask=image.convert("L"))),
        job_types.Img2ImgBatchJob(Img2ImgRequest(), (tmp_path / "a.png",), tmp_path),
        job_types.LoadModelJob("tiny"), job_types.ReloadModelJob(), job_types.UnloadModelJob(),
        job_types.DeviceConfigJob("fp32", "sdp"), job_types.MergeJob(MergeRequest(primary_model_name="a")),
        job_types.ExtrasJob(ExtrasRequest(images=(("a.png", image),), upscaler_1="Lanczos"), tmp_path),
        job_types.InterrogateJob(image, "deepdanbooru", (("interrogate_return_ranks", True),)),
        CreateEmbeddingJob("e", 2), TrainEmbeddingJob("e", TrainOptions(data_root=str(tmp_path))),
        TrainLoraJob("l", resume="l-10"),
    ]
    assert {type(s) for s in specs} == set(typing.get_args(job_types.JobSpec))
    handlers = builtin_handlers()
    assert sorted(handlers.kinds()) == sorted(s.kind for s in specs)
    for spec in specs:
        assert dataclasses.is_dataclass(spec) and type(spec).__dataclass_params__.frozen
        copy = pickle.loads(pickle.dumps(spec))
        assert type(copy) is type(spec) and copy.kind == spec.kind
    again = pickle.loads(pickle.dumps(specs[1]))
    assert again.request.init_images[0].tobytes() == image.tobytes()
    with pytest.raises(ValueError, match="already registered"):
        handlers.register(job_types.LoadModelJob, lambda app, spec, control: None)


def test_progress_is_a_stream_of_events():
    import dataclasses

    from modules.generation.control import JobControl

    control = JobControl()
    seen = []
    unsubscribe = control.subscribe(seen.append)
    control.update(job_count=2, sampling_steps=10)
    control.update(sampling_step=3)
    unsubscribe()
    control.update(sampling_step=4)
    assert [(e.seq, e.sampling_step) for e in seen] == [(1, 0), (2, 3)]
    assert seen[1].sampling_steps == 10 and control.progress.sampling_step == 4
    with pytest.raises(dataclasses.FrozenInstanceError):  # events are immutable snapshots
        seen[0].sampling_step = 9
