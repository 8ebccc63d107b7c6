"""The one renderer of Dolmen: instance + frame + window -> PNG or JPEG bytes.

Every preview, thumbnail, WADO-RS ``/rendered`` and WADO-URI answer goes through
:func:`render`. The pipeline follows PS3.4 N.2 *Pixel Transformation Sequence*:

1. guard the *Image Pixel* module (PS3.3 C.7.6.3) before anything is decoded, so a
   malformed header can never make the server allocate gigabytes;
2. decode only the requested frame with pydicom's pixel data decoders (the pylibjpeg
   plugins handle JPEG, JPEG-LS, JPEG 2000 and RLE);
3. monochrome: Modality LUT (PS3.3 C.11.1), VOI LUT (C.11.2) and polarity
   (MONOCHROME1 is inverted); colour: YCbCr to RGB, palette lookup (C.7.6.3.1.5),
   reduction to 8 bits per sample;
4. optional thumbnail reduction, then PNG or JPEG encoding.

Speed: for 8- and 16-bit monochrome data the grey pipeline is evaluated once per
possible stored value and applied as a lookup table, and PNG is written here (one
row filter, zlib ``Z_RLE``) instead of by Pillow, whose per-row filter search costs
more than the compression. A 512 x 512 16-bit CT preview takes about 10 ms
(``bench/render.py``).

Safety: besides the pixel module guards, a compressed frame's own codestream header
must describe the image the pixel module does (codecs allocate from it), and a
deflated data set is measured before it is inflated (a deflate bomb).

Not done: overlay planes (60xx,3000) are not burnt in; (0028,0034) *Pixel Aspect
Ratio*, (2050,0020) *Presentation LUT Shape*, ICC profiles and supplemental palettes
are ignored; floating point pixel data (parametric maps) is refused.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont
from pydicom.datadict import dictionary_description
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.encaps import get_frame
from pydicom.filereader import read_dataset
from pydicom.filereader import read_file_meta_info
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut
from pydicom.pixels.processing import convert_color_space
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import UID
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pydicom.uid import ExplicitVRBigEndian
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.uid import ImplicitVRLittleEndian

from dicomnode.render import decodepool
from dicomnode.errors import RenderError

LOGGER = logging.getLogger(__name__)

__all__ = [
    "MAX_DECOMPRESSED_BYTES",
    "MAX_FRAME_BYTES",
    "PRESET_LABELS",
    "WINDOW_PRESETS",
    "Window",
    "configure_decoding",
    "decode_frame",
    "decompressed",
    "frame_count",
    "has_pixels",
    "placeholder",
    "render",
    "start_decoding",
]

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
class Window:
    """A VOI window applied to monochrome images (PS3.3 C.11.2.1.2).

    Parameters
    ----------
    center : float
        (0028,1050) *Window Center*, in modality units (e.g. Hounsfield units).
    width : float
        (0028,1051) *Window Width*, strictly positive.
    function : str, optional
        (0028,1056) *VOI LUT Function*: ``"LINEAR"`` (default), ``"LINEAR_EXACT"``
        or ``"SIGMOID"``.

    Raises
    ------
    ValueError
        When a value is not finite, the width is not positive or the function is
        unknown; callers parsing user input catch it like ``float()``'s.
    """

    center: float
    width: float
    function: str = "LINEAR"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise ValueError(
                f"Window center and width must be finite numbers (got {self.center}, {self.width})"
            )
        if self.width <= 0:
            raise ValueError(f"Window width must be positive (got {self.width:g})")
        if self.function not in VOI_FUNCTIONS:
            raise ValueError(
                f"Unknown VOI LUT function {self.function!r}: use one of {', '.join(VOI_FUNCTIONS)}"
            )


#: Common CT windows, in the order a user interface should list them.
WINDOW_PRESETS: dict[str, Window] = {
    "ct-brain": Window(40, 80),
    "ct-stroke": Window(40, 40),
    "ct-soft-tissue": Window(40, 400),
    "ct-mediastinum": Window(50, 350),
    "ct-liver": Window(30, 150),
    "ct-lung": Window(-600, 1500),
    "ct-bone": Window(400, 1800),
}

#: Human-readable labels of :data:`WINDOW_PRESETS`, same keys and order.
PRESET_LABELS: dict[str, str] = {
    "ct-brain": "CT brain",
    "ct-stroke": "CT stroke",
    "ct-soft-tissue": "CT soft tissue",
    "ct-mediastinum": "CT mediastinum",
    "ct-liver": "CT liver",
    "ct-lung": "CT lung",
    "ct-bone": "CT bone",
}


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


def has_pixels(ds: Dataset) -> bool:
    """Return whether `ds` holds pixel data.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A dataset read with its pixel data (not ``stop_before_pixels``).

    Returns
    -------
    bool
        ``True`` when (7FE0,0010) *Pixel Data*, (7FE0,0008) *Float Pixel Data* or
        (7FE0,0009) *Double Float Pixel Data* is present.
    """
    return any(keyword in ds for keyword in _PIXEL_KEYWORDS)


def frame_count(ds: Dataset) -> int:
    """Return the number of frames declared by the *Image Pixel* module of `ds`.

    Works on a dataset read with ``stop_before_pixels=True`` too.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The instance's dataset.

    Returns
    -------
    int
        ``0`` when `ds` is not an image (no (0028,0010) *Rows* and no pixel data),
        otherwise (0028,0008) *Number of Frames*, or ``1`` when it is absent, empty
        or zero (a single-frame image).

    Raises
    ------
    RenderError
        When (0028,0008) *Number of Frames* is not a non-negative integer.
    """
    if "Rows" not in ds and not has_pixels(ds):
        return 0
    return _number_of_frames(ds)


def render(
    source: str | os.PathLike[str] | Dataset,
    *,
    frame: int = 0,
    window: Window | None = None,
    fmt: str = "png",
    max_size: int | None = None,
    quality: int = 90,
) -> bytes:
    """Render one frame of an instance as an 8-bit PNG or JPEG image.

    Monochrome images give a greyscale image, colour images (RGB, YBR_*, PALETTE
    COLOR) an RGB image.

    Parameters
    ----------
    source : str | os.PathLike | pydicom.dataset.Dataset
        Path of a DICOM file, or a dataset read with its pixel data. A path is
        preferred: only the requested frame's bytes are then read from the file.
    frame : int, optional
        0-based index of the frame (default ``0``).
    window : Window, optional
        VOI window applied to monochrome images, overriding (0028,1050) *Window
        Center* / (0028,1051) *Window Width*, (0028,3010) *VOI LUT Sequence* and the
        automatic window. Ignored for colour images.
    fmt : str, optional
        ``"png"`` (default) or ``"jpeg"``.
    max_size : int, optional
        Bound on the longer side of the output, for thumbnails; the aspect ratio is
        kept and an image is never enlarged.
    quality : int, optional
        JPEG quality, 1 to 100 (default ``90``).

    Returns
    -------
    bytes
        The encoded image.

    Raises
    ------
    RenderError
        With a message for the user: the instance has no pixel data, the frame does
        not exist, the transfer syntax cannot be decoded, or the *Image Pixel* module
        is inconsistent, too large or truncated.
    ValueError
        For invalid `fmt`, `max_size` or `quality` arguments.

    Notes
    -----
    Without an explicit `window` the file's first window is used (in the per-frame
    or shared functional groups for enhanced multi-frame images, then at the top
    level), else its first VOI LUT, else a window over the 0.5th to 99.5th
    percentiles of the frame's modality values, ignoring (0028,0120) *Pixel
    Padding Value*. Messages number frames from 1, as (0028,0008) *Number of
    Frames* and WADO do.
    """
    image_format = _FORMATS.get(fmt.lower())
    if image_format is None:
        raise ValueError(f"Unsupported image format {fmt!r}: use 'png' or 'jpeg'")
    if max_size is not None and max_size < 1:
        raise ValueError(f"max_size must be at least 1 (got {max_size})")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be between 1 and 100 (got {quality})")

    start = time.perf_counter()
    with _open(source) as src, _malformed():
        if src.pixel_keyword is None:
            raise RenderError(_no_image_message(src.ds))
        module = _check_pixel_module(src, frame)
        arr, photometric = _decode_frame(src, module, frame)
        image = _to_image(src.ds, module, arr, photometric, frame, window)
    if max_size is not None and max(image.size) > max_size:
        image.thumbnail((max_size, max_size), Image.Resampling.BICUBIC)
    data = _encode(image, image_format, quality)
    LOGGER.debug(
        "Rendered frame %d as %s %dx%d %s in %.1f ms",
        frame,
        image.mode,
        image.width,
        image.height,
        image_format,
        (time.perf_counter() - start) * 1000,
    )
    return data


def decode_frame(source: str | os.PathLike[str] | Dataset, *, frame: int = 0) -> npt.NDArray[Any]:
    """Decode one frame behind the same guards as :func:`render`, without rendering it.

    For WADO-RS frames asked for uncompressed: the *Image Pixel* module is checked
    against the pixel data first, and compressed frames are decoded in a worker
    process (:mod:`dicomnode.render.decodepool`).

    Parameters
    ----------
    source : str | os.PathLike | pydicom.dataset.Dataset
        Path of a DICOM file, or a dataset read with its pixel data.
    frame : int, optional
        0-based index of the frame.

    Returns
    -------
    numpy.ndarray
        The stored values, (rows, columns) or (rows, columns, 3); YBR colour converted
        to RGB as pydicom does.

    Raises
    ------
    RenderError
        As :func:`render`.
    """
    with _open(source) as src, _malformed():
        if src.pixel_keyword is None:
            raise RenderError(_no_image_message(src.ds))
        module = _check_pixel_module(src, frame)
        arr, _ = _decode_frame(src, module, frame)
    return arr


#: Largest pixel data :func:`decompressed` produces (all frames).
MAX_DECOMPRESSED_BYTES = 2 * 1024 * 1024 * 1024


def decompressed(path: str | os.PathLike[str]) -> Dataset:
    """Read a compressed instance with its pixel data decoded, frame by frame, behind the guards.

    What pydicom's ``Dataset.decompress`` does, but each frame's codestream is checked
    and decoded in a worker process (:mod:`dicomnode.render.decodepool`), and the total decoded
    size is bounded by :data:`MAX_DECOMPRESSED_BYTES`. YBR colour becomes RGB.

    Parameters
    ----------
    path : str | os.PathLike
        Path of a DICOM file with encapsulated pixel data.

    Returns
    -------
    pydicom.dataset.Dataset
        The data set (with its file meta) in Explicit VR Little Endian.

    Raises
    ------
    RenderError
        When a frame cannot be decoded, or the pixel module is inconsistent or too large.
    """
    with _open(path) as src, _malformed():
        if src.pixel_keyword is None:
            raise RenderError(_no_image_message(src.ds))
        module = _check_pixel_module(src, 0)
        frame_bytes = math.ceil(
            module.rows * module.columns * module.samples_per_pixel * module.bits_allocated / 8
        )
        if frame_bytes * module.number_of_frames > MAX_DECOMPRESSED_BYTES:
            raise RenderError(
                f"The pixel data is too large to decompress: {module.number_of_frames} frames of "
                f"{_size(frame_bytes)}, the limit is {_size(MAX_DECOMPRESSED_BYTES)}"
            )
        photometric = module.photometric_interpretation
        chunks: list[bytes] = []
        for index in range(module.number_of_frames):
            arr, photometric = _decode_frame(src, module, index)
            if module.bits_allocated == 1:
                chunks.append(np.packbits(arr.astype(np.uint8).ravel(), bitorder="little").tobytes())
            else:
                if arr.dtype.itemsize * 8 != module.bits_allocated:
                    arr = arr.astype(f"{arr.dtype.kind}{module.bits_allocated // 8}")
                chunks.append(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
        ds = src.ds if src.fp is not None else src.ds.copy()
    ds.PixelData = b"".join(chunks)
    ds["PixelData"].VR = "OB" if module.bits_allocated <= 8 else "OW"
    ds.PhotometricInterpretation = photometric
    if module.samples_per_pixel > 1:
        ds.PlanarConfiguration = 0
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            del ds[keyword]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def placeholder(text: str, *, size: int = 256, fmt: str = "png") -> bytes:
    """Return a grey square image with `text` written on it.

    Shown instead of an image when :func:`render` fails; `text` is usually the
    :class:`~dicomnode.errors.RenderError` message.

    Parameters
    ----------
    text : str
        The reason, wrapped to the image width (and shortened with an ellipsis when
        it does not fit).
    size : int, optional
        Width and height in pixels (default ``256``).
    fmt : str, optional
        ``"png"`` (default) or ``"jpeg"``.

    Returns
    -------
    bytes
        The encoded greyscale image.
    """
    image_format = _FORMATS.get(fmt.lower())
    if image_format is None:
        raise ValueError(f"Unsupported image format {fmt!r}: use 'png' or 'jpeg'")
    if size < 16:
        raise ValueError(f"Placeholder size must be at least 16 (got {size})")
    image = Image.new("L", (size, size), 96)
    draw = ImageDraw.Draw(image)
    font = _font(max(8, size // 16))
    margin = max(4, size // 16)
    line_height = int(font.getbbox("Ag")[3]) + max(2, size // 64)
    max_lines = max(1, (size - 2 * margin) // line_height)
    lines = _wrap(draw, font, " ".join(text.split()), size - 2 * margin, max_lines)
    top = (size - line_height * len(lines)) // 2
    for number, line in enumerate(lines):
        width = draw.textlength(line, font=font)
        draw.text(((size - width) / 2, top + number * line_height), line, fill=235, font=font)
    return _encode(image, image_format, 90)


# --------------------------------------------------------------------------- decoding workers

_POOL_LOCK = threading.Lock()
_POOL_CONFIG: dict[str, Any] = {
    "workers": decodepool.DEFAULT_WORKERS,
    "timeout": decodepool.DEFAULT_TIMEOUT,
    "memory_bytes": decodepool.DEFAULT_MEMORY_BYTES,
}
_POOL: decodepool.DecodePool | None = None


def configure_decoding(
    *,
    workers: int | None = None,
    timeout: float | None = None,
    memory_bytes: int | None = None,
) -> None:
    """Set how compressed frames are decoded: in worker processes (default) or in process.

    Parameters
    ----------
    workers : int, optional
        Worker processes (default 2); ``0`` decodes in the calling process, which only
        tools that handle their own crashes should do (the fuzzing harness).
    timeout : float, optional
        Seconds a frame may take to decode before its worker is killed (default 10).
    memory_bytes : int, optional
        Address-space limit of each worker (default 2 GiB).
    """
    global _POOL
    with _POOL_LOCK:
        for key, value in (("workers", workers), ("timeout", timeout), ("memory_bytes", memory_bytes)):
            if value is not None:
                _POOL_CONFIG[key] = value
        if _POOL is not None:
            _POOL.close()
            _POOL = None


def start_decoding() -> None:
    """Start the decode workers now, so the first compressed preview does not wait for them."""
    _decode_pool()


def _decode_pool() -> decodepool.DecodePool | None:
    """The shared worker pool, started on first use; None when decoding in process."""
    global _POOL
    if _POOL_CONFIG["workers"] < 1:
        return None
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = decodepool.DecodePool(**_POOL_CONFIG)
        return _POOL


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
        LOGGER.warning("Rendering stopped on an unexpected %s: %s", type(exc).__name__, _first_line(exc))
        message = f"This file cannot be rendered: {_first_line(exc)}"
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


# --------------------------------------------------------------------------- decoding


def _decode_frame(src: _Source, module: _PixelModule, frame: int) -> tuple[npt.NDArray[Any], str]:
    """Decode one frame; return it with its photometric interpretation after decoding.

    pydicom's decoders convert YBR_FULL and YBR_FULL_422 to RGB, and report it,
    whether the conversion happened in the JPEG codec or in pydicom.
    """
    tsyntax = src.transfer_syntax
    label = f"{tsyntax.name} ({tsyntax})" if tsyntax.name != str(tsyntax) else str(tsyntax)
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise RenderError(f"The transfer syntax {label} is not supported: no decoder exists for it") from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no decoder plugin is installed"
        raise RenderError(f"The transfer syntax {label} cannot be decoded on this server: {missing}")

    overrides: dict[str, Any] = {
        "number_of_frames": module.number_of_frames,
        "planar_configuration": module.planar_configuration,
        "bits_stored": module.bits_stored,
        "pixel_representation": module.pixel_representation,
    }
    properties: dict[str, Any]
    try:
        if tsyntax.is_encapsulated:
            # One frame's fragments, checked before a codec allocates for them.
            data = _frame_bytes(src, module, frame)
            _check_codestream(data, module, frame, label)
            options = as_pixel_options(src.ds, **{**overrides, "number_of_frames": 1})
            pool = _decode_pool()
            if pool is not None:
                # A codec fed hostile bytes may loop, allocate or crash: in a worker.
                arr, decoded_as = pool.decode(str(tsyntax), _json_options(options), data)
                properties = {"photometric_interpretation": decoded_as or module.photometric_interpretation}
            else:
                options["pixel_keyword"] = "PixelData"
                arr, properties = decoder.as_array(encapsulate([data]), index=0, **options)
        elif src.fp is not None:
            options = as_pixel_options(src.ds, **overrides)
            options["pixel_keyword"] = src.pixel_keyword
            if src.pixel_vr is not None:
                options["pixel_vr"] = src.pixel_vr
            src.fp.seek(src.value_offset)
            arr, properties = decoder.as_array(src.fp, index=frame, **options)
        else:
            arr, properties = decoder.as_array(src.ds, index=frame, **overrides)
    except decodepool.CodecError as exc:  # the codec refused the stream, in a worker
        LOGGER.info("Decoding frame %d (%s) failed: %s", frame, tsyntax, exc.message)
        raise RenderError(f"Frame {frame + 1} could not be decoded from {label}: {exc.message}") from exc
    except RenderError:
        raise
    except BaseException as exc:  # noqa: BLE001 - decoder plugins raise many types, Rust ones
        # panic with pyo3's PanicException (a BaseException); all mean "cannot decode".
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        LOGGER.info("Decoding frame %d (%s) failed: %s", frame, tsyntax, exc)
        reason = _first_line(exc)
        raise RenderError(f"Frame {frame + 1} could not be decoded from {label}: {reason}") from exc

    photometric = str(properties.get("photometric_interpretation", module.photometric_interpretation))
    expected = (module.rows, module.columns) + ((3,) if module.samples_per_pixel == 3 else ())
    if arr.shape != expected:
        raise RenderError(
            f"Frame {frame + 1} decoded to {arr.shape} samples, not the {expected} the "
            f"image pixel module describes"
        )
    return arr, photometric


def _json_options(options: dict[str, Any]) -> dict[str, Any]:
    """The pixel options a decode worker needs, as JSON values."""
    safe: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bool | int | float | str):
            safe[key] = value
    return safe


def _frame_bytes(src: _Source, module: _PixelModule, frame: int) -> bytes:
    """Return the compressed bytes of one frame of encapsulated pixel data."""
    ds = src.ds
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    buffer: Any
    if src.fp is not None:
        src.fp.seek(src.value_offset)
        buffer = src.fp
    else:
        buffer = ds[src.pixel_keyword or "PixelData"].value
    frame_data: bytes = get_frame(
        buffer, frame, extended_offsets=extended, number_of_frames=module.number_of_frames
    )
    return frame_data


#: JPEG start-of-frame markers (ISO 10918-1 B.1.1.3) and JPEG-LS SOF55 (ISO 14495-1).
_SOF_MARKERS = frozenset(
    (*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7)
)


def _codestream_size(data: bytes) -> tuple[int, int, int] | None:
    """Return (columns, rows, components) from a JPEG, JPEG-LS or JPEG 2000 header.

    ``None`` when the header is not found (RLE, or an unusual layout): the codec then
    decides. Rows may be 0 for JPEG with a DNL marker.
    """
    if data[:2] == b"\xff\xd8":
        position = 2
        while position + 4 <= len(data) and data[position] == 0xFF:
            marker = data[position + 1]
            if marker == 0xFF:  # fill byte
                position += 1
                continue
            if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length field
                position += 2
                continue
            if marker == 0xDA:  # start of scan before any frame header
                return None
            if marker in _SOF_MARKERS:
                header = data[position + 4 : position + 10]
                if len(header) < 6:
                    return None
                _, rows, columns, components = struct.unpack(">BHHB", header)
                return columns, rows, components
            position += 2 + struct.unpack(">H", data[position + 2 : position + 4])[0]
        return None
    start = data.find(b"\xff\x4f\xff\x51", 0, 65536)  # JPEG 2000 SOC + SIZ, maybe in a JP2 box
    if start < 0:
        return None
    siz = data[start + 4 : start + 42]
    if len(siz) < 38:
        return None
    x_size, y_size, x_offset, y_offset = struct.unpack(">IIII", siz[4:20])
    (components,) = struct.unpack(">H", siz[36:38])
    return x_size - x_offset, y_size - y_offset, components


_JP2_SIGNATURE = b"\x00\x00\x00\x0c\x6a\x50\x20\x20"


def _jp2_boxes_end(data: bytes) -> bool:
    """Whether the boxes of a JP2 file can be walked to the codestream box or the end."""
    offset = 12
    while offset < len(data):
        if data[offset + 4 : offset + 8] == b"jp2c":
            return True
        length = int.from_bytes(data[offset : offset + 4], "big")
        if length == 0:
            return False
        offset += length
    return True


def _check_codestream(data: bytes, module: _PixelModule, frame: int, label: str) -> None:
    """Refuse a frame whose codestream describes another image than the pixel module.

    Codecs allocate from their own header, not from (0028,0010) *Rows* and
    (0028,0011) *Columns*: a hostile header could otherwise ask for gigabytes.
    """
    if data.startswith(_JP2_SIGNATURE) and not _jp2_boxes_end(data):
        # pydicom's get_j2k_parameters walks the boxes by their lengths: a zero length before
        # the codestream box loops forever (found by tests/fuzz/fuzz_dicom.py).
        raise RenderError(
            f"Frame {frame + 1} cannot be decoded from {label}: its JP2 header has a box of "
            "length 0 before the codestream"
        )
    size = _codestream_size(data)
    if size is None:
        return
    columns, rows, components = size
    if columns != module.columns or rows not in (0, module.rows) or components != module.samples_per_pixel:
        raise RenderError(
            f"Frame {frame + 1} cannot be decoded from {label}: its codestream describes "
            f"{columns} x {rows} pixels x {components} component(s), the image pixel module "
            f"{module.columns} x {module.rows} x {module.samples_per_pixel}"
        )


def _first_line(exc: BaseException) -> str:
    """Return a one-line summary of a decoder exception."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {lines[-1]}"
    return lines[0]


