"""Anonymize and modify (dicomnode/anonymize, webapp/api/rest/modify.py): PS3.15 Table E.1-1 on
pydicom's files and on generated studies with sequences and private blocks, Orthanc's REST
semantics checked against Debian's Orthanc, bad input, the journal, the job."""
from __future__ import annotations

import io
import json
from copy import deepcopy
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomnode import config
from dicomnode import demodata
from dicomnode.anonymize import e11
from dicomnode.anonymize import generate
from dicomnode.anonymize.profile import Session
from dicomnode.anonymize.profile import apply
from dicomnode.anonymize.profile import plan_from_body
from tests.conftest import make_config_doc
from tests.conftest import wait_for

DATA = Path(pydicom.data.__file__).parent
FILES = sorted((DATA / "test_files").glob("*.dcm")) + sorted((DATA / "charset_files").glob("*.dcm"))
CT = DATA / "test_files" / "CT_small.dcm"
MR = DATA / "test_files" / "MR_small.dcm"

#: What differs from Debian's Orthanc 1.10.1 (Table E.1-1 of 2021b) on CT_small and MR_small, and why
#: (README, "Anonymize and modify"). Anything else that differs fails the comparison.
ORTHANC_DIFFERENCES = {
    "InstanceCreationDate": "X/D in the 2026c table Dolmen applies; not listed in 2021b, so Orthanc keeps it",
    "InstanceCreationTime": "idem",
    "PatientID": "random in both",
    "PatientName": "Orthanc numbers anonymized patients over its lifetime; Dolmen over its journal",
    "DeidentificationMethod": "each names itself and its edition",
    "DeidentificationMethodCodeSequence": "Dolmen also codes the profile and options (CID 7050)",
    "LongitudinalTemporalInformationModified": "Dolmen says the dates were removed (REMOVED)",
}


def _anonymized(ds: Dataset, body: dict[str, Any] | None = None, session: Session | None = None) -> Dataset:
    copy = deepcopy(ds)
    apply(copy, session or Session(plan_from_body(body or {}, "anonymize", "Study")))
    return copy


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


def _is_empty(element: Any) -> bool:
    return element.value in (None, "", b"") or (element.VR == "SQ" and len(element.value) == 0) or (
        isinstance(element.value, (list, tuple)) and not element.value)


def test_the_table_is_the_published_one() -> None:
    """e11.py is what the generator writes from the two PyPI packages (never edited by hand)."""
    assert Path(e11.__file__).read_text() == generate.render()
    assert len(e11.TABLE) > 600 and e11.TABLE[0x00100010][0] == "Z" and e11.TABLE[0x0020000D][0] == "U"
    assert e11.TABLE[0x00081030][1].get("clean_descriptors") == "C"  # Study Description


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_every_action_of_the_basic_profile_on_pydicoms_files(path: Path) -> None:
    source = pydicom.dcmread(path, force=True)
    if "PixelData" not in source and "SOPInstanceUID" not in source:
        pytest.skip("not an instance")
    result = _anonymized(source)
    for element in source:
        tag = int(element.tag)
        after = result.get(element.tag)
        if element.tag.is_private:
            assert after is None, f"private {element.tag} kept"
            continue
        if tag in (0x00100010, 0x00100020):  # pseudonyms
            assert after is not None and str(after.value) != str(element.value or "x")
            continue
        entry = e11.TABLE.get(tag)
        action = entry[0] if entry else next((b for v, m, b, _o in e11.MASKED if tag & m == v), None)
        if action is None or action in ("K", "C", "X/Z/U*"):
            continue
        if action == "X" or (action.startswith("X") and element.VR != "UI"):
            assert after is None, f"{element.keyword} ({action}) was kept"
        elif action in ("Z", "Z/D") and element.VR != "UI":
            assert after is not None and _is_empty(after), f"{element.keyword} ({action}) not emptied"
        elif action == "D" and element.VR != "SQ":
            assert after is not None and not _is_empty(after) and (
                _is_empty(element) or after.value != element.value or element.VR in ("DA", "TM", "DT")), element.keyword
        elif element.VR == "UI" and element.value:
            assert str(after.value).startswith("2.25."), f"{element.keyword} ({action}) UID not replaced"
    assert result.PatientIdentityRemoved == "YES"
    assert str(result.DeidentificationMethod).startswith("Dolmen") and "2026c" in str(result.DeidentificationMethod)
    assert result.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    if "PixelData" in source:
        assert result.PixelData == source.PixelData  # pixels untouched
    if "SOPInstanceUID" in source and getattr(result, "file_meta", None) is not None:
        assert result.file_meta.MediaStorageSOPInstanceUID == result.SOPInstanceUID


