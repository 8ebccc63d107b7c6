"""The DICOM service provider: ``build_ae(settings)`` and its event handlers.

Runs in the sidecar process. Verification, every standard Storage SOP class and Query/Retrieve
(Patient Root and Study Root: FIND, MOVE, GET) are served.

* C-STORE: received objects are written by pynetdicom straight to a spool file on the storage
  volume (``STORE_RECV_CHUNKED_DATASET``), so a 2 GB object never sits in memory, and then
  handed to the one ingest path. Success is answered only after the index commit.
* C-FIND: answered from the index through the one query translator (:mod:`dicomnode.archive.query`),
  streamed one answer at a time.
* C-MOVE and C-GET: the matching instances are sent with :mod:`dicomnode.net.scu`'s C-STORE code
  (files streamed as stored, transcoded when the peer wants another syntax), to the move
  destination over one association, or back over the requester's association.
* Access: every operation asks :func:`dicomnode.peers.access`; every refusal and every
  operation goes to the association log (:class:`~dicomnode.archive.index.AssociationEvent`).

Handlers are module functions; their dependencies are bound with pynetdicom's 3-tuple
``(evt, handler, [args])``. C-MOVE and C-GET need more than pynetdicom's handler protocol
allows (stream files, one association per move through our SCU code), so their service class
is ours (:class:`RetrieveService`), installed by :func:`install_retrieve_service`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Generator
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import peewee
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.uid import ImplicitVRLittleEndian
from pydicom.valuerep import PersonName
from pynetdicom import AE
from pynetdicom import ALL_TRANSFER_SYNTAXES
from pynetdicom import AllStoragePresentationContexts
from pynetdicom import _config as pynetdicom_config
from pynetdicom import association as pynetdicom_association
from pynetdicom import dimse_messages
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dimse_primitives import C_GET
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.dsutils import decode
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import QueryRetrieveServiceClass
from pynetdicom.sop_class import Verification

from dicomnode import peers
from dicomnode.archive import query
from dicomnode.archive.index import AssociationEvent
from dicomnode.archive.index import Instance
from dicomnode.archive.index import Series
from dicomnode.archive.index import Study
from dicomnode.archive.ingest import Ingestor
from dicomnode.archive.ingest import Source
from dicomnode.config import Settings
from dicomnode.errors import DolmenError
from dicomnode.net import connect
from dicomnode.net import hardening as upperlayer
from dicomnode.net import send
from dicomnode.net import wire

LOGGER = logging.getLogger(__name__)

# Status codes (PS3.4 Annex B.2.3 for storage, PS3.7 Annex C for the general ones).
SUCCESS = 0x0000
NOT_AUTHORIZED = 0x0124  # Refused: Not Authorized
OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources
DATASET_MISMATCH = 0xA900  # Error: Data Set does not match SOP Class
CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand
PROCESSING_FAILURE = 0x0110
# Query/Retrieve (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4).
PENDING = 0xFF00
CANCEL = 0xFE00  # Matching/sub-operations terminated due to Cancel request
SUBOPS_WARNING = 0xB000  # Sub-operations complete, one or more failures or warnings
UNABLE_TO_PERFORM_SUBOPS = 0xA702  # Refused: Out of Resources - unable to perform sub-operations
MOVE_DESTINATION_UNKNOWN = 0xA801  # Refused: Move Destination unknown
IDENTIFIER_MISMATCH = 0xA900  # Identifier does not match SOP Class
UNABLE_TO_PROCESS = 0xC000  # Failed: Unable to process
STORE_WARNINGS = (0xB000, 0xB006, 0xB007)
#: Seconds between two C-MOVE/C-GET pending responses.
PENDING_INTERVAL = 0.1

#: Query/Retrieve information models served: SOP Class UID -> (root, DIMSE service).
QR_MODELS: dict[str, tuple[str, str]] = {
    str(connect.PatientRootQueryRetrieveInformationModelFind): ("PATIENT", "find"),
    str(connect.StudyRootQueryRetrieveInformationModelFind): ("STUDY", "find"),
    str(connect.PatientRootQueryRetrieveInformationModelMove): ("PATIENT", "move"),
    str(connect.StudyRootQueryRetrieveInformationModelMove): ("STUDY", "move"),
    str(connect.PatientRootQueryRetrieveInformationModelGet): ("PATIENT", "get"),
    str(connect.StudyRootQueryRetrieveInformationModelGet): ("STUDY", "get"),
}
_ROOT_NAME = {"PATIENT": "Patient Root", "STUDY": "Study Root"}
_LEVELS_OF_ROOT = {"PATIENT": query.LEVELS, "STUDY": query.LEVELS[1:]}
_SKIP_KEYS = {0x00080052, 0x00080005}  # Query/Retrieve Level, Specific Character Set


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
    return _assoc_peer(event.assoc)


def _assoc_peer(assoc: Any) -> tuple[str, str, str]:
    """Calling AE, called AE (as the peer asked, not ours) and peer IP of an inbound association."""
    calling = str(assoc.requestor.ae_title or "").strip()
    primitive = getattr(assoc.requestor, "primitive", None)
    called = str(getattr(primitive, "called_ae_title", "") or assoc.acceptor.ae_title or "").strip()
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
    refusal = peers.access(ctx.settings, calling, ip, "echo")
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
    Comment with the reason; Processing failure (0x0110) when the index is unavailable.
    """
    calling, called, ip = _peer(event)
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
    if result.code == "index_unavailable":
        return _status(PROCESSING_FAILURE, result.reason)
    if "C-STORE command names" in result.reason:
        return _status(DATASET_MISMATCH, result.reason)
    return _status(CANNOT_UNDERSTAND, result.reason)


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
    calling, called, ip = _peer(event)
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
        _log_event(calling, called, ip, "negotiate", False, reason[:2000])


