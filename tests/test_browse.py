"""The browse pages (webapp/browse.py): lists, filters, paging, resource pages, images, downloads,
deletion, lookup, untrusted strings and login. HTML is asserted with CSS selectors."""
from __future__ import annotations

import datetime as dt
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from urllib.parse import urlparse

import pytest
from bs4 import BeautifulSoup
from PIL import Image

from dicomnode import config
from dicomnode import demodata
from dicomnode.archive import index
from dicomnode.archive.index import Instance
from dicomnode.archive.index import Patient
from dicomnode.archive.index import Series
from dicomnode.archive.index import Study
from dicomnode.archive.ingest import Source
from tests import browse_data
from tests.conftest import browser_client
from tests.conftest import make_config_doc
from webapp import create_app
from webapp.services import services

MISSING = "00000000-00000000-00000000-00000000-00000000"


def soup(response: Any) -> BeautifulSoup:
    return BeautifulSoup(response.get_data(as_text=True), "html.parser")


def ingest(app: Any, *paths: Path) -> list[Any]:
    with app.app_context():
        results = [services().ingestor.ingest_copy(p, Source("import")) for p in paths]
    assert all(r.status in ("stored", "duplicate") for r in results), [r.reason for r in results]
    return results


def rows(page: BeautifulSoup, table: str = "#study-table") -> list[BeautifulSoup]:
    return page.select(f"{table} tbody tr[data-href]")


def column(page: BeautifulSoup, n: int, table: str = "#study-table") -> list[str]:
    """The n-th data column (the tick box of the bulk actions, td.pick, is not counted)."""
    return [r.select("td:not(.pick)")[n].get_text(" ", strip=True) for r in rows(page, table)]


@pytest.fixture(scope="module")
def extra_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("extra")
    return {"hostile": browse_data.hostile(out / "x.dcm"), "rich": browse_data.rich(out / "r.dcm"),
            "multiframe": browse_data.multiframe(out / "m.dcm"), "pdf": browse_data.pdf(out / "p.dcm")}


@pytest.fixture
def filled(app: Any, demo_files: list[Path], extra_files: dict[str, Path]) -> Any:
    """The app holding the 20 demo files and the special instances."""
    ingest(app, *demo_files, *extra_files.values())
    return app


def one(model: Any, *where: Any) -> Any:
    return model.select().where(*where).get()


# -- lists -------------------------------------------------------------------------------------


def test_root_redirects_to_the_study_list(client: Any) -> None:
    response = client.get("/")
    assert response.status_code == 302 and response.headers["Location"].endswith("/studies")


def test_empty_archive_says_so(client: Any) -> None:
    page = soup(client.get("/studies"))
    assert page.select_one("#study-table tr.empty a[href='/upload']") is not None
    assert page.select_one(".pager-count").get_text(" ", strip=True) == "No studies"


def test_study_list_shows_every_study_with_count(filled: Any, client: Any) -> None:
    response = client.get("/studies")
    assert response.status_code == 200
    page = soup(response)
    assert len(rows(page)) == 6  # 2 demo patients + 4 special instances, one study each
    assert page.select_one(".pager-count strong").get_text() == "6"
    assert page.select_one("nav.mainnav a[aria-current=page]").get_text() == "Studies"
    # Newest first by default: the PDF of 2024 leads.
    assert column(page, 3)[0].startswith("2024-01-02")
    # The modality filter offers each modality of the archive once, sorted.
    options = page.select("select#f-modality option")
    assert [o.get("value", o.get_text()) for o in options] == ["", "CT", "DOC", "MR"]


@pytest.mark.parametrize(("args", "expected_ids"), [
    ({"name": "muller"}, {"PAT00000"}),               # a part of the name, any case
    ({"name": "SCHMIDT^B*"}, {"PAT00001"}),           # DICOM wildcards
    ({"name": "dub?is*"}, {"PAT00702"}),
    ({"pid": "PAT00001"}, {"PAT00001"}),
    ({"pid": "PAT0000*"}, {"PAT00000", "PAT00001"}),
    ({"pid": "PAT0000"}, set()),                      # identifiers match exactly without wildcards
    ({"accession": "ACC0000100"}, {"PAT00001"}),
    ({"modality": "MR"}, {"PAT00702", "PAT00000"}),
    ({"description": "spine"}, {"PAT00701"}),
    ({"from": "2024-01-01"}, {"PDF703"}),
    ({"from": "2015-01-01", "to": "2015-01-31"}, {"PAT00000"}),
    ({"to": "20150131"}, {"PAT00000"}),
])
def test_study_filters(filled: Any, client: Any, args: dict[str, str], expected_ids: set[str]) -> None:
    response = client.get("/studies", query_string=args)
    assert response.status_code == 200
    page = soup(response)
    assert set(column(page, 1)) == expected_ids
    # The form shows the filters back, so the page is its own bookmark.
    for key, value in args.items():
        field = page.select_one(f"#filters [name={key}]")
        if field.name == "input":
            shown = field.get("value")
        else:
            shown = field.select_one("option[selected]").get_text()
        assert shown == value


