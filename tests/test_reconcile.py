"""Start-up reconciliation: spool debris removed, files without rows re-indexed or quarantined."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from dicomnode import demodata
from dicomnode.archive import index
from dicomnode.archive import reconcile
from dicomnode.archive.index import Instance
from dicomnode.archive.ingest import Ingestor
from dicomnode.archive.ingest import Source
from dicomnode.archive.store import Store


@pytest.fixture
def store(tmp_path: Path, index_url: str):
    index.open_index(index_url)
    yield Store(tmp_path / "data")
    index.close_index()


def _bytes(p: int, i: int = 0) -> bytes:
    buf = io.BytesIO()
    demodata.make_instance(p, 0, 0, i, 16).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_reconcile_cleans_spool_reindexes_and_quarantines(store: Store) -> None:
    ing = Ingestor(store)
    assert ing.ingest_bytes(_bytes(1), Source()).status == "stored"
    kept = Instance.get().path
    # A crash between rename and commit: a file in files/ with no row.
    orphan_rel = store.commit(store.spool_bytes(_bytes(2)))
    # A copy of an indexed instance under another name (a crash during an overwrite).
    dup_rel = store.commit(store.spool_bytes(_bytes(1)))
    # Junk that is not DICOM at all.
    junk_rel = store.commit(store.spool_bytes(b"not dicom" * 50))
    # Spool debris from interrupted receptions.
    (store.spool_dir("scp") / "scp-x.part").write_bytes(b"partial")
    (store.spool_dir("web") / "y.part").write_bytes(b"partial")

    report = reconcile.run(store, ing)

    assert (report.reindexed, report.duplicates_removed, report.quarantined) == (1, 1, 1)
    assert report.spool_removed == 2
    assert not any((store.tmp / "scp").iterdir()) and not any((store.tmp / "web").iterdir())
    assert Instance.select().count() == 2
    files = set(store.iter_files())
    assert files == {i.path for i in Instance.select()}
    assert kept in files and orphan_rel not in files and dup_rel not in files and junk_rel not in files
    notes = list(store.quarantine_dir.glob("*.txt"))
    assert len(notes) == 1 and "DICM" in notes[0].read_text()


def test_reconcile_reports_rows_whose_file_is_missing(store: Store) -> None:
    ing = Ingestor(store)
    ing.ingest_bytes(_bytes(1), Source())
    store.path(Instance.get().path).unlink()
    report = reconcile.run(store, ing)
    assert report.missing_files == 1
    assert Instance.select().count() == 1  # a row is never dropped silently


def test_unindexed_files_are_indexed_at_serve_start(dolmen_factory, short_tmp: Path) -> None:
    server = dolmen_factory()
    server.stop()
    store = Store(server.data)
    rel = store.commit(store.spool_bytes(_bytes(7)))
    from tests.conftest import start_dolmen

    again = start_dolmen(server.config, server.log.with_suffix(".2.log"))
    try:
        assert again.get("/api/statistics").json()["CountInstances"] == 1
        assert rel not in set(store.iter_files())  # re-filed under a fresh name
    finally:
        again.stop()
    shutil.rmtree(server.data / "quarantine", ignore_errors=True)
