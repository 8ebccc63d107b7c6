"""Orthanc Explorer 2 served from ``[http] oe2_path`` (webapp/pages/oe2.py).

OE2 itself is not on npm or PyPI (it is built from its Git repository, which this network
cannot reach), so the routes are checked with a stand-in build laid out as Vite lays out OE2's
``dist/`` (index.html, assets/index-<hash>.js, favicon.ico), run in Chromium. With a real build
at ``$DOLMEN_OE2_PATH`` the last test opens OE2's study list on Dolmen.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pydicom.data
import pytest

from dicomnode import config
from tests.conftest import browser_client
from tests.conftest import make_config_doc

CT = Path(pydicom.data.__file__).parent / "test_files" / "CT_small.dcm"

INDEX = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>OE2 stand-in</title>
<link rel="icon" href="/ui/app/favicon.ico"><script type="module" src="/ui/app/assets/index-4f2a.js"></script>
</head><body><div id="app">loading</div></body></html>"""

# What OE2's main.js does first: the pre-login configuration, then the configuration, then
# Orthanc's REST API (a placeholder an older build leaves for the plugin is filled in).
SCRIPT = """const api = "${ORTHANC_API_BASE_URL}";
const pre = await (await fetch("../api/pre-login-configuration")).json();
const conf = await (await fetch("/ui/api/configuration")).json();
const found = await (await fetch(api + "tools/find", {method: "POST", headers: {"Content-Type": "application/json"},
  body: JSON.stringify({Level: "Study", Query: {}, Expand: true})})).json();
const el = document.getElementById("app");
el.textContent = JSON.stringify({keycloak: pre.Keycloak, upload: conf.UiOptions.EnableUpload,
  plugins: Object.keys(conf.Plugins), route: location.pathname,
  patients: found.map(s => s.PatientMainDicomTags.PatientName)});
el.dataset.done = "1";
"""


@pytest.fixture
def oe2_build(tmp_path: Path) -> Path:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text(INDEX)
    (dist / "assets" / "index-4f2a.js").write_text(SCRIPT)
    (dist / "assets" / "app.css").write_text("body { color: #123; }")
    (dist / "favicon.ico").write_bytes(b"\0\0\1\0")
    (tmp_path / "secret.txt").write_text("outside the build")
    return dist


@pytest.fixture
def oe2_app(short_tmp: Path, oe2_build: Path) -> Any:
    from dicomnode.archive import index
    from webapp import create_app

    settings = config.from_dict(make_config_doc(short_tmp / "app", http={"oe2_path": str(oe2_build)}))
    application = create_app(settings)
    yield application
    index.close_index()


def test_the_build_is_served_with_vue_router_addresses_and_the_configuration(oe2_app: Any) -> None:
    browser = browser_client(oe2_app)
    for path in ("/ui/app/", "/ui/app", "/ui/app/index.html", "/ui/app/filtered-studies", "/ui/app/studies/x"):
        response = browser.get(path)
        assert response.status_code == 200, path
        assert response.mimetype == "text/html" and b"OE2 stand-in" in response.data, path
    assert browser.get("/ui/").headers["Location"].endswith("/ui/app/")

    script = browser.get("/ui/app/assets/index-4f2a.js")
    assert script.status_code == 200 and script.mimetype == "text/javascript"
    assert b'const api = "/";' in script.data  # the placeholder filled in
    css = browser.get("/ui/app/assets/app.css")
    assert css.mimetype == "text/css" and css.data == b"body { color: #123; }"
    assert "'unsafe-inline'" in css.headers["Content-Security-Policy"]  # Vue's inline style attributes
    assert browser.get("/ui/app/favicon.ico").data == b"\0\0\1\0"
    assert browser.get("/ui/app/assets/nope.js").status_code == 404
    assert browser.get("/ui/app/assets/../../secret.txt").status_code == 404
    assert browser.get("/ui/app/assets/%2e%2e/%2e%2e/secret.txt").status_code == 404

    program = oe2_app.test_client()
    assert program.get("/ui/api/pre-login-configuration").json == {"Keycloak": None}
    conf = program.get("/ui/api/configuration").json
    assert conf["UiOptions"]["EnableStudyList"] is True and conf["Keycloak"] is None
    assert set(conf["Plugins"]) == {"dicom-web", "orthanc-explorer-2"}
    assert program.get("/plugins").json == ["dicom-web", "orthanc-explorer-2"]
    assert program.get("/plugins/dicom-web").json["ID"] == "dicom-web"
    missing = program.get("/plugins/stone-webviewer")
    assert missing.status_code == 404 and missing.json["OrthancStatus"] == 17


def test_without_oe2_path_the_app_says_how_to_install_it(app: Any) -> None:
    response = browser_client(app).get("/ui/app/")
    assert response.status_code == 404
    assert "oe2_path" in response.get_data(as_text=True)
    assert app.test_client().get("/plugins").json == ["dicom-web"]


def test_an_oe2_path_without_a_build_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="index.html"):
        config.from_dict(make_config_doc(tmp_path / "d", http={"oe2_path": str(tmp_path)}))


@pytest.mark.browser
def test_the_stand_in_runs_in_chromium_against_the_rest_api(dolmen_factory: Any, oe2_build: Path,
                                                             browser: Any) -> None:
    node = dolmen_factory(http={"oe2_path": str(oe2_build)})
    assert node.post("/instances", program=True, data=CT.read_bytes()).status_code == 200
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(node.url + "/ui/app/filtered-studies")
        page.wait_for_selector("#app[data-done]", timeout=15000)
        text = page.inner_text("#app")
    finally:
        page.close()
    assert errors == []  # no CSP refusal, no failed request
    assert '"route":"/ui/app/filtered-studies"' in text and '"keycloak":null' in text
    assert '"patients":["CompressedSamples^CT1"]' in text


@pytest.mark.browser
@pytest.mark.skipif(not os.environ.get("DOLMEN_OE2_PATH"),
                    reason="no Orthanc Explorer 2 build: set DOLMEN_OE2_PATH to its dist/ folder")
def test_real_orthanc_explorer_2_lists_dolmens_studies(dolmen_factory: Any, browser: Any) -> None:
    node = dolmen_factory(http={"oe2_path": os.environ["DOLMEN_OE2_PATH"]})
    assert node.post("/instances", program=True, data=CT.read_bytes()).status_code == 200
    page = browser.new_page()
    try:
        page.goto(node.url + "/ui/app/")
        page.wait_for_selector("text=CompressedSamples", timeout=30000)
    finally:
        page.close()