def test_date_presets(app: Any, client: Any, short_tmp: Path) -> None:
    today = dt.date.today()
    for n, day in enumerate([today, today - dt.timedelta(days=1), today - dt.timedelta(days=20)]):
        ds = demodata.make_instance(800 + n, 0, 0, 0, size=8)
        ds.StudyDate = f"{day:%Y%m%d}"
        ingest(app, browse_data.save(ds, short_tmp / f"d{n}.dcm"))
    presets = ("today", "yesterday", "7d", "30d")
    counts = {p: len(rows(soup(client.get(f"/studies?date={p}")))) for p in presets}
    assert counts == {"today": 1, "yesterday": 1, "7d": 2, "30d": 3}
    page = soup(client.get("/studies?date=7d"))
    assert page.select_one("#f-date option[selected]")["value"] == "7d"


def test_malformed_filter_is_a_message_not_an_error(filled: Any, client: Any) -> None:
    response = client.get("/studies?from=2024-13-45x")
    assert response.status_code == 400
    page = soup(response)
    assert "is not a date" in page.select_one("#results .alert-error").get_text()
    assert rows(page) == []


def test_sorting_by_each_column(filled: Any, client: Any) -> None:
    names = column(soup(client.get("/studies?sort=name&dir=asc")), 0)
    assert names == sorted(names, key=str.upper)
    assert column(soup(client.get("/studies?sort=name&dir=desc")), 0) == names[::-1]
    page = soup(client.get("/studies?sort=id&dir=asc"))
    header = page.select_one("th[aria-sort]")
    assert header["aria-sort"] == "ascending" and "Patient ID" in header.get_text()
    # Clicking the active header flips the direction and keeps the filters.
    page = soup(client.get("/studies?sort=id&dir=asc&modality=CT"))
    link = page.select_one("th[aria-sort] a")
    assert parse_qs(urlparse(link["href"]).query) == {"sort": ["id"], "dir": ["desc"], "modality": ["CT"]}
    for key in ("date", "description", "modality", "accession", "instances"):
        assert client.get(f"/studies?sort={key}").status_code == 200
    assert client.get("/studies?sort=nonsense&dir=sideways").status_code == 200


def test_pagination(app: Any, client: Any, short_tmp: Path) -> None:
    files = demodata.write(short_tmp / "many", patients=30, studies=1, series=1, instances=1, size=8)
    ingest(app, *files)
    page = soup(client.get("/studies?per=25&sort=id&dir=asc"))
    assert len(rows(page)) == 25
    assert page.select_one(".pager-count").get_text(" ", strip=True).startswith("1–25 of 30")
    next_link = page.select_one(".pager a[rel=next]")
    assert next_link["href"] == next_link["hx-get"]
    second = soup(client.get(next_link["href"]))
    assert column(second, 1) == [f"PAT{n:05d}" for n in range(25, 30)]
    assert second.select_one(".pager [aria-current=page]").get_text() == "2"
    # Past the end: the last page.
    assert column(soup(client.get("/studies?per=25&sort=id&dir=asc&page=99")), 1)[-1] == "PAT00029"
    assert len(rows(soup(client.get("/studies?per=7&page=abc")))) == 30  # odd values fall back to 50


