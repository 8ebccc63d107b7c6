"""The SCU against real peers: Orthanc (echo, find at every level, C-GET, C-MOVE errors,
rejections), DCMTK storescp (send, transcoding) and pynetdicom SCPs answering chosen statuses."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom import evt
from pynetdicom.sop_class import CTImageStorage
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

from dicomnode import config
from dicomnode import demodata
from dicomnode import status
from dicomnode.errors import RemoteError
from dicomnode.net import connect
from dicomnode.net import scu
from dicomnode.net import send
from dicomnode.net import wire
from dicomnode.peers import Node
from tests.conftest import free_port
from tests.conftest import start_orthanc
from tests.conftest import wait_for

pytestmark = pytest.mark.orthanc


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> config.Settings:
    return config.from_dict(
        {
            "storage": {"path": str(tmp_path_factory.mktemp("scu"))},
            "dicom": {"port": 4242, "dimse_timeout": 20.0},
        }
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """2 patients × 2 studies × 2 series × 3 instances, 32×32."""
    return demodata.write(
        tmp_path_factory.mktemp("demo"), patients=2, studies=2, series=2, instances=3, size=32
    )


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, demo: list[Path]) -> Iterator[Any]:
    folder = Path(tempfile_dir(tmp_path_factory))
    # Orthanc answers the queries of declared modalities only; nothing listens at 4242.
    server = start_orthanc(folder, "PACS", DicomModalities={"dolmen": ["DOLMEN", "127.0.0.1", 4242]})
    for path in demo:
        assert server.post("/instances", data=path.read_bytes()).status_code == 200
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


def tempfile_dir(factory: pytest.TempPathFactory) -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="dt-", dir="/tmp")


@pytest.fixture(scope="module")
def pacs(orthanc: Any) -> Node:
    return Node("pacs", "PACS", "127.0.0.1", orthanc.dicom_port, ())


def item(path: Path | str) -> wire.SendItem:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return wire.SendItem(
        str(path),
        str(ds.SOPClassUID),
        str(ds.SOPInstanceUID),
        str(ds.file_meta.TransferSyntaxUID),
        Path(path).stat().st_size,
    )


# -- echo and the association errors --------------------------------------------------------


def test_echo_answers_with_the_round_trip_time(settings: config.Settings, pacs: Node) -> None:
    result = scu.echo(settings, pacs)
    assert result["ok"] is True and result["status"] == 0 and result["rtt_ms"] > 0


def test_echo_a_closed_port_says_connection_refused(settings: config.Settings) -> None:
    node = Node("closed", "NOBODY", "127.0.0.1", free_port(), ())
    with pytest.raises(RemoteError) as err:
        scu.echo(settings, node)
    assert err.value.code == "connection_refused"
    assert "Connection refused by 127.0.0.1" in err.value.message and "nothing listens" in err.value.message


def test_unknown_host_is_named(settings: config.Settings) -> None:
    with pytest.raises(RemoteError) as err:
        scu.echo(settings, Node("typo", "X", "no-such-host.invalid", 104, ()))
    assert err.value.code == "unknown_host" and "'no-such-host.invalid'" in err.value.message


@pytest.fixture
def raw_peer() -> Iterator[Any]:
    """``raw_peer(answer)``: a TCP port whose server reads the association request, then calls
    ``answer(connection)`` (which may send bytes, close, or do nothing: a silent peer)."""
    import threading

    servers: list[socket.socket] = []
    held: list[socket.socket] = []

    def start(answer: Any) -> Node:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        servers.append(server)

        def serve() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                held.append(conn)
                conn.recv(65536)
                answer(conn)

        threading.Thread(target=serve, daemon=True).start()
        return Node("peer", "PEER", "127.0.0.1", server.getsockname()[1], ())

    yield start
    for sock in servers + held:
        sock.close()


def test_a_silent_peer_is_a_timeout(settings: config.Settings, raw_peer: Any) -> None:
    node = raw_peer(lambda conn: None)  # reads the A-ASSOCIATE-RQ, never answers
    with pytest.raises(RemoteError) as err:
        scu.echo(settings.replace(**{"dicom.acse_timeout": 1.0}), node)
    assert err.value.code == "timeout"
    assert "did not answer the association request within 1 s" in err.value.message


def test_a_peer_that_closes_the_connection_is_named(settings: config.Settings, raw_peer: Any) -> None:
    node = raw_peer(lambda conn: conn.close())
    with pytest.raises(RemoteError) as err:
        scu.echo(settings, node)
    assert err.value.code == "association_aborted"
    assert f"closed the connection without answering the association request: is port {node.port}" in (
        err.value.message)


def test_a_peer_that_aborts_gives_the_abort_source(settings: config.Settings, raw_peer: Any) -> None:
    # A-ABORT PDU (PS3.8 9.3.8): type 07, length 4, two reserved bytes, source 0 (service-user), reason 0.
    node = raw_peer(lambda conn: conn.sendall(bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0])))
    with pytest.raises(RemoteError) as err:
        scu.echo(settings, node)
    assert err.value.code == "association_aborted"
    assert "aborted the association request (DUL service-user)" in err.value.message


@pytest.fixture(scope="module")
def strict_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An Orthanc that checks the called AE title and knows no modality (so refuses us)."""
    folder = Path(tempfile_dir(tmp_path_factory))
    server = start_orthanc(
        folder,
        "STRICT",
        DicomCheckCalledAet=True,
        DicomAlwaysAllowEcho=False,
        DicomAlwaysAllowStore=False,
        DicomModalities={},
    )
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


