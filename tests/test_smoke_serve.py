"""`dolmen serve` starts, answers on HTTP and DICOM, and reports its status."""
from __future__ import annotations


def test_serve_answers_echo_and_api(dolmen, dcmtk) -> None:
    dcmtk("echoscu", "-aec", dolmen.aet, "127.0.0.1", str(dolmen.dicom_port))
    body = dolmen.get("/api/system").json()
    assert body["DicomAet"] == "DOLMEN"
    assert body["DicomPort"] == dolmen.dicom_port
    assert body["DicomServer"]["Running"] is True
    stats = dolmen.get("/api/statistics").json()
    assert set(stats) >= {"CountPatients", "CountStudies", "CountSeries", "CountInstances", "TotalDiskSize"}
