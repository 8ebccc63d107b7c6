"""Hostile HTTP (issue 7): stored XSS, CSP, body limits, ZIP uploads, path traversal, CSRF, auth.

Routes are enumerated from the app's ``url_map``, so a new route is covered by the XSS,
traversal, CSRF and authentication checks without editing this file; :func:`fill` knows how
to give each argument name a real value (add a name there when a route brings a new one).

The body-limit and ZIP cases run against a real ``dolmen serve`` (waitress in front) and
end with the survival contract of :mod:`tests.hostile`.
"""
from __future__ import annotations

import gzip
import io
import json
import re
import socket
import struct
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from bs4 import BeautifulSoup
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from werkzeug.routing import Rule
from werkzeug.security import generate_password_hash

from dicomnode import config
from dicomnode import demodata
from dicomnode.archive import index
from dicomnode.archive.index import AssociationEvent
from dicomnode.archive.index import DicomwebServer
from dicomnode.archive.index import Instance
from dicomnode.archive.index import Job
from dicomnode.archive.index import Modality
from dicomnode.archive.ingest import Source
from tests.conftest import BROWSER
from tests.conftest import browser_client
from tests.conftest import free_port
from tests.conftest import make_config_doc
from tests.hostile import Survival
from tests.hostile import assert_no_traceback
from tests.hostile import encode
from tests.hostile import hostile_sections
from tests.hostile import small_instance
from tests.test_upload import make_zip
from webapp import create_app
from webapp.services import services

#: Stored XSS payloads; each fits the element it is written to (AE titles: 16 characters).
XSS = "<script>alert(1)</script>"
XSS_ATTR = '"><img src=x onerror=alert(2)>'
XSS_SVG = "<svg onload=alert(3)>"
XSS_AE = "<svg onload=x>"
XSS_URL = "javascript:alert(4)"
PAYLOADS = (XSS, XSS_ATTR, XSS_SVG, XSS_URL, "{{7*7}}", "</textarea><b>")
#: Markers that show a payload was interpreted rather than shown as text.
ACTIVE_TAGS = ("svg", "iframe", "object", "embed", "textarea", "b")
PASSWD = "root:x:0:0"
BASIC_ALICE = {"Authorization": "Basic YWxpY2U6c2VjcmV0"}  # alice:secret


# --------------------------------------------------------------------------- hostile content


def hostile_dataset() -> Dataset:
    """A CT instance with a payload in every text element a page may show."""
    ds = demodata.make_instance(900, 0, 0, 0, size=16)
    ds.PatientName = XSS
    ds.PatientID = XSS_ATTR
    ds.StudyDescription = XSS_SVG
    ds.SeriesDescription = XSS_ATTR
    ds.AccessionNumber = "<b>acc</b>"
    ds.ReferringPhysicianName = XSS_SVG
    ds.StudyID = "<b>1</b>"
    ds.BodyPartExamined = "<b>HEAD</b>"
    ds.InstitutionName = XSS_URL
    ds.Manufacturer = "{{7*7}}"
    ds.StationName = "</textarea><b>"
    ds.OperatorsName = XSS
    ds.ProtocolName = XSS_ATTR
    ds.ImageComments = XSS + XSS_ATTR
    ds.PatientComments = XSS_SVG
    ds.add_new(0x00290010, "LO", XSS)  # a private creator
    ds.add_new(0x00291001, "LO", XSS_ATTR)
    item = Dataset()
    item.CodeMeaning = XSS_SVG
    item.CodeValue = "<b>x</b>"
    ds.ProcedureCodeSequence = Sequence([item])
    return ds


