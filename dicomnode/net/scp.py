"""The DICOM service provider: ``build_ae(settings)`` and its event handlers.

Runs in the sidecar process. Verification, every standard Storage SOP class and Query/Retrieve
(Patient Root and Study Root: FIND, MOVE, GET) are served.

* C-STORE: received objects are written by pynetdicom straight to a spool file on the storage
  volume (``STORE_RECV_CHUNKED_DATASET``), so a 2 GB object never sits in memory, and then
  handed to the one ingest path. Success is answered only after the index commit.
* C-FIND (:mod:`dicomnode.net.find`): answered from the index through the one query translator
  (:mod:`dicomnode.archive.query`), streamed one answer at a time.
* C-MOVE and C-GET (:mod:`dicomnode.net.retrieve`): the matching instances are sent with
  :mod:`dicomnode.net.send` (files streamed as stored, transcoded when the peer wants another
  syntax), to the move destination over one association, or back over the requester's.
* Access: every operation asks :func:`dicomnode.peers.access`; every refusal and every
  operation goes to the association log (:class:`~dicomnode.archive.index.AssociationEvent`).

Handlers are module functions; their dependencies are bound with pynetdicom's 3-tuple
``(evt, handler, [args])``. C-MOVE and C-GET need more than pynetdicom's handler protocol
allows (stream files, one association per move through our SCU code), so their service class
is ours (:class:`~dicomnode.net.retrieve.RetrieveService`), installed by
:func:`~dicomnode.net.retrieve.install_retrieve_service`. What the handlers share is in
:mod:`dicomnode.net.service`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom import ALL_TRANSFER_SYNTAXES
from pynetdicom import AllStoragePresentationContexts
from pynetdicom import _config as pynetdicom_config
from pynetdicom import association as pynetdicom_association
from pynetdicom import dimse_messages
from pynetdicom import evt
from pynetdicom.sop_class import Verification

from dicomnode import peers
from dicomnode.archive import index
from dicomnode.archive.ingest import Source
from dicomnode.config import Settings
from dicomnode.net import connect
from dicomnode.net import hardening
from dicomnode.net.find import handle_find
from dicomnode.net.service import QR_MODELS
from dicomnode.net.service import Context
from dicomnode.net.service import Reception
from dicomnode.net.service import event_peer
from dicomnode.net.service import log_event
from dicomnode.net.service import status_dataset
from dicomnode.status import DOES_NOT_MATCH_SOP_CLASS
from dicomnode.status import NOT_AUTHORIZED
from dicomnode.status import OUT_OF_RESOURCES
from dicomnode.status import PROCESSING_FAILURE
from dicomnode.status import SUCCESS
from dicomnode.status import UNABLE_TO_PROCESS

LOGGER = logging.getLogger(__name__)


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
        self.name, self._fd = _RESERVE.take(folder)
        self.file = self
        self.written = 0
        Reception.touch()

    def write(self, data: bytes) -> int:
        Reception.touch()
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


#: Name prefix of the spool files made ahead by :class:`_SpoolReserve` (empty until taken).
RESERVE_PREFIX = "scp-ready-"


def _create_spool(folder: Path, prefix: str = "scp-") -> tuple[str, int]:
    name = str(folder / f"{prefix}{uuid.uuid4().hex}.part")
    return name, os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)


class _SpoolReserve:
    """Empty spool files created ahead, so that a C-STORE does not wait for its file's creation.

    Creating a file in the spool folder took 0.3 ms of each small C-STORE on ext4 while the
    fsyncs of the previous instances held the journal (a fifth of a 32×32 instance's time, on
    the path between the command set's arrival and the response). A background thread keeps
    :data:`SIZE` empty files (named :data:`RESERVE_PREFIX`...) ready; when none is left the
    file is created on the spot as before. :meth:`discard` removes them when the sidecar
    stops; after a crash they are spool debris like any other (removed at the next start,
    :meth:`~dicomnode.archive.store.Store.clear_spool`).
    """

    SIZE = 8

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: dict[Path, list[tuple[str, int]]] = {}
        self._wanted = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self, folder: Path) -> tuple[str, int]:
        with self._lock:
            ready = self._ready.setdefault(folder, [])
            found = ready.pop() if ready else None
            if self._thread is None:
                self._thread = threading.Thread(target=self._fill, name="spool-reserve", daemon=True)
                self._thread.start()
        self._wanted.set()
        return found if found is not None else _create_spool(folder)

    def _fill(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            with self._lock:
                folders = list(self._ready)
            for folder in folders:
                while True:
                    with self._lock:
                        ready = self._ready[folder]
                        if len(ready) >= self.SIZE:
                            break
                    try:
                        made = _create_spool(folder, RESERVE_PREFIX)
                    except OSError as exc:  # the folder went away (tests) or the disk is full
                        LOGGER.debug("Cannot create a spool file ahead in %s: %s", folder, exc)
                        break
                    with self._lock:
                        ready.append(made)


    def discard(self) -> None:
        """Close and remove the files held in reserve."""
        with self._lock:
            held = [made for ready in self._ready.values() for made in ready]
            for ready in self._ready.values():
                ready.clear()
        for name, fd in held:
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(name)


_RESERVE = _SpoolReserve()
discard_spool_reserve = _RESERVE.discard


def install_spool(folder: Path, cap_bytes: int) -> None:
    """Make pynetdicom spool received datasets into ``folder`` with a size cap."""
    global _spool_installed
    _CappedSpool.folder = folder
    _CappedSpool.cap = cap_bytes
    pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
    if not _spool_installed:  # once: the hardening wraps what is installed here
        dimse_messages.NamedTemporaryFile = _CappedSpool  # type: ignore[attr-defined]
        _spool_installed = True


_spool_installed = False


def close_index_when_associations_end() -> None:
    """Close an association thread's index connection when the thread ends.

    Each thread gets its own connection (three file descriptors with SQLite: the database,
    its WAL and shared memory); left to the garbage collector, the connections of ended
    associations piled up (eleven after a few dozen associations).
    """
    run = pynetdicom_association.Association.run
    if getattr(run, "_dolmen_closes_index", False):
        return

    def run_then_close(self: Any) -> None:
        try:
            run(self)
        finally:
            index.close_index()

    run_then_close._dolmen_closes_index = True  # type: ignore[attr-defined]
    pynetdicom_association.Association.run = run_then_close  # type: ignore[method-assign]


def handle_echo(event: evt.Event, ctx: Context) -> int:
    """C-ECHO: Success (0x0000), or Refused: Not Authorized (0x0124) by access control."""
    calling, called, ip = event_peer(event)
    refusal = peers.access(ctx.settings, calling, ip, "echo")
    if refusal:
        LOGGER.warning("C-ECHO from %s at %s refused: %s", calling, ip, refusal)
        log_event(calling, called, ip, "echo", False, refusal)
        return NOT_AUTHORIZED
    return SUCCESS


def handle_store(event: evt.Event, ctx: Context) -> int | Dataset:
    """C-STORE: ingest the spooled dataset.

    Returns Success (0x0000) when stored or already stored; Refused: Not Authorized
    (0x0124); Refused: Out of Resources (0xA700) when storage is full; Error: Data Set does
    not match SOP Class (0xA900) when the command and the dataset disagree; Error: Cannot
    understand (0xC000) for an object that cannot be filed. Every error carries an Error
    Comment with the reason; Processing failure (0x0110) when the index is unavailable.
    """
    calling, called, ip = event_peer(event)
    # Decided once per association: peers.access reads the modality table, which costs more
    # than the rest of a small C-STORE; a modality changed in the page applies from the
    # peer's next association.
    try:
        refusal = event.assoc.dolmen_store_refusal  # type: ignore[attr-defined]
    except AttributeError:
        refusal = peers.access(ctx.settings, calling, ip, "store")
        event.assoc.dolmen_store_refusal = refusal  # type: ignore[attr-defined]
    if refusal:
        LOGGER.warning("C-STORE from %s at %s refused: %s", calling, ip, refusal)
        log_event(calling, called, ip, "store", False, refusal)
        return status_dataset(NOT_AUTHORIZED, refusal)
    request = event.request
    result = ctx.ingestor.ingest_spooled(
        event.dataset_path, Source("dicom", calling, ip, called),
        expected_sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
        expected_sop_class_uid=str(request.AffectedSOPClassUID or ""))
    Reception.touch()
    if result.ok:
        ctx.counters.bump("instances_received")
        _association_count(event)
        return SUCCESS
    ctx.counters.bump("instances_rejected")
    LOGGER.warning("C-STORE from %s at %s rejected: %s", calling, ip, result.reason)
    if result.code == "storage_full":
        return status_dataset(OUT_OF_RESOURCES, result.reason)
    if result.code in ("index_unavailable", "object_store"):
        return status_dataset(PROCESSING_FAILURE, result.reason)
    if "C-STORE command names" in result.reason:
        return status_dataset(DOES_NOT_MATCH_SOP_CLASS, result.reason)
    return status_dataset(UNABLE_TO_PROCESS, result.reason)


def _association_count(event: evt.Event) -> None:
    assoc = event.assoc
    assoc.dolmen_stored = getattr(assoc, "dolmen_stored", 0) + 1  # type: ignore[attr-defined]


def handle_conn_open(event: evt.Event) -> None:
    """TCP_NODELAY on inbound connections: C-FIND answers, C-MOVE/C-GET pending responses and
    C-GET's C-STOREs are small writes that Nagle's algorithm would hold for the requester's
    delayed ACK (~40 ms each on Linux)."""
    connect._no_delay(event)


def handle_established(event: evt.Event, ctx: Context) -> None:
    """Count the association, note when it started, and log abstract syntaxes we could not accept."""
    assoc = event.assoc
    assoc.dolmen_started = time.monotonic()  # type: ignore[attr-defined]
    assoc.dolmen_ctx = ctx  # type: ignore[attr-defined]  # for RetrieveService
    ctx.counters.bump("associations_total")
    calling, called, ip = event_peer(event)
    LOGGER.info("Association from %s at %s", calling, ip)
    # Requesters such as DCMTK's getscu propose retired storage classes by the dozen: a rejected
    # storage class is only worth a log row when nothing at all was accepted.
    accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    refused: dict[str, str] = {}
    for cx in assoc.rejected_contexts:
        name = str(cx.abstract_syntax)
        if name not in accepted and (not accepted or "Storage" not in _sop_name(name)):
            why = "transfer syntaxes not supported" if cx.result == 0x04 else "abstract syntax not supported"
            refused[name] = f"{_sop_name(name)} ({why})"
    if refused:
        reason = "no acceptable presentation context for " + ", ".join(sorted(refused.values()))
        LOGGER.warning("Association from %s at %s: %s", calling, ip, reason)
        log_event(calling, called, ip, "negotiate", False, reason[:2000])


def _sop_name(uid: str) -> str:
    name = pydicom.uid.UID(uid).name
    return name if name != uid else uid


def handle_closed(event: evt.Event, ctx: Context, how: str) -> None:
    """Record a released or aborted association in the association log."""
    calling, called, ip = event_peer(event)
    started = getattr(event.assoc, "dolmen_started", None)
    stored = getattr(event.assoc, "dolmen_stored", 0)
    duration = time.monotonic() - started if started else 0.0
    log_event(calling, called, ip, "associate", how == "released",
               "" if how == "released" else "aborted", stored, duration)
    LOGGER.info("Association from %s at %s %s after %.1f s, %d instance(s) stored",
                calling, ip, how, duration, stored)


def reject_reason(settings: Settings, calling: str, called: str, active: int) -> str:
    """Why pynetdicom rejected an association, in the words of the association log."""
    ours = settings["dicom.aet"].strip()
    if settings["dicom.check_called_aet"] and called != ours:
        return (f"wrong called AE: {called!r} is not this server's AE title {ours!r} "
                "([dicom] check_called_aet)")
    if active > settings["dicom.max_associations"]:
        return (f"too many associations at once: {settings['dicom.max_associations']} "
                "already open ([dicom] max_associations)")
    return "association rejected"


def handle_rejected(event: evt.Event, ctx: Context) -> None:
    """Log an association we rejected (pynetdicom's own checks), saying why."""
    calling, called, ip = event_peer(event)
    active = len([a for a in event.assoc.ae.active_associations if a.is_acceptor])
    reason = reject_reason(ctx.settings, calling, called, active)
    log_event(calling, called, ip, "associate", False, reason)
    LOGGER.warning("Association from %s at %s to %s rejected: %s", calling, ip, called, reason)


def handle_sop_extended(event: evt.Event, ctx: Context) -> dict[str, bytes]:
    """SOP Class Extended Negotiation (PS3.4 C.5.1.1): accept combined date/time matching for C-FIND.

    Byte 1 of the requester's service class application information asks for combined
    date and time range matching (C.2.2.2.5.1); relational queries, fuzzy matching and
    timezone adjustment (bytes 0, 2, 3) are answered 0 (not supported).
    """
    answer: dict[str, bytes] = {}
    combined: set[str] = set()
    requested: dict[str, bytes] = getattr(event, "app_info", None) or {}
    for uid, info in requested.items():
        if QR_MODELS.get(str(uid), ("", ""))[1] != "find" or not info:
            continue
        wants = len(info) > 1 and info[1] == 1
        answer[uid] = bytes([0, 1 if wants else 0])
        if wants:
            combined.add(str(uid))
    event.assoc.dolmen_combined = combined  # type: ignore[attr-defined]
    return answer


def build_ae(settings: Settings) -> AE:
    """An AE with Verification, every Storage SOP class (with SCP/SCU role selection, for C-GET)
    and Query/Retrieve FIND/MOVE/GET in Patient Root and Study Root; limits from ``settings``."""
    ae = hardening.DolmenAE(ae_title=settings["dicom.aet"])
    ae.maximum_associations = settings["dicom.max_associations"]
    ae.acse_timeout = settings["dicom.acse_timeout"]
    ae.dimse_timeout = settings["dicom.dimse_timeout"]
    ae.network_timeout = settings["dicom.network_timeout"]
    ae.maximum_pdu_size = settings["dicom.max_pdu"]
    ae.require_called_aet = settings["dicom.check_called_aet"]
    # Explicit VR Little Endian first: pynetdicom accepts, of the syntaxes a requester offers,
    # the first in our list; most stored files are explicit, so a C-GET requester offering
    # both gets them as stored (streamed) instead of re-encoded as implicit.
    syntaxes = [ExplicitVRLittleEndian] + [ts for ts in ALL_TRANSFER_SYNTAXES if ts != ExplicitVRLittleEndian]
    wanted = settings["dicom.transfer_syntaxes"]
    if "all" not in wanted:
        syntaxes = list(wanted)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    for uid in QR_MODELS:
        ae.add_supported_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    for cx in AllStoragePresentationContexts:
        # Roles as the requester proposes them: a C-GET requester is the storage SCP.
        ae.add_supported_context(str(cx.abstract_syntax), syntaxes, scu_role=True, scp_role=True)
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False  # decoded again just for a debug log
    return ae


def handlers(ctx: Context) -> list[Any]:
    """The event handlers, bound to ``ctx``."""
    return [
        (evt.EVT_C_ECHO, handle_echo, [ctx]),
        (evt.EVT_C_STORE, handle_store, [ctx]),
        (evt.EVT_C_FIND, handle_find, [ctx]),
        (evt.EVT_SOP_EXTENDED, handle_sop_extended, [ctx]),
        (evt.EVT_CONN_OPEN, handle_conn_open),
        (evt.EVT_ESTABLISHED, handle_established, [ctx]),
        (evt.EVT_RELEASED, handle_closed, [ctx, "released"]),
        (evt.EVT_ABORTED, handle_closed, [ctx, "aborted"]),
        (evt.EVT_REJECTED, handle_rejected, [ctx]),
    ]
