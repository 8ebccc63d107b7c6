"""The SCP in its sidecar: C-ECHO and C-STORE from DCMTK and pynetdicom, limits, crashes."""
from __future__ import annotations

import collections
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from dicomnode import demodata
from tests.conftest import DolmenProcess
from tests.conftest import pydicom_test_files
from tests.conftest import wait_for
from tests.hostile import spool_contents

pytestmark = pytest.mark.timeout(600)


#: pydicom test files cut short on purpose: refused as truncated.
TRUNCATED = {"MR_truncated.dcm", "rtplan_truncated.dcm"}


def _meta_disagrees(path: Path) -> bool:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.file_meta.MediaStorageSOPInstanceUID) != str(ds.SOPInstanceUID)


def _valid_pydicom_files() -> dict[str, list[Path]]:
    """SOP Instance UID -> files, for the pydicom test files that are storable objects."""
    by_uid: dict[str, list[Path]] = collections.defaultdict(list)
    for path in pydicom_test_files():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        if "TransferSyntaxUID" not in ds.file_meta or any(
                k not in ds for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")):
            continue
        by_uid[str(ds.SOPInstanceUID)].append(path)
    return by_uid


def _send_with_pynetdicom(port: int, paths: list[Path], aet: str = "PYNETDICOM") -> list[int]:
    """C-STORE each file's bytes as stored (its own transfer syntax), one association per 100 files."""
    from pynetdicom import _config

    _config.STORE_SEND_CHUNKED_DATASET = True  # send the encoded file as is, not re-encoded
    statuses = []
    for start in range(0, len(paths), 100):
        chunk = paths[start:start + 100]
        datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in chunk]
        ae = AE(ae_title=aet)
        pairs = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})
        for sop_class, syntax in pairs[:128]:
            ae.add_requested_context(sop_class, syntax)
        assoc = ae.associate("127.0.0.1", port, ae_title="DOLMEN")
        assert assoc.is_established
        for path in chunk:
            status = assoc.send_c_store(path)
            statuses.append(int(status.Status) if status else -1)
        assoc.release()
    return statuses


def _instances_by_uid(server: DolmenProcess) -> collections.Counter[str]:
    from dicomnode.archive import index
    from dicomnode.archive.index import Instance

    index.open_index(f"sqlite:///{server.data / 'index.db'}", create=False)
    try:
        return collections.Counter(uid for (uid,) in Instance.select(Instance.sop_instance_uid).tuples())
    finally:
        index.close_index()


def test_echo_with_dcmtk(dolmen: DolmenProcess, dcmtk) -> None:
    result = dcmtk("echoscu", "-v", "-aec", "DOLMEN", "127.0.0.1", str(dolmen.dicom_port))
    assert "Received Echo Response (Success)" in result.stderr + result.stdout


def test_pydicom_files_and_generated_set_are_indexed_once(dolmen_factory, dcmtk, short_tmp: Path) -> None:
    server = dolmen_factory()
    valid = _valid_pydicom_files()
    # pynetdicom sends every storable pydicom file in its own transfer syntax...
    all_files = [p for paths in valid.values() for p in paths]
    statuses = dict(zip(all_files, _send_with_pynetdicom(server.dicom_port, all_files)))
    for path, status in statuses.items():
        if path.name in TRUNCATED:
            assert status == 0xC000, path  # Error: Cannot understand, with the reason
        elif _meta_disagrees(path):
            # pynetdicom takes the command's SOP Instance UID from the file meta: the dataset
            # says otherwise, so it is refused as not matching (0xA900).
            assert status == 0xA900, path
        else:
            assert status == 0, (path, hex(status))
    accepted = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                for p, status in statuses.items() if status == 0}
    # ...and DCMTK's storescu sends them again (duplicates), plus the generated 1,000-instance set.
    generated = short_tmp / "gen"
    demodata.write(generated, patients=2, studies=1, series=5, instances=100, size=64)
    dcmtk("storescu", "-aec", "DOLMEN", "127.0.0.1", str(server.dicom_port), "+sd", "+r", str(generated))
    uncompressed = [p for p in all_files if pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID
                    in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")]
    dcmtk("storescu", "-nh", "-aec", "DOLMEN", "127.0.0.1", str(server.dicom_port), *uncompressed, check=False)

    counts = _instances_by_uid(server)
    assert all(n == 1 for n in counts.values())
    generated_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                      for p in generated.rglob("*.dcm")}
    # storescu takes the command's UIDs from the dataset, so the files pynetdicom could not
    # store are accepted from it (all but the truncated ones).
    from_storescu = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                     for p in uncompressed if p.name not in TRUNCATED}
    expected = accepted | from_storescu | generated_uids
    assert set(counts) == expected
    stats = server.get("/api/statistics").json()
    assert stats["CountInstances"] == len(expected) == len(accepted | from_storescu) + 1000
    status = server.status()
    assert status["instances_received"] >= len(all_files) + 1000


def test_unknown_aet_may_store_by_default_but_not_when_refused(dolmen_factory, short_tmp: Path) -> None:
    server = dolmen_factory(dicom={"unknown_aet": ["echo"]},
                            **{"modalities.ct": {"aet": "CT1", "host": "127.0.0.1", "allow": ["store"]}})
    path = demodata.write(short_tmp / "one", patients=1, studies=1, series=1, instances=1, size=16)[0]
    assert _send_with_pynetdicom(server.dicom_port, [path], aet="STRANGER") == [0x0124]
    assert _send_with_pynetdicom(server.dicom_port, [path], aet="CT1") == [0]


