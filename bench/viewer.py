#!/usr/bin/env python3
"""The series viewer: time to the first image and images per second while scrolling.

Loads ``--instances`` 512² CT instances (one series) into a real ``dolmen serve`` and, when
/usr/sbin/Orthanc exists, into Debian's Orthanc. In headless Chromium (Debian's chromium) it opens
``/series/<id>/view`` and prints

* the time from asking for the page (coming from the series page, another series' viewer seen
  before) to the first image shown, by the page's clock (Navigation Timing),
* images per second while stepping through the whole series with the arrow key, each step
  waiting until its image is shown (the prefetched frames come from the browser's cache),

and, for the server alone, the median time of one rendered frame over HTTP: Dolmen's
``/instances/<id>/preview.jpg`` (what the viewer shows) and ``preview.png`` beside Orthanc's
``/instances/<id>/preview`` (PNG). Goals: first image < 300 ms, scrolling >= 20 images/s.

    .venv/bin/python bench/viewer.py [--instances 100] [--size 512]
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dicomnode import demodata  # noqa: E402
from tests.conftest import make_config_doc  # noqa: E402
from tests.conftest import start_dolmen  # noqa: E402
from tests.conftest import write_toml  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def blobs(count: int, size: int, series: int = 0) -> list[bytes]:
    out = []
    for i in range(count):
        buffer = io.BytesIO()
        demodata.make_instance(80, 0, series, i, size, modality="CT").save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def load(url: str, data: list[bytes]) -> list[str]:
    with requests.Session() as session:
        return [session.post(url + "/instances", data=b, timeout=120).json()["ID"] for b in data]


def median_ms(session: requests.Session, urls: list[str]) -> float:
    times = []
    for u in urls:
        start = time.perf_counter()
        session.get(u, timeout=60).raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def browse(url: str, series: str, count: int, other: str) -> tuple[float, float, float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        # A browser and a server in use: another series' viewer seen before, then this series' page.
        page.goto(f"{url}/series/{other}/view")
        page.locator('#sv[data-shown="1"]').wait_for(timeout=30000)
        page.goto(f"{url}/series/{series}")
        start = time.perf_counter()
        page.goto(f"{url}/series/{series}/view", wait_until="commit")
        page.locator('#sv[data-shown="1"]').wait_for(timeout=30000)
        first = (time.perf_counter() - start) * 1000
        in_page = float(page.locator("#sv").get_attribute("data-first-ms") or 0)
        page.locator(".sv-stage").focus()
        page.wait_for_timeout(300)  # let the first prefetches land, as a user's first glance does
        start = time.perf_counter()
        for n in range(2, count + 1):
            page.keyboard.press("ArrowDown")
            page.locator(f'#sv[data-shown="{n}"]').wait_for(timeout=30000)
        rate = (count - 1) / (time.perf_counter() - start)
        browser.close()
    return first, in_page, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dolmen-viewer-"))
    data = blobs(args.instances, args.size)
    server = start_dolmen(write_toml(work / "d.toml", make_config_doc(work / "d", storage={"fsync": False})),
                          work / "d.log")
    orthanc = None
    try:
        ids = load(server.url, data)
        other_ids = load(server.url, blobs(3, args.size, series=1))
        series = requests.get(f"{server.url}/instances/{ids[0]}/series", timeout=30).json()["ID"]
        other = requests.get(f"{server.url}/instances/{other_ids[0]}/series", timeout=30).json()["ID"]
        first, in_page, rate = browse(server.url, series, args.instances, other)
        print(f"# viewer, {args.instances} x {args.size}² CT, Chromium headless")
        print(f"  first image      {in_page:7.0f} ms from the navigation's start, by the page's clock "
              f"(goal < 300); {first:.0f} ms as Playwright sees it")
        print(f"  scrolling        {rate:7.1f} images/s  (goal >= 20)")
        with requests.Session() as s:
            sample = ids[: min(30, len(ids))]
            jpeg = median_ms(s, [f"{server.url}/instances/{i}/preview.jpg?size=1024" for i in sample])
            png = median_ms(s, [f"{server.url}/instances/{i}/preview.png?size=1024" for i in sample])
        print(f"  one frame over HTTP, Dolmen: JPEG {jpeg:.1f} ms, PNG {png:.1f} ms")
        if os.path.exists("/usr/sbin/Orthanc"):
            from tests.conftest import start_orthanc

            orthanc = start_orthanc(work / "o")
            oids = load(orthanc.url, data)
            with requests.Session() as s:
                opng = median_ms(s, [f"{orthanc.url}/instances/{i}/preview" for i in oids[: len(sample)]])
            print(f"  one frame over HTTP, Orthanc /preview (PNG): {opng:.1f} ms  (Dolmen PNG / Orthanc: "
                  f"{png / opng:.2f})")
    finally:
        server.stop()
        if orthanc is not None:
            orthanc.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
