"""The DICOM service provider: ``build_ae(settings)`` and its event handlers.

Runs in the sidecar process. Verification and every standard Storage SOP class are served;
received objects are written by pynetdicom straight to a spool file on the storage volume
(``STORE_RECV_CHUNKED_DATASET``), so a 2 GB object never sits in memory, and then handed to
the one ingest path. Success is answered only after the index commit.

Handlers are module functions; their dependencies are bound with pynetdicom's 3-tuple
``(evt, handler, [args])``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import ALL_TRANSFER_SYNTAXES
from pynetdicom import AE
from pynetdicom import AllStoragePresentationContexts
from pynetdicom import _config as pynetdicom_config
from pynetdicom import dimse_messages
from pynetdicom import evt
from pynetdicom.sop_class import Verification

from dicomnode import nodes
from dicomnode import upperlayer
from dicomnode.config import Settings
from dicomnode.index import AssociationEvent
from dicomnode.ingest import Ingestor
from dicomnode.ingest import Source

LOGGER = logging.getLogger(__name__)

# Status codes (PS3.4 Annex B.2.3 for storage, PS3.7 Annex C for the general ones).
SUCCESS = 0x0000
NOT_AUTHORIZED = 0x0124  # Refused: Not Authorized
OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources
DATASET_MISMATCH = 0xA900  # Error: Data Set does not match SOP Class
CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand
PROCESSING_FAILURE = 0x0110


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


@dataclass
class Context:
    """What the handlers need: settings, the ingest path and the counters."""

    settings: Settings
    ingestor: Ingestor
    counters: Counters = field(default_factory=Counters)


class _CappedSpool:
    """The file pynetdicom writes a received dataset into, with a size cap.

    pynetdicom opens it as ``NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")`` and
    uses ``name``, ``write``, ``file.flush`` and ``close``. We put it in our spool folder (the
    store's volume, so ingest renames it into place), write unbuffered (pynetdicom flushes
    after every PDU anyway), and stop a peer that sends more than ``[dicom] max_object_mb``:
    the write raises, pynetdicom aborts the association, and the partial file is removed here.
    """

    folder: Path | None = None
    cap: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        folder = self.folder or Path(tempfile.gettempdir())
        self.name = str(folder / f"scp-{uuid.uuid4().hex}.part")
        self._fd = os.open(self.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.file = self
        self.written = 0

    def write(self, data: bytes) -> int:
        self.written += len(data)
        if self.cap is not None and self.written > self.cap:
            self.close()
            with contextlib.suppress(OSError):
                os.unlink(self.name)
            raise OSError(f"object larger than {self.cap // (1024 * 1024)} MiB: association aborted")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        return len(data)

    def flush(self) -> None:
        """Nothing to flush: writes are unbuffered."""

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def install_spool(folder: Path, cap_bytes: int) -> None:
    """Make pynetdicom spool received datasets into ``folder`` with a size cap."""
    _CappedSpool.folder = folder
    _CappedSpool.cap = cap_bytes
    pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = _CappedSpool  # type: ignore[attr-defined]


def _peer(event: evt.Event) -> tuple[str, str, str]:
    assoc = event.assoc
    calling = str(assoc.requestor.ae_title or "").strip()
    called = str(assoc.acceptor.ae_title or "").strip()
    ip = str(assoc.requestor.address or "")
    return calling, called, ip


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    # (0000,0902) Error Comment is LO: 64 characters at most.
    ds.ErrorComment = comment[:64]
    return ds


def _log_event(calling: str, called: str, ip: str, operation: str, accepted: bool, reason: str = "",
               count: int = 0, duration: float = 0.0) -> None:
    try:
        AssociationEvent.create(calling_aet=calling[:64], called_aet=called[:64], peer_ip=ip[:64],
                                operation=operation, accepted=accepted, reason=reason,
                                count=count, duration=duration)
    except Exception as exc:  # the log must never break a transfer
        LOGGER.warning("Cannot write the association log: %s", exc)


def handle_echo(event: evt.Event, ctx: Context) -> int:
    """C-ECHO: Success (0x0000), or Refused: Not Authorized (0x0124) by access control."""
    calling, called, ip = _peer(event)
    refusal = nodes.access(ctx.settings, calling, ip, "echo")
    if refusal:
        LOGGER.warning("C-ECHO from %s at %s refused: %s", calling, ip, refusal)
        _log_event(calling, called, ip, "echo", False, refusal)
        return NOT_AUTHORIZED
    return SUCCESS


def handle_store(event: evt.Event, ctx: Context) -> int | Dataset:
    """C-STORE: ingest the spooled dataset.

    Returns Success (0x0000) when stored or already stored; Refused: Not Authorized
    (0x0124); Refused: Out of Resources (0xA700) when storage is full; Error: Data Set does
    not match SOP Class (0xA900) when the command and the dataset disagree; Error: Cannot
    understand (0xC000) for an object that cannot be filed. Every error carries an Error
    Comment with the reason.
    """
    calling, called, ip = _peer(event)
    # Decided once per association: nodes.access reads the modality table, which costs more
    # than the rest of a small C-STORE; a modality changed in the page applies from the
    # peer's next association.
    try:
        refusal = event.assoc.dolmen_store_refusal  # type: ignore[attr-defined]
    except AttributeError:
        refusal = nodes.access(ctx.settings, calling, ip, "store")
        event.assoc.dolmen_store_refusal = refusal  # type: ignore[attr-defined]
    if refusal:
        LOGGER.warning("C-STORE from %s at %s refused: %s", calling, ip, refusal)
        _log_event(calling, called, ip, "store", False, refusal)
        return _status(NOT_AUTHORIZED, refusal)
    request = event.request
    result = ctx.ingestor.ingest_spooled(
        event.dataset_path, Source("dicom", calling, ip, called),
        expected_sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
        expected_sop_class_uid=str(request.AffectedSOPClassUID or ""))
    if result.ok:
        ctx.counters.bump("instances_received")
        _association_count(event)
        return SUCCESS
    ctx.counters.bump("instances_rejected")
    LOGGER.warning("C-STORE from %s at %s rejected: %s", calling, ip, result.reason)
    if result.code == "storage_full":
        return _status(OUT_OF_RESOURCES, result.reason)
    if "C-STORE command names" in result.reason:
        return _status(DATASET_MISMATCH, result.reason)
    return _status(CANNOT_UNDERSTAND, result.reason)


def _association_count(event: evt.Event) -> None:
    assoc = event.assoc
    assoc.dolmen_stored = getattr(assoc, "dolmen_stored", 0) + 1  # type: ignore[attr-defined]


def handle_established(event: evt.Event, ctx: Context) -> None:
    """Count the association and note when it started."""
    event.assoc.dolmen_started = time.monotonic()  # type: ignore[attr-defined]
    ctx.counters.bump("associations_total")
    calling, _called, ip = _peer(event)
    LOGGER.info("Association from %s at %s", calling, ip)


def handle_closed(event: evt.Event, ctx: Context, how: str) -> None:
    """Record a released or aborted association in the association log."""
    calling, called, ip = _peer(event)
    started = getattr(event.assoc, "dolmen_started", None)
    stored = getattr(event.assoc, "dolmen_stored", 0)
    duration = time.monotonic() - started if started else 0.0
    _log_event(calling, called, ip, "associate", how == "released",
               "" if how == "released" else "aborted", stored, duration)
    LOGGER.info("Association from %s at %s %s after %.1f s, %d instance(s) stored",
                calling, ip, how, duration, stored)


def handle_rejected(event: evt.Event, ctx: Context) -> None:
    """Log an association we rejected (pynetdicom's own checks)."""
    calling, called, ip = _peer(event)
    _log_event(calling, called, ip, "associate", False, "association rejected")
    LOGGER.warning("Association from %s at %s to %s rejected", calling, ip, called)


def build_ae(settings: Settings) -> AE:
    """An AE with Verification and every Storage SOP class, limits from ``settings``."""
    ae = upperlayer.DolmenAE(ae_title=settings["dicom.aet"])
    ae.maximum_associations = settings["dicom.max_associations"]
    ae.acse_timeout = settings["dicom.acse_timeout"]
    ae.dimse_timeout = settings["dicom.dimse_timeout"]
    ae.network_timeout = settings["dicom.network_timeout"]
    ae.maximum_pdu_size = settings["dicom.max_pdu"]
    ae.require_called_aet = settings["dicom.check_called_aet"]
    syntaxes = list(ALL_TRANSFER_SYNTAXES)
    wanted = settings["dicom.transfer_syntaxes"]
    if "all" not in wanted:
        syntaxes = list(wanted)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, syntaxes)
    return ae


def handlers(ctx: Context) -> list[Any]:
    """The event handlers, bound to ``ctx``."""
    return [
        (evt.EVT_C_ECHO, handle_echo, [ctx]),
        (evt.EVT_C_STORE, handle_store, [ctx]),
        (evt.EVT_ESTABLISHED, handle_established, [ctx]),
        (evt.EVT_RELEASED, handle_closed, [ctx, "released"]),
        (evt.EVT_ABORTED, handle_closed, [ctx, "aborted"]),
        (evt.EVT_REJECTED, handle_rejected, [ctx]),
    ]
