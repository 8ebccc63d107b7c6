"""Dolmen as a PACS: C-FIND, C-MOVE and C-GET service providers with access control.

A real ``dolmen serve`` holding a small generated data set is queried and retrieved from by
DCMTK's findscu, movescu and getscu (and by Orthanc through its REST API); a pynetdicom
requester is used only where DCMTK cannot ask (combined date/time negotiation, a C-GET that
offers one storage class, the Failed SOP Instance UID List). The association log is read from
the index file with sqlite3.
"""
from __future__ import annotations

import contextlib
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom import build_role
from pynetdicom import evt
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation

from dicomnode import demodata
from tests.conftest import Dcmtk
from tests.conftest import DolmenProcess
from tests.conftest import free_port
from tests.conftest import make_config_doc
from tests.conftest import start_orthanc
from tests.conftest import start_sidecar
from tests.conftest import wait_for
from tests.conftest import write_toml

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
CT = demodata.CT_IMAGE_STORAGE
MR = demodata.MR_IMAGE_STORAGE

# The data set: 3 patients x 2 studies x 2 series x 2 instances (see demodata for the values).
#   p0 MULLER^ANNA   st0 20150101 080000 MR   st1 20160202 090000 CT
#   p1 SCHMIDT^BRUNO st0 20150204 080700 CT   st1 20160305 090700 CT
#   p2 DUBOIS^CHLOE  st0 20150307 081400 CT   st1 20160408 091400 MR
# plus p9 "MÜLLER^JÖRG" (one instance) for character sets.
PATIENTS, STUDIES, SERIES, INSTANCES = 3, 2, 2, 2
OURS = "AccessionNumber=ACC*"  # the 6 studies of p0-p2 (p9 and the cancel test's rows have others)


def study_uid(p: int, st: int) -> str:
    return demodata.uid("study", p, st)


def series_uid(p: int, st: int, se: int) -> str:
    return demodata.uid("series", p, st, se)


def instance_uid(p: int, st: int, se: int, i: int) -> str:
    return demodata.uid("instance", p, st, se, i)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    base = tmp_path_factory.mktemp("qrdata")
    paths = demodata.write(base, patients=PATIENTS, studies=STUDIES, series=SERIES, instances=INSTANCES,
                           size=16)
    ds = demodata.make_instance(9, 0, 0, 0, 96)  # 18 KiB: several PDUs at a 4 KiB maximum
    ds.PatientName = "MÜLLER^JÖRG"
    ds.PatientID = "PAT00009"
    ds.AccessionNumber = "UMLAUT1"
    umlaut = base / "umlaut.dcm"
    ds.save_as(umlaut, enforce_file_format=True)
    return [*paths, umlaut]


@pytest.fixture(scope="module")
def tmp_short() -> Iterator[Path]:
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="dq-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def viewer_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def orthanc_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def pacs(tmp_short: Path, files: list[Path], viewer_port: int, orthanc_port: int) -> Iterator[DolmenProcess]:
    """A Dolmen holding the data set; VIEWER (a storescp) and ORTHANC are declared modalities."""
    doc = make_config_doc(tmp_short / "pacs", storage={"fsync": False}, **{
        "modalities.viewer": {"aet": "VIEWER", "host": "127.0.0.1", "port": viewer_port},
        "modalities.slow": {"aet": "SLOW", "host": "127.0.0.1", "port": free_port()},
        "modalities.ctonly": {"aet": "CTONLY", "host": "127.0.0.1", "port": free_port()},
        "modalities.orthanc": {"aet": "ORTHANC", "host": "127.0.0.1", "port": orthanc_port},
        "modalities.limited": {"aet": "LIMITED", "host": "127.0.0.1", "port": 104, "allow": ["echo", "find"]},
    })
    server = start_sidecar(write_toml(tmp_short / "pacs.toml", doc), tmp_short / "pacs.log")
    server.extra["doc"] = doc
    try:
        Dcmtk()("storescu", "-aet", "MODALITY", "127.0.0.1", str(server.dicom_port), *files)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def viewer(tmp_short: Path, viewer_port: int, pacs: DolmenProcess) -> Iterator[Path]:
    """DCMTK storescp as VIEWER: the move destination; one subfolder per association."""
    folder = tmp_short / "viewer"
    folder.mkdir()
    proc = Dcmtk().popen("storescp", "-aet", "VIEWER", "-od", str(folder), "--sort-on-study-uid", "st",
                         str(viewer_port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: socket.create_connection(("127.0.0.1", viewer_port), timeout=1).close() or True,
             what="storescp")
    yield folder
    proc.terminate()
    proc.wait(10)


def port_of(server: DolmenProcess, name: str) -> int:
    return int(server.extra["doc"][f"modalities.{name}"]["port"])


def received(folder: Path) -> set[str]:
    """SOP Instance UIDs of the files under ``folder``."""
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in folder.rglob("*") if p.is_file()}


