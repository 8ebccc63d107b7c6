"""The DICOMweb origin server's engine: QIDO-RS, WADO-RS, STOW-RS and WADO-URI (PS3.18), no HTTP.

:mod:`webapp.api.dicomweb` turns requests into calls of this module and its answers into
responses. Everything that knows DICOM lives here:

* **QIDO-RS** (PS3.18 10.6): :func:`parse_qido` reads the query parameters (attributes by
  keyword or tag, ``includefield``, ``limit``, ``offset``, ``fuzzymatching``), :func:`qido`
  matches through :func:`dicomnode.archive.query.select` — the same translator and matching rules as
  the C-FIND SCP — and answers DICOM JSON (PS3.18 F.2) with the attributes of PS3.18
  Tables 10.6.3-3 to 10.6.3-5.
* **WADO-RS** (PS3.18 10.4): :func:`negotiate` picks a media type and transfer syntax from
  ``Accept`` (PS3.18 8.7); :func:`instance_parts` feeds :func:`dicomnode.dicomweb.multipart.write_parts`
  one file at a time, transcoding to an uncompressed syntax only when asked;
  :func:`metadata` answers DICOM JSON with ``BulkDataURI`` for large binary values;
  :func:`frame_parts` cuts frames out of the pixel data; :func:`render_instance` goes through
  the one renderer.
* **STOW-RS** (PS3.18 10.5): :func:`stow` spools each part, checks it belongs to the study of
  the URL, files it through the one ingest path and builds the Store Instances Response
  (PS3.18 Annex I).
* **WADO-URI** (PS3.18 9): :func:`parse_wado_uri`.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import struct
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.tag import BaseTag
from pydicom.uid import UID

from dicomnode import render
from dicomnode import tags
from dicomnode.archive import query
from dicomnode.archive.index import Instance
from dicomnode.archive.index import Patient
from dicomnode.archive.index import Series
from dicomnode.archive.index import Study
from dicomnode.archive.index import db
from dicomnode.archive.ingest import Ingestor
from dicomnode.archive.ingest import IngestResult
from dicomnode.archive.ingest import Source
from dicomnode.archive.store import Store
from dicomnode.dicomweb.multipart import MediaType
from dicomnode.dicomweb.multipart import MultipartReader
from dicomnode.dicomweb.multipart import Part
from dicomnode.dicomweb.multipart import parse_media_type
from dicomnode.errors import DolmenError
from dicomnode.errors import NotFound
from dicomnode.errors import RenderError

LOGGER = logging.getLogger(__name__)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
UNCOMPRESSED = (EXPLICIT_LE, IMPLICIT_LE)
NATIVE = (EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, DEFLATED_LE)

#: Media type of the compressed bitstream of each transfer syntax (PS3.18 Table 8.7.3-4).
BITSTREAM_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx", "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc", "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg", "1.2.840.10008.1.2.4.101": "video/mpeg",
    "1.2.840.10008.1.2.4.102": "video/mp4", "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4", "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4", "1.2.840.10008.1.2.4.107": "video/H265",
    "1.2.840.10008.1.2.4.108": "video/H265",
}
_MEDIA_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}

#: Binary values longer than this are answered as a BulkDataURI rather than inline.
BULK_THRESHOLD = 1024
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})

#: Study Instance UID of a part differs from the study in the STOW-RS URL. A Cxxx "cannot
#: understand" code, implementation-specific as PS3.18 Table I.2-2 allows; dcm4chee uses it too.
STUDY_MISMATCH = 0xC409
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110


class NotAcceptable(DolmenError):
    """No media type of the request's Accept can be produced (HTTP 406)."""

    code = "not_acceptable"
    http_status = 406


class UnsupportedMediaType(DolmenError):
    """The request body's media type is not one the service takes (HTTP 415)."""

    code = "unsupported_media_type"
    http_status = 415


# -- DICOM JSON (PS3.18 F.2) ---------------------------------------------------------------------


def tag_key(tag: int) -> str:
    """The DICOM JSON key of a tag: 8 upper-case hex digits."""
    return f"{tag:08X}"


def _pn_json(value: str) -> dict[str, str]:
    groups = str(value).split("=")
    return {name: text for name, text in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False)
            if text}