def _sop_name(uid: str) -> str:
    name = pydicom.uid.UID(uid).name
    return name if name != uid else uid


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
    calling, called, ip = _peer(event)
    active = len([a for a in event.assoc.ae.active_associations if a.is_acceptor])
    reason = reject_reason(ctx.settings, calling, called, active)
    _log_event(calling, called, ip, "associate", False, reason)
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


# -- C-FIND ---------------------------------------------------------------------------------


@dataclass
class FindRequest:
    """A C-FIND identifier read for the index: level, filters and the keys to return."""

    level: str
    filters: dict[str, Any]
    requested: list[DataElement]


def _element_text(elem: DataElement) -> Any:
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


def read_find_request(identifier: Dataset, root: str) -> FindRequest:
    """Level, matching keys and return keys of a C-FIND identifier of the ``root`` model.

    Keys the index cannot match on, sequences and keys below the query level are not used for
    matching (PS3.4 C.2.2.1 lets an SCP ignore them); all are returned.

    Raises
    ------
    DolmenError
        ``identifier_mismatch`` for a missing or wrong Query/Retrieve Level.
    """
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    allowed = _LEVELS_OF_ROOT[root]
    if level not in allowed:
        raise DolmenError(f"QueryRetrieveLevel {level or '(missing)'!r}: {_ROOT_NAME[root]} has "
                          + ", ".join(allowed), code="identifier_mismatch")
    depth = query.LEVELS.index(level)
    filters: dict[str, Any] = {}
    requested: list[DataElement] = []
    for elem in identifier:
        tag = int(elem.tag)
        if tag in _SKIP_KEYS or elem.tag.element == 0:
            continue
        requested.append(elem)
        attr = query.BY_TAG.get(tag)
        if attr is None or attr.field is None or elem.VR == "SQ":
            continue
        if query.LEVELS.index(attr.level) > depth:
            continue
        value = _element_text(elem)
        if value not in ("", [], "*"):
            filters[attr.keyword] = value
    return FindRequest(level, filters, requested)


def _value_for(vr: str, value: Any) -> Any:
    if value is None or value == "":
        return None
    if vr in ("IS", "US", "UL", "SL", "SS"):
        return int(value) if vr != "IS" else str(int(value))
    return str(value)


_FIRST_INSTANCE: dict[str, Any] = {
    query.IMAGE: lambda row: [row.path],
    query.SERIES: lambda row: Instance.select(Instance.path).where(Instance.series == row.pk).limit(1),
    query.STUDY: lambda row: (Instance.select(Instance.path).join(Series)
                              .where(Series.study == row.pk).limit(1)),
    query.PATIENT: lambda row: (Instance.select(Instance.path).join(Series).join(Study)
                                .where(Study.patient == row.pk).limit(1)),
}


