"""The DICOM service badge in every page's header, and the /system page it links to."""
from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from bs4 import BeautifulSoup

from tests.conftest import wait_for
from webapp.services import services


def badge_of(html: str) -> Any:
    found = BeautifulSoup(html, "html.parser").select("header .dicom-badge")
    assert len(found) == 1, "the header has no DICOM badge"
    return found[0]


@pytest.mark.parametrize("path", ["/studies", "/patients", "/upload", "/system", "/jobs", "/no/such/page"])
def test_every_page_says_when_the_dicom_service_is_down(client: Any, path: str) -> None:
    badge = badge_of(client.get(path).get_data(as_text=True))  # the app fixture runs no sidecar
    assert badge["data-dicom-state"] == "down"
    assert badge.get_text(strip=True) == "DICOM down"
    assert badge["href"] == "/system"
    assert "not running" in badge["title"]


def test_badge_probes_the_sidecar_at_most_once_per_interval(app: Any, client: Any, monkeypatch: Any) -> None:
    with app.app_context():
        control = services().control
    calls: list[str] = []

    def status(op: str, timeout: float | None = None, **args: Any) -> dict[str, Any]:
        calls.append(op)
        return {"aet": "DOLMEN"}

    monkeypatch.setattr(control, "call", status)
    for _ in range(5):
        assert badge_of(client.get("/studies").get_data(as_text=True))["data-dicom-state"] == "up"
    assert calls == ["status"]


def test_htmx_partials_carry_no_header(client: Any) -> None:
    html = client.get("/studies", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert not BeautifulSoup(html, "html.parser").select(".dicom-badge")


def test_badge_follows_a_sidecar_killed_and_restarted(dolmen_factory: Any) -> None:
    server = dolmen_factory()

    def state() -> str:
        return str(badge_of(server.get("/studies").text)["data-dicom-state"])

    assert state() == "up"
    old = server.sidecar_pid()
    os.kill(old, signal.SIGKILL)
    # The supervisor waits before restarting a sidecar that died young: the header says so meanwhile.
    wait_for(lambda: state() == "restarting", timeout=10, what="the badge to say restarting")
    wait_for(lambda: state() == "restarted", timeout=30, what="the badge to say restarted")
    badge = badge_of(server.get("/patients").text)
    assert badge.get_text(strip=True) == "DICOM restarted"
    assert "killed by signal 9" in badge["title"] and "restarted 1 time" in badge["title"]
    assert server.sidecar_pid() != old
