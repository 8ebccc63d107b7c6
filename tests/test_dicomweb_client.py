"""DICOMweb client against Debian's Orthanc with its DICOMweb plugin: search, retrieve into Dolmen, send.

One Orthanc (with the plugin) and one ``dolmen serve`` declaring it in
``[dicomweb.servers.orthanc]`` serve the whole module, with servers that fail in the ways a
user meets: nothing listening, a wrong URL (Orthanc's 404), a server wanting a password
and a web page that is not a DICOMweb service (both a small HTTP server in this module).
"""
from __future__ import annotations

import base64
import io
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest
from bs4 import BeautifulSoup

from dicomnode import demodata
from dicomnode import ids
from tests.conftest import ORTHANC_DICOMWEB_PLUGIN
from tests.conftest import DolmenProcess
from tests.conftest import OrthancProcess
from tests.conftest import free_port
from tests.conftest import make_config_doc
from tests.conftest import start_dolmen
from tests.conftest import start_orthanc
from tests.conftest import wait_for
from tests.conftest import write_toml

pytestmark = pytest.mark.orthanc

REMOTE_PATIENT = 950  # in Orthanc at the start
LOCAL_PATIENT = 960  # in Dolmen at the start, sent to Orthanc
HTMX = {"HX-Request": "true"}
#: The credentials the module's small server asks for under /locked/.
CREDENTIALS = ("dolmen", "s3cret")


