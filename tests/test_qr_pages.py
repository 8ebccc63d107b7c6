"""The Query/Retrieve, modalities and jobs pages against a real `dolmen serve`, Orthanc and storescp."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from bs4 import BeautifulSoup

from dicomnode import demodata
from tests.conftest import DolmenProcess
from tests.conftest import OrthancProcess
from tests.conftest import free_port
from tests.conftest import make_config_doc
from tests.conftest import start_dolmen
from tests.conftest import start_orthanc
from tests.conftest import wait_for
from tests.conftest import write_toml
from webapp.search import date_range

pytestmark = pytest.mark.orthanc
HX = {"HX-Request": "true"}


@dataclass
class Env:
    dolmen: DolmenProcess
    pacs: OrthancProcess
    lost: OrthancProcess | None
    scp_dir: Path


@contextlib.contextmanager
def qr_environment(dcmtk: Any, *, lost: bool = True) -> Iterator[Env]:
    """Dolmen declaring: Orthanc ``pacs`` (which declares Dolmen), storescp ``scp``, ``closed``
    (nothing listens) and, with ``lost``, Orthanc ``lost`` (which has Dolmen at a wrong port).
    Both Orthancs hold 2 patients × 1 study × 2 series × 3 instances."""
    base = Path(tempfile.mkdtemp(prefix="dq-", dir="/tmp"))
    doc = make_config_doc(base / "data")
    us = ["DOLMEN", "127.0.0.1", doc["dicom"]["port"]]
    orthancs = [start_orthanc(base / "pacs", "PACS", DicomModalities={"dolmen": us})]
    if lost:
        wrong = ["DOLMEN", "127.0.0.1", free_port()]
        orthancs.append(start_orthanc(base / "lost", "LOST", DicomModalities={"dolmen": wrong}))
    for path in demodata.write(base / "demo", patients=2, studies=1, series=2, instances=3, size=32):
        for orthanc in orthancs:
            orthanc.post("/instances", data=path.read_bytes())
    scp_dir = base / "scp"
    scp_dir.mkdir()
    scp_port = free_port()
    storescp = dcmtk.popen("storescp", "-aet", "STORESCP", "-od", str(scp_dir), str(scp_port))
    wait_for(
        lambda: socket.create_connection(("127.0.0.1", scp_port), timeout=1).close() or True, what="storescp"
    )
    for orthanc in orthancs:
        doc[f"modalities.{orthanc.aet.lower()}"] = {
            "aet": orthanc.aet,
            "host": "127.0.0.1",
            "port": orthanc.dicom_port,
        }
    doc["modalities.scp"] = {"aet": "STORESCP", "host": "127.0.0.1", "port": scp_port}
    doc["modalities.closed"] = {"aet": "CLOSED", "host": "127.0.0.1", "port": free_port()}
    server = start_dolmen(write_toml(base / "dolmen.toml", doc), base / "dolmen.log")
    try:
        yield Env(server, orthancs[0], orthancs[1] if lost else None, scp_dir)
    finally:
        for process in (server.proc, storescp, *(o.proc for o in orthancs)):  # stop them side by side
            process.terminate()
        server.stop()
        storescp.wait(10)
        for orthanc in orthancs:
            orthanc.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def env(dcmtk: Any) -> Iterator[Env]:
    with qr_environment(dcmtk) as environment:
        yield environment


def soup(response: requests.Response) -> BeautifulSoup:
    return BeautifulSoup(response.text, "html.parser")


def wait_job(env: Env, job_id: int, timeout: float = 60) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        job = env.dolmen.get(f"/api/jobs/{job_id}").json()
        return job if job["State"] in ("success", "failure", "cancelled") else None

    return wait_for(ended, timeout=timeout, what=f"job {job_id} to end")


def job_id_of(response: requests.Response) -> int:
    assert response.status_code == 303, response.text
    return int(response.headers["Location"].rstrip("/").rsplit("/", 1)[1])


def retrieve(env: Env, modality: str, level: str, method: str, **fields: str) -> dict[str, Any]:
    """Post the retrieve dialog (no htmx) and wait for the job it starts."""
    data = {"modality": modality, "level": level, "method": method, **fields}
    return wait_job(env, job_id_of(env.dolmen.post("/query/retrieve", allow_redirects=False, data=data)))


def study_uid(env: Env, patient_id: str) -> str:
    found = env.pacs.post(
        "/tools/find", json={"Level": "Study", "Query": {"PatientID": patient_id}, "Expand": True}
    )
    return str(found.json()[0]["MainDicomTags"]["StudyInstanceUID"])


# -- modalities ---------------------------------------------------------------------------


def test_modalities_lists_config_nodes_read_only(env: Env) -> None:
    page = soup(env.dolmen.get("/modalities"))
    row = page.select_one('tr[data-modality="pacs"]')
    assert row is not None and row["data-origin"] == "config"
    assert row.select_one("code").text == "PACS"
    assert not row.select('a[href$="/edit"]') and not row.select('form[action$="/delete"]')
    assert row.select_one('form[action="/modalities/pacs/echo"]') is not None
    assert page.select_one('a[href="/modalities/new"]') is not None


def test_add_edit_and_delete_a_modality(env: Env) -> None:
    d = env.dolmen
    bad = d.post("/modalities/new", data={"name": "pacs", "aet": "A\\B", "host": "h", "port": "0"})
    assert bad.status_code == 400
    errors = {e["data-field"]: e.text for e in soup(bad).select(".field-error")}
    assert errors["name"] == "a modality called 'pacs' exists already"
    assert errors["aet"] == "contains a backslash or a control character"
    assert "between 1 and 65535" in errors["port"]
    taken = d.post("/modalities/new", data={"name": "ct9", "aet": "PACS", "host": "h", "port": "104"})
    assert "already the AE title of 'pacs'" in soup(taken).select_one('.field-error[data-field="aet"]').text

    created = d.post(
        "/modalities/new",
        data={
            "name": "ct9",
            "aet": "CT9",
            "host": "10.0.0.9",
            "port": "1104",
            "allow": ["echo", "store"],
            "description": "CT in room 9",
        },
        allow_redirects=False,
    )
    assert created.status_code == 303 and created.headers["Location"].endswith("/modalities")
    row = soup(d.get("/modalities")).select_one('tr[data-modality="ct9"]')
    assert row["data-origin"] == "page"
    assert [c.text for c in row.select(".chip")] == ["echo", "store"]
    form = soup(d.get("/modalities/ct9/edit"))
    assert form.select_one('input[name="port"]')["value"] == "1104"
    assert [i["value"] for i in form.select('input[name="allow"][checked]')] == ["echo", "store"]
    edited = d.post(
        "/modalities/ct9/edit",
        data={
            "name": "ct9",
            "aet": "CT9",
            "host": "10.0.0.9",
            "port": "2104",
            "allow": ["echo"],
            "fallback_get": "1",
        },
        allow_redirects=False,
    )
    assert edited.status_code == 303
    row = soup(d.get("/modalities")).select_one('tr[data-modality="ct9"]')
    assert row.select("td.num")[0].text == "2104" and row.select_one(".chip-note") is not None
    assert d.post("/modalities/ct9/delete", allow_redirects=False).status_code == 303
    assert soup(d.get("/modalities")).select_one('tr[data-modality="ct9"]') is None
    refused = d.post("/modalities/pacs/delete")
    assert refused.status_code == 400 and "declared in the configuration file" in refused.text


def test_new_modality_form_is_prefilled_from_the_query_string(env: Env) -> None:
    page = soup(env.dolmen.get("/modalities/new?aet=CT%20ROOM2&host=10.1.2.3&port=11112"))
    assert page.select_one('input[name="aet"]')["value"] == "CT ROOM2"
    assert page.select_one('input[name="host"]')["value"] == "10.1.2.3"
    assert page.select_one('input[name="port"]')["value"] == "11112"
    assert page.select_one('input[name="name"]')["value"] == "ct-room2"


def test_echo_answers_within_the_page(env: Env) -> None:
    ok = soup(env.dolmen.post("/modalities/pacs/echo", headers=HX))
    assert ok.select_one(".echo-ok").text.startswith("Echo OK · ") and ok.select_one(
        ".echo-ok"
    ).text.endswith(" ms")
    refused = soup(env.dolmen.post("/modalities/closed/echo", headers=HX))
    assert "Connection refused by 127.0.0.1" in refused.select_one(".echo-error").text
    assert refused.select_one("h1") is None  # the fragment alone
    page = soup(env.dolmen.post("/modalities/pacs/echo"))
    assert page.select_one("h1").text.startswith("C-ECHO pacs") and page.select_one(".echo-ok")
    from_query = soup(env.dolmen.post("/query/echo", data={"modality": "pacs"}, headers=HX))
    assert from_query.select_one(".echo-ok") is not None


def test_two_way_connectivity_test(env: Env) -> None:
    good = soup(env.dolmen.post("/modalities/pacs/test", headers=HX))
    assert [s.select_one("strong").text for s in good.select(".step-ok")] == [
        "C-ECHO",
        "C-FIND",
        "C-MOVE to us",
    ]
    assert good.select_one(".alert-ok") is not None
    bad = soup(env.dolmen.post("/modalities/lost/test", headers=HX))
    assert len(bad.select(".step-ok")) == 2
    failed = bad.select_one(".step-failed")
    assert failed.select_one("strong").text == "C-MOVE to us"
    message = failed.select_one(".step-message").text
    assert (
        f"declare DOLMEN at 127.0.0.1:{env.dolmen.dicom_port} in its configuration, or retrieve with C-GET"
        in message
    )
    closed = soup(env.dolmen.post("/modalities/closed/test", headers=HX))
    assert len(closed.select(".step-failed")) == 1 and len(closed.select(".step-skipped")) == 2


# -- Query/Retrieve -----------------------------------------------------------------------


def test_query_studies_and_drill_down(env: Env) -> None:
    page = soup(env.dolmen.get("/query?modality=pacs&level=study&PatientName=MULLER*"))
    rows = page.select("table.qr-study tr.qr-row")
    assert len(rows) == 1
    cells = [td.text.strip() for td in rows[0].select("td")]
    # the name as people write it, the DICOM value in the title
    assert cells[0] == "MULLER, ANNA" and cells[1] == "PAT00000" and cells[7] == "6"
    assert rows[0].select("td")[0]["title"] == "MULLER^ANNA"
    sent = {
        tr.select("td")[1].text: tr.select("td")[3].text
        for tr in page.select("details.transcript > table.elements tbody tr")
    }
    assert sent["PatientName"] == "MULLER*" and sent["QueryRetrieveLevel"] == "STUDY"

    series_url = rows[0].select_one("a.drill")["href"]
    series = soup(env.dolmen.get(series_url))
    assert series.select_one('select[name="level"] option[selected]')["value"] == "series"
    assert "MULLER, ANNA" in series.select_one(".qr-crumbs .trail").text
    series_rows = series.select("table.qr-series tr.qr-row")
    assert len(series_rows) == 2
    instances = soup(env.dolmen.get(series_rows[0].select_one("a.drill")["href"]))
    assert len(instances.select("table.qr-instance tr.qr-row")) == 3
    assert "Image Storage" in instances.select_one("table.qr-instance tr.qr-row td:nth-of-type(2)").text

    patients = soup(env.dolmen.get("/query?modality=pacs&level=patient"))
    assert len(patients.select("table.qr-patient tr.qr-row")) == 2
    fragment = soup(env.dolmen.get("/query?modality=pacs&level=patient", headers=HX))
    assert fragment.select_one("form.qr-form") is None and len(fragment.select("tr.qr-row")) == 2


def test_a_failing_query_says_why_in_the_page(env: Env) -> None:
    page = soup(env.dolmen.get("/query?modality=closed&level=study"))
    assert "Connection refused by 127.0.0.1" in page.select_one(".qr-error").text
    assert page.select_one("form.qr-form") is not None


def test_date_presets_and_ranges() -> None:
    today = dt.date(2024, 3, 10)
    assert date_range("today", "", "", today) == "20240310"
    assert date_range("yesterday", "", "", today) == "20240309"
    assert date_range("week", "", "", today) == "20240304-20240310"
    assert date_range("month", "", "", today) == "20240210-20240310"
    assert date_range("custom", "2024-01-01", "", today) == "20240101-"
    assert date_range("custom", "", "2024-01-31", today) == "-20240131"
    assert date_range("", "", "", today) == ""


def test_date_filter_reaches_the_remote(env: Env) -> None:
    date = pydicom.dcmread(
        next((env.dolmen.data.parent / "demo").rglob("*.dcm")), stop_before_pixels=True
    ).StudyDate
    iso = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    page = soup(
        env.dolmen.get(f"/query?modality=pacs&level=study&preset=custom&date_from={iso}&date_to={iso}")
    )
    assert {tr.select("td")[2].text for tr in page.select("tr.qr-row")} == {iso}
    sent = {
        tr.select("td")[1].text: tr.select("td")[3].text
        for tr in page.select("details.transcript > table.elements tbody tr")
    }
    assert sent["StudyDate"] == date


def here(env: Env, uid: str) -> Any:
    page = soup(env.dolmen.get(f"/query?modality=pacs&level=study&StudyInstanceUID={uid}&PatientID=PAT00001"))
    return page.select_one("tr.qr-row .here")


def test_retrieve_by_move_then_missing_only_by_get(env: Env) -> None:
    uid = study_uid(env, "PAT00001")
    # The connectivity test may have moved one instance of it already.
    assert here(env, uid).text.strip() in ("not here", "partial · 1 of 6")
    series = env.pacs.get(
        f"/studies/{env.pacs.post('/tools/lookup', data=uid).json()[0]['ID']}/series"
    ).json()
    series_uid = series[0]["MainDicomTags"]["SeriesInstanceUID"]
    job = retrieve(
        env,
        "pacs",
        "series",
        "move",
        StudyInstanceUID=uid,
        SeriesInstanceUID=series_uid,
        destination="DOLMEN",
        description="series 1",
    )
    assert job["State"] == "success" and job["Type"] == "move" and job["Done"] == 3 and job["Progress"] == 100
    badge = here(env, uid)
    assert "here-partial" in badge["class"] and badge.text.strip() in ("partial · 3 of 6", "partial · 4 of 6")
    assert badge["href"].startswith("/studies/")
    missing = 6 - int(badge.text.split("·")[1].split()[0])

    job = retrieve(env, "pacs", "study", "get", StudyInstanceUID=uid, missing_only="1")
    assert job["State"] == "success" and job["Type"] == "get" and job["Total"] == missing == job["Done"]
    assert job["Bytes"] > 0
    assert here(env, uid).text.strip() == "complete · 6"
    detail = soup(env.dolmen.get(f"/jobs/{job['ID']}"))
    assert detail.select_one(".job-local a")["href"].startswith("/studies/")
    assert re.fullmatch(r"Study \d{4}-\d\d-\d\d .*", detail.select_one(".job-local a").text)  # dashed date
    requests_sent = [li for li in detail.select(".transcript-list li") if "C-GET" in li.text]
    assert requests_sent and "IMAGE" in requests_sent[0].text


def test_retrieve_with_htmx_shows_live_progress_that_stops(env: Env) -> None:
    uid = study_uid(env, "PAT00000")
    response = env.dolmen.post(
        "/query/retrieve",
        headers=HX,
        data={"modality": "pacs", "level": "study", "StudyInstanceUID": uid, "method": "get"},
    )
    fragment = soup(response).select_one(".job-inline")
    job_id = int(fragment["data-job"])
    if fragment["data-state"] in ("pending", "running"):
        assert fragment["hx-trigger"] == "every 1s" and fragment["hx-get"] == f"/jobs/{job_id}/progress"
    assert wait_job(env, job_id)["State"] == "success"
    done = soup(env.dolmen.get(f"/jobs/{job_id}/progress", headers=HX)).select_one(".job-inline")
    assert done["data-state"] == "success" and not done.has_attr("hx-trigger")
    assert done.select_one("progress")["value"] == "100"
    assert done.select_one("a.job-local-link")["href"].startswith("/studies/")
    detail = soup(env.dolmen.get(f"/jobs/{job_id}", headers=HX)).select_one("#job-detail")
    assert not detail.has_attr("hx-trigger")
    assert env.dolmen.get(f"/jobs/{job_id}/progress", allow_redirects=False).status_code == 302


def test_move_to_a_node_that_cannot_reach_us_fails_with_the_fix(env: Env) -> None:
    uid = study_uid(env, "PAT00000")
    job = retrieve(env, "lost", "study", "move", StudyInstanceUID=uid)
    assert job["State"] == "failure"
    assert f"declare DOLMEN at 127.0.0.1:{env.dolmen.dicom_port} in its configuration" in job["Error"]
    page = soup(env.dolmen.get(f"/jobs/{job['ID']}"))
    assert "retrieve with C-GET" in page.select_one(".job-error").text
    assert page.select_one(f'form[action="/jobs/{job["ID"]}/retry"]') is not None


def test_a_modality_set_to_fall_back_retrieves_by_get_when_move_fails(env: Env) -> None:
    assert env.lost is not None
    added = env.dolmen.post(
        "/modalities/new",
        allow_redirects=False,
        data={
            "name": "lost-get",
            "aet": "LOST2",
            "host": "127.0.0.1",
            "port": str(env.lost.dicom_port),
            "allow": ["echo"],
            "fallback_get": "1",
        },
    )
    assert added.status_code == 303
    try:
        uid = study_uid(env, "PAT00000")
        job = retrieve(env, "lost-get", "study", "move", StudyInstanceUID=uid)
        assert job["State"] == "success" and job["Type"] == "move" and job["Done"] == 6
        details = env.dolmen.get(f"/api/jobs/{job['ID']}").json()["Details"]
        assert any("falling back to C-GET as set for lost-get" in d.get("message", "") for d in details)
    finally:
        env.dolmen.post("/modalities/lost-get/delete")


# -- send and jobs ------------------------------------------------------------------------


def local_study(env: Env) -> str:
    """The public id of PAT00001's study, retrieved first if a test above has not done it."""
    from dicomnode import ids

    uid = study_uid(env, "PAT00001")
    assert retrieve(env, "pacs", "study", "get", StudyInstanceUID=uid, missing_only="1")["State"] == "success"
    return ids.study_id("PAT00001", uid)


