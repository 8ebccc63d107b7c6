"""The upload page (webapp/upload.py) and the ZIP guards (dicomnode/unzip.py)."""
from __future__ import annotations

import io
import shutil
import stat
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bs4 import BeautifulSoup

from dicomnode import config
from dicomnode.archive import index
from dicomnode.archive.index import Instance
from tests.conftest import browser_client
from tests.conftest import make_config_doc
from webapp import create_app
from webapp.services import services


def soup(response: Any) -> BeautifulSoup:
    return BeautifulSoup(response.get_data(as_text=True), "html.parser")


def results(response: Any) -> list[tuple[str, str, str]]:
    """(file, status, details) of each row of the result table."""
    page = soup(response)
    return [(tr.select_one("td.file").get_text(strip=True), tr["data-status"],
             tr.select_one("td.reason").get_text(" ", strip=True))
            for tr in page.select("#upload-table tbody tr")]


def files(*items: tuple[str, bytes]) -> dict[str, Any]:
    return {"files": [(io.BytesIO(data), name) for name, data in items]}


def make_zip(members: list[tuple[str, bytes]], *, symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def spool_is_empty(app: Any) -> bool:
    with app.app_context():
        folder = services().store.tmp / "web"
    return not folder.exists() or not any(folder.iterdir())


def test_form_works_without_script(client: Any) -> None:
    page = soup(client.get("/upload"))
    form = page.select_one("form#upload-form")
    assert form["method"] == "post" and form["action"] == "/upload"
    assert form["enctype"] == "multipart/form-data"
    pickers = form.select("input[type=file][name=files][multiple]")
    assert len(pickers) == 2 and pickers[1].has_attr("webkitdirectory")
    assert form.select_one("button[type=submit]") is not None
    assert page.select_one("#upload-results")["hidden"] is not None
    assert page.select_one("nav.mainnav a[aria-current=page]").get_text() == "Upload"


def test_upload_files_then_again(app: Any, client: Any, demo_files: list[Path]) -> None:
    sent = files(*[(p.name, p.read_bytes()) for p in demo_files[:3]], ("notes.txt", b"hello"))
    response = client.post("/upload", data=sent, content_type="multipart/form-data")
    assert response.status_code == 200
    got = results(response)
    assert [s for _, s, _ in got] == ["stored", "stored", "stored", "rejected"]
    assert got[3][0] == "notes.txt" and "DICOM" in got[3][2]
    page = soup(response)
    assert page.select_one("[data-count=stored]").get_text() == "3"
    assert page.select_one("[data-count=rejected]").get_text() == "1"
    link = page.select_one("#upload-table tbody tr[data-status=stored] a")
    assert link["href"].startswith("/instances/") and client.get(link["href"]).status_code == 200
    again = client.post("/upload", data=files((demo_files[0].name, demo_files[0].read_bytes())),
                        content_type="multipart/form-data")
    assert [s for _, s, _ in results(again)] == ["duplicate"]
    with app.app_context():
        assert Instance.select().count() == 3
        assert {i.origin for i in Instance.select()} == {"upload"}
    assert spool_is_empty(app)


def test_htmx_and_json_answers(client: Any, demo_files: list[Path]) -> None:
    data = demo_files[0].read_bytes()
    partial = client.post("/upload", data=files(("a.dcm", data)), content_type="multipart/form-data",
                          headers={"HX-Request": "true"})
    page = soup(partial)
    assert page.find("html") is None and page.select_one("#upload-table tbody tr[data-status=duplicate], "
                                                         "#upload-table tbody tr[data-status=stored]")
    answer = client.post("/upload", data=files(("a.dcm", data), ("b.bin", b"x")),
                         content_type="multipart/form-data", headers={"Accept": "application/json"})
    body = answer.get_json()
    assert (body["stored"], body["duplicate"], body["rejected"]) == (0, 1, 1)
    assert body["files"][0]["name"] == "a.dcm" and body["files"][0]["instance_id"]


def test_nothing_sent(client: Any) -> None:
    response = client.post("/upload", data={}, content_type="multipart/form-data")
    assert response.status_code == 400
    assert "No file was sent" in soup(response).select_one("#upload-results .alert-error").get_text()
    empty_input = client.post("/upload", data={"files": [(io.BytesIO(b""), "")]},
                              content_type="multipart/form-data")
    assert empty_input.status_code == 400


def test_zip_members_go_through_ingest_and_unsafe_ones_are_refused(app: Any, client: Any,
                                                                   demo_files: list[Path]) -> None:
    members = [(f"export/{p.name}", p.read_bytes()) for p in demo_files[:4]]
    members += [("../../evil.dcm", demo_files[4].read_bytes()), ("/abs/x.dcm", demo_files[5].read_bytes()),
                ("C:/win.dcm", b"x"), ("export/readme.txt", b"not dicom")]
    archive = make_zip(members, symlink="export/link.dcm")
    response = client.post("/upload", data=files(("study.zip", archive)), content_type="multipart/form-data")
    got = {name: (status, reason) for name, status, reason in results(response)}
    assert [got[f"study.zip › export/{p.name}"][0] for p in demo_files[:4]] == ["stored"] * 4
    assert got["study.zip › ../../evil.dcm"] == ("rejected", "Refused: the name holds a '..' component")
    assert got["study.zip › /abs/x.dcm"] == ("rejected", "Refused: the name holds an absolute path")
    assert got["study.zip › C:/win.dcm"][1] == "Refused: the name holds an absolute path"
    assert got["study.zip › export/link.dcm"] == ("rejected", "Refused: a symbolic link, not a file")
    assert got["study.zip › export/readme.txt"][0] == "rejected"
    with app.app_context():
        assert Instance.select().count() == 4
    assert spool_is_empty(app)


def test_encrypted_and_corrupt_zip_members(client: Any, demo_files: list[Path]) -> None:
    data = bytearray(make_zip([("a.dcm", demo_files[0].read_bytes()), ("b.dcm", demo_files[1].read_bytes())]))
    # Mark the first member encrypted (general purpose flag bit 0, local and central headers).
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        data[at + offset] |= 1
    # Corrupt the compressed bytes of the second member.
    second = data.find(b"PK\x03\x04", 4)
    data[second + 60: second + 80] = b"\xff" * 20
    got = {n: (s, r) for n, s, r in results(client.post("/upload", data=files(("x.zip", bytes(data))),
                                                        content_type="multipart/form-data"))}
    assert got["x.zip › a.dcm"] == ("rejected", "Refused: the entry is encrypted")
    assert got["x.zip › b.dcm"][0] == "rejected" and "corrupt" in got["x.zip › b.dcm"][1]
    broken = results(client.post("/upload", data=files(("bad.zip", b"PK\x03\x04" + b"\0" * 200)),
                                 content_type="multipart/form-data"))
    assert broken == [("bad.zip", "rejected", broken[0][2])] and "ZIP" in broken[0][2]


@pytest.fixture
def capped(short_tmp: Path) -> Iterator[Any]:
    doc = make_config_doc(short_tmp / "capped", http={"max_zip_entries": 3, "max_zip_mb": 1},
                          dicom={"max_object_mb": 1})
    application = create_app(config.from_dict(doc))
    application.config["TESTING"] = True
    yield application
    index.close_index()


def test_zip_caps(capped: Any, demo_files: list[Path]) -> None:
    client = browser_client(capped)
    many = make_zip([(f"{n}.dcm", demo_files[n].read_bytes()) for n in range(4)])
    got = results(client.post("/upload", data=files(("many.zip", many)), content_type="multipart/form-data"))
    assert got == [("many.zip", "rejected", got[0][2])]
    assert "holds 4 entries, more than the limit of 3 ([http] max_zip_entries)" in got[0][2]
    # A bomb: 1.5 MiB of zeros compresses to almost nothing.
    bomb = make_zip([("zeros.dcm", b"\0" * (3 << 19))])
    assert len(bomb) < 10_000
    got = results(client.post("/upload", data=files(("bomb.zip", bomb)), content_type="multipart/form-data"))
    assert "more than the limit of 1 MiB ([http] max_zip_mb): it may be a zip bomb" in got[0][2]
    # One file over [dicom] max_object_mb, alone or in a ZIP.
    big = b"\0" * ((1 << 20) + 10)
    got = results(client.post("/upload", data=files(("big.dcm", big)), content_type="multipart/form-data"))
    assert got[0][1:] == ("rejected", "Larger than the limit of 1 MiB ([dicom] max_object_mb)")
    assert spool_is_empty(capped)


def test_check_says_which_files_are_stored(app: Any, client: Any, demo_files: list[Path]) -> None:
    import pydicom

    client.post("/upload", data=files((demo_files[0].name, demo_files[0].read_bytes())),
                content_type="multipart/form-data")
    stored = pydicom.dcmread(demo_files[0], stop_before_pixels=True).SOPInstanceUID
    other = pydicom.dcmread(demo_files[1], stop_before_pixels=True).SOPInstanceUID
    response = client.post("/upload/check",
                           data={"uid": [stored, other, ""], "name": ["a/1.dcm", "a/2.dcm", "x"]},
                           headers={"HX-Request": "true"})
    page = soup(response)
    rows = page.select("#upload-table tbody tr")
    assert [(r["data-uid"], r["data-status"], r.select_one("td.file").get_text()) for r in rows] == [
        (stored, "duplicate", "a/1.dcm")]
    assert rows[0].select_one("a")["href"].startswith("/instances/")
    cross = client.post("/upload/check", data={"uid": ["x"]}, headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403


def test_curl_upload_against_a_real_server(dolmen: Any, demo_files: list[Path], short_tmp: Path) -> None:
    """The documented command: curl -F files=@a.dcm -F files=@b.zip .../upload."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    bundle = short_tmp / "b.zip"
    bundle.write_bytes(make_zip([(p.name, p.read_bytes()) for p in demo_files[11:14]]))
    result = subprocess.run([curl, "-sS", "-H", "Accept: application/json", "-F", f"files=@{demo_files[10]}",
                             "-F", f"files=@{bundle}", f"{dolmen.url}/upload"],
                            capture_output=True, text=True, timeout=60, check=True)
    import json

    body = json.loads(result.stdout)
    assert body["rejected"] == 0 and body["stored"] + body["duplicate"] == 4
    assert [f["name"] for f in body["files"]][1:] == [f"b.zip › {p.name}" for p in demo_files[11:14]]
    html = subprocess.run([curl, "-sS", "-F", f"files=@{demo_files[10]}", f"{dolmen.url}/upload"],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    page = BeautifulSoup(html, "html.parser")
    assert page.select_one("#upload-table tbody tr")["data-status"] == "duplicate"
