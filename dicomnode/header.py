"""The one reader of DICOM file headers: what indexing needs, and where the pixel data is.

* :func:`read_index_header` gives the attributes the index keeps (:class:`IndexHeader`), by
  :func:`fast_header` (a walk of the elements that builds nothing) or, when that one is in
  doubt, by :func:`read_header` (pydicom, pixel data skipped, large values deferred); both
  validate (``DICM`` prefix, truncation, UIDs) and raise
  :class:`~dicomnode.errors.RejectedInstance` with the reason for the user.
* :func:`locate_pixels` reads a file up to its pixel data and says where the value is
  (:class:`PixelLocation`), without reading it, for the renderer and for WADO-RS frames and
  bulk data; a deflated data set is measured before it is inflated.
"""
from __future__ import annotations

import io
import logging
import mmap
import os
import re
import struct
import zlib
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from typing import BinaryIO

import pydicom
from pydicom import uid as pydicom_uid
from pydicom.charset import convert_encodings
from pydicom.charset import decode_bytes
from pydicom.charset import default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.filereader import read_file_meta_info
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pydicom.uid import ExplicitVRBigEndian
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.uid import ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_16
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32
from pydicom.valuerep import TEXT_VR_DELIMS
from pydicom.values import convert_value

from dicomnode.archive import maintags
from dicomnode.errors import RejectedInstance
from dicomnode.errors import RenderError

LOGGER = logging.getLogger(__name__)

# PS3.5 9.1: at most 64 characters, digits and dots. Real devices send leading zeros in
# components, so those are tolerated; anything that could be a path is not.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")

_DEFER = 4096  # values longer than this are skipped, not read, while indexing


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


def _group(name: str, n: int) -> str:
    """Component group ``n`` of a person name (1 ideographic, 2 phonetic), upper-cased."""
    groups = name.upper().split("=")
    return groups[n] if len(groups) > n else ""


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
class IndexHeader:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    fields: dict[str, Any]


def _header(ds: Dataset) -> IndexHeader:
    """The indexed attributes of a dataset read by :func:`read_header`."""
    return _make_header(ds.get, str(ds.file_meta.TransferSyntaxUID))


def _make_header(get: _Getter, transfer_syntax: str) -> IndexHeader:
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
        "patient_name_ideo": _group(name, 1),
        "patient_name_phon": _group(name, 2),
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
        "main_tags": maintags.extract(get),
    }
    return IndexHeader(sop_uid, sop_class, study_uid, series_uid, _text(get, "PatientID"), fields)


def read_index_header(path: str | os.PathLike[str]) -> IndexHeader:
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
# Orthanc's main DICOM tags too, for the REST API's MainDicomTags (dicomnode.archive.maintags).
_WANTED.update({tag_for_keyword(k): k for k in sorted(maintags.ALL_TAGS)})
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


def fast_header(path: str | os.PathLike[str]) -> IndexHeader | None:
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


# -- where the pixel data is --------------------------------------------------------------------

#: Largest data set a deflated file may inflate to (a deflate bomb is refused before that).
MAX_INFLATED_BYTES = 512 * 1024 * 1024

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIXEL_TAGS = {
    (0x7FE0, 0x0010): "PixelData",
    (0x7FE0, 0x0008): "FloatPixelData",
    (0x7FE0, 0x0009): "DoubleFloatPixelData",
}
_PIXEL_TAG_OF = {keyword: (group << 16) | element for (group, element), keyword in _PIXEL_TAGS.items()}
_UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass
class PixelSource:
    """An opened instance: its metadata and where its pixel data value lies.

    ``fp`` is set, and positioned at the start of the pixel data value, when the
    instance was opened from a file and the pixel data can be decoded from there
    without loading it (everything but deflated files); otherwise the pixel data
    element is in ``ds``.
    """

    ds: Dataset
    transfer_syntax: UID
    pixel_keyword: str | None
    pixel_vr: str | None
    available: int
    fp: BinaryIO | None = None
    value_offset: int = 0
    #: The value's declared length; ``None`` when undefined (encapsulated) or not read from a file.
    declared_length: int | None = None

    @property
    def offset(self) -> int | None:
        """Where the value starts in the file (``None`` when it is only in :attr:`ds`)."""
        return self.value_offset if self.fp is not None else None

    @property
    def tag(self) -> int:
        """The pixel data element's tag (Pixel Data, Float or Double Float Pixel Data)."""
        return _PIXEL_TAG_OF.get(self.pixel_keyword or "", 0x7FE00010)