def value_json(vr: str, value: Any) -> dict[str, Any]:
    """The DICOM JSON of one index value: empty strings and ``None`` give no ``Value``."""
    out: dict[str, Any] = {"vr": vr}
    if value is None or value == "":
        return out
    if vr in ("IS", "SL", "SS", "UL", "US"):
        out["Value"] = [int(value)]
    elif vr == "PN":
        out["Value"] = [_pn_json(str(value))]
    elif isinstance(value, (list, tuple)):
        out["Value"] = list(value)
    elif vr in ("CS", "UI") and "\\" in str(value):
        out["Value"] = [v for v in str(value).split("\\")]
    else:
        out["Value"] = [value]
    return out


def _is_ascii(doc: Mapping[str, Any]) -> bool:
    return json.dumps(doc, ensure_ascii=False).isascii()


def _vr_of(ds: Dataset, tag: BaseTag) -> str:
    raw = ds.get_item(tag, keep_deferred=True)
    vr = getattr(raw, "VR", None)
    if vr:
        return str(vr)
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    if tag == 0x7FE00010:
        return "OW"  # implicit VR little endian pixel data
    return str(vr).split(" or ")[0]


def _raw_length(ds: Dataset, tag: BaseTag) -> int | None:
    raw = ds.get_item(tag, keep_deferred=True)
    length = getattr(raw, "length", None)
    if isinstance(raw, DataElement) and raw.value is not None and not raw.is_empty:
        try:
            return len(raw.value)
        except TypeError:
            return None
    return int(length) if length is not None else None


def dataset_json(ds: Dataset, bulk_uri: str | None, prefix: str = "", depth: int = 0) -> dict[str, Any]:
    """DICOM JSON of a dataset; binary values longer than :data:`BULK_THRESHOLD` become BulkDataURIs.

    Parameters
    ----------
    ds : Dataset
        Read with ``stop_before_pixels`` and deferred values (large values are not loaded).
    bulk_uri : str, optional
        Base of the bulk data URIs (``.../instances/{uid}/bulkdata``); each element's path
        in the format of :func:`dicomnode.tags.element_at` is appended. Without it, large
        binary values are left out (their VR only).
    """
    out: dict[str, Any] = {}
    for tag in sorted(ds.keys()):
        if tag.group == 0x0002 or tag.element == 0x0000:
            continue  # file meta and group lengths have no place in DICOM JSON
        vr = _vr_of(ds, tag)
        path = f"{prefix}{int(tag):08x}"
        key = tag_key(int(tag))
        if vr in _BINARY_VRS and (_raw_length(ds, tag) or 0) > BULK_THRESHOLD:
            out[key] = {"vr": vr, "BulkDataURI": f"{bulk_uri}/{path}"} if bulk_uri else {"vr": vr}
            continue
        try:
            elem = ds[tag]
            if elem.VR == "SQ":
                items = elem.value or []
                out[key] = {"vr": "SQ", "Value": [
                    dataset_json(item, bulk_uri, f"{path}/{n}/", depth + 1) for n, item in enumerate(items)
                ]} if depth < tags.MAX_DEPTH and items else {"vr": "SQ"}
                continue
            out[key] = elem.to_json_dict(None, BULK_THRESHOLD * 1024)
        except Exception as exc:  # one undecodable value must not lose the whole answer
            LOGGER.debug("Value of %s cannot be written as DICOM JSON: %s", key, exc)
            out[key] = {"vr": vr}
    return out


# -- reading files ---------------------------------------------------------------------------


@dataclass
class PixelLocation:
    """Where the pixel data of a file is: its header, transfer syntax and value position."""

    ds: Dataset
    transfer_syntax: UID
    offset: int | None  # file offset of the value; None when not found (deflated file)
    length: int | None  # None for undefined length (encapsulated)
    vr: str
    tag: int


