"""dicomnode.archive.resources: get, lookup, delete with counters, the thumbnail cache."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomnode.archive import index
from dicomnode.archive import resources
from dicomnode.archive.index import Instance
from dicomnode.archive.index import Patient
from dicomnode.archive.index import Series
from dicomnode.archive.index import Study
from dicomnode.archive.ingest import Ingestor
from dicomnode.archive.ingest import Source
from dicomnode.archive.store import Store
from dicomnode.errors import DolmenError
from dicomnode.errors import NotFound


@pytest.fixture
def archive(short_tmp: Path, demo_files: list[Path]) -> Iterator[tuple[Store, Ingestor]]:
    """A fresh store and index holding the 20 demo files (2 patients, 2 series each)."""
    index.open_index(f"sqlite:///{short_tmp / 'index.db'}", synchronous_full=False)
    store = Store(short_tmp / "data", fsync=False)
    ingestor = Ingestor(store)
    for path in demo_files:
        assert ingestor.ingest_copy(path, Source("import")).status == "stored"
    yield store, ingestor
    index.close_index()


def counters() -> dict[str, Any]:
    """Every counter, and whether each equals what the rows say."""
    out: dict[str, Any] = {"patients": Patient.select().count(), "studies": Study.select().count(),
                           "series": Series.select().count(), "instances": Instance.select().count()}
    for p in Patient.select():
        studies = list(p.studies)
        series = [s for st in studies for s in st.series]
        inst = [i for s in series for i in s.instances]
        assert (p.num_studies, p.num_series, p.num_instances, p.size) == (
            len(studies), len(series), len(inst), sum(i.file_size for i in inst)), p.patient_id
        for st in studies:
            st_series = list(st.series)
            st_inst = [i for s in st_series for i in s.instances]
            assert (st.num_series, st.num_instances, st.size) == (
                len(st_series), len(st_inst), sum(i.file_size for i in st_inst))
            assert st.modalities_in_study == "\\".join(sorted({s.modality for s in st_series}))
            for s in st_series:
                s_inst = list(s.instances)
                assert (s.num_instances, s.size) == (len(s_inst), sum(i.file_size for i in s_inst))
    return out


def test_get_refuses_malformed_and_unknown_ids(archive: tuple[Store, Ingestor]) -> None:
    study = Study.select().first()
    assert resources.get("study", study.public_id).pk == study.pk
    for bad in ("nope", "../../etc/passwd", study.public_id.upper(), "0" * 44):
        with pytest.raises(NotFound):
            resources.get("study", bad)
    with pytest.raises(NotFound, match="may have been deleted"):
        resources.get("study", "00000000-00000000-00000000-00000000-00000000")


def test_delete_instance_keeps_parents_and_fixes_counters(archive: tuple[Store, Ingestor]) -> None:
    store, _ = archive
    inst = Instance.select().first()
    path = store.path(inst.path)
    deleted = resources.delete(store, "instance", inst.public_id)
    assert (deleted.instances, deleted.size) == (1, inst.file_size)
    assert (deleted.parent_level, deleted.parent_id) == ("series", inst.series.public_id)
    assert not path.exists()
    assert counters() == {"patients": 2, "studies": 2, "series": 4, "instances": 19}


def test_delete_series_then_last_series_prunes_study_and_patient(archive: tuple[Store, Ingestor]) -> None:
    store, _ = archive
    study = Study.select().first()
    first, second = list(study.series.order_by(Series.series_number))
    paths = [store.path(i.path) for i in first.instances]
    deleted = resources.delete(store, "series", first.public_id)
    assert deleted.instances == 5 and deleted.parent_level == "study"
    assert not any(p.exists() for p in paths)
    assert counters() == {"patients": 2, "studies": 2, "series": 3, "instances": 15}
    deleted = resources.delete(store, "series", second.public_id)
    # The study and its patient had nothing else: both went, the parent is gone too.
    assert (deleted.parent_level, deleted.parent_id) == (None, None)
    assert counters() == {"patients": 1, "studies": 1, "series": 2, "instances": 10}


def test_delete_study_and_patient(archive: tuple[Store, Ingestor]) -> None:
    store, _ = archive
    patient = Patient.select().order_by(Patient.patient_id).first()
    study = patient.studies.first()
    resources.delete(store, "study", study.public_id)
    assert counters() == {"patients": 1, "studies": 1, "series": 2, "instances": 10}
    other = Patient.select().first()
    resources.delete(store, "patient", other.public_id)
    assert counters() == {"patients": 0, "studies": 0, "series": 0, "instances": 0}
    assert list(store.iter_files()) == []
    with pytest.raises(NotFound):
        resources.delete(store, "patient", other.public_id)


def test_deleted_instance_can_be_stored_again(archive: tuple[Store, Ingestor],
                                               demo_files: list[Path]) -> None:
    store, ingestor = archive
    series = Series.select().first()
    resources.delete(store, "series", series.public_id)
    results = [ingestor.ingest_copy(p, Source("import")).status for p in demo_files]
    assert results.count("stored") == 5 and results.count("duplicate") == 15
    assert counters()["instances"] == 20


def test_overwrite_replaces_rows_through_the_same_function(archive: tuple[Store, Ingestor],
                                                            demo_files: list[Path]) -> None:
    store, _ = archive
    overwriting = Ingestor(store, overwrite=True)
    before = counters()
    assert overwriting.ingest_copy(demo_files[0], Source("import")).status == "stored"
    assert counters() == before


def test_lookup_by_every_identifier(archive: tuple[Store, Ingestor]) -> None:
    inst = Instance.select().first()
    series, study = inst.series, inst.series.study
    patient = study.patient
    cases = {
        patient.patient_id: ("patient", "PatientID"),
        study.accession_number: ("study", "AccessionNumber"),
        study.study_instance_uid: ("study", "StudyInstanceUID"),
        series.series_instance_uid: ("series", "SeriesInstanceUID"),
        inst.sop_instance_uid: ("instance", "SOPInstanceUID"),
        study.public_id: ("study", "public id"),
    }
    for text, (level, matched) in cases.items():
        found = resources.lookup(f"  {text} ")
        assert [(m.level, m.matched) for m in found] == [(level, matched)], text
    assert resources.lookup("no such thing") == []
    assert resources.lookup("") == []
    with pytest.raises(DolmenError, match="exact identifier"):
        resources.lookup("PAT*")


def test_thumbnail_cache_renders_once_and_is_removed_with_the_instance(
        archive: tuple[Store, Ingestor], monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ = archive
    cache = resources.ThumbnailCache(store.root)
    inst = Instance.select().first()
    first = cache.get(store, inst, size=64)
    assert first.startswith(b"\x89PNG")
    calls = []
    monkeypatch.setattr(resources, "render", lambda *a, **k: calls.append(a) or b"")
    assert cache.get(store, inst, size=64) == first and calls == []
    cache.get(store, inst, size=64, window="ct-lung")
    assert len(calls) == 1  # another window is another entry
    folder = cache.folder(inst.public_id)
    assert folder.is_dir() and folder.is_relative_to(store.root / "cache")
    resources.delete(store, "instance", inst.public_id, cache=cache)
    assert not folder.exists()


def test_thumbnail_of_an_instance_without_pixels_is_a_placeholder(archive: tuple[Store, Ingestor]) -> None:
    import pydicom.data

    store, ingestor = archive
    sr = pydicom.data.get_testdata_file("rtplan.dcm")
    result = ingestor.ingest_copy(sr, Source("import"))
    assert result.status == "stored"
    inst = Instance.get(Instance.public_id == result.instance_id)
    png = resources.ThumbnailCache(store.root).get(store, inst, size=64)
    assert png.startswith(b"\x89PNG")