# --------------------------------------------------------------------------- pixels


def _to_image(
    ds: Dataset,
    module: _PixelModule,
    arr: npt.NDArray[Any],
    photometric: str,
    frame: int,
    window: Window | None,
) -> Image.Image:
    """Turn a decoded frame into an 8-bit ``L`` or ``RGB`` Pillow image."""
    if photometric in _MONOCHROME:
        grey = _render_grey(ds, arr, frame, window, invert=photometric == "MONOCHROME1")
        return Image.fromarray(grey)
    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(arr, ds)
        except Exception as exc:  # missing or malformed palette descriptors
            raise RenderError(
                f"The palette colour lookup table cannot be applied: {_first_line(exc)}"
            ) from exc
        bits = 16 if rgb.dtype.itemsize > 1 else 8
        return Image.fromarray(_to_uint8(rgb, bits))
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        arr = convert_color_space(arr, photometric, "RGB")
    elif photometric != "RGB":
        raise RenderError(f"Decoding gave colour samples as {photometric}, which cannot be displayed")
    return Image.fromarray(_to_uint8(arr, module.bits_stored))


def _to_uint8(arr: npt.NDArray[Any], bits: int) -> npt.NDArray[np.uint8]:
    """Reduce colour samples of `bits` significant bits to 8 bits by shifting."""
    if arr.dtype == np.uint8 and bits <= 8:
        return np.ascontiguousarray(arr)
    unsigned = arr.view(f"u{arr.dtype.itemsize}") if arr.dtype.kind == "i" else arr
    shift = max(0, min(bits, 8 * arr.dtype.itemsize) - 8)
    return np.ascontiguousarray((unsigned >> shift).astype(np.uint8))