def test_a_wrong_called_ae_title_is_rejected_with_the_reason(
    settings: config.Settings, strict_orthanc: Any
) -> None:
    node = Node("strict", "WRONG", "127.0.0.1", strict_orthanc.dicom_port, ())
    with pytest.raises(RemoteError) as err:
        scu.echo(settings, node)
    assert err.value.code == "association_rejected"
    assert "Called AE title not recognised" in err.value.message
    assert "Check that 'strict' is really called 'WRONG'" in err.value.message


def test_a_node_that_does_not_know_us_rejects_and_we_say_so(
    settings: config.Settings, strict_orthanc: Any
) -> None:
    node = Node("strict", "STRICT", "127.0.0.1", strict_orthanc.dicom_port, ())
    for attempt in (lambda: scu.echo(settings, node), lambda: scu.find(settings, node, "STUDY", {})):
        with pytest.raises(RemoteError) as err:
            attempt()
        assert err.value.code == "association_rejected"
        assert "Calling AE title not recognised" in err.value.message
        assert "does not know our AE title 'DOLMEN'" in err.value.message


# -- C-FIND -------------------------------------------------------------------------------


def test_a_node_that_refuses_our_query_aborts_and_we_say_so(settings: config.Settings, pacs: Node) -> None:
    stranger = settings.replace(**{"dicom.aet": "STRANGER"})
    with pytest.raises(RemoteError) as err:
        scu.find(stranger, pacs, "STUDY", {})
    assert err.value.code == "association_aborted"
    assert "refuses this operation from our AE title STRANGER" in err.value.message


def test_find_at_every_level(settings: config.Settings, pacs: Node, demo: list[Path]) -> None:
    patients = scu.find(settings, pacs, "PATIENT", {})
    assert sorted(a["PatientID"] for a in patients["answers"]) == ["PAT00000", "PAT00001"]
    assert {a["NumberOfPatientRelatedInstances"] for a in patients["answers"]} == {"12"}

    studies = scu.find(settings, pacs, "STUDY", {"PatientName": "MULLER*"})
    assert len(studies["answers"]) == 2 and studies["status"] == 0 and not studies["truncated"]
    study = studies["answers"][0]
    assert study["PatientID"] == "PAT00000" and study["NumberOfStudyRelatedInstances"] == "6"
    assert set(study) >= {
        "StudyInstanceUID",
        "StudyDate",
        "StudyDescription",
        "AccessionNumber",
        "ModalitiesInStudy",
    }

    uid = study["StudyInstanceUID"]
    series = scu.find(settings, pacs, "SERIES", {"StudyInstanceUID": uid})["answers"]
    assert len(series) == 2 and all(s["NumberOfSeriesRelatedInstances"] == "3" for s in series)

    images = scu.find(
        settings,
        pacs,
        "IMAGE",
        {"StudyInstanceUID": uid, "SeriesInstanceUID": series[0]["SeriesInstanceUID"]},
    )["answers"]
    assert len(images) == 3 and all(
        i["SOPClassUID"] in (demodata.CT_IMAGE_STORAGE, demodata.MR_IMAGE_STORAGE) for i in images
    )