def log_rows(server: DolmenProcess, operation: str | None = None) -> list[dict[str, Any]]:
    """The association log, newest last."""
    with contextlib.closing(sqlite3.connect(server.data / "index.db", timeout=30)) as con:
        con.row_factory = sqlite3.Row
        sql = "SELECT * FROM association_event"
        args: tuple[Any, ...] = ()
        if operation:
            sql += " WHERE operation = ?"
            args = (operation,)
        return [dict(r) for r in con.execute(sql + " ORDER BY pk", args)]


def find(dcmtk: Dcmtk, server: DolmenProcess, out: Path, *keys: str, root: str = "-S",
         aet: str = "VIEWER", extra: tuple[str, ...] = ()) -> tuple[list[Dataset], str]:
    """findscu; the answers (extracted to files) and the verbose transcript."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    args = ["-v", root, "-aet", aet, "-aec", server.aet, "-X", "-od", str(out), *extra]
    for k in keys:
        args += ["-k", k]
    result = dcmtk("findscu", *args, "127.0.0.1", str(server.dicom_port), check=False, timeout=60)
    answers = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    return answers, result.stdout + result.stderr


def values(answers: list[Dataset], keyword: str) -> list[str]:
    return sorted(str(a.get(keyword, "")) for a in answers)


# -- C-FIND: levels and models ----------------------------------------------------------------


def test_find_patient_root_patient_level_with_computed_keys(pacs: DolmenProcess, dcmtk: Dcmtk,
                                                            tmp_path: Path) -> None:
    answers, log = find(dcmtk, pacs, tmp_path, "QueryRetrieveLevel=PATIENT", "PatientID=PAT00001",
                        "PatientName", "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
                        "NumberOfPatientRelatedInstances", root="-P")
    assert "Final Find Response (Success)" in log
    assert len(answers) == 1
    a = answers[0]
    assert str(a.PatientName) == "SCHMIDT^BRUNO" and a.QueryRetrieveLevel == "PATIENT"
    assert (int(a.NumberOfPatientRelatedStudies), int(a.NumberOfPatientRelatedSeries),
            int(a.NumberOfPatientRelatedInstances)) == (2, 4, 8)


def test_find_patient_root_study_level(pacs: DolmenProcess, dcmtk: Dcmtk, tmp_path: Path) -> None:
    answers, _ = find(dcmtk, pacs, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=PAT00002",
                      "StudyInstanceUID", "StudyDate", "ModalitiesInStudy", "SOPClassesInStudy",
                      "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", root="-P")
    assert values(answers, "StudyInstanceUID") == sorted([study_uid(2, 0), study_uid(2, 1)])
    assert values(answers, "StudyDate") == ["20150307", "20160408"]
    assert values(answers, "ModalitiesInStudy") == ["CT", "MR"]
    assert values(answers, "SOPClassesInStudy") == [CT, MR]
    for a in answers:
        assert (int(a.NumberOfStudyRelatedSeries), int(a.NumberOfStudyRelatedInstances)) == (2, 4)


def test_find_study_root_series_and_image_levels(pacs: DolmenProcess, dcmtk: Dcmtk, tmp_path: Path) -> None:
    answers, _ = find(dcmtk, pacs, tmp_path, "QueryRetrieveLevel=SERIES",
                      f"StudyInstanceUID={study_uid(1, 1)}",
                      "SeriesInstanceUID", "Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances",
                      "PatientName")
    assert values(answers, "SeriesInstanceUID") == sorted([series_uid(1, 1, 0), series_uid(1, 1, 1)])
    assert values(answers, "Modality") == ["CT", "CT"]
    assert values(answers, "NumberOfSeriesRelatedInstances") == ["2", "2"]
    assert values(answers, "PatientName") == ["SCHMIDT^BRUNO"] * 2  # a key of a level above
    answers, _ = find(dcmtk, pacs, tmp_path, "QueryRetrieveLevel=IMAGE",
                      f"StudyInstanceUID={study_uid(1, 1)}",
                      f"SeriesInstanceUID={series_uid(1, 1, 0)}", "SOPInstanceUID", "SOPClassUID",
                      "InstanceNumber", "InstitutionName")
    assert values(answers, "SOPInstanceUID") == sorted([instance_uid(1, 1, 0, 0), instance_uid(1, 1, 0, 1)])
    assert values(answers, "InstanceNumber") == ["1", "2"]
    assert values(answers, "SOPClassUID") == [CT, CT]
    # A key the index does not hold is returned, empty.
    assert all("InstitutionName" in a and not a.InstitutionName for a in answers)


def test_find_study_root_has_no_patient_level(pacs: DolmenProcess, dcmtk: Dcmtk, tmp_path: Path) -> None:
    answers, log = find(dcmtk, pacs, tmp_path, "QueryRetrieveLevel=PATIENT", "PatientID")
    assert answers == []
    assert "DataSetDoesNotMatchSOPClass" in log or "0xa900" in log.lower()


# -- C-FIND: matching kinds (PS3.4 C.2.2.2) ---------------------------------------------------


@pytest.mark.parametrize(("keys", "expected"), [
    # single value; PN case-insensitive by default
    (["PatientID=PAT00001"], [(1, 0), (1, 1)]),
    (["PatientName=muller^anna"], [(0, 0), (0, 1)]),
    # universal: an empty key matches everything (restricted to our patients by accession number)
    ([OURS, "StudyDescription="], [(p, s) for p in range(3) for s in range(2)]),
    # wildcards * and ?
    (["PatientName=sch*"], [(1, 0), (1, 1)]),
    (["PatientName=DUBOIS^CHLO?"], [(2, 0), (2, 1)]),
    (["PatientName=*O*", OURS], [(1, 0), (1, 1), (2, 0), (2, 1)]),
    # list of UIDs
    ([f"StudyInstanceUID={study_uid(0, 1)}\\{study_uid(2, 0)}"], [(0, 1), (2, 0)]),
    # date ranges: closed, open at either end
    ([OURS, "StudyDate=20150101-20150204"], [(0, 0), (1, 0)]),
    ([OURS, "StudyDate=-20150204"], [(0, 0), (1, 0)]),
    ([OURS, "StudyDate=20160305-"], [(1, 1), (2, 1)]),
    # time range (alone: every day)
    ([OURS, "StudyTime=0800-0810"], [(0, 0), (1, 0)]),
    # date and time ranges without combined matching are independent
    ([OURS, "StudyDate=20150204-20160202", "StudyTime=0820-0900"], [(0, 1)]),
    # multiple values of a CS key
    ([OURS, "ModalitiesInStudy=MR"], [(0, 0), (2, 1)]),
])
def test_find_matching(pacs: DolmenProcess, dcmtk: Dcmtk, tmp_path: Path, keys: list[str],
                       expected: list[tuple[int, int]]) -> None:
    answers, log = find(dcmtk, pacs, tmp_path, "QueryRetrieveLevel=STUDY", "StudyInstanceUID", *keys)
    assert "Final Find Response (Success)" in log, log[-2000:]
    assert values(answers, "StudyInstanceUID") == sorted(study_uid(p, s) for p, s in expected)


def _pynetdicom_find(pacs: DolmenProcess, ds: Dataset, *, combined: bool = False) -> list[Dataset]:
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(STUDY_FIND)
    ext = []
    if combined:
        item = SOPClassExtendedNegotiation()
        item.sop_class_uid = STUDY_FIND
        item.service_class_application_information = b"\x00\x01"
        ext.append(item)
    assoc = ae.associate("127.0.0.1", pacs.dicom_port, ae_title=pacs.aet, ext_neg=ext)
    assert assoc.is_established
    try:
        answers = []
        for status, identifier in assoc.send_c_find(ds, STUDY_FIND):
            if status.Status in (0xFF00, 0xFF01):
                answers.append(identifier)
            else:
                assert status.Status == 0, hex(status.Status)
        return answers
    finally:
        assoc.release()


def test_find_combined_date_time_range_when_negotiated(pacs: DolmenProcess) -> None:
    """C.2.2.2.5.1: 20150204-20160202 with 0820-0900 means 4 Feb 2015 08:20 to 2 Feb 2016 09:00."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.AccessionNumber = "ACC*"
    ds.StudyDate = "20150204-20160202"
    ds.StudyTime = "0820-0900"
    ds.StudyInstanceUID = ""
    combined = _pynetdicom_find(pacs, ds, combined=True)
    assert values(combined, "StudyInstanceUID") == sorted([study_uid(2, 0), study_uid(0, 1)])
    separate = _pynetdicom_find(pacs, ds, combined=False)
    assert values(separate, "StudyInstanceUID") == [study_uid(0, 1)]


