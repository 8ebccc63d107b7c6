"""The study list's bulk actions (webapp/pages/browse.py ``studies_bulk``): label, ZIP, delete
after a confirmation, anonymize, on ticked studies or all matching the filters."""
from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any

import pydicom.data
import pytest

from tests.conftest import wait_for

DATA = Path(pydicom.data.__file__).parent / "test_files"
CT, MR = DATA / "CT_small.dcm", DATA / "MR_small.dcm"


def _load(api: Any) -> tuple[str, str]:
    ct = api.post("/instances", data=CT.read_bytes()).json["ParentStudy"]
    mr = api.post("/instances", data=MR.read_bytes()).json["ParentStudy"]
    return ct, mr


def test_label_ticked_and_all_matching(api: Any, client: Any) -> None:
    ct, mr = _load(api)
    page = client.get("/studies").get_data(as_text=True)
    assert 'action="/studies/bulk"' in page and f'name="ids" value="{ct}"' in page
    response = client.post("/studies/bulk", data={"action": "label", "label": "cohort", "ids": [ct, mr]})
    assert response.status_code == 303
    assert api.get(f"/studies/{ct}/labels").json == ["cohort"] and api.get(f"/studies/{mr}/labels").json == ["cohort"]
    # All matching the list's filters (name CompressedSamples^MR*), nothing ticked.
    client.post("/studies/bulk", data={"action": "label", "label": "mr_only", "all_matching": "1",
                                       "query": "name=CompressedSamples%5EMR"})
    assert api.get(f"/studies/{mr}/labels").json == ["cohort", "mr_only"]
    assert api.get(f"/studies/{ct}/labels").json == ["cohort"]
    bad = client.post("/studies/bulk", data={"action": "label", "label": "no spaces", "ids": [ct]},
                      follow_redirects=True)
    assert "no spaces" in bad.get_data(as_text=True) and api.get(f"/studies/{ct}/labels").json == ["cohort"]
    nothing = client.post("/studies/bulk", data={"action": "label", "label": "x"}, follow_redirects=True)
    assert "Tick at least one study" in nothing.get_data(as_text=True)


def test_zip_of_the_ticked_studies(api: Any, client: Any) -> None:
    ct, mr = _load(api)
    response = client.post("/studies/bulk", data={"action": "zip", "ids": [ct, mr]})
    assert response.status_code == 200 and response.mimetype == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(response.data)).namelist()
    assert len([n for n in names if n.endswith(".dcm")]) == 2


def test_delete_asks_first_then_deletes(api: Any, client: Any) -> None:
    ct, mr = _load(api)
    confirm = client.post("/studies/bulk", data={"action": "delete", "ids": [ct]})
    assert confirm.status_code == 200 and "Delete 1 study?" in confirm.get_data(as_text=True)
    assert ct in api.get("/studies").json  # nothing deleted yet
    done = client.post("/studies/bulk", data={"action": "delete", "ids": [ct], "confirm": "1"})
    assert done.status_code == 303
    assert api.get("/studies").json == [mr]
    # A confirmation for a different number of studies than now selected does not delete.
    client.post("/studies/bulk", data={"action": "delete", "all_matching": "1", "query": "", "confirm": "5"})
    assert api.get("/studies").json == [mr]


@pytest.mark.timeout(120)
def test_bulk_anonymize_runs_one_job_per_study(dolmen_factory: Any) -> None:
    node = dolmen_factory()
    ids = [node.post("/instances", program=True, data=p.read_bytes()).json()["ParentStudy"] for p in (CT, MR)]
    response = node.post("/studies/bulk", data={"action": "anonymize", "ids": ids}, allow_redirects=False)
    assert response.status_code == 303 and response.headers["Location"].endswith("/jobs")
    wait_for(lambda: len(node.get("/studies", program=True).json()) == 4, timeout=60, what="two anonymized studies")
    journal = node.get("/exports", program=True).json()
    assert sorted(e["Source"] for e in journal) == sorted(ids) and {e["Status"] for e in journal} == {"success"}


@pytest.mark.browser
def test_tick_every_study_of_the_page(dolmen_factory: Any, browser: Any) -> None:
    node = dolmen_factory()
    for path in (CT, MR):
        node.post("/instances", program=True, data=path.read_bytes())
    page = browser.new_page()
    try:
        page.goto(node.url + "/studies")
        page.check("#pick-all")
        assert page.eval_on_selector_all("input[name=ids]", "els => els.map(e => e.checked)") == [True, True]
        page.fill("#bulk-label", "teaching")
        page.click("button[value=label]")
        page.wait_for_load_state()
        time.sleep(0.2)
        assert "Labelled 2 studies teaching." in page.inner_text("main")
    finally:
        page.close()
