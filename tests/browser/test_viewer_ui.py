"""The series viewer in Chromium against a real `dolmen serve` (issue 18): a 200-instance series by
wheel and keys, window/level by drag (the pixels change), cine of a multi-frame file, keyboard only,
a 390 px screen without horizontal scrolling."""
from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from playwright.sync_api import expect

from dicomnode import demodata

pytestmark = pytest.mark.browser

MULTIFRAME = Path(pydicom.data.__file__).parent / "test_files" / "examples_ybr_color.dcm"  # 30 frames, US


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.conftest import make_config_doc
    from tests.conftest import start_dolmen
    from tests.conftest import write_toml

    folder = Path(tempfile.mkdtemp(prefix="dv-", dir="/tmp"))
    config = write_toml(folder / "c.toml", make_config_doc(folder / "d", storage={"fsync": False}))
    process = start_dolmen(config, folder / "log")
    files = demodata.write(folder / "src", patients=1, studies=1, series=1, instances=200, size=64, first_patient=70)
    subprocess.run(["storescu", "-aec", process.aet, "127.0.0.1", str(process.dicom_port), *map(str, files)],
                   check=True, capture_output=True, env=dict(os.environ, TCP_NODELAY="1"), timeout=300)
    answer = requests.post(process.url + "/instances", data=MULTIFRAME.read_bytes(), timeout=60)
    assert answer.status_code == 200, answer.text
    process.extra["stack"] = process.get(f"/instances/{_first(process, 'PAT00070')}/series", program=True).json()["ID"]
    process.extra["cine"] = answer.json()["ParentSeries"]
    yield process
    process.stop()


def _first(server: Any, patient_id: str) -> str:
    found = server.post("/tools/find", program=True, json={"Level": "Instance", "Query": {"PatientID": patient_id},
                                                            "Limit": 1})
    return str(found.json()[0])


def _mean(page: Any) -> float:
    """The mean grey level of the image shown, read back through a canvas."""
    return float(page.evaluate("""() => {
        const img = document.querySelector('.sv-img');
        const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
        const g = c.getContext('2d'); g.drawImage(img, 0, 0);
        const d = g.getImageData(0, 0, c.width, c.height).data; let s = 0;
        for (let i = 0; i < d.length; i += 4) s += d[i];
        return s / (d.length / 4); }"""))