def test_find_character_sets(pacs: DolmenProcess, dcmtk: Dcmtk, tmp_path: Path) -> None:
    """A UTF-8 query (ISO_IR 192) and a Latin-1 one (ISO_IR 100) find the patient; answers say UTF-8."""
    answers, _ = find(dcmtk, pacs, tmp_path, "SpecificCharacterSet=ISO_IR 192", "QueryRetrieveLevel=PATIENT",
                      "PatientName=müller*", "PatientID", root="-P")
    assert len(answers) == 1
    assert answers[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(answers[0].PatientName) == "MÜLLER^JÖRG"
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "MÜLLER^J*"
    ds.StudyInstanceUID = ""
    latin = _pynetdicom_find(pacs, ds)
    assert [str(a.PatientName) for a in latin] == ["MÜLLER^JÖRG"]
    assert latin[0].StudyInstanceUID == study_uid(9, 0)


def test_find_cancel(pacs: DolmenProcess, dcmtk: Dcmtk, tmp_path: Path) -> None:
    """C-CANCEL ends a long answer: 3,000 index rows for one name, cancelled after the first answer."""
    with contextlib.closing(sqlite3.connect(pacs.data / "index.db", timeout=30)) as con:
        with con:
            cur = con.execute(
                "INSERT INTO patient (public_id, patient_id, patient_name, patient_name_key, "
                "patient_birth_date, patient_sex, num_studies, num_series, num_instances, size, "
                "created_at, updated_at) VALUES ('cancel-test', 'CANCEL1', 'CANCEL^TEST', "
                "'CANCEL^TEST', '', '', 3000, 0, 0, 0, '2026-01-01', '2026-01-01')")
            patient = cur.lastrowid
            con.executemany(
                "INSERT INTO study (public_id, patient_pk, study_instance_uid, study_date, study_time, "
                "study_description, accession_number, study_id, referring_physician_name, "
                "modalities_in_study, sop_classes_in_study, num_series, num_instances, size, created_at, "
                "updated_at) VALUES "
                "(?, ?, ?, '19990101', '', '', '', '', '', '', '', 0, 0, 0, '2026-01-01', '2026-01-01')",
                [(f"cancel-{n}", patient, f"1.2.3.999.{n}") for n in range(3000)])
    answers, log = find(dcmtk, pacs, tmp_path, "QueryRetrieveLevel=STUDY", "PatientName=CANCEL*",
                        "StudyInstanceUID", extra=("--cancel", "1"))
    assert "Cancel" in log, log[-2000:]
    assert 1 <= len(answers) < 3000
    row = [r for r in log_rows(pacs, "find") if "cancelled" in r["reason"]]
    assert row and row[-1]["accepted"]


# -- C-MOVE -----------------------------------------------------------------------------------


def move(dcmtk: Dcmtk, server: DolmenProcess, *keys: str, root: str = "-S", dest: str = "VIEWER",
         aet: str = "VIEWER", extra: tuple[str, ...] = ()) -> str:
    args = ["-v", root, "-aet", aet, "-aec", server.aet, "-aem", dest, *extra]
    for k in keys:
        args += ["-k", k]
    result = dcmtk("movescu", *args, "127.0.0.1", str(server.dicom_port), check=False, timeout=60)
    return result.stdout + result.stderr


@pytest.mark.parametrize(("root", "keys", "expected"), [
    ("-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid(0, 0)}"],
     [instance_uid(0, 0, se, i) for se in range(2) for i in range(2)]),
    ("-S", ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study_uid(0, 1)}",
            f"SeriesInstanceUID={series_uid(0, 1, 1)}"], [instance_uid(0, 1, 1, i) for i in range(2)]),
    ("-S", ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study_uid(1, 0)}",
            f"SeriesInstanceUID={series_uid(1, 0, 0)}",
            f"SOPInstanceUID={instance_uid(1, 0, 0, 1)}"], [instance_uid(1, 0, 0, 1)]),
    ("-P", ["QueryRetrieveLevel=PATIENT", "PatientID=PAT00002"],
     [instance_uid(2, st, se, i) for st in range(2) for se in range(2) for i in range(2)]),
    ("-P", ["QueryRetrieveLevel=STUDY", "PatientID=PAT00001", f"StudyInstanceUID={study_uid(1, 1)}"],
     [instance_uid(1, 1, se, i) for se in range(2) for i in range(2)]),
])
def test_move_levels_and_models(pacs: DolmenProcess, viewer: Path, dcmtk: Dcmtk, root: str, keys: list[str],
                                expected: list[str]) -> None:
    before = {p for p in viewer.rglob("*") if p.is_file()}
    log = move(dcmtk, pacs, *keys, root=root)
    assert "Received Final Move Response (Success)" in log, log[-2000:]
    new = {p for p in viewer.rglob("*") if p.is_file()} - before
    got = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in new}
    assert got == set(expected)
    row = log_rows(pacs, "move")[-1]
    assert row["accepted"] and row["count"] == len(expected) and "to viewer" in row["reason"]


