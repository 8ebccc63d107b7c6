"""The association log: the page, its filters, paging and live refresh, the plain-language
reasons, "Add as modality" round trip, hostile AE titles, /api/associations and pruning.

Rows are written by the SCP's own logging function (``service.log_event``) with reasons from the
real access check (``peers.access``), or by a real ``dolmen serve`` answering echoscu.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from urllib.parse import urlparse

import pytest
from bs4 import BeautifulSoup

from dicomnode import config
from dicomnode import peers
from dicomnode.archive import index
from dicomnode.archive.index import AssociationEvent
from dicomnode.net import assoclog
from dicomnode.net import scp
from dicomnode.net import service
from tests.conftest import DolmenProcess
from tests.conftest import make_config_doc
from tests.conftest import start_dolmen
from tests.conftest import wait_for
from tests.conftest import write_toml

HX = {"HX-Request": "true"}


def soup(response: Any) -> BeautifulSoup:
    text = response.get_data(as_text=True) if hasattr(response, "get_data") else response.text
    return BeautifulSoup(text, "html.parser")


def rows(page: BeautifulSoup) -> list[Any]:
    return page.select("#assoc-table tbody tr[data-event]")


def settings_of(app: Any) -> config.Settings:
    return app.config["DOLMEN"]


def log(calling: str, ip: str = "10.0.0.1", operation: str = "associate", accepted: bool = True,
        reason: str = "", count: int = 0, duration: float = 0.0, called: str = "DOLMEN") -> int:
    """Write a row as the SCP does; return its pk."""
    service.log_event(calling, called, ip, operation, accepted, reason, count, duration)
    pk = AssociationEvent.select(AssociationEvent.pk).order_by(AssociationEvent.pk.desc()).scalar()
    index.close_index()
    return int(pk)


def refuse(settings: config.Settings, calling: str, ip: str, operation: str) -> int:
    """Ask the real access check, and log its refusal as the SCP does."""
    reason = peers.access(settings, calling, ip, operation)
    assert reason, f"{calling} was expected to be refused {operation}"
    return log(calling, ip, operation, False, reason)


# -- the page ----------------------------------------------------------------------------------


def test_empty_log_says_how_nodes_reach_us(client: Any) -> None:
    page = soup(client.get("/associations"))
    assert rows(page) == []
    assert "No node has called us yet" in page.select_one("#assoc-table tr.empty").text
    assert page.select_one('nav.mainnav a[href="/associations"]') is not None


def test_rows_newest_first_with_counts_durations_and_plain_reasons(app: Any, client: Any) -> None:
    s = settings_of(app)
    first = log("MODALITY1", "10.0.0.5", count=12, duration=3.25)
    refused = refuse(s, "STRANGER", "10.9.8.7", "find")  # unknown AEs may echo and store only
    aborted = log("CT2", "10.0.0.6", accepted=False, reason="aborted")
    page = soup(client.get("/associations"))
    assert [int(r["data-event"]) for r in rows(page)] == [aborted, refused, first]

    ok = page.select_one(f'tr[data-event="{first}"]')
    assert ok.select_one(".badge").text == "Released"
    assert [td.text.strip() for td in ok.select("td.num")] == ["12", "3.2 s"]

    row = page.select_one(f'tr[data-event="{refused}"]')
    assert row["data-kind"] == "unknown_aet" and row.select_one(".badge").text == "Refused"
    assert row.select_one(".assoc-why").text.startswith(
        "The AE title “STRANGER” is not one of our modalities, and unknown AE titles may not "
        "search our archive (C-FIND).")
    assert "[dicom] unknown_aet" in row.select_one(".assoc-hint").text
    assert "unknown AE title 'STRANGER' may not find" in row.select_one("details.assoc-raw code").text

    cut = page.select_one(f'tr[data-event="{aborted}"]')
    assert cut.select_one(".badge").text == "Aborted" and cut.select_one(".add-modality") is None
    assert "broken off before a normal release" in cut.select_one(".assoc-why").text
    assert cut.select_one("details.assoc-raw") is None  # "aborted" says nothing more


def test_add_as_modality_prefills_the_form_and_the_saved_node_is_then_allowed(app: Any, client: Any) -> None:
    s = settings_of(app)
    pk = refuse(s, "WARD3 US", "10.20.30.40", "find")
    button = soup(client.get("/associations")).select_one(f'tr[data-event="{pk}"] a.add-modality')
    assert button.text == "Add as modality"
    href = urlparse(button["href"])
    assert href.path == "/modalities/new"
    assert parse_qs(href.query) == {"aet": ["WARD3 US"], "host": ["10.20.30.40"]}

    form = soup(client.get(button["href"]))
    values = {i["name"]: i.get("value") for i in form.select("form.modality-form input[name]")
              if i.get("type") != "checkbox"}
    assert values["aet"] == "WARD3 US" and values["host"] == "10.20.30.40"
    assert values["name"] == "ward3-us" and values["port"] == "104"
    allowed = [i["value"] for i in form.select('input[name="allow"][checked]')]
    assert "find" in allowed

    saved = client.post("/modalities/new", data={**values, "allow": allowed})
    assert saved.status_code == 303 and saved.headers["Location"].endswith("/modalities")
    assert peers.access(s, "WARD3 US", "10.20.30.40", "find") is None

    row = soup(client.get("/associations")).select_one(f'tr[data-event="{pk}"]')
    assert row.select_one("a.add-modality") is None  # the button went
    assert row.select_one(".assoc-since").text.strip() == "Since declared as ward3-us."
    assert "ward3-us" in row.select("td")[1].text  # the calling AE now names its modality


def test_no_add_button_for_a_declared_modality_refused_an_operation(app: Any, client: Any) -> None:
    s = settings_of(app)
    peers.MODALITIES.save(s, {"name": "viewer", "aet": "VIEWER", "host": "127.0.0.1", "port": 104,
                        "allow": ["echo", "find"]})
    pk = refuse(s, "VIEWER", "127.0.0.1", "move")
    row = soup(client.get("/associations")).select_one(f'tr[data-event="{pk}"]')
    assert row["data-kind"] == "not_allowed" and row.select_one("a.add-modality") is None
    assert row.select_one(".assoc-why").text.startswith(
        "It is the modality “viewer”, whose record does not allow it to retrieve from us to "
        "another node (C-MOVE).")
    assert "tick “move”" in row.select_one(".assoc-hint").text
    assert row.select_one("a.edit-modality")["href"] == "/modalities/viewer/edit"


def test_hostile_ae_titles_and_reasons_are_shown_escaped(app: Any, client: Any) -> None:
    hostile = '<img src=x onerror="alert(1)">'
    ip = '"><script>alert(2)</script>'
    strict = settings_of(app).replace(**{"dicom.unknown_aet": []})
    pk = refuse(strict, hostile, ip, "echo")
    log("OK", "10.0.0.1", "associate", False, "<b>bold</b> & <i>it</i>")
    response = client.get("/associations")
    page = soup(response)
    assert page.select("main img") == [] and page.select("main script") == []
    assert page.select("main b") == [] and page.select("main i") == []
    row = page.select_one(f'tr[data-event="{pk}"]')
    assert row.select_one("code.aet").text == hostile
    assert hostile in row.select_one(".assoc-why").text
    href = row.select_one("a.add-modality")["href"]
    assert parse_qs(urlparse(href).query) == {"aet": [hostile], "host": [ip]}
    assert row.select("td")[3].text == ip
    form = soup(client.get(href))
    assert form.select_one('input[name="aet"]')["value"] == hostile  # an attribute, not markup
    assert form.select("main img") == []
    api = client.get("/api/associations").get_json()
    assert api[1]["CallingAet"] == hostile


# -- filters, paging, live refresh ---------------------------------------------------------------


@pytest.fixture
def mixed(app: Any) -> dict[str, int]:
    s = settings_of(app)
    return {
        "ct": log("CT_ROOM1", "10.0.0.11", "associate", count=3, duration=1.0),
        "mr": log("MR-3T", "10.0.1.12", "associate", count=40, duration=9.0),
        "stranger_find": refuse(s, "STRANGER", "192.168.5.5", "find"),
        "stranger_move": refuse(s, "STRANGER", "192.168.5.5", "move"),
        "called": log("WS1", "10.0.0.13", "associate", False, "association rejected", called="OTHERPACS"),
    }


def ids(client: Any, query: str) -> list[int]:
    response = client.get("/associations" + query)
    assert response.status_code == 200
    return [int(r["data-event"]) for r in rows(soup(response))]


def test_filters(client: Any, mixed: dict[str, int]) -> None:
    m = mixed
    assert ids(client, "?aet=stranger") == [m["stranger_move"], m["stranger_find"]]
    assert ids(client, "?aet=room") == [m["ct"]]  # case-insensitive substring
    assert ids(client, "?aet=otherpacs") == [m["called"]]  # the called AE counts too
    assert ids(client, "?aet=MR-*") == [m["mr"]]  # wildcards
    assert ids(client, "?aet=CT_") == [m["ct"]]  # '_' is a character, not LIKE's wildcard
    assert ids(client, "?aet=%25") == []
    assert ids(client, "?ip=192.168") == [m["stranger_move"], m["stranger_find"]]
    assert ids(client, "?ip=10.0.0.1*") == [m["called"], m["ct"]]
    assert ids(client, "?result=refused") == [m["called"], m["stranger_move"], m["stranger_find"]]
    assert ids(client, "?result=accepted") == [m["mr"], m["ct"]]
    assert ids(client, "?operation=move") == [m["stranger_move"]]
    assert ids(client, "?operation=associate&result=accepted&ip=10.0.1") == [m["mr"]]
    assert len(ids(client, "?operation=bogus&result=maybe")) == 5  # unknown values ignored
    empty = soup(client.get("/associations?aet=NOBODY"))
    assert "No event matches these filters" in empty.select_one("tr.empty").text
    page = soup(client.get("/associations?aet=stranger&result=refused&operation=find"))
    assert page.select_one('input[name="aet"]')["value"] == "stranger"
    assert page.select_one('select[name="result"] option[selected]')["value"] == "refused"
    assert page.select_one('select[name="operation"] option[selected]')["value"] == "find"


def test_paging_and_live_refresh_only_on_the_newest_page(app: Any, client: Any) -> None:
    pks = [log(f"N{i}", f"10.1.0.{i}") for i in range(60)]
    newest = list(reversed(pks))
    assert ids(client, "?per=25") == newest[:25]
    assert ids(client, "?per=25&page=3") == newest[50:]
    assert ids(client, "?per=25&page=99") == newest[50:]  # clamped to the last page
    assert ids(client, "?per=7") == newest[:50]  # not a choice: the default 50
    page1 = soup(client.get("/associations?per=25"))
    assert "1–25 of 60 events" in page1.select_one(".pager-count").text
    nxt = page1.select_one('.pager a[rel="next"]')["href"]
    assert parse_qs(urlparse(nxt).query) == {"per": ["25"], "page": ["2"]}
    assert page1.select_one("#results")["hx-trigger"] == "every 3s"
    page2 = soup(client.get(nxt))
    assert page2.select_one("#results").get("hx-trigger") is None  # older rows: not refreshed
    assert "Newest" in page2.select_one(".assoc-live").text
    paused = soup(client.get("/associations?live=0"))
    assert paused.select_one("#results").get("hx-trigger") is None
    pause = paused.select_one('form#filters input[type="checkbox"][name="live"]')
    assert pause["value"] == "0" and pause.has_attr("checked")  # the next filter keeps it paused
    assert not page1.select_one('form#filters input[name="live"]').has_attr("checked")


def test_live_refresh_swaps_only_when_the_log_changed(app: Any, client: Any) -> None:
    log("FIRST")
    page = soup(client.get("/associations"))
    results = page.select_one("#results")
    seen = results["hx-headers"]
    assert results["hx-get"] == "/associations"
    header = json.loads(seen)
    same = client.get("/associations", headers={**HX, **header})
    assert same.status_code == 204 and same.get_data() == b""
    pk = log("SECOND")
    changed = client.get("/associations", headers={**HX, **header})
    assert changed.status_code == 200
    fragment = soup(changed)
    assert fragment.select_one("html") is None and fragment.select_one("section#results") is not None
    assert int(rows(fragment)[0]["data-event"]) == pk
    # Without htmx the same request is the whole page.
    assert soup(client.get("/associations", headers=header)).select_one("html") is not None


# -- JSON --------------------------------------------------------------------------------------


def test_api(client: Any, mixed: dict[str, int]) -> None:
    response = client.get("/api/associations?aet=stranger&operation=find")
    assert response.status_code == 200 and response.headers["X-Total-Count"] == "1"
    (row,) = response.get_json()
    assert row["ID"] == mixed["stranger_find"]
    assert row["CallingAet"] == "STRANGER" and row["CalledAet"] == "DOLMEN" and row["PeerIp"] == "192.168.5.5"
    assert row["Operation"] == "find" and row["Accepted"] is False and row["Kind"] == "unknown_aet"
    assert row["Explanation"].startswith("The AE title “STRANGER” is not one of our modalities")
    assert row["Reason"].startswith("unknown AE title 'STRANGER'")
    assert dt.datetime.fromisoformat(row["Time"].rstrip("Z"))
    everything = client.get("/api/associations?per=2&page=2")
    assert everything.headers["X-Total-Count"] == "5"
    assert [r["ID"] for r in everything.get_json()] == [mixed["stranger_find"], mixed["mr"]]
    following = client.get(f"/api/associations?after={mixed['stranger_find']}").get_json()
    assert [r["ID"] for r in following] == [mixed["called"], mixed["stranger_move"]]
    assert len(client.get("/api/associations?after=x").get_json()) == 5  # not a number: ignored
    accepted = client.get("/api/associations?result=accepted").get_json()
    assert {(r["CallingAet"], r["Count"], r["Duration"], r["Kind"]) for r in accepted} == {
        ("CT_ROOM1", 3, 1.0, ""), ("MR-3T", 40, 9.0, "")}


# -- reasons ------------------------------------------------------------------------------------


def test_every_refusal_the_access_check_gives_is_explained(app: Any) -> None:
    s = settings_of(app).replace(**{"dicom.check_calling_host": True, "dicom.unknown_aet": []})
    peers.MODALITIES.save(s, {"name": "ct", "aet": "CT", "host": "127.0.0.1", "port": 104, "allow": ["store"]})
    cases = [
        (("NOBODY", "127.0.0.1", "echo"), "unknown_aet"),
        (("CT", "10.66.66.66", "store"), "wrong_host"),
        (("CT", "127.0.0.1", "get"), "not_allowed"),
    ]
    for args, expected in cases:
        reason = peers.access(s, *args)
        assert reason
        assert assoclog.kind(reason) == expected, reason
    # Reasons the SCP records for what the access check does not decide (dicomnode/net/scp.py;
    # the rejections from its own function, the others as its handlers word them).
    recorded = {
        "aborted": "aborted",
        "association rejected": "rejected",
        "no acceptable presentation context for Modality Worklist Information Model - FIND "
        "(abstract syntax not supported)": "no_context",
        scp.reject_reason(s.replace(**{"dicom.check_called_aet": True}), "WS1", "PACS", 1):
            "wrong_called_aet",
        scp.reject_reason(s, "WS1", "DOLMEN", 17): "busy",
        scp.reject_reason(s, "WS1", "DOLMEN", 1): "rejected",
        "unknown move destination 'ELSEWHERE' asked by 'VIEWER' at 10.0.0.8: declare it as a modality "
        "(its address is never taken from the request)": "unknown_destination",
        "bad query: (0008,0052) Query/Retrieve Level 'FOO' is not a level": "bad_request",
        "bad identifier: no StudyInstanceUID": "bad_request",
        "something new": "other",
    }
    for reason, expected in recorded.items():
        assert assoclog.kind(reason) == expected, reason


def test_unknown_move_destination_offers_to_add_it(app: Any, client: Any) -> None:
    pk = log("VIEWER", "10.0.0.8", "move", False,
             "unknown move destination 'VIEWER_SCP' asked by 'VIEWER' at 10.0.0.8: declare it as a "
             "modality (its address is never taken from the request)")
    row = soup(client.get("/associations")).select_one(f'tr[data-event="{pk}"]')
    assert row["data-kind"] == "unknown_destination"
    assert row.select_one(".assoc-why").text.startswith(
        "It asked us to send images to “VIEWER_SCP”, which is not one of our modalities")
    button = row.select_one("a.add-modality")
    assert button.text == "Add VIEWER_SCP as modality"
    assert parse_qs(urlparse(button["href"]).query) == {"aet": ["VIEWER_SCP"], "host": ["10.0.0.8"]}
    assert client.get("/api/associations").get_json()[0]["UnknownAet"] == "VIEWER_SCP"


def test_declined_presentation_contexts_are_listed(client: Any) -> None:
    pk = log("CT1", "10.0.0.8", "negotiate", False,
             "no acceptable presentation context for Modality Worklist Information Model - FIND "
             "(abstract syntax not supported)")
    row = soup(client.get("/associations?operation=negotiate")).select_one(f'tr[data-event="{pk}"]')
    assert row.select_one(".badge").text == "Declined" and row["data-kind"] == "no_context"
    assert row.select_one(".assoc-why").text.startswith(
        "We declined part of what it proposed (no acceptable presentation context): Modality "
        "Worklist Information Model - FIND (abstract syntax not supported).")


def test_accepted_operations_show_what_was_done(client: Any) -> None:
    pk = log("VIEWER", "10.0.0.8", "find", True, "STUDY level, 3 answer(s)", count=3, duration=0.02)
    row = soup(client.get("/associations")).select_one(f'tr[data-event="{pk}"]')
    assert row.select_one(".badge").text == "Accepted" and row["data-kind"] == ""
    assert row.select_one(".assoc-detail").text == "STUDY level, 3 answer(s)"
    assert row.select_one(".assoc-why") is None and row.select_one("a.add-modality") is None


def test_a_rejection_for_the_wrong_called_ae_is_named_when_we_check_it(app: Any, client: Any) -> None:
    s = settings_of(app).replace(**{"dicom.check_called_aet": True})
    pk = log("WS1", "10.0.0.13", "associate", False, "association rejected", called="OTHERPACS")
    row = AssociationEvent.get_by_id(pk)
    why = assoclog.explain(row, s)
    assert why is not None and why.kind == "wrong_called_aet"
    assert why.text == "It called the AE title “OTHERPACS”, but this server is “DOLMEN”."
    plain = assoclog.explain(row, settings_of(app))  # not checked: a generic rejection
    assert plain is not None and plain.kind == "rejected"
    index.close_index()


# -- pruning -----------------------------------------------------------------------------------


@pytest.fixture
def small_log(short_tmp: Path, index_url: str) -> Iterator[config.Settings]:
    settings = config.from_dict(make_config_doc(
        short_tmp / "p", storage={"database": index_url},
        dicom={"association_log_days": 7, "association_log_rows": 5}))
    index.open_index(settings.database_url)
    yield settings
    index.close_index()


def test_prune_by_age_and_by_row_cap(small_log: config.Settings) -> None:
    now = index.utcnow()
    old = [log(f"OLD{i}") for i in range(3)]
    AssociationEvent.update(at=now - dt.timedelta(days=8)).where(AssociationEvent.pk.in_(old)).execute()
    recent = [log(f"NEW{i}") for i in range(7)]
    assert assoclog.prune(small_log, now=now) == 3 + 2
    kept = [r.pk for r in AssociationEvent.select().order_by(AssociationEvent.pk)]
    assert kept == recent[2:]
    assert assoclog.prune(small_log, now=now) == 0


def test_bad_log_bounds_are_refused_at_load() -> None:
    with pytest.raises(config.ConfigError, match=r"association_log_days"):
        config.from_dict({"dicom": {"association_log_days": 0}})
    with pytest.raises(config.ConfigError, match=r"association_log_rows"):
        config.from_dict({"dicom": {"association_log_rows": "many"}})


# -- a real server -------------------------------------------------------------------------------


@pytest.fixture
def strict_server(short_tmp: Path) -> Iterator[DolmenProcess]:
    """A server refusing unknown AE titles everything, whose index already holds a row older
    than the log keeps (the DICOM service prunes it as it starts)."""
    doc = make_config_doc(short_tmp / "data", dicom={"unknown_aet": [], "association_log_days": 2},
                          **{"modalities.known": {"aet": "KNOWNAE", "host": "127.0.0.1", "port": 104}})
    path = write_toml(short_tmp / "c.toml", doc)
    settings = config.load(path)
    settings.storage_path.mkdir(parents=True)
    index.open_index(settings.database_url)
    AssociationEvent.create(calling_aet="ANCIENT", at=index.utcnow() - dt.timedelta(days=3))
    index.close_index()
    server = start_dolmen(path, short_tmp / "log")
    yield server
    server.stop()


def test_echo_and_move_refusals_from_dcmtk_against_a_real_server(strict_server: DolmenProcess,
                                                                 dcmtk: Any) -> None:
    d = strict_server
    wait_for(lambda: d.get("/api/associations?aet=ANCIENT").headers["X-Total-Count"] == "0",
             what="the sidecar to prune the old row")
    known = dcmtk("echoscu", "-v", "-aet", "KNOWNAE", "-aec", d.aet, "127.0.0.1", str(d.dicom_port))
    assert "Echo Response (Success)" in known.stderr, known.stderr
    refused = dcmtk("echoscu", "-v", "-aet", "STRANGER", "-aec", d.aet, "127.0.0.1", str(d.dicom_port),
                    check=False)
    # DCMTK names 0x0124 (Refused: Not Authorized) an unknown status.
    assert "Echo Response (Unknown Status: 0x124)" in refused.stderr, refused.stderr

    moved = dcmtk("movescu", "-v", "-S", "-aet", "KNOWNAE", "-aec", d.aet, "-aem", "NOWHERE",
                  "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=1.2.3",
                  "127.0.0.1", str(d.dicom_port), check=False)
    assert "Final Move Response (Refused: MoveDestinationUnknown)" in moved.stderr, moved.stderr

    def logged() -> list[dict[str, Any]] | None:
        answer = d.get("/api/associations").json()
        seen = {(r["CallingAet"], r["Operation"]) for r in answer}
        wanted = {("KNOWNAE", "associate"), ("STRANGER", "echo"), ("KNOWNAE", "move")}
        return answer if wanted <= seen else None

    answer = wait_for(logged, what="the association log rows")
    by = {(r["CallingAet"], r["Operation"]): r for r in answer}
    assert by[("KNOWNAE", "associate")]["Accepted"] is True
    move = by[("KNOWNAE", "move")]
    assert move["Accepted"] is False and move["Kind"] == "unknown_destination"
    assert move["UnknownAet"] == "NOWHERE"
    echo = by[("STRANGER", "echo")]
    assert echo["Accepted"] is False and echo["Kind"] == "unknown_aet" and echo["PeerIp"] == "127.0.0.1"
    assert echo["CalledAet"] == d.aet

    page = BeautifulSoup(d.get("/associations?aet=STRANGER&result=refused").text, "html.parser")
    (row,) = page.select("#assoc-table tr[data-event]")
    assert "unknown AE titles may not check the connection (C-ECHO)" in row.select_one(".assoc-why").text
    assert parse_qs(urlparse(row.select_one("a.add-modality")["href"]).query) == {
        "aet": ["STRANGER"], "host": ["127.0.0.1"]}


def _find_status(server: DolmenProcess, calling: str) -> int:
    """The final status of a Study Root C-FIND by ``calling`` (pynetdicom as the requester)."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE

    model = "1.2.840.10008.5.1.4.1.2.2.1"
    ae = AE(ae_title=calling)
    ae.add_requested_context(model)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.aet)
    assert assoc.is_established
    try:
        statuses = [int(status.Status) for status, _ in assoc.send_c_find(query, model) if "Status" in status]
    finally:
        assoc.release()
    return statuses[-1]


def test_a_modality_saved_or_deleted_in_the_web_process_takes_effect_at_the_next_association(
    dolmen_factory: Any,
) -> None:
    """The sidecar keeps the node list it decides access with for a couple of seconds; the web
    process tells it when a modality is saved or deleted, so the change holds at once."""
    import requests

    server = dolmen_factory(dicom={"unknown_aet": ["echo"]})
    assert _find_status(server, "NEWNODE") == 0x0124  # unknown: may not find (and the list is kept)
    answer = requests.put(f"{server.url}/modalities/newnode", timeout=30,
                          json={"AET": "NEWNODE", "Host": "127.0.0.1", "Port": 11112})
    assert answer.status_code == 200, answer.text
    assert _find_status(server, "NEWNODE") == 0x0000
    answer = requests.put(f"{server.url}/modalities/newnode", timeout=30,
                          json={"AET": "NEWNODE", "Host": "127.0.0.1", "Port": 11112, "AllowFind": False})
    assert answer.status_code == 200, answer.text
    assert _find_status(server, "NEWNODE") == 0x0124
    assert requests.delete(f"{server.url}/modalities/newnode", timeout=30).status_code == 200
    assert _find_status(server, "NEWNODE") == 0x0124
