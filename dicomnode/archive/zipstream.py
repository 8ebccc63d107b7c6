"""Streaming ZIP archives for downloads of patients, studies and series.

:func:`stream_zip` yields the bytes of a ZIP file (PKWARE APPNOTE.TXT 6.3) as it reads the
files, so a download of any size starts at once and holds about one chunk in memory.
Entries are *stored* (no compression): DICOM pixel data is either already compressed or
compresses poorly, and deflate would cost more CPU time than it saves on the network.

The archive is written in a single pass. Each local header has bit 3 of its flags set and
zero CRC-32 and sizes; the CRC-32 is computed while the file is copied and written with the
sizes in a *data descriptor* after the data (APPNOTE 4.3.9), and again in the central
directory at the end. A first pass to compute CRCs would read every file twice, doubling
the disk I/O of a study download and delaying its first byte by a full read of the first
file; seeking back to patch headers is impossible on an HTTP response. ZIP64 records
(APPNOTE 4.3.14, 4.5.3) are written when needed: files over 2 GiB (a margin below the 4 GiB
limit, decided before reading), offsets or a central directory past 4 GiB, 65535 entries or
more.

Readers that use the central directory (Info-ZIP ``unzip``, 7-Zip, Windows Explorer, macOS
Archive Utility, Python's :mod:`zipfile`) open these archives; a few strictly streaming
readers (Java's ``ZipInputStream``) refuse stored entries with a data descriptor, the price
of never reading a file twice.

:func:`archive_name` builds the entry names from DICOM strings, which are untrusted.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import struct
import time
import unicodedata
import zlib
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dicomnode.errors import NotFound

LOGGER = logging.getLogger(__name__)

#: Longest component of an entry name, in characters (the DICOM LO length).
MAX_PART_CHARS = 64

#: Files larger than this get ZIP64 local headers and data descriptors. Decided from the
#: size before reading, with a margin in case the file grows while being read.
_ZIP64_FROM = 1 << 31
_LIMIT_32 = 0xFFFFFFFF
_LIMIT_16 = 0xFFFF

_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_DATA_DESCRIPTOR_32 = struct.Struct("<IIII")
_DATA_DESCRIPTOR_64 = struct.Struct("<IIQQ")
_CENTRAL_HEADER = struct.Struct("<IHHHHHHIIIHHHHHII")
_ZIP64_END = struct.Struct("<IQHHIIQQQQ")
_ZIP64_LOCATOR = struct.Struct("<IIQI")
_END = struct.Struct("<IHHHHIIH")

_FLAG_DATA_DESCRIPTOR = 0x0008
_FLAG_UTF8 = 0x0800
_STORED = 0
_VERSION_20 = 20
_VERSION_ZIP64 = 45
_MADE_BY_UNIX = 3 << 8
_REGULAR_FILE_0644 = (stat.S_IFREG | 0o644) << 16

_SEPARATORS = re.compile(r"[/\\]+")
_WINDOWS_FORBIDDEN = re.compile(r'[<>:"|?*]')
_SPACES = re.compile(r"\s+")
#: A component that cleaning would leave unchanged (the common case, checked first):
#: printable ASCII without separators or characters Windows forbids, neither starting nor
#: ending with a dot or a space, at most MAX_PART_CHARS long.
_ALREADY_SAFE = re.compile(
    r"[\w^!#$%&'()+,;=@\[\]{}~`-](?:[\w^!#$%&'()+,;=@\[\]{}~`. -]{0,62}"
    r"[\w^!#$%&'()+,;=@\[\]{}~`-])?",
    re.ASCII,
)
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"COM{n}" for n in "123456789\u00b9\u00b2\u00b3"}
    | {f"LPT{n}" for n in "123456789\u00b9\u00b2\u00b3"}
)


@dataclass
class _Entry:
    """What the central directory needs to know about one stored file."""

    name: bytes
    flags: int
    dos_time: int
    dos_date: int
    offset: int
    zip64: bool
    crc: int = 0
    size: int = 0


def stream_zip(
    entries: Iterable[tuple[str, str | os.PathLike[str] | Callable[[], str | os.PathLike[str]]]],
    *,
    chunk_size: int = 1 << 16,
) -> Iterator[bytes]:
    """Yield the bytes of a stored (uncompressed) ZIP archive of `entries`.

    Memory stays at about two chunks whatever the size of the files, plus the central
    directory, about 100 bytes per entry. `entries` is consumed lazily, so it may be a
    generator over a database query, and nothing is opened before the first chunk is asked
    for. Headers and small files are gathered into chunks of at least `chunk_size` bytes.

    Parameters
    ----------
    entries : iterable of (str, path-like or callable)
        Entry name inside the archive (``/`` separated, ideally made by
        :func:`archive_name`) and the file to store under it (or a function returning it,
        called when the entry's turn comes). Each component of the name
        is cleaned again as by :func:`archive_name` and empty or dot-only components are
        dropped, so no name can escape the folder the archive is extracted to; a name
        already used (ignoring case) gets a ``_2``, ``_3``... suffix before its extension.
    chunk_size : int, optional
        Bytes read from a file at a time, and the usual size of a yielded chunk.

    Yields
    ------
    bytes
        Consecutive pieces of the archive.

    Raises
    ------
    ValueError
        `chunk_size` is not positive.
    OSError
        A file could not be read (other than having disappeared, see Notes).

    Notes
    -----
    A file that no longer exists when its turn comes (deleted meanwhile) is skipped with a
    warning in the log: the archive stays valid but lacks it. Other read errors propagate
    and cut the download short, since the HTTP headers are sent by then.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, not {chunk_size}")
    return _stream(entries, chunk_size)


def _stream(
    entries: Iterable[tuple[str, Any]], chunk_size: int
) -> Iterator[bytes]:
    """Yield the archive: see :func:`stream_zip`, which checks the arguments first."""
    written: list[_Entry] = []
    used: set[str] = set()
    pending = bytearray()
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    offset = 0
    for name, path in entries:
        try:
            if callable(path):
                path = path()  # the object store fetches it only now
            # Unbuffered: readinto() then fills our one buffer, allocating nothing per read.
            source = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the with below
        except (FileNotFoundError, NotFound):
            LOGGER.warning("Archive entry %r skipped: %s no longer exists", name, path)
            continue
        with source:
            status = os.fstat(source.fileno())
            entry = _new_entry(_unique(_entry_name(name), used), status, offset)
            header = _local_header(entry)
            pending += header
            crc = 0
            size = 0
            while count := source.readinto(buffer):
                data = view[:count]
                crc = zlib.crc32(data, crc)
                size += count
                if pending or count < chunk_size:
                    pending += data
                    if len(pending) >= chunk_size:
                        yield bytes(pending)
                        pending.clear()
                else:
                    yield bytes(data)  # a copy: the buffer is reused
        entry.crc = crc
        entry.size = size
        descriptor = _data_descriptor(entry)
        pending += descriptor
        offset += len(header) + size + len(descriptor)
        written.append(entry)
        if len(pending) >= chunk_size:
            yield bytes(pending)
            pending.clear()

    directory_size = 0
    for entry in written:
        record = _central_header(entry)
        directory_size += len(record)
        pending += record
        if len(pending) >= chunk_size:
            yield bytes(pending)
            pending.clear()
    pending += _end_records(len(written), offset, directory_size)
    yield bytes(pending)


def archive_name(*parts: str) -> str:
    """Return a safe relative entry path made of `parts`, one folder level per part.

    Each part is cleaned so that it is one harmless file name whatever it contains:
    NFC-normalised; control, format and unassigned characters (NUL, bidirectional
    overrides...) removed; runs of whitespace made one space; ``/`` and ``\\`` split the
    part into pieces joined with ``_``, and pieces made only of dots (``.``, ``..``) are
    dropped; characters Windows forbids (``<>:"|?*``) become ``_``; leading and trailing
    dots and spaces are removed; Windows device names (``CON``, ``COM1``...) get a leading
    ``_``; the part is cut to :data:`MAX_PART_CHARS` characters, keeping a short
    extension. An empty part becomes ``_``. The result is never absolute, never contains
    ``..`` as a component, and cleaning it again changes nothing.

    Parameters
    ----------
    *parts : str
        Untrusted strings, typically from DICOM attributes
        (``"DOE^JOHN PAT001"``, ``"20200101 CT CHEST"``, ``"SE1 Axial"``, ``"IM0001.dcm"``).

    Returns
    -------
    str
        The parts joined with ``/``: ``"DOE^JOHN PAT001/20200101 CT CHEST/SE1 Axial/IM0001.dcm"``.
    """
    return "/".join(_clean_part(str(part)) for part in parts) if parts else "_"


def _entry_name(name: str) -> str:
    """Return `name` made safe: its ``/`` or ``\\`` separated components cleaned.

    Empty and dot-only components are dropped, so ``"../../etc/passwd"`` becomes
    ``"etc/passwd"``; a name made by :func:`archive_name` is returned unchanged.
    """
    parts = [part for part in _SEPARATORS.split(name) if part.strip(". ")]
    return archive_name(*parts)


def _clean_part(text: str) -> str:
    """Return one path component made safe; see :func:`archive_name`."""
    if _ALREADY_SAFE.fullmatch(text) and "  " not in text and not _is_reserved(text):
        return text
    if not (text.isascii() and text.isprintable()):
        text = unicodedata.normalize("NFC", text)
        text = "".join(
            " " if char.isspace() else char
            for char in text
            if char.isspace() or unicodedata.category(char) not in _DROPPED_CATEGORIES
        )
    pieces = [piece for piece in _SEPARATORS.split(text) if piece.strip(". ")]
    text = "_".join(pieces)
    text = _WINDOWS_FORBIDDEN.sub("_", text)
    text = _SPACES.sub(" ", text).strip(". ")
    text = _truncate(text).strip(". ")
    if not text:
        return "_"
    if _is_reserved(text):
        text = _truncate("_" + text).strip(". ")
    return text


def _is_reserved(text: str) -> bool:
    """Tell whether Windows would take `text` for a device (``CON``, ``com1.txt``...)."""
    return text.split(".")[0].rstrip(" ").upper() in _WINDOWS_RESERVED


def _truncate(text: str) -> str:
    """Cut `text` to MAX_PART_CHARS characters, keeping an extension of up to 8."""
    if len(text) <= MAX_PART_CHARS:
        return text
    stem, dot, extension = text.rpartition(".")
    if dot and stem and 0 < len(extension) <= 8:
        return stem[: MAX_PART_CHARS - len(extension) - 1].rstrip(". ") + "." + extension
    return text[:MAX_PART_CHARS]


def _unique(name: str, used: set[str]) -> str:
    """Return `name`, or `name` with a ``_N`` suffix when a previous entry has it.

    Names are compared case-insensitively, because Windows and macOS file systems would
    make two such entries overwrite each other when extracted.
    """
    candidate = name
    folder, slash, base = name.rpartition("/")
    stem, dot, extension = base.rpartition(".")
    if not dot or not stem:
        stem, dot, extension = base, "", ""
    number = 1
    while candidate.casefold() in used:
        number += 1
        candidate = f"{folder}{slash}{stem}_{number}{dot}{extension}"
    used.add(candidate.casefold())
    return candidate


def _new_entry(name: str, status: os.stat_result, offset: int) -> _Entry:
    """Return the entry of a file about to be stored at `offset`."""
    year, month, day, hour, minute, second = time.localtime(status.st_mtime)[:6]
    if year < 1980:
        year, month, day, hour, minute, second = 1980, 1, 1, 0, 0, 0
    elif year > 2107:
        year, month, day, hour, minute, second = 2107, 12, 31, 23, 59, 58
    encoded = name.encode("utf-8")
    if len(encoded) > _LIMIT_16:
        raise ValueError(f"Archive entry name too long: {name[:80]!r}...")
    return _Entry(
        name=encoded,
        flags=_FLAG_DATA_DESCRIPTOR | (0 if name.isascii() else _FLAG_UTF8),
        dos_time=(hour << 11) | (minute << 5) | (second // 2),
        dos_date=((year - 1980) << 9) | (month << 5) | day,
        offset=offset,
        zip64=status.st_size > _ZIP64_FROM,
    )


def _local_header(entry: _Entry) -> bytes:
    """Return the local file header (APPNOTE 4.3.7), CRC and sizes left to the descriptor.

    A ZIP64 entry carries the ZIP64 extra field with both sizes, zero as well, and
    0xFFFFFFFF in the 32-bit size fields (APPNOTE 4.5.3).
    """
    extra = b""
    sizes = 0
    if entry.zip64:
        extra = struct.pack("<HHQQ", 0x0001, 16, 0, 0)
        sizes = _LIMIT_32
    version = _VERSION_ZIP64 if entry.zip64 else _VERSION_20
    return (
        _LOCAL_HEADER.pack(
            0x04034B50,
            version,
            entry.flags,
            _STORED,
            entry.dos_time,
            entry.dos_date,
            0,
            sizes,
            sizes,
            len(entry.name),
            len(extra),
        )
        + entry.name
        + extra
    )


def _data_descriptor(entry: _Entry) -> bytes:
    """Return the data descriptor (APPNOTE 4.3.9), with 8-byte sizes for ZIP64 entries."""
    packer = _DATA_DESCRIPTOR_64 if entry.zip64 else _DATA_DESCRIPTOR_32
    return packer.pack(0x08074B50, entry.crc, entry.size, entry.size)


def _central_header(entry: _Entry) -> bytes:
    """Return the central directory header (APPNOTE 4.3.12) of `entry`.

    Sizes and offset that do not fit 32 bits are 0xFFFFFFFF and given in a ZIP64 extra
    field, in the order the format sets: uncompressed size, compressed size, offset.
    """
    zip64_values: list[int] = []
    size32 = entry.size
    if entry.zip64 or entry.size >= _LIMIT_32:
        zip64_values += [entry.size, entry.size]
        size32 = _LIMIT_32
    offset32 = entry.offset
    if entry.offset >= _LIMIT_32:
        zip64_values.append(entry.offset)
        offset32 = _LIMIT_32
    extra = b""
    if zip64_values:
        extra = struct.pack(
            f"<HH{len(zip64_values)}Q", 0x0001, 8 * len(zip64_values), *zip64_values
        )
    version = _VERSION_ZIP64 if zip64_values else _VERSION_20
    return (
        _CENTRAL_HEADER.pack(
            0x02014B50,
            _MADE_BY_UNIX | version,
            version,
            entry.flags,
            _STORED,
            entry.dos_time,
            entry.dos_date,
            entry.crc,
            size32,
            size32,
            len(entry.name),
            len(extra),
            0,
            0,
            0,
            _REGULAR_FILE_0644,
            offset32,
        )
        + entry.name
        + extra
    )


def _end_records(count: int, directory_offset: int, directory_size: int) -> bytes:
    """Return the end of central directory record (APPNOTE 4.3.16).

    Preceded by the ZIP64 end of central directory record and its locator (4.3.14, 4.3.15)
    when the count, size or offset of the central directory overflows its field.
    """
    records = b""
    if count >= _LIMIT_16 or directory_offset >= _LIMIT_32 or directory_size >= _LIMIT_32:
        records += _ZIP64_END.pack(
            0x06064B50,
            _ZIP64_END.size - 12,
            _MADE_BY_UNIX | _VERSION_ZIP64,
            _VERSION_ZIP64,
            0,
            0,
            count,
            count,
            directory_size,
            directory_offset,
        )
        zip64_end_offset = directory_offset + directory_size
        records += _ZIP64_LOCATOR.pack(0x07064B50, 0, zip64_end_offset, 1)
    return records + _END.pack(
        0x06054B50,
        0,
        0,
        min(count, _LIMIT_16),
        min(count, _LIMIT_16),
        min(directory_size, _LIMIT_32),
        min(directory_offset, _LIMIT_32),
        0,
    )