def read_header(path: str | os.PathLike[str]) -> tuple[Dataset, PixelLocation | None]:
    """The data set of a file up to its pixel data, and where the pixel data is (if any)."""
    with open(path, "rb") as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, defer_size=BULK_THRESHOLD * 4)
        ts = UID(str(ds.file_meta.get("TransferSyntaxUID", IMPLICIT_LE)))
        if ts == DEFLATED_LE:
            has = "Rows" in ds
            return ds, (PixelLocation(ds, ts, None, None, "OW", 0x7FE00010) if has else None)
        start = fp.tell()
        head = fp.read(12)
    if len(head) < 8:
        return ds, None
    little = ts != EXPLICIT_BE
    group, element = struct.unpack("<HH" if little else ">HH", head[:4])
    tag = (group << 16) | element
    if tag not in _PIXEL_TAGS:
        return ds, None
    explicit = ts != IMPLICIT_LE
    if explicit:
        vr = head[4:6].decode("ascii", "replace")
        length = struct.unpack("<I" if little else ">I", head[8:12])[0]
        offset = start + 12
    else:
        vr = "OW"
        length = struct.unpack("<I", head[4:8])[0]
        offset = start + 8
    return ds, PixelLocation(ds, ts, offset, None if length == 0xFFFFFFFF else length, vr, tag)


def _header_values(path: str | os.PathLike[str], wanted: Sequence[int]) -> Dataset:
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


# -- resources -----------------------------------------------------------------------------------


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


# -- QIDO-RS (PS3.18 10.6) -----------------------------------------------------------------------

QIDO_LEVELS = {"studies": query.STUDY, "series": query.SERIES, "instances": query.IMAGE}

#: Attributes of PS3.18 Tables 10.6.3-3 (study), -4 (series) and -5 (instance) that the index
#: holds. Instance Availability and Retrieve URL are added to each; Rows, Columns and Bits
#: Allocated are read from the instance's header.
RETURNED: dict[str, tuple[str, ...]] = {
    query.STUDY: ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "ReferringPhysicianName",
                  "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
                  "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    query.SERIES: ("Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
                   "NumberOfSeriesRelatedInstances"),
    query.IMAGE: ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "NumberOfFrames"),
}
_IMAGE_HEADER = (0x00280010, 0x00280011, 0x00280100)  # Rows, Columns, Bits Allocated
_PARENT_LEVELS = {query.STUDY: (), query.SERIES: (query.STUDY,), query.IMAGE: (query.STUDY, query.SERIES)}
_IGNORED_PARAMS = frozenset({"accept", "charset", "emptyvaluematching", "multiplevaluematching"})


@dataclass
class QidoRequest:
    """A parsed QIDO-RS query."""

    level: str
    filters: dict[str, str]
    include: list[int]  # extra tags asked with includefield
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    scope: tuple[str, ...] = ()  # levels fixed by the URL (STUDY, SERIES)
    empty: bool = False  # a parameter contradicts the URL: nothing matches
    warnings: list[str] = dataclasses.field(default_factory=list)


def resolve_tag(name: str) -> int | None:
    """A tag from a keyword (``PatientName``) or 8 hex digits (``00100010``), else ``None``."""
    attr = query.attribute(name)
    if attr is not None:
        return attr.tag
    if len(name) == 8:
        try:
            return int(name, 16)
        except ValueError:
            return None
    tag = tag_for_keyword(name)
    return int(tag) if tag is not None else None