def test_find_with_date_range_and_modality(settings: config.Settings, pacs: Node, demo: list[Path]) -> None:
    dates = sorted({pydicom.dcmread(p, stop_before_pixels=True).StudyDate for p in demo})
    result = scu.find(settings, pacs, "STUDY", {"StudyDate": f"{dates[0]}-{dates[0]}"})
    assert {a["StudyDate"] for a in result["answers"]} == {dates[0]}
    ct = scu.find(settings, pacs, "STUDY", {"ModalitiesInStudy": "CT"})["answers"]
    assert ct and all("CT" in a["ModalitiesInStudy"] for a in ct)


def test_find_is_capped_and_keeps_a_transcript(settings: config.Settings, pacs: Node) -> None:
    result = scu.find(settings, pacs, "IMAGE", {}, limit=5)
    assert len(result["answers"]) == 5 and result["truncated"] is True
    transcript = result["transcript"]
    assert transcript["op"] == "C-FIND" and transcript["level"] == "IMAGE"
    sent = {e["keyword"]: e for e in transcript["identifier"]}
    assert (
        sent["QueryRetrieveLevel"]["value"] == "IMAGE" and sent["QueryRetrieveLevel"]["tag"] == "(0008,0052)"
    )
    assert transcript["responses"][0]["status"] == "0xFF00"
    assert transcript["responses"][-1]["status"] == "aborted"


def test_a_bad_keyword_is_refused_before_sending(settings: config.Settings, pacs: Node) -> None:
    with pytest.raises(RemoteError) as err:
        scu.find(settings, pacs, "STUDY", {"NotAKeyword": "x"})
    assert err.value.code == "bad_request"


# -- C-GET and C-MOVE ---------------------------------------------------------------------


def test_get_brings_every_instance_of_a_study(settings: config.Settings, pacs: Node, tmp_path: Path) -> None:
    uid = scu.find(settings, pacs, "STUDY", {"PatientID": "PAT00001"})["answers"][0]["StudyInstanceUID"]
    received: list[str] = []
    responses: list[dict[str, Any]] = []

    def store(path: Path) -> int:
        received.append(str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID))
        path.unlink()
        return 0

    report = scu.get(
        settings,
        pacs,
        "STUDY",
        {"StudyInstanceUID": uid},
        store=store,
        spool_dir=tmp_path,
        on_response=responses.append,
    )
    assert report.status == 0 and report.completed == 6 and report.failed == 0
    assert received == [uid] * 6
    assert responses[0]["request"] == "C-GET"
    assert [r["remaining"] for r in responses[1:]] == [5, 4, 3, 2, 1, 0, 0]


def test_get_counts_instances_we_refuse(settings: config.Settings, pacs: Node, tmp_path: Path) -> None:
    uid = scu.find(settings, pacs, "STUDY", {"PatientID": "PAT00001"})["answers"][0]["StudyInstanceUID"]
    with pytest.raises(RemoteError) as err:
        scu.get(
            settings, pacs, "STUDY", {"StudyInstanceUID": uid}, store=lambda p: 0xA700, spool_dir=tmp_path
        )
    # Orthanc ends with 0xA702 when every sub-operation failed.
    assert err.value.code == "out_of_resources" and "all 6 sub-operation(s) failed" in err.value.message


def test_move_to_an_unknown_destination_says_how_to_fix_it(settings: config.Settings, pacs: Node) -> None:
    uid = scu.find(settings, pacs, "STUDY", {"PatientID": "PAT00000"})["answers"][0]["StudyInstanceUID"]
    with pytest.raises(RemoteError) as err:
        scu.move(settings, pacs, "STUDY", {"StudyInstanceUID": uid}, our_port=4242)
    # Orthanc answers 0xC000 (not 0xA801) when it cannot reach or does not know the destination.
    assert err.value.code == "unable_to_process"
    assert "0xC000" in err.value.message
    assert (
        "declare DOLMEN at 127.0.0.1:4242 in its configuration, or retrieve with C-GET" in err.value.message
    )


