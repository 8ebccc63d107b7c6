"""ZIP files offered for storage: every member through the one ingest path, behind guards.

A ZIP uploaded through the web page comes from anyone who can reach it, so before a member
is read the archive is checked as a whole: the number of entries and the total uncompressed
size they declare are capped (a *zip bomb* declares, or unpacks to, far more than it
weighs). Python's :mod:`zipfile` never returns more bytes than a member declares and checks
its CRC-32 at the end, so the declared sizes are a real bound. Members are never written
under their own names, only streamed into the store's spool, but names that would escape
the folder of an extraction (``../``, absolute paths), symbolic links and encrypted members
are refused anyway, each with its reason, because they mark an archive that was not made by
a DICOM export.
"""
from __future__ import annotations

import os
import re
import stat
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from dicomnode.archive.ingest import REJECTED
from dicomnode.archive.ingest import Ingestor
from dicomnode.archive.ingest import IngestResult
from dicomnode.archive.ingest import Source

#: The first bytes of a ZIP file: a local file header, or the end record of an empty one.
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_DRIVE = re.compile(r"[A-Za-z]:")


@dataclass(frozen=True)
class ZipLimits:
    """Caps on one ZIP file.

    Parameters
    ----------
    max_entries : int
        Members in the central directory, folders included (``[http] max_zip_entries``).
    max_bytes : int
        Sum of the members' declared uncompressed sizes (``[http] max_zip_mb``).
    max_member_bytes : int, optional
        One member's uncompressed size (``[dicom] max_object_mb``, as for C-STORE).
    """

    max_entries: int
    max_bytes: int
    max_member_bytes: int | None = None


def is_zip(path: str | os.PathLike[str]) -> bool:
    """True when the file starts like a ZIP file (and is not a DICOM file with such a preamble)."""
    with open(path, "rb") as f:
        head = f.read(132)
    return head[:4] in _ZIP_MAGIC and head[128:132] != b"DICM"


def unsafe_name(name: str) -> str | None:
    """Why a member name could escape an extraction folder, or None when it cannot."""
    parts = re.split(r"[/\\]", name)
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return "an absolute path"
    if ".." in parts:
        return "a '..' component"
    if "\x00" in name:
        return "a NUL character"
    return None


def ingest_zip(ingestor: Ingestor, path: str | os.PathLike[str], source: Source,
               limits: ZipLimits) -> Iterator[tuple[str, IngestResult]]:
    """Ingest every file member of the ZIP at ``path``; yield ``(member name, result)``.

    When the archive itself is refused (unreadable, too many entries, too large once
    unpacked) a single ``("", rejected result)`` is yielded and nothing is ingested.
    Folders are skipped; every other member yields one result, rejected ones with a reason.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        yield "", _rejected(f"Not a readable ZIP file: {exc}")
        return
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_entries:
            yield "", _rejected(
                f"The ZIP file holds {len(infos)} entries, more than the limit of {limits.max_entries} "
                "([http] max_zip_entries): split it, or send the folder instead")
            return
        declared = sum(info.file_size for info in infos)
        if declared > limits.max_bytes:
            yield "", _rejected(
                f"The ZIP file would unpack to {_mib(declared)}, more than the limit of "
                f"{_mib(limits.max_bytes)} ([http] max_zip_mb): it may be a zip bomb")
            return
        for info in infos:
            if info.is_dir():
                continue
            yield info.filename, _member(ingestor, archive, info, source, limits)


def _member(ingestor: Ingestor, archive: zipfile.ZipFile, info: zipfile.ZipInfo, source: Source,
            limits: ZipLimits) -> IngestResult:
    problem = unsafe_name(info.filename)
    if problem:
        return _rejected(f"Refused: the name holds {problem}")
    if stat.S_ISLNK(info.external_attr >> 16):
        return _rejected("Refused: a symbolic link, not a file")
    if info.flag_bits & 0x1:
        return _rejected("Refused: the entry is encrypted")
    if limits.max_member_bytes is not None and info.file_size > limits.max_member_bytes:
        return _rejected(f"The entry unpacks to {_mib(info.file_size)}, more than the limit of "
                         f"{_mib(limits.max_member_bytes)} ([dicom] max_object_mb)")
    try:
        with archive.open(info) as member:
            return ingestor.ingest_stream(member, source)
    except NotImplementedError as exc:
        return _rejected(f"Unsupported ZIP compression: {exc}")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        return _rejected(f"The ZIP entry is corrupt: {exc}")


def _rejected(reason: str) -> IngestResult:
    return IngestResult(REJECTED, reason=reason, code="rejected")


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):,.0f} MiB"


__all__ = ["ZipLimits", "ingest_zip", "is_zip", "unsafe_name"]
