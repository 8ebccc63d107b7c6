"""Orthanc's *main DICOM tags*: the attributes each level keeps in the index, as Orthanc lists them.

Orthanc answers ``MainDicomTags`` (and ``PatientMainDicomTags``) from these lists
(``DicomMap::LoadMainDicomTags``, Orthanc 1.10–1.12): a tag present in the first instance
of a resource is kept with its value as text (an empty value as ``""``), an absent one is left
out. The header reader collects them at ingest (:func:`extract`) and the rows keep them as
JSON in ``main_tags``; rows indexed by an older Dolmen, without it, get them from their
columns (:func:`of_row`).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

PATIENT_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "OtherPatientIDs")
STUDY_TAGS = ("StudyDate", "StudyTime", "StudyID", "StudyDescription", "AccessionNumber", "StudyInstanceUID",
              "RequestedProcedureDescription", "InstitutionName", "RequestingPhysician",
              "ReferringPhysicianName")
SERIES_TAGS = ("SeriesDate", "SeriesTime", "Modality", "Manufacturer", "StationName", "SeriesDescription",
               "BodyPartExamined", "SequenceName", "ProtocolName", "SeriesNumber", "CardiacNumberOfImages",
               "ImagesInAcquisition", "NumberOfTemporalPositions", "NumberOfSlices", "NumberOfTimeSlices",
               "SeriesInstanceUID", "ImageOrientationPatient", "SeriesType", "OperatorsName",
               "PerformedProcedureStepDescription", "AcquisitionDeviceProcessingDescription",
               "ContrastBolusAgent")
INSTANCE_TAGS = ("InstanceCreationDate", "InstanceCreationTime", "AcquisitionNumber", "ImageIndex",
                 "InstanceNumber", "NumberOfFrames", "TemporalPositionIdentifier", "SOPInstanceUID",
                 "ImagePositionPatient", "ImageComments", "ImageOrientationPatient")

#: Orthanc's resource types, top down, with their main tags.
BY_LEVEL: dict[str, tuple[str, ...]] = {
    "Patient": PATIENT_TAGS, "Study": STUDY_TAGS, "Series": SERIES_TAGS, "Instance": INSTANCE_TAGS}

#: Longest main tag value Orthanc indexes (ORTHANC_MAXIMUM_TAG_LENGTH).
MAX_LENGTH = 256

ALL_TAGS: frozenset[str] = frozenset(t for tags in BY_LEVEL.values() for t in tags)


def as_text(value: Any) -> str:
    """A value as Orthanc writes it in JSON: text, multiple values joined by ``\\``."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(as_text(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("latin-1", "replace").strip(" \x00")
    return str(value).strip(" \x00")


def extract(get: Callable[[str], Any]) -> dict[str, str]:
    """``{level: JSON of its main tags}`` read with ``get(keyword)`` (``None`` when absent)."""
    out: dict[str, str] = {}
    for level, keywords in BY_LEVEL.items():
        tags: dict[str, str] = {}
        for keyword in keywords:
            try:
                value = get(keyword)
            except Exception:  # an undecodable value is left out, as it cannot be shown anyway
                continue
            if value is not None:
                text = as_text(value)
                if len(text) <= MAX_LENGTH:  # Orthanc leaves longer values out of its index
                    tags[keyword] = text
        out[level] = json.dumps(tags, ensure_ascii=False, separators=(",", ":"))
    return out


def _number(value: Any) -> str | None:
    return None if value is None else str(value)


def _from_columns(level: str, row: Any) -> dict[str, str]:
    """The main tags an index row without ``main_tags`` can give from its columns."""
    if level == "Patient":
        return {"PatientName": row.patient_name, "PatientID": row.patient_id,
                "PatientBirthDate": row.patient_birth_date, "PatientSex": row.patient_sex}
    if level == "Study":
        return {"StudyDate": row.study_date, "StudyTime": row.study_time, "StudyID": row.study_id,
                "StudyDescription": row.study_description, "AccessionNumber": row.accession_number,
                "StudyInstanceUID": row.study_instance_uid, "ReferringPhysicianName": row.referring_physician_name}
    if level == "Series":
        tags = {"SeriesDate": row.series_date, "SeriesTime": row.series_time, "Modality": row.modality,
                "SeriesDescription": row.series_description, "BodyPartExamined": row.body_part_examined,
                "SeriesInstanceUID": row.series_instance_uid}
        if row.series_number is not None:
            tags["SeriesNumber"] = str(row.series_number)
        return tags
    tags = {"SOPInstanceUID": row.sop_instance_uid}
    if row.instance_number is not None:
        tags["InstanceNumber"] = str(row.instance_number)
    if row.number_of_frames and row.number_of_frames > 1:
        tags["NumberOfFrames"] = str(row.number_of_frames)
    return tags


def of_row(level: str, row: Any) -> dict[str, str]:
    """The ``MainDicomTags`` of an index row of ``level`` (Patient, Study, Series, Instance)."""
    text = getattr(row, "main_tags", "")
    if text:
        try:
            tags = json.loads(text)
            if isinstance(tags, dict):
                return dict(sorted(tags.items()))
        except ValueError:
            pass
    return dict(sorted(_from_columns(level, row).items()))
