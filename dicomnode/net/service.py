"""What every SCP handler shares: the context (settings, ingest path, counters), the peer of an
association, status datasets, the association log, and the Query/Retrieve models served."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName
from pynetdicom import evt

from dicomnode.archive import query
from dicomnode.archive.index import AssociationEvent
from dicomnode.archive.ingest import Ingestor
from dicomnode.config import Settings
from dicomnode.net import connect

LOGGER = logging.getLogger(__name__)


#: Query/Retrieve information models served: SOP Class UID -> (root, DIMSE service).
QR_MODELS: dict[str, tuple[str, str]] = {
    str(connect.PatientRootQueryRetrieveInformationModelFind): ("PATIENT", "find"),
    str(connect.StudyRootQueryRetrieveInformationModelFind): ("STUDY", "find"),
    str(connect.PatientRootQueryRetrieveInformationModelMove): ("PATIENT", "move"),
    str(connect.StudyRootQueryRetrieveInformationModelMove): ("STUDY", "move"),
    str(connect.PatientRootQueryRetrieveInformationModelGet): ("PATIENT", "get"),
    str(connect.StudyRootQueryRetrieveInformationModelGet): ("STUDY", "get"),
}
ROOT_NAME = {"PATIENT": "Patient Root", "STUDY": "Study Root"}
LEVELS_OF_ROOT = {"PATIENT": query.LEVELS, "STUDY": query.LEVELS[1:]}


@dataclass
class Counters:
    """What the sidecar reports in ``status``."""

    started: float = field(default_factory=time.time)
    instances_received: int = 0
    instances_rejected: int = 0
    associations_total: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bump(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)


class Reception:
    """When the DICOM server last received a piece of an object (a P-DATA write to a spool file,
    or the end of a C-STORE).

    Send jobs give way to reception while it is :meth:`active` (see
    :meth:`dicomnode.jobs.JobContext.give_way`): an association that is open but idle (a
    modality between two studies, a viewer keeping its association) slows nothing.
    """

    #: Seconds after the last received piece during which reception counts as active: longer
    #: than the gap between two objects of one sender, shorter than a pause between studies.
    WINDOW = 0.25
    last = -1e9

    @classmethod
    def touch(cls) -> None:
        cls.last = time.monotonic()

    @classmethod
    def active(cls) -> bool:
        return time.monotonic() - cls.last < cls.WINDOW


@dataclass
class Context:
    """What the handlers need: settings, the ingest path and the counters."""

    settings: Settings
    ingestor: Ingestor
    counters: Counters = field(default_factory=Counters)


def event_peer(event: evt.Event) -> tuple[str, str, str]:
    return assoc_peer(event.assoc)


def assoc_peer(assoc: Any) -> tuple[str, str, str]:
    """Calling AE, called AE (as the peer asked, not ours) and peer IP of an inbound association."""
    calling = str(assoc.requestor.ae_title or "").strip()
    primitive = getattr(assoc.requestor, "primitive", None)
    called = str(getattr(primitive, "called_ae_title", "") or assoc.acceptor.ae_title or "").strip()
    ip = str(assoc.requestor.address or "")
    return calling, called, ip


def status_dataset(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    # (0000,0902) Error Comment is LO: 64 characters at most.
    ds.ErrorComment = comment[:64]
    return ds


def log_event(calling: str, called: str, ip: str, operation: str, accepted: bool, reason: str = "",
               count: int = 0, duration: float = 0.0) -> None:
    try:
        AssociationEvent.create(calling_aet=calling[:64], called_aet=called[:64], peer_ip=ip[:64],
                                operation=operation, accepted=accepted, reason=reason,
                                count=count, duration=duration)
    except Exception as exc:  # the log must never break a transfer
        LOGGER.warning("Cannot write the association log: %s", exc)


def element_text(elem: DataElement) -> Any:
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, (list, MultiValue)):
        return [str(v) for v in value]
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value)


