"""Resources (issue 7): storage full, the index unavailable, the sidecar killed while it stores.

The kill loop stores ~600 instances over 8 associations in ``make test`` and 10,000 under
``make test-long`` (``DOLMEN_LONG_TESTS=1``), killing the sidecar with SIGKILL every
second or so: every instance acknowledged with Success is present and byte-identical.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.conftest import DolmenProcess
from tests.conftest import free_port
from tests.conftest import make_config_doc
from tests.conftest import start_dolmen
from tests.conftest import wait_for
from tests.conftest import write_toml
from tests.hostile import CT_IMAGE_STORAGE
from tests.hostile import KNOWN_AET
from tests.hostile import Survival
from tests.hostile import assert_no_traceback
from tests.hostile import echo
from tests.hostile import encode
from tests.hostile import hostile_sections
from tests.hostile import raw_store
from tests.hostile import small_instance
from tests.hostile import store

LONG = bool(os.environ.get("DOLMEN_LONG_TESTS"))
EXPLICIT = "1.2.840.10008.1.2.1"
#: SIGKILLs in the kill loop: each restart costs a new interpreter (~2 s on a busy machine).
MAX_KILLS = 1000 if LONG else 6
#: Seconds between a restart and the next SIGKILL (random within the range).
KILL_EVERY = (1.0, 3.0) if LONG else (0.3, 1.0)


def stow(server: DolmenProcess, data: bytes) -> tuple[int, str]:
    boundary = "res-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    r = server.post(
        "/dicom-web/studies",
        data=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
    )
    return r.status_code, r.text


def find_studies(port: int) -> int:
    """C-FIND at STUDY level as the known modality; the final status."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    ae = AE(ae_title=KNOWN_AET)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="DOLMEN")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    status = None
    try:
        for answer, _identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            status = answer
    finally:
        assoc.release()
    assert status is not None and "Status" in status
    return int(status.Status)


def implicit_free_mb(path: Path) -> float:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / (1024 * 1024)