def _bytes(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _instances(patient: int) -> list[pydicom.Dataset]:
    return [ds for _, ds in demodata.iter_instances(patients=1, studies=1, series=2, instances=3, size=16,
                                                    first_patient=patient)]


def _soup(text: str) -> BeautifulSoup:
    return BeautifulSoup(text, "html.parser")


class _Remote(BaseHTTPRequestHandler):
    """``/locked/...``: an empty QIDO answer with the right Basic credentials, else 401;
    ``/html/...``: a web page answered with 200, as a portal would."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        if self.path.startswith("/locked/"):
            token = base64.b64encode(":".join(CREDENTIALS).encode()).decode()
            if self.headers.get("Authorization") == f"Basic {token}":
                self._answer(200, "application/dicom+json", b"[]")
            else:
                self._answer(401, "text/plain", b"Authentication required",
                             {"WWW-Authenticate": 'Basic realm="x"'})
        elif self.path.startswith("/html/"):
            self._answer(200, "text/html", b"<html><body><h1>Welcome to the portal</h1></body></html>")
        else:
            self._answer(404, "text/plain", b"Not found")

    def _answer(self, status: int, kind: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dtw-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def remote() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Remote)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def orthanc(folder: Path) -> Iterator[OrthancProcess]:
    if not os.path.exists(ORTHANC_DICOMWEB_PLUGIN):
        pytest.skip("Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
    server = start_orthanc(folder / "orthanc", "ORTHANC", Plugins=[ORTHANC_DICOMWEB_PLUGIN],
                           DicomWeb={"Enable": True, "Root": "/dicom-web/"})
    for ds in _instances(REMOTE_PATIENT):
        assert server.post("/instances", data=_bytes(ds)).status_code == 200
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dolmen_dw(folder: Path, orthanc: OrthancProcess, remote: str) -> Iterator[DolmenProcess]:
    servers = {
        "dicomweb.servers.orthanc": {"url": orthanc.url + "/dicom-web"},
        "dicomweb.servers.closed": {"url": f"http://127.0.0.1:{free_port()}/dicom-web"},
        "dicomweb.servers.wrongpath": {"url": orthanc.url + "/dicomweb"},
        "dicomweb.servers.locked": {"url": remote + "/locked", "username": CREDENTIALS[0],
                                    "password": CREDENTIALS[1]},
        "dicomweb.servers.portal": {"url": remote + "/html"},
    }
    doc = make_config_doc(folder / "dolmen", **servers)
    server = start_dolmen(write_toml(folder / "dolmen.toml", doc), folder / "dolmen.log")
    for ds in _instances(LOCAL_PATIENT):
        body = (b"--B\r\nContent-Type: application/dicom\r\n\r\n" + _bytes(ds) + b"\r\n--B--\r\n")
        r = server.post("/dicom-web/studies", data=body,
                        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=B'})
        assert r.status_code == 200
    yield server
    server.stop()


CONFIGURED = ["closed", "locked", "orthanc", "portal", "wrongpath"]


def _dolmen_count(server: DolmenProcess, study_uid: str) -> int:
    found = server.get("/dicom-web/studies", params={"StudyInstanceUID": study_uid}).json()
    return int(found[0]["00201208"]["Value"][0]) if found else 0


def _orthanc_count(orthanc: OrthancProcess, study_uid: str) -> int:
    found = orthanc.post("/tools/find", json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}})
    return len(found.json())


def _job(server: DolmenProcess, job_id: int) -> dict[str, Any]:
    return server.get(f"/api/jobs/{job_id}").json()


def _ended(server: DolmenProcess, job_id: int) -> dict[str, Any] | None:
    job = _job(server, job_id)
    return job if job["State"] not in ("pending", "running") else None


# -- the JSON endpoints of Orthanc's DICOMweb plugin ----------------------------------------------


def test_servers_are_listed_like_orthanc(dolmen_dw: DolmenProcess, orthanc: OrthancProcess) -> None:
    assert dolmen_dw.get("/dicom-web/servers").json() == CONFIGURED
    expanded = dolmen_dw.get("/dicom-web/servers?expand").json()
    assert expanded["orthanc"]["Url"] == orthanc.url + "/dicom-web"
    assert expanded["locked"]["Username"] == CREDENTIALS[0] and "Password" not in expanded["locked"]
    assert dolmen_dw.get("/dicom-web/servers/orthanc").json() == ["get", "retrieve", "stow"]
    r = dolmen_dw.get("/dicom-web/servers/nowhere")
    assert r.status_code == 404 and "nowhere" in r.json()["error"]["message"]


def test_get_passes_a_qido_search_through(dolmen_dw: DolmenProcess) -> None:
    patient = f"PAT{REMOTE_PATIENT:05d}"
    r = dolmen_dw.post("/dicom-web/servers/orthanc/get",
                       json={"Uri": "/studies", "Arguments": {"PatientID": patient}})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/dicom+json")
    studies = r.json()
    assert len(studies) == 1 and studies[0]["00100020"]["Value"] == [patient]
    # A wildcard reaches Orthanc as a '*' (its plugin does not decode %2A).
    wildcard = f"PAT{REMOTE_PATIENT // 10:04d}*"
    r = dolmen_dw.post("/dicom-web/servers/orthanc/get",
                       json={"Uri": "/studies", "Arguments": {"PatientID": wildcard}})
    assert [s["00100020"]["Value"] for s in r.json()] == [[patient]]
    r = dolmen_dw.post("/dicom-web/servers/orthanc/get", json={"Arguments": {}})
    assert r.status_code == 400 and '"Uri"' in r.json()["error"]["message"]
    r = dolmen_dw.post("/dicom-web/servers/orthanc/get", data="x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]


def test_retrieve_synchronously_waits_for_the_job(dolmen_dw: DolmenProcess) -> None:
    remote = _instances(REMOTE_PATIENT)
    study_uid, series_uid = str(remote[0].StudyInstanceUID), str(remote[0].SeriesInstanceUID)
    r = dolmen_dw.post("/dicom-web/servers/orthanc/retrieve",
                       json={"Resources": [{"Study": study_uid, "Series": series_uid}]})
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["State"] == "success" and job["Type"] == "wado" and job["Done"] == 3 and job["Failed"] == 0
    assert _dolmen_count(dolmen_dw, study_uid) == 3  # in the index when the answer comes
    assert _job(dolmen_dw, job["ID"])["State"] == "success"  # and listed with the other jobs
    got = dolmen_dw.get(f"/dicom-web/studies/{study_uid}/series/{series_uid}/instances/"
                        f"{remote[0].SOPInstanceUID}/metadata").json()[0]
    assert got["00100020"]["Value"] == [f"PAT{REMOTE_PATIENT:05d}"]


def test_retrieve_asynchronously_answers_a_job_id(dolmen_dw: DolmenProcess) -> None:
    remote = _instances(REMOTE_PATIENT)
    r = dolmen_dw.post("/dicom-web/servers/orthanc/retrieve",
                       json={"Resources": [{"Study": str(remote[0].StudyInstanceUID),
                                            "Series": str(remote[3].SeriesInstanceUID),
                                            "Instance": str(remote[3].SOPInstanceUID)}],
                             "Synchronous": False})
    assert r.status_code == 200
    job = r.json()
    assert set(job) == {"ID", "Path"} and job["Path"] == f"/api/jobs/{job['ID']}"
    ended = wait_for(lambda: _ended(dolmen_dw, job["ID"]), timeout=60, what="the WADO-RS job")
    assert ended["State"] == "success" and ended["Done"] == 1


def test_send_synchronously_and_as_a_job(dolmen_dw: DolmenProcess, orthanc: OrthancProcess) -> None:
    local = _instances(LOCAL_PATIENT)
    study_uid = str(local[0].StudyInstanceUID)
    series_id = ids.series_id(local[0].PatientID, study_uid, str(local[0].SeriesInstanceUID))
    r = dolmen_dw.post("/dicom-web/servers/orthanc/stow", json={"Resources": [series_id]})
    assert r.status_code == 200, r.text
    assert r.json()["State"] == "success" and r.json()["Done"] == 3 and r.json()["Type"] == "stow"
    assert _orthanc_count(orthanc, study_uid) == 3
    study_id = ids.study_id(local[0].PatientID, study_uid)
    r = dolmen_dw.post("/dicom-web/servers/orthanc/stow",
                       json={"Resources": [study_id], "Synchronous": False})
    job = r.json()
    ended = wait_for(lambda: _ended(dolmen_dw, job["ID"]), timeout=60, what="the STOW-RS job")
    assert ended["State"] == "success" and ended["Done"] == 6
    assert _orthanc_count(orthanc, study_uid) == 6
    sent = orthanc.get(f"/dicom-web/studies/{study_uid}/series/{local[0].SeriesInstanceUID}/instances/"
                       f"{local[0].SOPInstanceUID}/metadata").json()[0]
    assert sent["00100010"]["Value"][0]["Alphabetic"] == str(local[0].PatientName)


def test_json_errors_say_what_went_wrong(dolmen_dw: DolmenProcess) -> None:
    r = dolmen_dw.post("/dicom-web/servers/orthanc/retrieve", json={"Resources": [{"Study": "1.2.3.999"}]})
    assert r.status_code == 502
    error = r.json()["error"]
    assert "orthanc answered 404" in error["message"] and "does not have" in error["message"]
    assert _job(dolmen_dw, error["job"])["State"] == "failure"
    r = dolmen_dw.post("/dicom-web/servers/closed/retrieve", json={"Resources": [{"Study": "1.2.3"}]})
    assert r.status_code == 502 and "Cannot connect to closed" in r.json()["error"]["message"]
    r = dolmen_dw.post("/dicom-web/servers/orthanc/stow", json={"Resources": ["nope"]})
    assert r.status_code == 404 and "'nope'" in r.json()["error"]["message"]
    r = dolmen_dw.post("/dicom-web/servers/orthanc/retrieve", json={"Resources": [{"Series": "1.2"}]})
    assert r.status_code == 400 and "Study" in r.json()["error"]["message"]
    r = dolmen_dw.post("/dicom-web/servers/orthanc/retrieve", json={"Resources": [{"Study": "1.2/../x"}]})
    assert r.status_code == 400 and "not a UID" in r.json()["error"]["message"]
    r = dolmen_dw.post("/dicom-web/servers/orthanc/stow", json={"Resources": []})
    assert r.status_code == 400 and "Resources" in r.json()["error"]["message"]


# -- the pages --------------------------------------------------------------------------------------


def test_search_page_drills_down_and_says_what_is_here(dolmen_dw: DolmenProcess) -> None:
    remote = _instances(REMOTE_PATIENT)
    family = str(remote[0].PatientName).split("^")[0]
    page = dolmen_dw.get("/dicomweb/servers/orthanc/search", params={"PatientName": f"{family.lower()}*"})
    assert page.status_code == 200
    rows = _soup(page.text).select("table.dw-study tbody tr")
    names = [r.select_one(".qr-name").get_text() for r in rows]
    assert names and all(n.startswith(family) for n in names)
    study_row = [r for r in rows if r.select_one("input[name=Study]")["value"] == remote[0].StudyInstanceUID]
    assert len(study_row) == 1
    drill = study_row[0].select_one("a.drill")["href"]
    series = _soup(dolmen_dw.get(drill).text)
    series_rows = series.select("table.dw-series tbody tr")
    assert len(series_rows) == 2
    assert series.select_one(".qr-crumbs .trail").get_text().startswith(family)
    instances = _soup(dolmen_dw.get(series_rows[0].select_one("a.drill")["href"]).text)
    instance_rows = instances.select("table.dw-instance tbody tr")
    assert len(instance_rows) == 3
    assert {r.select_one("input[name=Instance]")["value"] for r in instance_rows} <= {
        str(d.SOPInstanceUID) for d in remote}
    # htmx gets the results alone.
    partial = dolmen_dw.get("/dicomweb/servers/orthanc/search", params={"PatientName": f"{family}*"},
                            headers=HTMX)
    assert "<form" not in partial.text.split("<table")[0] and _soup(partial.text).select("table.dw-study")


def test_retrieve_from_the_page_links_to_the_local_study(dolmen_dw: DolmenProcess) -> None:
    remote = _instances(REMOTE_PATIENT)
    study_uid = str(remote[0].StudyInstanceUID)
    r = dolmen_dw.post("/dicomweb/servers/orthanc/retrieve", data={"Study": study_uid}, headers=HTMX)
    assert r.status_code == 200
    job_id = int(_soup(r.text).select_one(".job-inline")["data-job"])
    wait_for(lambda: _ended(dolmen_dw, job_id), timeout=60, what="the WADO-RS job")
    fragment = _soup(dolmen_dw.get(f"/jobs/{job_id}/progress", headers=HTMX).text)
    assert fragment.select_one(".job-inline")["data-state"] == "success"
    link = fragment.select_one("a.job-local-link")["href"]
    assert link == f"/studies/{ids.study_id(remote[0].PatientID, study_uid)}"
    assert _dolmen_count(dolmen_dw, study_uid) == 6
    # The search now says the study is here, and links to it.
    page = _soup(dolmen_dw.get("/dicomweb/servers/orthanc/search",
                               params={"PatientID": remote[0].PatientID}).text)
    badge = page.select_one("tr.qr-row .here")
    assert badge.get_text().strip() == "complete · 6" and badge["href"] == link
    # Without htmx the button leads to the job's page.
    r = dolmen_dw.post("/dicomweb/servers/orthanc/retrieve", data={"Study": study_uid}, allow_redirects=False)
    assert r.status_code == 303 and "/jobs/" in r.headers["Location"]
    assert dolmen_dw.post("/dicomweb/servers/orthanc/retrieve", data={"Study": "x y"}).status_code == 400


def test_every_resource_page_can_send_by_stow(dolmen_dw: DolmenProcess, orthanc: OrthancProcess) -> None:
    local = _instances(LOCAL_PATIENT)
    patient_id = ids.patient_id(local[0].PatientID)
    study_id = ids.study_id(local[0].PatientID, str(local[0].StudyInstanceUID))
    uids = (str(local[0].StudyInstanceUID), str(local[0].SeriesInstanceUID), str(local[0].SOPInstanceUID))
    series_id = ids.series_id(local[0].PatientID, *uids[:2])
    instance_id = ids.instance_id(local[0].PatientID, *uids)
    for path, level, public_id in (("/patients/", "patient", patient_id), ("/studies/", "study", study_id),
                                   ("/series/", "series", series_id),
                                   ("/instances/", "instance", instance_id)):
        form = _soup(dolmen_dw.get(path + public_id).text).select_one(".send-dicomweb form")
        assert form is not None, path
        assert form.select_one("input[name=level]")["value"] == level
        assert form.select_one("input[name=resource_id]")["value"] == public_id
        assert [o["value"] for o in form.select("select[name=server] option")] == CONFIGURED
    r = dolmen_dw.post("/dicomweb/send", headers=HTMX,
                       data={"level": "instance", "resource_id": instance_id, "server": "orthanc"})
    job_id = int(_soup(r.text).select_one(".job-inline")["data-job"])
    ended = wait_for(lambda: _ended(dolmen_dw, job_id), timeout=60, what="the STOW-RS job")
    assert ended["State"] == "success" and ended["Done"] == 1
    assert "instance" in ended["Description"] and ended["Target"] == "orthanc"
    fragment = _soup(dolmen_dw.get(f"/jobs/{job_id}/progress", headers=HTMX).text)
    assert fragment.select_one("a.job-local-link")["href"] == f"/instances/{instance_id}"
    assert orthanc.get(f"/dicom-web/studies/{local[0].StudyInstanceUID}/series/{local[0].SeriesInstanceUID}/"
                       f"instances/{local[0].SOPInstanceUID}/metadata").status_code == 200
    r = dolmen_dw.post("/dicomweb/send", data={"level": "study", "resource_id": "nope", "server": "orthanc"})
    assert r.status_code == 404
    r = dolmen_dw.post("/dicomweb/send",
                       data={"level": "study", "resource_id": study_id, "server": "nowhere"})
    assert r.status_code == 404 and "nowhere" in r.text


@pytest.mark.parametrize(("server", "words"), [
    ("closed", "Cannot connect to closed"),
    ("wrongpath", "answered 404 Not Found to GET /studies (check the server's URL)"),
    ("portal", "did not answer the search with DICOM JSON (it sent text/html"),
])
def test_a_failing_server_is_explained_in_the_page(dolmen_dw: DolmenProcess, server: str, words: str) -> None:
    page = _soup(dolmen_dw.get(f"/dicomweb/servers/{server}/search", params={"run": "1"}).text)
    assert words in page.select_one(".alert-error").get_text()
    test = _soup(dolmen_dw.post(f"/dicomweb/servers/{server}/test", headers=HTMX).text)
    assert f"{server} does not answer" in test.select_one(".alert-error").get_text()
    assert words in test.select_one(".alert-error").get_text()


def test_credentials_are_sent_and_a_401_is_explained(dolmen_dw: DolmenProcess, remote: str) -> None:
    test = _soup(dolmen_dw.post("/dicomweb/servers/locked/test", headers=HTMX).text)
    assert "locked answers" in test.select_one(".alert-ok").get_text()
    r = dolmen_dw.post("/dicomweb/servers", data={"name": "nopass", "url": remote + "/locked"},
                       allow_redirects=False)
    assert r.status_code == 303
    try:
        page = _soup(dolmen_dw.get("/dicomweb/servers/nopass/search", params={"run": "1"}).text)
        assert "answered 401 Unauthorized to GET /studies (check the user name and password)" in \
            page.select_one(".alert-error").get_text()
        # Editing with the password makes it answer; an empty password field keeps it.
        edit = {"name": "nopass", "url": remote + "/locked", "username": CREDENTIALS[0], "headers": ""}
        r = dolmen_dw.post("/dicomweb/servers/nopass/edit", data={**edit, "password": CREDENTIALS[1]},
                           allow_redirects=False)
        assert r.status_code == 303
        r = dolmen_dw.post("/dicomweb/servers/nopass/edit", data={**edit, "password": ""},
                           allow_redirects=False)
        assert r.status_code == 303
        form = _soup(dolmen_dw.get("/dicomweb/servers/nopass/edit").text)
        assert form.select_one("input[name=password]")["value"] == ""  # never shown back
        test = _soup(dolmen_dw.post("/dicomweb/servers/nopass/test", headers=HTMX).text)
        assert test.select_one(".alert-ok") is not None
    finally:
        dolmen_dw.post("/dicomweb/servers/nopass/delete")


def test_page_managed_servers(dolmen_dw: DolmenProcess, orthanc: OrthancProcess) -> None:
    r = dolmen_dw.post("/dicomweb/servers", data={"name": "again", "url": orthanc.url + "/dicom-web",
                                                  "headers": "X-Test: 1"}, allow_redirects=False)
    assert r.status_code == 303
    page = _soup(dolmen_dw.get("/dicomweb/servers").text)
    assert [tr["data-server"] for tr in page.select("tr[data-server]")] == [*CONFIGURED, "again"]
    again = page.select_one('tr[data-server="again"]')
    assert again.select_one('a[href$="/edit"]') and again.select_one('form[action$="/delete"]')
    assert again.select_one(".chip").get_text() == "X-Test"  # header names, never their values
    configured = page.select_one('tr[data-server="orthanc"]')
    assert configured.select_one('a[href$="/edit"]') is None and "config file" in configured.get_text()
    test = dolmen_dw.post("/dicomweb/servers/again/test")
    assert "answers" in _soup(test.text).select_one(".alert-ok").get_text()
    bad = dolmen_dw.post("/dicomweb/servers",
                         data={"name": "bad name", "url": "ftp://x", "headers": "X Y: z"})
    assert bad.status_code == 400
    errors = {e["data-field"] for e in _soup(bad.text).select(".field-error")}
    assert errors == {"name", "url", "headers"}
    taken = dolmen_dw.post("/dicomweb/servers", data={"name": "orthanc", "url": orthanc.url})
    assert taken.status_code == 400 and "exists already" in _soup(taken.text).select_one(".field-error").text
    r = dolmen_dw.get("/dicomweb/servers/orthanc/edit")
    assert r.status_code == 400 and "configuration file" in r.text
    assert dolmen_dw.post("/dicomweb/servers/orthanc/delete").status_code == 400
    assert dolmen_dw.post("/dicomweb/servers/again/delete", allow_redirects=False).status_code == 303
    assert dolmen_dw.get("/dicom-web/servers").json() == CONFIGURED
    assert dolmen_dw.post("/dicomweb/servers/again/delete").status_code == 404
