"""Hostile peers on the DICOM port (issue 7, DICOM upper layer): raw PDUs written byte by byte
(PS3.8 9.3), each case followed by the survival contract (:mod:`tests.hostile`)."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom import build_role
from pynetdicom import evt

from tests.conftest import DolmenProcess
from tests.conftest import make_config_doc
from tests.conftest import start_dolmen
from tests.conftest import wait_for
from tests.conftest import write_toml
from tests.hostile import CT_IMAGE_STORAGE
from tests.hostile import KNOWN_AET
from tests.hostile import RawPeer
from tests.hostile import Survival
from tests.hostile import abort
from tests.hostile import associate_rq
from tests.hostile import echo
from tests.hostile import echo_rq
from tests.hostile import hostile_sections
from tests.hostile import implicit_bytes
from tests.hostile import item
from tests.hostile import p_data
from tests.hostile import pdu
from tests.hostile import presentation_context
from tests.hostile import release_rq
from tests.hostile import rss_kb
from tests.hostile import small_instance
from tests.hostile import store
from tests.hostile import store_rq
from tests.hostile import user_information

MAX_PDU = 16384
MAX_ASSOCIATIONS = 6
ACSE_TIMEOUT = 2.0
NETWORK_TIMEOUT = 4.0


@pytest.fixture(scope="module")
def server() -> Iterator[DolmenProcess]:
    """One Dolmen for the module: small PDUs, timeouts and association limit."""
    folder = Path(tempfile.mkdtemp(prefix="dh-", dir="/tmp"))
    sections = hostile_sections(
        dicom={
            "max_pdu": MAX_PDU,
            "max_associations": MAX_ASSOCIATIONS,
            "acse_timeout": ACSE_TIMEOUT,
            "network_timeout": NETWORK_TIMEOUT,
            "dimse_timeout": 5.0,
        }
    )
    config = write_toml(folder / "c.toml", make_config_doc(folder / "data", **sections))
    srv = start_dolmen(config, folder / "serve.log")
    yield srv
    srv.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def warm_survival(server: DolmenProcess) -> Survival:
    return Survival(server)


@pytest.fixture
def survival(warm_survival: Survival) -> Survival:
    """The survival contract, its baseline taken afresh for each case."""
    warm_survival.rebase()
    return warm_survival


def exchange(port: int, *steps: bytes | str, timeout: float = 5.0) -> tuple[list[tuple[int, bytes]], float]:
    """Send ``steps`` (``"READ"`` reads one PDU), then read until the server closes.

    Returns the PDUs received and how long the server took to close after the last step.
    """
    received: list[tuple[int, bytes]] = []
    with RawPeer(port, timeout=timeout) as peer:
        for step in steps:
            if step == "READ":
                answer = peer.read_pdu()
                assert answer is not None, "the server closed before answering"
                received.append(answer)
                continue
            try:
                peer.send(step)  # type: ignore[arg-type]
            except OSError:
                break  # the server already closed: what follows is not read
        started = time.monotonic()
        while True:
            try:
                answer = peer.read_pdu()
            except OSError:
                answer = None
            if answer is None:
                break
            received.append(answer)
        return received, time.monotonic() - started


def types(received: list[tuple[int, bytes]]) -> list[int]:
    return [t for t, _ in received]


# -- non-DICOM bytes -------------------------------------------------------------------------------

JUNK = {
    "http": (b"GET / HTTP/1.1\r\nHost: dolmen\r\nUser-Agent: curl/8\r\n\r\n", "HTTP request"),
    # A TLS 1.2 ClientHello record header followed by a plausible body.
    "tls": (
        bytes.fromhex("160301012c010001280303") + os.urandom(32) + b"\x00\x00\x02\x13\x01\x01\x00",
        "TLS handshake",
    ),
    "random": (b"\xaa" + os.urandom(4095), "unknown PDU type 0xAA"),
}


@pytest.mark.parametrize("kind", sorted(JUNK))
def test_non_dicom_bytes_are_refused_at_once(server: DolmenProcess, survival: Survival, kind: str) -> None:
    data, problem = JUNK[kind]
    received, closing = exchange(server.dicom_port, data)
    assert types(received) in ([], [0x07]), received  # at most an A-ABORT
    assert closing < 2.0, f"the server took {closing:.1f} s to close a {kind} connection"
    survival.check(problem=problem)


# -- lengths -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["associate-rq", "p-data-before-association", "p-data-in-association"])
def test_pdu_length_of_4_gb_is_refused_before_reading(
    server: DolmenProcess, survival: Survival, case: str
) -> None:
    pid = server.sidecar_pid()
    before = rss_kb(pid)
    body = os.urandom(60000)
    if case == "associate-rq":
        steps: list[bytes | str] = [pdu(0x01, body, length=0xFFFFFFFF)]
    elif case == "p-data-before-association":
        steps = [pdu(0x04, body, length=0xFFFFFFFF)]
    else:
        steps = [associate_rq(), "READ", pdu(0x04, body, length=0xFFFFFFFF)]
    received, closing = exchange(server.dicom_port, *steps)
    assert received[-1][0] == 0x07, "an A-ABORT was expected"
    assert received[-1][1][2:4] == b"\x02\x06", "A-ABORT from the provider, invalid PDU parameter value"
    assert closing < 2.0
    assert rss_kb(pid) < before + 50_000, "the sidecar's memory grew by more than 50 MB"
    survival.check(problem=r"PDU of 4294967295 bytes, more than the \d+ allowed")


def test_p_data_larger_than_negotiated_maximum(server: DolmenProcess, survival: Survival) -> None:
    received, closing = exchange(
        server.dicom_port,
        associate_rq(max_pdu=MAX_PDU),
        "READ",
        p_data((1, 0x03, echo_rq() + b"\0" * (MAX_PDU + 100))),
    )
    assert types(received) == [0x02, 0x07], received
    assert closing < 2.0
    survival.check(problem=rf"P-DATA-TF PDU of \d+ bytes, more than the {MAX_PDU} allowed", aet=KNOWN_AET)


def test_pdv_length_past_the_end_of_its_pdu(server: DolmenProcess, survival: Survival) -> None:
    lying = pdu(0x04, struct.pack(">LBB", 9999, 1, 3) + echo_rq())
    received, _ = exchange(server.dicom_port, associate_rq(), "READ", lying)
    assert types(received) == [0x02, 0x07], received
    survival.check(problem="malformed P-DATA-TF PDU", aet=KNOWN_AET)


# -- malformed A-ASSOCIATE-RQ -----------------------------------------------------------------------


def _no_app_context() -> bytes:
    body = struct.pack(">HH", 1, 0) + b"DOLMEN".ljust(16) + KNOWN_AET.encode().ljust(16) + b"\0" * 32
    return pdu(0x01, body + presentation_context(1) + user_information())


MALFORMED = {
    "item length past the end": (
        associate_rq(contexts=[item(0x20, presentation_context(1)[4:], length=500)]),
        0x07,
        "malformed A-ASSOCIATE-RQ",
    ),
    "no presentation context": (associate_rq(contexts=[]), 0x03, "no Presentation Context item"),
    "129 presentation contexts": (
        associate_rq(contexts=[presentation_context((2 * i + 1) % 256) for i in range(129)]),
        0x03,
        "129 presentation contexts",
    ),
    "duplicate context ids": (
        associate_rq(contexts=[presentation_context(1), presentation_context(1, CT_IMAGE_STORAGE)]),
        0x03,
        "duplicate presentation context identifiers",
    ),
    "even context id": (associate_rq(contexts=[presentation_context(2)]), 0x03, "not all odd numbers"),
    "no user information": (associate_rq(user_info=b""), 0x03, "no User Information item"),
    "no application context": (_no_app_context(), 0x03, "no Application Context item"),
    "protocol version 0": (
        pdu(0x01, struct.pack(">HH", 0, 0) + associate_rq()[10:]),
        0x03,
        "protocol version 0x0000",
    ),
    "truncated user information": (
        associate_rq(user_info=item(0x50, item(0x51, b"\0\0"), length=40)),
        0x07,
        "malformed A-ASSOCIATE-RQ",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_associate_rq(server: DolmenProcess, survival: Survival, case: str) -> None:
    data, answer, problem = MALFORMED[case]
    received, closing = exchange(server.dicom_port, data)
    assert types(received) == [answer], received
    assert closing < 2.0
    survival.check(problem=problem)


# -- out of sequence ---------------------------------------------------------------------------------

OUT_OF_SEQUENCE = {
    "p-data before the association": ([p_data((1, 0x03, echo_rq()))], [0x07], "P-DATA-TF received before"),
    "release before the association": ([release_rq()], [0x07], "A-RELEASE-RQ received before"),
    "a-associate-ac from the requestor": (
        [pdu(0x02, b"\0" * 68)],
        [0x07],
        "A-ASSOCIATE-AC PDU sent by the requesting",
    ),
    "a second a-associate-rq": (
        [associate_rq(), "READ", associate_rq()],
        [0x02, 0x07],
        "A-ASSOCIATE-RQ received during the association",
    ),
    "p-data before the a-associate-ac": (
        [associate_rq() + p_data((1, 0x03, echo_rq()))],
        None,
        "P-DATA-TF received while its A-ASSOCIATE-RQ",
    ),
    "undecodable command set": (
        [associate_rq(), "READ", p_data((1, 0x03, b"\x08\x00" + os.urandom(40)))],
        [0x02, 0x07],
        "invalid DIMSE message|invalid PDU",
    ),
}


@pytest.mark.parametrize("case", sorted(OUT_OF_SEQUENCE))
def test_pdus_out_of_sequence(server: DolmenProcess, survival: Survival, case: str) -> None:
    steps, answers, problem = OUT_OF_SEQUENCE[case]
    received, closing = exchange(server.dicom_port, *steps)
    if answers is None:
        assert types(received)[-1] == 0x07, received
    else:
        assert types(received) == answers, received
    assert closing < 2.0
    survival.check(problem=problem)


def test_a_valid_raw_exchange_works(server: DolmenProcess, survival: Survival) -> None:
    """The PDU builder itself is right: a C-ECHO written byte by byte gets its answer."""
    received, _ = exchange(
        server.dicom_port, associate_rq(), "READ", p_data((1, 0x03, echo_rq())), "READ", release_rq()
    )
    assert types(received) == [0x02, 0x04, 0x06], received
    assert received[1][1].endswith(b"\x00\x00\x00\x09\x02\x00\x00\x00\x00\x00")  # (0000,0900) Status 0x0000
    survival.check()


# -- AE titles ---------------------------------------------------------------------------------------

AE_TITLES = {
    "control characters": (dict(calling=b"EV\x07IL\n\x1b[31m"), 3, r"calling AE title 'EV\\\\x07IL\\\\n"),
    "only spaces": (dict(calling=b" " * 16), 3, "calling AE title is empty or only spaces"),
    "called only spaces": (dict(called=b" " * 16), 7, "called AE title is empty or only spaces"),
    "backslash": (dict(calling=b"A\\B"), 3, "holds control characters or a backslash"),
}


@pytest.mark.parametrize("case", sorted(AE_TITLES))
def test_invalid_ae_titles_are_rejected(server: DolmenProcess, survival: Survival, case: str) -> None:
    fields, reason, problem = AE_TITLES[case]
    received, _ = exchange(server.dicom_port, associate_rq(**fields))
    assert received == [(0x03, bytes([0, 1, 1, reason]))], received  # rejected-permanent, service user
    survival.check(problem=problem)
    # The control characters never reach the log as such (a forged line, a terminal escape).
    assert "\x1b" not in server.log_text() and "\x07" not in server.log_text()


def test_sixteen_character_ae_title_and_long_move_originator(
    server: DolmenProcess, survival: Survival
) -> None:
    """A calling AE filling all 16 bytes is fine; a C-STORE whose Move Originator AE title is
    40 characters with control characters gets an answer, not a crash."""
    ds = small_instance("1.2.826.0.1.3680043.10.1078.3.1", n=1)
    command = store_rq(CT_IMAGE_STORAGE, ds.SOPInstanceUID)
    # Add (0000,1030) Move Originator AE Title to the command set.
    extra = struct.pack("<HHL", 0, 0x1030, 40) + b"ORIGIN\x1b[2J" + b"X" * 30
    body = command[12:] + extra
    command = struct.pack("<HHLL", 0, 0, 4, len(body)) + body
    received, _ = exchange(
        server.dicom_port,
        associate_rq(calling=b"ABCDEFGHIJKLMNOP", contexts=[presentation_context(1, CT_IMAGE_STORAGE)]),
        "READ",
        p_data((1, 0x03, command)),
        p_data((1, 0x02, implicit_bytes(ds))),
        "READ",
        release_rq(),
    )
    assert types(received)[:2] == [0x02, 0x04], received
    survival.check()


# -- association limit -----------------------------------------------------------------------------


def test_more_associations_than_the_limit(server: DolmenProcess, survival: Survival) -> None:
    from pynetdicom import AE

    ae = AE(ae_title=KNOWN_AET)
    ae.add_requested_context("1.2.840.10008.1.1")
    held = [ae.associate("127.0.0.1", server.dicom_port, ae_title="DOLMEN") for _ in range(MAX_ASSOCIATIONS)]
    try:
        assert all(a.is_established for a in held)
        extra = ae.associate("127.0.0.1", server.dicom_port, ae_title="DOLMEN")
        assert extra.is_rejected, "an association past the limit was not rejected"
        rj = extra.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)  # transient, local limit
        # The others continue.
        for assoc in held:
            status = assoc.send_c_echo()
            assert status.Status == 0
    finally:
        for assoc in held:
            assoc.release()
    survival.check(problem="rejected", aet=KNOWN_AET)


# -- idle and slow peers ---------------------------------------------------------------------------


def test_idle_connections_and_trickling_peers_are_closed_at_the_timeouts(
    server: DolmenProcess, survival: Survival
) -> None:
    idle = [RawPeer(server.dicom_port, timeout=30) for _ in range(200)]
    tricklers = [RawPeer(server.dicom_port, timeout=30) for _ in range(3)]
    established = RawPeer(server.dicom_port, timeout=30)
    try:
        established.send(associate_rq())
        assert established.read_pdu()[0] == 0x02  # type: ignore[index]
        slow_pdata = p_data((1, 0x03, echo_rq()))
        request = associate_rq()
        started = time.monotonic()
        # A known modality gets through while all of them hang on.
        assert echo(server.dicom_port, KNOWN_AET, "DOLMEN", 2.0) == 0
        assert time.monotonic() - started < 2.0
        closed: set[int] = set()
        deadline = time.monotonic() + max(ACSE_TIMEOUT, NETWORK_TIMEOUT) + 6
        i = 0
        while time.monotonic() < deadline and len(closed) < len(tricklers) + 1:
            for n, peer in enumerate([*tricklers, established]):
                if n in closed:
                    continue
                data = request if peer is not established else slow_pdata
                try:
                    peer.send(data[i % len(data) : i % len(data) + 1])
                except OSError:
                    closed.add(n)
            i += 1
            time.sleep(0.2)
        assert len(closed) == len(tricklers) + 1, "a peer trickling one byte every 0.2 s was never closed"
        assert time.monotonic() - started < max(ACSE_TIMEOUT, NETWORK_TIMEOUT) + 6
        # Every idle connection is closed by the ACSE timeout (or at once, past the pending cap).
        for peer in idle:
            peer.sock.settimeout(ACSE_TIMEOUT + 5)
            received = b""
            try:
                while chunk := peer.sock.recv(4096):
                    received += chunk
            except ConnectionResetError:
                pass  # closed with a reset: closed all the same
            except TimeoutError as exc:
                raise AssertionError("an idle connection outlived the ACSE timeout") from exc
            # Closed, at most after an A-ABORT (PDU type 07): never an answer to a request it never sent.
            assert received[:1] in (b"", b"\x07"), f"an idle connection got {received[:12]!r}"
    finally:
        for peer in [*idle, *tricklers, established]:
            peer.close()
    survival.check(problem="not received within|no whole PDU header within")


# -- a peer leaving in the middle of a C-STORE ----------------------------------------------------


@pytest.mark.parametrize("how", ["a-abort", "vanish"])
def test_peer_leaving_mid_store_stores_nothing(server: DolmenProcess, survival: Survival, how: str) -> None:
    ds = small_instance("1.2.826.0.1.3680043.10.1078.4.1", n=1, size=64)
    data = implicit_bytes(ds)
    with RawPeer(server.dicom_port) as peer:
        peer.send(
            associate_rq(contexts=[presentation_context(1, CT_IMAGE_STORAGE, [ImplicitVRLittleEndian])])
        )
        assert peer.read_pdu()[0] == 0x02  # type: ignore[index]
        peer.send(p_data((1, 0x03, store_rq(CT_IMAGE_STORAGE, ds.SOPInstanceUID))))
        peer.send(p_data((1, 0x00, data[: len(data) // 2])))  # a data fragment, not the last
        # The spool file exists now; then the peer leaves.
        wait_for(lambda: survival.spool_files(), timeout=10, what="the spool file")
        if how == "a-abort":
            peer.send(abort())
        else:
            peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    wait_for(lambda: server.status()["associations"] == 0, timeout=10, what="the association to end")
    survival.check(problem="aborted", aet=KNOWN_AET)  # the spool must be empty too
    assert server.get("/api/statistics").status_code == 200
    import sqlite3

    con = sqlite3.connect(server.data / "index.db")
    try:
        assert (
            con.execute(
                "SELECT count(*) FROM instance WHERE sop_instance_uid = ?", (ds.SOPInstanceUID,)
            ).fetchone()[0]
            == 0
        )
    finally:
        con.close()


def test_many_hostile_connections_at_once_leave_the_others_working(
    server: DolmenProcess, survival: Survival
) -> None:
    """All of the above at the same time, while stores go on."""
    cases = [JUNK[k][0] for k in JUNK] + [m[0] for m in MALFORMED.values()] + [p_data((1, 3, echo_rq()))]

    def hostile(n: int) -> None:
        exchange(server.dicom_port, cases[n % len(cases)], timeout=10)

    # Fewer hostile clients at a time than the association limit: a legitimate client then always
    # finds a free slot, so a failed echo means the hostile ones starved it, not that it was busy.
    with concurrent.futures.ThreadPoolExecutor(MAX_ASSOCIATIONS - 2) as pool:
        jobs = [pool.submit(hostile, n) for n in range(60)]
        for _ in range(3):
            assert echo(server.dicom_port, KNOWN_AET, "DOLMEN", 2.0) == 0
        for job in jobs:
            job.result(timeout=60)
    survival.check(problem="closed|rejected|aborted")


def test_a_get_requester_that_never_answers_a_store_is_aborted_at_the_dimse_timeout(
    server: DolmenProcess, survival: Survival
) -> None:
    """Dolmen's C-GET waits for each C-STORE response in the thread that sends the instances:
    a requester that never answers is aborted at [dicom] dimse_timeout (5 s here), not later,
    and nothing waits on it afterwards."""
    study = "1.2.826.0.1.3680043.10.1078.4.77"
    assert store(server.dicom_port, [small_instance(study, n=1), small_instance(study, n=2)]) == [0, 0]
    get_model = "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root GET
    ae = AE(ae_title=KNOWN_AET)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(get_model)
    ae.add_requested_context(CT_IMAGE_STORAGE)
    stores: list[float] = []

    def on_store(event: object) -> int:
        stores.append(time.monotonic())
        time.sleep(8)  # past Dolmen's 5 s DIMSE timeout
        return 0

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="DOLMEN",
                         ext_neg=[build_role(CT_IMAGE_STORAGE, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    responses: list[tuple[Dataset, Any]] = []
    requester = threading.Thread(target=lambda: responses.extend(assoc.send_c_get(query, get_model)))
    requester.start()
    try:
        wait_for(lambda: stores, timeout=10, what="the first C-STORE")
        wait_for(lambda: server.status()["associations"] == 0, timeout=15, what="Dolmen to end the association")
        ended = time.monotonic() - stores[0]
    finally:
        requester.join(20)
    assert 4.5 <= ended <= 7.5, f"ended {ended:.1f} s after the unanswered C-STORE"
    assert len(stores) == 1, "a second instance was sent after the unanswered one"
    assert not assoc.is_established  # aborted (pynetdicom marks is_aborted only once its handler returns)
    assert not [s for s, _ in responses if "Status" in s and s.Status == 0x0000]
    survival.check(tracebacks_ok=False)
