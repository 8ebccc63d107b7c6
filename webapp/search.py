"""The search forms of the Query/Retrieve and DICOMweb pages: levels, filters, date presets.

Both pages ask a remote node the same way (C-FIND or QIDO-RS) and show the answers with the
same tables; what the form's fields mean as matching keys is defined here once.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

LEVELS = ("patient", "study", "series", "instance")
#: The C-FIND level of each page level.
DICOM_LEVEL = {"patient": "PATIENT", "study": "STUDY", "series": "SERIES", "instance": "IMAGE"}
#: Text filters of the form, by level (DICOM keywords; dates are handled apart).
FILTERS = {
    "patient": ("PatientName", "PatientID"),
    "study": (
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "StudyDescription",
        "ModalitiesInStudy",
        "StudyInstanceUID",
    ),
    "series": (
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "StudyInstanceUID",
        "ModalitiesInStudy",
        "SeriesDescription",
    ),
    "instance": ("StudyInstanceUID", "SeriesInstanceUID"),
}
LABELS = {
    "PatientName": "Patient name",
    "PatientID": "Patient ID",
    "AccessionNumber": "Accession number",
    "StudyDescription": "Study description",
    "ModalitiesInStudy": "Modality",
    "SeriesDescription": "Series description",
    "StudyInstanceUID": "Study Instance UID",
    "SeriesInstanceUID": "Series Instance UID",
}
PRESETS = (
    ("", "Any date"),
    ("today", "Today"),
    ("yesterday", "Yesterday"),
    ("week", "Last 7 days"),
    ("month", "Last 30 days"),
    ("year", "Last 365 days"),
    ("custom", "Between…"),
)


def _dicom_date(value: str) -> str:
    """``2024-03-01`` (an HTML date input) or ``20240301`` -> ``20240301``; anything else -> ''."""
    digits = value.replace("-", "").strip()
    return digits if len(digits) == 8 and digits.isdigit() else ""


def date_range(preset: str, start: str, end: str, today: dt.date | None = None) -> str:
    """The (0008,0020) *Study Date* range matching value for a preset or a custom range ('' = any)."""
    today = today or dt.date.today()
    days = {"today": 0, "yesterday": 1, "week": 6, "month": 29, "year": 364}
    if preset in days:
        first = today - dt.timedelta(days=days[preset])
        last = first if preset == "yesterday" else today
        return f"{first:%Y%m%d}-{last:%Y%m%d}" if first != last else f"{first:%Y%m%d}"
    start, end = _dicom_date(start), _dicom_date(end)
    if start and end and start == end:
        return start
    return f"{start}-{end}" if start or end else ""


def query_filters(level: str, args: Any) -> dict[str, str]:
    """The C-FIND matching keys for the form's fields at ``level``."""
    filters: dict[str, str] = {}
    for key in FILTERS[level]:
        value = str(args.get(key, "")).strip()
        if value:
            filters["Modality" if key == "ModalitiesInStudy" and level == "series" else key] = value
    if level in ("study", "series"):
        dates = date_range(args.get("preset", ""), args.get("date_from", ""), args.get("date_to", ""))
        if dates:
            filters["StudyDate"] = dates
    return filters
