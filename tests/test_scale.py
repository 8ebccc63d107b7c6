"""Several Dolmen nodes on one PostgreSQL index (issue 16): what two nodes writing at once need."""
from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from dicomnode import demodata


def _node(url: str, store_dir: str, files: list[str], barrier: Any, out: Any) -> None:
    """One node: its own store and process, the shared index; ingests ``files`` once the other is ready."""
    from dicomnode.archive import index
    from dicomnode.archive.ingest import Ingestor
    from dicomnode.archive.ingest import Source
    from dicomnode.archive.store import Store
    from dicomnode.errors import DolmenError

    index.open_index(url)
    ingestor = Ingestor(Store(store_dir, fsync=False))
    barrier.wait()
    statuses = []
    for path in files:
        try:
            result = ingestor.ingest_copy(path, Source("dicom"))
            statuses.append(result.status if result.ok else f"rejected: {result.reason}")
        except DolmenError as exc:
            statuses.append(f"rejected: {exc.message}")
    index.close_index()
    out.put(statuses)


@pytest.mark.timeout(120)
def test_two_nodes_receiving_the_same_study_at_once(postgres: Any, tmp_path: Path) -> None:
    """Both senders get success or already-stored, never a failure; the index holds one copy."""
    from dicomnode.archive import index
    from dicomnode.archive.index import Instance
    from dicomnode.archive.index import Series
    from dicomnode.archive.index import Study

    url = postgres.create_database("two_nodes")
    index.open_index(url)
    index.close_index()
    files = [str(p) for p in demodata.write(tmp_path / "src", patients=3, studies=1, series=3, instances=6, size=8)]
    context = multiprocessing.get_context("spawn")
    barrier, out = context.Barrier(2), context.Queue()
    nodes = [context.Process(target=_node, args=(url, str(tmp_path / f"node{n}"), files, barrier, out))
             for n in (1, 2)]
    for node in nodes:
        node.start()
    results = [out.get(timeout=100) for _ in nodes]
    for node in nodes:
        node.join(timeout=30)
    for statuses in results:
        assert set(statuses) <= {"stored", "duplicate"}, [s for s in statuses if s.startswith("rejected")][:3]
    assert sorted(a == "stored" or b == "stored" for a, b in zip(*results, strict=True)) == [True] * len(files)
    index.open_index(url)
    try:
        assert Instance.select().count() == len(files)
        assert Series.select().count() == 9 and Study.select().count() == 3
    finally:
        index.close_index()


def test_a_restarting_node_leaves_the_other_nodes_jobs_alone(index_url: str) -> None:
    """Its own jobs left running, and those of a node silent for a minute, are interrupted; a
    live node's running job is not."""
    import datetime as dt

    from dicomnode import jobs
    from dicomnode.archive import index
    from dicomnode.archive.index import Job
    from dicomnode.archive.index import utcnow

    index.open_index(index_url)
    try:
        now = utcnow()
        mine = Job.create(kind="send", state="running", node="node-a", beat_at=now)
        alive = Job.create(kind="send", state="running", node="node-b", beat_at=now)
        dead = Job.create(kind="send", state="running", node="node-c", beat_at=now - dt.timedelta(seconds=300))
        old = Job.create(kind="send", state="running")  # from a Dolmen before node names
        assert jobs.mark_interrupted("node-a") == 3
        states = {j.pk: (j.state, j.error) for j in Job.select()}
        assert states[alive.pk] == ("running", "")
        for job in (mine, dead, old):
            assert states[job.pk] == ("failure", jobs.INTERRUPTED)
    finally:
        index.close_index()
