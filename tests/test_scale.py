"""Several Dolmen nodes on one PostgreSQL index (issue 16): what two nodes writing at once need."""
from __future__ import annotations

import io
import multiprocessing
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

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


# -- two live nodes: one PostgreSQL index, one S3 bucket ------------------------------------------


def _send(port: int, aet: str, paths: list[Path], acked: list[str] | None = None) -> list[int]:
    """C-STORE ``paths`` over one association (pynetdicom as the modality); the statuses, and
    the SOP Instance UIDs answered with success appended to ``acked`` as they come."""
    import pydicom
    from pynetdicom import AE

    ae = AE(ae_title="MODALITY")
    for sop_class in sorted({str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in paths}):
        ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    statuses = []
    try:
        assert assoc.is_established
        for path in paths:
            ds = pydicom.dcmread(path)
            answer = assoc.send_c_store(ds)
            code = int(answer.Status) if answer and "Status" in answer else -1
            statuses.append(code)
            if code == 0 and acked is not None:
                acked.append(str(ds.SOPInstanceUID))
            if code == -1:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


_LIVE = iter(range(1, 1_000_000))


@pytest.fixture
def two_nodes(postgres: Any, s3: Any, dolmen_factory: Any, dcmtk: Any, short_tmp: Path) -> Iterator[dict[str, Any]]:
    """Nodes ``a`` and ``b`` on one PostgreSQL index and one S3 bucket folder, both declaring the
    storescp ``SINK``."""
    import socket

    from tests.conftest import free_port
    from tests.conftest import new_prefix
    from tests.conftest import wait_for

    url = postgres.create_database(f"live{os.getpid()}_{next(_LIVE)}")
    s3conf = s3.settings(new_prefix())
    sink_port = free_port()
    sink_dir = short_tmp / "sink"
    sink_dir.mkdir()
    sink_log = open(short_tmp / "sink.log", "w")  # noqa: SIM115 - closed below
    sink = dcmtk.popen("storescp", "-v", "-aet", "SINK", "-od", str(sink_dir), str(sink_port),
                       stdout=sink_log, stderr=subprocess.STDOUT)
    wait_for(lambda: socket.create_connection(("127.0.0.1", sink_port), timeout=1).close() or True, what="storescp")
    common = dict(storage={"database": url, "objects": "s3", "fsync": False}, storage__s3=s3conf,
                  modalities__SINK={"aet": "SINK", "host": "127.0.0.1", "port": sink_port})
    try:
        a = dolmen_factory(dicom={"aet": "NODEA", "unknown_aet": ["echo", "store", "find", "move", "get"]},
                           jobs={"node": "node-a"}, **common)
        b = dolmen_factory(dicom={"aet": "NODEB", "unknown_aet": ["echo", "store", "find", "move", "get"]},
                           jobs={"node": "node-b"}, **common)
        yield {"a": a, "b": b, "prefix": s3conf["prefix"], "sink_log": short_tmp / "sink.log", "url": url}
    finally:
        sink.terminate()
        sink.wait(10)
        sink_log.close()


