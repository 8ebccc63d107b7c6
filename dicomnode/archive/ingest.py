"""The one ingest path: a spooled file, bytes or a stream in, an :class:`IngestResult` out.

C-STORE, the upload form, STOW-RS, ``dolmen import`` and retrieval jobs all end here. It
parses only what indexing needs (pixel data is skipped, large values deferred), validates,
makes the file durable in the store, and commits the rows in one transaction. Success is
reported only after that commit (the crash contract in ARCHITECTURE.md).
"""
from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
import struct
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from typing import Any
from typing import BinaryIO

import peewee
import pydicom
from pydicom import uid as pydicom_uid
from pydicom.charset import convert_encodings
from pydicom.charset import decode_bytes
from pydicom.charset import default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_16
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32
from pydicom.valuerep import TEXT_VR_DELIMS
from pydicom.values import convert_value

from dicomnode import ids
from dicomnode.archive.index import Instance
from dicomnode.archive.index import Patient
from dicomnode.archive.index import Series
from dicomnode.archive.index import Study
from dicomnode.archive.index import db
from dicomnode.archive.index import utcnow
from dicomnode.archive.index import write_transaction
from dicomnode.archive.resources import remove_instance_rows
from dicomnode.archive.store import Store
from dicomnode.errors import DolmenError
from dicomnode.errors import RejectedInstance
from dicomnode.errors import StorageFull

LOGGER = logging.getLogger(__name__)

STORED = "stored"
DUPLICATE = "duplicate"
REJECTED = "rejected"

# PS3.5 9.1: at most 64 characters, digits and dots. Real devices send leading zeros in
# components, so those are tolerated; anything that could be a path is not.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")

_DEFER = 4096  # values longer than this are skipped, not read, while indexing


@dataclass(frozen=True)
class Source:
    """Where an object came from, kept with the instance and in logs."""

    origin: str = "import"  # dicom | upload | stow | import | retrieve
    aet: str = ""
    ip: str = ""
    called_aet: str = ""


@dataclass(frozen=True)
class IngestResult:
    """What happened to one object.

    ``status`` is ``stored``, ``duplicate`` (already stored, nothing changed) or ``rejected``
    with ``reason`` for the user. The identifiers are set unless the object was rejected
    before they could be read.
    """

    status: str
    reason: str = ""
    instance_id: str = ""
    study_id: str = ""
    series_id: str = ""
    patient_id: str = ""
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    study_instance_uid: str = ""
    code: str = ""

    @property
    def ok(self) -> bool:
        """True when the object is in the archive (stored now or before)."""
        return self.status in (STORED, DUPLICATE)


# ``get(keyword)`` returns an attribute's value as pydicom's ``Dataset.get`` does (``None``
# when absent) and may raise when the value cannot be decoded.
_Getter = Callable[[str], Any]


def _text(get: _Getter, keyword: str) -> str:
    try:
        elem = get(keyword)
    except Exception:  # a value that cannot be decoded must not stop indexing
        return ""
    if elem is None or elem == "":
        return ""
    if isinstance(elem, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in elem)
    return str(elem).strip(" \x00")


def _int(get: _Getter, keyword: str) -> int | None:
    try:
        value = get(keyword)
        if value is None or value == "":
            return None
        return int(value)
    except Exception:
        return None


def _uid(get: _Getter, keyword: str, label: str) -> str:
    try:
        value = get(keyword)
    except Exception:
        value = None
    text = str(value).strip(" \x00") if value is not None else ""
    if not text:
        raise RejectedInstance(f"Missing {label} ({keyword}): an object without it cannot be filed")
    if len(text) > 64 or not _UID.fullmatch(text):
        shown = text[:70].encode("unicode_escape").decode("ascii")
        raise RejectedInstance(f"Invalid {keyword} {shown!r}: a UID is at most 64 digits and dots (PS3.5 9.1)")
    return text


