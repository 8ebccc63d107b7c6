"""WADO-RS (PS3.18 10.4) and WADO-URI (PS3.18 9): instances, metadata, frames, bulk data, renders.

:func:`instance_parts` feeds :func:`dicomnode.dicomweb.multipart.write_parts` one file at a
time, transcoding to an uncompressed syntax only when asked; :func:`metadata` answers DICOM JSON
with ``BulkDataURI`` for large binary values; :func:`frame_parts` cuts frames out of the pixel
data; :func:`render_instance` goes through the one renderer; :func:`parse_wado_uri` reads a
WADO-URI request.
"""
from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.uid import UID

from dicomnode import render
from dicomnode import tags
from dicomnode.archive import query
from dicomnode.archive.index import Instance
from dicomnode.archive.index import Series
from dicomnode.archive.index import Study
from dicomnode.archive.store import Store
from dicomnode.dicomweb.dicomjson import BINARY_VRS
from dicomnode.dicomweb.dicomjson import dataset_json
from dicomnode.dicomweb.dicomjson import tag_key
from dicomnode.dicomweb.multipart import Part
from dicomnode.dicomweb.negotiate import EXPLICIT_BE
from dicomnode.dicomweb.negotiate import EXPLICIT_LE
from dicomnode.dicomweb.negotiate import IMPLICIT_LE
from dicomnode.dicomweb.negotiate import UNCOMPRESSED
from dicomnode.dicomweb.negotiate import Choice
from dicomnode.dicomweb.negotiate import NotAcceptable
from dicomnode.errors import DolmenError
from dicomnode.errors import NotFound
from dicomnode.errors import RenderError
from dicomnode.header import PixelSource
from dicomnode.header import open_pixels

LOGGER = logging.getLogger(__name__)


def read_header(path: str | os.PathLike[str]) -> tuple[Dataset, PixelSource | None]:
    """The data set of a file up to its pixel data, and where the pixel data is (if any)."""
    with open_pixels(path) as where:
        pass  # the offsets stay valid once the file is closed
    return where.ds, (where if where.pixel_keyword is not None else None)


def header_values(path: str | os.PathLike[str], wanted: Sequence[int]) -> Dataset:
    """Only the ``wanted`` top-level elements of a file (cheap: pixel data is never read)."""
    return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(wanted))


def transcode(path: str | os.PathLike[str], transfer_syntax: str) -> bytes:
    """The file re-encoded in an uncompressed ``transfer_syntax`` (decompressing it if needed).

    Raises
    ------
    DolmenError
        When the pixel data cannot be decoded (no codec) or the file cannot be re-encoded.
    """
    try:
        head = pydicom.dcmread(path, stop_before_pixels=True)
        source = UID(str(head.file_meta.TransferSyntaxUID))
        # Compressed frames decode through the renderer's guards, in its worker processes.
        ds: Dataset = render.decompressed(path) if source.is_compressed else pydicom.dcmread(path)
        if source == EXPLICIT_BE and "PixelData" in ds and int(ds.get("BitsAllocated", 8)) > 8:
            raise DolmenError("big endian pixel data is not converted")
        ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
        out = io.BytesIO()
        ds.save_as(out, implicit_vr=transfer_syntax == IMPLICIT_LE, little_endian=True,
                   enforce_file_format=True)
        return out.getvalue()
    except DolmenError:
        raise
    except Exception as exc:
        raise DolmenError(f"Cannot transcode to {transfer_syntax}: {type(exc).__name__}: {exc}",
                          code="transcode_failed") from exc




