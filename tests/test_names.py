"""Person names as people write them (issue 18): every component group shown, and a search by any
group (PS3.5 6.2.1.1) in the index, C-FIND, QIDO-RS and the study list."""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicomnode.archive import index
from dicomnode.archive import query
from dicomnode.archive.ingest import Ingestor
from dicomnode.archive.ingest import Source
from dicomnode.archive.store import Store
from webapp.present import person

CHARSETS = Path(pydicom.data.__file__).parent / "charset_files"
YAMADA = "Yamada^Tarou=山田^太郎=やまだ^たろう"  # chrH31
WANG = "Wang^XiaoDong=王^小東"  # chrX1


@pytest.mark.parametrize(("value", "shown"), [
    ("DOE^JOHN^^DR", "DOE, JOHN"),
    (YAMADA, "Yamada, Tarou — 山田 太郎 (やまだ たろう)"),
    (WANG, "Wang, XiaoDong — 王 小東"),
    ("=山田^太郎", "山田 太郎"),
    ("Hong^Gildong=洪^吉洞=홍^길동", "Hong, Gildong — 洪 吉洞 (홍 길동)"),
    ("DOE", "DOE"),
    ("", ""),
])
def test_every_group_is_shown(value: str, shown: str) -> None:
    assert person(value) == shown


@pytest.fixture
def archive(tmp_path: Path, index_url: str) -> Iterator[Store]:
    index.open_index(index_url)
    store = Store(tmp_path / "data", fsync=False)
    ingestor = Ingestor(store)
    for name in ("chrH31.dcm", "chrX1.dcm", "chrJapMulti.dcm", "chrFren.dcm"):
        assert ingestor.ingest_copy(CHARSETS / name, Source()).ok
    yield store
    store.close()
    index.close_index()


def _names(pattern: str, level: str = "PATIENT") -> set[str]:
    return {str(row.patient_name if level == "PATIENT" else row.patient.patient_name)
            for row in query.select(level, {"PatientName": pattern})}


@pytest.mark.parametrize(("pattern", "found"), [
    ("山田*", {YAMADA}),
    ("やまだ*", {YAMADA}),
    ("*太郎", {YAMADA}),
    ("YAMADA*", {YAMADA}),
    ("yamada^tarou", {YAMADA}),           # the alphabetic group alone, exactly
    ("山田^太郎", {YAMADA}),               # the ideographic group alone, exactly
    (YAMADA, {YAMADA}),                    # the whole name
    ("王*", {WANG}),
    ("王^小東", {WANG}),
    ("Wang^XiaoDong", {WANG}),
    ("山田", set()),                       # no wildcard: a whole group, not a part of one
    ("=山田*", set()),                     # with "=": matched against the whole name
])
def test_a_query_matches_any_group(archive: Store, pattern: str, found: set[str]) -> None:
    assert _names(pattern) & {YAMADA, WANG} == found
    assert _names(pattern, "STUDY") & {YAMADA, WANG} == found


def test_old_indexes_get_the_group_columns_filled(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    index.open_index(url)
    Ingestor(Store(tmp_path / "data", fsync=False)).ingest_copy(CHARSETS / "chrH31.dcm", Source())
    index.close_index()
    with sqlite3.connect(tmp_path / "old.db") as raw:  # as an index written before the columns existed
        for column in ("patient_name_ideo", "patient_name_phon"):
            raw.execute(f'DROP INDEX IF EXISTS "patient_{column}"')
            raw.execute(f"ALTER TABLE patient DROP COLUMN {column}")
    index.open_index(url)
    try:
        assert _names("山田*") == {YAMADA} and _names("やまだ*") == {YAMADA}
    finally:
        index.close_index()


def test_c_find_qido_and_the_pages_by_any_group(dolmen_factory: Any, dcmtk: Any) -> None:
    import requests

    server = dolmen_factory(dicom={"unknown_aet": ["echo", "store", "find"]})
    dcmtk("storescu", "-aec", server.aet, "127.0.0.1", str(server.dicom_port),
          str(CHARSETS / "chrH31.dcm"), str(CHARSETS / "chrX1.dcm"))
    found = dcmtk("findscu", "-v", "-S", "-aec", server.aet, "-k", "QueryRetrieveLevel=STUDY",
                  "-k", "SpecificCharacterSet=ISO_IR 192", "-k", "PatientName=山田*", "-k", "StudyInstanceUID",
                  "127.0.0.1", str(server.dicom_port))
    assert (found.stdout + found.stderr).count("Find Response:") == 1
    assert "Yamada" in found.stdout + found.stderr
    answer = requests.get(f"{server.url}/dicom-web/studies", params={"PatientName": "王*"}, timeout=30)
    assert answer.status_code == 200 and len(answer.json()) == 1
    assert answer.json()[0]["00100010"]["Value"][0]["Ideographic"] == "王^小東"
    patients = server.get("/patients").text
    assert "Yamada, Tarou — 山田 太郎 (やまだ たろう)" in patients and "Wang, XiaoDong — 王 小東" in patients
    listed = server.get("/studies", params={"name": "山田"}).text
    assert "Yamada, Tarou — 山田 太郎" in listed and "Wang, XiaoDong" not in listed


def test_an_external_viewer_is_offered_on_study_pages(dolmen_factory: Any) -> None:
    import requests

    server = dolmen_factory(viewers__ohif={"url": "https://ohif.example.org/viewer?StudyInstanceUIDs={StudyInstanceUID}",
                                           "label": "OHIF"},
                            viewers__weasis={"url": "https://weasis.example.org/open?pid={PatientID}"})
    answer = requests.post(server.url + "/instances", data=(CHARSETS / "chrH31.dcm").read_bytes(), timeout=30)
    study = answer.json()["ParentStudy"]
    page = server.get(f"/studies/{study}").text
    uid = str(pydicom.dcmread(CHARSETS / "chrH31.dcm").StudyInstanceUID)
    assert f'href="https://ohif.example.org/viewer?StudyInstanceUIDs={uid}"' in page and "Open in OHIF" in page
    assert 'href="https://weasis.example.org/open?pid=H31EXAMPLE"' in page and "Open in weasis" in page