def test_retrieve_needs_the_unique_keys(settings: config.Settings, pacs: Node) -> None:
    with pytest.raises(RemoteError) as err:
        scu.move(settings, pacs, "SERIES", {"StudyInstanceUID": "1.2.3"})
    assert err.value.code == "bad_request" and "SeriesInstanceUID" in err.value.message


@pytest.fixture
def peer() -> Iterator[dict[str, Any]]:
    """A pynetdicom SCP: CT storage (statuses chosen per instance) and a C-MOVE that knows no one."""
    state: dict[str, Any] = {"statuses": {}, "stored": []}
    ae = AE(ae_title="PEER")
    ae.add_supported_context(CTImageStorage)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)

    def on_store(event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        state["stored"].append(uid)
        return int(state["statuses"].get(uid, 0))

    def on_move(event: evt.Event) -> Iterator[Any]:
        yield None, None  # no address for the destination
        return

    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_C_MOVE, on_move)],
    )
    state["node"] = Node("peer", "PEER", "127.0.0.1", port, ())
    yield state
    server.shutdown()


def test_move_destination_unknown_0xa801(settings: config.Settings, peer: dict[str, Any]) -> None:
    with pytest.raises(RemoteError) as err:
        scu.move(settings, peer["node"], "STUDY", {"StudyInstanceUID": "1.2.3"}, our_port=4242)
    assert err.value.code == "move_destination_unknown"
    assert err.value.message == (
        "peer answered the C-MOVE with 0xA801 Move destination unknown: the remote node does not know our "
        "AE title — declare DOLMEN at 127.0.0.1:4242 in its configuration, or retrieve with C-GET"
    )


# -- send ---------------------------------------------------------------------------------


def ct_files(folder: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        ds = demodata.make_instance(7, 0, 0, i, size=16, modality="CT")
        path = folder / f"ct{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_send_reports_each_status_and_goes_on(
    settings: config.Settings, peer: dict[str, Any], tmp_path: Path
) -> None:
    files = [item(p) for p in ct_files(tmp_path, 4)]
    mr = item(get_testdata_file("MR_small.dcm"))
    peer["statuses"] = {files[1].sop_instance_uid: 0xA700, files[2].sop_instance_uid: 0xB000}
    results: list[tuple[str, int | None, str]] = []
    report = send.send(
        settings,
        peer["node"],
        files + [mr],
        on_result=lambda i, status, msg: results.append((i.sop_instance_uid, status, msg)),
    )
    assert (report.sent, report.failed, report.warnings) == (3, 2, 1)
    assert results[1][1] == 0xA700 and "0xA700 Out of resources" in results[1][2]
    assert results[2][1] == 0xB000 and results[2][2].startswith("Warning 0xB000")
    assert results[4][1] is None and "accepted no presentation context for MR Image Storage" in results[4][2]
    assert report.bytes_sent == sum(f.size for f in (files[0], files[2], files[3]))


def test_send_stops_between_instances_when_cancelled(
    settings: config.Settings, peer: dict[str, Any], tmp_path: Path
) -> None:
    files = [item(p) for p in ct_files(tmp_path, 5)]
    done: list[str] = []
    report = send.send(
        settings,
        peer["node"],
        files,
        on_result=lambda i, s, m: done.append(i.sop_instance_uid),
        cancelled=lambda: len(done) >= 2,
    )
    assert report.cancelled and report.sent == 2 and len(peer["stored"]) == 2


@pytest.fixture
def storescp(dcmtk: Any, tmp_path: Path) -> Iterator[Any]:
    started: list[Any] = []

    def start(*options: str) -> tuple[Node, Path]:
        out = tmp_path / f"in{len(started)}"
        out.mkdir()
        port = free_port()
        proc = dcmtk.popen("storescp", *options, "-aet", "STORESCP", "-od", str(out), str(port))
        started.append(proc)

        def listening() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True

        wait_for(listening, what="storescp")
        return Node("scp", "STORESCP", "127.0.0.1", port, ()), out

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(10)