def instances(study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> list[Instance]:
    """The instances of a study, a series or one instance, in series and instance order.

    Each row holds its ``path``, ``sop_instance_uid``, ``transfer_syntax_uid`` and
    ``number_of_frames``, ``series.series_instance_uid`` and ``series.study.study_instance_uid``.

    Raises
    ------
    NotFound
        When nothing matches, naming what was looked for.
    """
    # Only the columns the WADO-RS answers use: a whole Instance, Series and Study per row
    # took longer to build than the query (a tenth of a 1,000-instance retrieve).
    rows = (Instance.select(Instance.pk, Instance.path, Instance.sop_instance_uid,
                            Instance.transfer_syntax_uid, Instance.number_of_frames, Instance.series,
                            Series.pk, Series.series_instance_uid, Series.study, Study.pk,
                            Study.study_instance_uid)
            .join(Series).join(Study).where(Study.study_instance_uid == study_uid))
    if series_uid is not None:
        rows = rows.where(Series.series_instance_uid == series_uid)
    if sop_uid is not None:
        rows = rows.where(Instance.sop_instance_uid == sop_uid)
    rows = rows.order_by(Series.series_number, Series.pk, Instance.instance_number, Instance.pk)
    found = list(rows)
    if not found:
        if sop_uid or series_uid:
            what = f"instance {sop_uid}" if sop_uid else f"series {series_uid}"
            raise NotFound(f"No {what} in study {study_uid}")
        raise NotFound(f"No study {study_uid}")
    return found


def representative(rows: Sequence[Instance]) -> Instance:
    """The instance shown for a series or study: the middle one of the first series."""
    first_series = rows[0].series.pk
    same = [r for r in rows if r.series.pk == first_series]
    return same[len(same) // 2]



def dicom_content_type(transfer_syntax: str) -> str:
    return f"application/dicom; transfer-syntax={transfer_syntax}"


def instance_parts(store: Store, rows: Iterable[Instance], choice: Choice) -> Iterator[Part]:
    """One part per instance, made when it is needed (one file in memory at most, when transcoding).

    A file that is as asked is sent as is, read in chunks. A file that must be transcoded and
    cannot be (no decoder for its compression) is sent as stored and logged; the part's
    Content-Type says which transfer syntax it holds.
    """
    for row in rows:
        try:
            path = store.path(row.path)
        except NotFound:
            LOGGER.warning("Instance %s has no file in the store; left out", row.sop_instance_uid)
            continue
        if not path.exists():
            LOGGER.warning("The file of instance %s is missing (%s)", row.sop_instance_uid, row.path)
            continue
        stored = row.transfer_syntax_uid
        wanted = choice.transfer_syntax
        if wanted in ("*", stored):
            yield Part(dicom_content_type(stored), path)
            continue
        try:
            yield Part(dicom_content_type(wanted), transcode(path, wanted))
        except DolmenError as exc:
            LOGGER.warning("Instance %s is sent as stored (%s): %s", row.sop_instance_uid, stored,
                           exc.message)
            yield Part(dicom_content_type(stored), path)


def metadata(store: Store, rows: Iterable[Instance], base: str) -> Iterator[bytes]:
    """A JSON array of the instances' data sets, written as each file is read.

    Bulk data (values over :data:`BULK_THRESHOLD` bytes, pixel data) is given as BulkDataURI
    ``{base}/studies/{study}/series/{series}/instances/{sop}/bulkdata/{path}``.
    """
    yield b"["
    first = True
    for row in rows:
        uri = (f"{base}/studies/{row.series.study.study_instance_uid}/series/{row.series.series_instance_uid}"
               f"/instances/{row.sop_instance_uid}/bulkdata")
        try:
            ds, pixels = read_header(store.path(row.path))
        except Exception as exc:
            LOGGER.warning("Cannot read instance %s for its metadata: %s", row.sop_instance_uid, exc)
            continue
        doc = dataset_json(ds, uri)
        if pixels is not None:
            doc[tag_key(pixels.tag)] = {"vr": pixels.pixel_vr if pixels.pixel_vr in BINARY_VRS else "OW",
                                         "BulkDataURI": f"{uri}/{pixels.tag:08x}"}
        doc.setdefault("00083002", {"vr": "UI", "Value": [row.transfer_syntax_uid]})
        yield (b"" if first else b",") + json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
        first = False
    yield b"]"


def parse_frame_list(text: str, count: int) -> list[int]:
    """1-based frame numbers from ``"1,3,5"``.

    Raises
    ------
    query.QueryError
        For something that is not a list of positive whole numbers (HTTP 400).
    NotFound
        For a frame beyond (0028,0008) *Number of Frames*.
    """
    numbers = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise query.QueryError(f"Frame list {text[:64]!r}: give frame numbers from 1, "
                                   "separated by commas")
        numbers.append(int(item))
    bad = [n for n in numbers if n > count]
    if bad:
        raise NotFound(f"Frame {bad[0]} does not exist: the instance has {count} frame{'s' * (count != 1)}")
    return numbers


def _frame_size(ds: Dataset) -> int:
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.BitsAllocated)
    return rows * cols * samples * bits // 8


def frame_parts(store: Store, row: Instance, numbers: Sequence[int], choice: Choice) -> Iterator[Part]:
    """The requested frames as parts: raw uncompressed bytes, or the stored bitstream.

    Raises
    ------
    RenderError
        When the instance has no pixel data, or a frame cannot be decoded (HTTP 415).
    """
    path = store.path(row.path)
    ds, where = read_header(path)
    if where is None:
        raise RenderError("This instance has no pixel data, so it has no frames")
    ts = where.transfer_syntax
    for number in numbers:
        index = number - 1
        if choice.media_type != "application/octet-stream":
            yield Part(f"{choice.media_type}; transfer-syntax={ts}", _bitstream(path, where, index, row))
            continue
        yield Part(f"application/octet-stream; transfer-syntax={EXPLICIT_LE}", _raw_frame(path, where, index))


def _bitstream(path: Path, where: PixelSource, index: int, row: Instance) -> bytes:
    ds = where.ds
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    with open(path, "rb") as fp:
        assert where.offset is not None
        fp.seek(where.offset)
        try:
            data: bytes = get_frame(fp, index, extended_offsets=extended,
                                    number_of_frames=int(row.number_of_frames or 1))
        except Exception as exc:
            raise RenderError(f"Frame {index + 1} is not in the encapsulated pixel data: {exc}") from exc
    return data


def _raw_frame(path: Path, where: PixelSource, index: int) -> bytes:
    """One frame, uncompressed, little endian."""
    ds = where.ds
    native = where.transfer_syntax in (EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE)
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if native and where.offset is not None and where.declared_length is not None and bits in (8, 16, 32, 64):
        size = _frame_size(ds)
        if (index + 1) * size > where.declared_length:
            raise RenderError(f"Frame {index + 1} lies beyond the end of the pixel data")
        with open(path, "rb") as fp:
            fp.seek(where.offset + index * size)
            data = fp.read(size)
        if where.transfer_syntax == EXPLICIT_BE and bits > 8:
            data = np.frombuffer(data, dtype=f">u{bits // 8}").astype(f"<u{bits // 8}").tobytes()
        return data
    # Through the renderer's guards; compressed frames decode in its worker processes.
    arr = render.decode_frame(str(path), frame=index)
    if bits == 1:
        return bytes(np.packbits(arr.astype(np.uint8).ravel(), bitorder="little").tobytes())
    return bytes(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())


def pixel_bulk_parts(store: Store, row: Instance, choice: Choice) -> Iterator[Part]:
    """The pixel data of an instance as bulk data: one part (native) or one per frame (encapsulated)."""
    path = store.path(row.path)
    _ds, where = read_header(path)
    if where is None:
        raise NotFound("This instance has no pixel data")
    whole = choice.media_type == "application/octet-stream" and where.transfer_syntax in UNCOMPRESSED
    if whole and where.declared_length is not None and where.offset is not None:
        yield Part("application/octet-stream", _file_range(path, where.offset, where.declared_length))
        return
    yield from frame_parts(store, row, range(1, int(row.number_of_frames or 1) + 1), choice)


def _file_range(path: Path, offset: int, length: int) -> Iterator[bytes]:
    with open(path, "rb") as fp:
        fp.seek(offset)
        left = length
        while left > 0:
            data = fp.read(min(left, 1 << 20))
            if not data:
                return
            left -= len(data)
            yield data


def bulk_value(store: Store, row: Instance, path_in_ds: str) -> bytes:
    """The value of one element (not pixel data) addressed like :func:`dicomnode.tags.element_at`.

    Raises
    ------
    NotFound
        When the path names nothing in the instance.
    """
    ds = pydicom.dcmread(store.path(row.path), stop_before_pixels=True)
    return tags.value_bytes(tags.element_at(ds, path_in_ds))


@dataclass(frozen=True)
class RenderParams:
    """``window``, ``viewport`` and ``quality`` of a /rendered or /thumbnail request (PS3.18 8.3.5)."""

    window: render.Window | None = None
    max_size: int | None = None
    quality: int = 90


def parse_render_params(params: Mapping[str, str], *, thumbnail: bool = False) -> RenderParams:
    """Read ``window=center,width[,function]``, ``viewport=vw,vh`` and ``quality``.

    Raises
    ------
    query.QueryError
        For values that are not numbers or out of range (HTTP 400).
    """
    window = None
    if params.get("window"):
        parts = [p.strip() for p in params["window"].split(",")]
        try:
            center, width = float(parts[0]), float(parts[1])
            function = parts[2].upper() if len(parts) > 2 and parts[2] else "LINEAR"
            window = render.Window(center, width, function)
        except (IndexError, ValueError) as exc:
            detail = f" ({exc})" if isinstance(exc, ValueError) and "Window" in str(exc) else ""
            raise query.QueryError(f"window: {params['window'][:64]!r} is not center,width[,function]{detail}"
                                   ) from None
    max_size = 128 if thumbnail else None
    if params.get("viewport"):
        try:
            sizes = [int(v) for v in params["viewport"].split(",")[:2] if v.strip()]
        except ValueError:
            sizes = []
        if not sizes or min(sizes) < 1:
            raise query.QueryError(f"viewport: {params['viewport'][:64]!r} is not width,height in pixels")
        max_size = max(sizes)
    quality = 90
    if params.get("quality"):
        try:
            quality = int(params["quality"])
        except ValueError:
            quality = 0
        if not 1 <= quality <= 100:
            raise query.QueryError(f"quality: {params['quality'][:16]!r} is not a number from 1 to 100")
    return RenderParams(window, max_size, quality)


def render_instance(store: Store, row: Instance, frame: int, fmt: str, params: RenderParams) -> bytes:
    """One frame (0-based) of an instance as JPEG or PNG, through the one renderer.

    Raises
    ------
    RenderError
        When the instance has no image or the frame cannot be decoded (HTTP 415).
    """
    if frame >= int(row.number_of_frames or 1):
        raise NotFound(f"Frame {frame + 1} does not exist: the instance has {row.number_of_frames} frame(s)")
    return render.render(str(store.path(row.path)), frame=frame, window=params.window, fmt=fmt,
                         max_size=params.max_size, quality=params.quality)



@dataclass(frozen=True)
class WadoUriRequest:
    """A parsed WADO-URI request."""

    study_uid: str
    series_uid: str
    sop_uid: str
    content_type: str  # application/dicom, image/jpeg or image/png
    explicit_type: bool
    frame: int  # 0-based
    transfer_syntax: str
    render: RenderParams


def parse_wado_uri(params: Mapping[str, str]) -> WadoUriRequest:
    """Read ``requestType=WADO&studyUID=&seriesUID=&objectUID=`` and the optional parameters.

    ``contentType`` may list several types (the first supported wins); ``frameNumber`` is
    1-based; ``rows``/``columns`` bound the image size; ``windowCenter``/``windowWidth`` set
    the window; ``imageQuality`` the JPEG quality; ``transferSyntax`` the syntax of
    ``application/dicom`` (default Explicit VR Little Endian, PS3.18 9.4.2.4).

    Raises
    ------
    query.QueryError
        For a missing or malformed parameter (HTTP 400).
    NotAcceptable
        For a content type that cannot be produced (HTTP 406).
    """
    if params.get("requestType") != "WADO":
        raise query.QueryError("requestType must be WADO")
    uids = {}
    for name in ("studyUID", "seriesUID", "objectUID"):
        value = (params.get(name) or "").strip()
        if not value or not all(c.isdigit() or c == "." for c in value) or len(value) > 64:
            raise query.QueryError(f"{name} is missing or is not a UID")
        uids[name] = value
    if params.get("anonymize"):
        raise query.QueryError("anonymize is not supported")
    wanted = [m.strip().lower() for m in (params.get("contentType") or "").split(",") if m.strip()]
    content = None
    for item in wanted or ["image/jpeg"]:
        item = item.split(";")[0].strip()
        if item in ("application/dicom", "image/jpeg", "image/png"):
            content = item
            break
        if item in ("*/*", "image/*"):
            content = "image/jpeg"
            break
    if content is None:
        raise NotAcceptable(f"contentType {params.get('contentType', '')[:64]!r}: use application/dicom, "
                            "image/jpeg or image/png")
    frame = 0
    if params.get("frameNumber"):
        text = params["frameNumber"].strip()
        if not text.isdigit() or int(text) < 1:
            raise query.QueryError("frameNumber must be a whole number from 1")
        frame = int(text) - 1
    render_params: dict[str, str] = {}
    if params.get("windowCenter") or params.get("windowWidth"):
        render_params["window"] = f"{params.get('windowCenter', '')},{params.get('windowWidth', '')}"
    sizes = [params[k] for k in ("rows", "columns") if params.get(k)]
    if sizes:
        render_params["viewport"] = ",".join(sizes)
    if params.get("imageQuality"):
        render_params["quality"] = params["imageQuality"]
    ts = (params.get("transferSyntax") or EXPLICIT_LE).strip()
    if ts != "*" and not all(c.isdigit() or c == "." for c in ts):
        raise query.QueryError("transferSyntax is not a UID")
    return WadoUriRequest(uids["studyUID"], uids["seriesUID"], uids["objectUID"], content, bool(wanted),
                          frame, ts, parse_render_params(render_params))


def wado_uri_instance(req: WadoUriRequest) -> Instance:
    """The instance of a WADO-URI request (its study and series must match).

    Raises
    ------
    NotFound
        When no such instance is stored.
    """
    return instances(req.study_uid, req.series_uid, req.sop_uid)[0]
