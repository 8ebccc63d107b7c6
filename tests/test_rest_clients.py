"""Orthanc's REST API on a running Dolmen: Debian's Orthanc as the reference, and the PyPI clients.

One environment for the module: Orthanc ``PACS`` (which declares Dolmen) and Dolmen (which
declares ``pacs``). Both hold the same reference files, so that each answer is compared with
Orthanc's own; PACS alone also holds a second set for query/retrieve.
"""
from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom.data
import pytest
import requests

from dicomnode import demodata
from tests.conftest import DolmenProcess
from tests.conftest import OrthancProcess
from tests.conftest import make_config_doc
from tests.conftest import start_dolmen
from tests.conftest import start_orthanc
from tests.conftest import wait_for
from tests.conftest import write_toml

pytestmark = pytest.mark.orthanc

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"  # never get_testdata_file: it downloads
REFERENCE = [TEST_FILES / n for n in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_small_odd.dcm")]


@dataclass
class Env:
    dolmen: DolmenProcess
    pacs: OrthancProcess
    base: Path
    demo: list[Path]
    remote: list[Path]  # only in PACS


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    base = Path(tempfile.mkdtemp(prefix="dr-", dir="/tmp"))
    doc = make_config_doc(base / "data")
    pacs = start_orthanc(base / "pacs", "PACS", DicomModalities={"dolmen": ["DOLMEN", "127.0.0.1",
                                                                            doc["dicom"]["port"]]})
    doc["modalities.pacs"] = {"aet": "PACS", "host": "127.0.0.1", "port": pacs.dicom_port}
    dolmen = start_dolmen(write_toml(base / "dolmen.toml", doc), base / "dolmen.log")
    demo = demodata.write(base / "demo", patients=2, studies=1, series=2, instances=3, size=32)
    remote = demodata.write(base / "remote", patients=1, studies=1, series=1, instances=4, size=32, first_patient=500)
    for path in [*REFERENCE, *demo]:
        for server in (dolmen, pacs):
            assert requests.post(server.url + "/instances", data=path.read_bytes(), timeout=60).status_code == 200
    for path in remote:
        pacs.post("/instances", data=path.read_bytes())
    try:
        yield Env(dolmen, pacs, base, demo, remote)
    finally:
        dolmen.stop()
        pacs.stop()
        shutil.rmtree(base, ignore_errors=True)


def both(env: Env, method: str, path: str, **kw: Any) -> tuple[requests.Response, requests.Response]:
    ours = requests.request(method, env.dolmen.url + path, timeout=60, **kw)
    theirs = requests.request(method, env.pacs.url + path, timeout=60, **kw)
    return ours, theirs


# -- the same answers as Orthanc -----------------------------------------------------------------


def shared_ids(env: Env) -> dict[str, set[str]]:
    """The ids of every resource of the files both servers hold, by URL segment."""
    from dicomnode import ids

    out: dict[str, set[str]] = {"patients": set(), "studies": set(), "series": set(), "instances": set()}
    for path in [*REFERENCE, *env.demo]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        pid, st, se = str(ds.get("PatientID", "")), ds.StudyInstanceUID, ds.SeriesInstanceUID
        out["patients"].add(ids.patient_id(pid))
        out["studies"].add(ids.study_id(pid, st))
        out["series"].add(ids.series_id(pid, st, se))
        out["instances"].add(ids.instance_id(pid, st, se, ds.SOPInstanceUID))
    return out


def test_lists_and_ids_are_orthancs(env: Env) -> None:
    for level, wanted in shared_ids(env).items():
        ours, theirs = both(env, "GET", f"/{level}")
        assert wanted <= set(ours.json()) and wanted <= set(theirs.json()), level


#: Fields whose values differ by nature (timestamps, Orthanc's attachment UUIDs), and Labels,
#: which Orthanc 1.10 (Debian's) does not have yet.
VOLATILE = {"LastUpdate", "FileUuid", "IsStable", "Labels"}


def test_every_resource_answers_what_orthanc_answers(env: Env) -> None:
    compared = 0
    for level, wanted in shared_ids(env).items():
        for public_id in sorted(wanted):
            ours, theirs = both(env, "GET", f"/{level}/{public_id}")
            assert ours.status_code == 200, ours.text
            mine = {k: v for k, v in ours.json().items() if k not in VOLATILE}
            reference = {k: v for k, v in theirs.json().items() if k not in VOLATILE}
            if level == "instances":
                reference.pop("IndexInSeries", None)
                assert mine.pop("IndexInSeries") is not None
            if level in ("studies", "series", "patients"):
                key = {"patients": "Studies", "studies": "Series", "series": "Instances"}[level]
                assert sorted(mine.pop(key)) == sorted(reference.pop(key))
            assert mine == reference, (level, public_id)
            compared += 1
    assert compared > 20


def test_statistics_and_counts_are_orthancs(env: Env) -> None:
    dolmen_ids = set(requests.get(env.dolmen.url + "/instances", timeout=30).json())
    pacs_ids = set(requests.get(env.pacs.url + "/instances", timeout=30).json())
    shared = sorted(dolmen_ids & pacs_ids)
    for public_id in shared[:5]:
        ours, theirs = both(env, "GET", f"/instances/{public_id}/statistics")
        assert ours.json() == theirs.json()
    ours = requests.get(env.dolmen.url + "/statistics", timeout=30).json()
    assert set(ours) >= set(requests.get(env.pacs.url + "/statistics", timeout=30).json())


def test_tags_values_are_orthancs(env: Env) -> None:
    """Every public element's value, in the three forms; private names come from another dictionary."""
    for public_id in sorted(shared_ids(env)["instances"]):
        ours, theirs = both(env, "GET", f"/instances/{public_id}/tags")
        mine, reference = ours.json(), theirs.json()
        assert set(mine) == set(reference), public_id
        for key, value in reference.items():
            if int(key[:4], 16) % 2 == 0:
                assert mine[key] == value, (public_id, key)
            else:
                assert (mine[key]["Type"], mine[key]["Value"]) == (value["Type"], value["Value"]), (public_id, key)
        ours, theirs = both(env, "GET", f"/instances/{public_id}/tags?short")
        assert ours.json() == theirs.json(), public_id


@pytest.mark.parametrize("query", [
    {"Level": "Study", "Query": {"PatientName": "*ct*"}},
    {"Level": "Study", "Query": {"PatientName": "*CT*"}, "CaseSensitive": True},
    {"Level": "Study", "Query": {"StudyDate": "20040101-20041231"}},
    {"Level": "Series", "Query": {"Modality": "MR\\CT"}},
    {"Level": "Series", "Query": {"Manufacturer": "GE*"}},
    {"Level": "Instance", "Query": {"InstanceNumber": "1"}},
    {"Level": "Patient", "Query": {"PatientID": "PAT0000?"}},
    {"Level": "Study", "Query": {}, "Limit": 3},
    {"Level": "Study", "Query": {"AccessionNumber": ""}, "Expand": True},
])
def test_find_answers_what_orthanc_answers(env: Env, query: dict[str, Any]) -> None:
    ours, theirs = both(env, "POST", "/tools/find", json=query)
    assert ours.status_code == theirs.status_code == 200, ours.text
    mine, reference = ours.json(), theirs.json()
    wanted = shared_ids(env)[{"Patient": "patients", "Study": "studies", "Series": "series",
                              "Instance": "instances"}[query["Level"]]]
    mine = [r for r in mine if (r["ID"] if isinstance(r, dict) else r) in wanted]
    reference = [r for r in reference if (r["ID"] if isinstance(r, dict) else r) in wanted]
    if query.get("Expand"):
        mine = sorted(({k: v for k, v in r.items() if k not in VOLATILE} for r in mine), key=lambda r: r["ID"])
        reference = sorted(({k: v for k, v in r.items() if k not in VOLATILE} for r in reference),
                           key=lambda r: r["ID"])
    if "Limit" in query:
        assert len(ours.json()) == len(theirs.json()) == query["Limit"]
        return
    if not query.get("Expand"):
        mine, reference = sorted(mine), sorted(reference)
    assert mine == reference


def test_errors_are_orthancs(env: Env) -> None:
    for method, path, body in (("GET", "/instances/00000000-00000000-00000000-00000000-00000000/tags", None),
                               ("POST", "/instances", b"notdicom"), ("GET", "/nothing", None),
                               ("POST", "/tools/find", b'{"Level": "Foo", "Query": {}}')):
        ours, theirs = both(env, method, path, data=body)
        assert ours.status_code == theirs.status_code, (path, ours.text)
        if theirs.content:
            reference = theirs.json()
            mine = ours.json()
            assert {k: mine[k] for k in reference if k != "Details"} == {
                k: v for k, v in reference.items() if k != "Details"}, path
    ours, theirs = both(env, "PUT", "/patients")
    assert ours.status_code == theirs.status_code == 405


def test_a_huge_content_length_is_refused_and_both_processes_stay_up(env: Env) -> None:
    with socket.create_connection(("127.0.0.1", int(env.dolmen.url.rsplit(":", 1)[1])), timeout=30) as sock:
        sock.sendall(b"POST /instances HTTP/1.1\r\nHost: x\r\nContent-Length: 3221225472\r\n\r\n" + b"\0" * 1024)
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert env.dolmen.get("/system", program=True).json()["DicomServerRunning"] is True


# -- the clients from PyPI -----------------------------------------------------------------------


def test_pyorthanc(env: Env) -> None:
    import pyorthanc

    client = pyorthanc.Orthanc(env.dolmen.url)
    assert client.get_system()["Name"] == "Dolmen"
    studies = pyorthanc.find_studies(client, query={"PatientName": "*ct*"})
    assert [s.id_ for s in studies] == ["8a8cf898-ca27c490-d0c7058c-929d0581-2bbf104d"]
    study = studies[0]
    assert study.patient_information["PatientID"] == "1CT1" and [s.modality for s in study.series] == ["CT"]
    assert study.series[0].instances[0].get_main_information()["MainDicomTags"]["InstanceNumber"] == "1"
    extra = demodata.write(env.base / "py", patients=1, studies=1, series=1, instances=1, size=16, first_patient=600)
    uploaded = client.post_instances(extra[0].read_bytes())
    assert uploaded["Status"] == "Success"
    modality = pyorthanc.Modality(client, "pacs")
    assert modality.echo()
    answer = modality.store(uploaded["ParentStudy"])
    assert answer["InstancesCount"] == 1
    assert requests.get(env.pacs.url + f"/instances/{uploaded['ID']}", timeout=30).status_code == 200
    found = modality.query({"Level": "Study", "Query": {"PatientID": "PAT00500", "StudyInstanceUID": ""}})
    answers = requests.get(env.dolmen.url + f"/queries/{found['ID']}/answers?expand&simplify", timeout=30).json()
    assert [a["PatientID"] for a in answers] == ["PAT00500"]
    modality.move(found["ID"], {"TargetAet": "DOLMEN", "Synchronous": True})
    assert set(_ids_of(env.remote)) <= set(client.get_instances())


def _ids_of(paths: list[Path]) -> list[str]:
    out = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        from dicomnode import ids

        out.append(ids.instance_id(ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID))
    return out


def test_orthanc_api_client(env: Env) -> None:
    from orthanc_api_client import OrthancApiClient

    client = OrthancApiClient(env.dolmen.url)
    assert client.wait_started(timeout=10)
    extra = demodata.write(env.base / "oac", patients=1, studies=1, series=1, instances=2, size=16, first_patient=700)
    ids = client.upload_file(extra[0])
    assert len(ids) == 1
    studies = client.studies.find(query={"PatientID": "PAT00700"})
    assert len(studies) == 1 and studies[0].main_dicom_tags.get("StudyInstanceUID")
    tags = client.instances.get_tags(ids[0])
    assert tags["PatientID"] == "PAT00700"
    client.modalities.send("pacs", ids[0])
    assert requests.get(env.pacs.url + f"/instances/{ids[0]}", timeout=30).status_code == 200
    job = client.modalities.send_async("pacs", studies[0].orthanc_id)
    def state() -> str:
        status = job.refresh().info.status
        return str(getattr(status, "value", status))

    wait_for(lambda: state() in ("Success", "Failure") or None, timeout=60, what="job")
    assert state() == "Success"
    client.studies.add_label(studies[0].orthanc_id, "research")
    assert client.studies.get_labels(studies[0].orthanc_id) == ["research"]
