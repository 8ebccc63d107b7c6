"""In Chromium against a real `dolmen serve`: upload files and a ZIP, filter the study list, open
study → series → instance, page through frames, delete a series. Screenshots go to
$DOLMEN_SCREENSHOTS (default: a temporary folder) for a person to look at."""
from __future__ import annotations

import os
import re
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from urllib.parse import urlparse

import pytest
from playwright.sync_api import expect

from tests import browse_data

pytestmark = pytest.mark.browser

SHOTS = Path(os.environ.get("DOLMEN_SCREENSHOTS") or tempfile.mkdtemp(prefix="dolmen-shots-"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.conftest import make_config_doc
    from tests.conftest import start_dolmen
    from tests.conftest import write_toml

    folder = Path(tempfile.mkdtemp(prefix="db-", dir="/tmp"))
    config = write_toml(folder / "c.toml", make_config_doc(folder / "d", storage={"fsync": False}))
    process = start_dolmen(config, folder / "log")
    yield process
    process.stop()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def wait_done(page: Any) -> str:
    title = page.locator("[data-progress-title]")
    expect(title).to_have_text(re.compile(r"^Done"), timeout=60000)
    return str(title.inner_text())


def loaded(images: Any) -> None:
    """Wait until every image of the locator has arrived and decoded (no page-side eval: CSP)."""
    for n in range(images.count()):
        expect(images.nth(n)).to_have_js_property("complete", True)
        assert images.nth(n).evaluate("i => i.naturalWidth") > 0


def test_browse_the_archive(page: Any, demo_files: list[Path], short_tmp: Path) -> None:
    # 1. Upload ten files, then a ZIP with the rest, a multi-frame instance and a file already stored.
    page.goto("/upload")
    page.set_input_files("#pick-files", [str(p) for p in demo_files[:10]])
    assert wait_done(page).startswith("Done: 10 stored, 0 already stored, 0 rejected")
    assert page.locator("#upload-table tbody tr[data-status=stored]").count() == 10
    bundle = short_tmp / "more.zip"
    multiframe = browse_data.multiframe(short_tmp / "mf.dcm", frames=6, size=64)
    with zipfile.ZipFile(bundle, "w") as zf:
        for path in demo_files[10:]:
            zf.write(path, "export/" + "/".join(path.parts[-4:]))
        zf.write(multiframe, "export/mf.dcm")
        zf.writestr("../evil.dcm", b"x")
    page.set_input_files("#pick-files", [str(bundle), str(demo_files[0])])
    assert wait_done(page).startswith("Done: 21 stored, 1 already stored, 1 rejected")
    skipped = page.locator("#upload-table tbody tr[data-status=duplicate]")
    assert "not sent again" in skipped.inner_text()  # found by the index before sending
    assert "'..' component" in page.locator("#upload-table tbody tr[data-status=rejected]").inner_text()
    shot(page, "upload")

    # 2. Filter the study list as one types; the URL follows, without empty fields.
    page.goto("/studies")
    rows = page.locator("#study-table tbody tr[data-href]")
    assert rows.count() == 3
    with page.expect_response(re.compile(r"/studies\?")):
        page.fill("#f-name", "mull")
    expect(rows).to_have_count(1)
    query = parse_qs(urlparse(page.url).query, keep_blank_values=True)
    assert query == {"name": ["mull"], "sort": ["date"], "dir": ["desc"], "per": ["50"]}  # no empty fields
    assert "MULLER" in rows.first.inner_text()
    shot(page, "studies-filtered")
    page.goto("/studies?modality=CT")
    assert rows.count() == 1 and "SCHMIDT" in rows.first.inner_text()
    page.goto("/studies")
    page.locator("th a", has_text="Patient ID").click()
    page.wait_for_url(re.compile(r"sort=id"))
    ids = page.locator("#study-table tbody tr[data-href] td:nth-child(3)").all_inner_texts()  # after the tick box
    assert ids == sorted(ids)
    shot(page, "studies")

    # 3. Study -> series -> instance.
    page.locator("#study-table tbody tr[data-href]", has_text="SCHMIDT").locator("td.name a").click()
    page.wait_for_url(re.compile(r"/studies/"))
    assert page.locator(".series-list tbody tr[data-href]").count() == 2
    loaded(page.locator("img.mini"))
    shot(page, "study")
    page.locator(".series-list tbody tr[data-href]").first.locator("td:nth-child(4) a").click()
    page.wait_for_url(re.compile(r"/series/"))
    assert page.locator("ol.thumbs li.thumb").count() == 5
    loaded(page.locator(".thumb img"))
    shot(page, "series")
    page.locator("ol.thumbs li.thumb a").nth(2).click()
    page.wait_for_url(re.compile(r"/instances/"))
    assert page.locator(".tags .tag-row[data-path='00200013'] .v").inner_text() == "3"
    page.locator("#viewer select[name=window]").select_option("ct-bone")
    page.wait_for_url(re.compile(r"window=ct-bone"))
    loaded(page.locator("#preview"))
    shot(page, "instance")

    # 4. Page through the frames of the multi-frame instance.
    page.goto("/lookup?q=PAT00702")
    page.locator(".main-col tbody a").first.click()
    page.locator(".series-list tbody tr[data-href] td:nth-child(4) a").click()
    page.locator("ol.thumbs li.thumb a").first.click()
    page.wait_for_url(re.compile(r"/instances/"))
    assert page.locator("#frame-out").inner_text() == "1"
    page.locator("#viewer a[rel=next]").click()
    page.wait_for_url(re.compile(r"frame=2"))
    assert page.locator("#frame-out").inner_text() == "2"
    page.keyboard.press("ArrowRight")
    page.wait_for_url(re.compile(r"frame=3"))
    slider = page.locator("#frame")
    slider.fill("6")  # a range input takes fill(); it fires input and change
    page.wait_for_url(re.compile(r"frame=6"))
    assert "frame=6" in str(page.locator("#preview").get_attribute("src"))
    loaded(page.locator("#preview"))
    shot(page, "frames")

    # 5. Delete a series after confirming inline.
    page.goto("/studies?pid=PAT00001")
    page.locator("#study-table tbody tr[data-href] td.name a").click()
    page.wait_for_url(re.compile(r"/studies/"))
    study_url = page.url
    page.locator(".series-list tbody tr[data-href]").first.locator("td:nth-child(4) a").click()
    page.wait_for_url(re.compile(r"/series/"))
    page.locator(".actions a.danger").click()
    confirm = page.locator("#confirm .confirm")
    confirm.wait_for()
    assert "5 instances" in confirm.inner_text()
    shot(page, "delete-confirm")
    confirm.get_by_role("button", name="Delete series").click()
    page.wait_for_url(study_url)
    assert "Deleted series" in page.locator(".alert-ok").inner_text()
    assert page.locator(".series-list tbody tr[data-href]").count() == 1
    shot(page, "after-delete")


def test_upload_goes_on_after_a_failed_batch_and_retries_it(page: Any, short_tmp: Path) -> None:
    from dicomnode import demodata

    files = demodata.write(short_tmp / "many", patients=1, studies=1, series=1, instances=45, size=16,
                           first_patient=810)
    posts = []

    def drop_the_second_batch(route: Any) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        posts.append(route.request.url)
        if len(posts) in (2, 3):  # the second batch and its one automatic retry
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route(re.compile(r"/upload$"), drop_the_second_batch)
    page.goto("/upload")
    page.set_input_files("#pick-files", [str(p) for p in files])  # 20 + 20 + 5 files
    assert wait_done(page) == "Done: 25 stored, 0 already stored, 0 rejected, 20 not uploaded"
    assert len(posts) == 4
    page.expected_errors.extend(["Failed to load resource: net::ERR_CONNECTION_RESET"] * 2)
    failed = page.locator("#upload-table tbody tr[data-status=failed]")
    expect(failed).to_have_count(20)
    assert "the connection to the server failed" in failed.first.inner_text()
    retry = page.locator("[data-upload-stop]")
    expect(retry).to_have_text("Retry 20 failed")
    shot(page, "upload-failed-batch")
    page.unroute(re.compile(r"/upload$"))
    retry.click()
    assert wait_done(page) == "Done: 45 stored, 0 already stored, 0 rejected"
    expect(failed).to_have_count(0)
    expect(page.locator("#upload-table tbody tr[data-status=stored]")).to_have_count(45)
    expect(retry).to_be_hidden()