def _render_grey(
    ds: Dataset,
    arr: npt.NDArray[Any],
    frame: int,
    window: Window | None,
    *,
    invert: bool,
) -> npt.NDArray[np.uint8]:
    """Apply Modality LUT, VOI and polarity to a monochrome frame.

    8- and 16-bit integer frames go through a lookup table indexed by the stored
    value's bit pattern: the transformations run on at most 65536 values whatever
    the image size, and the auto window comes from a histogram, not a sort.
    """
    if arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2:
        bits = 8 * arr.dtype.itemsize
        patterns = arr.view(f"u{arr.dtype.itemsize}")
        # Every stored value, in bit-pattern order (so lut[patterns] is the image).
        domain = np.arange(2**bits, dtype=f"u{arr.dtype.itemsize}").view(arr.dtype)
        values = _modality(domain, ds, frame)
        counts: npt.NDArray[np.intp] | None = None
        voi = _file_voi(ds, frame) if window is None else window
        if voi is None:
            counts = np.bincount(patterns.ravel(), minlength=2**bits)
            padding = _padding_value(ds)
            info = np.iinfo(arr.dtype)
            if padding is not None and info.min <= padding <= info.max:
                counts[np.asarray(padding, dtype=arr.dtype).view(patterns.dtype)] = 0
            # Bit patterns in numeric order: 0.. for unsigned, 0x80../0x8000.. first if signed.
            numeric = np.arange(2**bits)
            if arr.dtype.kind == "i":
                numeric = np.roll(numeric, 2 ** (bits - 1))
            voi = _auto_window(values, counts, numeric)
        lut = _voi(values, voi, ds, invert)
        grey: npt.NDArray[np.uint8] = lut[patterns]
        return grey

    # 32-bit data: float32 keeps a 512 MiB frame's working copy at 512 MiB.
    values = _modality(arr, ds, frame, np.float32)
    voi = _file_voi(ds, frame) if window is None else window
    if voi is None:
        sample = values.ravel()
        stored = arr.ravel()
        step = max(1, sample.size // _AUTO_SAMPLE)
        sample, stored = sample[::step], stored[::step]
        padding = _padding_value(ds)
        if padding is not None:
            sample = sample[stored != padding]
        voi = _auto_window(sample, None)
    return _voi(values, voi, ds, invert)


def _frame_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """Return the functional group item `sequence` for `frame`, per-frame first."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items and len(items) > index:
            inner = items[index].get(sequence)
            if inner:
                item: Dataset = inner[0]
                return item
    return None


def _first_float(value: Any) -> float | None:
    """Return the first value of a possibly multi-valued DS/FD as float."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _modality(
    values: npt.NDArray[Any], ds: Dataset, frame: int, dtype: type[np.floating[Any]] = np.float64
) -> npt.NDArray[np.floating[Any]]:
    """Apply the Modality LUT or Rescale Slope/Intercept (PS3.3 C.11.1)."""
    if ds.get("ModalityLUTSequence"):
        mapped, _ = _apply_lut(values, ds.ModalityLUTSequence[0], ds, "Modality LUT")
        return mapped.astype(dtype)
    item = _frame_item(ds, frame, "PixelValueTransformationSequence")
    holder = item if item is not None and "RescaleSlope" in item else ds
    slope = _first_float(holder.get("RescaleSlope"))
    intercept = _first_float(holder.get("RescaleIntercept"))
    result = values.astype(dtype)
    if slope is not None and slope != 1:
        result *= slope
    if intercept:
        result += intercept
    return result


