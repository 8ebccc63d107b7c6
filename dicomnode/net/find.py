"""C-FIND served from the index through the one query translator (:mod:`dicomnode.archive.query`):
identifiers read, answers built from index rows (or files, ``[dicom] find_read_files``),
encoded without pydicom when they are plain text, and written straight to the socket."""

from __future__ import annotations

import contextlib
import logging
import struct
import time
from collections.abc import Generator
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import peewee
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName
from pynetdicom import evt
from pynetdicom.dsutils import decode
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import QueryRetrieveServiceClass

from dicomnode import peers
from dicomnode.archive import query
from dicomnode.archive.index import Instance
from dicomnode.archive.index import Series
from dicomnode.archive.index import Study
from dicomnode.errors import DolmenError
from dicomnode.net import wire
from dicomnode.net.service import LEVELS_OF_ROOT
from dicomnode.net.service import QR_MODELS
from dicomnode.net.service import ROOT_NAME
from dicomnode.net.service import Context
from dicomnode.net.service import assoc_peer
from dicomnode.net.service import element_text
from dicomnode.net.service import log_event
from dicomnode.net.service import status_dataset
from dicomnode.status import CANCEL
from dicomnode.status import DOES_NOT_MATCH_SOP_CLASS
from dicomnode.status import NOT_AUTHORIZED
from dicomnode.status import OUT_OF_RESOURCES
from dicomnode.status import PENDING
from dicomnode.status import SUCCESS
from dicomnode.status import UNABLE_TO_PROCESS

LOGGER = logging.getLogger(__name__)


_SKIP_KEYS = {0x00080052, 0x00080005}  # Query/Retrieve Level, Specific Character Set


@dataclass
class FindRequest:
    """A C-FIND identifier read for the index: level, filters and the keys to return."""

    level: str
    filters: dict[str, Any]
    requested: list[DataElement]


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
    allowed = LEVELS_OF_ROOT[root]
    if level not in allowed:
        raise DolmenError(f"QueryRetrieveLevel {level or '(missing)'!r}: {ROOT_NAME[root]} has "
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
        value = element_text(elem)
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
    calling, called, ip = assoc_peer(assoc)
    started = time.monotonic()
    refusal = peers.access(ctx.settings, calling, ip, "find")
    if refusal:
        LOGGER.warning("C-FIND from %s at %s refused: %s", calling, ip, refusal)
        log_event(calling, called, ip, "find", False, refusal)
        yield status_dataset(NOT_AUTHORIZED, refusal), None
        return
    root = QR_MODELS.get(model, ("STUDY", "find"))[0]
    try:
        request = read_find_request(identifier(), root)
        combined = model in getattr(assoc, "dolmen_combined", ())
        rows = query.select(request.level, request.filters, combined_datetime=combined,
                            case_sensitive_pn=ctx.settings["dicom.case_sensitive_pn"])
    except (DolmenError, ValueError, AttributeError, KeyError, EOFError) as exc:
        message = exc.message if isinstance(exc, DolmenError) else f"cannot read the identifier: {exc}"
        code = DOES_NOT_MATCH_SOP_CLASS if getattr(exc, "code", "") == "identifier_mismatch" else UNABLE_TO_PROCESS
        LOGGER.warning("C-FIND from %s at %s failed: %s", calling, ip, message)
        log_event(calling, called, ip, "find", False, f"bad query: {message}")
        yield status_dataset(code, message), None
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
                final = status_dataset(OUT_OF_RESOURCES, f"Too many matches: first {limit} sent, narrow the query")
                break
            yield PENDING, find_answer_elements(ctx, row, request)
            sent += 1
    except peewee.DatabaseError as exc:
        outcome = f"index error: {exc}"
        final = status_dataset(UNABLE_TO_PROCESS, "The index cannot answer now")
        LOGGER.error("C-FIND from %s at %s: %s", calling, ip, exc)
    detail = f"{request.level} level, {sent} answer(s)" + (f"; {outcome}" if outcome else "")
    log_event(calling, called, ip, "find", True, detail, sent, time.monotonic() - started)
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


