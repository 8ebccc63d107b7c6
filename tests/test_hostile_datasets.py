"""Hostile data sets through every door (issue 7, datasets): C-STORE written PDU by PDU,
STOW-RS, the upload form and ``dolmen import``; the survival contract after each case."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicomnode.net.latency import encode_file_meta
from tests.conftest import ROOT
from tests.conftest import DolmenProcess
from tests.conftest import make_config_doc
from tests.conftest import start_dolmen
from tests.conftest import write_toml
from tests.hostile import CT_IMAGE_STORAGE
from tests.hostile import Survival
from tests.hostile import assert_no_traceback
from tests.hostile import hostile_sections
from tests.hostile import raw_store
from tests.hostile import rss_kb
from tests.hostile import small_instance

EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ROOT_UID = "1.2.826.0.1.3680043.10.1078.5"
EVIL_DIR = Path(tempfile.gettempdir()) / "dolmen-hostile-target"


def explicit(ds: Dataset) -> bytes:
    """``ds`` as an Explicit VR Little Endian data set, without meta."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return fp.getvalue()


def split(ds: Dataset, tag: int) -> tuple[bytes, bytes]:
    """``ds`` encoded in two parts: the elements before ``tag`` and those after."""
    from pydicom.filewriter import correct_ambiguous_vr

    correct_ambiguous_vr(ds, True)
    low, high = Dataset(), Dataset()
    for elem in ds:
        (low if elem.tag < tag else high).add(elem)
    return explicit(low), explicit(high)


def part10(
    dataset: bytes, sop_class: str, sop_uid: str, ts: str = EXPLICIT, preamble: bytes = b"\0" * 128
) -> bytes:
    return preamble + b"DICM" + encode_file_meta(sop_class, sop_uid, ts) + dataset


@dataclass
class Case:
    """A hostile object: its data set, what the command set and meta say, what must happen."""

    name: str
    dataset: bytes
    sop_uid: str
    expect: str  # "rejected" or "stored"
    sop_class: str = CT_IMAGE_STORAGE
    ts: str = EXPLICIT
    command_uid: str | None = None  # C-STORE command's SOP Instance UID, when it lies
    command_class: str | None = None
    file: bytes | None = None  # the Part 10 file, when not built from ``dataset``
    doors: tuple[str, ...] = ("c-store", "stow", "upload")  # and dolmen import, all cases in one run
    forbidden: list[Path] = field(default_factory=list)
    problem: str = ""

    def part10(self) -> bytes:
        return (
            self.file
            if self.file is not None
            else part10(self.dataset, self.sop_class, self.sop_uid, self.ts)
        )


def _with(n: int, **values: str) -> tuple[bytes, str]:
    ds = small_instance(f"{ROOT_UID}.{n}", n=1)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return explicit(ds), str(ds.SOPInstanceUID)


def _path_uid_cases() -> list[Case]:
    evil = EVIL_DIR / "x"
    cases = []
    for n, (label, keyword, value) in enumerate(
        [
            ("SOP Instance UID ../../x", "SOPInstanceUID", "../../../../../../tmp/dolmen-hostile-target/x"),
            ("Study Instance UID absolute path", "StudyInstanceUID", str(evil)),
            ("Series Instance UID with NUL", "SeriesInstanceUID", "1.2.3\0/../../dolmen-hostile-target/x"),
            ("SOP Instance UID over 64 characters", "SOPInstanceUID", "1." + "2" * 80),
        ],
        start=1,
    ):
        data, sop = _with(n, **{keyword: value})
        cases.append(Case(label, data, sop, "rejected", forbidden=[evil, EVIL_DIR], problem=keyword))
    return cases


def _nested(depth: int) -> bytes:
    """(0040,A730) Content Sequence items nested ``depth`` deep, undefined lengths."""
    open_ = (
        struct.pack("<HH", 0x0040, 0xA730)
        + b"SQ\0\0"
        + b"\xff\xff\xff\xff"
        + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    )
    close = struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return open_ * depth + close * depth


def _deflated(megabytes: int) -> bytes:
    """A deflated data set whose (0019,1010) OB holds ``megabytes`` MiB of zeros (~1000×)."""
    ds = small_instance(f"{ROOT_UID}.90", n=1)
    low, high = split(ds, 0x00191010)
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = [
        z.compress(low + struct.pack("<HH", 0x0019, 0x1010) + b"OB\0\0" + struct.pack("<L", megabytes << 20))
    ]
    zeros = b"\0" * (1 << 20)
    for _ in range(megabytes):
        out.append(z.compress(zeros))
    out.append(z.compress(high))
    out.append(z.flush())
    return b"".join(out)