def _file_voi(ds: Dataset, frame: int) -> Window | str | None:
    """Return the file's first window, ``"LUT"`` for a VOI LUT Sequence, or None."""
    item = _frame_item(ds, frame, "FrameVOILUTSequence")
    for holder in (item, ds):
        if holder is None or "WindowCenter" not in holder:
            continue
        center = _first_float(holder.get("WindowCenter"))
        width = _first_float(holder.get("WindowWidth"))
        function = str(holder.get("VOILUTFunction", "") or "LINEAR").strip().upper()
        if function not in VOI_FUNCTIONS:
            LOGGER.info("Unknown (0028,1056) VOI LUT Function %r, using LINEAR", function)
            function = "LINEAR"
        if center is None or width is None or width <= 0:
            LOGGER.info("Ignoring invalid window center %r width %r", center, width)
            continue
        return Window(center, width, function)
    if ds.get("VOILUTSequence"):
        return "LUT"
    return None


def _padding_value(ds: Dataset) -> int | None:
    """Return (0028,0120) *Pixel Padding Value* when it is a single integer."""
    value = ds.get("PixelPaddingValue")
    if isinstance(value, int) and "PixelPaddingRangeLimit" not in ds:
        return value
    return None


def _auto_window(
    values: npt.NDArray[np.floating[Any]],
    counts: npt.NDArray[np.intp] | None,
    numeric: npt.NDArray[np.intp] | None = None,
) -> Window:
    """Window the 0.5th to 99.5th percentile of `values` (weighted by `counts`).

    With `counts`, `values` are the modality values of every stored value and
    `numeric` lists those in stored-value order: when the modality transformation is
    non-decreasing (no LUT, or a positive slope) that order is already sorted and
    the sort is skipped.

    Falls back to the minimum and maximum when the percentiles coincide (e.g. a
    mostly empty segmentation), and to a unit window on a constant image. The
    window maps the low value to black and the high value to white exactly.
    """
    if counts is None:
        if values.size == 0:
            return Window(0.5, 1)
        low, high = (float(v) for v in np.percentile(values, _AUTO_PERCENTILES))
        if high <= low:
            low, high = float(values.min()), float(values.max())
    else:
        present = counts > 0
        if not present.any():
            return Window(0.5, 1)
        order = numeric if numeric is not None else np.arange(values.size)
        sorted_values = values[order]
        if not np.all(sorted_values[1:] >= sorted_values[:-1]):
            order = np.argsort(values, kind="stable")
            sorted_values = values[order]
        cumulative = np.cumsum(counts[order])
        total = float(cumulative[-1])
        low_index, high_index = np.searchsorted(
            cumulative, [total * _AUTO_PERCENTILES[0] / 100, total * _AUTO_PERCENTILES[1] / 100]
        )
        low = float(sorted_values[min(int(low_index), len(order) - 1)])
        high = float(sorted_values[min(int(high_index), len(order) - 1)])
        if high <= low:
            used = sorted_values[counts[order] > 0]
            low, high = float(used[0]), float(used[-1])
    if high <= low:
        return Window(low + 0.5, 1)
    # PS3.3 C.11.2.1.2.1 LINEAR with these maps low -> 0 and high -> 255.
    return Window((low + high + 1) / 2, high - low + 1)


