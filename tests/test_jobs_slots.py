"""The job queue's dispatcher over several slots (as with generation workers), with slots that run in this process:
jobs run at once on free slots, the slot with the job's model is preferred, pins are kept, a job no slot can run
fails with the reasons, a lost worker's job runs again once elsewhere, a slot that becomes ready gets work."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest

from modules.errors import ValidationError, WorkerLost
from modules.job_types import LoadModelJob, ModelResult
from modules.jobs import Job, JobQueue, JobState, LocalSlot


@dataclass(eq=False)
class FakeWorker:
    """A slot that 'runs' a load-model job by waiting on an event; knows some checkpoints, has one loaded."""

    name: str
    checkpoints: set[str] = field(default_factory=lambda: {"a", "b"})
    loaded: str | None = None
    is_ready: bool = True
    lose_next: bool = False
    stays_down: bool = False  # after a loss: not ready again (a worker still restarting)
    lose_after_hold: bool = False  # lost once the held job is released
    hold: threading.Event = field(default_factory=threading.Event)
    ran: list[str] = field(default_factory=list)
    running_now: int = 0
    peak: list[int] = field(default_factory=lambda: [0])

    def refusal(self, job: Job) -> str | None:
        if job.pin is not None and job.pin != self.name:
            return f"pinned to {job.pin}"
        wanted = job.spec.checkpoint  # type: ignore[union-attr]
        return None if wanted in self.checkpoints else f"no checkpoint {wanted}"

    def ready(self) -> bool:
        return self.is_ready

    def preference(self, job: Job) -> tuple[float, ...]:
        return (1.0 if self.loaded == job.spec.checkpoint else 0.0,)  # type: ignore[union-attr]

    def run(self, job: Job) -> ModelResult:
        self.ran.append(job.id)
        if self.lose_next:
            self.lose_next = False
            self.is_ready = not self.stays_down
            raise WorkerLost(f"worker {self.name} stopped during the job (killed)")
        self.hold.wait(10)
        if self.lose_after_hold:
            raise WorkerLost(f"worker {self.name} stopped during the job (the machine went away)")
        self.loaded = job.spec.checkpoint  # type: ignore[union-attr]
        return ModelResult(self.loaded)


def _queue(*slots: object) -> JobQueue:
    def never(job: Job) -> ModelResult:
        raise AssertionError("the default runner is not used with slots")

    queue = JobQueue(never, slots=list(slots))  # type: ignore[arg-type]
    queue.start()
    return queue


def _release(*workers: FakeWorker) -> None:
    for w in workers:
        w.hold.set()


def test_jobs_run_at_once_on_free_slots_and_each_records_its_worker():
    one, two = FakeWorker("w1"), FakeWorker("w2")
    queue = _queue(one, two)
    try:
        jobs = [queue.submit(LoadModelJob("a")), queue.submit(LoadModelJob("b"))]
        deadline = time.monotonic() + 10
        while len(queue.running()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert {j.worker for j in queue.running()} == {"w1", "w2"}  # both at once
        assert queue.busy().keys() == {"w1", "w2"}
        _release(one, two)
        assert all(j.wait(10) for j in jobs)
        assert {j.state for j in jobs} == {JobState.SUCCEEDED}
        assert queue.wait_idle(5) and queue.current is None
    finally:
        _release(one, two)
        queue.stop()


def test_the_slot_with_the_model_loaded_is_preferred_and_pins_are_kept():
    one, two = FakeWorker("w1", loaded="a"), FakeWorker("w2", loaded="b")
    _release(one, two)
    queue = _queue(one, two)
    try:
        for _ in range(3):
            job_b, job_a = queue.submit(LoadModelJob("b")), queue.submit(LoadModelJob("a"))
            assert job_b.wait(10) and job_a.wait(10)
            assert (job_a.worker, job_b.worker) == ("w1", "w2")
        pinned = queue.submit(LoadModelJob("a"), pin="w2")
        assert pinned.wait(10) and pinned.worker == "w2"
        with pytest.raises(ValidationError, match="nope"):
            queue.submit(LoadModelJob("a"), pin="nope")
    finally:
        queue.stop()


def test_a_job_no_slot_can_run_fails_with_each_slots_reason():
    one, two = FakeWorker("w1", checkpoints={"a"}), FakeWorker("w2", checkpoints={"a"})
    queue = _queue(one, two)
    try:
        job = queue.submit(LoadModelJob("zzz"))
        assert job.wait(10) and job.state is JobState.FAILED
        assert "no worker can run this job" in (job.error or "")
        assert "w1: no checkpoint zzz" in (job.error or "") and "w2: no checkpoint zzz" in (job.error or "")
    finally:
        queue.stop()


def test_a_lost_workers_job_runs_again_once_on_another_and_a_second_loss_fails_it():
    one, two = FakeWorker("w1", lose_next=True), FakeWorker("w2")
    _release(one, two)
    queue = _queue(one, two)
    try:
        job = queue.submit(LoadModelJob("a"), pin=None)
        assert job.wait(10) and job.state is JobState.SUCCEEDED, job.error
        assert job.attempts == 1 and job.worker == "w2" and job.id in one.ran and job.id in two.ran
        assert any("ran again" in w for w in job.control.warnings)
        # lost twice: failed with the reason, never left running
        one.lose_next = two.lose_next = True
        again = queue.submit(LoadModelJob("a"))
        assert again.wait(10) and again.state is JobState.FAILED
        assert "stopped during the job" in (again.error or "") and "already run again once" in (again.error or "")
        assert queue.wait_idle(5) and not queue.running()
    finally:
        queue.stop()


def test_a_slot_that_becomes_ready_gets_the_waiting_job():
    late = FakeWorker("late", is_ready=False)
    _release(late)
    queue = _queue(late)
    try:
        job = queue.submit(LoadModelJob("a"))
        time.sleep(0.3)
        assert job.state is JobState.QUEUED  # waits: the only slot is still starting
        late.is_ready = True
        queue.wake()
        assert job.wait(10) and job.worker == "late"
    finally:
        queue.stop()


def test_local_slot_takes_only_its_kinds_and_the_single_slot_queue_is_unchanged():
    local = LocalSlot(lambda job: ModelResult("x"), kinds=frozenset({"merge"}))
    job = Job(LoadModelJob("a"))
    assert local.refusal(job) is not None and "run on the workers" in local.refusal(job)  # type: ignore[operator]
    ran = []
    queue = JobQueue(lambda job: ran.append(job.id) or ModelResult("m"))
    queue.start()
    try:
        jobs = [queue.submit(LoadModelJob("a")) for _ in range(3)]
        assert all(j.wait(10) for j in jobs)
        assert ran == [j.id for j in jobs] and all(j.worker is None for j in jobs)  # one at a time, in order
    finally:
        queue.stop()


def test_without_workers_ray_is_never_imported(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys\n"
            "from modules.app import App, StartOptions\n"
            f"app = App(StartOptions(data_dir={str(tmp_path)!r}, device='cpu', skip_load_model=True))\n"
            "app.start(); app.stop()\n"
            "print('ray' in sys.modules, [w['id'] for w in app.workers_status()])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False ['local']"


def test_bad_worker_flags_stop_the_launch_with_a_message(tmp_path, capsys):
    from webui.launch import main

    assert main(["--data-dir", str(tmp_path), "--workers", "nonsense", "--skip-load-model-at-start"]) == 2
    err = capsys.readouterr().err
    assert "--workers takes 'ray'" in err and "Traceback" not in err
    assert main(["--data-dir", str(tmp_path), "--workers", "ray", "--worker-count", "0",
                 "--skip-load-model-at-start"]) == 2
    assert "--worker-count must be at least 1" in capsys.readouterr().err
    assert main(["--data-dir", str(tmp_path), "--workers", "ray", "--worker-threads", "0",
                 "--skip-load-model-at-start"]) == 2
    assert "--worker-threads must be at least 1" in capsys.readouterr().err


def test_a_job_queued_again_after_a_lost_worker_is_queued_in_the_store(tmp_path):
    from modules.job_store import JobStore

    lost, late = FakeWorker("w1", lose_next=True, stays_down=True), FakeWorker("w2", is_ready=False)
    _release(lost, late)
    store = JobStore(tmp_path / "jobs.sqlite3")
    queue = JobQueue(lambda job: ModelResult(None), store=store, slots=[lost, late])  # type: ignore[list-item]
    queue.start()
    job = queue.submit(LoadModelJob("a"), durable=True)
    deadline = time.monotonic() + 10
    while job.attempts == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert job.attempts == 1 and job.state is JobState.QUEUED  # waits: w1 restarts, w2 is not ready yet
    assert store.states()[job.id] == "queued"
    queue.stop()
    again = JobQueue(lambda job: ModelResult(None), store=JobStore(tmp_path / "jobs.sqlite3"),
                     slots=[FakeWorker("w1"), FakeWorker("w2")])  # type: ignore[list-item]
    restored = again.get(job.id)
    assert restored is not None and restored.state is JobState.QUEUED
    again.stop()


def test_a_slot_that_cannot_answer_does_not_stop_the_dispatcher():
    class Broken(FakeWorker):
        def refusal(self, job: Job) -> str | None:
            raise RuntimeError("lost its state")

    broken, good = Broken("bad"), FakeWorker("good")
    _release(broken, good)
    queue = _queue(broken, good)
    try:
        first = queue.submit(LoadModelJob("a"))
        assert first.wait(10) and first.state is JobState.SUCCEEDED and first.worker == "good"
        pinned = queue.submit(LoadModelJob("a"), pin="bad")  # only the broken one may run it: failed, said why
        assert pinned.wait(10) and pinned.state is JobState.FAILED and "bad: could not be asked" in pinned.error
        assert queue.submit(LoadModelJob("b")).wait(10)  # and the queue goes on
    finally:
        queue.stop()


def test_a_retry_goes_back_to_the_same_worker_when_no_other_is_alive_and_stop_or_cancel_end_it():
    only, dead = FakeWorker("w1", lose_next=True), FakeWorker("w2", is_ready=False)
    _release(only)
    queue = _queue(only, dead)
    try:
        job = queue.submit(LoadModelJob("a"))
        assert job.wait(10) and job.state is JobState.SUCCEEDED and job.attempts == 1 and job.worker == "w1"
        # pinned where the slot refuses it: refused at once, nothing queued
        with pytest.raises(ValidationError, match="w1 cannot run this job: no checkpoint zzz"):
            queue.submit(LoadModelJob("zzz"), pin="w1")
    finally:
        queue.stop()
    # a loss while the queue stops: the job ends (failed, said so), it is not queued again and left waiting
    stopping = FakeWorker("w1", lose_after_hold=True)
    queue = _queue(stopping, FakeWorker("w2"))
    job = queue.submit(LoadModelJob("a"), pin="w1")
    deadline = time.monotonic() + 10
    while job.state is not JobState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.01)
    queue.stop(timeout=0.5)
    stopping.hold.set()
    assert job.wait(10) and job.state is JobState.FAILED and job.attempts == 0, (job.state, job.error)
    assert "stopped during the job" in (job.error or "")
