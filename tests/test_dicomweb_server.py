"""DICOMweb server: QIDO-RS, WADO-RS, STOW-RS and WADO-URI.

Driven by the ``dicomweb-client`` package (a real third-party client) against a real
``dolmen serve``, and by the Flask test client where no HTTP server is needed (custom roots,
memory use of a streamed retrieve).
"""
from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.data
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian

from dicomnode import demodata
from tests.conftest import BROWSER
from tests.conftest import browser_client

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
RLE_2FRAMES = PYDICOM_FILES / "SC_rgb_rle_2frame.dcm"
JPEG_BASELINE = PYDICOM_FILES / "SC_rgb_jpeg_dcmtk.dcm"
FIRST_PATIENT = 900  # patients PAT00900 and PAT00901: apart from other tests' data on the shared server


@pytest.fixture(scope="module")
def datasets() -> list[pydicom.Dataset]:
    """2 patients x 1 study x 2 series x 3 instances, 32 x 32."""
    return [ds for _, ds in demodata.iter_instances(patients=2, studies=1, series=2, instances=3, size=32,
                                                    first_patient=FIRST_PATIENT)]


@pytest.fixture(scope="module")
def server(dolmen: Any, datasets: list[pydicom.Dataset]) -> Any:
    """The shared ``dolmen serve`` with our data stored through STOW-RS by dicomweb-client."""
    client = DICOMwebClient(dolmen.url + "/dicom-web")
    answer = client.store_instances(datasets + [pydicom.dcmread(RLE_2FRAMES), pydicom.dcmread(JPEG_BASELINE)])
    assert len(answer.ReferencedSOPSequence) == len(datasets) + 2
    assert "FailedSOPSequence" not in answer
    return dolmen


@pytest.fixture
def client(server: Any) -> DICOMwebClient:
    return DICOMwebClient(server.url + "/dicom-web")


def _value(doc: dict[str, Any], tag: str) -> Any:
    values = doc.get(tag, {}).get("Value") or [None]
    return values[0]


def _study_uid(ds_list: list[pydicom.Dataset], patient: int = 0) -> str:
    return str([d for d in ds_list if d.PatientID == f"PAT{FIRST_PATIENT + patient:05d}"][0].StudyInstanceUID)


# -- STOW-RS then QIDO-RS ------------------------------------------------------------------------


def test_stow_then_find_in_studies(client: DICOMwebClient, datasets: list[pydicom.Dataset]) -> None:
    found = client.search_for_studies(search_filters={"PatientID": f"PAT{FIRST_PATIENT:05d}"})
    assert len(found) == 1
    study = found[0]
    assert _value(study, "0020000D") == _study_uid(datasets)
    assert _value(study, "00201208") == 6 and _value(study, "00201206") == 2
    assert _value(study, "00081190").endswith("/dicom-web/studies/" + _study_uid(datasets))
    # ... and in the study list of the browse pages.
    from bs4 import BeautifulSoup

    page = BeautifulSoup(client._session.get(client.base_url.rsplit("/dicom-web", 1)[0] + "/studies",
                                             params={"pid": f"PAT{FIRST_PATIENT:05d}"}, headers=BROWSER).text, "html.parser")
    rows = page.select("tr[data-href]")
    assert len(rows) == 1 and f"PAT{FIRST_PATIENT:05d}" in rows[0].get_text()


def test_study_level_returns_the_required_attributes(client: DICOMwebClient) -> None:
    study = client.search_for_studies(search_filters={"PatientID": f"PAT{FIRST_PATIENT:05d}"})[0]
    # PS3.18 Table 10.6.3-3
    for tag in ("00080020", "00080030", "00080050", "00080056", "00080061", "00080090", "00081190",
                "00100010", "00100020", "00100030", "00100040", "0020000D", "00200010", "00201206",
                "00201208"):
        assert tag in study, tag
    assert study["00100010"]["Value"][0]["Alphabetic"].count("^") == 1


