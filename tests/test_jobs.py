"""The job registry and runner: lifecycle, progress, cancel, retry, concurrency, restarts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomnode import config
from dicomnode import jobs
from dicomnode.archive import index
from dicomnode.archive.index import Job
from dicomnode.archive.index import utcnow
from tests.conftest import wait_for

GATE = threading.Event()
RUNNING_AT_ONCE: list[int] = []
_lock = threading.Lock()


def run_counting(job: jobs.JobContext) -> None:
    """Counts to params["n"], a cancel point at each step; fails on request."""
    n = int(job.params.get("n", 3))
    job.progress(total=n)
    for i in range(n):
        job.check_cancelled()
        if job.params.get("wait"):
            GATE.wait(10)
        if i in job.params.get("fail_items", []):
            job.fail_item(item=f"item {i}", status="0xA700", message="Out of resources")
        else:
            job.progress(done=job.done + 1, bytes_done=job.bytes_done + 100)
    job.note(message="counted")
    if job.failed:
        raise jobs.JobFailed(f"{job.failed} of {n} items failed")


def run_concurrent(job: jobs.JobContext) -> None:
    with _lock:
        RUNNING_AT_ONCE.append(job.id)
    GATE.wait(10)


def run_crashing(job: jobs.JobContext) -> None:
    raise ZeroDivisionError("boom")


def run_giving_way(job: jobs.JobContext) -> None:
    """Like a send: gives way to reception between two of its params["n"] items."""
    for _ in range(int(job.params.get("n", 3))):
        job.give_way()
        job.check_cancelled()
        if job.params.get("wait"):
            GATE.wait(10)
        job.progress(done=job.done + 1)


jobs.register_kind("test_count", run_counting, label="Count")
jobs.register_kind("test_give_way", run_giving_way)
jobs.register_kind("test_concurrent", run_concurrent)
jobs.register_kind("test_crash", run_crashing)


@pytest.fixture
def runner(short_tmp: Path) -> Iterator[jobs.Runner]:
    settings = config.from_dict({"storage": {"path": str(short_tmp / "data")}, "jobs": {"concurrency": 2}})
    index.open_index(settings.database_url)
    GATE.clear()
    RUNNING_AT_ONCE.clear()
    r = jobs.Runner(settings)
    r.start()
    yield r
    GATE.set()
    r.stop()
    index.close_index()


def wait_state(job_id: int, *states: str, timeout: float = 10) -> Job:
    return wait_for(
        lambda: (j := jobs.get(job_id)).state in states and j,
        timeout=timeout,
        what=f"job {job_id} to be {states}",
    )


def test_a_job_runs_to_success_with_progress(runner: jobs.Runner) -> None:
    job_id = jobs.submit("test_count", "nowhere", {"n": 4}, "count to four")
    job = wait_state(job_id, jobs.SUCCESS)
    assert (job.total, job.done, job.failed, job.bytes_done) == (4, 4, 0, 400)
    assert jobs.percent(job) == 100
    assert job.started_at is not None and job.ended_at is not None and jobs.duration(job) is not None
    assert job.error == ""
    data = jobs.as_dict(job, with_details=True)
    assert data["State"] == "success" and data["Type"] == "test_count" and data["Target"] == "nowhere"
    assert data["Details"][-1]["type"] == "transcript" and data["Details"][-1]["message"] == "counted"


def test_failed_items_are_recorded_and_fail_the_job(runner: jobs.Runner) -> None:
    job_id = jobs.submit("test_count", "pacs", {"n": 5, "fail_items": [1, 3]})
    job = wait_state(job_id, jobs.FAILURE)
    assert (job.done, job.failed) == (3, 2)
    assert job.error == "2 of 5 items failed"
    failures = [d for d in jobs.details_of(job) if d["type"] == "failure"]
    assert [f["item"] for f in failures] == ["item 1", "item 3"]
    assert failures[0]["status"] == "0xA700"


def test_unexpected_exception_is_an_internal_error(runner: jobs.Runner) -> None:
    job = wait_state(jobs.submit("test_crash", "", {}), jobs.FAILURE)
    assert job.error == "internal error: ZeroDivisionError: boom"


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(jobs.DolmenError) as err:
        jobs.submit("no_such_kind", "", {})
    assert err.value.code == "unknown_job_kind"


def test_cancel_a_running_job_at_its_next_cancel_point(runner: jobs.Runner) -> None:
    job_id = jobs.submit("test_count", "pacs", {"n": 3, "wait": True})
    wait_state(job_id, jobs.RUNNING)
    assert jobs.cancel(job_id) == jobs.RUNNING
    GATE.set()
    job = wait_state(job_id, jobs.CANCELLED)
    assert job.error == "cancelled by the user"
    with pytest.raises(jobs.DolmenError) as err:
        jobs.cancel(job_id)
    assert err.value.code == "job_ended"


def test_cancel_a_pending_job_and_retry_it(runner: jobs.Runner) -> None:
    # Two blocking jobs occupy both runner threads, so the third stays pending.
    blockers = [jobs.submit("test_concurrent", "", {}) for _ in range(2)]
    wait_for(lambda: len(RUNNING_AT_ONCE) == 2, what="both runner threads busy")
    waiting = jobs.submit("test_count", "pacs", {"n": 2})
    assert jobs.get(waiting).state == jobs.PENDING
    assert jobs.cancel(waiting) == jobs.CANCELLED
    GATE.set()
    for b in blockers:
        wait_state(b, jobs.SUCCESS)
    assert jobs.get(waiting).state == jobs.CANCELLED
    again = jobs.retry(waiting)
    assert again != waiting
    job = wait_state(again, jobs.SUCCESS)
    assert jobs.params_of(job) == {"n": 2, "retry_of": waiting}
    with pytest.raises(jobs.DolmenError) as err:
        jobs.retry(again)
    assert err.value.code == "job_not_retriable"


def test_concurrency_runs_jobs_side_by_side(runner: jobs.Runner) -> None:
    ids = [jobs.submit("test_concurrent", "", {}) for _ in range(3)]
    wait_for(lambda: len(RUNNING_AT_ONCE) == 2, what="two jobs at once")
    # [jobs] concurrency = 2: two runner threads, both held by the gate, so the third waits.
    workers = [t for t in threading.enumerate() if t.name.startswith("job-runner-")]
    assert len(workers) == 2
    assert len(RUNNING_AT_ONCE) == 2 and jobs.get(ids[2]).state == jobs.PENDING
    GATE.set()
    for i in ids:
        wait_state(i, jobs.SUCCESS)
    assert sorted(RUNNING_AT_ONCE) == sorted(ids) and RUNNING_AT_ONCE[2] == ids[2]


def test_jobs_give_way_while_the_dicom_server_receives(runner: jobs.Runner, monkeypatch: Any) -> None:
    receiving = threading.Event()
    monkeypatch.setattr(jobs, "reception_busy", receiving.is_set)
    monkeypatch.setattr(jobs, "YIELD_TO_RECEPTION", 0.05)
    started = time.monotonic()
    wait_state(jobs.submit("test_give_way", "", {"n": 20}), jobs.SUCCESS)
    alone = time.monotonic() - started
    receiving.set()
    started = time.monotonic()
    wait_state(jobs.submit("test_give_way", "", {"n": 20}), jobs.SUCCESS)
    assert time.monotonic() - started >= 20 * 0.05 > alone  # a pause before each of the 20 items
    # Jobs that do not give way (a retrieve) are not slowed.
    started = time.monotonic()
    wait_state(jobs.submit("test_count", "", {"n": 20}), jobs.SUCCESS)
    assert time.monotonic() - started < 20 * 0.05
    # A cancel is seen at once, without the pause.
    job_id = jobs.submit("test_give_way", "", {"n": 1000, "wait": True})
    wait_state(job_id, jobs.RUNNING)
    jobs.cancel(job_id)
    GATE.set()
    started = time.monotonic()
    wait_state(job_id, jobs.CANCELLED)
    assert time.monotonic() - started < 5


def test_reception_counts_as_busy_only_while_pieces_of_objects_arrive(short_tmp: Path, monkeypatch: Any) -> None:
    """What the sidecar gives send jobs as ``reception_busy``: an open association that sends
    nothing does not make it busy; each piece of an object written to the spool does, for
    ``Reception.WINDOW`` seconds."""
    from dicomnode.net import scp
    from dicomnode.net.service import Reception

    monkeypatch.setattr(Reception, "WINDOW", 0.2)
    monkeypatch.setattr(Reception, "last", -1e9)
    monkeypatch.setattr(scp._CappedSpool, "folder", short_tmp)
    monkeypatch.setattr(scp._CappedSpool, "cap", None)
    assert not Reception.active()
    spool = scp._CappedSpool()
    assert Reception.active()  # a C-STORE's dataset began to arrive
    time.sleep(0.25)
    assert not Reception.active()
    spool.write(b"x" * 100)
    assert Reception.active()
    spool.close()
    time.sleep(0.25)
    assert not Reception.active()


def test_running_jobs_are_marked_interrupted_at_start(short_tmp: Path) -> None:
    settings = config.from_dict({"storage": {"path": str(short_tmp / "data")}})
    index.open_index(settings.database_url)
    job = Job.create(
        kind="test_count",
        target="pacs",
        state=jobs.RUNNING,
        params='{"n": 1}',
        started_at=utcnow(),
        done=3,
        total=10,
    )
    r = jobs.Runner(settings)
    r.start()
    try:
        job = jobs.get(job.pk)
        assert job.state == jobs.FAILURE and job.error == jobs.INTERRUPTED and job.ended_at is not None
        new = wait_state(jobs.retry(job.pk), jobs.SUCCESS)
        assert jobs.params_of(new)["retry_of"] == job.pk
    finally:
        r.stop()
        index.close_index()


def test_a_job_running_when_the_sidecar_dies_is_marked_failed_and_can_be_retried(dolmen_factory: Any) -> None:
    server = dolmen_factory()
    index.open_index(f"sqlite:///{server.data / 'index.db'}")
    try:
        job = Job.create(
            kind="send",
            target="pacs",
            state=jobs.RUNNING,
            started_at=utcnow(),
            params='{"modality": "pacs", "resources": []}',
            description="a send cut short",
        )
        old_pid = server.sidecar_pid()
        import os
        import signal

        os.kill(old_pid, signal.SIGKILL)
        wait_for(lambda: server.sidecar_pid() != old_pid, timeout=30, what="the sidecar to restart")
        job = wait_state(job.pk, jobs.FAILURE)
        assert job.error == jobs.INTERRUPTED
        page = server.get(f"/jobs/{job.pk}")
        assert "interrupted: the DICOM service restarted" in page.text
        response = server.post(f"/jobs/{job.pk}/retry", allow_redirects=False)
        assert response.status_code == 303
        new_id = int(response.headers["Location"].rstrip("/").rsplit("/", 1)[1])
        assert new_id != job.pk
        # The retried send names no modality the server knows: it fails with that reason.
        new = wait_state(new_id, jobs.FAILURE)
        assert "No modality called 'pacs'" in new.error
    finally:
        index.close_index()