def _until(page: Any, predicate: Any, timeout: float = 15.0) -> None:
    """Poll ``predicate`` from Python (the page's CSP forbids Playwright's string predicates)."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        page.wait_for_timeout(50)


def _shown(page: Any, n: int) -> None:
    expect(page.locator("#sv")).to_have_attribute("data-shown", str(n), timeout=10000)


def test_scroll_a_200_instance_series_by_wheel_and_keys(page: Any, server: Any) -> None:
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/preview.jpg" in r.url else None)
    page.goto(f"/series/{server.extra['stack']}/view")
    _shown(page, 1)
    label = page.locator(".sv-pos")
    expect(label).to_contain_text("Image 1 / 200")
    first_src = page.locator("#sv").get_attribute("data-src")
    # The page preloads the first image and the script's request for it is that one, not a second.
    preload = page.locator("link[rel=preload][as=image]").get_attribute("href")
    assert first_src and first_src.endswith(preload) and asked[0] == first_src and asked.count(first_src) == 1
    box = page.locator(".sv-stage").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(3):
        page.mouse.wheel(0, 120)
    _shown(page, 4)
    expect(label).to_contain_text("Image 4 / 200")
    assert page.locator("#sv").get_attribute("data-src") != first_src
    page.keyboard.press("End")
    _shown(page, 200)
    page.keyboard.press("ArrowUp")
    _shown(page, 199)
    page.keyboard.press("Home")
    _shown(page, 1)
    # spatial order: the positions along the normal rise image by image
    positions = []
    for _ in range(3):
        page.keyboard.press("ArrowDown")
        positions.append(float(label.inner_text().split("·")[-1].strip().split()[0]))
    assert positions == sorted(positions) and len(set(positions)) == 3


def test_drag_changes_the_window_and_the_pixels(page: Any, server: Any) -> None:
    page.goto(f"/series/{server.extra['stack']}/view")
    _shown(page, 1)
    before = _mean(page)
    box = page.locator(".sv-stage").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 150, y + 250, steps=6)  # right and down: wider window, higher level
    page.mouse.up()
    # the image of the last window asked (the drag sends a few on the way)
    sv = page.locator("#sv")
    _until(page, lambda: bool(sv.get_attribute("data-window"))
           and sv.get_attribute("data-window") in (sv.get_attribute("data-src") or ""))
    after = _mean(page)
    assert abs(after - before) > 5, (before, after)
    expect(page.locator(".sv-wl")).to_contain_text("W ")
    page.keyboard.press("r")
    _until(page, lambda: "window=" not in (sv.get_attribute("data-src") or ""))


def test_cine_plays_a_multiframe_file(page: Any, server: Any) -> None:
    page.goto(f"/series/{server.extra['cine']}/view")
    _shown(page, 1)
    expect(page.locator(".sv-pos")).to_contain_text("frame 1 / 30")
    page.locator("[data-act=play]").click()
    expect(page.locator("[data-act=play]")).to_have_attribute("aria-pressed", "true")
    _until(page, lambda: int(page.locator("#sv").get_attribute("data-shown") or 0) >= 5)
    page.locator("[data-act=play]").click()
    expect(page.locator("[data-act=play]")).to_have_attribute("aria-pressed", "false")


def test_keyboard_only(page: Any, server: Any) -> None:
    page.goto(f"/series/{server.extra['stack']}/view")
    _shown(page, 1)
    next_button = page.locator("[data-act=next]")
    for _ in range(60):  # Tab through the page until the Next button has the focus
        if page.evaluate("document.activeElement && document.activeElement.dataset.act") == "next":
            break
        page.keyboard.press("Tab")
    expect(next_button).to_be_focused()
    page.keyboard.press("Enter")
    _shown(page, 2)
    page.keyboard.press("Shift+Tab")  # the slider
    page.keyboard.press("ArrowRight")
    _shown(page, 3)
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")  # the Cine button
    page.keyboard.press("Enter")
    expect(page.locator("[data-act=play]")).to_have_attribute("aria-pressed", "true")
    page.keyboard.press("Enter")
    expect(page.locator("[data-act=play]")).to_have_attribute("aria-pressed", "false")


def test_a_phone_screen_has_no_horizontal_scrolling(browser: Any, server: Any) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, base_url=server.url)
    try:
        tab = context.new_page()
        tab.goto(f"/series/{server.extra['stack']}/view")
        _shown(tab, 1)
        assert tab.evaluate("document.documentElement.scrollWidth") <= 390
        tab.screenshot(path=str(Path(tempfile.gettempdir()) / "dolmen-viewer-390.png"), full_page=True)
    finally:
        context.close()


def test_the_study_and_series_pages_link_the_viewer(page: Any, server: Any) -> None:
    series = server.get(f"/series/{server.extra['stack']}", program=True).json()
    page.goto(f"/studies/{series['ParentStudy']}")
    page.locator("table.series-list a.button", has_text="View").first.click()
    expect(page).to_have_url(f"{server.url}/series/{server.extra['stack']}/view")
    page.goto(f"/series/{server.extra['stack']}")
    page.get_by_role("link", name="Open the viewer").click()
    _shown(page, 1)


def test_the_browse_pages_fit_a_phone_screen(browser: Any, server: Any) -> None:
    """No page scrolls sideways at 390 px (wide tables scroll inside their frame): the study page
    did, by its long Study UID and its series table."""
    series = server.get(f"/series/{server.extra['stack']}", program=True).json()
    instance = series["Instances"][0]
    context = browser.new_context(viewport={"width": 390, "height": 844}, base_url=server.url)
    try:
        tab = context.new_page()
        study = server.get(f"/studies/{series['ParentStudy']}", program=True).json()
        for path in ("/studies", "/patients", f"/patients/{study['ParentPatient']}", f"/studies/{series['ParentStudy']}",
                     f"/series/{series['ID']}", f"/instances/{instance}", f"/studies/{series['ParentStudy']}/delete",
                     "/modalities", "/modalities/new", "/associations", "/jobs", "/exports", "/query",
                     "/dicomweb/servers", "/system", "/upload"):
            tab.goto(path)
            assert tab.evaluate("document.documentElement.scrollWidth") <= 390, path
    finally:
        context.close()