def read_header(path: str | os.PathLike[str]) -> Dataset:
    """Parse what indexing needs from a DICOM file, skipping pixel data and long values.

    Raises
    ------
    RejectedInstance
        When the file is not DICOM (no ``DICM`` prefix at byte 128), is truncated, or cannot
        be parsed.
    """
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            preamble = f.read(132)
            if len(preamble) < 132 or preamble[128:132] != b"DICM":
                raise RejectedInstance("Not a DICOM file: no 'DICM' prefix at byte 128 (PS3.10 7.1)")
            f.seek(0)
            ds = pydicom.dcmread(f, defer_size=_DEFER, stop_before_pixels=False)
            # Values longer than _DEFER were skipped by seeking: find where the last one ends,
            # so that a file cut short inside its pixel data is caught.
            end = 0
            for tag in list(ds.keys()):
                raw = ds.get_item(tag, keep_deferred=True)
                tell = getattr(raw, "value_tell", None)
                length = getattr(raw, "length", 0)
                if tell is not None and length not in (None, 0xFFFFFFFF):
                    end = max(end, tell + length)
    except RejectedInstance:
        raise
    except (InvalidDicomError, EOFError) as exc:
        raise RejectedInstance(f"Not a readable DICOM file: {exc}") from exc
    except Exception as exc:
        raise RejectedInstance(f"The file is corrupt or truncated: {type(exc).__name__}: {exc}") from exc
    deflated = str(ds.file_meta.get("TransferSyntaxUID", "")) == "1.2.840.10008.1.2.1.99"
    if end > size and not deflated:  # a deflated dataset's offsets are in the inflated stream
        raise RejectedInstance(f"Truncated file: an element ends at byte {end} but the file has {size} bytes")
    if "TransferSyntaxUID" not in ds.file_meta:
        raise RejectedInstance("Missing file meta information: no (0002,0010) Transfer Syntax UID")
    return ds


@dataclass(frozen=True)
class _Header:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    fields: dict[str, Any]


def _header(ds: Dataset) -> _Header:
    """The indexed attributes of a dataset read by :func:`read_header`."""
    return _make_header(ds.get, str(ds.file_meta.TransferSyntaxUID))


def _make_header(get: _Getter, transfer_syntax: str) -> _Header:
    sop_uid = _uid(get, "SOPInstanceUID", "SOP Instance UID")
    study_uid = _uid(get, "StudyInstanceUID", "Study Instance UID")
    series_uid = _uid(get, "SeriesInstanceUID", "Series Instance UID")
    sop_class = _uid(get, "SOPClassUID", "SOP Class UID")
    # A file whose meta disagrees with its dataset (common in the wild) is filed under the
    # dataset's UID, as Orthanc does; over C-STORE the command set is checked instead.
    # Text values are decoded with (0008,0005) Specific Character Set as they are read.
    name = _text(get, "PatientName")
    frames = _int(get, "NumberOfFrames")
    fields = {
        "patient_name": name,
        "patient_name_key": name.upper(),
        "patient_birth_date": _text(get, "PatientBirthDate"),
        "patient_sex": _text(get, "PatientSex"),
        "study_date": _text(get, "StudyDate"),
        "study_time": _text(get, "StudyTime"),
        "study_description": _text(get, "StudyDescription"),
        "accession_number": _text(get, "AccessionNumber"),
        "study_id": _text(get, "StudyID"),
        "referring_physician_name": _text(get, "ReferringPhysicianName"),
        "modality": _text(get, "Modality"),
        "series_number": _int(get, "SeriesNumber"),
        "series_description": _text(get, "SeriesDescription"),
        "body_part_examined": _text(get, "BodyPartExamined"),
        "series_date": _text(get, "SeriesDate"),
        "series_time": _text(get, "SeriesTime"),
        "instance_number": _int(get, "InstanceNumber"),
        "number_of_frames": frames if frames and frames > 0 else 1,
        "transfer_syntax_uid": transfer_syntax,
    }
    return _Header(sop_uid, sop_class, study_uid, series_uid, _text(get, "PatientID"), fields)


def read_index_header(path: str | os.PathLike[str]) -> _Header:
    """The attributes the index needs, read by :func:`fast_header` or else by pydicom.

    Raises
    ------
    RejectedInstance
        As :func:`read_header` does, or for a missing or invalid UID.
    """
    fast = fast_header(path)
    return fast if fast is not None else _header(read_header(path))