def test_series_and_instance_levels_return_the_required_attributes(client: DICOMwebClient,
                                                                   datasets: list[pydicom.Dataset]) -> None:
    series = client.search_for_series(_study_uid(datasets))
    assert len(series) == 2
    for tag in ("00080060", "0008103E", "00081190", "0020000E", "00200011", "00201209", "00080056"):
        assert tag in series[0], tag
    assert sorted(_value(s, "00201209") for s in series) == [3, 3]
    series_uid = _value(series[0], "0020000E")
    instances = client.search_for_instances(_study_uid(datasets), series_uid)
    assert len(instances) == 3
    for tag in ("00080016", "00080018", "00080056", "00081190", "00200013", "00280010", "00280011",
                "00280100", "00280008"):
        assert tag in instances[0], tag
    assert _value(instances[0], "00280010") == 32 and _value(instances[0], "00280100") == 16
    # Unscoped searches carry the attributes of the levels above.
    everywhere = client.search_for_series(search_filters={"PatientID": f"PAT{FIRST_PATIENT:05d}"})
    assert {_value(s, "0020000D") for s in everywhere} == {_study_uid(datasets)}
    assert "00100010" in everywhere[0]


def test_search_with_filters_by_keyword_and_tag(client: DICOMwebClient,
                                                datasets: list[pydicom.Dataset]) -> None:
    family = str(datasets[0].PatientName).split("^")[0]
    by_keyword = client.search_for_studies(search_filters={"PatientName": f"{family}*",
                                                           "PatientID": "PAT009*"})
    by_tag = client.search_for_studies(search_filters={"00100010": f"{family.lower()}*",
                                                       "00100020": "PAT009*"})
    assert [_value(s, "0020000D") for s in by_keyword] == [_value(s, "0020000D") for s in by_tag]
    assert {_value(s, "00100020") for s in by_keyword} == {f"PAT{FIRST_PATIENT:05d}"}
    series = client.search_for_series(search_filters={"PatientID": "PAT009*", "Modality": "MR"})
    modality = demodata.modality_of(FIRST_PATIENT, 0)
    assert all(_value(s, "00080060") == "MR" for s in series)
    assert len(series) == 2 * [demodata.modality_of(FIRST_PATIENT + p, 0) for p in range(2)].count("MR")
    sop = str(datasets[4].SOPInstanceUID)
    found = client.search_for_instances(search_filters={"SOPInstanceUID": sop})
    assert [_value(i, "00080018") for i in found] == [sop]
    assert modality in ("CT", "MR")
    dated = client.search_for_studies(search_filters={"PatientID": "PAT009*",
                                                      "StudyDate": f"{datasets[0].StudyDate}-"})
    assert _study_uid(datasets) in {_value(s, "0020000D") for s in dated}


def test_includefield_list_and_all(client: DICOMwebClient) -> None:
    plain = client.search_for_studies(search_filters={"PatientID": f"PAT{FIRST_PATIENT:05d}"})[0]
    assert "00081030" not in plain
    listed = client.search_for_studies(search_filters={"PatientID": f"PAT{FIRST_PATIENT:05d}"},
                                       fields=["StudyDescription", "00080062"])[0]
    assert _value(listed, "00081030").startswith(("CT", "MR"))
    assert "00080062" in listed
    everything = client.search_for_studies(search_filters={"PatientID": f"PAT{FIRST_PATIENT:05d}"},
                                           fields=["all"])[0]
    assert {"00081030", "00080062"} <= set(everything)
    # An attribute the index does not hold is read from an instance of the study.
    from_file = client.search_for_studies(search_filters={"PatientID": f"PAT{FIRST_PATIENT:05d}"},
                                          fields=["FrameOfReferenceUID"])[0]
    assert _value(from_file, "00200052")


def test_limit_and_offset_page_through_results(client: DICOMwebClient) -> None:
    every = client.search_for_instances(search_filters={"PatientID": "PAT009*"})
    assert len(every) == 12
    pages = [client.search_for_instances(search_filters={"PatientID": "PAT009*"}, limit=5, offset=o)
             for o in (0, 5, 10)]
    assert [len(p) for p in pages] == [5, 5, 2]
    assert [_value(i, "00080018") for p in pages for i in p] == [_value(i, "00080018") for i in every]