@pytest.fixture
def tmpfs() -> Iterator[Path]:
    """A 24 MiB tmpfs (root only): a volume that really fills up."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root: the storage-full case is skipped")
    folder = Path(tempfile.mkdtemp(prefix="df-", dir="/tmp"))
    mnt = folder / "mnt"
    mnt.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True
    )
    if result.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode(errors='replace').strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_storage_full(tmpfs: Path) -> None:
    data = tmpfs / "mnt" / "data"
    config = write_toml(
        tmpfs / "c.toml", make_config_doc(data, **hostile_sections(storage={"min_free_mb": 6}))
    )
    server = start_dolmen(config, tmpfs / "serve.log")
    try:
        survival = Survival(server)
        # Fill the volume to under the threshold, as another program would.
        filler = data / "filler.bin"
        with open(filler, "wb") as f:
            while implicit_free_mb(data) > 4:
                f.write(b"\0" * (256 * 1024))
        ds = small_instance("1.2.826.0.1.3680043.10.1078.7.1", n=1)
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_dataset

        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_dataset(fp, ds)
        assert (
            raw_store(server.dicom_port, CT_IMAGE_STORAGE, ds.SOPInstanceUID, fp.getvalue(), EXPLICIT)
            == 0xA700
        )
        code, text = stow(server, encode(ds))
        assert code == 409 and '"00081197"' in text and "42752" in text, (code, text)  # 0xA700 = 42752
        r = server.post(
            "/upload",
            files={"files": ("a.dcm", encode(ds), "application/dicom")},
            headers={"Accept": "application/json"},
        )
        assert r.status_code == 507, (r.status_code, r.text[:300])
        assert_no_traceback(r.text)
        # Echo, find and the pages keep working.
        assert echo(server.dicom_port) == 0
        assert find_studies(server.dicom_port) == 0
        for page in ("/", "/studies", "/system", "/upload"):
            r = server.get(page)
            assert r.status_code == 200, page
        log = server.log_text()
        assert "127.0.0.1" in log and "storage" in log.lower()
        # Space freed: storing resumes.
        filler.unlink()
        assert store(server.dicom_port, [ds]) == [0]
        code, _ = stow(server, encode(small_instance("1.2.826.0.1.3680043.10.1078.7.1", n=2)))
        assert code == 200
        survival.check(problem="full|free space|storage")
    finally:
        server.stop()


BUSY_TIMEOUT = 6.0


def test_index_unavailable(dolmen_factory) -> None:  # type: ignore[no-untyped-def]
    """Another process holds the index's write lock longer than the busy timeout
    (``[storage] busy_timeout``, 30 s by default, shortened here)."""
    server = dolmen_factory(**hostile_sections(dicom={"dimse_timeout": 90.0}, storage={"busy_timeout": BUSY_TIMEOUT}))
    survival = Survival(server)
    ds = small_instance("1.2.826.0.1.3680043.10.1078.8.1", n=1)
    sop = str(ds.SOPInstanceUID)
    con = sqlite3.connect(server.data / "index.db", timeout=5, isolation_level=None)
    files_before = {p for p in (server.data / "files").rglob("*.dcm")}
    web_ds = small_instance("1.2.826.0.1.3680043.10.1078.8.2", n=1)
    try:
        con.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        # C-STORE, STOW-RS and the upload form at the same time: each waits out the busy timeout.
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            dicom = pool.submit(store, server.dicom_port, [ds], timeout=90)
            web = pool.submit(stow, server, encode(web_ds))
            upload = pool.submit(
                server.post,
                "/upload",
                files={"files": ("a.dcm", encode(web_ds), "application/dicom")},
                headers={"Accept": "application/json"},
            )
            statuses, (stow_code, stow_text), upload_answer = dicom.result(), web.result(), upload.result()
        waited = time.monotonic() - started
    finally:
        con.rollback()
        con.close()
    assert statuses == [0x0110], [hex(s or 0) for s in statuses]
    assert stow_code == 409 and '"Value":[272]' in stow_text.replace(" ", ""), stow_text  # 0x0110
    assert_no_traceback(stow_text)
    assert upload_answer.status_code == 200, upload_answer.text[:300]
    rows = upload_answer.json()["files"]
    assert rows[0]["status"] == "rejected" and "index is unavailable" in rows[0]["reason"], rows
    # Each writer waited out the busy timeout, and no longer: web writers queue behind one another.
    assert BUSY_TIMEOUT <= waited < 3 * BUSY_TIMEOUT + 10, waited
    # Nothing half-stored: no row, no new file, no spool leftovers.
    assert {p for p in (server.data / "files").rglob("*.dcm")} == files_before
    con = sqlite3.connect(server.data / "index.db")
    try:
        assert (
            con.execute("SELECT count(*) FROM instance WHERE sop_instance_uid = ?", (sop,)).fetchone()[0] == 0
        )
    finally:
        con.close()
    # Once the index is back, the same instance is stored.
    assert store(server.dicom_port, [ds]) == [0]
    survival.check(problem="index is unavailable")


# -- the kill loop ---------------------------------------------------------------------------------


class Sidecar:
    """``python -m dicomnode.sidecar`` started by hand (as the supervisor would, without backoff)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, port: int) -> None:
        logf = open(self.log, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicomnode.sidecar", "--config", str(self.config)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        logf.close()

        def listening() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-2000:]
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, timeout=60, what="the sidecar to listen")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def stored_dataset_bytes(path: Path) -> bytes:
    """The data set of a stored file: what follows its File Meta Information."""
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"
    # (0002,0000) File Meta Information Group Length, explicit VR little endian UL.
    group_length = int.from_bytes(raw[140:144], "little")
    return raw[144 + group_length :]


