"""``dolmen migrate-storage``: copy the file store's objects into the S3 bucket.

The bucket keeps the file store's names (``files/ab/cd/<random>.dcm``), so the index rows stay
as they are: once every indexed object is in the bucket, switching ``[storage] objects`` to
``"s3"`` is the whole move. The copy is

* resumable: objects already in the bucket with the indexed size are not sent again, so a run
  that was stopped (or that ran while Dolmen kept receiving) is finished by running it again;
* verified: each PUT carries Content-MD5 (the server refuses other bytes), and at the end the
  bucket's listing is checked against every indexed object's size.

Nothing is removed from the file store.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import as_completed
from dataclasses import dataclass
from dataclasses import field

from dicomnode.archive.index import Instance
from dicomnode.archive.s3store import S3Store
from dicomnode.archive.store import Store
from dicomnode.errors import DolmenError


@dataclass
class Report:
    """What a migration did."""

    indexed: int = 0
    copied: int = 0
    already: int = 0
    bytes_copied: int = 0
    missing: list[str] = field(default_factory=list)  # indexed, but no file in the file store
    failed: list[tuple[str, str]] = field(default_factory=list)  # (object, why)
    unverified: list[str] = field(default_factory=list)  # not in the bucket with its size at the end

    @property
    def complete(self) -> bool:
        """Every indexed object is in the bucket with its size."""
        return not (self.missing or self.failed or self.unverified)


def migrate(source: Store, dest: S3Store, *, threads: int = 8,
            progress: Callable[[int, int], None] | None = None) -> Report:
    """Copy every indexed object of ``source`` into ``dest`` (bound index); see the module notes.

    ``progress(done, total)`` is called after each object.
    """
    if source.shared:
        raise DolmenError("The source of a migration is the file store under storage.path")
    rows = list(Instance.select(Instance.path, Instance.file_size).tuples())
    report = Report(indexed=len(rows))
    present = {rel: size for rel, size, _mtime in dest.iter_objects()}
    todo: list[tuple[str, int]] = []
    for rel, size in rows:
        if present.get(rel) == size:
            report.already += 1
        else:
            todo.append((rel, size))
    done = report.already
    if progress:
        progress(done, len(rows))

    def copy(rel: str) -> int:
        local = source.path(rel)
        if not local.is_file():
            raise FileNotFoundError(rel)
        return dest.put(local, rel)

    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="migrate") as pool:
        futures = {pool.submit(copy, rel): rel for rel, _size in todo}
        for future in as_completed(futures):
            rel = futures[future]
            try:
                report.bytes_copied += future.result()
                report.copied += 1
            except FileNotFoundError:
                report.missing.append(rel)
            except (DolmenError, OSError) as exc:
                report.failed.append((rel, getattr(exc, "message", str(exc))))
            done += 1
            if progress:
                progress(done, len(rows))
    stored = {rel: size for rel, size, _mtime in dest.iter_objects()}
    skip = set(report.missing) | {rel for rel, _why in report.failed}
    report.unverified = [rel for rel, size in rows if rel not in skip and stored.get(rel) != size]
    return report


def source_store(root: str | os.PathLike[str]) -> Store:
    """The file store under ``root``, for reading only."""
    return Store(root, fsync=False)
