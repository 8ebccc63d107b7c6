"""Start-up reconciliation of the store and the index.

The crash contract leaves two kinds of debris: spool files (a crash before the rename) and
files without an index row (a crash between the rename and the commit, or an index commit
lost with the machine's power when SQLite runs with ``synchronous=NORMAL``). This module
removes the first and re-indexes the second; a file that cannot be re-indexed is moved to
``quarantine/`` with a note. It never deletes a stored file that has a row.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from dicomnode.archive.index import Instance
from dicomnode.archive.ingest import Ingestor
from dicomnode.archive.ingest import Source
from dicomnode.archive.store import Store
from dicomnode.errors import NotFound

#: Objects of a shared store (S3) younger than this are never debris: another node may be
#: about to commit their rows.
SHARED_GRACE_SECONDS = 3600

LOGGER = logging.getLogger(__name__)


@dataclass
class Report:
    """What reconciliation did."""

    spool_removed: int = 0
    reindexed: int = 0
    duplicates_removed: int = 0
    quarantined: int = 0
    missing_files: int = 0


def _has_row(rel: str) -> bool:
    return bool(Instance.select(Instance.pk).where(Instance.path == rel).exists())


def run(store: Store, ingestor: Ingestor, *, spool_owners: tuple[str, ...] | None = None,
        before: float | None = None) -> Report:
    """Reconcile ``store`` with the bound index.

    Parameters
    ----------
    spool_owners : tuple of str, optional
        Spool folders to empty; all of them by default (only safe while nothing else runs).
    before : float, optional
        When objects are being received meanwhile (the sidecar reconciles while it serves):
        only files last modified before this time (``time.time()``) are candidates. A file
        just renamed into the store has no row until its ingest commits; taken for debris,
        it was re-indexed as a duplicate of itself and deleted, leaving the row without its
        file. Every candidate is also checked again for a row before it is removed.
    """
    report = Report()
    owners = spool_owners
    if owners is None:
        owners = tuple(e.name for e in os.scandir(store.tmp) if e.is_dir()) if store.tmp.is_dir() else ()
        for entry in os.scandir(store.tmp):
            if entry.is_file():
                os.unlink(entry.path)
                report.spool_removed += 1
    for owner in owners:
        report.spool_removed += store.clear_spool(owner)
    known = {path for (path,) in Instance.select(Instance.path).tuples()}
    on_disk = set(store.iter_files())
    if store.shared:
        # Other nodes put objects into the same bucket and commit their rows a moment later:
        # a young object without a row is another node's work in progress, not debris.
        grace = time.time() - SHARED_GRACE_SECONDS
        before = grace if before is None else min(before, grace)
    for rel in sorted(on_disk - known):
        if before is not None:
            mtime = store.mtime(rel)
            if mtime is None or mtime >= before:
                continue  # written by a reception running now, not left by a crash
        if _has_row(rel):
            continue  # its ingest committed since the listing
        # Ingest a copy (a hard link in the file store) so that the original survives a
        # rejection (and is quarantined).
        spool = store.spool_dir("reconcile") / os.path.basename(rel)
        try:
            store.fetch(rel, spool)
        except (FileNotFoundError, NotFound):
            continue
        result = ingestor.ingest_spooled(spool, Source("import"))
        if _has_row(rel):
            continue  # a live ingest filed this very file meanwhile: it is not debris
        if result.ok:
            store.delete(rel)  # the ingested copy lives under a new name now
            if result.status == "stored":
                report.reindexed += 1
            else:
                report.duplicates_removed += 1
        else:
            store.set_aside(rel, result.reason)
            report.quarantined += 1
    report.missing_files = len(known - on_disk)
    if report.missing_files:
        LOGGER.warning("%d indexed instance(s) have no file in %s", report.missing_files, store.describe())
    LOGGER.info("Reconciliation: %s", report)
    return report