def _read_from_instance(ctx: Context, row: Any, level: str, tags: list[int]) -> Dataset | None:
    """The ``tags`` of one stored instance of ``row`` (``[dicom] find_read_files``)."""
    found = _FIRST_INSTANCE[level](row)
    rel = found[0] if isinstance(found, list) else next((r.path for r in found), None)
    if not rel:
        return None
    try:
        return pydicom.dcmread(ctx.ingestor.store.path(str(rel)), stop_before_pixels=True,
                               specific_tags=[0x00080005, *tags])
    except (OSError, ValueError, DolmenError, pydicom.errors.InvalidDicomError) as exc:
        LOGGER.warning("C-FIND: cannot read %s for the keys the index lacks: %s", rel, exc)
        return None


#: One element of a C-FIND answer: (tag, VR, value), value a str, an int, None (empty) or a list.
AnswerElement = tuple[int, str, Any]


def find_answer_elements(ctx: Context, row: Any, request: FindRequest) -> list[AnswerElement]:
    """The C-FIND answer for one matching row, in tag order: every requested key, from the index
    (or, with ``[dicom] find_read_files``, a file), the level, and (0008,0005) *Specific Character
    Set* ``ISO_IR 192`` (UTF-8) when a value is not ASCII (PS3.4 C.4.1.1.3.2: the SCP may choose).
    """
    values = query.answer(row, request.level)
    out: dict[int, AnswerElement] = {0x00080052: (0x00080052, "CS", request.level)}
    missing: list[DataElement] = []
    for elem in request.requested:
        tag = int(elem.tag)
        attr = query.BY_TAG.get(tag)
        if attr is None:
            missing.append(elem)
            continue
        out[tag] = (tag, attr.vr, _value_for(attr.vr, values.get(attr.keyword)))
    unique = query.ATTRIBUTES[query.UNIQUE_KEY[request.level]]
    if unique.tag not in out:
        out[unique.tag] = (unique.tag, unique.vr, values.get(unique.keyword) or None)
    source = None
    if missing and ctx.settings["dicom.find_read_files"]:
        source = _read_from_instance(ctx, row, request.level, [int(e.tag) for e in missing])
    for elem in missing:
        tag = int(elem.tag)
        if source is not None and elem.tag in source:
            found = source[elem.tag]
            value = found.value
            if isinstance(value, PersonName):
                value = str(value)
            out[tag] = (tag, found.VR, value)
        else:
            out[tag] = (tag, elem.VR, [] if elem.VR == "SQ" else None)
    if any(isinstance(v, str) and not v.isascii() for _t, _vr, v in out.values()):
        out[0x00080005] = (0x00080005, "CS", "ISO_IR 192")
    return [out[tag] for tag in sorted(out)]


def answer_dataset(elements: list[AnswerElement]) -> Dataset:
    """A pydicom Dataset of answer elements (for pynetdicom, and for what the fast encoder leaves)."""
    ds = Dataset()
    for tag, vr, value in elements:
        ds.add_new(tag, vr, value)
    return ds


def find_answer(ctx: Context, row: Any, request: FindRequest) -> Dataset:
    """The C-FIND answer for one matching row as a Dataset (see :func:`find_answer_elements`)."""
    return answer_dataset(find_answer_elements(ctx, row, request))


_TEXT_VRS = frozenset(("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UI"))
_IMPLICIT = struct.Struct("<HHI")
_EXPLICIT = struct.Struct("<HH2sH")


def encode_answer(elements: list[AnswerElement], implicit: bool) -> bytes | None:
    """Little Endian bytes of answer elements that are all text, or ``None`` (use pydicom).

    Answers from the index are short strings; writing them here costs a tenth of building
    and encoding a pydicom Dataset, which C-FIND pays once per match.
    """
    utf8 = any(tag == 0x00080005 for tag, _vr, _v in elements)
    parts = []
    for tag, vr, value in elements:
        if vr not in _TEXT_VRS:
            return None
        if value is None:
            raw = b""
        elif isinstance(value, (str, int)) and not isinstance(value, bool):
            try:
                raw = str(value).encode("utf-8" if utf8 else "ascii")
            except UnicodeEncodeError:
                return None
            if len(raw) % 2:
                raw += b"\0" if vr == "UI" else b" "
        else:
            return None
        if len(raw) > 0xFFFE:
            return None
        group, element = tag >> 16, tag & 0xFFFF
        if implicit:
            parts.append(_IMPLICIT.pack(group, element, len(raw)))
        else:
            parts.append(_EXPLICIT.pack(group, element, vr.encode("ascii"), len(raw)))
        parts.append(raw)
    return b"".join(parts)