@pytest.mark.timeout(300)
def test_two_live_nodes_share_one_archive(two_nodes: dict[str, Any], s3: Any, dcmtk: Any, tmp_path: Path) -> None:
    """Both receive at once (distinct studies and the same one); each serves the other's by C-FIND,
    WADO-RS and the REST API; a delete on one is seen by the other and removes the objects; a send
    job runs once."""
    import threading

    from dicomweb_client.api import DICOMwebClient

    a, b = two_nodes["a"], two_nodes["b"]
    only_a = demodata.write(tmp_path / "a", patients=1, studies=1, series=1, instances=5, size=16, first_patient=10)
    only_b = demodata.write(tmp_path / "b", patients=1, studies=1, series=1, instances=5, size=16, first_patient=20)
    both = demodata.write(tmp_path / "both", patients=1, studies=1, series=2, instances=5, size=16, first_patient=30)
    results: dict[str, list[int]] = {}

    def run(name: str, node: Any, paths: list[Path]) -> None:
        results[name] = _send(node.dicom_port, node.aet, paths)

    threads = [threading.Thread(target=run, args=args) for args in
               (("a", a, only_a), ("b", b, only_b), ("a-both", a, both), ("b-both", b, both))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(set(codes) == {0} for codes in results.values()), results  # success or already stored (0)
    total = len(only_a) + len(only_b) + len(both)
    for node in (a, b):
        assert node.get("/statistics", program=True).json()["CountInstances"] == total
    assert len(s3.keys(two_nodes["prefix"])) == total  # one object per instance, whoever stored it

    # C-FIND on A finds B's study; WADO-RS and the REST API on A serve B's objects.
    import pydicom

    b_study = str(pydicom.dcmread(only_b[0]).StudyInstanceUID)
    found = dcmtk("findscu", "-S", "-aec", a.aet, "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={b_study}",
                  "-k", "PatientName", "127.0.0.1", str(a.dicom_port))
    assert b_study in found.stderr + found.stdout
    web = DICOMwebClient(f"{a.url}/dicom-web")
    instances = web.retrieve_study(b_study)
    assert sorted(str(ds.SOPInstanceUID) for ds in instances) == sorted(
        str(pydicom.dcmread(p).SOPInstanceUID) for p in only_b)
    study_id = a.post("/tools/lookup", program=True, data=b_study).json()[0]["ID"]
    first = a.get(f"/studies/{study_id}/instances", program=True).json()[0]["ID"]
    served = pydicom.dcmread(io.BytesIO(a.get(f"/instances/{first}/file", program=True).content))
    sent = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, only_b)}
    assert served.PixelData == sent[str(served.SOPInstanceUID)].PixelData

    # A send job asked of A runs once, on one of the nodes.
    job = a.post("/modalities/SINK/store", program=True,
                 json={"Resources": [study_id], "Asynchronous": True}).json()["ID"]
    from tests.conftest import wait_for

    state = wait_for(lambda: (s := a.get(f"/jobs/{job}", program=True).json()["State"]) in ("Success", "Failure")
                     and s, timeout=60, what="the send job")
    assert state == "Success"
    time.sleep(2.5)  # two more polls of both runners: nothing takes the job again
    assert two_nodes["sink_log"].read_text().count("Received Store Request") == len(only_b)

    # A delete on B is seen by A and removes the objects from the bucket.
    answer = requests.delete(f"{b.url}/studies/{study_id}", timeout=30)
    assert answer.status_code == 200, answer.text
    assert a.get(f"/studies/{study_id}", program=True).status_code == 404
    assert len(s3.keys(two_nodes["prefix"])) == total - len(only_b)


@pytest.mark.timeout(300)
def test_a_node_killed_while_receiving_loses_no_acknowledged_instance(two_nodes: dict[str, Any], s3: Any,
                                                                      tmp_path: Path) -> None:
    """SIGKILL of B's DICOM process mid-association: every instance it answered success for is in the
    shared index and its object in the bucket, served by A."""
    import signal
    import threading

    import pydicom

    a, b = two_nodes["a"], two_nodes["b"]
    paths = demodata.write(tmp_path / "k", patients=1, studies=1, series=1, instances=80, size=64, first_patient=40)
    acked: list[str] = []
    pid = b.sidecar_pid()

    def killer() -> None:
        deadline = time.monotonic() + 60
        while len(acked) < 15 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(pid, signal.SIGKILL)

    t = threading.Thread(target=killer)
    t.start()
    try:
        _send(b.dicom_port, b.aet, paths, acked)
    except Exception:
        pass  # the association dies with the process
    t.join(70)
    assert 15 <= len(acked) < len(paths)
    by_uid = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in paths}
    for uid in acked:
        found = a.post("/tools/lookup", program=True, data=uid).json()
        assert found and found[0]["Type"] == "Instance", uid
        served = pydicom.dcmread(io.BytesIO(a.get(f"/instances/{found[0]['ID']}/file", program=True).content))
        assert served.SOPInstanceUID == uid and served.PixelData == pydicom.dcmread(by_uid[uid]).PixelData


@pytest.mark.timeout(300)
def test_faults_s3_stopped_and_postgresql_restarted(two_nodes: dict[str, Any], s3: Any, postgres: Any,
                                                      tmp_path: Path) -> None:
    """S3 stopped: the sender gets a failure status and nothing is indexed without its object; it
    recovers once S3 is back. PostgreSQL restarted: both nodes reconnect (DICOM and web)."""
    a, b = two_nodes["a"], two_nodes["b"]
    paths = demodata.write(tmp_path / "f", patients=1, studies=1, series=1, instances=4, size=16, first_patient=50)
    assert _send(a.dicom_port, a.aet, paths[:1]) == [0]
    s3.stop()
    try:
        statuses = _send(a.dicom_port, a.aet, paths[1:2])
        assert statuses and statuses[0] not in (0, -1) and statuses[0] >> 8 in (0x01, 0xA7, 0xC0), statuses
        assert a.get("/statistics", program=True).json()["CountInstances"] == 1
    finally:
        s3.start()
    assert _send(a.dicom_port, a.aet, paths[1:2]) == [0]
    assert len(s3.keys(two_nodes["prefix"])) == 2

    postgres.restart()
    for node, path in ((a, paths[2]), (b, paths[3])):
        assert _send(node.dicom_port, node.aet, [path]) == [0]  # the DICOM side reconnects
    for node in (a, b):
        assert node.get("/statistics", program=True).json()["CountInstances"] == 4  # and the web side