def check_html(response: Any, where: str) -> BeautifulSoup:
    """The page runs no payload: no inline script or handler, no payload element, CSP set."""
    html = response.get_data(as_text=True)
    assert_no_traceback(html, where)
    csp = response.headers.get("Content-Security-Policy", "")
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp, where
    assert "style-src 'self'" in csp, where
    assert "<script>alert" not in html and "<svg onload" not in html and "<img src=x" not in html, where
    page = BeautifulSoup(html, "html.parser")
    for script in page.find_all("script"):
        assert script.get("src") and not script.get_text(strip=True), f"{where}: inline script {script}"
    assert not page.find_all("style"), f"{where}: a <style> element (the CSP blocks it)"
    for element in page.find_all(True):
        for name, value in element.attrs.items():
            assert not name.startswith(("on", "hx-on")), f"{where}: handler {name} on {element.name}"
            assert name != "style", f"{where}: style attribute on {element.name} (the CSP blocks it)"
            text = " ".join(value) if isinstance(value, list) else str(value)
            if name in ("href", "src", "action", "formaction", "hx-get", "hx-post"):
                assert not text.strip().lower().startswith("javascript:"), f"{where}: {name}={text}"
    for tag in ACTIVE_TAGS:
        for element in page.find_all(tag):
            assert element.get_text() not in ("acc", "1", "HEAD", "x"), f"{where}: payload became <{tag}>"
    assert "49" not in page.get_text(" ").split(), f"{where}: a template expression was evaluated"
    return page


# --------------------------------------------------------------------------- routes


def rules(app: Any) -> list[Rule]:
    return sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint))


def fill(rule: Rule, ids: dict[str, Any], raw: dict[str, str] | None = None) -> str:
    """The rule's path with real values for its arguments (a KeyError names a new argument);
    ``raw`` gives some arguments as they are to be sent (not encoded)."""
    path = rule.rule
    for name in rule.arguments:
        if name in (rule.defaults or {}):
            continue
        if raw and name in raw:
            text = raw[name]
        elif name == "segment":  # /<any(patients, studies, series):segment>/<public_id>/...
            text = "studies"
        elif name == "kind":  # .../<any(anonymize, modify):kind>
            text = "anonymize"
        elif name == "public_id":
            segment = "studies" if "segment" in rule.arguments else rule.rule.split("/")[1]
            text = quote(str(ids[segment]), safe="")  # patients|studies|series|instances
        elif name == "name":
            text = quote(str(ids["server"] if "/servers/" in rule.rule else ids["modality"]), safe="")
        else:
            text = quote(str(ids[name]), safe="")
        path = re.sub(rf"<(?:[a-z]+(?:\([^)]*\))?:)?{name}>", lambda _m, text=text: text, path)
    assert "<" not in path, f"{rule.rule}: argument without a value"
    return path


