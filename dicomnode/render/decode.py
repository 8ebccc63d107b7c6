"""Decoding one frame: native pixel data read in place, compressed frames checked against
their codestream header and decoded in the worker processes of :mod:`dicomnode.render.decodepool`.
"""

from __future__ import annotations

import logging
import struct
import threading
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.encaps import encapsulate
from pydicom.encaps import get_frame
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import as_pixel_options

from dicomnode.errors import RenderError
from dicomnode.errors import first_line
from dicomnode.header import PixelSource
from dicomnode.render import decodepool
from dicomnode.render.source import _PixelModule

LOGGER = logging.getLogger(__name__)

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



# --------------------------------------------------------------------------- decoding


def _decode_frame(src: PixelSource, module: _PixelModule, frame: int) -> tuple[npt.NDArray[Any], str]:
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
        reason = first_line(exc)
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


def _frame_bytes(src: PixelSource, module: _PixelModule, frame: int) -> bytes:
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