def test_later_pages_equal_a_plain_limit_offset_for_every_sort(app: Any, short_tmp: Path) -> None:
    """query.list_page reads a later page's keys first; its rows must be the plain query's."""
    from dicomnode.archive import query

    files = demodata.write(short_tmp / "paged", patients=23, studies=3, series=1, instances=1, size=8)
    ingest(app, *files)  # 69 studies; dates and names repeat, so ties are broken by the primary key
    cases = [(query.STUDY, f) for f in ({}, {"PatientName": "*A*"}, {"StudyDate": "20150101-20201231"})]
    cases += [(query.PATIENT, f) for f in ({}, {"PatientName": "*A*"})]
    with app.app_context():
        for level, filters in cases:
            for sort in query.ORDER[level]:
                for descending in (False, True):
                    plain = query.order(query.select(level, filters), level, sort, descending)
                    total = query.count(level, filters)
                    for number in (1, 2, 3, 4):
                        page = query.list_page(level, filters, sort, descending=descending, number=number,
                                               size=10)
                        expected = [r.pk for r in plain.limit(10).offset((page.number - 1) * 10)]
                        assert [r.pk for r in page.rows] == expected, (level, filters, sort, number)
                        assert page.total == total
                        if level == query.STUDY and page.rows:  # parents come loaded with the rows
                            assert page.rows[0].patient.patient_id.startswith("PAT")


def test_htmx_gets_the_results_partial_and_every_hx_get_is_an_href(filled: Any, client: Any) -> None:
    full = client.get("/studies?modality=CT")
    partial = client.get("/studies?modality=CT", headers={"HX-Request": "true"})
    assert "HX-Request" in partial.headers["Vary"]
    part = soup(partial)
    assert part.find("html") is None and part.select_one("section#results") is not None
    assert column(part, 1) == column(soup(full), 1)
    # A history restore gets the whole page.
    restore = client.get("/studies", headers={"HX-Request": "true", "HX-History-Restore-Request": "true"})
    assert soup(restore).find("html") is not None
    page = soup(full)
    for element in page.select("[hx-get]"):
        target = element.get("href") or element.get("action")
        if element.name == "select":  # rows per page: bound to the filter form
            assert element["form"] == "filters"
            continue
        assert target == element["hx-get"], element
        assert element.get("hx-target") and element.get("hx-swap")
    form = page.select_one("form#filters")
    assert form["method"] == "get" and form["action"] == "/studies" and form["hx-push-url"] == "true"


def test_patient_list_filters_and_sorts(filled: Any, client: Any) -> None:
    page = soup(client.get("/patients"))
    assert len(rows(page, "#patient-table")) == 6
    names = column(page, 0, "#patient-table")
    assert names == sorted(names, key=str.upper)
    page = soup(client.get("/patients?name=bruno"))
    assert column(page, 1, "#patient-table") == ["PAT00001"]
    page = soup(client.get("/patients?birth=1982-07-03"))
    assert column(page, 1, "#patient-table") == ["PAT00702"]
    page = soup(client.get("/patients?sort=studies&dir=desc"))
    assert column(page, 4, "#patient-table")[0] == "1"
    assert client.get("/patients?birth=yesterday").status_code == 400


# -- resource pages ----------------------------------------------------------------------------


def test_patient_study_series_pages_show_modules_and_children(filled: Any, client: Any) -> None:
    with filled.app_context():
        patient = one(Patient, Patient.patient_id == "PAT00001")
        study = patient.studies.get()
        series = list(study.series.order_by(Series.series_number))
    page = soup(client.get(f"/patients/{patient.public_id}"))
    assert page.select_one("h1").get_text(" ", strip=True).startswith("SCHMIDT, BRUNO")
    assert [a["href"] for a in page.select(".main-col tbody a")][0] == f"/studies/{study.public_id}"

    page = soup(client.get(f"/studies/{study.public_id}"))
    modules = [h.get_text(" ", strip=True).split()[0] for h in page.select(".side .module h2")]
    assert modules == ["Patient", "Study"]
    series_rows = page.select(".series-list tbody tr[data-href]")
    assert [r["data-href"] for r in series_rows] == [f"/series/{s.public_id}" for s in series]
    assert all(r.select_one("img.mini[loading=lazy]") for r in series_rows)
    assert page.select_one(".actions a[download]")["href"] == f"/studies/{study.public_id}/archive"
    assert [a.get_text(" ", strip=True) for a in page.select(".crumbs a")] == ["Studies", "SCHMIDT, BRUNO"]

    page = soup(client.get(f"/series/{series[0].public_id}"))
    modules = [h.get_text(" ", strip=True).split()[0] for h in page.select(".side .module h2")]
    assert modules == ["Patient", "Study", "Series"]
    tiles = page.select("ol.thumbs li.thumb")
    assert [t.select_one(".cap").get_text(strip=True) for t in tiles] == [f"#{n}" for n in range(1, 6)]
    assert all(t.select_one("img")["loading"] == "lazy" for t in tiles)


