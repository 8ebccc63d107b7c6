"""DICOM over TLS (issue 17): the TLS listener against DCMTK's TLS clients, Dolmen's TLS associations
against DCMTK's TLS storescp, TLS-only modalities, handshake failures in plain words, hostile peers.
Certificates are made here with openssl: a CA, a server, a client, an intruder CA, an expired one."""
from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomnode import demodata
from tests.conftest import free_port
from tests.conftest import wait_for
from tests.pki import Pki

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    folder = Path(tempfile.mkdtemp(prefix="dolmen-pki-"))
    p = Pki(folder)
    p.ca("ca")
    p.ca("intruder-ca")
    p.cert("server", "ca")
    p.cert("client", "ca")
    p.cert("intruder", "intruder-ca")
    p.cert("expired", "ca", start="20200101000000Z", end="20210101000000Z")
    p.cert("elsewhere", "ca", san="DNS:pacs.elsewhere.example")
    yield p
    shutil.rmtree(folder, ignore_errors=True)


def _tls_section(pki: Pki, port: int) -> dict[str, Any]:
    return {"port": port, "certificate": pki.path("server.crt"), "private_key": pki.path("server.key"),
            "trusted_certificates": pki.path("ca.crt")}


@pytest.fixture(scope="module")
def node(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Dolmen with a TLS listener; modality SECURE must use TLS, PLAINPEER need not."""
    from tests.conftest import make_config_doc
    from tests.conftest import start_dolmen
    from tests.conftest import write_toml

    folder = Path(tempfile.mkdtemp(prefix="dt-tls-"))
    tls_port = free_port()
    doc = make_config_doc(folder / "data", dicom={"acse_timeout": 3.0, "unknown_aet": ["echo", "store"]},
                          dicom__tls=_tls_section(pki, tls_port),
                          modalities__secure={"aet": "SECURE", "host": "127.0.0.1", "port": 104, "tls": True},
                          modalities__plainpeer={"aet": "PLAINPEER", "host": "127.0.0.1", "port": 104})
    server = start_dolmen(write_toml(folder / "c.toml", doc), folder / "log")
    server.extra["tls_port"] = tls_port
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


def _tls_args(pki: Pki, who: str = "client", ca: str = "ca") -> list[str]:
    return ["+tls", pki.path(f"{who}.key"), pki.path(f"{who}.crt"), "+cf", pki.path(f"{ca}.crt")]


def _both_up(node: Any, dcmtk: Any) -> None:
    assert node.proc.poll() is None
    dcmtk("echoscu", "-aet", "PROBE", "-aec", node.aet, "127.0.0.1", str(node.dicom_port))


def test_echo_and_store_over_tls_with_dcmtk(node: Any, dcmtk: Any, pki: Pki, tmp_path: Path) -> None:
    port = str(node.extra["tls_port"])
    assert node.status()["tls_port"] == node.extra["tls_port"]
    dcmtk("echoscu", *_tls_args(pki), "-aet", "SECURE", "-aec", node.aet, "127.0.0.1", port)
    files = demodata.write(tmp_path / "src", patients=1, studies=1, series=1, instances=3, size=16, first_patient=61)
    dcmtk("storescu", *_tls_args(pki), "-aet", "SECURE", "-aec", node.aet, "127.0.0.1", port, *map(str, files))
    found = node.post("/tools/find", program=True, json={"Level": "Instance", "Query": {"PatientID": "PAT00061"}})
    assert len(found.json()) == 3


def test_a_tls_modality_is_refused_on_the_plain_port(node: Any, dcmtk: Any, pki: Pki) -> None:
    plain = dcmtk("echoscu", "-aet", "SECURE", "-aec", node.aet, "127.0.0.1", str(node.dicom_port), check=False)
    assert plain.returncode != 0 and "Rejected" in plain.stdout + plain.stderr
    assert wait_for(lambda: "must connect over TLS" in node.log_text(), timeout=10)
    # another declared node, without tls, still may; and the TLS one over TLS
    dcmtk("echoscu", "-aet", "PLAINPEER", "-aec", node.aet, "127.0.0.1", str(node.dicom_port))
    dcmtk("echoscu", *_tls_args(pki), "-aet", "SECURE", "-aec", node.aet, "127.0.0.1", str(node.extra["tls_port"]))


def _expect_refused(node: Any, dcmtk: Any, words: str, before: int) -> None:
    def logged() -> bool:
        return words in node.log_text()[before:]
    assert wait_for(logged, timeout=10, what=f"a log line saying {words!r}")
    lines = [ln for ln in node.log_text()[before:].splitlines() if "TLS connection from 127.0.0.1" in ln]
    assert len(lines) == 1, lines  # one line, naming the peer
    _both_up(node, dcmtk)


def test_a_certificate_from_another_ca_is_refused(node: Any, dcmtk: Any, pki: Pki) -> None:
    before = len(node.log_text())
    done = dcmtk("echoscu", *_tls_args(pki, "intruder"), "-aec", node.aet, "127.0.0.1",
                 str(node.extra["tls_port"]), check=False)
    assert done.returncode != 0
    _expect_refused(node, dcmtk, "unknown CA", before)


def test_no_client_certificate_is_refused(node: Any, dcmtk: Any, pki: Pki) -> None:
    before = len(node.log_text())
    context = ssl.create_default_context(cafile=pki.path("ca.crt"))
    with socket.create_connection(("127.0.0.1", node.extra["tls_port"]), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"\x01\x00")  # TLS 1.3: the refusal comes with the first read
                s.recv(10)
        except (ssl.SSLError, ConnectionError):
            pass
    _expect_refused(node, dcmtk, "no client certificate", before)


def test_plain_dicom_on_the_tls_port_is_refused(node: Any, dcmtk: Any) -> None:
    before = len(node.log_text())
    start = time.monotonic()
    done = dcmtk("echoscu", "-aec", node.aet, "127.0.0.1", str(node.extra["tls_port"]), check=False, timeout=30)
    assert done.returncode != 0 and time.monotonic() - start < 10
    _expect_refused(node, dcmtk, "does not speak TLS", before)


def test_garbage_before_the_handshake_is_refused(node: Any, dcmtk: Any) -> None:
    before = len(node.log_text())
    with socket.create_connection(("127.0.0.1", node.extra["tls_port"]), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(10)
        try:
            answer = s.recv(100)
        except OSError:
            answer = b""
    assert not answer.startswith(b"HTTP")  # a TLS alert at most, then closed
    _expect_refused(node, dcmtk, "handshake failed", before)


def test_a_client_that_never_finishes_its_handshake_blocks_nobody(node: Any, dcmtk: Any, pki: Pki) -> None:
    before = len(node.log_text())
    silent = [socket.create_connection(("127.0.0.1", node.extra["tls_port"]), timeout=10) for _ in range(3)]
    try:
        start = time.monotonic()
        # others are served meanwhile, over TLS and plain
        dcmtk("echoscu", *_tls_args(pki), "-aet", "SECURE", "-aec", node.aet, "127.0.0.1", str(node.extra["tls_port"]))
        assert time.monotonic() - start < 2.5
        for s in silent:
            s.settimeout(10)
            assert s.recv(10) == b""  # closed by Dolmen within the ACSE timeout (3 s)
        assert time.monotonic() - start < 8
    finally:
        for s in silent:
            s.close()
    assert wait_for(lambda: node.log_text()[before:].count("did not finish in time") == 3, timeout=10)
    _both_up(node, dcmtk)


# -- Dolmen as the TLS client ----------------------------------------------------------------------


@pytest.fixture
def tls_scp(dcmtk: Any, pki: Pki, tmp_path: Path) -> Iterator[Any]:
    """Start DCMTK storescp +tls with a given certificate; returns a starter."""
    started: list[subprocess.Popen[str]] = []

    def start(cert: str = "server", trusted: str = "ca") -> int:
        port = free_port()
        out = tmp_path / f"scp-{port}"
        out.mkdir()
        proc = dcmtk.popen("storescp", "+tls", pki.path(f"{cert}.key"), pki.path(f"{cert}.crt"),
                           "+cf", pki.path(f"{trusted}.crt"), "-aet", "TLSSCP", "-od", str(out), str(port),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(proc)
        wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True, what="storescp")
        return port

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(10)


def _declare(node: Any, name: str, port: int, tls: bool = True) -> None:
    """Declare the storescp through Orthanc's REST API (``UseDicomTls``); an AE title of its own
    (storescp answers to any called AE title)."""
    import requests

    aet = name.upper().replace("-", "")[:16]
    answer = requests.put(f"{node.url}/modalities/{name}", timeout=30,
                          json={"AET": aet, "Host": "127.0.0.1", "Port": port, "UseDicomTls": tls})
    assert answer.status_code == 200, answer.text


def test_dolmen_echoes_and_sends_to_a_tls_scp(node: Any, tls_scp: Any, tmp_path: Path, dcmtk: Any, pki: Pki) -> None:
    port = tls_scp()
    _declare(node, "tlsscp", port)
    assert node.get("/modalities/tlsscp", program=True).status_code == 200
    assert node.get("/modalities/tlsscp/configuration", program=True).json()["UseDicomTls"] is True
    echo = node.post("/modalities/tlsscp/echo", program=True, json={})
    assert echo.status_code == 200, echo.text
    files = demodata.write(tmp_path / "s", patients=1, studies=1, series=1, instances=2, size=16, first_patient=62)
    dcmtk("storescu", *_tls_args(pki), "-aet", "SECURE", "-aec", node.aet, "127.0.0.1",
          str(node.extra["tls_port"]), *map(str, files))
    study = node.post("/tools/lookup", program=True, data=str(__import__("pydicom").dcmread(files[0]).StudyInstanceUID))
    sent = node.post("/modalities/tlsscp/store", program=True, json={"Resources": [study.json()[0]["ID"]]})
    assert sent.status_code == 200, sent.text
    assert sent.json()["InstancesCount"] == 2 and sent.json()["FailedInstancesCount"] == 0
    # the modalities page shows it
    page = node.get("/modalities")
    assert 'data-modality="tlsscp"' in page.text and ">TLS</span>" in page.text


@pytest.mark.parametrize(("cert", "trusted", "words"), [
    ("intruder", "ca", "unknown CA"),
    ("expired", "ca", "expired"),
    ("elsewhere", "ca", "does not name this host"),
    ("server", "intruder-ca", "does not trust our certificate"),
])
def test_a_failed_handshake_is_explained(node: Any, tls_scp: Any, cert: str, trusted: str, words: str) -> None:
    port = tls_scp(cert, trusted)
    name = f"bad-{cert}-{trusted}"
    _declare(node, name, port)
    echo = node.post(f"/modalities/{name}/echo", program=True, json={})
    assert echo.status_code != 200
    assert "TLS handshake" in echo.text and words in echo.text, echo.text