@pytest.fixture(scope="module")
def hostile_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, Any]]]:
    """An app (no sidecar) holding hostile strings in every table a page shows."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="dhh-", dir="/tmp"))
    app = create_app(config.from_dict(make_config_doc(folder / "data")))
    app.config["TESTING"] = True
    with app.app_context():
        result = services().ingestor.ingest_bytes(encode(hostile_dataset()), Source("import"))
        assert result.status == "stored", result.reason
        inst = Instance.get(Instance.public_id == result.instance_id)
        modality = Modality.create(name="evil", aet=XSS_AE, host="127.0.0.1", port=104,
                                   description=XSS_ATTR + XSS)
        server = DicomwebServer.create(name="evilweb", url="http://127.0.0.1:9/" + quote(XSS),
                                       username=XSS_ATTR)
        details = [{"type": "failure", "sop_instance_uid": XSS, "status": "0xA700", "message": XSS_ATTR},
                   {"type": "transcript", "text": XSS_SVG, "identifier": {"PatientName": XSS}}]
        job = Job.create(kind="send", target=XSS_AE, description=XSS_SVG, error=XSS_ATTR, state="failure",
                         params=json.dumps({"modality": "evil", "resources": [{"level": "study", "id": XSS}],
                                            "description": XSS}), details=json.dumps(details))
        AssociationEvent.create(calling_aet=XSS_AE, called_aet=XSS_AE, peer_ip="127.0.0.1", operation="store",
                                accepted=False, reason=XSS_ATTR + XSS)
        ids = {"patients": inst.series.study.patient.public_id, "studies": inst.series.study.public_id,
               "series": inst.series.public_id, "instances": inst.public_id,
               "study": inst.series.study.study_instance_uid, "series_uid": inst.series.series_instance_uid,
               "instance": inst.sop_instance_uid, "job_id": job.pk, "modality": modality.name,
               "server": server.name, "frames": "1", "frame": 1, "element": "00100010",
               "tag_path": "00100010", "filename": "dolmen.css", "route": "filtered-studies"}
    yield app, ids
    index.close_index()
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def _ids_for(rule: Rule, ids: dict[str, Any]) -> dict[str, Any]:
    """DICOMweb routes take UIDs where browse routes take public ids."""
    if rule.rule.startswith("/dicom-web/studies"):
        return {**ids, "series": ids["series_uid"]}
    return ids


GET_QUERIES = {
    "browse.studies": [{"PatientName": XSS}, {"q": XSS_ATTR}, {"StudyDate": XSS}],
    "browse.patients": [{"PatientName": XSS_ATTR}],
    "browse.lookup": [{"q": XSS}, {"q": XSS_ATTR}],
    "associations.associations": [{"aet": XSS_AE}, {"q": XSS}],
    "jobs.jobs": [{"state": XSS_ATTR}],
    "qr.query": [{"modality": "evil", "PatientName": XSS, "level": XSS_ATTR}],
    "qr.modality_new": [{"aet": XSS_AE, "host": XSS_ATTR, "port": XSS}],
    "dicomweb_client.search": [{"PatientName": XSS}],
}


def test_stored_xss_is_shown_as_text_on_every_page_and_fragment(hostile_app: Any) -> None:
    app, ids = hostile_app
    client = browser_client(app)
    seen_payload = set()
    checked = 0
    for rule in rules(app):
        if "GET" not in rule.methods or rule.endpoint == "static":
            continue
        path = fill(rule, _ids_for(rule, ids))
        for query in [{}, *GET_QUERIES.get(rule.endpoint, [])]:
            for headers in ({}, {"HX-Request": "true"}):
                response = client.get(path, query_string=query, headers=headers)
                where = f"{rule.endpoint} {path} {query} {headers}"
                assert response.status_code < 500, f"{where}: {response.status_code}"
                kind = response.headers.get("Content-Type", "")
                if kind.startswith("text/html"):
                    page = check_html(response, where)
                    text = page.get_text(" ")
                    seen_payload.update(p for p in PAYLOADS if p in text)
                    checked += 1
                elif "json" in kind:
                    assert_no_traceback(response.get_data(), where)
    assert checked > 60
    # The payloads were on the pages, as text: the test exercised them.
    assert {XSS, XSS_ATTR, XSS_SVG, XSS_URL} <= seen_payload, seen_payload


def test_templates_hold_no_inline_script_or_style() -> None:
    """What the CSP would block must not be in a template (it would silently not work)."""
    root = Path(__file__).resolve().parent.parent / "templates"
    offenders = []
    for path in root.rglob("*.html"):
        # Jinja expressions and comments are not markup (patterns.html shows a payload as text).
        text = re.sub(r"\{\{.*?\}\}|\{#.*?#\}", lambda m: " " * len(m.group(0)),
                      path.read_text(encoding="utf-8"), flags=re.S)
        for pattern in (r"<script(?![^>]*\ssrc=)[^>]*>", r"<style\b", r"\sstyle\s*=", r"\son[a-z]+\s*=",
                        r"\shx-on[:-]", r"javascript:", r"\|\s*safe\b"):
            for match in re.finditer(pattern, text, re.I):
                line = text.count("\n", 0, match.start()) + 1
                offenders.append(f"{path.relative_to(root)}:{line}: {match.group(0).strip()}")
    assert not offenders, "\n".join(offenders)


# --------------------------------------------------------------------------- traversal


TRAVERSALS = ["../../../../etc/passwd", "..%2f..%2f..%2fetc%2fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
              "/etc/passwd", "..\\..\\..\\windows\\win.ini", "x%00.dcm", "....//....//etc/passwd", "a" * 4096,
              "%c0%ae%c0%ae/etc/passwd", "1.2.3/../../4"]


def test_path_traversal_in_every_route_argument(hostile_app: Any) -> None:
    app, ids = hostile_app
    client = browser_client(app)
    root = Path(app.config["DOLMEN"].storage_path).resolve()
    before = {p for p in root.parent.rglob("*")}
    tried = 0
    for rule in rules(app):
        if not rule.arguments - set(rule.defaults or ()):
            continue
        for name in rule.arguments - set(rule.defaults or ()):
            for payload in TRAVERSALS:
                # The payload as sent by a client that does not encode it, and encoded.
                for raw in (payload, quote(payload, safe="")):
                    path = fill(rule, _ids_for(rule, ids), {name: raw})
                    for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                        response = client.open(path, method=method, headers={"Sec-Fetch-Site": "same-origin"})
                        where = f"{method} {path[:200]} ({rule.endpoint})"
                        body = response.get_data()
                        assert response.status_code < 500, f"{where}: {response.status_code} {body[:300]!r}"
                        assert PASSWD.encode() not in body and b"[fonts]" not in body, where
                        assert_no_traceback(body, where)
                        tried += 1
    assert tried > 500
    after = {p for p in root.parent.rglob("*")}
    outside = {p for p in after - before if root not in p.parents and p != root}
    assert not outside, f"files written outside the storage root: {sorted(outside)[:5]}"


# --------------------------------------------------------------------------- CSRF and GET


def _state(app: Any) -> dict[str, Any]:
    """Row counts and checksums of every index table, and the store's file list."""
    from dicomnode.archive.index import MODELS

    with app.app_context():
        tables = {m.__name__: sorted(json.dumps(r, default=str, sort_keys=True)
                                     for r in m.select().dicts()) for m in MODELS}
        root = services().store.root
    folder = root / "files"
    files = sorted(str(p.relative_to(root)) for p in folder.rglob("*")) if folder.exists() else []
    return {"tables": tables, "files": files}


UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def test_no_state_change_by_get_and_every_unsafe_route_refuses_other_origins(hostile_app: Any) -> None:
    app, ids = hostile_app
    client = browser_client(app)
    # Jobs and associations pages may create nothing; a GET must change nothing anywhere.
    before = _state(app)
    for rule in rules(app):
        if "GET" in rule.methods and rule.endpoint != "static":
            client.get(fill(rule, _ids_for(rule, ids)))
    assert _state(app) == before, "a GET changed the index or the store"

    unsafe = [r for r in rules(app) if r.methods & UNSAFE]
    assert len(unsafe) >= 15
    foreign = [{"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
               {"Origin": "http://evil.example"}, {"Origin": "null"},
               {"Origin": "http://localhost.evil.example", "Sec-Fetch-Site": "cross-site"}]
    for rule in unsafe:
        path = fill(rule, _ids_for(rule, ids))
        for method in sorted(rule.methods & UNSAFE):
            for headers in foreign:
                response = client.open(path, method=method, headers=headers,
                                       data={"name": "x", "aet": "X", "host": "h", "port": "1"})
                where = f"{method} {path} with {headers}"
                assert response.status_code == 403, f"{where}: {response.status_code}"
                assert_no_traceback(response.get_data(), where)
    assert _state(app) == before, "a refused cross-site request changed something"
    # The same request from our own pages passes the check (it is refused for other reasons or done).
    response = client.post(f"/modalities/{ids['modality']}/delete", headers={"Sec-Fetch-Site": "same-origin"})
    assert response.status_code in (200, 302, 303)


# --------------------------------------------------------------------------- authentication


@pytest.fixture(scope="module")
def locked_app(hostile_app: Any) -> Iterator[tuple[Any, dict[str, Any]]]:
    """The same data, with a user configured."""
    app, ids = hostile_app
    settings = app.config["DOLMEN"]
    doc = settings.to_dict()
    doc.setdefault("http", {})["users"] = {"alice": generate_password_hash("secret")}
    locked = create_app(config.from_dict(doc))
    locked.config["TESTING"] = True
    yield locked, ids


OPEN = {"auth.login", "static"}


def test_every_route_but_login_and_static_needs_a_user(locked_app: Any) -> None:
    app, ids = locked_app
    client = browser_client(app)
    before = _state(app)
    checked = 0
    for number, rule in enumerate(rules(app)):
        if rule.endpoint in OPEN:
            continue
        path = fill(rule, _ids_for(rule, ids))
        # A wrong password costs a scrypt check (~0.3 s here): tried on one route in eight.
        wrong = [{"Authorization": "Basic YWxpY2U6d3Jvbmc="}] if number % 8 == 0 else []  # alice:wrong
        for method in sorted(rule.methods - {"OPTIONS"}):
            for headers in ({}, {"HX-Request": "true"}, {"Accept": "application/json"}, *wrong):
                response = client.open(path, method=method, headers=headers)
                where = f"{method} {path} {headers}"
                if response.status_code == 302:
                    assert "/login" in response.headers["Location"], where
                else:
                    assert response.status_code == 401, f"{where}: {response.status_code}"
                    assert "WWW-Authenticate" in response.headers, where
                body = response.get_data(as_text=True)
                assert "alert(" not in body and "onerror" not in body, f"{where} leaked data"
                checked += 1
    assert checked > 250
    assert _state(app) == before
    # The login page and static files answer; credentials open the rest.
    assert client.get("/login").status_code == 200
    assert client.get("/static/dolmen.css").status_code == 200
    assert client.get(f"/instances/{ids['instances']}/preview.png", headers=BASIC_ALICE).status_code == 200
    assert client.get("/dicom-web/studies", headers=BASIC_ALICE).status_code == 200


# --------------------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    import shutil
    import tempfile

    from tests.conftest import start_dolmen
    from tests.conftest import write_toml

    folder = Path(tempfile.mkdtemp(prefix="dhs-", dir="/tmp"))
    sections = hostile_sections(http={"max_upload_mb": 64, "max_zip_entries": 5000, "max_zip_mb": 100},
                                modalities__evil={"aet": "EVILPACS", "host": "127.0.0.1", "port": free_port(),
                                                  "description": XSS_ATTR})
    config_path = write_toml(folder / "c.toml", make_config_doc(folder / "data", **sections))
    dolmen = start_dolmen(config_path, folder / "serve.log")
    yield dolmen
    dolmen.stop()
    shutil.rmtree(folder, ignore_errors=True)


def raw_request(url: str, head: str, body: bytes = b"", timeout: float = 5.0) -> tuple[int, bytes, float]:
    """Send `head` (request line and headers) and `body` on a socket; the status, the answer and
    the seconds it took. The server may answer before reading the body."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        try:
            if body:
                sock.sendall(body)
        except OSError:
            pass  # the server answered and closed: what we want
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data and _complete(data):
                break
    elapsed = time.monotonic() - started
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data, elapsed


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"content-length:\s*(\d+)", head, re.I)
    return m is not None and len(body) >= int(m.group(1))


def _web_rss_kb(server: Any) -> int:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


UPLOAD_ROUTES = ["/upload", "/dicom-web/studies", "/upload/check", "/login", "/modalities/new"]


def warm_web(server: Any) -> None:
    """Concurrent uploads and STOW-RS requests, so the web process's pools (the store's fsync
    threads) are at full size before the baseline is taken."""
    import concurrent.futures

    study = f"1.2.826.0.1.3680043.10.1078.56.{int(time.time() * 1000)}"
    files = [encode(small_instance(study, n=n)) for n in range(1, 9)]

    def upload(data: bytes) -> int:
        response = requests.post(server.url + "/upload", files=[("files", ("w.dcm", data))], timeout=60)
        return response.status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert set(pool.map(upload, files)) == {200}


def test_oversized_bodies_are_refused_before_buffering(server: Any) -> None:
    warm_web(server)
    survival = Survival(server)
    baseline = _web_rss_kb(server)
    host = server.url.removeprefix("http://")
    for route in UPLOAD_ROUTES:
        # 4 GB announced, 64 KiB sent: the answer comes at once, the rest is never read.
        head = (f"POST {route} HTTP/1.1\nHost: {host}\nContent-Type: multipart/form-data; boundary=b\n"
                f"Content-Length: {4 * 1024**3}\n")
        status, answer, elapsed = raw_request(server.url, head, b"x" * 65536)
        assert status == 413, f"{route}: {status} {answer[:300]!r}"
        assert elapsed < 2, f"{route}: {elapsed:.1f} s"
        assert_no_traceback(answer, route)
    # Oversized form fields (1 MiB limit on a field kept in memory).
    for route in ("/login", "/modalities/new", "/upload/check"):
        response = requests.post(server.url + route, data={"user": "x" * (3 * 1024 * 1024), "aet": "A"},
                                 timeout=30)
        assert response.status_code == 413, f"{route}: {response.status_code}"
        assert_no_traceback(response.text, route)
    # 100,000 multipart parts.
    boundary = "bnd"
    parts = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"uid\"\r\n\r\n1\r\n".encode()
                     for _ in range(100_000)) + f"--{boundary}--\r\n".encode()
    for route in ("/upload",):  # /upload/check uses the same parser and limit
        started = time.monotonic()
        response = requests.post(server.url + route, data=parts, timeout=60,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert response.status_code == 413, f"{route}: {response.status_code} {response.text[:200]}"
        # werkzeug parses the 20,000 parts MAX_FORM_PARTS allows (~0.3 ms each) before refusing.
        assert time.monotonic() - started < 15
    related = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\nx\r\n".encode()
                       for _ in range(100_000)) + f"--{boundary}--\r\n".encode()
    started = time.monotonic()
    response = requests.post(server.url + "/dicom-web/studies", data=related, timeout=60,
                             headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                                      f"boundary={boundary}"})
    assert response.status_code == 413, f"STOW: {response.status_code} {response.text[:200]}"
    assert time.monotonic() - started < 30, f"STOW of 100,000 parts took {time.monotonic() - started:.1f} s"
    # A gzip bomb: 256 MiB of zeros in about 256 KiB, sent as Content-Encoding: gzip.
    bomb = io.BytesIO()
    with gzip.GzipFile(fileobj=bomb, mode="wb", compresslevel=6) as gz:
        chunk = bytes(16 * 1024 * 1024)
        for _ in range(16):
            gz.write(chunk)
    for route, kind in (("/upload", "multipart/form-data; boundary=b"),
                        ("/dicom-web/studies", 'multipart/related; type="application/dicom"; boundary=b')):
        started = time.monotonic()
        response = requests.post(server.url + route, data=bomb.getvalue(), timeout=30,
                                 headers={"Content-Encoding": "gzip", "Content-Type": kind})
        assert response.status_code in (400, 415), f"{route}: {response.status_code}"
        assert time.monotonic() - started < 2
        assert_no_traceback(response.text, route)
    grown = (_web_rss_kb(server) - baseline) / 1024
    assert grown < 150, f"the web process's peak memory grew by {grown:.0f} MiB"
    survival.check(web_resources=True)


def _upload(server: Any, name: str, data: bytes) -> dict[str, Any]:
    response = requests.post(server.url + "/upload", files=[("files", (name, data))],
                             headers={"Accept": "application/json"}, timeout=120)
    assert response.status_code < 500, response.text[:500]
    assert_no_traceback(response.text, name)
    return response.json()


def test_hostile_zip_uploads(server: Any) -> None:
    warm_web(server)
    survival = Survival(server)
    study = f"1.2.826.0.1.3680043.10.1078.55.{int(time.time())}"
    good = encode(small_instance(study, n=1))
    outside = server.data.parent
    names = ["../../zz-escaped.dcm", "/tmp/zz-absolute.dcm", "..\\..\\zz-windows.dcm", "C:/zz-drive.dcm"]
    body = _upload(server, "traversal.zip", make_zip([(n, good) for n in names] + [("ok.dcm", good)],
                                                     symlink="link.dcm"))
    by_name = {f["name"].split(" › ")[-1]: f for f in body["files"]}
    assert by_name["ok.dcm"]["status"] == "stored"
    for name in [*names, "link.dcm"]:
        row = by_name.get(name)
        assert row is not None and row["status"] == "rejected", f"{name}: {row}"
    forbidden = [outside / "zz-escaped.dcm", Path("/tmp/zz-absolute.dcm"), outside / "zz-windows.dcm"]
    # 10,000 entries (more than [http] max_zip_entries here): refused as a whole, at once.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for n in range(10_000):
            zf.writestr(f"f{n}.dcm", b"")
    started = time.monotonic()
    body = _upload(server, "many.zip", buffer.getvalue())
    assert body["stored"] == 0 and "10000" in json.dumps(body).replace(",", ""), body
    assert time.monotonic() - started < 5
    # A zip bomb: 160 MiB of zeros in 160 KiB, more than [http] max_zip_mb (refused by its
    # declared size before anything is inflated)...
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("bomb.dcm", "w") as member:
            chunk = bytes(16 * 1024 * 1024)
            for _ in range(10):
                member.write(chunk)
    bomb = buffer.getvalue()
    assert len(bomb) < 1024 * 1024
    baseline = _web_rss_kb(server)
    started = time.monotonic()
    body = _upload(server, "bomb.zip", bomb)
    assert body["stored"] == 0 and time.monotonic() - started < 5, body
    # ... and one that lies: 64 MiB of zeros declared as 1 KiB in both headers.
    lying = bytearray(_small_bomb())
    body = _upload(server, "lying.zip", bytes(lying))
    assert body["stored"] == 0, body
    grown = (_web_rss_kb(server) - baseline) / 1024
    assert grown < 100, f"the web process's peak memory grew by {grown:.0f} MiB"
    survival.check(forbidden=forbidden, web_resources=True)


def _small_bomb() -> bytes:
    """A ZIP whose one member inflates to 64 MiB but declares 1024 bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("liar.dcm", bytes(64 * 1024 * 1024))
    data = bytearray(buffer.getvalue())
    # Local file header: uncompressed size at offset 22; central directory entry: offset 24.
    struct.pack_into("<I", data, 22, 1024)
    central = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 1024)
    return bytes(data)