def _study_with_references() -> list[Dataset]:
    """A generated study whose second instance references the first inside sequences, with a
    private block and a nested person name."""
    out = []
    for _rel, ds in demodata.iter_instances(patients=1, studies=1, series=1, instances=3, size=8):
        out.append(ds)
    first = out[0]
    for ds in out[1:]:
        ref = Dataset()
        ref.ReferencedSOPClassUID = first.SOPClassUID
        ref.ReferencedSOPInstanceUID = first.SOPInstanceUID
        ds.ReferencedImageSequence = Sequence([ref])
        source = Dataset()
        source.ReferencedSOPInstanceUID = first.SOPInstanceUID
        ds.SourceImageSequence = Sequence([source])
        person = Dataset()
        person.PersonName = "Smith^Operator"
        person.PersonIdentificationCodeSequence = Sequence()
        ds.ContentSequence = Sequence([person])
        ds.RequestAttributesSequence = Sequence([Dataset()])
        ds.RequestAttributesSequence[0].RequestedProcedureID = "RP42"
        block = ds.private_block(0x0009, "ACME SECRET", create=True)
        block.add_new(0x01, "LO", "patient's mother's maiden name")
        ds.StudyDescription = f"CT head for {ds.PatientName.family_name} {ds.PatientID}"
        out.append(ds)
    return out


def test_references_in_sequences_follow_the_new_uids_and_private_blocks_go() -> None:
    datasets = _study_with_references()
    session = Session(plan_from_body({}, "anonymize", "Study"))
    results = [_anonymized(ds, session=session) for ds in datasets]
    new_first = results[0].SOPInstanceUID
    assert new_first != datasets[0].SOPInstanceUID
    for result in results[1:]:
        assert result.ReferencedImageSequence[0].ReferencedSOPInstanceUID == new_first
        assert result.ReferencedImageSequence[0].ReferencedSOPClassUID == datasets[0].SOPClassUID  # not a UID of ours
        assert result.SourceImageSequence[0].ReferencedSOPInstanceUID == new_first
        assert result.StudyInstanceUID == results[0].StudyInstanceUID  # consistent in the operation
        assert "RequestAttributesSequence" not in result
        assert not [e for e in result if e.tag.is_private]
    assert len({r.PatientID for r in results}) == 1


def test_options_retain_and_clean() -> None:
    ds = _study_with_references()[1]
    kept = _anonymized(ds, {"Options": ["RetainLongitudinalTemporalInformation", "RetainUIDs",
                                        "RetainPatientCharacteristics", "CleanDescriptors"]})
    assert kept.StudyDate == ds.StudyDate and kept.StudyInstanceUID == ds.StudyInstanceUID
    assert kept.SOPInstanceUID == ds.SOPInstanceUID
    assert kept.PatientSex == ds.PatientSex
    assert ds.PatientID not in kept.StudyDescription and "CT head for" in kept.StudyDescription
    assert "RetainUIDs" in kept.DeidentificationMethod
    codes = {item.CodeValue for item in kept.DeidentificationMethodCodeSequence}
    assert {"113100", "113106", "113110", "113108", "113105"} <= codes
    assert kept.LongitudinalTemporalInformationModified == "UNMODIFIED"
    plain = _anonymized(ds)
    assert "StudyDescription" not in plain and plain.StudyDate in ("", None) and "StudyDate" in plain


def test_stable_pseudonyms_with_a_secret() -> None:
    ds = _study_with_references()[0]

    def once() -> Dataset:
        return _anonymized(ds, session=Session(plan_from_body({}, "anonymize", "Study", secret=b"cohort-7")))

    a, b = once(), once()
    assert a.PatientID == b.PatientID and a.PatientID.startswith("ANON-")
    assert a.StudyInstanceUID == b.StudyInstanceUID and a.SOPInstanceUID == b.SOPInstanceUID
    other = _anonymized(ds, session=Session(plan_from_body({}, "anonymize", "Study", secret=b"other")))
    assert other.PatientID != a.PatientID and other.StudyInstanceUID != a.StudyInstanceUID


