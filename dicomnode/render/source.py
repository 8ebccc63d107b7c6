"""Opening an instance for rendering: where its pixel data lies, and the guards of its *Image Pixel* module.

Nothing here decodes pixels; every limit that keeps a hostile header from making the
server allocate or read too much is checked here first.
"""

from __future__ import annotations

import io
import logging
import math
import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from typing import BinaryIO

import pydicom
from pydicom.datadict import dictionary_description
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.filereader import read_file_meta_info
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pydicom.uid import ExplicitVRBigEndian
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.uid import ImplicitVRLittleEndian

from dicomnode.errors import RenderError
from dicomnode.errors import first_line

LOGGER = logging.getLogger(__name__)

#: Largest decoded frame (rows x columns x samples x bytes per sample) rendered.
MAX_FRAME_BYTES = 512 * 1024 * 1024

#: Supported (0028,0106) *VOI LUT Function* values, PS3.3 C.11.2.1.3.
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIXEL_TAGS = {
    (0x7FE0, 0x0010): "PixelData",
    (0x7FE0, 0x0008): "FloatPixelData",
    (0x7FE0, 0x0009): "DoubleFloatPixelData",
}
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR_3 = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG"}
_UNDEFINED_LENGTH = 0xFFFFFFFF
_AUTO_PERCENTILES = (0.5, 99.5)
_AUTO_SAMPLE = 1 << 20  # values the float path's percentiles look at, at most