def handle_find(event: evt.Event, ctx: Context) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """C-FIND through pynetdicom's service class (see :func:`find_responses` for the statuses).

    The Query/Retrieve models are served by :class:`RetrieveService` (:func:`serve_find`); this
    handler answers when that service class is not installed.
    """
    for status, answer in find_responses(ctx, event.assoc, str(event.request.AffectedSOPClassUID),
                                         lambda: event.identifier, lambda: bool(event.is_cancelled)):
        yield status, (answer_dataset(answer) if isinstance(answer, list) else answer)


FindResponse = tuple[int | Dataset, list[AnswerElement] | None]


def find_responses(ctx: Context, assoc: Any, model: str, identifier: Any,
                   is_cancelled: Any) -> Generator[FindResponse, None, None]:
    """C-FIND (Patient Root and Study Root, every level), answered from the index.

    ``identifier()`` decodes the request's identifier; ``is_cancelled()`` tells whether a
    C-CANCEL came. Yields Pending (0xFF00) with the elements of one answer per match
    (:func:`find_answer_elements`), then ends (the caller
    sends Success, 0x0000) or yields a final status: Cancel (0xFE00) on C-CANCEL; Refused: Not
    Authorized (0x0124) by access control; Refused: Out of Resources (0xA700) past
    ``[dicom] max_find_results`` answers; Identifier does not match SOP Class (0xA900) for a
    wrong level; Unable to process (0xC000) for a malformed matching value. Errors carry an
    Error Comment.
    """
    calling, called, ip = _assoc_peer(assoc)
    started = time.monotonic()
    refusal = peers.access(ctx.settings, calling, ip, "find")
    if refusal:
        LOGGER.warning("C-FIND from %s at %s refused: %s", calling, ip, refusal)
        _log_event(calling, called, ip, "find", False, refusal)
        yield _status(NOT_AUTHORIZED, refusal), None
        return
    root = QR_MODELS.get(model, ("STUDY", "find"))[0]
    try:
        request = read_find_request(identifier(), root)
        combined = model in getattr(assoc, "dolmen_combined", ())
        rows = query.select(request.level, request.filters, combined_datetime=combined,
                            case_sensitive_pn=ctx.settings["dicom.case_sensitive_pn"])
    except (DolmenError, ValueError, AttributeError, KeyError, EOFError) as exc:
        message = exc.message if isinstance(exc, DolmenError) else f"cannot read the identifier: {exc}"
        code = IDENTIFIER_MISMATCH if getattr(exc, "code", "") == "identifier_mismatch" else UNABLE_TO_PROCESS
        LOGGER.warning("C-FIND from %s at %s failed: %s", calling, ip, message)
        _log_event(calling, called, ip, "find", False, f"bad query: {message}")
        yield _status(code, message), None
        return
    limit = ctx.settings["dicom.max_find_results"]
    if limit:
        rows = rows.limit(limit + 1)
    sent = 0
    final: Dataset | int | None = None
    outcome = ""
    try:
        for row in rows.iterator():
            if is_cancelled():
                final, outcome = CANCEL, "cancelled by the requester"
                break
            if limit and sent >= limit:
                outcome = (f"more than {limit} matches: the first {limit} were sent; narrow the query "
                           "([dicom] max_find_results)")
                final = _status(OUT_OF_RESOURCES, f"Too many matches: first {limit} sent, narrow the query")
                break
            yield PENDING, find_answer_elements(ctx, row, request)
            sent += 1
    except peewee.DatabaseError as exc:
        outcome = f"index error: {exc}"
        final = _status(UNABLE_TO_PROCESS, "The index cannot answer now")
        LOGGER.error("C-FIND from %s at %s: %s", calling, ip, exc)
    detail = f"{request.level} level, {sent} answer(s)" + (f"; {outcome}" if outcome else "")
    _log_event(calling, called, ip, "find", True, detail, sent, time.monotonic() - started)
    if final is not None:
        yield final, None