# -- the REST API -------------------------------------------------------------------------------


def upload(api: Any, path_or_bytes: Any) -> dict[str, Any]:
    data = path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes
    response = api.post("/instances", data=data)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json


def error(response: Any, status: int) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    return response.json["Details"]


def test_anonymize_a_study_and_its_answer(api: Any) -> None:
    study = upload(api, CT)["ParentStudy"]
    before = api.get("/studies").json
    dry = api.post(f"/studies/{study}/anonymize", json={"DryRun": True})
    assert dry.status_code == 200 and dry.json["DryRun"] is True
    names = {c["Name"] for c in dry.json["Changes"]}
    assert {"PatientName", "PatientID", "StudyInstanceUID", "SOPInstanceUID", "StudyDate"} <= names
    assert api.get("/studies").json == before  # a dry run writes nothing
    result = api.post(f"/studies/{study}/anonymize", json={})
    assert result.status_code == 200, result.get_data(as_text=True)
    body = result.json
    assert {"ID", "Path", "PatientID", "Type", "InstancesCount", "IsAnonymization"} <= set(body)
    assert body["Type"] == "Study" and body["Path"] == f"/studies/{body['ID']}" and body["IsAnonymization"]
    new = api.get(f"/studies/{body['ID']}").json
    assert new["ParentPatient"] == body["PatientID"]
    assert new["PatientMainDicomTags"]["PatientName"].startswith("Anonymized")
    assert study in api.get("/studies").json  # KeepSource defaults to true
    journal = api.get("/exports").json[0]
    assert journal["Source"] == study and journal["Result"] == body["ID"] and journal["Status"] == "success"
    # KeepSource false: the source goes once the copy is stored.
    again = api.post(f"/studies/{study}/anonymize", json={"KeepSource": False}).json
    assert study not in api.get("/studies").json and again["ID"] in api.get("/studies").json


def test_modify_follows_orthancs_rules(api: Any) -> None:
    stored = upload(api, CT)
    study, patient = stored["ParentStudy"], stored["ParentPatient"]
    modified = api.post(f"/studies/{study}/modify", json={"Replace": {"StudyDescription": "Corrected"}}).json
    assert modified["PatientID"] == patient and modified["ID"] != study and not modified["IsAnonymization"]
    tags = api.get(f"/studies/{modified['ID']}").json["MainDicomTags"]
    assert tags["StudyDescription"] == "Corrected"
    assert "Force" in error(api.post(f"/studies/{study}/modify", json={"Replace": {"StudyInstanceUID": "1.2"}}), 400)
    assert "Force" in error(api.post(f"/studies/{study}/modify", json={"Keep": ["StudyInstanceUID"]}), 400)
    assert "PatientID" in error(api.post(f"/patients/{patient}/modify", json={"Replace": {"PatientName": "X"}}), 400)
    moved = api.post(f"/patients/{patient}/modify", json={"Replace": {"PatientID": "NEW-1"}}).json
    assert api.get(f"/patients/{moved['ID']}").json["MainDicomTags"]["PatientID"] == "NEW-1"
    file = api.post(f"/instances/{stored['ID']}/modify", json={"Replace": {"PatientName": "Doe^Jane"}})
    assert file.mimetype == "application/dicom"
    assert pydicom.dcmread(io.BytesIO(file.data)).PatientName == "Doe^Jane"