def test_modules_say_what_they_hold_and_name_uids(filled: Any, client: Any) -> None:
    def values(page: BeautifulSoup, module: int) -> dict[str, str]:
        dl = page.select(".side .module")[module].select_one("dl")
        pairs = zip(dl.select("dt"), dl.select("dd"), strict=True)
        return {dt.get_text(strip=True): dd.get_text(" ", strip=True) for dt, dd in pairs}

    with filled.app_context():
        study = one(Patient, Patient.patient_id == "PAT00001").studies.get()
        inst = Instance.select().join(Series).where(Series.study == study.pk).first()
    page = soup(client.get(f"/instances/{inst.public_id}"))
    assert values(page, 1)["Holds"].startswith("2 series · 10 instances · ")
    assert values(page, 2)["Holds"].startswith("5 instances · ")
    instance = values(page, 3)
    assert instance["SOP class"] == "CT Image Storage 1.2.840.10008.5.1.4.1.1.2"
    assert instance["Transfer syntax"] == "Explicit VR Little Endian 1.2.840.10008.1.2.1"


def test_series_grid_is_in_instance_number_order(app: Any, client: Any, short_tmp: Path) -> None:
    paths = []
    for n, number in enumerate([10, 2, 33, 1]):
        ds = demodata.make_instance(900, 0, 0, n, size=8)
        ds.InstanceNumber = number
        paths.append(browse_data.save(ds, short_tmp / f"i{n}.dcm"))
    ingest(app, *paths)
    with app.app_context():
        series = Series.select().get()
    page = soup(client.get(f"/series/{series.public_id}"))
    assert [t.get_text(strip=True) for t in page.select("ol.thumbs .cap")] == ["#1", "#2", "#10", "#33"]


def test_instance_page_tag_table(filled: Any, client: Any) -> None:
    with filled.app_context():
        inst = one(Instance, Instance.sop_instance_uid == demodata.uid("instance", 701, 0, 0, 0))
    response = client.get(f"/instances/{inst.public_id}")
    assert response.status_code == 200
    page = soup(response)
    modules = [h.get_text(" ", strip=True).split()[0] for h in page.select(".side .module h2")]
    assert modules == ["Patient", "Study", "Series", "Instance"]
    table = page.select_one(".tags[role=table]")
    name = table.select_one(".tag-row[data-path='00100010'] .v").get_text(strip=True)
    assert name == "SCHMIDT^NOAH"
    # Private elements are marked, with their creator.
    private = table.select_one(".tag-row.private[data-path='00291001']")
    assert private.select_one(".badge").get_text() == "private"
    assert private.select_one(".creator").get_text() == "DOLMEN TEST"
    # A sequence nests, collapsible without script, to any depth.
    seq = table.select_one("details.tag-seq[data-path='00081140']")
    assert seq.select_one("summary .k").get_text(strip=True) == "ReferencedImageSequence"
    inner = seq.select_one("details.tag-seq[data-path='00081140/0/0040A170']")
    assert inner.select_one(".tag-row[data-path='00081140/0/0040A170/0/00080104'] .v").get_text() == "Tissue"
    # Binary and long values are shown by length with a download link, never dumped.
    for path, length in (("00291002", 600), ("7FE00010", 32 * 32 * 2), ("00204000", 780)):
        cell = table.select_one(f".tag-row[data-path='{path}'] .v")
        assert cell.select_one(".bulk").get_text() == f"{length:,} bytes"
        assert cell.select_one("a.download")["href"] == f"/instances/{inst.public_id}/tags/{path}"
    blob = client.get(f"/instances/{inst.public_id}/tags/00291002")
    assert blob.data == b"\x01\x02" * 300 and blob.mimetype == "application/octet-stream"
    assert blob.headers["Content-Disposition"].startswith("attachment")
    text = client.get(f"/instances/{inst.public_id}/tags/00204000")
    assert text.data.decode() == ("long comment " * 60).strip() and text.mimetype == "text/plain"
    assert client.get(f"/instances/{inst.public_id}/tags/00081140/7/00081150").status_code == 404
    assert client.get(f"/instances/{inst.public_id}/tags/../../etc").status_code == 404


