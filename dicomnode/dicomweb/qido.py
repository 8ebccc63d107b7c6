"""QIDO-RS (PS3.18 10.6): search the index for studies, series and instances.

:func:`parse_qido` reads the query parameters (attributes by keyword or tag, ``includefield``,
``limit``, ``offset``, ``fuzzymatching``); :func:`qido` matches through
:func:`dicomnode.archive.query.select` (the same translator and matching rules as the C-FIND
SCP) and answers DICOM JSON with the attributes of PS3.18 Tables 10.6.3-3 to 10.6.3-5.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import tag_for_keyword

from dicomnode.archive import query
from dicomnode.archive.index import Instance
from dicomnode.archive.index import Patient
from dicomnode.archive.index import Series
from dicomnode.archive.index import Study
from dicomnode.archive.index import db
from dicomnode.archive.store import Store
from dicomnode.dicomweb.dicomjson import dataset_json
from dicomnode.dicomweb.dicomjson import is_ascii
from dicomnode.dicomweb.dicomjson import pn_json
from dicomnode.dicomweb.dicomjson import tag_key
from dicomnode.dicomweb.wado import header_values

LOGGER = logging.getLogger(__name__)


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
                ascii_only = ascii_only and is_ascii(found)
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
    return {"vr": vr, "Value": [pn_json(str(value))]}


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
        ds = header_values(store.path(str(path)), wanted)
    except Exception as exc:  # a missing or unreadable file leaves the attributes out
        LOGGER.warning("Cannot read %s for a QIDO-RS answer: %s", path, exc)
        return {}
    return dataset_json(ds, None)