def parse_qido(level: str, params: Iterable[tuple[str, str]],
               scope: Mapping[str, str] | None = None) -> QidoRequest:
    """Read QIDO-RS query parameters (PS3.18 8.3.4) for ``level``.

    Parameters
    ----------
    level : str
        STUDY, SERIES or IMAGE.
    params : iterable of (name, value)
        The query string, repeated names included.
    scope : mapping, optional
        UIDs fixed by the URL (``{"StudyInstanceUID": ...}``).

    Raises
    ------
    query.QueryError
        For an unknown parameter or attribute, or a bad ``limit``, ``offset`` or
        ``fuzzymatching`` value (HTTP 400).
    """
    scope = dict(scope or {})
    req = QidoRequest(level, dict(scope), [],
                      scope=tuple(query.attribute(k).level for k in scope if query.attribute(k)))  # type: ignore[union-attr]
    unsupported: list[str] = []
    for name, value in params:
        if name == "includefield":
            for item in (v.strip() for v in value.split(",")):
                if not item:
                    continue
                if item == "all":
                    req.include_all = True
                    continue
                tag = resolve_tag(item)
                if tag is None:
                    raise query.QueryError(f"includefield: {item[:64]!r} is not a DICOM keyword or tag")
                req.include.append(tag)
        elif name in ("limit", "offset"):
            try:
                number = int(value)
            except ValueError:
                number = -1
            if number < 0:
                raise query.QueryError(f"{name}: {value[:32]!r} is not a whole number of 0 or more")
            if name == "limit":
                req.limit = number
            else:
                req.offset = number
        elif name == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise query.QueryError(f"fuzzymatching: {value[:32]!r} is neither true nor false")
            if value.lower() == "true":
                req.warnings.append("The fuzzymatching parameter is not supported. "
                                    "Only literal matching has been performed.")
        elif name in _IGNORED_PARAMS:
            continue
        else:
            attr = query.attribute(name)
            if attr is not None:
                if attr.keyword in scope:
                    if value and scope[attr.keyword] not in value.split("\\"):
                        req.empty = True  # the URL's resource does not match the parameter
                elif attr.keyword in req.filters and req.filters[attr.keyword] and value:
                    req.filters[attr.keyword] += "\\" + value
                else:
                    req.filters[attr.keyword] = value
                continue
            parts = name.split(".")
            if all(resolve_tag(p) is not None for p in parts):
                unsupported.append(name)
                continue
            raise query.QueryError(f"Unknown query parameter {name[:64]!r}: not a DICOM keyword or tag, "
                                   "nor includefield, limit, offset or fuzzymatching")
    if unsupported:
        req.warnings.append("The following attributes were not supported for matching: "
                            + ", ".join(unsupported))
    return req


def _keywords(req: QidoRequest) -> list[str]:
    """The index attributes answered for each match."""
    names: list[str] = []
    levels = [lv for lv in _PARENT_LEVELS[req.level] if lv not in req.scope] + [req.level]
    for level in levels:
        names += RETURNED[level]
    # The UIDs of the parents, so that each answer can be retrieved on its own.
    names += {query.STUDY: [], query.SERIES: ["StudyInstanceUID"],
              query.IMAGE: ["StudyInstanceUID", "SeriesInstanceUID"]}[req.level]
    names += [k for k in req.filters if query.ATTRIBUTES[k].field is not None]
    if req.include_all:
        depth = query.LEVELS.index(req.level)
        names += [a.keyword for a in query.ATTRIBUTES.values()
                  if a.level != query.PATIENT and query.LEVELS.index(a.level) <= depth
                  and not (a.field is None and a.level != req.level)]
        names += ["PatientName", "PatientID", "PatientBirthDate", "PatientSex"]
    for tag in req.include:
        attr = query.BY_TAG.get(tag)
        if attr is not None and not (attr.field is None and attr.level != req.level):
            if query.LEVELS.index(attr.level) <= query.LEVELS.index(req.level):
                names.append(attr.keyword)
    return list(dict.fromkeys(names))