def test_limit_offset_and_includefield_at_the_study_and_series_levels(
        client: DICOMwebClient, datasets: list[pydicom.Dataset]) -> None:
    mine = {"PatientID": "PAT009*"}
    studies = client.search_for_studies(search_filters=mine)
    assert len(studies) == 2
    pages = [client.search_for_studies(search_filters=mine, limit=1, offset=o) for o in (0, 1, 2)]
    assert [len(p) for p in pages] == [1, 1, 0]
    assert [_value(p[0], "0020000D") for p in pages[:2]] == [_value(s, "0020000D") for s in studies]
    series = client.search_for_series(search_filters=mine)
    assert len(series) == 4
    paged = [client.search_for_series(search_filters=mine, limit=3, offset=o) for o in (0, 3)]
    assert [_value(s, "0020000E") for p in paged for s in p] == [_value(s, "0020000E") for s in series]
    # includefield at the series level (an index attribute and one read from a file) and the instance level.
    one = client.search_for_series(_study_uid(datasets), search_filters={"SeriesNumber": "1"},
                                   fields=["BodyPartExamined", "FrameOfReferenceUID"])
    assert len(one) == 1 and "00180015" in one[0] and _value(one[0], "00200052")
    plain = client.search_for_instances(_study_uid(datasets), search_filters={"InstanceNumber": "1"})
    assert plain and "00200052" not in plain[0]
    rich = client.search_for_instances(_study_uid(datasets), search_filters={"InstanceNumber": "1"},
                                       fields=["FrameOfReferenceUID", "00180050"])
    assert {"00200052", "00180050"} <= set(rich[0])


def test_non_ascii_answers_say_utf8(server: Any, client: DICOMwebClient) -> None:
    ds = demodata.make_instance(FIRST_PATIENT + 1007, 0, 0, 0, size=8)  # not PAT009*: apart from the others
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Müller^Jörg"
    body, headers = _multipart([_bytes(ds)])
    assert server.post("/dicom-web/studies", data=body, headers=headers).status_code == 200
    found = client.search_for_studies(search_filters={"PatientID": ds.PatientID})
    assert _value(found[0], "00100010") == {"Alphabetic": "Müller^Jörg"}
    assert _value(found[0], "00080005") == "ISO_IR 192"
    assert list(found[0]) == sorted(found[0])  # attributes in tag order (PS3.18 F.2.1)
    ascii_only = client.search_for_studies(search_filters={"PatientID": f"PAT{FIRST_PATIENT:05d}"})[0]
    assert "00080005" not in ascii_only and list(ascii_only) == sorted(ascii_only)


def test_fuzzymatching_is_accepted_with_a_warning(server: Any) -> None:
    r = server.get("/dicom-web/studies", params={"PatientName": "muller", "fuzzymatching": "true"})
    assert r.status_code == 200
    assert "fuzzymatching" in r.headers["Warning"]
    r = server.get("/dicom-web/studies", params={"PatientID": "PAT00900", "StudyComments": "x"})
    assert r.status_code == 200 and "StudyComments" in r.headers["Warning"]


@pytest.mark.parametrize(("params", "words"), [
    ({"limit": "ten"}, "limit"),
    ({"offset": "-1"}, "offset"),
    ({"NotAKeyword": "x"}, "NotAKeyword"),
    ({"StudyDate": "yesterday"}, "StudyDate"),
    ({"includefield": "Nonsense"}, "Nonsense"),
    ({"fuzzymatching": "maybe"}, "fuzzymatching"),
    ({"Modality": "CT"}, "Modality"),  # a series attribute cannot filter studies
])
def test_a_bad_parameter_is_a_400_with_a_message(server: Any, params: dict[str, str], words: str) -> None:
    r = server.get("/dicom-web/studies", params=params)
    assert r.status_code == 400
    assert words in r.json()["error"]["message"]


def test_no_match_is_an_empty_array(server: Any) -> None:
    r = server.get("/dicom-web/studies", params={"PatientID": "NOBODY-HERE"})
    assert r.status_code == 200 and r.json() == []
    r = server.get("/dicom-web/studies/1.2.3.4/series")
    assert r.status_code == 200 and r.json() == []


# -- WADO-RS -----------------------------------------------------------------------------------


def test_retrieve_study_series_and_instance(client: DICOMwebClient, datasets: list[pydicom.Dataset]) -> None:
    study_uid = _study_uid(datasets)
    mine = {str(d.SOPInstanceUID): d for d in datasets if d.StudyInstanceUID == study_uid}
    study = client.retrieve_study(study_uid)
    assert {str(d.SOPInstanceUID) for d in study} == set(mine)
    first = mine[str(study[0].SOPInstanceUID)]
    assert np.array_equal(study[0].pixel_array, np.frombuffer(first.PixelData, "<u2").reshape(32, 32))
    series = client.retrieve_series(study_uid, str(first.SeriesInstanceUID))
    assert len(series) == 3 and {str(d.SeriesInstanceUID) for d in series} == {str(first.SeriesInstanceUID)}
    one = client.retrieve_instance(study_uid, str(first.SeriesInstanceUID), str(first.SOPInstanceUID))
    assert one.SOPInstanceUID == first.SOPInstanceUID and one.PatientName == first.PatientName