def test_bad_requests_are_refused_and_nothing_is_written(api: Any) -> None:
    study = upload(api, CT)["ParentStudy"]
    count = len(api.get("/instances").json)
    assert "Unknown option" in error(api.post(f"/studies/{study}/anonymize", json={"Options": ["Everything"]}), 400)
    assert "not a DICOM tag" in error(api.post(f"/studies/{study}/anonymize", json={"Keep": ["NotATag"]}), 400)
    assert "not a DICOM tag" in error(api.post(f"/studies/{study}/modify", json={"Remove": [12]}), 400)
    assert "Unknown field" in error(api.post(f"/studies/{study}/anonymize", json={"Replace": {}, "Foo": 1}), 400)
    assert "more than one" in error(api.post(f"/studies/{study}/modify",
                                             json={"Replace": {"StudyID": "1"}, "Remove": ["StudyID"]}), 400)
    assert "Transcode" in error(api.post(f"/studies/{study}/anonymize", json={"Transcode": "1.2.840.10008.1.2"}), 400)
    assert "Options belong" in error(api.post(f"/studies/{study}/modify", json={"Options": ["RetainUIDs"]}), 400)
    assert api.post(f"/studies/{study}/anonymize", data="{bad").json["OrthancStatus"] == 28
    assert api.post("/studies/00000000-00000000-00000000-00000000-00000000/anonymize", json={}).status_code == 404
    assert "Resources" in error(api.post("/tools/bulk-anonymize", json={"Resources": []}), 400)
    assert len(api.get("/instances").json) == count


def test_a_source_deleted_mid_way_leaves_no_half_result(api: Any, app: Any) -> None:
    paths = []
    for ds in _study_with_references():
        paths.append(upload(api, _bytes(ds)))
    study = paths[0]["ParentStudy"]
    services = app.extensions["dolmen"]
    # The last instance's file goes away, as if deleted while the operation ran.
    from dicomnode.archive.index import Instance

    with app.app_context():
        last = Instance.get(Instance.public_id == paths[-1]["ID"])
        services.store.path(last.path).unlink()
    before = sorted(api.get("/instances").json)
    response = api.post(f"/studies/{study}/anonymize", json={})
    assert "could not be read" in error(response, 409)
    assert sorted(api.get("/instances").json) == before  # the copies made were deleted again
    assert api.get("/exports").json[0]["Status"] == "failure"


def test_bulk_anonymize_and_a_profile_from_the_configuration(short_tmp: Path) -> None:
    from dicomnode.archive import index
    from webapp import create_app

    doc = make_config_doc(short_tmp / "p", anonymize={
        "secret": "site-secret", "profiles": {"cohort": {"Options": ["RetainLongitudinalTemporalInformation"]}}})
    app = create_app(config.from_dict(doc))
    api = app.test_client()
    try:
        ct, mr = upload(api, CT)["ParentStudy"], upload(api, MR)["ParentStudy"]
        bulk = api.post("/tools/bulk-anonymize", json={"Resources": [ct, mr], "Profile": "cohort"})
        assert bulk.status_code == 200, bulk.get_data(as_text=True)
        new = [r["ID"] for r in bulk.json["Resources"]]
        assert len(new) == 2 and bulk.json["IsAnonymization"]
        dates = {api.get(f"/studies/{i}").json["MainDicomTags"]["StudyDate"] for i in new}
        assert dates == {"20040119", "20040826"}  # the profile kept the dates
        # The secret: anonymizing again gives the same study (already stored), not a new one.
        again = api.post(f"/studies/{ct}/anonymize", json={"Profile": "cohort"}).json
        assert again["ID"] == new[0]
        assert "not in [anonymize.profiles]" in error(api.post(f"/studies/{ct}/anonymize", json={"Profile": "x"}), 400)
    finally:
        index.close_index()


def test_the_same_study_anonymized_by_orthanc(api: Any, orthanc_factory: Any) -> None:
    orthanc = orthanc_factory()
    for path in (CT, MR):
        data = path.read_bytes()
        by_orthanc = orthanc.post(f"/studies/{orthanc.post('/instances', data=data).json()['ParentStudy']}/anonymize",
                                  data="{}").json()
        by_dolmen = api.post(f"/studies/{upload(api, data)['ParentStudy']}/anonymize", json={}).json
        assert set(by_orthanc) - {"Warnings", "Journal"} <= set(by_dolmen)
        theirs = pydicom.dcmread(io.BytesIO(orthanc.get(
            f"/instances/{orthanc.get(by_orthanc['Path'] + '/instances').json()[0]['ID']}/file").content))
        ours = pydicom.dcmread(io.BytesIO(api.get(
            f"/instances/{api.get(by_dolmen['Path'] + '/instances').json[0]['ID']}/file").data))
        source = pydicom.dcmread(path)
        differences = set()
        for tag in sorted({e.tag for e in theirs} | {e.tag for e in ours}):
            a, b = theirs.get(tag), ours.get(tag)
            if a is None or b is None:
                differences.add(pydicom.datadict.keyword_for_tag(tag))
            elif a.VR == "UI":
                original = source.get(tag)
                same_as_source = [str(x.value) == str(original.value if original is not None else None) for x in (a, b)]
                if same_as_source[0] != same_as_source[1]:
                    differences.add(a.keyword)
            elif a.VR != "SQ" and str(a.value) != str(b.value):
                differences.add(a.keyword)
        unexplained = differences - set(ORTHANC_DIFFERENCES)
        assert not unexplained, f"{path.name}: differs from Orthanc on {sorted(unexplained)}"