def test_preview_frames_and_windows(filled: Any, client: Any) -> None:
    with filled.app_context():
        mf = one(Instance, Instance.number_of_frames == 5)
        ct = one(Instance, Instance.sop_instance_uid == demodata.uid("instance", 1, 0, 0, 0))
    page = soup(client.get(f"/instances/{mf.public_id}?frame=3"))
    slider = page.select_one("#viewer input[type=range][name=frame]")
    assert (slider["min"], slider["max"], slider["value"]) == ("1", "5", "3")
    assert page.select_one("#viewer a[rel=next]")["href"] == f"/instances/{mf.public_id}?frame=4"
    img = page.select_one("#viewer img#preview")
    assert img["src"].startswith(f"/instances/{mf.public_id}/preview.png?") and "frame=3" in img["src"]
    assert page.select_one("#viewer select[name=window]") is None  # presets are for CT
    frames = []
    for n in (1, 2, 3):
        response = client.get(f"/instances/{mf.public_id}/preview.png?frame={n}")
        assert response.mimetype == "image/png" and response.headers["Cache-Control"].startswith("private")
        image = Image.open(io.BytesIO(response.data))
        assert image.size == (32, 32)
        frames.append(image.getpixel((31, 31)))
    assert len(set(frames)) == 3  # three different frames
    # The htmx request for another frame gets the viewer alone.
    part = soup(client.get(f"/instances/{mf.public_id}?frame=2", headers={"HX-Request": "true"}))
    assert part.find("html") is None and part.select_one("section#viewer output").get_text() == "2"
    # A frame that does not exist gets a placeholder saying why, not a broken image.
    missing = client.get(f"/instances/{mf.public_id}/preview.png?frame=9")
    assert missing.status_code == 200 and missing.data.startswith(b"\x89PNG")

    page = soup(client.get(f"/instances/{ct.public_id}?window=ct-lung"))
    assert page.select_one("#viewer select[name=window] option[selected]")["value"] == "ct-lung"
    lung = client.get(f"/instances/{ct.public_id}/preview.png?window=ct-lung").data
    bone = client.get(f"/instances/{ct.public_id}/preview.png?window=ct-bone").data
    custom = client.get(f"/instances/{ct.public_id}/preview.png?window=40,400")
    assert lung != bone and custom.status_code == 200
    assert client.get(f"/instances/{ct.public_id}/preview.png?window=nope").status_code == 400
    small = client.get(f"/instances/{ct.public_id}/preview.png?size=16").data
    assert Image.open(io.BytesIO(small)).size == (16, 16)


