"""Archive figures with Orthanc's field names (``GET /statistics`` in Orthanc)."""
from __future__ import annotations

from typing import Any

from peewee import fn

from dicomnode.archive.index import Instance
from dicomnode.archive.index import Patient
from dicomnode.archive.index import Series
from dicomnode.archive.index import Study


def statistics() -> dict[str, Any]:
    """CountPatients, CountStudies, CountSeries, CountInstances and TotalDiskSize (bytes)."""
    size = Patient.select(fn.COALESCE(fn.SUM(Patient.size), 0)).scalar()
    return {
        "CountPatients": Patient.select().count(),
        "CountStudies": Study.select().count(),
        "CountSeries": Series.select().count(),
        "CountInstances": Instance.select().count(),
        "TotalDiskSize": str(int(size or 0)),  # a string, as Orthanc answers it
        "TotalDiskSizeMB": int(size or 0) // (1024 * 1024),
    }