# -- the fast header reader -------------------------------------------------------------------
#
# pydicom's dcmread builds a Dataset of every element (70 or so in a CT image) and then each
# of the 24 attributes indexed costs a keyword lookup, a conversion hook and a DataElement:
# ~3 ms per instance, most of a C-STORE's CPU. The reader below walks the elements by their
# lengths without building anything, keeps the raw bytes of the attributes indexed, and
# converts them with pydicom's own convert_value and the character set pydicom would use, so
# the values are pydicom's. It reads the common case only: Little Endian (explicit or
# implicit VR), defined lengths, sequences of undefined length skipped item by item,
# encapsulated pixel data skipped fragment by fragment. Anything else, and anything pydicom
# would read with a warning, a guess or an error (a VR other than the transfer syntax says,
# a value past the end of the file, stray bytes, an unknown VR, deflate, big endian...)
# makes it give up, and the file is read by pydicom as before, so that rejections and their
# messages are pydicom's.

_WANTED = {
    0x00080005: "SpecificCharacterSet",
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x00080020: "StudyDate",
    0x00080021: "SeriesDate",
    0x00080030: "StudyTime",
    0x00080031: "SeriesTime",
    0x00080050: "AccessionNumber",
    0x00080060: "Modality",
    0x00080090: "ReferringPhysicianName",
    0x00081030: "StudyDescription",
    0x0008103E: "SeriesDescription",
    0x00100010: "PatientName",
    0x00100020: "PatientID",
    0x00100030: "PatientBirthDate",
    0x00100040: "PatientSex",
    0x00180015: "BodyPartExamined",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
    0x00200010: "StudyID",
    0x00200011: "SeriesNumber",
    0x00200013: "InstanceNumber",
    0x00280008: "NumberOfFrames",
}
_WANTED_VR = {tag: str(dictionary_VR(tag)) for tag in _WANTED}
_CHARSET = 0x00080005
_TRANSFER_SYNTAX = 0x00020010
_ITEM = 0xFFFEE000  # (FFFE,E000) Item (PS3.5 7.5)
_ITEM_END = 0xFFFEE00D  # (FFFE,E00D) Item Delimitation Item
_SEQUENCE_END = 0xFFFEE0DD  # (FFFE,E0DD) Sequence Delimitation Item
_UNDEFINED = 0xFFFFFFFF
_TAG_LENGTH = struct.Struct("<HHL")  # tag and 32-bit length: implicit VR, items, delimiters
_EXPLICIT = struct.Struct("<HH2sH")  # tag, VR, 16-bit length (PS3.5 7.1.2)
_UINT32 = struct.Struct("<L")
_LONG_VRS = frozenset(str(vr).encode() for vr in EXPLICIT_VR_LENGTH_32)  # 2 reserved bytes, 32-bit length
_SHORT_VRS = frozenset(str(vr).encode() for vr in EXPLICIT_VR_LENGTH_16)
_ENCAPSULATED_VRS = (b"OB", b"OW")


class _Doubt(Exception):
    """The fast reader cannot vouch for this file: pydicom reads it."""


def _is_vr(b0: int, b1: int) -> bool:
    """pydicom's test for an explicit VR: two upper-case letters (filereader._is_implicit_vr)."""
    return 0x40 < b0 < 0x5B and 0x40 < b1 < 0x5B


