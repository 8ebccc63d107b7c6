"""The one ingest path: stored / duplicate / rejected-with-reason, and nothing left behind."""
from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_charset_files
from pydicom.data import get_testdata_file

from dicomnode import demodata
from dicomnode import ids
from dicomnode.archive import index
from dicomnode.archive.index import Instance
from dicomnode.archive.index import Patient
from dicomnode.archive.index import Series
from dicomnode.archive.index import Study
from dicomnode.archive.ingest import Ingestor
from dicomnode.archive.ingest import Source
from dicomnode.archive.store import Store
from tests.conftest import make_store


@pytest.fixture(params=["files", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, index_url: str) -> Iterator[Store]:
    """A store on files and on a real S3 server (SeaweedFS), each on SQLite and PostgreSQL.

    Tests marked ``file_store`` look at the file store's folders and fsyncs: run on files only.
    """
    if request.param == "s3" and request.node.get_closest_marker("file_store"):
        pytest.skip("about the file store's folders and fsyncs")
    index.open_index(index_url)
    store = make_store(request.param, tmp_path / "data", request)
    yield store
    store.close()
    index.close_index()


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _files(store: Store) -> list[str]:
    return sorted(store.iter_files())


def _spool_empty(store: Store) -> bool:
    return all(not files for _, _, files in os.walk(store.tmp))


def test_store_then_duplicate(store: Store) -> None:
    ing = Ingestor(store)
    data = _bytes(demodata.make_instance(1, 0, 0, 0, 32))
    first = ing.ingest_bytes(data, Source("upload"))
    assert first.status == "stored", first.reason
    again = ing.ingest_bytes(data, Source("upload"))
    assert again.status == "duplicate"
    assert Instance.select().count() == 1 and len(_files(store)) == 1
    inst = Instance.get()
    assert store.path(inst.path).read_bytes() == data  # stored as received
    assert _spool_empty(store)


def test_identifiers_are_orthanc_style(store: Store) -> None:
    ds = demodata.make_instance(3, 1, 0, 2, 32)
    result = Ingestor(store).ingest_bytes(_bytes(ds), Source())
    assert result.patient_id == ids.patient_id("PAT00003")
    assert result.study_id == ids.study_id("PAT00003", ds.StudyInstanceUID)
    assert result.instance_id == ids.instance_id("PAT00003", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert ids.is_resource_id(result.instance_id)


def test_index_fields_and_counters(store: Store) -> None:
    ing = Ingestor(store)
    for se in range(2):
        for i in range(3):
            assert ing.ingest_bytes(_bytes(demodata.make_instance(2, 0, se, i, 32)), Source("dicom", "CT1", "10.1.2.3")).ok
    study = Study.get()
    assert (study.num_series, study.num_instances) == (2, 6)
    assert study.modalities_in_study == "CT" and study.accession_number == "ACC0000200"
    patient = Patient.get()
    assert (patient.num_studies, patient.num_series, patient.num_instances) == (1, 2, 6)
    assert patient.patient_name == "DUBOIS^CHLOE" and patient.patient_sex == "F"
    assert patient.size == sum(i.file_size for i in Instance.select())
    series = Series.select().order_by(Series.series_number)[0]
    assert series.num_instances == 3 and series.body_part_examined == "ABDOMEN"
    inst = Instance.select().order_by(Instance.instance_number)[0]
    assert (inst.sender_aet, inst.sender_ip, inst.origin) == ("CT1", "10.1.2.3", "dicom")
    assert inst.transfer_syntax_uid == "1.2.840.10008.1.2.1"


@pytest.mark.parametrize("data, reason", [
    (b"hello, not dicom" * 20, "Not a DICOM file: no 'DICM' prefix at byte 128"),
    (b"", "Not a DICOM file"),
])
def test_not_dicom_is_rejected_and_leaves_nothing(store: Store, data: bytes, reason: str) -> None:
    result = Ingestor(store).ingest_bytes(data, Source())
    assert result.status == "rejected" and reason in result.reason
    assert _files(store) == [] and _spool_empty(store) and Instance.select().count() == 0


def test_truncated_file_is_rejected(store: Store) -> None:
    data = _bytes(demodata.make_instance(1, 0, 0, 0, 64))
    result = Ingestor(store).ingest_bytes(data[: len(data) - 100], Source())
    assert result.status == "rejected" and "Truncated" in result.reason
    assert _files(store) == [] and _spool_empty(store)


@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_uid_is_rejected(store: Store, keyword: str) -> None:
    ds = demodata.make_instance(1, 0, 0, 0, 16)
    delattr(ds, keyword)  # the file meta keeps its copy of the SOP Instance UID
    result = Ingestor(store).ingest_bytes(_bytes(ds), Source())
    assert result.status == "rejected" and keyword in result.reason
    assert _files(store) == []


@pytest.mark.parametrize("bad_uid", ["../../etc/passwd", "/abs/path", "1.2.3\x00.4", "1." + "2" * 70, "1.2.abc"])
def test_uids_that_are_paths_are_rejected(store: Store, bad_uid: str) -> None:
    ds = demodata.make_instance(1, 0, 0, 0, 16)
    ds.SeriesInstanceUID = bad_uid
    result = Ingestor(store).ingest_bytes(_bytes(ds), Source())
    assert result.status == "rejected" and "SeriesInstanceUID" in result.reason
    assert _files(store) == []
    for dirpath, _, files in os.walk(store.root):
        assert "passwd" not in files and "abs" not in dirpath


def test_file_names_never_come_from_the_file(store: Store) -> None:
    ds = demodata.make_instance(1, 0, 0, 0, 16)
    result = Ingestor(store).ingest_bytes(_bytes(ds), Source())
    path = Instance.get().path
    assert result.ok and ds.SOPInstanceUID not in path and "PAT" not in path
    assert path.startswith("files/") and path.endswith(".dcm")


def test_same_sop_uid_in_another_study_is_refused(store: Store) -> None:
    ing = Ingestor(store)
    ds = demodata.make_instance(1, 0, 0, 0, 16)
    assert ing.ingest_bytes(_bytes(ds), Source()).status == "stored"
    ds.StudyInstanceUID = demodata.uid("other study")
    result = ing.ingest_bytes(_bytes(ds), Source())
    assert result.status == "rejected" and "already stored in another study" in result.reason
    assert Instance.select().count() == 1 and len(_files(store)) == 1


def test_overwrite_replaces_file_and_keeps_counters(store: Store) -> None:
    ing = Ingestor(store, overwrite=True)
    ds = demodata.make_instance(1, 0, 0, 0, 16)
    assert ing.ingest_bytes(_bytes(ds), Source()).status == "stored"
    old_path = Instance.get().path
    ds.SeriesDescription = "changed"
    ds.InstanceNumber = 99
    again = ing.ingest_bytes(_bytes(ds), Source())
    assert again.status == "stored"
    inst = Instance.get()
    assert inst.path != old_path and inst.instance_number == 99
    assert _files(store) == [inst.path]
    assert Study.get().num_instances == 1 and Patient.get().num_instances == 1
    assert Patient.get().size == inst.file_size


def test_command_and_dataset_disagreeing_is_rejected(store: Store) -> None:
    data = _bytes(demodata.make_instance(1, 0, 0, 0, 16))
    spool = store.spool_bytes(data, owner="scp")
    result = Ingestor(store).ingest_spooled(spool, Source("dicom"), expected_sop_instance_uid="1.2.3.4")
    assert result.status == "rejected" and "C-STORE command names SOP Instance UID" in result.reason
    assert not spool.exists() and _files(store) == []


CHARSET_NAMES = {
    "chrFren.dcm": "Buc^Jérôme",
    "chrGerm.dcm": "Äneas^Rüdiger",
    "chrGreek.dcm": "Διονυσιος",
    "chrRuss.dcm": "Люкceмбypг",
    "chrH31.dcm": "Yamada^Tarou=山田^太郎=やまだ^たろう",
    "chrX1.dcm": "Wang^XiaoDong=王^小東",
    "chrX2.dcm": "Wang^XiaoDong=王^小东",
    "chrKoreanMulti.dcm": "김희중",
    "chrArab.dcm": "قباني^لنزار",
    "chrHbrw.dcm": "שרון^דבורה",
}


@pytest.mark.parametrize("name, expected", sorted(CHARSET_NAMES.items()))
def test_charset_files_show_correct_names(store: Store, name: str, expected: str) -> None:
    path = get_charset_files(name)[0]
    result = Ingestor(store).ingest_copy(path, Source("import"))
    assert result.ok, result.reason
    assert Patient.get(Patient.public_id == result.patient_id).patient_name == expected


def test_pydicom_test_file_imports(store: Store) -> None:
    ing = Ingestor(store)
    for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "SC_rgb_jpeg_dcmtk.dcm"):
        result = ing.ingest_copy(get_testdata_file(name), Source("import"))
        assert result.status == "stored", (name, result.reason)
    assert Instance.select().count() == 5


# -- the crash contract's order, with the fsyncs in the background ------------------------------

class _Trace:
    """Records the store's fsyncs, renames and index commits, in the order they complete."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from dicomnode.archive import store as store_module

        self.events: list[tuple[str, str]] = []
        self.fail: set[str] = set()  # "file", "dir": make that fsync raise
        fsync_file, fsync_dir, rename = store_module._fsync_file, store_module._fsync_dir, os.rename
        database = index.db.obj
        commit = database.commit

        def traced_fsync_file(path: str | os.PathLike[str]) -> None:
            fsync_file(path)
            if "file" in self.fail:
                raise OSError(5, "Input/output error (injected)")
            self.events.append(("fsync file", str(path)))

        def traced_fsync_dir(path: str | os.PathLike[str]) -> None:
            fsync_dir(path)
            if "dir" in self.fail and any(name.endswith(".dcm") for name in os.listdir(path)):
                raise OSError(5, "Input/output error (injected)")
            self.events.append(("fsync dir", str(path)))

        def traced_rename(src: Any, dst: Any) -> None:
            rename(src, dst)
            self.events.append(("rename", str(dst)))

        def traced_commit(*args: Any, **kwargs: Any) -> Any:
            self.events.append(("commit", ""))
            return commit(*args, **kwargs)

        monkeypatch.setattr(store_module, "_fsync_file", traced_fsync_file)
        monkeypatch.setattr(store_module, "_fsync_dir", traced_fsync_dir)
        monkeypatch.setattr(store_module.os, "rename", traced_rename)
        monkeypatch.setattr(database, "commit", traced_commit)


@pytest.mark.file_store
def test_contract_order_file_fsync_rename_folder_fsync_commit(store: Store,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    trace = _Trace(monkeypatch)
    ing = Ingestor(store)
    for i in range(3):
        trace.events.clear()
        result = ing.ingest_bytes(_bytes(demodata.make_instance(1, 0, 0, i, 16)), Source())
        assert result.status == "stored"
        final = store.root / Instance.get(Instance.public_id == result.instance_id).path
        kinds = [kind for kind, _ in trace.events]
        spool_synced = kinds.index("fsync file")
        renamed = trace.events.index(("rename", str(final)))
        folder_synced = trace.events.index(("fsync dir", str(final.parent)), renamed)
        committed = kinds.index("commit", renamed)
        assert spool_synced < renamed < folder_synced < committed, trace.events
        assert "commit" not in kinds[:renamed]


@pytest.mark.file_store
@pytest.mark.parametrize("failing", ["file", "dir"])
def test_failed_fsync_leaves_no_row_and_no_file(store: Store, monkeypatch: pytest.MonkeyPatch,
                                                failing: str) -> None:
    ing = Ingestor(store)
    assert ing.ingest_bytes(_bytes(demodata.make_instance(1, 0, 0, 0, 16)), Source()).status == "stored"
    trace = _Trace(monkeypatch)
    trace.fail.add(failing)
    with pytest.raises(OSError, match="injected"):
        ing.ingest_bytes(_bytes(demodata.make_instance(1, 0, 0, 1, 16)), Source())
    assert "commit" not in [kind for kind, _ in trace.events]
    assert Instance.select().count() == 1 and len(_files(store)) == 1
    assert Series.get().num_instances == 1 and Patient.get().num_instances == 1
    assert _spool_empty(store)
    trace.fail.clear()  # the store keeps working
    assert ing.ingest_bytes(_bytes(demodata.make_instance(1, 0, 0, 2, 16)), Source()).status == "stored"
    assert Instance.select().count() == 2 and len(_files(store)) == 2


@pytest.mark.file_store
def test_a_run_of_files_shares_a_folder_and_a_removed_folder_is_made_again(store: Store) -> None:
    ing = Ingestor(store)
    for i in range(2):
        assert ing.ingest_bytes(_bytes(demodata.make_instance(1, 0, 0, i, 16)), Source()).ok
    paths = [inst.path for inst in Instance.select()]
    folder = (store.root / paths[0]).parent
    assert {(store.root / p).parent for p in paths} == {folder}
    for p in paths:
        os.unlink(store.root / p)
    os.rmdir(folder)
    os.rmdir(folder.parent)
    result = ing.ingest_bytes(_bytes(demodata.make_instance(1, 0, 0, 2, 16)), Source())
    assert result.status == "stored"
    assert (store.root / Instance.get(Instance.public_id == result.instance_id).path).is_file()


@pytest.mark.file_store
def test_close_stops_the_fsync_threads_and_the_store_stays_usable(store: Store) -> None:
    ing = Ingestor(store)
    assert ing.ingest_bytes(_bytes(demodata.make_instance(1, 0, 0, 0, 16)), Source()).ok
    assert store._sync_pool is not None
    threads = list(store._sync_pool._threads)
    assert threads and all(t.is_alive() for t in threads)
    store.close()
    assert not any(t.is_alive() for t in threads)
    assert ing.ingest_bytes(_bytes(demodata.make_instance(1, 0, 0, 1, 16)), Source()).ok
    store.close()