def _voi(
    values: npt.NDArray[np.floating[Any]],
    voi: Window | str,
    ds: Dataset,
    invert: bool,
) -> npt.NDArray[np.uint8]:
    """Apply a window or the VOI LUT Sequence, then polarity; return 8-bit values."""
    if isinstance(voi, Window):
        scaled = _window(values, voi)
    else:
        scaled = _voi_lut(values, ds)
    if invert:
        scaled = 1.0 - scaled
    out: npt.NDArray[np.uint8] = np.rint(scaled * 255.0).astype(np.uint8)
    return out


def _window(values: npt.NDArray[np.floating[Any]], window: Window) -> npt.NDArray[np.floating[Any]]:
    """Map modality values to [0, 1] with a VOI LUT Function (PS3.3 C.11.2.1.2-3)."""
    center, width = window.center, window.width
    if window.function == "SIGMOID":
        with np.errstate(over="ignore"):
            result: npt.NDArray[np.floating[Any]] = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        return result
    if window.function == "LINEAR_EXACT":
        result = np.clip((values - center) / width + 0.5, 0.0, 1.0)
    elif width <= 1:
        result = (values > center - 0.5).astype(values.dtype)
    else:
        result = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    return result


def _voi_lut(values: npt.NDArray[np.floating[Any]], ds: Dataset) -> npt.NDArray[np.floating[Any]]:
    """Apply the first item of (0028,3010) *VOI LUT Sequence*, scaled to [0, 1]."""
    mapped, bits = _apply_lut(values, ds.VOILUTSequence[0], ds, "VOI LUT")
    return np.clip(mapped / float(2**bits - 1), 0.0, 1.0)


