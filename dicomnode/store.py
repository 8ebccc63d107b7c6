"""The file store and its half of the crash contract.

Layout under the storage root::

    files/ab/cd/abcd....dcm     stored objects; names are random, server-generated
    tmp/<owner>/                spool files being received (removed at start-up)
    quarantine/                 files found without an index row that could not be re-indexed
    run/control.sock            the sidecar's control socket

The write protocol (see ARCHITECTURE.md, "The crash contract"): an object is spooled to
``tmp/`` with a size cap, parsed and validated, then :meth:`Store.commit` fsyncs it, renames it
to a path derived from a fresh random identifier (never from a UID or any string in the file)
and fsyncs the folder. Only then is the index row committed and success answered.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from typing import BinaryIO

from dicomnode.errors import DolmenError
from dicomnode.errors import NotFound
from dicomnode.errors import StorageFull

LOGGER = logging.getLogger(__name__)

_COPY_CHUNK = 1 << 20


class TooLarge(DolmenError):
    """An object exceeded the configured size cap while being spooled."""

    code = "too_large"
    http_status = 413


def _fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    """Files under one storage root.

    Parameters
    ----------
    root : str or Path
        The storage folder (created if missing).
    fsync : bool
        fsync files and folders before acknowledging (the default, and the crash contract).
    min_free_mb : int
        :meth:`check_space` raises :class:`StorageFull` below this much free space.
    """

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True, min_free_mb: int = 0) -> None:
        self.root = Path(root).resolve()
        self.fsync = fsync
        self.min_free = min_free_mb * 1024 * 1024
        self.files = self.root / "files"
        self.tmp = self.root / "tmp"
        self.quarantine_dir = self.root / "quarantine"
        for folder in (self.root, self.files, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)

    # -- spooling ---------------------------------------------------------------------------

    def spool_dir(self, owner: str) -> Path:
        """The spool folder of one process kind (``scp``, ``web``...), created on demand."""
        folder = self.tmp / owner
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def clear_spool(self, owner: str) -> int:
        """Remove every leftover spool file of ``owner`` (called when that owner starts)."""
        folder = self.tmp / owner
        count = 0
        if folder.is_dir():
            for entry in os.scandir(folder):
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
                    count += 1
        return count

    def spool_stream(self, stream: BinaryIO | IO[bytes], *, owner: str = "web", max_bytes: int | None = None) -> Path:
        """Copy ``stream`` into a new spool file and return its path.

        Raises
        ------
        TooLarge
            When more than ``max_bytes`` arrive; the partial file is removed.
        StorageFull
            When the volume is below its free-space minimum.
        """
        self.check_space()
        fd, name = tempfile.mkstemp(dir=self.spool_dir(owner), suffix=".part")
        written = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while True:
                    chunk = stream.read(_COPY_CHUNK)
                    if not chunk:
                        break
                    written += len(chunk)
                    if max_bytes is not None and written > max_bytes:
                        raise TooLarge(f"The object is larger than the limit of {max_bytes // (1024 * 1024)} MiB")
                    out.write(chunk)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise
        return Path(name)

    def spool_bytes(self, data: bytes, *, owner: str = "web") -> Path:
        """Write ``data`` to a new spool file and return its path."""
        self.check_space()
        fd, name = tempfile.mkstemp(dir=self.spool_dir(owner), suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise
        return Path(name)

    def check_space(self) -> None:
        """Raise :class:`StorageFull` when free space is below the configured minimum."""
        if not self.min_free:
            return
        st = os.statvfs(self.root)
        free = st.f_bavail * st.f_frsize
        if free < self.min_free:
            raise StorageFull(
                f"Storage is full: {free // (1024 * 1024)} MiB free on {self.root}, "
                f"below the minimum of {self.min_free // (1024 * 1024)} MiB")

    # -- committing -------------------------------------------------------------------------

    def new_relpath(self) -> str:
        """A fresh relative path ``files/ab/cd/<32 hex>.dcm`` from a random identifier."""
        name = uuid.uuid4().hex
        return f"files/{name[:2]}/{name[2:4]}/{name}.dcm"

    def commit(self, spool: str | os.PathLike[str]) -> str:
        """Make a spooled file durable under a new server-generated name; return its relative path.

        fsync the file, rename it into ``files/``, fsync the folder. The caller commits the
        index row afterwards and removes the file with :meth:`delete` if that fails.
        """
        rel = self.new_relpath()
        final = self.root / rel
        folder = final.parent
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            if self.fsync:
                _fsync_dir(folder.parent)
                _fsync_dir(folder.parent.parent)
        if self.fsync:
            fd = os.open(spool, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.rename(spool, final)
        if self.fsync:
            _fsync_dir(folder)
        return rel

    # -- reading and deleting ---------------------------------------------------------------

    def path(self, rel: str) -> Path:
        """Absolute path of a stored file; refuses anything outside ``files/``.

        Raises
        ------
        NotFound
            When ``rel`` does not name a file inside the store.
        """
        candidate = (self.root / rel).resolve()
        if self.files not in candidate.parents:
            raise NotFound(f"No stored file at {rel!r}")
        return candidate

    def open(self, rel: str) -> BinaryIO:
        """Open a stored file for reading."""
        try:
            return open(self.path(rel), "rb")
        except FileNotFoundError:
            raise NotFound(f"The file of this instance is missing from the store ({rel})") from None

    def delete(self, rel: str) -> None:
        """Remove a stored file; a file already gone is not an error."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(rel))

    def quarantine(self, path: str | os.PathLike[str], reason: str) -> Path:
        """Move a file that cannot be indexed aside, with a note saying why."""
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        target = self.quarantine_dir / f"{uuid.uuid4().hex}.dcm"
        os.rename(path, target)
        target.with_suffix(".txt").write_text(reason + "\n", encoding="utf-8")
        LOGGER.warning("Quarantined %s as %s: %s", path, target, reason)
        return target

    def iter_files(self) -> Iterator[str]:
        """Every stored file, as a relative path (for reconciliation)."""
        for dirpath, _dirnames, filenames in os.walk(self.files):
            for name in filenames:
                full = os.path.join(dirpath, name)
                yield os.path.relpath(full, self.root)