@pytest.mark.timeout(120)
def test_asynchronous_anonymization_runs_as_a_job(dolmen_factory: Any) -> None:
    node = dolmen_factory()
    stored = node.post("/instances", program=True, data=CT.read_bytes()).json()
    job = node.post(f"/studies/{stored['ParentStudy']}/anonymize", program=True,
                    data=json.dumps({"Asynchronous": True})).json()
    assert job["Path"] == f"/jobs/{job['ID']}"
    done = wait_for(lambda: (lambda j: j if j["State"] in ("Success", "Failure") else None)(
        node.get(job["Path"], program=True).json()), timeout=60, what="the anonymize job")
    assert done["State"] == "Success", done
    assert done["Type"] == "ResourceModification"
    new = done["Content"]["ID"]
    assert node.get(f"/studies/{new}", program=True).json()["PatientMainDicomTags"]["PatientName"].startswith("Anonym")
    assert node.get("/exports", program=True).json()[0]["Job"] == int(job["ID"])


# -- the pages ----------------------------------------------------------------------------------


def test_the_form_previews_every_change_and_writes_nothing(api: Any, client: Any) -> None:
    study = upload(api, CT)["ParentStudy"]
    page = client.get(f"/studies/{study}")
    assert f"/studies/{study}/anonymize" in page.get_data(as_text=True)
    assert f"/studies/{study}/modify" in page.get_data(as_text=True)
    form = client.get(f"/studies/{study}/anonymize")
    assert form.status_code == 200 and "RetainLongitudinalTemporalInformation" in form.get_data(as_text=True)
    before = api.get("/instances").json
    preview = client.post(f"/studies/{study}/anonymize", data={
        "action": "preview", "opt-RetainLongitudinalTemporalInformation": "1", "keep_source": "1",
        "replace": "PatientName = Cohort^Subject 7"})
    html = preview.get_data(as_text=True)
    assert preview.status_code == 200 and "What would change" in html
    assert "Cohort^Subject 7" in html and "CompressedSamples^CT1" in html  # after and before
    assert "<td>StudyDate</td>" not in html and "<td>StudyInstanceUID</td>" in html  # the option kept the dates
    assert api.get("/instances").json == before
    bad = client.post(f"/studies/{study}/modify", data={"action": "preview", "replace": "StudyInstanceUID = 1.2",
                                                        "keep_source": "1"})
    assert bad.status_code == 400 and "requires the" in bad.get_data(as_text=True)
    no_sidecar = client.post(f"/studies/{study}/anonymize", data={"action": "run", "keep_source": "1"})
    assert no_sidecar.status_code == 400 and "DICOM service" in no_sidecar.get_data(as_text=True)
    assert api.get("/instances").json == before


@pytest.mark.timeout(120)
def test_the_form_runs_a_job_that_links_to_the_result(dolmen_factory: Any) -> None:
    node = dolmen_factory()
    stored = node.post("/instances", program=True, data=CT.read_bytes()).json()
    response = node.post(f"/studies/{stored['ParentStudy']}/anonymize",
                         data={"action": "run", "keep_source": "1"}, allow_redirects=False)
    assert response.status_code == 303 and "/jobs/" in response.headers["Location"]
    job_url = response.headers["Location"]
    wait_for(lambda: "Result:" in node.get(job_url).text, timeout=60, what="the job page to link to the result")
    journal = node.get("/exports").text
    assert "Anonymize study" in journal and "success" in journal
