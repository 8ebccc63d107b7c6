"""In Chromium against a real `dolmen serve` that refuses unknown AE titles everything: an
echoscu refusal appears in the association log by itself (live refresh), "Add as modality"
opens the add form pre-filled, saving it makes the same AE's next echo succeed.
Screenshots go to $DOLMEN_SCREENSHOTS (default: a temporary folder)."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

SHOTS = Path(os.environ.get("DOLMEN_SCREENSHOTS") or tempfile.mkdtemp(prefix="dolmen-shots-"))


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    from tests.conftest import make_config_doc
    from tests.conftest import start_dolmen
    from tests.conftest import write_toml

    folder = Path(tempfile.mkdtemp(prefix="da-", dir="/tmp"))
    config = write_toml(folder / "c.toml", make_config_doc(
        folder / "d", storage={"fsync": False}, dicom={"unknown_aet": []}))
    process = start_dolmen(config, folder / "log")
    yield process
    process.stop()


def echo(dcmtk: Any, server: Any, aet: str) -> str:
    """C-ECHO the server as ``aet``; DCMTK's verbose output (it exits 0 even when refused)."""
    return str(dcmtk("echoscu", "-v", "-aet", aet, "-aec", server.aet, "127.0.0.1",
                     str(server.dicom_port)).stderr)


def test_a_refused_node_appears_live_then_is_added_and_accepted(page: Any, server: Any, dcmtk: Any) -> None:
    page.goto("/associations")
    expect(page.locator("#results")).to_have_attribute("data-live", "on")

    # The page is already open: the refusal arrives through the live refresh, no reload.
    assert "Unknown Status: 0x124" in echo(dcmtk, server, "US_ROOM4")
    refused = page.locator('#assoc-table tr[data-kind="unknown_aet"]', has_text="US_ROOM4")
    expect(refused).to_have_count(1, timeout=15000)
    expect(refused.locator(".assoc-why")).to_contain_text("unknown AE titles may not check the connection")
    # Refreshes answer 204 while nothing changed: an opened detail stays open.
    refused.locator("details.assoc-raw summary").click()
    with page.expect_response(lambda r: "/associations" in r.url and r.status == 204, timeout=15000):
        pass
    expect(refused.locator("details.assoc-raw")).to_have_attribute("open", "")
    page.screenshot(path=str(SHOTS / "associations.png"), full_page=True)

    refused.get_by_role("link", name="Add as modality").click()
    page.wait_for_url("**/modalities/new?*")
    form = page.locator("form.modality-form")
    expect(form.locator('input[name="aet"]')).to_have_value("US_ROOM4")
    expect(form.locator('input[name="host"]')).to_have_value("127.0.0.1")
    expect(form.locator('input[name="name"]')).to_have_value("us_room4")
    page.screenshot(path=str(SHOTS / "associations-add-modality.png"), full_page=True)
    form.get_by_role("button", name="Add").click()
    page.wait_for_url("**/modalities")
    expect(page.locator('tr[data-modality="us_room4"]')).to_have_count(1)

    assert "Echo Response (Success)" in echo(dcmtk, server, "US_ROOM4")

    page.goto("/associations?aet=US_ROOM4")
    row = page.locator('#assoc-table tr[data-kind="unknown_aet"]')
    expect(row.locator(".assoc-since")).to_have_text("Since declared as us_room4.")
    expect(row.get_by_role("link", name="Add as modality")).to_have_count(0)
    # The refused association, then the accepted one: two "Association" rows, both released;
    # the one refusal is the echo before the node was added.
    expect(page.locator('#assoc-table tr[data-accepted="no"]')).to_have_count(1)
    expect(page.locator('#assoc-table tr[data-accepted="yes"]')).to_have_count(2)


def test_filters_update_the_list_and_the_address(page: Any, server: Any, dcmtk: Any) -> None:
    echo(dcmtk, server, "FILTERME")
    page.goto("/associations")
    page.fill('input[name="aet"]', "filterme")
    page.wait_for_url("**aet=filterme*")
    rows = page.locator("#assoc-table tr[data-event]")
    expect(rows).to_have_count(2)  # the association and its refused echo
    page.select_option('select[name="result"]', "refused")
    page.wait_for_url("**result=refused*")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Echo (C-ECHO)")
    # Typing then at once ticking Pause: the filter sent as the box loses focus must not undo it.
    page.fill('input[name="aet"]', "FILTERM")
    page.get_by_label("Pause").check()
    expect(page.locator("#results")).to_have_attribute("data-live", "off")
    page.wait_for_url("**live=0*")
    assert "aet=FILTERM" in page.url
    expect(page.get_by_label("Pause")).to_be_checked()
    page.get_by_label("Pause").uncheck()
    expect(page.locator("#results")).to_have_attribute("data-live", "on")
    assert "live=0" not in page.url