def test_retrieve_streams_multipart_with_a_transfer_syntax_per_part(server: Any,
                                                                   datasets: list[pydicom.Dataset]) -> None:
    r = server.get(f"/dicom-web/studies/{_study_uid(datasets)}", stream=True,
                   headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    body = r.content
    # Sent from the files with its length known (streaming is test_retrieve_streams_in_constant_memory).
    assert int(r.headers["Content-Length"]) == len(body)
    assert body.count(b"Content-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1") == 6


def test_transcoding_when_asked_and_as_stored_with_star(client: DICOMwebClient) -> None:
    jpeg = pydicom.dcmread(JPEG_BASELINE)
    ids = (str(jpeg.StudyInstanceUID), str(jpeg.SeriesInstanceUID), str(jpeg.SOPInstanceUID))
    as_stored = client.retrieve_instance(*ids, media_types=(("application/dicom", "*"),))
    assert as_stored.file_meta.TransferSyntaxUID == jpeg.file_meta.TransferSyntaxUID
    assert as_stored.PixelData == jpeg.PixelData
    uncompressed = client.retrieve_instance(*ids,
                                            media_types=(("application/dicom", ExplicitVRLittleEndian),))
    assert uncompressed.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert uncompressed.SOPInstanceUID == jpeg.SOPInstanceUID
    assert uncompressed.pixel_array.shape == (100, 100, 3)
    assert np.abs(uncompressed.pixel_array.astype(int) - jpeg.pixel_array.astype(int)).max() <= 2


def test_a_compressed_syntax_that_is_not_stored_is_406(server: Any) -> None:
    jpeg = pydicom.dcmread(JPEG_BASELINE)
    r = server.get(f"/dicom-web/studies/{jpeg.StudyInstanceUID}/series/{jpeg.SeriesInstanceUID}/instances/"
                   f"{jpeg.SOPInstanceUID}",
                   headers={"Accept": 'multipart/related; type="application/dicom"; '
                                      'transfer-syntax=1.2.840.10008.1.2.4.80'})
    assert r.status_code == 406 and "1.2.840.10008.1.2.4.80" in r.json()["error"]["message"]


def test_metadata_at_each_level_with_bulk_data_uris(client: DICOMwebClient,
                                                   datasets: list[pydicom.Dataset]) -> None:
    study_uid = _study_uid(datasets)
    first = [d for d in datasets if d.StudyInstanceUID == study_uid][0]
    study = client.retrieve_study_metadata(study_uid)
    assert len(study) == 6
    series = client.retrieve_series_metadata(study_uid, str(first.SeriesInstanceUID))
    assert len(series) == 3
    meta = client.retrieve_instance_metadata(study_uid, str(first.SeriesInstanceUID),
                                             str(first.SOPInstanceUID))
    assert meta["00100010"]["Value"][0]["Alphabetic"] == str(first.PatientName)
    assert meta["00280010"]["Value"] == [32]
    uri = meta["7FE00010"]["BulkDataURI"]
    assert uri.endswith(f"/instances/{first.SOPInstanceUID}/bulkdata/7fe00010")
    # dicomweb-client sends a Host header without the port, so the URI lacks it: re-base it.
    pixels = client.retrieve_bulkdata(client.base_url + uri.split("/dicom-web", 1)[1])
    assert b"".join(pixels) == first.PixelData
    back = pydicom.Dataset.from_json(meta)
    assert back.StudyInstanceUID == first.StudyInstanceUID


def test_frames_uncompressed_and_as_the_stored_bitstream(client: DICOMwebClient,
                                                         datasets: list[pydicom.Dataset]) -> None:
    first = datasets[0]
    ids = (str(first.StudyInstanceUID), str(first.SeriesInstanceUID), str(first.SOPInstanceUID))
    frames = client.retrieve_instance_frames(*ids, frame_numbers=[1])
    assert frames == [first.PixelData]
    rle = pydicom.dcmread(RLE_2FRAMES)
    ids = (str(rle.StudyInstanceUID), str(rle.SeriesInstanceUID), str(rle.SOPInstanceUID))
    stored = list(generate_frames(rle.PixelData, number_of_frames=2))
    bitstream = client.retrieve_instance_frames(*ids, frame_numbers=[2, 1],
                                                media_types=(("image/dicom-rle", "1.2.840.10008.1.2.5"),))
    assert bitstream == [stored[1], stored[0]]
    decoded = client.retrieve_instance_frames(*ids, frame_numbers=[2])
    assert decoded[0] == np.ascontiguousarray(rle.pixel_array[1]).tobytes()


def test_frame_errors(server: Any, datasets: list[pydicom.Dataset]) -> None:
    first = datasets[0]
    base = f"/dicom-web/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}/instances/" \
           f"{first.SOPInstanceUID}/frames"
    assert server.get(base + "/2").status_code == 404
    assert server.get(base + "/0").status_code == 400
    assert server.get(base + "/one").status_code == 400


def test_rendered_and_thumbnails(client: DICOMwebClient, server: Any,
                                 datasets: list[pydicom.Dataset]) -> None:
    first = datasets[0]
    ids = (str(first.StudyInstanceUID), str(first.SeriesInstanceUID), str(first.SOPInstanceUID))
    jpeg = client.retrieve_instance_rendered(*ids)
    assert jpeg[:3] == b"\xff\xd8\xff"
    png = client.retrieve_instance_rendered(*ids, media_types=("image/png",), params={"window": "40,400"})
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    series = client.retrieve_series_rendered(ids[0], ids[1])
    assert series[:3] == b"\xff\xd8\xff"
    rle = pydicom.dcmread(RLE_2FRAMES)
    frame = client.retrieve_instance_frames_rendered(str(rle.StudyInstanceUID), str(rle.SeriesInstanceUID),
                                                     str(rle.SOPInstanceUID), frame_numbers=[2],
                                                     media_types=("image/png",))
    assert frame[:4] == b"\x89PNG"
    from PIL import Image

    base = f"/dicom-web/studies/{ids[0]}"
    for path in ("/thumbnail", f"/series/{ids[1]}/thumbnail",
                 f"/series/{ids[1]}/instances/{ids[2]}/thumbnail"):
        r = server.get(base + path, params={"viewport": "16,16"}, headers={"Accept": "image/png"})
        assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"
        assert max(Image.open(io.BytesIO(r.content)).size) == 16
    r = server.get(base + f"/series/{ids[1]}/instances/{ids[2]}/rendered", headers={"Accept": "image/gif"})
    assert r.status_code == 406


# -- STOW-RS status and failure reasons ----------------------------------------------------------


def _multipart(parts: list[bytes], boundary: str = "XyZ") -> tuple[bytes, dict[str, str]]:
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}


