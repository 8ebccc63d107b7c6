"""Identifiers are Orthanc's: the same file gets the same ids in Orthanc and in Dolmen."""
from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomnode import ids


def test_format() -> None:
    value = ids.patient_id("PAT001")
    assert ids.is_resource_id(value)
    assert not ids.is_resource_id("../../etc/passwd") and not ids.is_resource_id(value.upper())
    assert ids.patient_id(" PAT001 ") == value  # spaces around are not significant


@pytest.mark.orthanc
def test_same_ids_as_orthanc(orthanc_factory) -> None:
    orthanc = orthanc_factory()
    for name in ("CT_small.dcm", "MR_small.dcm", "SC_rgb_small_odd.dcm"):
        path = get_testdata_file(name)
        answer = orthanc.post("/instances", data=open(path, "rb").read()).json()
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        pid, st, se, sop = (str(ds.get("PatientID", "")), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert answer["ID"] == ids.instance_id(pid, st, se, sop)
        assert answer["ParentSeries"] == ids.series_id(pid, st, se)
        assert answer["ParentStudy"] == ids.study_id(pid, st)
        assert answer["ParentPatient"] == ids.patient_id(pid)
