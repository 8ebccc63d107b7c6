"""From decoded values to an image: the grey pipeline (Modality LUT, VOI LUT, polarity; PS3.4 N.2),
colour conversion, and the PNG/JPEG encoders.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_color_lut
from pydicom.pixels.processing import convert_color_space

from dicomnode.errors import RenderError
from dicomnode.errors import first_line as _first_line
from dicomnode.header import transfer_syntax_of
from dicomnode.render.source import _AUTO_PERCENTILES
from dicomnode.render.source import _AUTO_SAMPLE
from dicomnode.render.source import _MONOCHROME
from dicomnode.render.source import VOI_FUNCTIONS
from dicomnode.render.source import _int_value
from dicomnode.render.source import _PixelModule

LOGGER = logging.getLogger(__name__)



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
            order = "<" if transfer_syntax_of(ds).is_little_endian else ">"
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