def test_thumbnails_are_cached_and_conditional(filled: Any, client: Any) -> None:
    with filled.app_context():
        inst = Instance.select().first()
        folder = services().store.root / "cache" / "thumbs" / inst.public_id[:2] / inst.public_id
    response = client.get(f"/instances/{inst.public_id}/thumbnail.png")
    assert response.status_code == 200 and response.data.startswith(b"\x89PNG")
    assert len(list(folder.iterdir())) == 1
    again = client.get(f"/instances/{inst.public_id}/thumbnail.png",
                       headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304


def test_a_thumbnail_grid_renders_once(app: Any, client: Any, short_tmp: Path, monkeypatch: Any) -> None:
    from dicomnode.archive import resources

    paths = [browse_data.save(demodata.make_instance(901, 0, 0, n, size=8), short_tmp / f"g{n}.dcm")
             for n in range(12)]
    ingest(app, *paths)
    rendered: list[Path] = []
    real = resources.render

    def counting(path: Path, **kw: Any) -> bytes:
        rendered.append(path)
        return real(path, **kw)

    monkeypatch.setattr(resources, "render", counting)
    with app.app_context():
        series = Series.select().get()
    for _ in range(3):  # the grid opened three times, by browsers without a cached copy
        grid = soup(client.get(f"/series/{series.public_id}"))
        images = [img["src"] for img in grid.select("ol.thumbs img")]
        assert len(images) == 12
        for src in images:
            response = client.get(src)
            assert response.status_code == 200 and response.data.startswith(b"\x89PNG")
    assert len(rendered) == 12 and len(set(rendered)) == 12


def test_file_download_and_pdf(filled: Any, client: Any, extra_files: dict[str, Path]) -> None:
    with filled.app_context():
        pdf = one(Instance, Instance.sop_class_uid == browse_data.ENCAPSULATED_PDF)
        ct = Instance.select().where(Instance.sop_class_uid != browse_data.ENCAPSULATED_PDF).first()
    response = client.get(f"/instances/{pdf.public_id}/file")
    assert response.data == extra_files["pdf"].read_bytes()
    assert response.mimetype == "application/dicom"
    assert response.headers["Content-Disposition"] == f"attachment; filename={pdf.public_id}.dcm"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    page = soup(client.get(f"/instances/{pdf.public_id}"))
    assert page.select_one("#viewer .pdf-box a")["href"] == f"/instances/{pdf.public_id}/pdf"
    assert page.select(".crumbs a")[-1].get_text(strip=True) == "DOC"  # no '#' before a missing series number
    document = client.get(f"/instances/{pdf.public_id}/pdf")
    assert document.mimetype == "application/pdf" and document.data == browse_data.PDF
    assert document.headers["Content-Disposition"].startswith("inline")
    assert client.get(f"/instances/{ct.public_id}/pdf").status_code == 404
    # An instance without pixels gets a placeholder image.
    assert client.get(f"/instances/{pdf.public_id}/preview.png").data.startswith(b"\x89PNG")


@pytest.mark.parametrize("level", ["patient", "study", "series"])
def test_archive_streams_every_file(filled: Any, client: Any, level: str) -> None:
    with filled.app_context():
        patient = one(Patient, Patient.patient_id == "PAT00000")
        study = patient.studies.get()
        series = study.series.order_by(Series.series_number).first()
        row = {"patient": patient, "study": study, "series": series}[level]
        expected = {"patient": 10, "study": 10, "series": 5}[level]
        if level == "series":
            sizes = sorted(i.file_size for i in series.instances)
        else:
            sizes = sorted(i.file_size for i in Instance.select().join(Series).join(Study).where(
                Study.patient == patient.pk))
    prefix = {"patient": "patients", "study": "studies", "series": "series"}[level]
    response = client.get(f"/{prefix}/{row.public_id}/archive")
    assert response.status_code == 200 and response.mimetype == "application/zip"
    assert response.headers["Content-Disposition"].startswith("attachment; filename=")
    archive = zipfile.ZipFile(io.BytesIO(response.data))
    names = archive.namelist()
    assert len(names) == expected and archive.testzip() is None
    assert sorted(archive.getinfo(n).file_size for n in names) == sizes
    assert names[0].startswith("MULLER^ANNA PAT00000/") and names[0].endswith("IM00001.dcm")


def test_unknown_and_malformed_ids_are_404_pages(client: Any) -> None:
    for url in (f"/studies/{MISSING}", f"/patients/{MISSING}", f"/series/{MISSING}", f"/instances/{MISSING}",
                "/studies/not-an-id", "/instances/..%2F..%2Fetc", f"/instances/{MISSING}/preview.png",
                f"/instances/{MISSING}/file", f"/studies/{MISSING}/archive", "/series/%00",
                f"/instances/{MISSING.upper()}"):
        response = client.get(url)
        assert response.status_code == 404, url
        if url.endswith(("preview.png", "file", "archive")):
            continue
        page = soup(response)
        assert page.select_one("h1").get_text().startswith("404"), url
    # A program (fetch() sends Sec-Fetch-Dest: empty) gets Orthanc's error body on a shared path.
    answer = client.get(f"/studies/{MISSING}", headers={"Accept": "application/json", "Sec-Fetch-Dest": "empty"})
    assert answer.json["HttpStatus"] == 404 and answer.json["OrthancStatus"] == 17


def test_error_pages_speak_to_people(client: Any) -> None:
    page = soup(client.get(f"/studies/{MISSING}"))
    assert page.select_one("h1").get_text(strip=True) == "404 · Not found"  # not an exception class name
    assert page.select_one(".alert-error").get_text(strip=True) == (
        f"No study {MISSING} in the archive: it may have been deleted")
    assert page.select_one("main a")["href"] == "/studies"
    answer = client.get(f"/studies/{MISSING}", headers={"Sec-Fetch-Dest": "empty"}).json
    assert answer["OrthancError"] == "Unknown resource" and answer["Details"] == (
        f"No study {MISSING} in the archive: it may have been deleted")


def test_strings_from_files_are_shown_as_text(filled: Any, client: Any) -> None:
    with filled.app_context():
        patient = one(Patient, Patient.patient_id == "XSS<b>1</b>")
        study = patient.studies.get()
        series = study.series.get()
        inst = series.instances.get()
    for url in ("/studies", "/patients", f"/patients/{patient.public_id}", f"/studies/{study.public_id}",
                f"/series/{series.public_id}", f"/instances/{inst.public_id}", "/lookup?q=XSS<b>1</b>",
                f"/studies/{study.public_id}/delete"):
        page = soup(client.get(url))
        assert all(s.get("src") for s in page.find_all("script")), url  # no script but our files
        assert page.find("img", src="x") is None and page.find("b") is None and page.find("i") is None, url
    page = soup(client.get("/studies?name=script"))
    assert rows(page)[0].select_one("td.name").get_text(strip=True) == browse_data.XSS
    page = soup(client.get(f"/instances/{inst.public_id}"))
    assert page.select_one(".tag-row[data-path='00100010'] .v").get_text() == browse_data.XSS


# -- deleting ----------------------------------------------------------------------------------


def test_delete_series_after_confirmation(filled: Any, client: Any) -> None:
    with filled.app_context():
        patient = one(Patient, Patient.patient_id == "PAT00000")
        study = patient.studies.get()
        first, second = list(study.series.order_by(Series.series_number))
        files = [services().store.path(i.path) for i in first.instances]
    # The page links to a confirmation that works without script; htmx shows it inline.
    page = soup(client.get(f"/series/{first.public_id}"))
    link = page.select_one(".actions a.danger")
    assert link["href"] == link["hx-get"] == f"/series/{first.public_id}/delete"
    confirm = soup(client.get(link["href"]))
    form = confirm.select_one(".confirm form")
    assert form["method"] == "post" and form["action"] == f"/series/{first.public_id}/delete"
    assert "5 instances" in confirm.select_one(".confirm").get_text()
    inline = soup(client.get(link["href"], headers={"HX-Request": "true"}))
    assert inline.find("html") is None and inline.select_one(".confirm form") is not None
    assert all(f.exists() for f in files)

    response = client.post(form["action"])
    assert response.status_code == 303 and response.headers["Location"] == f"/studies/{study.public_id}"
    page = soup(client.get(response.headers["Location"]))
    assert "Deleted series" in page.select_one(".alert-ok").get_text()
    assert len(page.select(".series-list tbody tr[data-href]")) == 1
    assert not any(f.exists() for f in files)
    assert client.get(f"/series/{first.public_id}").status_code == 404
    with filled.app_context():
        assert Study.get_by_id(study.pk).num_instances == 5

    # The last series takes the study and the patient with it: back to the study list.
    response = client.post(f"/series/{second.public_id}/delete")
    assert response.headers["Location"] == "/studies"
    assert client.get(f"/patients/{patient.public_id}").status_code == 404


def test_delete_is_a_post_from_our_own_pages(filled: Any, client: Any) -> None:
    with filled.app_context():
        study = Study.select().first()
    response = client.post(f"/studies/{study.public_id}/delete", headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 403
    response = client.post(f"/studies/{study.public_id}/delete", headers={"Origin": "http://evil.example"})
    assert response.status_code == 403
    assert client.get(f"/studies/{study.public_id}").status_code == 200
    assert client.post(f"/studies/{MISSING}/delete").status_code == 404


@pytest.mark.parametrize("level", ["patient", "study", "instance"])
def test_delete_each_level(filled: Any, client: Any, level: str) -> None:
    with filled.app_context():
        inst = one(Instance, Instance.sop_instance_uid == demodata.uid("instance", 1, 0, 1, 2))
        row = {"patient": inst.series.study.patient, "study": inst.series.study, "instance": inst}[level]
        before = Instance.select().count()
    prefix = {"patient": "patients", "study": "studies", "instance": "instances"}[level]
    response = client.post(f"/{prefix}/{row.public_id}/delete")
    assert response.status_code == 303
    expected = {"patient": "/patients", "study": "/studies", "instance": f"/series/{inst.series.public_id}"}
    assert response.headers["Location"] == expected[level]
    with filled.app_context():
        assert before - Instance.select().count() == (1 if level == "instance" else 10)


# -- lookup ------------------------------------------------------------------------------------


def test_lookup_box(filled: Any, client: Any) -> None:
    with filled.app_context():
        inst = Instance.select().join(Series).join(Study).join(Patient).where(
            Patient.patient_id == "PAT00001").first()
        series, study = inst.series, inst.series.study
    page = soup(client.get("/studies"))
    box = page.select_one("header form.lookup")
    assert box["action"] == "/lookup" and box["method"] == "get" and box.select_one("input[name=q]")
    for text, target in ((study.patient.patient_id, f"/patients/{study.patient.public_id}"),
                         (study.accession_number, f"/studies/{study.public_id}"),
                         (study.study_instance_uid, f"/studies/{study.public_id}"),
                         (series.series_instance_uid, f"/series/{series.public_id}"),
                         (inst.sop_instance_uid, f"/instances/{inst.public_id}")):
        response = client.get("/lookup", query_string={"q": text})
        assert response.status_code == 303 and response.headers["Location"] == target, text
    missing = client.get("/lookup?q=NOPE")
    assert missing.status_code == 404 and soup(missing).select_one(".alert-warn code").get_text() == "NOPE"
    assert client.get("/lookup?q=PAT*").status_code == 400
    assert client.get("/lookup?q=").headers["Location"].endswith("/studies")


def test_lookup_lists_several_matches(app: Any, client: Any, short_tmp: Path) -> None:
    paths = []
    for p in (0, 1):
        ds = demodata.make_instance(950 + p, 0, 0, 0, size=8)
        ds.AccessionNumber = "SAME"
        paths.append(browse_data.save(ds, short_tmp / f"a{p}.dcm"))
    ingest(app, *paths)
    page = soup(client.get("/lookup?q=SAME"))
    links = page.select("#lookup-table tbody a")
    assert len(links) == 2 and all(a["href"].startswith("/studies/") for a in links)


def test_patterns_page_shows_the_components(client: Any) -> None:
    page = soup(client.get("/-/patterns"))
    for selector in (".badge-ok", ".alert-error", "form#filters", ".pager", ".thumbs", "#viewer, .viewer",
                     ".tags[role=table] details.tag-seq", ".tag-row.private .creator", ".dropzone",
                     "#upload-table", ".confirm", ".crumbs", ".module dl.kv"):
        assert page.select_one(selector) is not None, selector
    assert page.select_one(".tag-row[data-path='00100010'] .v").get_text().startswith("<script>")


# -- login -------------------------------------------------------------------------------------


@pytest.fixture
def locked(short_tmp: Path, demo_files: list[Path]) -> Iterator[Any]:
    from werkzeug.security import generate_password_hash

    doc = make_config_doc(short_tmp / "locked", http={"users": {"alice": generate_password_hash("secret")}})
    application = create_app(config.from_dict(doc))
    application.config["TESTING"] = True
    ingest(application, *demo_files[:2])
    yield application
    index.close_index()


def test_every_browse_route_needs_a_login_when_users_exist(locked: Any) -> None:
    with locked.app_context():
        inst = Instance.select().first()
        ids = {"i": inst.public_id, "se": inst.series.public_id, "st": inst.series.study.public_id,
               "p": inst.series.study.patient.public_id}
    urls = ["/studies", "/patients", "/upload", "/-/patterns", "/lookup?q=x", f"/patients/{ids['p']}",
            f"/studies/{ids['st']}", f"/series/{ids['se']}", f"/instances/{ids['i']}",
            f"/instances/{ids['i']}/preview.png", f"/instances/{ids['i']}/thumbnail.png",
            f"/instances/{ids['i']}/file", f"/instances/{ids['i']}/pdf",
            f"/instances/{ids['i']}/tags/00100010",
            f"/patients/{ids['p']}/archive", f"/studies/{ids['st']}/archive", f"/series/{ids['se']}/archive",
            f"/series/{ids['se']}/delete"]
    client = browser_client(locked)
    for url in urls:
        response = client.get(url)
        assert response.status_code == 302 and "/login" in response.headers["Location"], url
        assert client.get(url, headers={"HX-Request": "true"}).status_code == 401, url
    for url in (f"/series/{ids['se']}/delete", f"/instances/{ids['i']}/delete", "/upload", "/upload/check"):
        assert client.post(url).status_code in (302, 401), url
    with locked.app_context():
        assert Instance.select().count() == 2
    # With credentials, the same pages answer.
    auth = {"Authorization": "Basic YWxpY2U6c2VjcmV0"}  # alice:secret
    assert client.get("/studies", headers=auth).status_code == 200
    assert client.get(f"/instances/{ids['i']}/preview.png", headers=auth).status_code == 200
