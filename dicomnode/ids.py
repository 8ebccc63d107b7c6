"""Orthanc-compatible resource identifiers.

Orthanc names a resource by the SHA-1 of its DICOM identifiers joined with ``|``, written
as five groups of eight hex digits (``DicomInstanceHasher``). Using the same scheme means
URLs and scripts written against Orthanc find the same resources in Dolmen.
"""
from __future__ import annotations

import hashlib


def _hash(*parts: str) -> str:
    digest = hashlib.sha1("|".join(parts).encode("utf-8")).hexdigest()
    return "-".join(digest[i:i + 8] for i in range(0, 40, 8))


def _clean(value: str | None) -> str:
    # Orthanc strips leading/trailing spaces (and the NUL padding some devices send).
    return (value or "").strip(" \x00")


def patient_id(patient: str | None) -> str:
    """Identifier of a patient, from (0010,0020) *Patient ID*."""
    return _hash(_clean(patient))


def study_id(patient: str | None, study_uid: str) -> str:
    """Identifier of a study, from *Patient ID* and (0020,000D) *Study Instance UID*."""
    return _hash(_clean(patient), _clean(study_uid))


def series_id(patient: str | None, study_uid: str, series_uid: str) -> str:
    """Identifier of a series; adds (0020,000E) *Series Instance UID*."""
    return _hash(_clean(patient), _clean(study_uid), _clean(series_uid))


def instance_id(patient: str | None, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """Identifier of an instance; adds (0008,0018) *SOP Instance UID*."""
    return _hash(_clean(patient), _clean(study_uid), _clean(series_uid), _clean(sop_uid))


def is_resource_id(value: str) -> bool:
    """True when ``value`` has the shape of an identifier (so it is safe in a URL or path)."""
    if len(value) != 44:
        return False
    groups = value.split("-")
    return len(groups) == 5 and all(
        len(g) == 8 and all(c in "0123456789abcdef" for c in g) for g in groups)
