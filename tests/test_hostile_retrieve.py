"""A hostile remote answering our C-GET and C-MOVE retrieves (issue 7, datasets): the
instances it sends carry UIDs that are paths. Nothing is filed under them, nothing is written
outside the storage root, the job reports the failures, and the survival contract holds."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom import StoragePresentationContexts
from pynetdicom import evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

from dicomnode.control import ControlClient
from tests.conftest import free_port
from tests.conftest import wait_for
from tests.hostile import Survival
from tests.hostile import hostile_sections
from tests.hostile import small_instance

TARGET = Path(tempfile.gettempdir()) / "dolmen-hostile-retrieve"
STUDY = "1.2.826.0.1.3680043.10.1078.11.1"
HOSTILE_UIDS = [f"../../../../../..{TARGET}/x", f"{TARGET}/y", "1.2.3\0/../../z"]


def hostile_instances(dolmen_port: int) -> list[Dataset]:
    out = []
    for n, uid in enumerate(HOSTILE_UIDS, start=1):
        ds = small_instance(STUDY, n=n)
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        out.append(ds)
    # One with a path for Study Instance UID too, and a proper one (it must be stored).
    ds = small_instance(STUDY, n=9)
    ds.StudyInstanceUID = f"{TARGET}/study"
    out.append(ds)
    out.append(small_instance(STUDY, n=10))
    return out


@pytest.fixture
def remote() -> Iterator[dict[str, Any]]:
    """A pynetdicom SCP answering any C-GET and C-MOVE with the hostile instances."""
    port = free_port()
    state: dict[str, Any] = {"port": port, "dolmen_port": 0}

    def on_get(event: evt.Event) -> Iterator[Any]:
        instances = hostile_instances(state["dolmen_port"])
        yield len(instances)
        for ds in instances:
            yield 0xFF00, ds

    def on_move(event: evt.Event) -> Iterator[Any]:
        instances = hostile_instances(state["dolmen_port"])
        yield "127.0.0.1", state["dolmen_port"]
        yield len(instances)
        for ds in instances:
            yield 0xFF00, ds

    ae = AE(ae_title="HOSTILE")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
    for cx in StoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, scu_role=True, scp_role=True)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2")
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_GET, on_get), (evt.EVT_C_MOVE, on_move)]
    )
    yield state
    server.shutdown()


@pytest.mark.parametrize("kind", ["get", "move"])
def test_hostile_remote_retrieve(dolmen_factory, remote: dict[str, Any], kind: str) -> None:  # type: ignore[no-untyped-def]
    server = dolmen_factory(
        **hostile_sections(
            modalities__hostile={
                "aet": "HOSTILE",
                "host": "127.0.0.1",
                "port": remote["port"],
                "allow": ["echo", "store"],
            }
        )
    )
    remote["dolmen_port"] = server.dicom_port
    survival = Survival(server)
    client = ControlClient(server.control_socket)
    job = client.call(kind, modality="hostile", level="STUDY", keys={"StudyInstanceUID": STUDY})["job"]

    def ended() -> dict[str, Any] | None:
        body = server.get(f"/api/jobs/{job}").json()
        return body if body["State"] in ("success", "failure", "cancelled") else None

    body = wait_for(ended, timeout=60, what=f"the {kind} job to end")
    assert body["Failed"] >= 1, body  # the hostile instances are reported as failures
    import sqlite3

    con = sqlite3.connect(server.data / "index.db")
    try:
        uids = {r[0] for r in con.execute("SELECT sop_instance_uid FROM instance")}
        studies = {r[0] for r in con.execute("SELECT study_instance_uid FROM study")}
    finally:
        con.close()
    assert not any(u in uids for u in HOSTILE_UIDS), uids
    assert not any(str(TARGET) in s for s in studies), studies
    assert f"{STUDY}.1.10" in uids, "the one proper instance was not stored"
    survival.check(forbidden=[TARGET], problem="Invalid SOPInstanceUID|Invalid StudyInstanceUID|UID")