def cases() -> list[Case]:
    out = _path_uid_cases()
    ds = small_instance(f"{ROOT_UID}.10", n=1)
    good = explicit(ds)
    out.append(
        Case(
            "command names another SOP Instance UID",
            good,
            ds.SOPInstanceUID,
            "rejected",
            command_uid=f"{ROOT_UID}.10.999",
            doors=("c-store",),
            problem="C-STORE command names",
        )
    )
    out.append(
        Case(
            "command names another SOP class",
            good,
            ds.SOPInstanceUID,
            "rejected",
            command_class=MR_IMAGE_STORAGE,
            doors=("c-store",),
            problem="C-STORE command names",
        )
    )
    ds = small_instance(f"{ROOT_UID}.11", n=1)
    low, high = split(ds, 0x00191010)
    lie = struct.pack("<HH", 0x0019, 0x1010) + b"OB\0\0" + struct.pack("<L", 0x7FFFFFF0) + b"\0" * 10
    out.append(Case("element length past the end", low + lie + high, ds.SOPInstanceUID, "rejected"))
    ds = small_instance(f"{ROOT_UID}.12", n=1)
    out.append(Case("truncated in the header", explicit(ds)[:300], ds.SOPInstanceUID, "rejected"))
    ds = small_instance(f"{ROOT_UID}.13", n=1)
    low, high = split(ds, 0x00081140)
    broken = (
        struct.pack("<HH", 0x0008, 0x1140)
        + b"SQ\0\0"
        + struct.pack("<L", 40)
        + struct.pack("<HHL", 0xFFFE, 0xE000, 500)
        + b"\x08\x00\x50\x11UI\x10\x00"
        + b"1.2.3.4.5.6.7.8\0"
    )
    out.append(
        Case("sequence item longer than its sequence", low + broken + high, ds.SOPInstanceUID, "rejected")
    )
    ds = small_instance(f"{ROOT_UID}.14", n=1)
    low, high = split(ds, 0x0040A730)
    out.append(
        Case(
            "10,000-deep sequence nesting",
            low + _nested(10_000) + high,
            ds.SOPInstanceUID,
            "rejected",
            problem="nest|deep|sequence",
        )
    )
    ds = small_instance(f"{ROOT_UID}.15", n=1)
    ds.SpecificCharacterSet = "ISO_IR 999"
    ds.PatientName = b"Dol\xffmen^\x1b$Bxx\x1b(B"
    out.append(Case("unknown character set", explicit(ds), ds.SOPInstanceUID, "stored"))
    ds = small_instance(f"{ROOT_UID}.16", n=1)
    ds.PatientName = b"\x1b$B\xff\xfe"
    # A NUL in the value: pydicom's own writer raises on it, so the bytes are patched.
    data = explicit(ds).replace(b"ISO_IR 100", b"\x1b\x00\\ISO_IR8", 1)
    # pydicom cannot read a header whose character set holds a NUL: refused with a reason.
    out.append(Case("invalid character set", data, ds.SOPInstanceUID, "rejected"))
    ds = small_instance(f"{ROOT_UID}.17", n=1)
    out.append(
        Case(
            "missing file meta",
            explicit(ds),
            ds.SOPInstanceUID,
            "rejected",
            file=explicit(ds),
            doors=("stow", "upload"),
        )
    )
    return out


CASES = {c.name: c for c in cases()}


@pytest.fixture(scope="module")
def server() -> Iterator[DolmenProcess]:
    folder = Path(tempfile.mkdtemp(prefix="dd-", dir="/tmp"))
    sections = hostile_sections(dicom={"max_object_mb": 64})
    config = write_toml(folder / "c.toml", make_config_doc(folder / "data", **sections))
    srv = start_dolmen(config, folder / "serve.log")
    yield srv
    srv.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def warm(server: DolmenProcess) -> Survival:
    return Survival(server)


@pytest.fixture
def survival(warm: Survival) -> Survival:
    warm.rebase()
    return warm


def stored(server: DolmenProcess, sop_uid: str) -> bool:
    import sqlite3

    con = sqlite3.connect(server.data / "index.db", timeout=30)
    try:
        return bool(
            con.execute("SELECT count(*) FROM instance WHERE sop_instance_uid = ?", (sop_uid,)).fetchone()[0]
        )
    finally:
        con.close()


def send(door: str, server: DolmenProcess, case: Case, tmp: Path) -> str:
    """Send ``case`` through ``door``; returns "stored" or "rejected" as the door reports it."""
    if door == "c-store":
        status = raw_store(
            server.dicom_port,
            case.command_class or case.sop_class,
            case.command_uid or case.sop_uid,
            case.dataset,
            case.ts,
        )
        return "stored" if status in (0x0000, 0xB000, 0xB007, 0xB006) else "rejected"
    data = case.part10()
    if door == "stow":
        boundary = "hostile-boundary-7"
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
        assert_no_traceback(r.text, "STOW-RS answer")
        assert r.status_code in (200, 202, 409), (r.status_code, r.text[:500])
        return "stored" if r.status_code == 200 else "rejected"
    if door == "upload":
        r = server.post(
            "/upload",
            files={"files": ("hostile.dcm", data, "application/dicom")},
            headers={"Accept": "application/json"},
        )
        assert_no_traceback(r.text, "upload answer")
        assert r.status_code == 200, (r.status_code, r.text[:500])
        rows = r.json()["files"]
        return "stored" if rows and rows[0]["status"] in ("stored", "duplicate") else "rejected"
    raise AssertionError(f"unknown door {door}")


