"""C-FIND identifiers and answers: the keys asked at each level, and answers as plain text (PS3.4 C.6)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID
from pynetdicom.association import Association

from dicomnode.errors import RemoteError
from dicomnode.net.connect import PatientRootQueryRetrieveInformationModelFind
from dicomnode.net.connect import PatientRootQueryRetrieveInformationModelGet
from dicomnode.net.connect import PatientRootQueryRetrieveInformationModelMove
from dicomnode.net.connect import StudyRootQueryRetrieveInformationModelFind
from dicomnode.net.connect import StudyRootQueryRetrieveInformationModelGet
from dicomnode.net.connect import StudyRootQueryRetrieveInformationModelMove
from dicomnode.peers import Node

LOGGER = logging.getLogger(__name__)

# -- identifiers and answers ----------------------------------------------------------------

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")

#: What we ask back at each level, beyond the filters (PS3.4 C.6.1.1 / C.6.2.1).
RETURN_KEYS: dict[str, tuple[str, ...]] = {
    "PATIENT": (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedInstances",
    ),
    "STUDY": (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyDescription",
        "ModalitiesInStudy",
        "StudyID",
        "SOPClassesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    "SERIES": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "BodyPartExamined",
        "SeriesDate",
        "NumberOfSeriesRelatedInstances",
    ),
    "IMAGE": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
        "NumberOfFrames",
    ),
}


def _level(level: str) -> str:
    level = level.upper()
    if level == "INSTANCE":
        level = "IMAGE"
    if level not in LEVELS:
        raise RemoteError(
            f"Unknown query level {level!r}: use PATIENT, STUDY, SERIES or IMAGE", code="bad_request"
        )
    return level


def identifier(level: str, keys: dict[str, Any], return_keys: Iterable[str] = ()) -> Dataset:
    """The C-FIND/C-MOVE/C-GET identifier: QueryRetrieveLevel, the matching keys and the return keys.

    Raises
    ------
    RemoteError
        ``bad_request`` for a keyword that is not a DICOM attribute.
    """
    ds = Dataset()
    values = {k: ("" if v is None else v) for k, v in keys.items()}
    text = "".join(str(v) for v in values.values())
    if not text.isascii():
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8 (PS3.3 C.12.1.1.2)
    ds.QueryRetrieveLevel = _level(level)
    for keyword in list(return_keys) + list(values):
        if tag_for_keyword(keyword) is None:
            raise RemoteError(f"{keyword!r} is not a DICOM attribute keyword", code="bad_request")
        value = values.get(keyword, "")
        if isinstance(value, (list, tuple)):
            value = "\\".join(str(v) for v in value)
        setattr(ds, keyword, value if value != "" else None)
    return ds


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(_text(v) for v in value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value).strip(" \x00")


def answer_dict(ds: Dataset) -> dict[str, str]:
    """A response identifier as ``{keyword: text}`` (sequences and private tags left out)."""
    out: dict[str, str] = {}
    for elem in ds:
        if elem.tag.is_private or elem.VR == "SQ" or not elem.keyword:
            continue
        if elem.keyword in ("QueryRetrieveLevel", "SpecificCharacterSet"):
            continue
        try:
            out[elem.keyword] = _text(elem.value)
        except Exception:  # a value that cannot be decoded must not lose the others
            out[elem.keyword] = "<undecodable>"
    return out


def raw_elements(ds: Dataset) -> list[dict[str, str]]:
    """Every element of an identifier as sent or received, for a transcript."""
    out = []
    for elem in ds:
        if isinstance(elem.value, DicomSequence):
            value = f"<sequence of {len(elem.value)} item(s)>"
        else:
            try:
                value = _text(elem.value)
            except Exception:
                value = "<undecodable>"
        out.append(
            {
                "tag": f"({elem.tag.group:04X},{elem.tag.element:04X})",
                "keyword": elem.keyword or "",
                "vr": str(elem.VR),
                "value": value,
            }
        )
    return out


def _find_model(level: str) -> UID:
    return (
        PatientRootQueryRetrieveInformationModelFind
        if level == "PATIENT"
        else StudyRootQueryRetrieveInformationModelFind
    )


def _move_model(level: str) -> UID:
    return (
        PatientRootQueryRetrieveInformationModelMove
        if level == "PATIENT"
        else StudyRootQueryRetrieveInformationModelMove
    )


def _get_model(level: str) -> UID:
    return (
        PatientRootQueryRetrieveInformationModelGet
        if level == "PATIENT"
        else StudyRootQueryRetrieveInformationModelGet
    )


def _require_context(assoc: Association, model: UID, node: Node, what: str, hint: str = "") -> None:
    if not any(cx.abstract_syntax == model for cx in assoc.accepted_contexts):
        raise RemoteError(
            f"{node.name} accepted the association but not the {model.name}: it does not "
            f"support {what}.{(' ' + hint) if hint else ''}",
            code="not_accepted",
        )


def _hex(code: int) -> str:
    return f"0x{code:04X}"