def test_send_a_study_to_storescp(env: Env) -> None:
    study_id = local_study(env)
    response = env.dolmen.post(
        "/jobs/send",
        allow_redirects=False,
        data={"modality": "scp", "level": "study", "resource_id": study_id},
    )
    job = wait_job(env, job_id_of(response))
    assert job["State"] == "success" and job["Type"] == "send" and job["Target"] == "scp", str(job)
    assert job["Description"].startswith("study SCHMIDT^BRUNO ")
    assert job["Progress"] == 100 and job["Done"] == job["Total"] > 0 and job["Bytes"] > 0
    assert len(list(env.scp_dir.iterdir())) >= job["Total"]
    listing = soup(env.dolmen.get("/jobs"))
    row = listing.select_one(f'tr[data-job="{job["ID"]}"]')
    assert row.select_one(".job-state").text == "success"
    assert row.select_one("progress")["value"] == "100"


def test_a_failed_send_lists_why_and_can_be_retried(env: Env) -> None:
    study_id = local_study(env)
    response = env.dolmen.post(
        "/jobs/send", headers=HX, data={"modality": "closed", "level": "study", "resource_id": study_id}
    )
    job_id = int(soup(response).select_one(".job-inline")["data-job"])
    job = wait_job(env, job_id)
    assert job["State"] == "failure" and "Connection refused" in job["Error"]
    ended = env.dolmen.post(f"/jobs/{job_id}/cancel")
    assert ended.status_code == 400 and "has already ended" in ended.text
    again = env.dolmen.post(f"/jobs/{job_id}/retry", allow_redirects=False)
    new_id = job_id_of(again)
    assert wait_job(env, new_id)["Parameters"]["retry_of"] == job_id
    failed = soup(env.dolmen.get("/jobs?state=failure"))
    assert failed.select_one(f'tr[data-job="{job_id}"]') is not None
    assert all(r["data-state"] == "failure" for r in failed.select("tr[data-job]"))