def test_move_unknown_destination(pacs: DolmenProcess, dcmtk: Dcmtk) -> None:
    log = move(dcmtk, pacs, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid(0, 0)}", dest="NOBODY")
    assert "MoveDestinationUnknown" in log, log[-2000:]
    row = log_rows(pacs, "move")[-1]
    assert not row["accepted"]
    assert "unknown move destination 'NOBODY' asked by 'VIEWER'" in row["reason"]
    assert "unknown move destination 'NOBODY' asked by 'VIEWER' at 127.0.0.1" in pacs.log_text()


@contextlib.contextmanager
def store_scp(aet: str, port: int, *, delay: float = 0.0,
              classes: tuple[str, ...] = (CT, MR)) -> Iterator[list[str]]:
    """A pynetdicom storage SCP (a move destination that is slow or takes only some classes)."""
    got: list[str] = []

    def on_store(event: evt.Event) -> int:
        time.sleep(delay)
        got.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    ae = AE(ae_title=aet)
    for uid in classes:
        ae.add_supported_context(uid)
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield got
    finally:
        server.shutdown()


def test_move_cancel(pacs: DolmenProcess, dcmtk: Dcmtk) -> None:
    with store_scp("SLOW", port_of(pacs, "slow"), delay=0.2) as got:
        log = move(dcmtk, pacs, "QueryRetrieveLevel=PATIENT", "PatientID=PAT00000", root="-P", dest="SLOW",
                   extra=("--cancel", "1"))
    assert "Received Final Move Response (Cancel" in log, log[-2000:]
    assert 1 <= len(got) < 8
    row = log_rows(pacs, "move")[-1]
    assert "cancelled" in row["reason"]