def test_request_smuggling_shapes_are_refused(server: Any) -> None:
    """Conflicting length headers and absurd chunk sizes get a 4xx, and the server goes on."""
    host = server.url.removeprefix("http://")
    cases = [
        f"POST /upload HTTP/1.1\nHost: {host}\nContent-Length: 5\nContent-Length: 500000000000\n",
        f"POST /upload HTTP/1.1\nHost: {host}\nTransfer-Encoding: chunked\n",
        f"GET /{'a' * 100_000} HTTP/1.1\nHost: {host}\n",
        # Headers over waitress's 256 KiB.
        f"GET / HTTP/1.1\nHost: {host}\n" + "".join(f"X-{n}: {'v' * 100}\n" for n in range(3000)),
    ]
    bodies = [b"hello", b"ffffffffffffffff\r\n" + b"x" * 1024, b"", b""]
    for head, body in zip(cases, bodies, strict=True):
        # 0: no answer within 3 s (waitress waits for the rest of a chunk, up to its channel timeout).
        status, answer, elapsed = raw_request(server.url, head, body, timeout=3)
        assert status == 0 or 400 <= status < 500, f"{head[:60]!r}: {status}"
        assert_no_traceback(answer, head[:60])
    assert requests.get(server.url + "/api/system", timeout=5).status_code == 200