def _delete(server: DolmenProcess, sop_uid: str) -> None:
    """Remove a stored case again so the next door stores it afresh (through the page's delete)."""
    import sqlite3

    con = sqlite3.connect(server.data / "index.db", timeout=30)
    try:
        row = con.execute("SELECT public_id FROM instance WHERE sop_instance_uid = ?", (sop_uid,)).fetchone()
    finally:
        con.close()
    if row:
        r = server.post(f"/instances/{row[0]}/delete", headers={"Accept": "application/json"})
        assert r.status_code in (200, 204, 302, 303), r.status_code


PARAMS = [(name, door) for name, case in CASES.items() for door in case.doors]


@pytest.mark.parametrize(("name", "door"), PARAMS, ids=[f"{n}-{d}" for n, d in PARAMS])
def test_hostile_dataset(
    server: DolmenProcess, survival: Survival, name: str, door: str, tmp_path: Path
) -> None:
    case = CASES[name]
    EVIL_DIR.mkdir(exist_ok=True)
    shutil.rmtree(EVIL_DIR)
    outcome = send(door, server, case, tmp_path)
    assert outcome == case.expect, f"{case.name} through {door}: {outcome}, expected {case.expect}"
    assert stored(server, case.sop_uid) == (case.expect == "stored")
    if case.expect == "stored":
        # Its pages render with the hostile strings in them.
        r = server.get("/api/statistics")
        assert r.status_code == 200
        r = server.get("/studies", params={"q": "Dol"})
        assert r.status_code == 200
        assert_no_traceback(r.text, "study list")
        _delete(server, case.sop_uid)
    survival.check(forbidden=case.forbidden)


def test_hostile_datasets_through_dolmen_import(
    server: DolmenProcess, survival: Survival, tmp_path: Path
) -> None:
    """Every case as a file given to ``dolmen import`` (one run: an interpreter per case is slow)."""
    EVIL_DIR.mkdir(exist_ok=True)
    shutil.rmtree(EVIL_DIR)
    paths = {}
    for n, case in enumerate(CASES.values()):
        if "c-store" in case.doors and case.command_uid is None and case.command_class is None or case.file:
            paths[case.name] = tmp_path / f"case{n:02d}.dcm"
            paths[case.name].write_bytes(case.part10())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "webapp.cli",
            "import",
            "--config",
            str(server.config),
            *map(str, paths.values()),
        ],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=300,
    )
    assert_no_traceback(result.stdout + result.stderr, "dolmen import output")
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])  # some were rejected
    for name, path in paths.items():
        case = CASES[name]
        assert (f"rejected {path}" in result.stderr) == (case.expect == "rejected"), (
            name,
            result.stderr[-3000:],
        )
        assert stored(server, case.sop_uid) == (case.expect == "stored"), name
        if case.expect == "stored":
            _delete(server, case.sop_uid)
    survival.check(forbidden=[EVIL_DIR])


def test_deflated_data_set_inflating_1000_times_is_bounded(
    server: DolmenProcess, survival: Survival, tmp_path: Path
) -> None:
    """256 KiB of deflate inflating to 256 MiB: memory stays bounded, the answer is clear."""
    data = _deflated(256)
    assert len(data) < 1024 * 1024
    sop = f"{ROOT_UID}.90.1.1"
    pid = server.sidecar_pid()
    before = rss_kb(pid)
    status = raw_store(server.dicom_port, CT_IMAGE_STORAGE, sop, data, DEFLATED)
    assert status is not None, "no answer to the deflated C-STORE"
    assert rss_kb(pid) < before + 150_000, "inflating the data set took more than 150 MB"
    if status == 0:
        _delete(server, sop)
    case = Case("deflate", data, sop, "", ts=DEFLATED)
    r = server.post(
        "/upload",
        files={"files": ("bomb.dcm", case.part10(), "application/dicom")},
        headers={"Accept": "application/json"},
    )
    assert r.status_code == 200
    assert_no_traceback(r.text)
    survival.check()


def test_preamble_holding_an_executable_is_downloaded_as_an_attachment(
    server: DolmenProcess, survival: Survival
) -> None:
    ds = small_instance(f"{ROOT_UID}.30", n=1)
    preamble = (
        b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"#!/bin/sh\nrm -rf /\n"
    ).ljust(128, b"\0")
    data = part10(explicit(ds), CT_IMAGE_STORAGE, ds.SOPInstanceUID, preamble=preamble)
    r = server.post(
        "/upload",
        files={"files": ("setup.exe", data, "application/octet-stream")},
        headers={"Accept": "application/json"},
    )
    row = r.json()["files"][0]
    assert row["status"] == "stored", row
    for path in (f"/instances/{row['instance_id']}/file", f"/studies/{row['study_id']}/archive"):
        r = server.get(path)
        assert r.status_code == 200, path
        assert r.headers["Content-Disposition"].startswith("attachment"), (path, r.headers)
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Content-Type"] in ("application/dicom", "application/zip"), r.headers[
            "Content-Type"
        ]
    _delete(server, ds.SOPInstanceUID)
    survival.check()