def qido(req: QidoRequest, base: str, *, case_sensitive_pn: bool = False,
         store: Store | None = None) -> list[dict[str, Any]]:
    """The DICOM JSON answers of a QIDO-RS query, in the order the index holds them.

    Parameters
    ----------
    base : str
        The service's absolute URL (``http://host/dicom-web``), for Retrieve URL (0008,1190).
    store : Store, optional
        To read attributes the index does not hold from an instance's header: Rows,
        Columns and Bits Allocated at the instance level, and ``includefield`` attributes
        (from a representative instance at the study and series levels).
    """
    if req.empty:
        return []
    rows = query.select(req.level, req.filters, case_sensitive_pn=case_sensitive_pn)
    rows = rows.order_by(query.MODEL[req.level].pk)  # type: ignore[attr-defined]
    if req.offset:
        rows = rows.offset(req.offset)
    if req.limit is not None:
        rows = rows.limit(req.limit)
    keywords = _keywords(req)
    extra = [t for t in req.include if t not in query.BY_TAG]
    if req.level == query.IMAGE:
        extra = list(dict.fromkeys([*_IMAGE_HEADER, *extra]))
    # Plain tuples of the columns needed, fetched in one go: building peewee models (or
    # peewee's per-row processing) for thousands of rows would cost more than the query.
    model: Any = query.MODEL[req.level]
    columns = [_column(k) for k in keywords]
    path = Instance.path if req.level == query.IMAGE else model.pk
    fetched = db.execute(rows.select(*columns, model.pk, path).tuples()).fetchall()
    attrs = [query.ATTRIBUTES[k] for k in keywords]
    # Each answer's keys are sorted once here rather than per answer.
    fixed = [(tag_key(a.tag), n, a.vr, _CONVERT.get(a.vr, _as_list)) for n, a in enumerate(attrs)]
    order: list[tuple[str, int, str, Any]] = sorted(
        [*fixed, (_AVAILABILITY, -1, "CS", None), (_RETRIEVE_URL, -2, "UR", None)])
    url_at = [keywords.index(k) for k in _URL_KEYWORDS[req.level]]
    text_at = [n for n, a in enumerate(attrs) if a.vr in _TEXT_VRS]  # the others are ASCII by VR
    url_head = f"{base}/studies/"
    url_parts = ("", "/series/", "/instances/")
    answers = []
    for row in fetched:
        doc: dict[str, Any] = {}
        for key, n, vr, convert in order:
            if n >= 0:
                value = row[n]
                doc[key] = {"vr": vr} if value is None or value == "" else convert(vr, value)
            elif n == -1:
                doc[key] = {"vr": vr, "Value": ["ONLINE"]}
            else:
                uids = "".join(part + str(row[i]) for part, i in zip(url_parts, url_at, strict=False))
                doc[key] = {"vr": vr, "Value": [url_head + uids]}
        ascii_only = "".join([row[n] for n in text_at if row[n]]).isascii()
        if extra and store is not None:
            found = _from_header(store, row[-2], row[-1], req.level, extra)
            if found:
                doc.update(found)
                doc = dict(sorted(doc.items()))
                ascii_only = ascii_only and _is_ascii(found)
        if not ascii_only:
            doc["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}
            doc = dict(sorted(doc.items()))
        answers.append(doc)
    return answers


#: VRs whose values may hold other characters than ASCII (PS3.5 6.1.2.3).
_TEXT_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_AVAILABILITY = "00080056"  # (0008,0056) Instance Availability
_RETRIEVE_URL = "00081190"  # (0008,1190) Retrieve URL
#: The UIDs in a Retrieve URL (0008,1190), by level.
_URL_KEYWORDS = {query.STUDY: ("StudyInstanceUID",), query.SERIES: ("StudyInstanceUID", "SeriesInstanceUID"),
                 query.IMAGE: ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}


def _as_int(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [int(value)]}


def _as_pn(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [_pn_json(str(value))]}


def _as_multi(vr: str, value: Any) -> dict[str, Any]:
    text = str(value)
    return {"vr": vr, "Value": text.split("\\") if "\\" in text else [text]}


def _as_list(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(value) if isinstance(value, (list, tuple)) else [value]}


#: :func:`value_json` by VR, for a value that is not empty.
_CONVERT = {"IS": _as_int, "SL": _as_int, "SS": _as_int, "UL": _as_int, "US": _as_int, "PN": _as_pn,
            "CS": _as_multi, "UI": _as_multi}


#: The index columns of the computed attributes (counters kept by the ingest path).
_COUNTERS = {
    "NumberOfPatientRelatedStudies": Patient.num_studies, "NumberOfPatientRelatedSeries": Patient.num_series,
    "NumberOfPatientRelatedInstances": Patient.num_instances, "NumberOfStudyRelatedSeries": Study.num_series,
    "NumberOfStudyRelatedInstances": Study.num_instances,
    "NumberOfSeriesRelatedInstances": Series.num_instances,
}


def _column(keyword: str) -> Any:
    field = query.ATTRIBUTES[keyword].field
    return field if field is not None else _COUNTERS[keyword]


def _from_header(store: Store, pk: int, path: Any, level: str, wanted: list[int]) -> dict[str, Any]:
    """Attributes the index does not hold, read from one instance of the matched resource.

    ``path`` is the instance's file at the IMAGE level; at the others, an instance of the
    series or study ``pk`` is looked up.
    """
    if level != query.IMAGE:
        found = Instance.select(Instance.path).join(Series)
        if level == query.SERIES:
            found = found.where(Series.pk == pk)
        else:
            found = found.where(Series.study == pk)
        path = found.order_by(Instance.instance_number, Instance.pk).scalar()
        if path is None:
            return {}
    try:
        ds = _header_values(store.path(str(path)), wanted)
    except Exception as exc:  # a missing or unreadable file leaves the attributes out
        LOGGER.warning("Cannot read %s for a QIDO-RS answer: %s", path, exc)
        return {}
    return dataset_json(ds, None)


# -- content negotiation (PS3.18 8.7) -----------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """The selected media type of a response and its transfer syntax (``*``: as stored)."""

    media_type: str
    transfer_syntax: str = "*"
    multipart: bool = True


def _wants(media: MediaType, base: str) -> tuple[bool, bool]:
    """(acceptable, multipart) for one Accept item and the media type of the parts."""
    if media.type == "multipart/related":
        inner = (media.param("type") or base).lower()
        inner = _MEDIA_ALIASES.get(inner, inner)
        return inner == base or inner in ("*/*", base.split("/")[0] + "/*"), True
    if media.type in ("*/*", base.split("/")[0] + "/*"):
        return True, True
    return _MEDIA_ALIASES.get(media.type, media.type) == base, False


def negotiate_instances(accept: list[MediaType], stored: Iterable[str],
                        query_ts: str | None = None) -> Choice:
    """The transfer syntax for a retrieve of instances (``application/dicom``).

    Without a transfer syntax parameter the standard's default, Explicit VR Little Endian, is
    used (PS3.18 8.7.3.5); ``*`` sends each file as stored. Any uncompressed syntax can be
    produced; a compressed one only when every instance is stored in it.

    Raises
    ------
    NotAcceptable
        When no item of ``accept`` can be produced.
    """
    stored_set = set(stored)
    items = accept or [MediaType("multipart/related", {"type": "application/dicom"})]
    reasons = []
    for media in items:
        ok, multipart = _wants(media, "application/dicom")
        if not ok:
            continue
        ts = media.param("transfer-syntax") or query_ts or EXPLICIT_LE
        if ts == "*" or ts in UNCOMPRESSED or stored_set == {ts}:
            return Choice("application/dicom", ts, multipart)
        reasons.append(ts)
    if reasons:
        raise NotAcceptable(f"Cannot send these instances in transfer syntax {reasons[0]}: they are stored "
                            f"in {', '.join(sorted(stored_set))}; ask for transfer-syntax=* or {EXPLICIT_LE}")
    raise NotAcceptable('Ask for multipart/related; type="application/dicom"')


def negotiate_frames(accept: list[MediaType], stored: str, query_ts: str | None = None) -> Choice:
    """The media type and transfer syntax of frames (or pixel bulk data) stored in ``stored``.

    ``application/octet-stream`` (the default, and what ``*/*`` means) gives uncompressed
    frames, decoded if need be, unless its transfer syntax is ``*`` or the stored one;
    ``image/jpeg``, ``image/jls``, ``image/jp2``, ``image/dicom-rle``... give the compressed
    bitstream when the file holds that compression.

    Raises
    ------
    NotAcceptable
        When no item of ``accept`` can be produced.
    """
    native = BITSTREAM_MEDIA.get(stored)
    for media in accept or [MediaType("multipart/related", {"type": "application/octet-stream"})]:
        inner = (media.param("type") or "*/*") if media.type == "multipart/related" else media.type
        inner = _MEDIA_ALIASES.get(inner.lower(), inner.lower())
        ts = media.param("transfer-syntax") or query_ts
        if inner in ("*/*", "application/*"):
            inner = "application/octet-stream"
        elif inner.endswith("/*") and native is not None and native.startswith(inner[:-1]):
            inner = native
        if inner == "application/octet-stream":
            if ts in (None, *UNCOMPRESSED) or (ts in ("*", stored) and native is None):
                return Choice("application/octet-stream", EXPLICIT_LE)
            if ts in ("*", stored) and native is not None:
                return Choice(native, stored)
        elif native is not None and inner == native and ts in (None, "*", stored):
            return Choice(native, stored)
    raise NotAcceptable(
        'Frames can be sent as multipart/related; type="application/octet-stream" (uncompressed)'
        + (f' or type="{native}" (as stored, {stored})' if native else ""))


def negotiate_rendered(accept: list[MediaType], default: str = "image/jpeg") -> str:
    """``image/jpeg`` or ``image/png`` from ``Accept`` (JPEG when anything goes).

    Raises
    ------
    NotAcceptable
        When neither is acceptable.
    """
    if not accept:
        return default
    for media in accept:
        if media.type in ("image/jpeg", "image/png"):
            return media.type
        if media.type in ("*/*", "image/*"):
            return default
        if media.type == "multipart/related" and media.param("type") in ("image/jpeg", "image/png"):
            return str(media.param("type"))
    raise NotAcceptable("Rendered images are available as image/jpeg or image/png")


def negotiate_json(accept: list[MediaType]) -> None:
    """Check that ``application/dicom+json`` is acceptable (it is the only metadata form here).

    Raises
    ------
    NotAcceptable
        When the client accepts only other types (``application/dicom+xml``...).
    """
    if not accept or any(m.type in ("application/dicom+json", "application/json", "*/*", "application/*")
                         for m in accept):
        return
    raise NotAcceptable("Metadata and search results are available as application/dicom+json only")


# -- WADO-RS (PS3.18 10.4) ----------------------------------------------------------------------


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
            doc[tag_key(pixels.tag)] = {"vr": pixels.vr if pixels.vr in _BINARY_VRS else "OW",
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


def _bitstream(path: Path, where: PixelLocation, index: int, row: Instance) -> bytes:
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


def _raw_frame(path: Path, where: PixelLocation, index: int) -> bytes:
    """One frame, uncompressed, little endian."""
    ds = where.ds
    native = where.transfer_syntax in (EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE)
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if native and where.offset is not None and where.length is not None and bits in (8, 16, 32, 64):
        size = _frame_size(ds)
        if (index + 1) * size > where.length:
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
    if whole and where.length is not None and where.offset is not None:
        yield Part("application/octet-stream", _file_range(path, where.offset, where.length))
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


# -- STOW-RS (PS3.18 10.5) ----------------------------------------------------------------------


@dataclass
class StowResult:
    """The answer of a STOW-RS request: HTTP status and Store Instances Response (PS3.18 Annex I)."""

    status: int
    body: dict[str, Any]
    stored: int = 0
    failed: int = 0


def _stow_boundary(content_type: str) -> str:
    media = parse_media_type(content_type or "application/octet-stream")
    if media.type != "multipart/related":
        raise UnsupportedMediaType(
            f"STOW-RS takes multipart/related; type=\"application/dicom\", not {media.type}")
    kind = (media.param("type") or "application/dicom").lower()
    if kind != "application/dicom":
        raise UnsupportedMediaType(
            f"STOW-RS here takes DICOM files (type=\"application/dicom\"), not type=\"{kind}\"")
    boundary = media.param("boundary")
    if not boundary:
        raise UnsupportedMediaType("The multipart Content-Type has no boundary parameter")
    return boundary


def _uids_of(path: str | os.PathLike[str]) -> tuple[str, str, str]:
    """(Study Instance UID, SOP Class UID, SOP Instance UID) of a spooled file, best effort."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                             specific_tags=[0x0020000D, 0x00080016, 0x00080018])
        return tuple(str(ds.get(k, "") or "").strip(" \x00")  # type: ignore[return-value]
                     for k in ("StudyInstanceUID", "SOPClassUID", "SOPInstanceUID"))
    except Exception:
        return ("", "", "")


def _failure_code(result: IngestResult) -> int:
    if result.code in ("storage_full", "too_large"):
        return OUT_OF_RESOURCES
    if result.code == "rejected":
        return CANNOT_UNDERSTAND
    return PROCESSING_FAILURE


#: Parts one STOW-RS request may hold (a batch of more instances is split by the client).
MAX_STOW_PARTS = 10_000


def stow(ingestor: Ingestor, stream: BinaryIO | Any, content_type: str, base: str, source: Source,
         study_uid: str | None = None) -> StowResult:
    """Store each ``application/dicom`` part of a STOW-RS body through the one ingest path.

    Status (PS3.18 Table 10.5.3-1): 200 when every instance is stored (or already was), 202
    when some failed, 409 when none could be stored; 400 for a body without any part; 413 for a
    body of more than :data:`MAX_STOW_PARTS` parts (the first ones are stored and listed, the
    rest is not read).
    Failure reasons (PS3.18 Table I.2-2): 0xA700 out of resources (storage full, object too
    large), 0xC000 cannot understand (not DICOM, missing or invalid UIDs, a SOP Instance UID
    already filed in another study), 0xC409 the instance belongs to another study than the
    URL's, 0x0110 processing failure (the index failed).

    Raises
    ------
    UnsupportedMediaType
        When the body is not ``multipart/related; type="application/dicom"``.
    """
    boundary = _stow_boundary(content_type)
    store = ingestor.store
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    studies: set[str] = set()
    too_many = False
    for count, part in enumerate(MultipartReader(stream, boundary), 1):
        if count > MAX_STOW_PARTS:
            # The rest of the body is not read: each part costs a spool file and a parse.
            too_many = True
            LOGGER.warning("STOW-RS from %s stopped after %d parts (at most %d per request)",
                           source.ip or "?", MAX_STOW_PARTS, MAX_STOW_PARTS)
            break
        kind = parse_media_type(part.content_type).type if part.content_type else "application/dicom"
        if kind != "application/dicom":
            failed.append(_sop_item("", "", CANNOT_UNDERSTAND))
            LOGGER.info("STOW-RS part of type %s refused", kind)
            continue
        try:
            spool = store.spool_stream(part, owner="web", max_bytes=ingestor.max_bytes)  # type: ignore[arg-type]
        except DolmenError as exc:
            LOGGER.info("STOW-RS part refused: %s", exc.message)
            failed.append(_sop_item("", "", OUT_OF_RESOURCES if exc.code in ("storage_full", "too_large")
                                    else PROCESSING_FAILURE))
            continue
        if study_uid is not None:
            found_study, sop_class, sop_uid = _uids_of(spool)
            if found_study != study_uid:
                os.unlink(spool)
                LOGGER.info("STOW-RS to study %s: refused instance %s of study %s", study_uid, sop_uid,
                            found_study)
                failed.append(_sop_item(sop_class, sop_uid, STUDY_MISMATCH))
                continue
        result = ingestor.ingest_spooled(spool, source)
        if result.ok:
            studies.add(result.study_instance_uid)
            item = _sop_item(result.sop_class_uid, result.sop_instance_uid)
            item["00081190"] = {"vr": "UR", "Value": [
                f"{base}/studies/{result.study_instance_uid}/series/{_series_uid(result)}"
                f"/instances/{result.sop_instance_uid}"]}
            referenced.append(item)
        else:
            failed.append(_sop_item(result.sop_class_uid, result.sop_instance_uid, _failure_code(result)))
    if not referenced and not failed:
        raise query.QueryError("The STOW-RS request holds no DICOM instance")
    body: dict[str, Any] = {}
    study = study_uid or (next(iter(studies)) if len(studies) == 1 else None)
    if study:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    status = 200 if not failed else (202 if referenced else 409)
    if too_many:
        status = 413  # what came before the limit is stored and listed
    return StowResult(status, body, len(referenced), len(failed))


def _series_uid(result: IngestResult) -> str:
    row = Series.select(Series.series_instance_uid).where(Series.public_id == result.series_id).first()
    return str(row.series_instance_uid) if row else ""


def _sop_item(sop_class: str, sop_uid: str, failure: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"00081150": value_json("UI", sop_class), "00081155": value_json("UI", sop_uid)}
    if failure is not None:
        item["00081197"] = {"vr": "US", "Value": [failure]}
    return item


# -- WADO-URI (PS3.18 9) ------------------------------------------------------------------------


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


__all__ = ["BITSTREAM_MEDIA", "Choice", "NotAcceptable", "QidoRequest", "RenderParams", "StowResult",
           "UnsupportedMediaType", "WadoUriRequest", "bulk_value", "dataset_json", "dicom_content_type",
           "frame_parts", "instance_parts", "instances", "metadata", "negotiate_frames",
           "negotiate_instances", "negotiate_json", "negotiate_rendered", "parse_frame_list", "parse_qido",
           "parse_render_params", "parse_wado_uri", "pixel_bulk_parts", "qido", "read_header",
           "render_instance", "representative", "resolve_tag", "stow", "transcode", "wado_uri_instance"]
