"""In Chromium: echo a modality, query a study by name, retrieve it by C-MOVE and by C-GET, open it
locally, and send it to storescp watching the job reach 100 %."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.test_qr_pages import Env
from tests.test_qr_pages import qr_environment

pytestmark = [pytest.mark.browser, pytest.mark.orthanc]


@pytest.fixture(scope="module")
def env(dcmtk: Any) -> Iterator[Env]:
    with qr_environment(dcmtk, lost=False) as environment:
        yield environment


@pytest.fixture
def page(browser: Any, env: Env) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=env.dolmen.url)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield tab
    context.close()
    assert not errors, errors  # a CSP violation or a script error shows here


def test_echo_a_modality(page: Any) -> None:
    page.goto("/modalities")
    page.locator('tr[data-modality="pacs"] .echo-cell button').click()
    ok = page.locator('tr[data-modality="pacs"] .echo-ok')
    ok.wait_for()
    assert ok.inner_text().startswith("Echo OK")
    page.locator('tr[data-modality="closed"] .echo-cell button').click()
    page.locator('tr[data-modality="closed"] .echo-error').wait_for()
    assert "Connection refused" in page.locator('tr[data-modality="closed"] .echo-error').inner_text()
    assert page.url.endswith("/modalities")  # answered within the page


def retrieve(page: Any, name: str, method: str) -> None:
    """Query the study of patient ``name`` and retrieve it; wait for the job to succeed."""
    page.goto("/query")
    page.select_option('select[name="modality"]', "pacs")
    page.fill('input[name="PatientName"]', name)
    page.get_by_role("button", name="Search").click()
    row = page.locator("tr.qr-row")
    row.first.wait_for()
    assert row.count() == 1 and name.rstrip("*") in row.first.inner_text()
    assert "PatientName=" in page.url  # the search is a bookmark
    assert row.first.locator(".here").inner_text().strip() == "not here"
    row.first.locator("details.retrieve summary").click()
    dialog = row.first.locator(".dialog-panel")
    assert dialog.locator('input[name="destination"]').input_value() == "DOLMEN"
    dialog.get_by_role("button", name=method).click()
    dialog.locator('.job-inline[data-state="success"]').wait_for(timeout=30000)
    assert dialog.locator(".job-percent").inner_text() == "100 %"


def test_query_then_retrieve_by_move_and_by_get_and_open_locally(page: Any) -> None:
    retrieve(page, "MULLER*", "C-MOVE")
    page.locator(".job-local-link").first.click()
    page.wait_for_url("**/studies/*")
    assert "MULLER" in page.locator("main").inner_text()

    retrieve(page, "SCHMIDT*", "C-GET")
    page.locator(".job-local-link").first.click()
    page.wait_for_url("**/studies/*")
    assert "SCHMIDT" in page.locator("main").inner_text()

    page.goto("/query?modality=pacs&level=study")
    badges = page.locator("tr.qr-row .here")
    assert sorted(badges.all_inner_texts()) == ["complete · 6", "complete · 6"]


def test_send_a_study_and_watch_the_job_reach_100(page: Any, env: Env) -> None:
    page.goto("/query?modality=pacs&level=study&PatientName=MULLER*")
    here = page.locator("tr.qr-row .here")
    if here.inner_text().strip() == "not here":  # run alone: bring it here first
        retrieve(page, "MULLER*", "C-MOVE")
        page.goto("/query?modality=pacs&level=study&PatientName=MULLER*")
    page.locator("tr.qr-row a.here").click()
    page.wait_for_url("**/studies/*")
    form = page.locator("form.send-form")
    form.locator('select[name="modality"]').select_option("scp")
    form.get_by_role("button", name="Send").click()
    done = page.locator('.send-result .job-inline[data-state="success"]')
    done.wait_for(timeout=30000)
    assert done.locator(".job-percent").inner_text() == "100 %"
    assert done.locator("progress").get_attribute("value") == "100"
    assert len(list(env.scp_dir.iterdir())) == 6

    done.locator("a").first.click()  # "Job #n"
    page.wait_for_url("**/jobs/*")
    assert page.locator(".job-state").first.inner_text().lower() == "success"
    page.goto("/jobs")
    assert page.locator("tr[data-job] .job-state").first.inner_text().lower() == "success"
