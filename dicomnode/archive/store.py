"""The file store and its half of the crash contract.

Layout under the storage root::

    files/ab/cd/abcd....dcm     stored objects; names are random, server-generated, and a run
                                of them shares a folder
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
import secrets
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from typing import BinaryIO

from dicomnode.errors import DolmenError
from dicomnode.errors import NotFound
from dicomnode.errors import StorageFull

LOGGER = logging.getLogger(__name__)

_COPY_CHUNK = 1 << 20
# Files written into one folder before moving on to another, chosen at random. A new folder
# costs a mkdir and two more fsyncs (its parent and grandparent must record it): with a new
# random folder per file, a fresh store paid them for nearly every file. Folders still fill
# evenly, a run of files at a time.
FILES_PER_FOLDER = 256
# Spool files up to this size are fsynced in the background as soon as ingest starts, while
# the header is parsed; larger ones only once they are known to be kept (an fsync of a copy
# that turns out to be a duplicate is wasted I/O, which only matters when it is large).
EARLY_SYNC_MAX = 16 * 1024 * 1024
SYNC_THREADS = 4


class TooLarge(DolmenError):
    """An object exceeded the configured size cap while being spooled."""

    code = "too_large"
    http_status = 413


def _fsync_file(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Placed:
    """A file renamed into the store by :meth:`Store.place`, its folder being fsynced."""

    rel: str
    folder_synced: Future[None] | None

    def wait(self) -> None:
        """Return once the file is durable under its name; raise what the fsync raised."""
        if self.folder_synced is not None:
            self.folder_synced.result()


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

    #: Whether other nodes write into the same objects (reconciliation leaves young ones alone).
    shared = False

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True, min_free_mb: int = 0) -> None:
        self.root = Path(root).resolve()
        self.fsync = fsync
        self.min_free = min_free_mb * 1024 * 1024
        self.files = self.root / "files"
        self.tmp = self.root / "tmp"
        self.quarantine_dir = self.root / "quarantine"
        for folder in (self.root, self.files, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        self._folder_lock = threading.Lock()
        self._folder_prefix = ""
        self._folder_left = 0
        self._made_folders: set[str] = set()  # "ab/cd": folders made durable by this process
        self._sync_pool: ThreadPoolExecutor | None = None

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
        """A fresh relative path ``files/ab/cd/abcd<28 hex>.dcm`` from a random identifier.

        The name is random; ``ab/cd`` are its first four hex digits, which stay the same for
        a run of :data:`FILES_PER_FOLDER` names.
        """
        with self._folder_lock:
            if self._folder_left <= 0:
                self._folder_prefix = secrets.token_hex(2)
                self._folder_left = FILES_PER_FOLDER
            self._folder_left -= 1
            prefix = self._folder_prefix
        name = prefix + secrets.token_hex(14)
        return f"files/{name[:2]}/{name[2:4]}/{name}.dcm"

    def _make_folder(self, folder: Path) -> None:
        """Create ``folder`` (``files/ab/cd``) and make its entries durable."""
        folder.mkdir(parents=True, exist_ok=True)
        if self.fsync:
            _fsync_dir(folder.parent)
            _fsync_dir(folder.parent.parent)
        self._made_folders.add(f"{folder.parent.name}/{folder.name}")

    def sync_early(self, spool: str | os.PathLike[str], size: int) -> Future[None] | None:
        """Start fsyncing a spool file in the background; pass the result to :meth:`commit`.

        Lets the caller parse and check the file while the disk works (an fsync is mostly
        waiting). ``None`` when there is nothing to start: ``fsync`` is off, or the file is
        larger than :data:`EARLY_SYNC_MAX`.
        """
        if not self.fsync or size > EARLY_SYNC_MAX:
            return None
        return self._submit(_fsync_file, spool)

    def commit(self, spool: str | os.PathLike[str], synced: Future[None] | None = None) -> str:
        """Make a spooled file durable under a new server-generated name; return its relative path.

        fsync the file (or wait for the fsync ``synced`` from :meth:`sync_early`), rename it
        into ``files/``, fsync the folder. The caller commits the index row afterwards and
        removes the file with :meth:`delete` if that fails.
        """
        placed = self.place(spool, synced)
        placed.wait()
        return placed.rel

    def place(self, spool: str | os.PathLike[str], synced: Future[None] | None = None) -> Placed:
        """:meth:`commit`, except that the folder's fsync runs in the background.

        The file is durable under its new name once :meth:`Placed.wait` returns: the caller
        prepares its index rows meanwhile and commits them only after that (the crash
        contract), or removes the file with :meth:`delete`.
        """
        rel = self.new_relpath()
        final = self.root / rel
        folder = final.parent
        if rel[6:11] not in self._made_folders:  # "ab/cd" of "files/ab/cd/<name>.dcm"
            # Even when the folder exists, its entries may not be durable yet (it may come
            # from a run that crashed): fsync them once per folder and process.
            self._make_folder(folder)
        if synced is not None:
            synced.result()  # raises what the fsync raised
        elif self.fsync:
            _fsync_file(spool)
        try:
            os.rename(spool, final)
        except FileNotFoundError:
            if not os.path.exists(spool):
                raise
            self._make_folder(folder)  # removed behind our back
            os.rename(spool, final)
        if not self.fsync:
            return Placed(rel, None)
        synced_folder = self._submit(_fsync_dir, folder)
        if synced_folder is None:
            _fsync_dir(folder)
        return Placed(rel, synced_folder)

    def _pool(self) -> ThreadPoolExecutor:
        if self._sync_pool is None:
            with self._folder_lock:
                if self._sync_pool is None:
                    self._sync_pool = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="fsync")
        return self._sync_pool

    def _submit(self, fsync: Callable[[str | os.PathLike[str]], None],
                path: str | os.PathLike[str]) -> Future[None] | None:
        """Run ``fsync(path)`` in the background; ``None`` if the store was closed meanwhile."""
        try:
            return self._pool().submit(fsync, path)
        except RuntimeError:  # "cannot schedule new futures after shutdown": a close() raced us
            return None

    def close(self) -> None:
        """Stop the background fsync threads once the fsyncs under way are done.

        The store stays usable: a later :meth:`place` starts new threads.
        """
        with self._folder_lock:
            pool, self._sync_pool = self._sync_pool, None
        if pool is not None:
            pool.shutdown(wait=True)

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

    def describe(self) -> str:
        """Where the objects are, for messages."""
        return str(self.files)

    def open(self, rel: str, size: int | None = None) -> BinaryIO:
        """Open a stored file for reading (``size``, when known, spares the object store a request)."""
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
        for rel, _size, _mtime in self.iter_objects():
            yield rel

    def iter_objects(self) -> Iterator[tuple[str, int, float]]:
        """Every stored file: (relative path, size, modification time)."""
        for dirpath, _dirnames, filenames in os.walk(self.files):
            for name in filenames:
                full = os.path.join(dirpath, name)
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(full)
                    yield os.path.relpath(full, self.root), st.st_size, st.st_mtime

    def exists(self, rel: str) -> bool:
        """Whether the object ``rel`` is in the store."""
        return self.path(rel).is_file()

    def mtime(self, rel: str) -> float | None:
        """When the object ``rel`` was stored (``None``: it is gone)."""
        try:
            return os.stat(self.path(rel)).st_mtime
        except FileNotFoundError:
            return None

    def fetch(self, rel: str, dest: Path) -> None:
        """Make ``dest`` (a spool file) a copy of the object; a hard link here."""
        os.link(self.path(rel), dest)

    def set_aside(self, rel: str, reason: str) -> None:
        """Move an object that cannot be indexed to the quarantine folder."""
        self.quarantine(self.path(rel), reason)


def open_store(settings: object) -> Store:
    """The store the settings name: files under ``storage.path``, or the S3 bucket of ``[storage.s3]``.

    Raises
    ------
    ObjectStoreError
        When ``objects = "s3"`` and the bucket does not answer.
    """
    get = settings.__getitem__  # type: ignore[attr-defined]
    root = settings.storage_path  # type: ignore[attr-defined]
    if get("storage.objects") == "s3":
        from dicomnode.archive.s3store import S3Store

        store: Store = S3Store(root, endpoint=get("storage.s3.endpoint"), bucket=get("storage.s3.bucket"),
                               region=get("storage.s3.region"), access_key=get("storage.s3.access_key"),
                               secret_key=get("storage.s3.secret_key"), prefix=get("storage.s3.prefix"),
                               cache_mb=get("storage.s3.cache_mb"),
                               timeout=get("storage.s3.timeout"), min_free_mb=get("storage.min_free_mb"))
        store.check_bucket()  # type: ignore[attr-defined]
        return store
    return Store(root, fsync=get("storage.fsync"), min_free_mb=get("storage.min_free_mb"))