def test_object_over_the_cap_aborts_and_leaves_nothing(dolmen_factory, dcmtk, short_tmp: Path) -> None:
    server = dolmen_factory(dicom={"max_object_mb": 1})
    big = demodata.write_large(short_tmp / "big.dcm", 3)
    result = dcmtk("storescu", "-aec", "DOLMEN", "127.0.0.1", str(server.dicom_port), big, check=False)
    assert result.returncode != 0
    assert _instances_by_uid(server) == collections.Counter()
    assert not list((server.data / "files").rglob("*.dcm"))
    wait_for(lambda: not spool_contents(server.data / "tmp" / "scp"), what="the spool to be emptied")
    dcmtk("echoscu", "-aec", "DOLMEN", "127.0.0.1", str(server.dicom_port))  # still serving


def test_garbage_on_the_dicom_port_does_not_disturb_others(dolmen: DolmenProcess, dcmtk) -> None:
    peers = []
    for payload in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                    os.urandom(4096)):
        s = socket.create_connection(("127.0.0.1", dolmen.dicom_port), timeout=5)
        s.sendall(payload)
        peers.append(s)
    idle = socket.create_connection(("127.0.0.1", dolmen.dicom_port), timeout=5)  # says nothing at all
    try:
        start = time.monotonic()
        dcmtk("echoscu", "-aec", "DOLMEN", "127.0.0.1", str(dolmen.dicom_port))
        assert time.monotonic() - start < 5
    finally:
        for s in [*peers, idle]:
            s.close()


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_sigkill_mid_transfer_leaves_nothing_and_restarts(dolmen_factory, dcmtk, short_tmp: Path) -> None:
    server = dolmen_factory()
    small = demodata.write(short_tmp / "small", patients=1, studies=1, series=1, instances=3, size=16)
    dcmtk("storescu", "-aec", "DOLMEN", "127.0.0.1", str(server.dicom_port), *small)
    before = _instances_by_uid(server)
    files_before = sorted((server.data / "files").rglob("*.dcm"))
    big = demodata.write_large(short_tmp / "big.dcm", 400, p=901)
    big_uid = str(pydicom.dcmread(big, stop_before_pixels=True).SOPInstanceUID)
    old_pid = server.sidecar_pid()
    spool = server.data / "tmp" / "scp"
    peak_rss = [0.0]

    sender = dcmtk.popen("storescu", "--max-send-pdu", "16384", "-aec", "DOLMEN", "127.0.0.1",
                         str(server.dicom_port), big, stdout=open(os.devnull, "w"), stderr=open(os.devnull, "w"))

    def receiving() -> bool:
        peak_rss[0] = max(peak_rss[0], _rss_mb(old_pid))
        parts = spool_contents(spool)
        return bool(parts) and parts[0].stat().st_size > 20 * 1024 * 1024

    try:
        wait_for(receiving, timeout=60, interval=0.01, what="the sidecar to be receiving the big object")
        assert peak_rss[0] < 300, f"sidecar RSS {peak_rss[0]:.0f} MB while receiving"
        os.kill(old_pid, signal.SIGKILL)
        sender.wait(60)
    finally:
        if sender.poll() is None:
            sender.kill()
    wait_for(lambda: server.status()["pid"] != old_pid, timeout=60, what="the sidecar to be restarted")
    # The next association is accepted and the interrupted instance left no trace.
    dcmtk("echoscu", "-aec", "DOLMEN", "127.0.0.1", str(server.dicom_port))
    after = _instances_by_uid(server)
    assert big_uid not in after and after == before
    assert sorted((server.data / "files").rglob("*.dcm")) == files_before
    wait_for(lambda: not spool_contents(spool), what="the partial object to be removed")
    page = server.get("/system").text
    assert "Restarts" in page
    more = demodata.write(short_tmp / "more", patients=1, studies=1, series=1, instances=2, size=16, first_patient=5)
    dcmtk("storescu", "-aec", "DOLMEN", "127.0.0.1", str(server.dicom_port), *more)
    assert len(_instances_by_uid(server)) == len(before) + 2


def test_concurrent_associations_store_everything(dolmen_factory, dcmtk, short_tmp: Path) -> None:
    server = dolmen_factory()
    folders = []
    for n in range(6):
        folder = short_tmp / f"c{n}"
        demodata.write(folder, patients=1, studies=1, series=1, instances=20, size=32, first_patient=100 + n)
        folders.append(folder)
    errors: list[str] = []

    def send(folder: Path) -> None:
        try:
            dcmtk("storescu", "-aec", "DOLMEN", "127.0.0.1", str(server.dicom_port), "+sd", "+r", folder)
        except AssertionError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=send, args=(f,)) for f in folders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert server.get("/api/statistics").json()["CountInstances"] == 120


def test_spool_files_are_made_ahead_and_removed_at_stop(dolmen_factory, dcmtk, short_tmp: Path) -> None:
    """C-STOREs take spool files created ahead (their creation waited on the disk's journal on
    the path of every small instance); a clean stop removes the ones not taken."""
    from dicomnode.net.scp import RESERVE_PREFIX

    server = dolmen_factory()
    spool = server.data / "tmp" / "scp"
    files = demodata.write(short_tmp / "few", patients=1, studies=1, series=1, instances=3, size=16)
    dcmtk("storescu", "-aec", "DOLMEN", "127.0.0.1", str(server.dicom_port), *files)
    assert len(_instances_by_uid(server)) == 3

    def reserve() -> list[Path]:
        return [p for p in spool.iterdir() if p.name.startswith(RESERVE_PREFIX)]

    wait_for(lambda: len(reserve()) >= 4, what="spool files made ahead")
    assert all(p.stat().st_size == 0 for p in reserve()) and not spool_contents(spool)
    server.stop()
    assert not list(spool.iterdir())