def received(folder: Path) -> dict[str, Dataset]:
    out = {}
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        out[str(ds.SOPInstanceUID)] = ds
    return out


def test_send_to_storescp_transcodes_when_it_takes_only_uncompressed(
    settings: config.Settings, storescp: Any, tmp_path: Path
) -> None:
    node, out = storescp()  # storescp accepts uncompressed syntaxes only by default
    jpeg2000 = item(get_testdata_file("MR_small_jp2klossless.dcm"))
    plain = item(get_testdata_file("CT_small.dcm"))
    report = send.send(settings, node, [jpeg2000, plain])
    assert (report.sent, report.failed, report.transcoded) == (2, 0, 1)
    got = received(out)
    assert not got[jpeg2000.sop_instance_uid].file_meta.TransferSyntaxUID.is_compressed
    original = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    assert (got[jpeg2000.sop_instance_uid].pixel_array == original.pixel_array).all()  # lossless
    assert got[plain.sop_instance_uid].PatientName == pydicom.dcmread(plain.path).PatientName


def test_send_to_storescp_keeps_the_stored_syntax_when_accepted(
    settings: config.Settings, storescp: Any
) -> None:
    node, out = storescp("+xa")  # accept every transfer syntax
    jpeg2000 = item(get_testdata_file("MR_small_jp2klossless.dcm"))
    report = send.send(settings, node, [jpeg2000])
    assert (report.sent, report.transcoded) == (1, 0)
    assert (
        received(out)[jpeg2000.sop_instance_uid].file_meta.TransferSyntaxUID == jpeg2000.transfer_syntax_uid
    )


def test_status_messages_say_what_to_do() -> None:
    node = Node("pacs", "PACS", "10.0.0.5", 104, ())
    assert connect.status_message(0x0122, "find", node) == (
        "pacs answered the C-FIND with 0x0122 SOP class not supported. "
        "The remote node does not implement this service."
    )
    assert status.error_code(0xA702) == "out_of_resources" and status.error_code(0xC123) == "unable_to_process"
    assert "Cannot understand" in connect.status_message(0xC000, "store", node, comment="bad pixel data")
    assert "(bad pixel data)" in connect.status_message(0xC000, "store", node, comment="bad pixel data")
    other = connect.status_message(0xA801, "move", node, destination="VIEWER")
    assert "does not know the AE title 'VIEWER'" in other


@pytest.mark.parametrize("chunk", [16372, 65530, 1 << 20])
def test_files_go_out_as_pdus_holding_exactly_the_stored_data_set(tmp_path: Path, chunk: int) -> None:
    """What the direct C-STORE writes: the command PDU, then the file's data set (not its
    preamble and meta) in PDUs of at most ``chunk`` bytes, the last one flagged last; a 3 MiB
    file crosses several 1 MiB socket writes."""
    import struct
    import threading

    path = demodata.write_large(tmp_path / "big.dcm", 3)
    raw = path.read_bytes()
    meta_len = int.from_bytes(raw[140:144], "little")
    expected = raw[144 + meta_len:]
    ours, theirs = socket.socketpair()
    got = bytearray()
    with ours, theirs:
        def read_all() -> None:
            while True:
                part = theirs.recv(1 << 20)
                if not part:
                    return
                got.extend(part)

        reader = threading.Thread(target=read_all)
        reader.start()
        with open(path, "rb", buffering=0) as f:
            wire._send_file_pdus(ours, f, str(path), b"HEAD", 7, chunk)
        ours.shutdown(socket.SHUT_WR)
        reader.join(30)
    assert got[:4] == b"HEAD"
    pos, data, flags = 4, bytearray(), []
    while pos < len(got):
        pdu_type, _, pdu_len, item_len, context_id, control = struct.unpack_from(">BBIIBB", got, pos)
        assert pdu_type == 4 and context_id == 7 and item_len == pdu_len - 4 and item_len - 2 <= chunk
        data += got[pos + 12:pos + 6 + pdu_len]
        flags.append(control)
        pos += 6 + pdu_len
    assert bytes(data) == expected
    assert flags[-1] == 0x02 and set(flags[:-1]) <= {0x00}