def test_move_reports_failed_instances(pacs: DolmenProcess) -> None:
    """A destination that takes CT only: the MR instances fail and are listed in the final response."""
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.2.1.2")  # Patient Root MOVE
    ds = Dataset()
    ds.QueryRetrieveLevel = "PATIENT"
    ds.PatientID = "PAT00000"
    with store_scp("CTONLY", port_of(pacs, "ctonly"), classes=(CT,)) as got:
        assoc = ae.associate("127.0.0.1", pacs.dicom_port, ae_title=pacs.aet)
        responses = list(assoc.send_c_move(ds, "CTONLY", "1.2.840.10008.5.1.4.1.2.1.2"))
        assoc.release()
    status, identifier = responses[-1]
    pending = [s for s, _ in responses[:-1]]
    assert all(s.Status == 0xFF00 for s in pending) and pending[0].NumberOfRemainingSuboperations == 7
    assert status.Status == 0xB000
    assert (status.NumberOfCompletedSuboperations, status.NumberOfFailedSuboperations) == (4, 4)
    mr = {instance_uid(0, 0, se, i) for se in range(2) for i in range(2)}  # study 0 of patient 0 is MR
    assert set(identifier.FailedSOPInstanceUIDList) == mr
    assert set(got) == {instance_uid(0, 1, se, i) for se in range(2) for i in range(2)}


# -- C-GET ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("root", "keys", "count"), [
    ("-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid(2, 1)}"], 4),
    ("-S", ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study_uid(2, 1)}",
            f"SeriesInstanceUID={series_uid(2, 1, 0)}"], 2),
    ("-S", ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study_uid(2, 1)}",
            f"SeriesInstanceUID={series_uid(2, 1, 0)}",
            f"SOPInstanceUID={instance_uid(2, 1, 0, 0)}"], 1),
    ("-P", ["QueryRetrieveLevel=PATIENT", "PatientID=PAT00001"], 8),
])
def test_get_levels_and_models(pacs: DolmenProcess, dcmtk: Dcmtk, tmp_path: Path, root: str, keys: list[str],
                               count: int) -> None:
    args = ["-v", root, "-aet", "VIEWER", "-aec", pacs.aet, "-od", str(tmp_path)]
    for k in keys:
        args += ["-k", k]
    result = dcmtk("getscu", *args, "127.0.0.1", str(pacs.dicom_port), check=False, timeout=60)
    log = result.stdout + result.stderr
    assert "Received C-GET Response (Success)" in log, log[-2000:]
    assert len(received(tmp_path)) == count
    row = log_rows(pacs, "get")[-1]
    assert row["accepted"] and row["count"] == count


def test_get_with_small_pdus_arrives_whole(pacs: DolmenProcess, dcmtk: Dcmtk, tmp_path: Path,
                                           files: list[Path]) -> None:
    """The requester takes 4 KiB PDUs: the file is cut into several data fragments, and what
    arrives is the stored data set byte for byte."""
    result = dcmtk("getscu", "-v", "-S", "--max-pdu", "4096", "-aet", "VIEWER", "-aec", pacs.aet,
                   "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid(9, 0)}",
                   "-od", str(tmp_path), "127.0.0.1", str(pacs.dicom_port), check=False, timeout=60)
    assert "Received C-GET Response (Success)" in result.stdout + result.stderr
    (got,) = [p for p in tmp_path.iterdir() if p.is_file()]
    sent = pydicom.dcmread(files[-1])
    back = pydicom.dcmread(got)
    assert back.PixelData == sent.PixelData and str(back.PatientName) == "MÜLLER^JÖRG"