@pytest.mark.timeout(3600 if LONG else 300)
def test_sigkill_loop_loses_no_acknowledged_instance(short_tmp: Path) -> None:
    total = 10_000 if LONG else 600
    workers = 8
    port = free_port()
    data = short_tmp / "data"
    doc = make_config_doc(data, **hostile_sections(dicom={"port": port, "max_associations": 16}))
    config = write_toml(short_tmp / "c.toml", doc)
    sidecar = Sidecar(config, short_tmp / "sidecar.log")
    sidecar.start(port)
    # Each worker stores its own instances; an instance counts once Success came back.
    study = "1.2.826.0.1.3680043.10.1078.9"
    acknowledged: dict[str, bytes] = {}
    lock = threading.Lock()
    done = threading.Event()
    kills = 0

    def worker(w: int) -> None:
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_dataset
        from pynetdicom import AE

        mine = [small_instance(f"{study}.{w}", n=n + 1) for n in range(total // workers)]
        ae = AE(ae_title=KNOWN_AET)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        ae.add_requested_context(CT_IMAGE_STORAGE, [EXPLICIT])
        k = 0
        while k < len(mine):
            assoc = ae.associate("127.0.0.1", port, ae_title="DOLMEN")
            if not assoc.is_established:
                time.sleep(0.05)  # the sidecar is restarting
                continue
            try:
                while k < len(mine) and assoc.is_established:
                    ds = mine[k]
                    status = assoc.send_c_store(ds)
                    if "Status" in status and status.Status == 0:
                        fp = DicomBytesIO()
                        fp.is_little_endian, fp.is_implicit_VR = True, False
                        write_dataset(fp, ds)
                        with lock:
                            acknowledged[str(ds.SOPInstanceUID)] = fp.getvalue()
                        k += 1
                    elif "Status" in status:
                        raise AssertionError(f"C-STORE answered 0x{int(status.Status):04X}")
            finally:
                if assoc.is_established:
                    assoc.release()

    def killer() -> None:
        nonlocal kills
        rng = random.Random(7)
        while not done.wait(rng.uniform(*KILL_EVERY)) and kills < MAX_KILLS:
            sidecar.kill()
            kills += 1
            sidecar.start(port)

    started = time.monotonic()
    kill_thread = threading.Thread(target=killer, daemon=True)
    kill_thread.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for job in [pool.submit(worker, w) for w in range(workers)]:
                job.result(timeout=3600)
    finally:
        done.set()
        kill_thread.join()
    elapsed = time.monotonic() - started
    assert kills >= 2, f"only {kills} kill(s): the loop did not exercise anything"
    # A clean start reconciles what the kills left (spool files, files without rows).
    sidecar.kill()
    sidecar.start(port)
    from dicomnode.control import ControlClient

    wait_for(lambda: ControlClient(data / "run" / "control.sock").call("status"), timeout=30, what="status")
    # Reconciliation runs in the background: poll the index below.
    con = sqlite3.connect(data / "index.db", timeout=30)

    def all_indexed() -> bool:
        rows = dict(con.execute("SELECT sop_instance_uid, path FROM instance").fetchall())
        return all(uid in rows for uid in acknowledged)

    try:
        wait_for(all_indexed, timeout=120, what="every acknowledged instance in the index")
        rows = dict(con.execute("SELECT sop_instance_uid, path FROM instance").fetchall())
    finally:
        con.close()
    sidecar.stop()
    missing = [uid for uid in acknowledged if uid not in rows]
    assert not missing, f"{len(missing)} acknowledged instances lost, e.g. {missing[:3]}"
    different = [uid for uid, sent in acknowledged.items() if stored_dataset_bytes(data / rows[uid]) != sent]
    assert not different, f"{len(different)} stored instances differ from what was sent, e.g. {different[:3]}"
    assert len(acknowledged) == total // workers * workers
    print(f"kill loop: {len(acknowledged)} instances acknowledged, {kills} SIGKILLs, {elapsed:.1f} s")


def test_a_slow_ingest_is_not_taken_for_an_idle_peer(dolmen_factory) -> None:  # type: ignore[no-untyped-def]
    """The index is busy for longer than [dicom] network_timeout while a C-STORE waits: the
    answer comes once it is free, and the association goes on (pynetdicom took the wait for
    the peer's idleness and aborted right after answering)."""
    server = dolmen_factory(**hostile_sections(dicom={"network_timeout": 2.0, "dimse_timeout": 30.0}))
    survival = Survival(server)
    first, second = (small_instance("1.2.826.0.1.3680043.10.1078.12.1", n=n) for n in (1, 2))
    con = sqlite3.connect(server.data / "index.db", timeout=5, isolation_level=None, check_same_thread=False)
    con.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(4.0, con.rollback)
    release.start()
    try:
        statuses = store(server.dicom_port, [first, second], timeout=30)
    finally:
        release.join()
        con.close()
    assert statuses == [0, 0], statuses
    survival.check()