def _apply_lut(
    values: npt.NDArray[np.floating[Any]], item: Dataset, ds: Dataset, what: str
) -> tuple[npt.NDArray[np.float64], int]:
    """Map `values` through a Modality or VOI LUT item (PS3.3 C.11.1.1.1, C.11.2.1.1).

    Inputs below the first mapped value take the first entry, inputs past the end
    the last one. Returns the mapped values and the bits per entry of (0028,3002)
    *LUT Descriptor*, accepting any depth from 1 to 16 (real files use 12 where the
    standard says 8 or 16).
    """
    try:
        entries, first, bits = (int(value) for value in item.LUTDescriptor)
        data = item.LUTData
    except Exception as exc:  # missing or malformed descriptor
        raise RenderError(f"The {what} cannot be applied: its (0028,3002) LUT Descriptor is invalid") from exc
    entries = entries or 65536
    if not 1 <= bits <= 16:
        raise RenderError(f"The {what} cannot be applied: {bits} bits per entry")
    if first >= 32768 and _int_value(ds, "PixelRepresentation", "0028,0103", default=0) == 1:
        first -= 65536  # the first value is SS for signed pixel data
    if isinstance(data, bytes | bytearray):
        if bits <= 8 and len(data) == entries:
            table = np.frombuffer(data, dtype=np.uint8)
        else:
            order = "<" if _transfer_syntax(ds).is_little_endian else ">"
            table = np.frombuffer(data, dtype=f"{order}u2", count=len(data) // 2)
    elif data is None:
        table = np.zeros(0, dtype=np.uint16)
    else:
        table = np.asarray(data if isinstance(data, list | MultiValue) else [data], dtype=np.int64)
    if table.size < entries:
        raise RenderError(
            f"The {what} cannot be applied: (0028,3006) LUT Data has {table.size} entries, "
            f"its descriptor says {entries}"
        )
    index = np.clip(np.rint(values) - first, 0, entries - 1).astype(np.intp)
    mapped: npt.NDArray[np.float64] = table[:entries].astype(np.float64)[index]
    return mapped, bits


# --------------------------------------------------------------------------- output


def _encode(image: Image.Image, image_format: str, quality: int) -> bytes:
    """Encode an ``L`` or ``RGB`` Pillow image as PNG or JPEG."""
    if image_format == "PNG":
        return _png(np.asarray(image))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _png(pixels: npt.NDArray[np.uint8]) -> bytes:
    """Encode 8-bit grey (rows, columns) or RGB (rows, columns, 3) pixels as PNG.

    Pillow tries the five PNG row filters on every row and picks one, which costs
    more than the compression itself. Here every row uses the *Sub* filter
    (a numpy subtraction; it suits both noisy CT and smooth colour) and zlib's
    ``Z_RLE`` strategy: a 512 x 512 preview encodes about three times faster than
    with Pillow at ``compress_level=1``, and no larger.
    """
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = np.ascontiguousarray(pixels).reshape(height, width * channels)
    filtered = np.empty((height, width * channels + 1), dtype=np.uint8)
    filtered[:, 0] = 1  # filter type Sub, PNG specification 9.2
    filtered[:, 1 : channels + 1] = rows[:, :channels]
    np.subtract(rows[:, channels:], rows[:, :-channels], out=filtered[:, channels + 1 :])
    compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    data = compressor.compress(filtered.tobytes()) + compressor.flush()
    colour_type = 0 if channels == 1 else 2
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"".join(
        (b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", header), _chunk(b"IDAT", data), _chunk(b"IEND", b""))
    )


def _chunk(kind: bytes, payload: bytes) -> bytes:
    """Return one PNG chunk: length, type, data, CRC-32 of type and data."""
    crc = zlib.crc32(payload, zlib.crc32(kind))
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at `size` (a bitmap font when FreeType is missing)."""
    return ImageFont.load_default(size=size)


def _wrap(
    draw: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    text: str,
    width: int,
    max_lines: int,
) -> list[str]:
    """Greedy word wrap by measured width; long words are split, overflow gets '…'."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if draw.textlength(candidate, font=font) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = word
        while draw.textlength(current, font=font) > width and len(current) > 1:
            cut = len(current) - 1
            while cut > 1 and draw.textlength(current[:cut], font=font) > width:
                cut -= 1
            lines.append(current[:cut])
            current = current[cut:]
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and draw.textlength(f"{last}…", font=font) > width:
            last = last[:-1]
        lines[-1] = f"{last.rstrip()}…"
    return lines or [""]
