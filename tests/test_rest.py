"""Orthanc's REST API on the Flask app (real SQLite index and store; no sidecar needed here).

The live-server cases, Orthanc's own answers and the PyPI clients are in test_rest_clients.py.
"""
from __future__ import annotations

import gzip
import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
import pytest

from tests.conftest import make_config_doc

CT = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
MR = Path(pydicom.data.get_testdata_file("MR_small.dcm"))
# Orthanc's identifiers of CT_small.dcm (checked against Debian's Orthanc in test_rest_clients.py).
CT_INSTANCE = "f689ddd2-662f8fe1-8b18180d-ec2a2cee-937917af"
CT_SERIES = "93034833-163e42c3-bc9a428b-194620cf-2c5799e5"
CT_STUDY = "8a8cf898-ca27c490-d0c7058c-929d0581-2bbf104d"
CT_PATIENT = "fa558bce-587a86d3-ad0da9b3-9d043d9d-4f5c5718"


def upload(api: Any, path: Path) -> dict[str, Any]:
    response = api.post("/instances", data=path.read_bytes())
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json


def assert_orthanc_error(response: Any, status: int, orthanc_status: int) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.json
    assert body["HttpStatus"] == status and body["OrthancStatus"] == orthanc_status, body
    assert set(body) >= {"HttpError", "HttpStatus", "Message", "Method", "OrthancError", "OrthancStatus", "Uri"}


@pytest.fixture
def loaded(api: Any, demo_files: list[Path]) -> Any:
    upload(api, CT)
    upload(api, MR)
    for path in demo_files:
        upload(api, path)
    return api


def demo_study(api: Any) -> str:
    """A generated study: two series of five instances."""
    return next(s["ID"] for s in api.get("/studies?expand").json if len(s["Series"]) == 2)


# -- upload ------------------------------------------------------------------------------------


def test_upload_answers_orthanc_fields_and_already_stored(api: Any) -> None:
    first = upload(api, CT)
    assert first == {"ID": CT_INSTANCE, "ParentPatient": CT_PATIENT, "ParentSeries": CT_SERIES,
                     "ParentStudy": CT_STUDY, "Path": f"/instances/{CT_INSTANCE}", "Status": "Success"}
    assert upload(api, CT)["Status"] == "AlreadyStored"
    assert api.get("/statistics").json["CountInstances"] == 1


