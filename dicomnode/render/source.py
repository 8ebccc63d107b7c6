"""The guards of an instance's *Image Pixel* module before it is rendered (where the pixel data
lies is :func:`dicomnode.header.open_pixels`).

Nothing here decodes pixels; every limit that keeps a hostile header from making the
server allocate or read too much is checked here first.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pydicom.datadict import dictionary_description
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from dicomnode.errors import RenderError
from dicomnode.errors import first_line
from dicomnode.header import MAX_INFLATED_BYTES
from dicomnode.header import PixelSource
from dicomnode.header import size_text

LOGGER = logging.getLogger(__name__)

#: Largest decoded frame (rows x columns x samples x bytes per sample) rendered.
MAX_FRAME_BYTES = MAX_INFLATED_BYTES

#: Supported (0028,0106) *VOI LUT Function* values, PS3.3 C.11.2.1.3.
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR_3 = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG"}
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


def _check_pixel_module(src: PixelSource, frame: int) -> _PixelModule:
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
            f"sample(s) of {bits_allocated} bits is {size_text(decoded)} per frame, the limit "
            f"is {size_text(MAX_FRAME_BYTES)}"
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


