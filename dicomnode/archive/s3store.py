"""Stored objects in an S3 bucket (``[storage] objects = "s3"``), shared by every node.

The bucket holds the objects under the same relative names as the file store
(``files/ab/cd/<random>.dcm``), so the index rows are the same and ``dolmen migrate-storage``
copies a file store across without rewriting them. What stays on the node's own disk, under
``storage.path``: the spool (objects being received), a read cache of objects, quarantine.

The crash contract is the file store's, with the upload in place of the rename: an object is
spooled locally, parsed and checked; :meth:`S3Store.place` uploads it (Content-MD5, so the
server checks the bytes; a multipart upload is checked by its size afterwards) while the index
statements are prepared; the index row commits only once the upload has succeeded, and only
then is success answered. A failed upload makes the ingest fail (the sender gets a failure
status), and nothing is indexed without its object.

Readers ask :meth:`S3Store.path` for a local file: objects are immutable (names are random and
never reused), so a cached copy is always right. A cache miss streams the object to a temporary
file (in chunks, never whole in memory) that is renamed into the cache; the cache is bounded by
``[storage.s3] cache_mb``, least recently used files going first. A freshly stored object goes
into the cache for free (it is the spool file).
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dicomnode.archive.store import Placed
from dicomnode.archive.store import Store
from dicomnode.errors import DolmenError
from dicomnode.errors import NotFound

LOGGER = logging.getLogger(__name__)

#: Objects up to this size are uploaded by one PUT with Content-MD5; larger ones in parts.
SINGLE_PUT_MAX = 64 * 1024 * 1024
_CHUNK = 1 << 20
UPLOAD_THREADS = 8


class ObjectStoreError(DolmenError):
    """The object store did not take or give an object (unreachable, refused, corrupted)."""

    code = "object_store"
    http_status = 503


def _client(endpoint: str, region: str, access_key: str, secret_key: str, timeout: float) -> Any:
    import boto3  # imported here: a node on the file store never loads it
    from botocore.config import Config

    config = Config(
        region_name=region or "us-east-1",
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=UPLOAD_THREADS * 4,
        s3={"addressing_style": "path"},
        # Checksums in trailers (botocore 1.36+) are refused by several S3-compatible servers;
        # Content-MD5 is what every one of them checks.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.client("s3", endpoint_url=endpoint or None, aws_access_key_id=access_key or None,
                        aws_secret_access_key=secret_key or None, config=config)


def _explain(exc: BaseException, what: str, endpoint: str) -> ObjectStoreError:
    """A message for the user from a boto3/botocore exception."""
    code = ""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    detail = f"{code}: {exc}" if code else str(exc)
    return ObjectStoreError(f"The object store at {endpoint or 'AWS S3'} could not {what} ({detail})")


def _md5_file(path: str | os.PathLike[str]) -> bytes:
    digest = hashlib.md5()  # noqa: S324 - Content-MD5 is MD5 by definition, not a security use
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.digest()


class S3Store(Store):
    """The stored objects in an S3 bucket; spool, cache and quarantine under ``root``.

    Parameters
    ----------
    root : path
        The node's own storage folder (spool, cache, quarantine).
    prefix : str
        Folder of the bucket holding this archive's objects (``""``: its top; several archives
        may share a bucket under different prefixes).
    endpoint, bucket, region, access_key, secret_key : str
        Where the bucket is and how to sign requests (empty keys: boto3's usual lookup —
        environment, ``~/.aws``, instance role).
    cache_mb : int
        Bound on the read cache, in MiB (files used in the last minute are kept beyond it).
    timeout : float
        Seconds before a request to the object store is given up.
    """

    shared = True
    #: Cached files used this recently are kept even beyond the cache's bound.
    CACHE_KEEP_SECONDS = 60.0

    def __init__(self, root: str | os.PathLike[str], *, endpoint: str, bucket: str, region: str = "",
                 access_key: str = "", secret_key: str = "", prefix: str = "", cache_mb: int = 1024,
                 timeout: float = 30.0, min_free_mb: int = 0) -> None:
        super().__init__(root, fsync=False, min_free_mb=min_free_mb)
        self.endpoint, self.bucket = endpoint, bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = _client(endpoint, region, access_key, secret_key, timeout)
        self.cache = self.root / "cache"
        self.cache.mkdir(parents=True, exist_ok=True)
        self.cache_limit = cache_mb * 1024 * 1024
        self._cache_bytes: int | None = None
        self._cache_lock = threading.Lock()
        self._uploads: dict[str, Future[None]] = {}
        self._uploads_lock = threading.Lock()
        self._upload_pool: ThreadPoolExecutor | None = None

    def describe(self) -> str:
        where = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        return f"bucket {where} at {self.endpoint or 'AWS S3'}"

    # -- checking ---------------------------------------------------------------------------

    def check_bucket(self) -> None:
        """Raise :class:`ObjectStoreError` unless the bucket answers (called at start-up)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise _explain(exc, f"open bucket {self.bucket!r}", self.endpoint) from None

    # -- committing -------------------------------------------------------------------------

    def sync_early(self, spool: str | os.PathLike[str], size: int) -> Future[None] | None:
        return None  # the object store makes the object durable, not a local fsync

    def place(self, spool: str | os.PathLike[str], synced: Future[None] | None = None) -> Placed:
        """Start uploading ``spool`` under a new name; :meth:`Placed.wait` returns once it is stored.

        The spool file is kept until then: on success it becomes the object's cached copy, on
        failure it is left to the caller (who removes it), and :meth:`Placed.wait` raises
        :class:`ObjectStoreError`.
        """
        rel = self.new_relpath()
        spool = os.fspath(spool)
        with self._uploads_lock:
            if self._upload_pool is None:
                self._upload_pool = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="s3-put")
            future = self._upload_pool.submit(self._upload, spool, rel)
            self._uploads[rel] = future
        future.add_done_callback(lambda _f: self._forget(rel))
        return Placed(rel, future)

    def _forget(self, rel: str) -> None:
        with self._uploads_lock:
            self._uploads.pop(rel, None)

    def _upload(self, spool: str, rel: str) -> None:
        size = self.put(spool, rel)
        with contextlib.suppress(OSError):
            self._into_cache(spool, rel, size)

    def put(self, local: str | os.PathLike[str], rel: str) -> int:
        """Upload the local file ``local`` as the object ``rel``, checked; return its size.

        One PUT with Content-MD5 (the server refuses bytes that do not match) up to
        :data:`SINGLE_PUT_MAX`, else a multipart upload whose stored size is checked.

        Raises
        ------
        ObjectStoreError
            The object store refused it or could not be reached.
        """
        size = os.stat(local).st_size
        key = self.prefix + rel
        try:
            if size <= SINGLE_PUT_MAX:
                md5 = base64.b64encode(_md5_file(local)).decode("ascii")
                with open(local, "rb") as body:
                    self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentLength=size,
                                           ContentMD5=md5, ContentType="application/dicom")
            else:
                from boto3.s3.transfer import TransferConfig

                self.client.upload_file(os.fspath(local), self.bucket, key,
                                        ExtraArgs={"ContentType": "application/dicom"},
                                        Config=TransferConfig(multipart_threshold=SINGLE_PUT_MAX,
                                                              multipart_chunksize=16 * 1024 * 1024))
                stored = int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
                if stored != size:
                    raise ObjectStoreError(f"The object store kept {stored} bytes of {size} for {rel}")
        except ObjectStoreError:
            raise
        except Exception as exc:
            raise _explain(exc, "store the object", self.endpoint) from None
        return size

    # -- the read cache -----------------------------------------------------------------------

    def _cache_path(self, rel: str) -> Path:
        return self.cache / rel

    def _into_cache(self, local: str, rel: str, size: int) -> None:
        target = self._cache_path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(local, target)
        with self._cache_lock:
            if self._cache_bytes is None:
                self._cache_bytes = self._measure_cache()
            self._cache_bytes += size
            over = self._cache_bytes > self.cache_limit
        if over:
            self._evict()

    def _measure_cache(self) -> int:
        total = 0
        for dirpath, _dirs, names in os.walk(self.cache):
            for name in names:
                with contextlib.suppress(OSError):
                    total += os.stat(os.path.join(dirpath, name)).st_size
        return total

    def _evict(self) -> None:
        """Remove the least recently used cached objects down to 80 % of the bound."""
        with self._cache_lock:
            entries = []
            for dirpath, _dirs, names in os.walk(self.cache):
                for name in names:
                    full = os.path.join(dirpath, name)
                    with contextlib.suppress(OSError):
                        st = os.stat(full)
                        entries.append((st.st_mtime, st.st_size, full))
            total = sum(e[1] for e in entries)
            entries.sort()
            goal = self.cache_limit * 0.8
            young = time.time() - self.CACHE_KEEP_SECONDS  # a reader is about to open it
            for mtime, size, full in entries:
                if total <= goal or mtime > young:
                    break
                with contextlib.suppress(OSError):
                    os.unlink(full)
                    total -= size
            self._cache_bytes = total

    def path(self, rel: str) -> Path:
        """A local file holding the object ``rel``: its cached copy, fetched on a miss.

        Raises
        ------
        NotFound
            When ``rel`` is not a stored object's name or the bucket has no such object.
        ObjectStoreError
            When the object store cannot be reached.
        """
        if not rel.startswith("files/") or ".." in rel:
            raise NotFound(f"No stored file at {rel!r}")
        target = self._cache_path(rel)
        try:
            os.utime(target)  # recently used: evicted last
            return target
        except FileNotFoundError:
            pass
        self.pending(rel)
        tmp = self.spool_dir("cache") / f"{threading.get_ident()}-{os.path.basename(rel)}"
        try:
            size = self._download(rel, tmp)
            self._into_cache(str(tmp), rel, size)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return target

    def _download(self, rel: str, dest: Path) -> int:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.prefix + rel)
        except Exception as exc:
            if _status(exc) == 404:
                raise NotFound(f"The object of this instance is missing from the bucket ({rel})") from None
            raise _explain(exc, "read the object", self.endpoint) from None
        expected = int(answer.get("ContentLength", -1))
        written = 0
        body = answer["Body"]
        try:
            with open(dest, "wb") as out:
                for chunk in body.iter_chunks(_CHUNK):
                    out.write(chunk)
                    written += len(chunk)
        except Exception as exc:
            raise _explain(exc, "read the object", self.endpoint) from None
        finally:
            body.close()
        if expected >= 0 and written != expected:
            raise ObjectStoreError(f"The object store sent {written} bytes of {expected} for {rel}")
        return written

    def pending(self, rel: str) -> None:
        """Wait for an upload of ``rel`` under way in this process (ignoring how it ended)."""
        with self._uploads_lock:
            future = self._uploads.get(rel)
        if future is not None:
            with contextlib.suppress(Exception):
                future.result()

    # -- reading and deleting ---------------------------------------------------------------

    def delete(self, rel: str) -> None:
        """Remove an object from the bucket and the cache; an object already gone is not an error."""
        if not rel.startswith("files/") or ".." in rel:
            raise NotFound(f"No stored file at {rel!r}")
        self.pending(rel)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._cache_path(rel))
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + rel)
        except Exception as exc:
            if _status(exc) != 404:
                LOGGER.warning("Could not delete %s from the bucket: %s", rel, exc)

    def exists(self, rel: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.prefix + rel)
            return True
        except Exception as exc:
            if _status(exc) == 404:
                return False
            raise _explain(exc, "read the object", self.endpoint) from None

    def iter_objects(self) -> Iterator[tuple[str, int, float]]:
        """Every stored object: (name, size, last-modified time)."""
        start = len(self.prefix)
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                          Prefix=self.prefix + "files/")
            for page in pages:
                for entry in page.get("Contents", []):
                    yield entry["Key"][start:], int(entry["Size"]), entry["LastModified"].timestamp()
        except Exception as exc:
            raise _explain(exc, "list the bucket", self.endpoint) from None

    def iter_files(self) -> Iterator[str]:
        for key, _size, _mtime in self.iter_objects():
            yield key

    def mtime(self, rel: str) -> float | None:
        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=self.prefix + rel)
        except Exception:
            return None
        return float(answer["LastModified"].timestamp())

    def fetch(self, rel: str, dest: Path) -> None:
        """Copy the object into the local file ``dest`` (reconciliation re-indexes it)."""
        self._download(rel, dest)

    def set_aside(self, rel: str, reason: str) -> None:
        """Move an object that cannot be indexed to the local quarantine folder."""
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.spool_dir("reconcile") / f"q-{os.path.basename(rel)}"
        self._download(rel, tmp)
        self.quarantine(tmp, f"{reason} (object {rel} of {self.describe()})")
        self.delete(rel)

    def close(self) -> None:
        with self._uploads_lock:
            pool, self._upload_pool = self._upload_pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        super().close()


def _status(exc: BaseException) -> int:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        with contextlib.suppress(TypeError, ValueError):
            return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    return 0


def wait_for(store: S3Store, seconds: float) -> None:
    """Retry :meth:`S3Store.check_bucket` for up to ``seconds`` (an S3 server starting beside us)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            store.check_bucket()
            return
        except ObjectStoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
