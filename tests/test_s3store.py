"""The S3 object store (issue 16) against a real S3 server (SeaweedFS): objects, cache, reconciliation,
an unreachable server, ``dolmen migrate-storage``."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomnode import demodata
from dicomnode.archive import index
from dicomnode.archive import reconcile
from dicomnode.archive import resources
from dicomnode.archive.index import Instance
from dicomnode.archive.ingest import Ingestor
from dicomnode.archive.ingest import Source
from dicomnode.archive.s3store import S3Store
from dicomnode.archive.store import Store
from dicomnode.errors import NotFound
from tests.conftest import ROOT
from tests.conftest import make_config_doc
from tests.conftest import new_prefix
from tests.conftest import write_toml


def _bytes(p: int, i: int = 0, size: int = 16) -> bytes:
    buf = io.BytesIO()
    demodata.make_instance(p, 0, 0, i, size).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture
def s3store(s3: Any, tmp_path: Path) -> Iterator[S3Store]:
    index.open_index(f"sqlite:///{tmp_path / 'index.db'}")
    prefix = new_prefix()
    store = S3Store(tmp_path / "data", **s3.settings(prefix))
    store.test_prefix = prefix  # type: ignore[attr-defined]
    yield store
    store.close()
    index.close_index()


def test_objects_go_to_the_bucket_and_come_back_through_the_cache(s3: Any, s3store: S3Store) -> None:
    data = _bytes(1)
    result = Ingestor(s3store).ingest_bytes(data, Source("dicom"))
    assert result.status == "stored"
    rel = Instance.get().path
    assert s3.keys(s3store.test_prefix) == {rel}  # type: ignore[attr-defined]
    body = s3.client().get_object(Bucket=s3.bucket, Key=f"{s3store.test_prefix}/{rel}")["Body"].read()  # type: ignore[attr-defined]
    assert body == data
    cached = s3store.path(rel)
    assert cached.is_relative_to(s3store.cache) and cached.read_bytes() == data  # the spool became the cache
    cached.unlink()
    assert s3store.path(rel).read_bytes() == data  # a miss fetches it again
    assert not any(s3store.spool_dir("cache").iterdir())
    # the same instance again: one object, "already stored"
    assert Ingestor(s3store).ingest_bytes(data, Source("dicom")).status == "duplicate"
    assert len(s3.keys(s3store.test_prefix)) == 1  # type: ignore[attr-defined]


def test_delete_removes_the_object(s3: Any, s3store: S3Store) -> None:
    ing = Ingestor(s3store)
    for i in range(3):
        assert ing.ingest_bytes(_bytes(1, i), Source()).ok
    assert len(s3.keys(s3store.test_prefix)) == 3  # type: ignore[attr-defined]
    study = index.Study.get()
    resources.delete(s3store, "study", study.public_id)
    assert s3.keys(s3store.test_prefix) == set()  # type: ignore[attr-defined]
    assert not list(s3store.cache.rglob("*.dcm"))
    with pytest.raises(NotFound):
        s3store.path("files/00/00/0000.dcm")
    with pytest.raises(NotFound):
        s3store.path("../index.db")


def test_the_cache_keeps_to_its_bound(s3store: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S3Store, "CACHE_KEEP_SECONDS", 0.0)
    s3store.cache_limit = 200_000
    ing = Ingestor(s3store)
    for i in range(8):
        assert ing.ingest_bytes(_bytes(1, i, size=128), Source()).ok  # ~33 kB each
    cached = list(s3store.cache.rglob("*.dcm"))
    assert 0 < sum(p.stat().st_size for p in cached) <= 200_000
    for row in Instance.select():  # every object still readable, evicted or not
        assert s3store.path(row.path).stat().st_size == row.file_size


def test_large_objects_go_in_parts(s3: Any, s3store: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from dicomnode.archive import s3store as module

    monkeypatch.setattr(module, "SINGLE_PUT_MAX", 10_000)
    data = _bytes(2, 0, size=128)
    assert len(data) > 10_000
    assert Ingestor(s3store).ingest_bytes(data, Source()).status == "stored"
    rel = Instance.get().path
    os.unlink(s3store.path(rel))
    assert s3store.path(rel).read_bytes() == data


def test_reconciliation_leaves_young_objects_to_the_node_writing_them(
        s3: Any, s3store: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    ing = Ingestor(s3store)
    assert ing.ingest_bytes(_bytes(1), Source()).ok
    kept = Instance.get().path
    # Objects without a row: another node's ingest about to commit, or a crash's debris.
    orphan = s3store.place(s3store.spool_bytes(_bytes(2)))
    orphan.wait()
    junk = s3store.place(s3store.spool_bytes(b"not dicom" * 50))
    junk.wait()
    report = reconcile.run(s3store, ing)
    assert (report.reindexed, report.quarantined) == (0, 0)  # young: another node's work in progress
    assert s3.keys(s3store.test_prefix) == {kept, orphan.rel, junk.rel}  # type: ignore[attr-defined]

    monkeypatch.setattr(reconcile, "SHARED_GRACE_SECONDS", -5)  # as if an hour had passed
    report = reconcile.run(s3store, ing)
    assert (report.reindexed, report.quarantined, report.missing_files) == (1, 1, 0)
    keys = s3.keys(s3store.test_prefix)  # type: ignore[attr-defined]
    assert keys == {i.path for i in Instance.select()} and len(keys) == 2 and kept in keys
    assert orphan.rel not in keys and junk.rel not in keys
    notes = list(s3store.quarantine_dir.glob("*.txt"))
    assert len(notes) == 1 and junk.rel in notes[0].read_text()


def test_an_unreachable_object_store_fails_the_ingest_and_stores_nothing(tmp_path: Path) -> None:
    from tests.conftest import free_port

    index.open_index(f"sqlite:///{tmp_path / 'index.db'}")
    store = S3Store(tmp_path / "data", endpoint=f"http://127.0.0.1:{free_port()}", bucket="dolmen",
                    access_key="k", secret_key="s", timeout=2.0)
    try:
        result = Ingestor(store).ingest_bytes(_bytes(1), Source("dicom"))
        assert result.status == "rejected" and result.code == "object_store"
        assert "could not store the object" in result.reason and "127.0.0.1" in result.reason
        assert Instance.select().count() == 0
        assert not [p for p in store.tmp.rglob("*") if p.is_file()]  # spool removed
    finally:
        store.close()
        index.close_index()


def _dolmen(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "webapp.cli", *args, "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_migrate_storage_copies_resumes_and_verifies(s3: Any, short_tmp: Path) -> None:
    data = short_tmp / "data"
    prefix = new_prefix()
    doc = make_config_doc(data, storage__s3=s3.settings(prefix))
    config = write_toml(short_tmp / "files.toml", doc)
    index.open_index(f"sqlite:///{data / 'index.db'}")
    store = Store(data, fsync=False)
    ing = Ingestor(store)
    originals = {}
    for i in range(12):
        raw = _bytes(3, i)
        assert ing.ingest_bytes(raw, Source()).ok
        originals[Instance.get(Instance.sop_instance_uid == demodata.make_instance(3, 0, 0, i, 16).SOPInstanceUID).path] = raw
    index.close_index()
    # Half of them already there (an interrupted earlier run), one of them truncated.
    client = s3.client()
    rels = sorted(originals)
    for rel in rels[:6]:
        client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{rel}", Body=originals[rel])
    client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{rels[6]}", Body=originals[rels[6]][:100])

    done = _dolmen("migrate-storage", "-q", config=config)
    assert done.returncode == 0, done.stderr
    assert "12 indexed objects: 6 copied" in done.stdout and "6 already in" in done.stdout
    assert 'objects = "s3"' in done.stdout  # what to do next
    for rel, raw in originals.items():
        assert client.get_object(Bucket=s3.bucket, Key=f"{prefix}/{rel}")["Body"].read() == raw
    again = _dolmen("migrate-storage", "-q", config=config)
    assert again.returncode == 0 and "0 copied" in again.stdout and "12 already" in again.stdout

    # Switched: the same index serves the objects from the bucket, the local files gone.
    shutil.rmtree(data / "files")
    doc["storage"]["objects"] = "s3"
    switched = write_toml(short_tmp / "s3.toml", doc)
    from dicomnode import config as config_module
    from dicomnode.archive.store import open_store

    s3_store = open_store(config_module.load(str(switched)))
    try:
        for rel, raw in originals.items():
            assert s3_store.path(rel).read_bytes() == raw
    finally:
        s3_store.close()


def test_migrate_storage_reports_a_missing_bucket(s3: Any, short_tmp: Path) -> None:
    settings = dict(s3.settings(new_prefix()), bucket="no-such-bucket")
    config = write_toml(short_tmp / "c.toml", make_config_doc(short_tmp / "data", storage__s3=settings))
    done = _dolmen("migrate-storage", "-q", config=config)
    assert done.returncode == 3
    assert "could not open bucket 'no-such-bucket'" in done.stderr