def _hostile_find_scp(port: int) -> Any:
    """A C-FIND SCP (EVILPACS) whose answers carry a payload in every text attribute."""
    from pynetdicom import AE
    from pynetdicom import evt
    from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        asked = event.identifier
        for n in range(2):
            answer = Dataset()
            answer.QueryRetrieveLevel = asked.get("QueryRetrieveLevel", "STUDY")
            answer.PatientName = XSS
            answer.PatientID = XSS_ATTR
            answer.StudyDescription = XSS_SVG
            answer.SeriesDescription = XSS_ATTR
            answer.AccessionNumber = "<b>acc</b>"
            answer.ModalitiesInStudy = "<b>"
            answer.Modality = "<b>"
            answer.StudyDate = "2024<b>"
            answer.StudyInstanceUID = f"1.2.3.{n}"
            answer.SeriesInstanceUID = f"1.2.3.{n}.1"
            answer.SOPInstanceUID = f"1.2.3.{n}.1.1"
            answer.RetrieveAETitle = XSS_AE
            yield 0xFF00, answer

    ae = AE(ae_title="EVILPACS")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(PatientRootQueryRetrieveInformationModelFind)
    return ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)])


def test_query_results_from_a_hostile_remote_are_shown_as_text(server: Any) -> None:
    import tomllib

    port = tomllib.loads(server.config.read_text())["modalities"]["evil"]["port"]
    scp = _hostile_find_scp(port)
    try:
        for level in ("patient", "study", "series"):
            for headers in ({}, {"HX-Request": "true"}):
                response = requests.get(server.url + "/query", headers=headers, timeout=30,
                                        params={"modality": "evil", "level": level, "PatientName": "*"})
                assert response.status_code == 200, response.text[:300]
                page = check_html(_Wrapped(response), f"/query {level} {headers}")
                assert XSS in page.get_text(" "), f"{level}: the answers were not shown"
        response = requests.get(server.url + "/modalities", timeout=30, headers=BROWSER)
        assert XSS_ATTR in check_html(_Wrapped(response), "/modalities").get_text(" ")
    finally:
        scp.shutdown()


class _Wrapped:
    """A requests response with the Flask test response methods check_html uses."""

    def __init__(self, response: requests.Response) -> None:
        self.response = response
        self.headers = response.headers

    def get_data(self, as_text: bool = False) -> Any:
        return self.response.text if as_text else self.response.content
