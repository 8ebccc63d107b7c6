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

import logging
import math
import os
import time
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from PIL import ImageDraw
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicomnode.errors import RenderError
from dicomnode.header import PIXEL_KEYWORDS
from dicomnode.header import open_pixels
from dicomnode.header import size_text
from dicomnode.render.decode import _decode_frame
from dicomnode.render.decode import configure_decoding
from dicomnode.render.decode import start_decoding
from dicomnode.render.pixels import PRESET_LABELS
from dicomnode.render.pixels import WINDOW_PRESETS
from dicomnode.render.pixels import Window
from dicomnode.render.pixels import _encode
from dicomnode.render.pixels import _font
from dicomnode.render.pixels import _to_image
from dicomnode.render.pixels import _wrap
from dicomnode.render.source import _FORMATS
from dicomnode.render.source import MAX_FRAME_BYTES
from dicomnode.render.source import _check_pixel_module
from dicomnode.render.source import _malformed
from dicomnode.render.source import _no_image_message
from dicomnode.render.source import _number_of_frames

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
    return any(keyword in ds for keyword in PIXEL_KEYWORDS)


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
    with open_pixels(source) as src, _malformed():
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
    with open_pixels(source) as src, _malformed():
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
    with open_pixels(path) as src, _malformed():
        if src.pixel_keyword is None:
            raise RenderError(_no_image_message(src.ds))
        module = _check_pixel_module(src, 0)
        frame_bytes = math.ceil(
            module.rows * module.columns * module.samples_per_pixel * module.bits_allocated / 8
        )
        if frame_bytes * module.number_of_frames > MAX_DECOMPRESSED_BYTES:
            raise RenderError(
                f"The pixel data is too large to decompress: {module.number_of_frames} frames of "
                f"{size_text(frame_bytes)}, the limit is {size_text(MAX_DECOMPRESSED_BYTES)}"
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