class _Walker:
    """Walks the elements of a memory-mapped Little Endian DICOM file by their lengths."""

    def __init__(self, buf: mmap.mmap, size: int) -> None:
        self.buf = buf
        self.size = size

    def element(self, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
        """Tag, VR (``None`` in implicit VR and for items), length and value position."""
        if self.size - pos < 8:
            raise _Doubt
        if implicit:
            group, elem, length = _TAG_LENGTH.unpack_from(self.buf, pos)
            return group << 16 | elem, None, length, pos + 8
        group, elem, vr, length = _EXPLICIT.unpack_from(self.buf, pos)
        tag = group << 16 | elem
        if group == 0xFFFE:  # items and delimiters have no VR (PS3.5 7.5)
            return tag, None, _UINT32.unpack_from(self.buf, pos + 4)[0], pos + 8
        if vr in _SHORT_VRS:
            return tag, vr, length, pos + 8
        if vr in _LONG_VRS and self.size - pos >= 12:
            return tag, vr, _UINT32.unpack_from(self.buf, pos + 8)[0], pos + 12
        raise _Doubt

    def value_end(self, pos: int, length: int) -> int:
        end = pos + length
        if end > self.size:
            raise _Doubt  # truncated: pydicom says so with the offsets
        return end

    def undefined(self, pos: int, tag: int, vr: bytes | None, implicit: bool) -> int:
        """Skip the value of an element of undefined length starting at ``pos``; return its end."""
        if vr is None and implicit:
            try:
                vr = str(dictionary_VR(tag)).encode()
            except KeyError:
                raise _Doubt from None  # pydicom guesses by peeking at the next tag
        if vr == b"SQ":
            return self.sequence(pos, implicit)
        if vr in _ENCAPSULATED_VRS and not implicit:
            return self.encapsulated(pos)
        raise _Doubt  # UN sequences, implicit VR pixel data: pydicom's heuristics

    def sequence(self, pos: int, implicit: bool) -> int:
        """Skip the items of a sequence of undefined length (PS3.5 7.5.2)."""
        while True:
            tag, _vr, length, pos = self.element(pos, True)
            if tag == _SEQUENCE_END:
                return pos
            if tag != _ITEM:
                raise _Doubt
            if length == _UNDEFINED:
                pos = self.dataset(pos, None, implicit)
            else:
                end = self.value_end(pos, length)
                if self.dataset(pos, end, implicit) != end:
                    raise _Doubt
                pos = end

    def dataset(self, pos: int, end: int | None, implicit: bool) -> int:
        """Skip an item's data set, up to ``end`` or its Item Delimitation Item."""
        if not implicit and self.size - pos >= 6 and not _is_vr(self.buf[pos + 4], self.buf[pos + 5]):
            implicit = True  # PS3.5 6.2.2: an item may be implicit VR in an explicit VR file
        while end is None or pos < end:
            tag, vr, length, pos = self.element(pos, implicit)
            if tag == _ITEM_END:
                if end is not None:
                    raise _Doubt
                return pos
            if tag >> 16 == 0xFFFE:
                raise _Doubt
            if length == _UNDEFINED:
                pos = self.undefined(pos, tag, vr, implicit)
            else:
                pos = self.value_end(pos, length)
        return pos

    def encapsulated(self, pos: int) -> int:
        """Skip encapsulated fragments up to the Sequence Delimitation Item (PS3.5 A.4)."""
        while True:
            tag, _vr, length, pos = self.element(pos, True)
            if tag == _SEQUENCE_END:
                if length != 0:
                    raise _Doubt
                return pos
            if tag != _ITEM or length == _UNDEFINED:
                raise _Doubt
            pos = self.value_end(pos, length)


def _scan(buf: mmap.mmap, size: int) -> tuple[str, bool, dict[int, tuple[str, bytes]]]:
    """Transfer syntax, implicit VR flag and ``{tag: (VR, value)}`` of the indexed attributes."""
    if size < 144 or buf[128:132] != b"DICM":
        raise _Doubt
    walk = _Walker(buf, size)
    # File Meta Information: explicit VR little endian, group 0002 (PS3.10 7.1), starting
    # with its group length (pydicom converts that one, and the first element, as it reads).
    if buf[132:140] != b"\x02\x00\x00\x00UL\x04\x00":
        raise _Doubt
    pos = 132
    syntax = None
    while pos < size:
        if buf[pos:pos + 2] != b"\x02\x00":  # the data set begins
            break
        tag, vr, length, value = walk.element(pos, False)
        if length == _UNDEFINED:
            raise _Doubt
        pos = walk.value_end(value, length)
        if tag == _TRANSFER_SYNTAX:
            if vr != b"UI":
                raise _Doubt
            syntax = buf[value:pos].decode(default_encoding).rstrip("\0 ")  # pydicom's convert_UI
            if "\\" in syntax:
                raise _Doubt
            syntax = str(pydicom_uid.UID(syntax))  # which also strips white space
    if not syntax or pos >= size or buf[pos:pos + 2] == b"\0\0":
        raise _Doubt  # no transfer syntax, no data set, or a command group (0000) in the file
    if syntax == pydicom_uid.ImplicitVRLittleEndian:
        implicit = True
    elif syntax in (pydicom_uid.ExplicitVRBigEndian, pydicom_uid.DeflatedExplicitVRLittleEndian) \
            or syntax in pydicom_uid.PrivateTransferSyntaxes:
        raise _Doubt
    else:
        implicit = False  # explicit VR little endian, and every encapsulated syntax (PS3.5 A.4)
    if size - pos >= 6 and _is_vr(buf[pos + 4], buf[pos + 5]) == implicit:
        raise _Doubt  # pydicom would switch VR mode with a warning
    raws: dict[int, tuple[str, bytes]] = {}
    while pos < size:
        tag, vr, length, value = walk.element(pos, implicit)
        if tag >> 16 == 0xFFFE:
            raise _Doubt
        if length == _UNDEFINED:
            if tag in _WANTED:
                raise _Doubt
            pos = walk.undefined(value, tag, vr, implicit)
            continue
        pos = walk.value_end(value, length)
        if tag in _WANTED:
            vr_name = _WANTED_VR[tag] if vr is None else vr.decode()
            if vr_name in ("UN", "SQ"):
                raise _Doubt  # pydicom substitutes the dictionary VR, or parses a sequence
            raws[tag] = (vr_name, buf[value:pos])  # the last of duplicates wins, as in pydicom
    return syntax, implicit, raws


_DEFAULT_REPERTOIRE_VRS = frozenset({"UI", "CS", "DA", "TM"})  # always decoded in pydicom's default encoding
_TEXT_VRS = frozenset({"SH", "LO"})  # decoded with the Specific Character Set (PS3.5 6.1.2.3)
_INTEGER = re.compile(r"\s*[+-]?[0-9]{1,15}\s*")  # pydicom goes through float(): exact to 15 digits


def _convert(tag: int, vr: str, value: bytes, charset: list[str], implicit: bool) -> Any:
    """A raw value as pydicom converts it (``pydicom.values.convert_value``).

    The single values of the common VRs are converted here, without pydicom's per-value
    validation, which only warns at the reading validation mode Dolmen uses; the rest (empty
    or multiple values, PN, any other VR, or pydicom configured to raise or to convert dates)
    by pydicom itself.
    """
    if value and _plain_values():
        if vr in _DEFAULT_REPERTOIRE_VRS:
            # convert_string / convert_UI: trailing padding off; UID() strips white space too.
            text = value.decode(default_encoding).rstrip("\0 ")
            if text and "\\" not in text:
                return text.strip() if vr == "UI" else text
        elif vr in _TEXT_VRS:
            # convert_text: decode_bytes, one value, trailing padding off.
            text = decode_bytes(value, charset, TEXT_VR_DELIMS)
            if "\\" not in text:
                return text.rstrip("\0 ")
        elif vr == "IS":
            # convert_IS_string then IS(): a plain integer is int() of its text.
            text = value.decode(default_encoding).rstrip("\0 ")
            if _INTEGER.fullmatch(text):
                return int(text)
    return convert_value(vr, RawDataElement(BaseTag(tag), vr, len(value), value, 0, implicit, True), charset)


def _plain_values() -> bool:
    """True when pydicom is configured as Dolmen leaves it: warn on invalid values, dates as text."""
    return (pydicom.config.settings.reading_validation_mode != pydicom.config.RAISE
            and not pydicom.config.datetime_conversion and pydicom.config.data_element_callback is None)


def fast_header(path: str | os.PathLike[str]) -> _Header | None:
    """The attributes the index needs, or ``None`` when pydicom must read the file.

    The values are the ones :func:`read_header` and ``_header`` give; only well-formed files
    of the common kinds are read (see the comment above).

    Raises
    ------
    RejectedInstance
        For a missing or invalid UID, as ``_header`` does.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 144:
                return None
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                syntax, implicit, raws = _scan(buf, size)
    except (_Doubt, OSError, ValueError, struct.error, IndexError):
        return None
    # The character set pydicom works out while reading the file (read_dataset): from the
    # (0008,0005) value converted in its default encoding, else that default.
    try:
        charset = [default_encoding]
        if _CHARSET in raws:
            charset = convert_encodings(_convert(_CHARSET, *raws[_CHARSET], charset, implicit))
    except Exception:
        return None  # pydicom fails or warns its own way
    by_keyword = {_WANTED[tag]: tag for tag in raws}

    def get(keyword: str) -> Any:
        tag = by_keyword.get(keyword)
        return None if tag is None else _convert(tag, *raws[tag], charset, implicit)

    return _make_header(get, syntax)


class Ingestor:
    """Files objects into one store and the bound index.

    Parameters
    ----------
    store : Store
        Where files go.
    overwrite : bool
        A second copy of an instance replaces the first (``storage.overwrite``).
    max_bytes : int, optional
        Cap on one object spooled from a stream.
    """

    def __init__(self, store: Store, *, overwrite: bool = False, max_bytes: int | None = None) -> None:
        self.store = store
        self.overwrite = overwrite
        self.max_bytes = max_bytes

    # -- entry points -----------------------------------------------------------------------

    def ingest_stream(self, stream: BinaryIO | IO[bytes], source: Source, *, owner: str = "web") -> IngestResult:
        """Spool a stream (upload, STOW-RS part) and ingest it."""
        try:
            spool = self.store.spool_stream(stream, owner=owner, max_bytes=self.max_bytes)
        except DolmenError as exc:
            return IngestResult(REJECTED, reason=exc.message, code=exc.code)
        return self.ingest_spooled(spool, source)

    def ingest_bytes(self, data: bytes, source: Source, *, owner: str = "web") -> IngestResult:
        """Spool bytes and ingest them."""
        try:
            spool = self.store.spool_bytes(data, owner=owner)
        except DolmenError as exc:
            return IngestResult(REJECTED, reason=exc.message, code=exc.code)
        return self.ingest_spooled(spool, source)

    def ingest_copy(self, path: str | os.PathLike[str], source: Source, *, owner: str = "import") -> IngestResult:
        """Ingest a copy of a file the user owns (``dolmen import``); the original is left alone."""
        try:
            with open(path, "rb") as f:
                spool = self.store.spool_stream(f, owner=owner, max_bytes=self.max_bytes)
        except OSError as exc:
            return IngestResult(REJECTED, reason=f"Cannot read {path}: {exc.strerror}")
        except DolmenError as exc:
            return IngestResult(REJECTED, reason=exc.message, code=exc.code)
        return self.ingest_spooled(spool, source)

    def ingest_spooled(self, spool: str | os.PathLike[str], source: Source, *,
                       expected_sop_instance_uid: str | None = None,
                       expected_sop_class_uid: str | None = None) -> IngestResult:
        """Ingest a file already in the store's spool; it is moved into the store or removed.

        Parameters
        ----------
        spool : path
            A file in the spool folder (same volume as the store). It is consumed.
        source : Source
            Origin of the object.
        expected_sop_instance_uid, expected_sop_class_uid : str, optional
            The values of the C-STORE command set; the dataset must agree with them.
        """
        spool = Path(spool)
        try:
            return self._ingest(spool, source, expected_sop_instance_uid, expected_sop_class_uid)
        except DolmenError as exc:
            LOGGER.info("Rejected object from %s %s %s: %s", source.origin, source.aet, source.ip, exc.message)
            return IngestResult(REJECTED, reason=exc.message, code=exc.code)
        except RecursionError:
            # The header readers recurse into sequences: a few hundred levels exhaust Python's
            # stack (a hostile file nests 10,000). No real object nests that deep.
            reason = "Sequences nested too deeply to be read: the object was refused"
            LOGGER.warning("Rejected object from %s %s %s: %s", source.origin, source.aet, source.ip, reason)
            return IngestResult(REJECTED, reason=reason, code="rejected")
        except peewee.OperationalError as exc:
            # The index is locked past its busy timeout, read-only or gone. The file was removed
            # again (the crash contract): nothing is half-stored, and the sender may retry.
            reason = f"The index is unavailable ({exc}): nothing was stored, try again later"
            LOGGER.error("Object from %s %s %s not stored: %s", source.origin, source.aet, source.ip, reason)
            return IngestResult(REJECTED, reason=reason, code="index_unavailable")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spool)

    # -- the path ---------------------------------------------------------------------------

    def _ingest(self, spool: Path, source: Source, expected_sop: str | None,
                expected_class: str | None) -> IngestResult:
        self.store.check_space()
        size = os.stat(spool).st_size
        # The fsync of the file (the longest step) runs while the header is parsed and
        # checked; the store waits for it before renaming (the crash contract's order).
        synced = self.store.sync_early(spool, size)
        try:
            return self._file(spool, size, synced, source, expected_sop, expected_class)
        finally:
            if synced is not None:
                synced.cancel()  # not needed after all (rejected, duplicate): skip if not started

    def _file(self, spool: Path, size: int, synced: Future[None] | None, source: Source,
              expected_sop: str | None, expected_class: str | None) -> IngestResult:
        head = read_index_header(spool)
        if expected_sop and expected_sop.strip(" \x00") != head.sop_instance_uid:
            raise RejectedInstance(
                f"The C-STORE command names SOP Instance UID {expected_sop[:64]!r} but the dataset "
                f"holds {head.sop_instance_uid!r}")
        if expected_class and expected_class.strip(" \x00") != head.sop_class_uid:
            raise RejectedInstance(
                f"The C-STORE command names SOP Class {expected_class[:64]!r} but the dataset "
                f"holds {head.sop_class_uid!r}")
        pid = ids.patient_id(head.patient_id)
        stid = ids.study_id(head.patient_id, head.study_instance_uid)
        seid = ids.series_id(head.patient_id, head.study_instance_uid, head.series_instance_uid)
        inid = ids.instance_id(head.patient_id, head.study_instance_uid, head.series_instance_uid,
                               head.sop_instance_uid)
        base = dict(instance_id=inid, study_id=stid, series_id=seid, patient_id=pid,
                    sop_instance_uid=head.sop_instance_uid, sop_class_uid=head.sop_class_uid,
                    study_instance_uid=head.study_instance_uid)

        # Cheap early answer for the common re-send: no fsync, no write lock.
        if not self.overwrite:
            found = _existing(head.sop_instance_uid)
            if found is not None:
                return self._duplicate(found, inid, base)

        placed = self.store.place(spool, synced)
        rel = placed.rel
        old_path: str | None = None
        try:
            with write_transaction():
                found = _existing(head.sop_instance_uid)
                if found is not None:
                    if found[1] != inid:
                        raise _Refused(self._conflict_reason(found[0]))
                    if not self.overwrite:
                        raise _Duplicate(found)
                    old_path = found[2]
                    remove_instance_rows([found[0]], prune=False)  # same series: keep parents
                self._insert(head, source, rel, size, pid, stid, seid, inid)
                # The statements ran while the folder was being fsynced; the rows commit
                # only once the file is durable under its name (the crash contract).
                placed.wait()
        except _Duplicate as dup:
            self.store.delete(rel)
            return self._duplicate(dup.found, inid, base)
        except _Refused as ref:
            self.store.delete(rel)
            raise RejectedInstance(ref.reason) from None
        except peewee.IntegrityError as exc:
            self.store.delete(rel)
            raise RejectedInstance(f"The index refused the instance: {exc}") from exc
        except BaseException:
            self.store.delete(rel)
            raise
        if old_path:
            self.store.delete(old_path)
        return IngestResult(STORED, **base)

    def _duplicate(self, found: tuple[int, str, str], inid: str, base: dict[str, str]) -> IngestResult:
        if found[1] != inid:
            raise RejectedInstance(self._conflict_reason(found[0]))
        return IngestResult(DUPLICATE, reason="Already stored", **base)

    @staticmethod
    def _conflict_reason(instance_pk: int) -> str:
        existing = Instance.get_by_id(instance_pk)
        study = existing.series.study
        return (f"SOP Instance UID {existing.sop_instance_uid} is already stored in another study "
                f"(patient {study.patient.patient_id!r}, study {study.study_instance_uid}); "
                "a SOP Instance UID must be unique, so this copy was refused")

    def _insert(self, head: _Header, source: Source, rel: str, size: int,
                pid: str, stid: str, seid: str, inid: str) -> None:
        """Insert the instance row and bump its parents' counters.

        This is the hot path of every C-STORE, so it is plain SQL (a handful of statements on
        indexed columns) rather than peewee's query builder, whose SQL generation alone costs
        more than the statements. Parent rows are created through the models when new.
        """
        f = head.fields
        now = utcnow()
        database = db.obj
        p = database.param
        row = database.execute_sql(
            f"SELECT se.pk, st.pk, st.patient_pk, st.modalities_in_study, st.sop_classes_in_study "
            f"FROM series se JOIN study st ON se.study_pk = st.pk WHERE se.public_id = {p}",
            (seid,)).fetchone()
        new_series = new_study = new_patient = False
        if row is None:
            patient, new_patient = Patient.get_or_create(public_id=pid, defaults={
                "patient_id": head.patient_id, "patient_name": f["patient_name"],
                "patient_name_key": f["patient_name_key"],
                "patient_birth_date": f["patient_birth_date"], "patient_sex": f["patient_sex"]})
            study, new_study = Study.get_or_create(public_id=stid, defaults={
                "patient": patient, "study_instance_uid": head.study_instance_uid,
                **{k: f[k] for k in ("study_date", "study_time", "study_description",
                                     "accession_number", "study_id", "referring_physician_name")}})
            series = Series.create(
                public_id=seid, study=study, series_instance_uid=head.series_instance_uid,
                **{k: f[k] for k in ("modality", "series_number", "series_description",
                                     "body_part_examined", "series_date", "series_time")})
            new_series = True
            row = (series.pk, study.pk, patient.pk, study.modalities_in_study, study.sop_classes_in_study)
        series_pk, study_pk, patient_pk, modalities, classes = row
        database.execute_sql(
            "INSERT INTO instance (public_id, series_pk, sop_instance_uid, sop_class_uid, "
            "instance_number, number_of_frames, transfer_syntax_uid, file_size, path, received_at, "
            "origin, sender_aet, sender_ip, called_aet) VALUES "
            f"({', '.join([p] * 14)})",
            (inid, series_pk, head.sop_instance_uid, head.sop_class_uid, f["instance_number"],
             f["number_of_frames"], f["transfer_syntax_uid"], size, rel, now, source.origin,
             source.aet[:64], source.ip[:64], source.called_aet[:64]))
        database.execute_sql(
            f"UPDATE series SET num_instances = num_instances + 1, size = size + {p}, updated_at = {p} "
            f"WHERE pk = {p}", (size, now, series_pk))
        mods = set(filter(None, (modalities or "").split("\\")))
        if f["modality"]:
            mods.add(f["modality"])
        class_set = set(filter(None, (classes or "").split("\\")))
        class_set.add(head.sop_class_uid)
        database.execute_sql(
            f"UPDATE study SET num_instances = num_instances + 1, size = size + {p}, "
            f"num_series = num_series + {p}, updated_at = {p}, modalities_in_study = {p}, "
            f"sop_classes_in_study = {p} WHERE pk = {p}",
            (size, int(new_series), now, "\\".join(sorted(mods)), "\\".join(sorted(class_set)), study_pk))
        database.execute_sql(
            f"UPDATE patient SET num_instances = num_instances + 1, size = size + {p}, "
            f"num_series = num_series + {p}, num_studies = num_studies + {p}, updated_at = {p} "
            f"WHERE pk = {p}", (size, int(new_series), int(new_study), now, patient_pk))


def _existing(sop_instance_uid: str) -> tuple[int, str, str] | None:
    """(pk, public id, path) of the instance already holding this SOP Instance UID, if any."""
    database = db.obj
    row = database.execute_sql(
        f"SELECT pk, public_id, path FROM instance WHERE sop_instance_uid = {database.param}",
        (sop_instance_uid,)).fetchone()
    return None if row is None else (int(row[0]), str(row[1]), str(row[2]))


class _Duplicate(Exception):
    def __init__(self, found: tuple[int, str, str]) -> None:
        self.found = found


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


__all__ = ["DUPLICATE", "REJECTED", "STORED", "IngestResult", "Ingestor", "Source", "StorageFull",
           "fast_header", "read_header", "read_index_header"]