def test_sending_an_unknown_resource_is_refused(env: Env) -> None:
    response = env.dolmen.post(
        "/jobs/send", data={"modality": "scp", "level": "study", "resource_id": "nope"}
    )
    assert response.status_code == 404 and "No study nope here" in response.text


def test_send_form_partial(app: Any) -> None:
    from flask import render_template_string

    from dicomnode import peers

    with app.test_request_context("/"):
        peers.MODALITIES.save(
            app.config["DOLMEN"],
            {
                "name": "ct1",
                "aet": "CT1",
                "host": "10.0.0.1",
                "port": 104,
                "allow": ["echo"],
                "description": "",
                "fallback_get": False,
            },
        )
        html = render_template_string('{% include "qr/_send.html" %}', level="series", resource_id="abc-123")
    form = BeautifulSoup(html, "html.parser").select_one("form.send-form")
    assert form["action"] == "/jobs/send" and form["method"] == "post" and form["hx-post"] == "/jobs/send"
    assert form.select_one('input[name="level"]')["value"] == "series"
    assert form.select_one('input[name="resource_id"]')["value"] == "abc-123"
    assert [o["value"] for o in form.select('select[name="modality"] option')] == ["ct1"]


def test_jobs_page_without_sidecar_and_empty(client: Any) -> None:
    page = BeautifulSoup(client.get("/jobs").text, "html.parser")
    assert page.select_one("#jobs-list .empty") is not None and not page.select_one("#jobs-list").has_attr(
        "hx-trigger"
    )
    assert client.get("/jobs/12345").status_code == 404
    down = client.post("/jobs/send", data={"modality": "x", "level": "study", "resource_id": "y"})
    assert down.status_code == 503 and "DICOM service is unavailable" in down.text