def test_upload_as_curl_sends_it_has_no_form_cap(api: Any, short_tmp: Path) -> None:
    """curl --data-binary sends x-www-form-urlencoded; a 3 MiB file must not meet the 1 MiB form cap."""
    from dicomnode import demodata

    big = demodata.write(short_tmp / "big", patients=1, studies=1, series=1, instances=1, size=1280)[0]
    assert big.stat().st_size > 3 * 1024 * 1024
    response = api.post("/instances", data=big.read_bytes(), content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json["Status"] == "Success"


def test_upload_gzip_and_zip(api: Any, demo_files: list[Path]) -> None:
    response = api.post("/instances", data=gzip.compress(CT.read_bytes()), headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200 and response.json["ID"] == CT_INSTANCE
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in demo_files[:3]:
            archive.write(path, path.name)
        archive.writestr("readme.txt", "not DICOM")
    response = api.post("/instances", data=buffer.getvalue(), content_type="application/zip")
    assert response.status_code == 200
    answers = response.json
    assert [a["Status"] for a in answers].count("Success") == 3
    failure = next(a for a in answers if a["Status"] == "Failure")
    assert failure["Name"] == "readme.txt" and "DICM" in failure["Details"] and failure["ID"] is None


def test_bad_uploads_are_refused_and_store_nothing(api: Any) -> None:
    assert_orthanc_error(api.post("/instances", data=b"notdicom"), 400, 15)
    assert_orthanc_error(api.post("/instances", data=b""), 400, 8)
    assert_orthanc_error(api.post("/instances", data=CT.read_bytes()[:-1000]), 400, 15)
    response = api.post("/instances", data=gzip.compress(b"x" * 100), headers={"Content-Encoding": "br"})
    assert response.status_code == 415
    assert api.get("/statistics").json["CountInstances"] == 0


def test_zip_bomb_is_refused(short_tmp: Path) -> None:
    from dicomnode import config
    from dicomnode.archive import index
    from webapp import create_app

    app = create_app(config.from_dict(make_config_doc(short_tmp / "z", http={"max_zip_mb": 1})))
    api = app.test_client()
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("huge.dcm", b"\0" * (16 * 1024 * 1024))
    response = api.post("/instances", data=bomb.getvalue())
    assert_orthanc_error(response, 400, 15)
    assert "zip bomb" in response.json["Details"]
    assert api.get("/statistics").json["CountInstances"] == 0
    index.close_index()


# -- resources -----------------------------------------------------------------------------------


def test_resource_fields_are_orthancs(loaded: Any) -> None:
    study = loaded.get(f"/studies/{CT_STUDY}").json
    assert study["Type"] == "Study" and study["ParentPatient"] == CT_PATIENT and study["Series"] == [CT_SERIES]
    assert study["MainDicomTags"]["InstitutionName"] == "JFK IMAGING CENTER"
    assert study["PatientMainDicomTags"]["PatientName"] == "CompressedSamples^CT1"
    assert set(study) == {"ID", "IsStable", "Labels", "LastUpdate", "MainDicomTags", "ParentPatient",
                          "PatientMainDicomTags", "Series", "Type"}
    series = loaded.get(f"/series/{CT_SERIES}").json
    assert series["Status"] == "Unknown" and series["ExpectedNumberOfInstances"] is None
    assert series["MainDicomTags"]["Manufacturer"] == "GE MEDICAL SYSTEMS"
    instance = loaded.get(f"/instances/{CT_INSTANCE}").json
    assert instance["FileSize"] == CT.stat().st_size and instance["IndexInSeries"] == 1
    assert instance["MainDicomTags"]["ImagePositionPatient"] == "-158.135803\\-179.035797\\-75.699997"
    patient = loaded.get(f"/patients/{CT_PATIENT}").json
    assert patient["Studies"] == [CT_STUDY] and "ParentPatient" not in patient


def test_lists_expand_since_limit_in_a_stable_order(loaded: Any) -> None:
    ids = loaded.get("/instances").json
    assert len(ids) == 22
    assert loaded.get("/instances?since=5&limit=7").json == ids[5:12]
    assert loaded.get("/instances?since=20").json == ids[20:]
    expanded = loaded.get("/studies?expand").json
    assert [s["ID"] for s in expanded] == loaded.get("/studies").json
    assert all(s["Type"] == "Study" for s in expanded)
    assert_orthanc_error(loaded.get("/studies?limit=-1"), 400, 3)
    assert_orthanc_error(loaded.get("/studies?limit=abc"), 400, 8)


def test_children_and_parents(loaded: Any) -> None:
    assert [s["ID"] for s in loaded.get(f"/studies/{CT_STUDY}/series").json] == [CT_SERIES]
    assert [i["ID"] for i in loaded.get(f"/patients/{CT_PATIENT}/instances").json] == [CT_INSTANCE]
    assert loaded.get(f"/instances/{CT_INSTANCE}/study").json["ID"] == CT_STUDY
    assert loaded.get(f"/instances/{CT_INSTANCE}/series").json["ID"] == CT_SERIES
    assert loaded.get(f"/series/{CT_SERIES}/patient").json["ID"] == CT_PATIENT
    assert loaded.get(f"/studies/{CT_STUDY}/patient").json["Type"] == "Patient"
    assert loaded.get(f"/series/{CT_SERIES}/studies").status_code == 404


def test_requested_tags(loaded: Any) -> None:
    study = loaded.get(f"/studies/{CT_STUDY}?requestedTags=PatientName;ModalitiesInStudy;StudyDescription;"
                       "NumberOfStudyRelatedInstances;KVP").json
    assert study["RequestedTags"] == {"PatientName": "CompressedSamples^CT1", "ModalitiesInStudy": "CT",
                                      "StudyDescription": "e+1", "NumberOfStudyRelatedInstances": "1",
                                      "KVP": "120"}


def test_unknown_and_malformed_ids_and_wrong_methods(loaded: Any) -> None:
    assert_orthanc_error(loaded.get("/studies/00000000-00000000-00000000-00000000-00000000"), 404, 17)
    assert_orthanc_error(loaded.get("/instances/../../etc/passwd"), 404, 17)
    assert_orthanc_error(loaded.get("/instances/nope/tags"), 404, 17)
    assert_orthanc_error(loaded.get("/nothing-here"), 404, 17)
    response = loaded.put("/patients")
    assert response.status_code == 405 and "GET" in response.headers["Allow"]


def test_delete_cascades_upward_and_names_the_remaining_ancestor(loaded: Any) -> None:
    study_id = demo_study(loaded)
    series = loaded.get(f"/studies/{study_id}").json["Series"]
    assert len(series) >= 2
    first_instances = loaded.get(f"/series/{series[0]}").json["Instances"]
    answer = loaded.delete(f"/series/{series[0]}").json
    assert answer == {"RemainingAncestor": {"ID": study_id, "Path": f"/studies/{study_id}", "Type": "Study"}}
    assert loaded.get(f"/instances/{first_instances[0]}").status_code == 404
    assert loaded.delete(f"/instances/{CT_INSTANCE}").json == {"RemainingAncestor": None}
    assert loaded.get(f"/patients/{CT_PATIENT}").status_code == 404
    assert_orthanc_error(loaded.delete(f"/instances/{CT_INSTANCE}"), 404, 17)


# -- content ---------------------------------------------------------------------------------------


def test_tags_in_every_form(loaded: Any) -> None:
    full = loaded.get(f"/instances/{CT_INSTANCE}/tags").json
    assert full["0010,0010"] == {"Name": "PatientName", "Type": "String", "Value": "CompressedSamples^CT1"}
    assert full["7fe0,0010"] == {"Name": "PixelData", "Type": "Null", "Value": None}
    assert full["0010,1002"]["Type"] == "Sequence"
    assert full["0009,1001"]["PrivateCreator"] == "GEMS_IDEN_01"
    assert "0002,0010" not in full  # the file meta is /header's
    simple = loaded.get(f"/instances/{CT_INSTANCE}/tags?simplify").json
    assert simple["PatientName"] == "CompressedSamples^CT1"
    assert simple["OtherPatientIDsSequence"][0]["PatientID"] == "ABCD1234"
    assert loaded.get(f"/instances/{CT_INSTANCE}/simplified-tags").json == simple
    assert loaded.get(f"/instances/{CT_INSTANCE}/tags?short").json["0010,0020"] == "1CT1"
    header = loaded.get(f"/instances/{CT_INSTANCE}/header").json
    assert header["0002,0010"]["Value"] == "1.2.840.10008.1.2.1"


def test_content_file_preview_and_statistics(loaded: Any) -> None:
    assert loaded.get(f"/instances/{CT_INSTANCE}/content/0010-0010").data == b"CompressedSamples^CT1"
    assert loaded.get(f"/instances/{CT_INSTANCE}/content/0010-1002").json == ["0", "1"]
    assert loaded.get(f"/instances/{CT_INSTANCE}/content/0010-1002/1/0010-0020").data.rstrip(b"\0 ") == b"1234ABCD"
    assert "0010-0010" in loaded.get(f"/instances/{CT_INSTANCE}/content").json
    assert loaded.get(f"/instances/{CT_INSTANCE}/file").data == CT.read_bytes()
    preview = loaded.get(f"/instances/{CT_INSTANCE}/preview")
    assert preview.status_code == 200 and preview.data[:8] == b"\x89PNG\r\n\x1a\n"
    jpeg = loaded.get(f"/instances/{CT_INSTANCE}/frames/0/preview", headers={"Accept": "image/jpeg"})
    assert jpeg.mimetype == "image/jpeg" and jpeg.data[:2] == b"\xff\xd8"
    assert loaded.get(f"/instances/{CT_INSTANCE}/frames/1/preview").status_code == 404
    stats = loaded.get(f"/studies/{CT_STUDY}/statistics").json
    assert stats["CountInstances"] == 1 and stats["DiskSize"] == str(CT.stat().st_size)
    total = loaded.get("/statistics").json
    assert total["CountInstances"] == 22 and total["TotalUncompressedSize"] == total["TotalDiskSize"]
    assert loaded.get("/tools/count-resources").json["CountStudies"] == total["CountStudies"]


def test_shared_tags_and_archives(loaded: Any) -> None:
    study_id = demo_study(loaded)
    shared = loaded.get(f"/studies/{study_id}/shared-tags?simplify").json
    assert "StudyInstanceUID" in shared and "SOPInstanceUID" not in shared
    zipped = loaded.get(f"/studies/{study_id}/archive")
    with zipfile.ZipFile(io.BytesIO(zipped.data)) as archive:
        count = loaded.get(f"/studies/{study_id}/statistics").json["CountInstances"]
        assert len(archive.namelist()) == count
    both = loaded.post("/tools/create-archive", json={"Resources": [study_id, CT_INSTANCE]})
    with zipfile.ZipFile(io.BytesIO(both.data)) as archive:
        assert len(archive.namelist()) == count + 1
    assert_orthanc_error(loaded.post("/tools/create-archive", json={"Resources": ["nope"]}), 404, 17)


# -- search ---------------------------------------------------------------------------------------


def find(api: Any, body: Any) -> Any:
    response = api.post("/tools/find", data=json.dumps(body))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json


def test_find_matching(loaded: Any) -> None:
    assert find(loaded, {"Level": "Study", "Query": {"PatientName": "*ct*"}}) == [CT_STUDY]
    assert find(loaded, {"Level": "studies", "Query": {"PatientName": "*ct*"}, "CaseSensitive": True}) == []
    assert find(loaded, {"Level": "STUDY", "Query": {"StudyDate": "20040101-20040131"}}) == [CT_STUDY]
    both = find(loaded, {"Level": "Patient", "Query": {"PatientID": "1CT1\\4MR1"}})
    assert len(both) == 2 and CT_PATIENT in both
    assert find(loaded, {"Level": "Series", "Query": {"Manufacturer": "GE*"}}) == [CT_SERIES]
    assert find(loaded, {"Level": "Series", "Query": {"0008,0070": "GE MEDICAL SYSTEMS"}}) == [CT_SERIES]
    assert find(loaded, {"Level": "Study", "Query": {"InstitutionName": "JFK?IMAGING*"}}) == [CT_STUDY]
    assert find(loaded, {"Level": "Instance", "Query": {"SOPInstanceUID": "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"}}) == [CT_INSTANCE]
    everything = find(loaded, {"Level": "Instance", "Query": {}})
    assert len(everything) == 22
    assert find(loaded, {"Level": "Instance", "Query": {}, "Since": 3, "Limit": 4}) == everything[3:7]
    expanded = find(loaded, {"Level": "Study", "Query": {"PatientID": "1CT1"}, "Expand": True,
                             "RequestedTags": ["ModalitiesInStudy"]})
    assert expanded[0]["ID"] == CT_STUDY and expanded[0]["RequestedTags"] == {"ModalitiesInStudy": "CT"}
    instances = find(loaded, {"Level": "Instance", "Query": {}, "ParentStudy": CT_STUDY,
                              "ResponseContent": ["MainDicomTags", "Metadata"]})
    assert [i["ID"] for i in instances] == [CT_INSTANCE] and instances[0]["Metadata"]["Origin"] == "RestApi"


def test_find_refuses_what_it_cannot_do(loaded: Any) -> None:
    assert_orthanc_error(loaded.post("/tools/find", data="{bad"), 400, 28)
    assert_orthanc_error(loaded.post("/tools/find", data="[]"), 400, 8)
    assert_orthanc_error(loaded.post("/tools/find", json={"Level": "Foo", "Query": {}}), 400, 3)
    assert_orthanc_error(loaded.post("/tools/find", json={"Level": "Study", "Query": {}, "Limit": -1}), 400, 3)
    assert_orthanc_error(loaded.post("/tools/find", json={"Level": "Study", "Query": {}, "Limit": "x"}), 400, 8)
    assert_orthanc_error(loaded.post("/tools/find", json={"Level": "Study", "Query": {"KVP": "120"}}), 400, 8)
    assert_orthanc_error(loaded.post("/tools/find", json={"Level": "Study", "Query": {"SOPInstanceUID": "1"}}),
                         400, 8)
    assert_orthanc_error(loaded.post("/tools/find", json={"Level": "Study", "Query": {"PatientID": 3}}), 400, 8)
    assert_orthanc_error(loaded.post("/tools/find", json={"Level": "Study", "Bogus": 1}), 400, 8)


def test_lookup(loaded: Any) -> None:
    answer = loaded.post("/tools/lookup", data="1.3.6.1.4.1.5962.1.2.1.20040119072730.12322").json
    assert answer == [{"ID": CT_STUDY, "Path": f"/studies/{CT_STUDY}", "Type": "Study"}]
    assert loaded.post("/tools/lookup", data="nothing").json == []


# -- changes and labels ---------------------------------------------------------------------------


def test_changes_log_new_resources_then_deletions(api: Any) -> None:
    upload(api, CT)
    changes = api.get("/changes").json
    assert [(c["ChangeType"], c["ID"]) for c in changes["Changes"]] == [
        ("NewInstance", CT_INSTANCE), ("NewSeries", CT_SERIES), ("NewStudy", CT_STUDY), ("NewPatient", CT_PATIENT)]
    assert changes["Done"] is True and changes["Last"] == changes["Changes"][-1]["Seq"]
    page = api.get("/changes?since=1&limit=2").json
    assert [c["ChangeType"] for c in page["Changes"]] == ["NewSeries", "NewStudy"] and page["Done"] is False
    api.delete(f"/studies/{CT_STUDY}")
    tail = api.get(f"/changes?since={changes['Last']}").json["Changes"]
    assert {(c["ChangeType"], c["ResourceType"]) for c in tail} == {("Deleted", "Study"), ("Deleted", "Patient")}
    assert api.get("/changes?last").json["Changes"][0]["Seq"] == tail[-1]["Seq"]


def test_stable_changes_after_stable_age(short_tmp: Path) -> None:
    from dicomnode import config
    from dicomnode.archive import index
    from webapp import create_app

    app = create_app(config.from_dict(make_config_doc(short_tmp / "st", storage={"stable_age": 1})))
    api = app.test_client()
    upload(api, CT)
    assert api.get(f"/studies/{CT_STUDY}").json["IsStable"] is False
    assert "StableStudy" not in {c["ChangeType"] for c in api.get("/changes").json["Changes"]}
    time.sleep(1.2)
    assert api.get(f"/studies/{CT_STUDY}").json["IsStable"] is True
    kinds = [c["ChangeType"] for c in api.get("/changes").json["Changes"]]
    assert kinds[4:] == ["StableSeries", "StableStudy", "StablePatient"]
    assert [c["ChangeType"] for c in api.get("/changes").json["Changes"]] == kinds  # once each
    index.close_index()


def test_labels(loaded: Any) -> None:
    assert loaded.put(f"/studies/{CT_STUDY}/labels/teaching").status_code == 200
    loaded.put(f"/studies/{CT_STUDY}/labels/tumour-board")
    assert loaded.get(f"/studies/{CT_STUDY}/labels").json == ["teaching", "tumour-board"]
    assert loaded.get(f"/studies/{CT_STUDY}").json["Labels"] == ["teaching", "tumour-board"]
    assert loaded.get(f"/studies/{CT_STUDY}/labels/teaching").status_code == 200
    assert loaded.get(f"/studies/{CT_STUDY}/labels/other").status_code == 404
    assert loaded.get("/tools/labels").json == ["teaching", "tumour-board"]
    assert find(loaded, {"Level": "Study", "Query": {}, "Labels": ["teaching"]}) == [CT_STUDY]
    assert find(loaded, {"Level": "Study", "Query": {}, "Labels": ["teaching", "nope"], "LabelsConstraint": "All"}) == []
    assert find(loaded, {"Level": "Study", "Query": {}, "Labels": ["teaching", "nope"], "LabelsConstraint": "Any"}) == [CT_STUDY]
    assert CT_STUDY not in find(loaded, {"Level": "Study", "Query": {}, "Labels": ["teaching"], "LabelsConstraint": "None"})
    assert_orthanc_error(loaded.put(f"/studies/{CT_STUDY}/labels/bad%20label"), 400, 8)
    loaded.delete(f"/studies/{CT_STUDY}/labels/teaching")
    assert loaded.get(f"/studies/{CT_STUDY}/labels").json == ["tumour-board"]
    loaded.delete(f"/patients/{CT_PATIENT}")
    assert loaded.get("/tools/labels").json == []  # deleted with the study


# -- negotiation, authentication, system ---------------------------------------------------------


@pytest.mark.parametrize("headers, page", [
    ({}, False), ({"Accept": "*/*"}, False), ({"Accept": "application/json"}, False),
    ({"User-Agent": "curl/8.5.0", "Accept": "*/*"}, False),
    ({"Accept": "application/json, text/plain, */*"}, False),  # axios
    ({"Sec-Fetch-Dest": "document"}, True), ({"HX-Request": "true"}, True),
    ({"Accept": "text/html,application/xhtml+xml"}, True),
    ({"Accept": "text/html", "Authorization": "Basic eDp5"}, False),
])
def test_negotiation(api: Any, headers: dict[str, str], page: bool) -> None:
    response = api.get("/studies", headers=headers)
    assert response.status_code == 200
    assert (response.mimetype == "text/html") is page, response.mimetype
    assert "Sec-Fetch-Dest" in response.headers["Vary"] and "Accept" in response.headers["Vary"]


def test_a_browser_gets_json_where_there_is_no_page(api: Any) -> None:
    response = api.get("/statistics", headers={"Sec-Fetch-Dest": "document"})
    assert response.mimetype == "application/json"


def test_programs_get_a_basic_challenge_browsers_the_login_page(short_tmp: Path) -> None:
    from werkzeug.security import generate_password_hash

    from dicomnode import config
    from dicomnode.archive import index
    from webapp import create_app

    doc = make_config_doc(short_tmp / "auth")
    doc["http"]["users"] = {"alice": generate_password_hash("secret")}
    api = create_app(config.from_dict(doc)).test_client()
    response = api.get("/studies")
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Basic")
    assert api.post("/tools/find", json={"Level": "Study", "Query": {}}).status_code == 401
    browser = api.get("/studies", headers={"Sec-Fetch-Dest": "document"})
    assert browser.status_code == 302 and "/login" in browser.headers["Location"]
    ok = api.get("/studies", headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"})
    assert ok.status_code == 200 and ok.json == []
    # A program's POST (no Origin, no Sec-Fetch-Site) is not taken for a cross-site request.
    assert api.post("/instances", data=CT.read_bytes(), headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"}
                    ).status_code == 200
    cross = api.post("/instances", data=CT.read_bytes(), headers={
        "Authorization": "Basic YWxpY2U6c2VjcmV0", "Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"})
    assert cross.status_code == 403
    index.close_index()


def test_system(api: Any) -> None:
    system = api.get("/system").json
    major, minor, patch = (int(p) for p in system["Version"].split("."))
    assert (major, minor) >= (1, 12)
    assert system["DolmenVersion"] and system["HasLabels"] is True and system["Capabilities"]["HasLabels"]
    assert system["DicomAet"] == api.application.config["DOLMEN"]["dicom.aet"]
    assert isinstance(system["ApiVersion"], int) and system["Name"] == "Dolmen"


def test_an_older_index_gains_the_new_columns(short_tmp: Path) -> None:
    """An index made before main_tags, stable and the change log opens, and old rows still answer."""
    import sqlite3

    from dicomnode import config
    from dicomnode.archive import index
    from webapp import create_app

    doc = make_config_doc(short_tmp / "old")
    app = create_app(config.from_dict(doc))
    upload(app.test_client(), CT)
    index.close_index()
    path = short_tmp / "old" / "index.db"
    with sqlite3.connect(path) as conn:
        for table in ("patient", "study", "series"):
            conn.execute(f"ALTER TABLE {table} DROP COLUMN stable")
            conn.execute(f"ALTER TABLE {table} DROP COLUMN main_tags")
        conn.execute("ALTER TABLE instance DROP COLUMN main_tags")
        conn.execute("DROP TABLE change")
    api = create_app(config.from_dict(doc)).test_client()
    study = api.get(f"/studies/{CT_STUDY}").json
    assert study["MainDicomTags"]["StudyDescription"] == "e+1"  # from the columns
    assert api.get("/changes").json["Changes"] == []
    upload(api, MR)
    assert api.get("/statistics").json["CountInstances"] == 2
    index.close_index()


def test_labels_from_the_pages(loaded: Any, app: Any) -> None:
    """The study page adds and removes labels; the study list filters by one."""
    from bs4 import BeautifulSoup

    from tests.conftest import browser_client

    browser = browser_client(app)
    added = browser.post(f"/studies/{CT_STUDY}/labels", data={"label": "teaching"})
    assert added.status_code == 303
    assert loaded.get(f"/studies/{CT_STUDY}/labels").json == ["teaching"]
    page = BeautifulSoup(browser.get(f"/studies/{CT_STUDY}").data, "html.parser")
    assert [a.get_text() for a in page.select("#labels .chip")] == ["teaching"]
    listed = BeautifulSoup(browser.get("/studies?label=teaching").data, "html.parser")
    assert len(listed.select("tr[data-href]")) == 1
    assert len(BeautifulSoup(browser.get("/studies").data, "html.parser").select("tr[data-href]")) > 1
    refused = browser.post(f"/studies/{CT_STUDY}/labels", data={"label": "no spaces"}, follow_redirects=True)
    assert "a label is 1 to 64 letters" in refused.get_data(as_text=True)
    browser.post(f"/studies/{CT_STUDY}/labels", data={"remove": "teaching"})
    assert loaded.get(f"/studies/{CT_STUDY}/labels").json == []


def test_an_instance_without_instance_number_has_an_index_in_series(api: Any) -> None:
    ds = pydicom.dcmread(CT)
    del ds.InstanceNumber
    buffer = io.BytesIO()
    ds.save_as(buffer)
    answer = api.post("/instances", data=buffer.getvalue()).json
    assert api.get(f"/instances/{answer['ID']}").json["IndexInSeries"] == 1


def test_fast_rows_build_what_peewee_builds(loaded: Any) -> None:
    from dicomnode.archive import orthanc
    from dicomnode.archive import query
    from dicomnode.archive.index import Instance
    from dicomnode.archive.index import Study

    for q, model in ((query.select("STUDY", {}), Study), (query.select("IMAGE", {}), Instance),
                     (orthanc._with_parents("Instance", Instance.select(*orthanc._models("Instance"))), Instance)):
        slow, fast = list(q.order_by(model.pk)), orthanc.fast_rows(q.order_by(model.pk), model)
        assert len(fast) == len(slow) > 2
        for a, b in zip(slow, fast, strict=True):
            assert type(b) is model and a.__data__ == b.__data__
            for fk in {"Instance": ("series", "study", "patient"), "Study": ("patient",)}[model.__name__]:
                a, b = getattr(a, fk), b.__rel__[fk]  # the parent came with the row, no query
                assert a.__data__ == b.__data__