def serve_find(service: QueryRetrieveServiceClass, ctx: Context, req: Any,
               context: PresentationContext) -> None:
    """C-FIND with the answers written straight to the socket (one ``sendall`` each) instead of
    through pynetdicom's DIMSE encoder and DUL queue; statuses as :func:`find_responses`."""
    assoc = service.assoc
    ts = context.transfer_syntax[0]
    cx_id = int(context.context_id or 0)
    sop_class = str(req.AffectedSOPClassUID)
    msg_id = int(req.MessageID)

    def identifier() -> Dataset:
        return decode(req.Identifier, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)

    responses = find_responses(ctx, assoc, str(context.abstract_syntax), identifier,
                               lambda: service.is_cancelled(msg_id))
    for status, answer in responses:
        if not assoc.is_established:
            return
        code = int(status.Status) if isinstance(status, Dataset) else int(status)
        comment = str(status.get("ErrorComment", "")) if isinstance(status, Dataset) else ""
        data = None
        if answer is not None:
            plain = ts.is_little_endian and not ts.is_deflated
            data = encode_answer(answer, ts.is_implicit_VR) if plain else None
            if data is None:
                data = encode(answer_dataset(answer), ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
            if data is None:
                LOGGER.error("C-FIND: cannot encode an answer")
                code, comment, data = UNABLE_TO_PROCESS, "Cannot encode an answer", None
        try:
            wire.send_response_direct(assoc, cx_id, wire.C_FIND_RSP, sop_class, msg_id, code, data,
                                     comment=comment)
        except OSError as exc:  # the requester went away; the association ends on its own
            LOGGER.info("Cannot send a C-FIND response: %s", exc)
            responses.close()
            return
        if code != PENDING:
            return
    if assoc.is_established:
        with contextlib.suppress(OSError):
            wire.send_response_direct(assoc, cx_id, wire.C_FIND_RSP, sop_class, msg_id, SUCCESS, None)


# -- C-MOVE and C-GET -------------------------------------------------------------------------


@dataclass
class Progress:
    """Sub-operation counters of a C-MOVE or C-GET (PS3.4 C.4.2.1.4 / C.4.3.1.4)."""

    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    comment: str = ""

    def count(self, item: wire.SendItem, status: int | None, message: str) -> None:
        self.remaining -= 1
        if status == SUCCESS:
            self.completed += 1
        elif status in STORE_WARNINGS:
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(item.sop_instance_uid)
            if message and not self.comment:
                self.comment = message

    def summary(self) -> str:
        return f"{self.completed} completed, {self.failed} failed, {self.warning} warning(s)"


def retrieve_items(ctx: Context, root: str, identifier: Dataset) -> tuple[str, list[wire.SendItem]]:
    """The level and the stored instances a C-MOVE/C-GET identifier names, in series/instance order.

    Only the unique keys (PS3.4 C.4.2.2.1) of the level and above select; the level's own
    unique key is required (a list of UIDs allowed), those above may be left out (some Patient
    Root requesters omit PatientID below the patient level).

    Raises
    ------
    DolmenError
        ``identifier_mismatch`` for a wrong level or a missing unique key.
    """
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    allowed = _LEVELS_OF_ROOT[root]
    if level not in allowed:
        raise DolmenError(f"QueryRetrieveLevel {level or '(missing)'!r}: {_ROOT_NAME[root]} has "
                          + ", ".join(allowed), code="identifier_mismatch")
    filters: dict[str, Any] = {}
    for lv in allowed[: allowed.index(level) + 1]:
        keyword = query.UNIQUE_KEY[lv]
        value = _element_text(identifier[keyword]) if keyword in identifier else ""
        if value not in ("", []):
            filters[keyword] = value
    if query.UNIQUE_KEY[level] not in filters:
        raise DolmenError(f"a {level} retrieve needs {query.UNIQUE_KEY[level]}", code="identifier_mismatch")
    rows: Any = (query.select(query.IMAGE, filters)
            .select(Instance.path, Instance.sop_class_uid, Instance.sop_instance_uid,
                    Instance.transfer_syntax_uid, Instance.file_size)
            .order_by(Series.series_number, Series.pk, Instance.instance_number, Instance.pk)
            .tuples())
    # Relative paths are server-generated (store.new_relpath), so joining strings is safe and
    # much cheaper than a Path per instance.
    root = str(ctx.ingestor.store.root)
    items = [wire.SendItem(f"{root}/{row[0]}", str(row[1]), str(row[2]), str(row[3]), int(row[4] or 0))
             for row in rows]
    return level, items


class RetrieveService(QueryRetrieveServiceClass):
    """Query/Retrieve service class with Dolmen's C-FIND, C-MOVE and C-GET."""

    def SCP(self, req: Any, context: PresentationContext) -> None:  # noqa: N802 - pynetdicom's name
        ctx: Context | None = getattr(self.assoc, "dolmen_ctx", None)
        model = str(context.abstract_syntax)
        if ctx is not None and isinstance(req, C_FIND) and model in QR_MODELS:
            serve_find(self, ctx, req, context)
        elif ctx is not None and isinstance(req, C_MOVE) and model in QR_MODELS:
            serve_retrieve(self, ctx, req, context, "move")
        elif ctx is not None and isinstance(req, C_GET) and model in QR_MODELS:
            serve_retrieve(self, ctx, req, context, "get")
        else:
            super().SCP(req, context)


def install_retrieve_service() -> None:
    """Route the Query/Retrieve models to :class:`RetrieveService` (pynetdicom picks a service
    class per SOP class with ``uid_to_service_class``; there is no public hook)."""
    original = pynetdicom_association.uid_to_service_class  # type: ignore[attr-defined]
    if getattr(original, "dolmen", False):
        return

    def uid_to_service_class(uid: str) -> Any:
        if str(uid) in QR_MODELS:
            return RetrieveService
        return original(uid)

    uid_to_service_class.dolmen = True  # type: ignore[attr-defined]
    pynetdicom_association.uid_to_service_class = uid_to_service_class  # type: ignore[attr-defined]


def _respond(service: QueryRetrieveServiceClass, req: Any, context: PresentationContext, status: int,
             progress: Progress | None, *, comment: str = "", final: bool = True) -> None:
    """Send one C-MOVE/C-GET response: counters, Error Comment and Failed SOP Instance UID List.

    Written straight to the socket by this thread, the association's only writer while it
    serves the request (C-GET's C-STOREs go the same way, :func:`wire.send_c_store_direct`).
    """
    counts: tuple[int | None, int | None, int | None, int | None] | None = None
    data = None
    if progress is not None:
        remaining = max(progress.remaining, 0) if (not final or status == CANCEL) else None
        counts = (remaining, progress.completed, progress.failed, progress.warning)
        if final and status != SUCCESS and (progress.failed_uids or status in (CANCEL, SUBOPS_WARNING)):
            ts = context.transfer_syntax[0]
            ds = Dataset()
            ds.FailedSOPInstanceUIDList = progress.failed_uids or None
            data = encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
    command = wire.C_MOVE_RSP if isinstance(req, C_MOVE) else wire.C_GET_RSP
    try:
        wire.send_response_direct(service.assoc, int(context.context_id or 0), command,
                                 str(req.AffectedSOPClassUID), int(req.MessageID), status, data,
                                 comment=comment, counts=counts)
    except OSError as exc:  # the requester went away; the association ends on its own
        LOGGER.info("Cannot send a C-MOVE/C-GET response: %s", exc)


def serve_retrieve(service: QueryRetrieveServiceClass, ctx: Context, req: Any, context: PresentationContext,
                   op: str) -> None:
    """C-MOVE or C-GET (Patient Root and Study Root, every level).

    Statuses: Pending (0xFF00) after each sub-operation with remaining/completed/failed/warning
    counts; Success (0x0000); Sub-operations complete with failures or warnings (0xB000) and
    Refused: unable to perform sub-operations (0xA702, all failed or the destination cannot be
    reached), both with the Failed SOP Instance UID List; Cancel (0xFE00) on C-CANCEL; Refused:
    Move Destination unknown (0xA801); Refused: Not Authorized (0x0124); Identifier does not
    match SOP Class (0xA900); Unable to process (0xC000). Errors carry an Error Comment.
    """
    assoc = service.assoc
    calling, called, ip = _assoc_peer(assoc)
    started = time.monotonic()
    settings = ctx.settings
    name = "C-MOVE" if op == "move" else "C-GET"

    def refuse(status: int, reason: str, comment: str = "") -> None:
        LOGGER.warning("%s from %s at %s refused: %s", name, calling, ip, reason)
        _log_event(calling, called, ip, op, False, reason, 0, time.monotonic() - started)
        _respond(service, req, context, status, None, comment=comment or reason)

    refusal = peers.access(settings, calling, ip, op)
    if refusal:
        refuse(NOT_AUTHORIZED, refusal)
        return
    destination: peers.Node | None = None
    if op == "move":
        wanted = str(req.MoveDestination or "").strip()
        found = peers.nodes_with_aet(settings, wanted)
        if not found:
            refuse(MOVE_DESTINATION_UNKNOWN,
                   f"unknown move destination {wanted!r} asked by {calling!r} at {ip}: declare it as a "
                   "modality (its address is never taken from the request)",
                   f"Move destination {wanted!r} unknown: declare it as a modality")
            return
        destination = found[0]
    root = QR_MODELS[str(context.abstract_syntax)][0]
    ts = context.transfer_syntax[0]
    try:
        identifier = decode(req.Identifier, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
        level, items = retrieve_items(ctx, root, identifier)
    except DolmenError as exc:
        status = IDENTIFIER_MISMATCH if exc.code == "identifier_mismatch" else UNABLE_TO_PROCESS
        refuse(status, f"bad identifier: {exc.message}", exc.message)
        return
    except Exception as exc:  # a malformed identifier
        refuse(UNABLE_TO_PROCESS, f"cannot read the identifier: {exc}", "Cannot read the identifier")
        return
    progress = Progress(len(items))
    target = f" to {destination.name} ({destination.aet} at {destination.host}:{destination.port})" \
        if destination else ""
    if len(items) > 65535:
        refuse(UNABLE_TO_PERFORM_SUBOPS, f"{len(items)} instances match: more than 65535 sub-operations",
               "More than 65535 instances: retrieve series by series")
        return
    LOGGER.info("%s from %s at %s: %s level, %d instance(s)%s", name, calling, ip, level, len(items), target)
    cancelled = False

    def is_cancelled() -> bool:
        # A C-CANCEL, or the requester gone: either way the sub-operations stop.
        nonlocal cancelled
        cancelled = cancelled or service.is_cancelled(req.MessageID) or not assoc.is_established
        return cancelled

    last_pending = 0.0

    def on_result(item: wire.SendItem, status: int | None, message: str) -> None:
        # Pending responses are optional (PS3.4 C.4.2.3.1): one after the first sub-operation,
        # then at most one per PENDING_INTERVAL, which keeps the counts live without a
        # DIMSE message per instance.
        nonlocal last_pending
        progress.count(item, status, message)
        now = time.monotonic()
        if progress.remaining > 0 and assoc.is_established and now - last_pending >= PENDING_INTERVAL:
            last_pending = now
            _respond(service, req, context, PENDING, progress, final=False)

    problem = ""
    if items:
        try:
            if destination is not None:
                send.send(settings, destination, items, on_result=on_result, cancelled=is_cancelled,
                         originator=(calling, int(req.MessageID)))
            else:
                peer = peers.Node(calling or ip, calling, ip, 0, ())
                send.send_over(settings, assoc, peer, items, send.SendReport(), on_result=on_result,
                              cancelled=is_cancelled, first_msg_id=int(req.MessageID) + 1)
        except DolmenError as exc:
            problem = exc.message
            LOGGER.warning("%s from %s at %s%s: %s", name, calling, ip, target, problem)
    if not assoc.is_established:
        _log_event(calling, called, ip, op, True, f"{level} level{target}: requester went away; "
                   + progress.summary(), progress.completed, time.monotonic() - started)
        return
    if cancelled:
        status = CANCEL
    elif problem:
        # The rest could not be tried (the destination refused or went away): count them failed.
        progress.failed += progress.remaining
        progress.remaining = 0
        status = SUBOPS_WARNING if progress.completed or progress.warning else UNABLE_TO_PERFORM_SUBOPS
    elif progress.failed or progress.warning:
        status = SUBOPS_WARNING if progress.completed or progress.warning else UNABLE_TO_PERFORM_SUBOPS
    else:
        status = SUCCESS
    comment = problem or progress.comment
    _respond(service, req, context, status, progress, comment=comment if status != SUCCESS else "")
    detail = f"{level} level{target}, {len(items)} instance(s): {progress.summary()}"
    if cancelled:
        detail += "; cancelled by the requester"
    if comment and status != SUCCESS:
        detail += f"; {comment}"
    _log_event(calling, called, ip, op, True, detail, progress.completed, time.monotonic() - started)


def build_ae(settings: Settings) -> AE:
    """An AE with Verification, every Storage SOP class (with SCP/SCU role selection, for C-GET)
    and Query/Retrieve FIND/MOVE/GET in Patient Root and Study Root; limits from ``settings``."""
    ae = upperlayer.DolmenAE(ae_title=settings["dicom.aet"])
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
    install_retrieve_service()
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