@dataclass(frozen=True)
class _PixelModule:
    """The validated *Image Pixel* module values of one instance."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str
    number_of_frames: int
    planar_configuration: int


@dataclass
class _Source:
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



# --------------------------------------------------------------------------- opening


@contextmanager
def _malformed() -> Iterator[None]:
    """Turn what a malformed data set raises on first access into a RenderError.

    pydicom converts each element when it is first read, so any attribute access may raise
    on a hostile file (an unknown VR, a value of the wrong length). The guards name the
    cases they know; this catches the rest, with the code ``render_unexpected`` (the
    fuzzing harness counts those as findings, to be given a message of their own).
    """
    try:
        yield
    except RenderError:
        raise
    except Exception as exc:
        LOGGER.warning("Rendering stopped on an unexpected %s: %s", type(exc).__name__, first_line(exc))
        message = f"This file cannot be rendered: {first_line(exc)}"
        raise RenderError(message, code="render_unexpected") from exc


@contextmanager
def _open(source: str | os.PathLike[str] | Dataset) -> Iterator[_Source]:
    """Yield a :class:`_Source` for a path or a dataset, closing the file after."""
    if isinstance(source, Dataset):
        yield _source_from_dataset(source)
        return
    try:
        fp = open(source, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as exc:
        raise RenderError(f"Cannot open the file: {exc.strerror}") from exc
    try:
        yield _source_from_file(fp, source)
    finally:
        fp.close()


def _read(fp: BinaryIO, **kwargs: Any) -> Dataset:
    """Read a dataset, turning any parser failure into a RenderError."""
    try:
        return pydicom.dcmread(fp, force=True, **kwargs)
    except Exception as exc:  # the parser raises many types on garbage input
        LOGGER.debug("dcmread failed: %r", exc)
        raise RenderError(f"This file cannot be read as DICOM: {exc}") from exc


def _source_from_file(fp: BinaryIO, path: str | os.PathLike[str]) -> _Source:
    """Read the metadata of an opened file and locate its pixel data value."""
    meta_end, meta_syntax = _scan_file_meta(fp)
    if meta_syntax == DeflatedExplicitVRLittleEndian:
        return _source_from_dataset(_read_deflated(fp, path, meta_end))
    fp.seek(0)
    ds = _read(fp, stop_before_pixels=True)
    tsyntax = _transfer_syntax(ds)
    if tsyntax == DeflatedExplicitVRLittleEndian:  # a file meta the scan could not follow
        fp.seek(0)
        return _source_from_dataset(_read(fp))

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
        return _Source(ds, tsyntax, None, None, 0)

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
    return _Source(ds, tsyntax, keyword, vr, max(0, available), fp, value_offset)


_LONG_VRS = (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")


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
    """Read a Deflated Explicit VR Little Endian file, inflating at most MAX_FRAME_BYTES.

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
        while pending and inflated <= MAX_FRAME_BYTES and not inflater.eof:
            inflated += len(inflater.decompress(pending, 1 << 20))
            pending = inflater.unconsumed_tail
        if inflated > MAX_FRAME_BYTES:
            raise RenderError(
                f"The deflated data set inflates to more than {_size(MAX_FRAME_BYTES)}, "
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


def _source_from_dataset(ds: Dataset) -> _Source:
    """Describe a dataset that holds its pixel data element."""
    tsyntax = _transfer_syntax(ds)
    for keyword in _PIXEL_KEYWORDS:
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
            return _Source(ds, tsyntax, keyword, ds[keyword].VR, available)
    return _Source(ds, tsyntax, None, None, 0)


def _transfer_syntax(ds: Dataset) -> UID:
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


def _no_image_message(ds: Dataset) -> str:
    """Explain that an instance has no pixel data, naming its SOP class."""
    try:
        sop_class = ds.get("SOPClassUID")
    except Exception:  # noqa: BLE001 - an undecodable raw value (a VR pydicom does not know)
        sop_class = None
    if sop_class:
        uid = UID(str(sop_class))
        name = uid.name
        if name != str(uid):
            name = name.removesuffix(" Storage")
            return f"This instance has no image: it is {_article(name)} {name}"
        return f"This instance has no image: its SOP class is {uid}"
    return "This instance has no image: it holds no pixel data"


def _article(name: str) -> str:
    """Return "a" or "an" for an SOP class name ("an RT Plan", "a Basic Text SR")."""
    word = name.split(" ")[0].split("-")[0]
    if len(word) == 1 or (word.isupper() and len(word) <= 4):
        # Spelled letter by letter: "an RT", "an X-Ray", "a CT".
        return "an" if word[0] in "AEFHILMNORSX" else "a"
    return "an" if word[:1].upper() in "AEIOU" else "a"


# --------------------------------------------------------------------------- guards


def _int_value(ds: Dataset, keyword: str, tag: str, default: int | None = None) -> int:
    """Return an integer attribute of `ds`, or raise a RenderError naming it."""
    name = f"({tag}) {dictionary_description(keyword)}"
    try:
        value = ds.get(keyword)
    except Exception as exc:  # an undecodable raw value
        raise RenderError(f"The image pixel module is inconsistent: {name} is unreadable") from exc
    if isinstance(value, MultiValue | list):
        value = value[0] if len(value) else None
    if value is None or value == "":
        if default is not None:
            return default
        raise RenderError(f"The image pixel module is incomplete: {name} is missing")
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise RenderError(
            f"The image pixel module is inconsistent: {name} is not a number ({value!r})"
        ) from exc


def _number_of_frames(ds: Dataset) -> int:
    """Return (0028,0008) *Number of Frames*, 1 when absent, empty or zero."""
    frames = _int_value(ds, "NumberOfFrames", "0028,0008", default=1)
    if frames < 0:
        raise RenderError(f"The image pixel module is inconsistent: (0028,0008) Number of Frames is {frames}")
    return frames or 1


def _check_pixel_module(src: _Source, frame: int) -> _PixelModule:
    """Validate the *Image Pixel* module against the pixel data, without decoding.

    Rejects anything that would make decoding allocate more than
    :data:`MAX_FRAME_BYTES` per frame, read past the pixel data, or produce an
    array the rest of the pipeline does not understand.
    """
    ds = src.ds
    if src.pixel_keyword != "PixelData":
        raise RenderError(
            "This instance holds floating point pixel data (a parametric map), which cannot be previewed"
        )
    rows = _int_value(ds, "Rows", "0028,0010")
    columns = _int_value(ds, "Columns", "0028,0011")
    samples = _int_value(ds, "SamplesPerPixel", "0028,0002", default=1)
    bits_allocated = _int_value(ds, "BitsAllocated", "0028,0100")
    bits_stored = _int_value(ds, "BitsStored", "0028,0101", default=bits_allocated)
    representation = _int_value(ds, "PixelRepresentation", "0028,0103", default=0)
    planar = _int_value(ds, "PlanarConfiguration", "0028,0006", default=0)
    frames = _number_of_frames(ds)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()

    def inconsistent(reason: str) -> RenderError:
        return RenderError(f"The image pixel module is inconsistent: {reason}")

    if rows < 1 or columns < 1:
        raise inconsistent(f"the image is {columns} x {rows} pixels")
    if bits_allocated not in (1, 8, 16, 32):
        raise inconsistent(f"(0028,0100) Bits Allocated is {bits_allocated}, not 1, 8, 16 or 32")
    if not 1 <= bits_stored <= bits_allocated:
        raise inconsistent(
            f"(0028,0101) Bits Stored is {bits_stored} but (0028,0100) Bits Allocated is {bits_allocated}"
        )
    if representation not in (0, 1):
        raise inconsistent(f"(0028,0103) Pixel Representation is {representation}")
    if planar not in (0, 1):
        raise inconsistent(f"(0028,0006) Planar Configuration is {planar}")
    if not photometric:
        raise RenderError(
            "The image pixel module is incomplete: (0028,0004) Photometric Interpretation is missing"
        )
    if photometric in _MONOCHROME or photometric == "PALETTE COLOR":
        expected_samples = 1
    elif photometric in _COLOUR_3:
        expected_samples = 3
    else:
        raise RenderError(f"The photometric interpretation {photometric!r} is not supported for display")
    if samples != expected_samples:
        raise inconsistent(
            f"(0028,0004) Photometric Interpretation {photometric} needs "
            f"{expected_samples} sample(s) per pixel but (0028,0002) Samples per Pixel "
            f"is {samples}"
        )
    if bits_allocated == 1 and samples != 1:
        raise inconsistent("1-bit pixel data must have one sample per pixel")

    pixels = rows * columns * samples
    decoded = pixels * max(1, bits_allocated // 8)
    if decoded > MAX_FRAME_BYTES:
        raise RenderError(
            f"The image is too large to render: {columns} x {rows} pixels x {samples} "
            f"sample(s) of {bits_allocated} bits is {_size(decoded)} per frame, the limit "
            f"is {_size(MAX_FRAME_BYTES)}"
        )

    if src.transfer_syntax.is_encapsulated:
        # Each frame needs at least one item, and an item header is 8 bytes.
        if frames * 8 > src.available:
            raise inconsistent(
                f"(0028,0008) Number of Frames is {frames} but the compressed pixel data "
                f"holds only {src.available} bytes"
            )
    else:
        frame_bits = pixels * bits_allocated
        if photometric == "YBR_FULL_422":
            frame_bits = frame_bits * 2 // 3
        needed = math.ceil(frame_bits * frames / 8)
        if src.available < needed:
            what = f"{frames} frames" if frames > 1 else "one frame"
            raise RenderError(
                f"The pixel data is truncated or inconsistent: {what} of {columns} x {rows} "
                f"pixels x {samples} sample(s) of {bits_allocated} bits need {needed} "
                f"bytes, the file holds {src.available}"
            )

    if not 0 <= frame < frames:
        noun = "frame" if frames == 1 else "frames"
        raise RenderError(f"Frame {frame + 1} does not exist: this instance has {frames} {noun}")
    return _PixelModule(
        rows,
        columns,
        samples,
        bits_allocated,
        bits_stored,
        representation,
        photometric,
        frames,
        planar,
    )


def _size(count: int) -> str:
    """Format a byte count for a message."""
    if count >= 1024**3:
        return f"{count / 1024**3:.1f} GiB"
    return f"{count / 1024**2:.0f} MiB"