def test_get_counts_an_unoffered_class_as_failed(pacs: DolmenProcess) -> None:
    """The requester offers CT Image Storage only: the MR instances fail, nothing hangs."""
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.2.1.3")  # Patient Root GET
    ae.add_requested_context(CT)
    got: list[str] = []

    def on_store(event: evt.Event) -> int:
        got.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    ds = Dataset()
    ds.QueryRetrieveLevel = "PATIENT"
    ds.PatientID = "PAT00000"
    started = time.monotonic()
    assoc = ae.associate("127.0.0.1", pacs.dicom_port, ae_title=pacs.aet,
                         ext_neg=[build_role(CT, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    responses = list(assoc.send_c_get(ds, "1.2.840.10008.5.1.4.1.2.1.3"))
    assoc.release()
    assert time.monotonic() - started < 10
    status, identifier = responses[-1]
    assert status.Status == 0xB000
    assert (status.NumberOfCompletedSuboperations, status.NumberOfFailedSuboperations) == (4, 4)
    mr = {instance_uid(0, 0, se, i) for se in range(2) for i in range(2)}
    assert set(identifier.FailedSOPInstanceUIDList) == mr
    assert len(got) == 4


def test_get_cancel(pacs: DolmenProcess) -> None:
    """A C-CANCEL during a C-GET stops the C-STOREs and ends with Cancel and the counts."""
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.2.1.3")  # Patient Root GET
    for uid in (CT, MR):
        ae.add_requested_context(uid)
    got: list[str] = []

    def on_store(event: evt.Event) -> int:
        time.sleep(0.2)
        got.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    ds = Dataset()
    ds.QueryRetrieveLevel = "PATIENT"
    ds.PatientID = "PAT00002"
    assoc = ae.associate("127.0.0.1", pacs.dicom_port, ae_title=pacs.aet,
                         ext_neg=[build_role(CT, scp_role=True), build_role(MR, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    responses = []
    for status, identifier in assoc.send_c_get(ds, "1.2.840.10008.5.1.4.1.2.1.3", msg_id=7):
        responses.append((status, identifier))
        if len(responses) == 1:
            assoc.send_c_cancel(7, query_model="1.2.840.10008.5.1.4.1.2.1.3")
    assoc.release()
    status, identifier = responses[-1]
    assert status.Status == 0xFE00
    assert status.NumberOfRemainingSuboperations > 0
    assert status.NumberOfCompletedSuboperations == len(got) < 8
    assert "cancelled" in log_rows(pacs, "get")[-1]["reason"]


# -- access control and the association log ---------------------------------------------------


def test_get_takes_every_kind_of_store_response(pacs: DolmenProcess) -> None:
    """Dolmen's C-GET reads the requester's C-STORE responses in the thread that sends the
    instances. A response it does not parse there (one with an Offending Element) goes back to
    pynetdicom's reader and counts as what it says; the instances after it still go out."""
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.2.1.3")  # Patient Root GET
    for uid in (CT, MR):
        ae.add_requested_context(uid)
    got: list[str] = []

    def on_store(event: evt.Event) -> Any:
        got.append(str(event.request.AffectedSOPInstanceUID))
        status = Dataset()
        if len(got) == 2:  # a warning with a comment: still the parsed fast path
            status.Status = 0xB000
            status.ErrorComment = "coerced"
            return status
        if len(got) == 4:  # an error naming an element: left to pynetdicom
            status.Status = 0xC000
            status.OffendingElement = [0x00100010]
            status.ErrorComment = "cannot process"
            return status
        return 0

    ds = Dataset()
    ds.QueryRetrieveLevel = "PATIENT"
    ds.PatientID = "PAT00002"
    assoc = ae.associate("127.0.0.1", pacs.dicom_port, ae_title=pacs.aet,
                         ext_neg=[build_role(CT, scp_role=True), build_role(MR, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    responses = list(assoc.send_c_get(ds, "1.2.840.10008.5.1.4.1.2.1.3"))
    assoc.release()
    status, identifier = responses[-1]
    assert status.Status == 0xB000
    counts = (status.NumberOfCompletedSuboperations, status.NumberOfFailedSuboperations,
              status.NumberOfWarningSuboperations)
    assert counts == (6, 1, 1)
    assert identifier.FailedSOPInstanceUIDList == got[3]
    assert len(got) == 8
    assert responses[0][0].NumberOfRemainingSuboperations == 7


def test_access_rules_of_the_shared_server(pacs: DolmenProcess, dcmtk: Dcmtk, tmp_path: Path) -> None:
    # An unknown AE may store and echo (default [dicom] unknown_aet) but not query or retrieve.
    answers, log = find(dcmtk, pacs, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=PAT00001",
                        aet="STRANGER")
    assert answers == [] and "Unknown Status: 0x124" in log, log[-2000:]
    row = log_rows(pacs, "find")[-1]
    assert not row["accepted"] and row["calling_aet"] == "STRANGER"
    assert row["reason"].startswith("unknown AE title 'STRANGER' may not find")
    # A declared modality whose allow list lacks move.
    log = move(dcmtk, pacs, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid(0, 0)}", aet="LIMITED")
    assert "Unknown Status: 0x124" in log or "NotAuthorized" in log.replace(" ", ""), log[-2000:]
    assert log_rows(pacs, "move")[-1]["reason"] == "modality 'limited' (LIMITED) is not allowed to move"
    # ... which may still find.
    answers, _ = find(dcmtk, pacs, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=PAT00001",
                      "StudyInstanceUID",
                      aet="LIMITED")
    assert len(answers) == 2


def test_no_acceptable_presentation_context_is_logged(pacs: DolmenProcess) -> None:
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context("1.2.840.10008.5.1.4.31")  # Modality Worklist FIND: not served
    assoc = ae.associate("127.0.0.1", pacs.dicom_port, ae_title=pacs.aet)
    if assoc.is_established:
        assoc.release()
    row = wait_for(lambda: [r for r in log_rows(pacs, "negotiate") if "Worklist" in r["reason"]],
                   what="the negotiate row")[-1]
    assert not row["accepted"]
    assert row["reason"].startswith("no acceptable presentation context for Modality Worklist")


@pytest.fixture(scope="module")
def strict(tmp_short: Path, files: list[Path]) -> Iterator[DolmenProcess]:
    """A Dolmen with every check on: called AE, calling host, unknown AEs may only echo, 2 answers at most,
    keys the index lacks read from the files."""
    doc = make_config_doc(tmp_short / "strict", storage={"fsync": False}, dicom={
        "aet": "STRICT", "check_called_aet": True, "check_calling_host": True, "unknown_aet": ["echo"],
        "max_find_results": 2, "find_read_files": True,
    }, **{
        "modalities.local": {"aet": "LOCAL", "host": "127.0.0.1", "port": 104},
        "modalities.far": {"aet": "FAR", "host": "192.0.2.10", "port": 104},
    })
    server = start_sidecar(write_toml(tmp_short / "strict.toml", doc), tmp_short / "strict.log")
    try:
        Dcmtk()("storescu", "-aet", "LOCAL", "-aec", "STRICT", "127.0.0.1", str(server.dicom_port),
                *files[:4])
        yield server
    finally:
        server.stop()


def test_strict_refusals(strict: DolmenProcess, dcmtk: Dcmtk, tmp_path: Path) -> None:
    # Wrong called AE: the association is rejected.
    result = dcmtk("echoscu", "-aet", "LOCAL", "-aec", "NOTME", "127.0.0.1", str(strict.dicom_port),
                   check=False)
    assert result.returncode != 0
    row = log_rows(strict, "associate")[-1]
    assert not row["accepted"] and row["called_aet"] == "NOTME"
    assert row["reason"] == ("wrong called AE: 'NOTME' is not this server's AE title 'STRICT' "
                             "([dicom] check_called_aet)")
    # Declared AE from the wrong host.
    answers, log = find(dcmtk, strict, tmp_path, "QueryRetrieveLevel=STUDY", "StudyInstanceUID", aet="FAR")
    assert answers == []
    assert log_rows(strict, "find")[-1]["reason"] == ("AE title 'FAR' called from 127.0.0.1, "
                                                      "not from its declared host")
    # Unknown AE: echo only.
    assert dcmtk("echoscu", "-aet", "STRANGER", "-aec", "STRICT", "127.0.0.1", str(strict.dicom_port),
                 check=False).returncode == 0


def test_strict_store_refused_for_unknown(strict: DolmenProcess, dcmtk: Dcmtk, files: list[Path]) -> None:
    result = dcmtk("storescu", "-aet", "STRANGER", "-aec", "STRICT", "127.0.0.1", str(strict.dicom_port),
                   files[-1],
                   check=False)
    assert "NotAuthorized" in (result.stdout + result.stderr).replace(" ", "") or result.returncode != 0
    row = log_rows(strict, "store")[-1]
    assert not row["accepted"] and row["reason"].startswith("unknown AE title 'STRANGER' may not store")


def test_find_limit_and_keys_read_from_files(strict: DolmenProcess, dcmtk: Dcmtk, tmp_path: Path) -> None:
    answers, log = find(dcmtk, strict, tmp_path, "QueryRetrieveLevel=IMAGE",
                        f"StudyInstanceUID={study_uid(0, 0)}",
                        "SOPInstanceUID", "SliceThickness", "PixelSpacing", aet="LOCAL")
    assert len(answers) == 2
    assert "OutOfResources" in log.replace(" ", "") or "a700" in log.lower(), log[-2000:]
    assert all(float(a.SliceThickness) == 2.5 for a in answers)  # not in the index: read from the file
    row = log_rows(strict, "find")[-1]
    assert row["accepted"] and row["count"] == 2 and "more than 2 matches" in row["reason"]


# -- Orthanc queries Dolmen and retrieves by C-MOVE -------------------------------------------


def test_orthanc_queries_and_retrieves_by_move(pacs: DolmenProcess, orthanc_port: int,
                                               tmp_short: Path) -> None:
    orthanc = start_orthanc(tmp_short / "orthanc", "ORTHANC", DicomPort=orthanc_port,
                            DicomModalities={"dolmen": [pacs.aet, "127.0.0.1", pacs.dicom_port]})
    try:
        answer = orthanc.post("/modalities/dolmen/query",
                              json={"Level": "Study", "Query": {"PatientID": "PAT00001", "StudyDate": ""}})
        answer.raise_for_status()
        query_id = answer.json()["ID"]
        answers = orthanc.get(f"/queries/{query_id}/answers?expand").json()
        assert len(answers) == 2
        assert sorted(a["0020,000d"]["Value"] for a in answers) == sorted([study_uid(1, 0), study_uid(1, 1)])
        retrieve = orthanc.post(f"/queries/{query_id}/retrieve",
                                json={"TargetAet": "ORTHANC", "Synchronous": True})
        retrieve.raise_for_status()
        stats = orthanc.get("/statistics").json()
        assert stats["CountStudies"] == 2 and stats["CountInstances"] == 8
    finally:
        orthanc.stop()


# -- many associations at once ----------------------------------------------------------------


def test_concurrent_clients_and_a_stalled_one(pacs: DolmenProcess, viewer: Path, dcmtk: Dcmtk, tmp_path: Path,
                                              files: list[Path]) -> None:
    """8 clients at once all succeed while two stalled ones (one silent, one half an A-ASSOCIATE-RQ)
    hold their own connections open."""
    silent = socket.create_connection(("127.0.0.1", pacs.dicom_port))
    half = socket.create_connection(("127.0.0.1", pacs.dicom_port))
    half.sendall(b"\x01\x00\x00\x00\x00\xcd\x00\x01")  # an A-ASSOCIATE-RQ header, then nothing
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    def run(name: str, tool: str, *args: str) -> None:
        results[name] = dcmtk(tool, *args, check=False, timeout=60)

    port = str(pacs.dicom_port)
    jobs = []
    for n in range(3):
        jobs.append((f"find{n}", "findscu", "-S", "-aet", "VIEWER", "-aec", pacs.aet,
                     "-k", "QueryRetrieveLevel=STUDY",
                     "-k", f"PatientID=PAT0000{n}", "-k", "StudyInstanceUID", "127.0.0.1", port))
        jobs.append((f"move{n}", "movescu", "-S", "-aet", "VIEWER", "-aec", pacs.aet, "-aem", "VIEWER",
                     "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid(n, 0)}",
                     "127.0.0.1", port))
    for n in range(2):
        jobs.append((f"store{n}", "storescu", "-aet", "MODALITY", "-aec", pacs.aet, "127.0.0.1", port,
                     *map(str, files[n * 6:(n + 1) * 6])))
    started = time.monotonic()
    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    elapsed = time.monotonic() - started
    silent.close()
    half.close()
    assert len(results) == 8
    for name, result in results.items():
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
    assert elapsed < 20, f"the stalled clients held the others up: {elapsed:.1f} s"


def test_answer_encoder_writes_what_pydicom_writes() -> None:
    """The C-FIND answer fast path gives pydicom's bytes, and leaves what it cannot write to pydicom."""
    from pynetdicom.dsutils import encode

    from dicomnode.net import find

    elements = [(0x00080005, "CS", "ISO_IR 192"), (0x00080020, "DA", "20150101"), (0x00080052, "CS", "STUDY"),
                (0x00080061, "CS", "CT\\MR"), (0x00080080, "LO", None), (0x00100010, "PN", "MÜLLER^JÖRG"),
                (0x0020000D, "UI", "1.2.345"), (0x00201208, "IS", "12")]
    for implicit in (True, False):
        assert find.encode_answer(elements, implicit) == encode(find.answer_dataset(elements), implicit, True)
    assert find.encode_answer([(0x00081110, "SQ", [])], True) is None


def test_store_response_parser_reads_what_pynetdicom_writes() -> None:
    """The C-STORE-RSP fast path (sub-operations and send jobs) reads the command set as
    pynetdicom would, and leaves anything else to it."""
    from pynetdicom.dsutils import encode

    from dicomnode.net import wire
    command = Dataset()
    command.AffectedSOPClassUID = CT
    command.CommandField = 0x8001
    command.MessageIDBeingRespondedTo = 7
    command.CommandDataSetType = 0x0101
    command.Status = 0xB007
    command.ErrorComment = "coerced"
    command.AffectedSOPInstanceUID = "1.2.3"
    body = encode(command, True, True)
    raw = b"\x00\x00\x00\x00\x04\x00\x00\x00" + len(body).to_bytes(4, "little") + body
    got = wire.parse_store_response(raw)
    assert got is not None
    assert (got.MessageIDBeingRespondedTo, got.Status, got.ErrorComment) == (7, 0xB007, "coerced")
    command.CommandField = 0x8020  # a C-FIND-RSP: not for the fast path
    assert wire.parse_store_response(encode(command, True, True)) is None
    assert wire.parse_store_response(b"\x00\x00\x00\x01") is None