def _bytes(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_stow_to_another_study_fails_with_409(server: Any, datasets: list[pydicom.Dataset]) -> None:
    body, headers = _multipart([_bytes(datasets[0])])
    r = server.post("/dicom-web/studies/1.2.3.4.5", data=body, headers=headers)
    assert r.status_code == 409
    failed = r.json()["00081198"]["Value"]
    assert failed[0]["00081197"]["Value"] == [0xC409]
    assert failed[0]["00081155"]["Value"] == [str(datasets[0].SOPInstanceUID)]


def test_stow_partly_failing_is_202(server: Any) -> None:
    ds = demodata.make_instance(FIRST_PATIENT + 5, 0, 0, 0, size=8)
    body, headers = _multipart([_bytes(ds), b"this is not DICOM"])
    r = server.post("/dicom-web/studies", data=body, headers=headers)
    assert r.status_code == 202
    doc = r.json()
    assert doc["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert doc["00081199"]["Value"][0]["00081155"]["Value"] == [str(ds.SOPInstanceUID)]
    assert doc["00081190"]["Value"][0].endswith(f"/studies/{ds.StudyInstanceUID}")


def test_stow_bad_requests(server: Any) -> None:
    r = server.post("/dicom-web/studies", data=b"x", headers={"Content-Type": "application/dicom"})
    assert r.status_code == 415
    body, headers = _multipart([])
    assert server.post("/dicom-web/studies", data=body, headers=headers).status_code == 400
    r = server.post("/dicom-web/studies", data=b"no delimiter",
                    headers={"Content-Type": "multipart/related; type=\"application/dicom\"; boundary=B"})
    assert r.status_code == 400 and "delimiter" in r.json()["error"]["message"]


# -- WADO-URI ----------------------------------------------------------------------------------


def test_wado_uri(server: Any) -> None:
    rle = pydicom.dcmread(RLE_2FRAMES)
    params = {"requestType": "WADO", "studyUID": str(rle.StudyInstanceUID),
              "seriesUID": str(rle.SeriesInstanceUID), "objectUID": str(rle.SOPInstanceUID)}
    r = server.get("/wado", params=params)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    r = server.get("/wado", params={**params, "contentType": "image/png", "frameNumber": "2", "rows": "50"})
    assert r.headers["Content-Type"] == "image/png"
    from PIL import Image

    assert Image.open(io.BytesIO(r.content)).size == (50, 50)
    r = server.get("/wado", params={**params, "contentType": "application/dicom", "transferSyntax": "*"})
    assert r.headers["Content-Type"] == "application/dicom"
    assert pydicom.dcmread(io.BytesIO(r.content)).PixelData == rle.PixelData
    assert server.get("/wado", params={**params, "frameNumber": "3"}).status_code == 404
    missing = dict(params)
    del missing["seriesUID"]
    r = server.get("/wado", params=missing)
    assert r.status_code == 400 and "seriesUID" in r.json()["error"]["message"]
    assert server.get("/wado", params={**params, "contentType": "image/gif"}).status_code == 406


# -- configuration and memory, through the Flask test client -------------------------------------


def _app(short_tmp: Path, **sections: Any) -> Any:
    from dicomnode import config
    from webapp import create_app

    doc: dict[str, Any] = {"storage": {"path": str(short_tmp / "app"), "min_free_mb": 0, "fsync": False}}
    doc.update(sections)
    app = create_app(config.from_dict(doc))
    app.config["TESTING"] = True
    return app


def test_roots_are_configurable(short_tmp: Path, datasets: list[pydicom.Dataset]) -> None:
    from dicomnode.archive import index

    app = _app(short_tmp, dicomweb={"root": "/dw/", "wado_root": "/legacy/wado"})
    try:
        web = browser_client(app)
        body, headers = _multipart([_bytes(d) for d in datasets[:2]])
        r = web.post("/dw/studies", data=body, headers=headers)
        assert r.status_code == 200
        study_url = json.loads(r.data)["00081190"]["Value"][0]
        assert study_url == f"http://localhost/dw/studies/{datasets[0].StudyInstanceUID}"
        found = web.get("/dw/studies", query_string={"PatientID": datasets[0].PatientID}).json
        assert len(found) == 1
        assert web.get("/dicom-web/studies").status_code == 404
        params = {"requestType": "WADO", "studyUID": datasets[0].StudyInstanceUID,
                  "seriesUID": datasets[0].SeriesInstanceUID, "objectUID": datasets[0].SOPInstanceUID}
        assert web.get("/legacy/wado", query_string=params).status_code == 200
        r = web.get("/dw/studies", query_string={"limit": "x"})
        assert r.status_code == 400 and r.json["error"]["code"] == "bad_query"
    finally:
        index.close_index()


def test_retrieve_streams_in_constant_memory(short_tmp: Path) -> None:
    """A 24 MB retrieve holds a few MB at most: files are read in chunks as the body is sent."""
    from dicomnode.archive import index

    app = _app(short_tmp)
    try:
        web = browser_client(app)
        sets = [demodata.make_instance(FIRST_PATIENT + 7, 0, 0, i, size=1024) for i in range(12)]  # 2 MB each
        for ds in sets:
            body, headers = _multipart([_bytes(ds)])
            assert web.post("/dicom-web/studies", data=body, headers=headers).status_code == 200
        tracemalloc.start()
        try:
            accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
            response = web.get(f"/dicom-web/studies/{sets[0].StudyInstanceUID}", buffered=False,
                               headers={"Accept": accept})
            assert response.is_streamed
            total = 0
            for chunk in response.response:
                total += len(chunk)
            response.close()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert total > 12 * 2 * 1024 * 1024
        assert peak < 6 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
    finally:
        index.close_index()


def test_basic_auth_protects_dicomweb(short_tmp: Path) -> None:
    import base64

    from werkzeug.security import generate_password_hash

    from dicomnode.archive import index

    app = _app(short_tmp, http={"users": {"alice": generate_password_hash("secret")}})
    try:
        web = browser_client(app)
        assert web.get("/dicom-web/studies").status_code == 401
        token = base64.b64encode(b"alice:secret").decode()
        r = web.get("/dicom-web/studies", headers={"Authorization": f"Basic {token}"})
        assert r.status_code == 200 and r.json == []
    finally:
        index.close_index()