@contextmanager
def open_pixels(source: str | os.PathLike[str] | Dataset) -> Iterator[PixelSource]:
    """Yield a :class:`PixelSource` for a path or a dataset, closing the file after."""
    if isinstance(source, Dataset):
        yield pixels_of_dataset(source)
        return
    try:
        fp = open(source, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as exc:
        raise RenderError(f"Cannot open the file: {exc.strerror}") from exc
    try:
        yield pixels_of_file(fp, source)
    finally:
        fp.close()


def _read(fp: BinaryIO, **kwargs: Any) -> Dataset:
    """Read a dataset, turning any parser failure into a RenderError."""
    try:
        return pydicom.dcmread(fp, force=True, **kwargs)
    except Exception as exc:  # the parser raises many types on garbage input
        LOGGER.debug("dcmread failed: %r", exc)
        raise RenderError(f"This file cannot be read as DICOM: {exc}") from exc


def pixels_of_file(fp: BinaryIO, path: str | os.PathLike[str]) -> PixelSource:
    """Read the metadata of an opened file and locate its pixel data value."""
    meta_end, meta_syntax = _scan_file_meta(fp)
    if meta_syntax == DeflatedExplicitVRLittleEndian:
        return pixels_of_dataset(_read_deflated(fp, path, meta_end))
    fp.seek(0)
    ds = _read(fp, stop_before_pixels=True)
    tsyntax = transfer_syntax_of(ds)
    if tsyntax == DeflatedExplicitVRLittleEndian:  # a file meta the scan could not follow
        fp.seek(0)
        return pixels_of_dataset(_read(fp))

    is_implicit, is_little = ds.original_encoding
    if is_implicit is None or is_little is None:
        is_implicit, is_little = tsyntax.is_implicit_VR, tsyntax.is_little_endian
    endian = "<" if is_little else ">"
    header = fp.read(8)
    keyword = None
    if len(header) == 8:
        group, element = struct.unpack(f"{endian}HH", header[:4])
        keyword = _PIXEL_TAGS.get((group, element))
    if keyword is None:
        return PixelSource(ds, tsyntax, None, None, 0)

    vr: str | None = header[4:6].decode("ascii", "replace")
    if is_implicit or not (vr and vr.isalpha() and vr.isupper()):
        # Implicit VR, or (like pydicom) an element written implicitly in an
        # explicit VR data set: no VR, a 4-byte length.
        vr = None
        (length,) = struct.unpack(f"{endian}L", header[4:])
    else:
        if vr not in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            raise RenderError(f"The pixel data element is malformed: its value representation is {vr}")
        (length,) = struct.unpack(f"{endian}L", fp.read(4))
    value_offset = fp.tell()
    remaining = os.fstat(fp.fileno()).st_size - value_offset
    available = remaining if length == _UNDEFINED_LENGTH else min(length, remaining)
    declared = None if length == _UNDEFINED_LENGTH else length
    return PixelSource(ds, tsyntax, keyword, vr, max(0, available), fp, value_offset, declared)




def _scan_file_meta(fp: BinaryIO) -> tuple[int, str | None]:
    """Walk the (0002,eeee) file meta elements without pydicom.

    Returns the offset where the data set starts and (0002,0010) *Transfer Syntax
    UID*, or ``(0, None)`` for a file without preamble. Used to spot a deflated data
    set before pydicom inflates all of it in memory.
    """
    fp.seek(0)
    head = fp.read(132)
    if len(head) < 132 or head[128:] != b"DICM":
        return 0, None
    syntax = None
    while True:
        position = fp.tell()
        start = fp.read(6)
        if len(start) < 6 or struct.unpack("<H", start[:2])[0] != 0x0002:
            return position, syntax
        element = struct.unpack("<H", start[2:4])[0]
        if start[4:6] in _LONG_VRS:
            prefix = fp.read(6)
            length = struct.unpack("<L", prefix[2:])[0] if len(prefix) == 6 else 0
        else:
            prefix = fp.read(2)
            length = struct.unpack("<H", prefix)[0] if len(prefix) == 2 else 0
        if element == 0x0010 and length < 256:
            syntax = fp.read(length).decode("ascii", "replace").strip("\0 ")
        else:
            fp.seek(length, os.SEEK_CUR)


def _read_deflated(fp: BinaryIO, path: str | os.PathLike[str], meta_end: int) -> Dataset:
    """Read a Deflated Explicit VR Little Endian file, inflating at most MAX_INFLATED_BYTES.

    pydicom inflates the whole data set in memory: a few megabytes of zeros deflate
    to gigabytes, so the inflation is bounded here and the result parsed as the
    Explicit VR Little Endian data set it is (PS3.5 A.5).
    """
    fp.seek(meta_end)
    compressed = fp.read()
    # First pass: measure, keeping 1 MiB at a time, so a bomb costs time, not memory.
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending, inflated = compressed, 0
    try:
        while pending and inflated <= MAX_INFLATED_BYTES and not inflater.eof:
            inflated += len(inflater.decompress(pending, 1 << 20))
            pending = inflater.unconsumed_tail
        if inflated > MAX_INFLATED_BYTES:
            raise RenderError(
                f"The deflated data set inflates to more than {size_text(MAX_INFLATED_BYTES)}, "
                "more than Dolmen renders"
            )
        data = zlib.decompress(compressed, -zlib.MAX_WBITS)
    except zlib.error as exc:
        raise RenderError(f"The deflated data set is corrupt: {exc}") from exc
    try:
        ds = read_dataset(io.BytesIO(data), is_implicit_VR=False, is_little_endian=True)
        ds.file_meta = read_file_meta_info(path)
    except Exception as exc:  # the parser raises many types on garbage input
        raise RenderError(f"This file cannot be read as DICOM: {exc}") from exc
    return ds


def pixels_of_dataset(ds: Dataset) -> PixelSource:
    """Describe a dataset that holds its pixel data element."""
    tsyntax = transfer_syntax_of(ds)
    for keyword in PIXEL_KEYWORDS:
        if keyword in ds:
            value = ds[keyword].value
            if isinstance(value, bytes | bytearray | memoryview):
                available = len(value)
            elif hasattr(value, "seek"):  # pydicom 3 buffered pixel data
                position = value.tell()
                available = value.seek(0, os.SEEK_END) - position
                value.seek(position)
            else:
                available = 0
            return PixelSource(ds, tsyntax, keyword, ds[keyword].VR, available)
    return PixelSource(ds, tsyntax, None, None, 0)


def transfer_syntax_of(ds: Dataset) -> UID:
    """Return the transfer syntax of `ds`, guessed from its encoding without meta."""
    file_meta = getattr(ds, "file_meta", None)
    try:
        value = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    except Exception as exc:  # an undecodable raw value
        raise RenderError(
            "The file meta is malformed: (0002,0010) Transfer Syntax UID is unreadable"
        ) from exc
    if value:
        uid = UID(str(value).strip("\0 "))
        if not uid.is_transfer_syntax:  # pydicom's properties raise ValueError on any other UID
            raise RenderError(
                f"The transfer syntax {str(uid)[:64]!r} is unknown: this file cannot be decoded"
            )
        return uid
    encoding = ds.original_encoding
    if encoding == (True, True):
        return ImplicitVRLittleEndian
    if encoding == (False, True):
        return ExplicitVRLittleEndian
    if encoding == (False, False):
        return ExplicitVRBigEndian
    raise RenderError("The transfer syntax is unknown: the file has no (0002,0010) Transfer Syntax UID")


def size_text(count: int) -> str:
    """Format a byte count for a message."""
    if count >= 1024**3:
        return f"{count / 1024**3:.1f} GiB"
    return f"{count / 1024**2:.0f} MiB"
