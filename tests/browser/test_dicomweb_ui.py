"""In Chromium: test DICOMweb servers, search Orthanc's DICOMweb plugin, drill down, retrieve a series
and open it here, and send a local study by STOW-RS from its page."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dicomnode import ids
from tests.conftest import DolmenProcess
from tests.conftest import OrthancProcess
from tests.test_dicomweb_client import LOCAL_PATIENT
from tests.test_dicomweb_client import REMOTE_PATIENT
from tests.test_dicomweb_client import _instances
from tests.test_dicomweb_client import _orthanc_count
from tests.test_dicomweb_client import dolmen_dw  # noqa: F401 - module fixtures of their own here
from tests.test_dicomweb_client import folder  # noqa: F401
from tests.test_dicomweb_client import orthanc  # noqa: F401
from tests.test_dicomweb_client import remote  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.orthanc]


@pytest.fixture
def page(browser: Any, dolmen_dw: DolmenProcess) -> Iterator[Any]:  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=dolmen_dw.url)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield tab
    context.close()
    assert not errors, errors  # a CSP violation or a script error shows here


def test_test_buttons_answer_in_the_page(page: Any) -> None:
    page.goto("/dicomweb/servers")
    page.locator('tr[data-server="orthanc"] button:has-text("Test")').click()
    page.locator("#dw-test .alert-ok").wait_for()
    assert "orthanc answers" in page.locator("#dw-test").inner_text()
    page.locator('tr[data-server="closed"] button:has-text("Test")').click()  # not hidden by the header
    page.locator("#dw-test .alert-error").wait_for()
    assert "Connection refused" in page.locator("#dw-test").inner_text()
    assert page.url.endswith("/dicomweb/servers")


def test_search_drill_down_retrieve_and_open_here(page: Any) -> None:
    remote_sets = _instances(REMOTE_PATIENT)
    family = str(remote_sets[0].PatientName).split("^")[0]
    page.goto("/dicomweb/servers")
    page.locator('tr[data-server="orthanc"] a:has-text("Search")').click()
    page.fill('input[name="PatientName"]', f"{family}*")
    page.get_by_role("button", name="Search").click()
    rows = page.locator("tr.qr-row")
    rows.first.wait_for()
    assert "PatientName=" in page.url  # the search is a bookmark
    study_row = rows.filter(has_text=str(remote_sets[0].PatientID))
    assert study_row.count() == 1
    study_row.locator("a.drill").click()
    page.wait_for_url("**level=series**")
    series_rows = page.locator("tr.qr-row")
    series_rows.first.wait_for()
    assert series_rows.count() == 2
    series_rows.first.get_by_role("button", name="Retrieve").click()
    job = series_rows.first.locator('.job-inline[data-state="success"]')
    job.wait_for(timeout=30000)
    assert job.locator(".job-percent").inner_text() == "100 %"
    job.locator(".job-local-link").click()
    page.wait_for_url("**/series/*")
    assert family in page.locator("main").inner_text()


def test_send_a_study_from_its_page(page: Any, orthanc: OrthancProcess) -> None:  # noqa: F811
    local = _instances(LOCAL_PATIENT)
    study_uid = str(local[0].StudyInstanceUID)
    page.goto(f"/studies/{ids.study_id(local[0].PatientID, study_uid)}")
    send = page.locator(".send-dicomweb")
    send.locator("select").select_option("orthanc")
    send.get_by_role("button", name="Send").click()
    send.locator('.job-inline[data-state="success"]').wait_for(timeout=30000)
    assert _orthanc_count(orthanc, study_uid) == 6
