"""Operations against a remote node: echo, find, move, get and send (C-STORE).

Every operation opens its own association with :func:`associate` and releases it at the end.
Every failure becomes a :class:`~dicomnode.errors.RemoteError` whose ``code`` says what kind
(``connection_refused``, ``host_unreachable``, ``timeout``, ``unknown_host``,
``association_rejected``, ``association_aborted``, ``not_accepted``, and one code per
failure status: ``move_destination_unknown``, ``out_of_resources``, ``identifier_mismatch``,
``unable_to_process``, ``sop_class_not_supported``, ``not_authorized``...) and whose message
says, in plain words, what happened and what to do (:func:`status_error`).

Long operations take two callables: one told of each result or pending response (for job
progress) and ``cancelled() -> bool``, checked between instances (send) or at each response
(retrieve, which then sends a C-CANCEL).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import JPEG2000
from pydicom.uid import UID
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.uid import ImplicitVRLittleEndian
from pydicom.uid import JPEG2000Lossless
from pydicom.uid import JPEGBaseline8Bit
from pydicom.uid import JPEGExtended12Bit
from pydicom.uid import JPEGLossless
from pydicom.uid import JPEGLosslessSV1
from pydicom.uid import JPEGLSLossless
from pydicom.uid import JPEGLSNearLossless
from pydicom.uid import RLELossless
from pynetdicom import AE
from pynetdicom import StoragePresentationContexts
from pynetdicom import _config as pynetdicom_config
from pynetdicom import build_context
from pynetdicom import build_role
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import split_dataset
from pynetdicom.presentation import PresentationContext

from dicomnode import render
from dicomnode.config import Settings
from dicomnode.errors import RemoteError
from dicomnode.errors import RenderError
from dicomnode.peers import Node

LOGGER = logging.getLogger(__name__)

# SOP classes (PS3.4 Annex C.6): pynetdicom generates its own constants at run time.
Verification = UID("1.2.840.10008.1.1")
PatientRootQueryRetrieveInformationModelFind = UID("1.2.840.10008.5.1.4.1.2.1.1")
PatientRootQueryRetrieveInformationModelMove = UID("1.2.840.10008.5.1.4.1.2.1.2")
PatientRootQueryRetrieveInformationModelGet = UID("1.2.840.10008.5.1.4.1.2.1.3")
StudyRootQueryRetrieveInformationModelFind = UID("1.2.840.10008.5.1.4.1.2.2.1")
StudyRootQueryRetrieveInformationModelMove = UID("1.2.840.10008.5.1.4.1.2.2.2")
StudyRootQueryRetrieveInformationModelGet = UID("1.2.840.10008.5.1.4.1.2.2.3")

CONNECT_TIMEOUT = 10.0


def check_reachable(node: Node, timeout: float = CONNECT_TIMEOUT) -> None:
    """Open and close a TCP connection to the node, turning each failure into a clear message.

    Raises
    ------
    RemoteError
        ``unknown_host``, ``connection_refused``, ``host_unreachable`` or ``timeout``.
    """
    where = f"{node.host}:{node.port}"
    try:
        with socket.create_connection((node.host, node.port), timeout=timeout):
            pass
    except socket.gaierror:
        raise RemoteError(
            f"Unknown host {node.host!r}: the name does not resolve. Check the "
            f"host of modality {node.name!r}.",
            code="unknown_host",
        ) from None
    except ConnectionRefusedError:
        raise RemoteError(
            f"Connection refused by {where}: nothing listens on that port. Check the "
            f"port of {node.name!r} and that its DICOM service is running.",
            code="connection_refused",
        ) from None
    except TimeoutError:
        raise RemoteError(
            f"No answer from {where} within {timeout:g} s: the host is down or a "
            "firewall drops the connection.",
            code="timeout",
        ) from None
    except OSError as exc:
        raise RemoteError(
            f"Host {where} is unreachable ({exc.strerror or exc}). Check the address and the network route.",
            code="host_unreachable",
        ) from None


def _not_established(settings: Settings, node: Node, abort_pdu: Any, waited: float) -> RemoteError:
    """Why an association request that was neither accepted nor rejected failed (PS3.8 9.3.8).

    An A-ABORT from the peer (with its source and reason), a connection closed without an
    answer, or silence until ``[dicom] acse_timeout``.
    """
    who = f"{node.name} ({node.aet} at {node.host}:{node.port})"
    if abort_pdu is not None:
        parts = []
        for attr in ("source_str", "reason_str"):
            with contextlib.suppress(Exception):
                text = str(getattr(abort_pdu, attr))
                if text and "no value" not in text:
                    parts.append(text)
        why = f" ({', '.join(parts)})" if parts else ""
        return RemoteError(f"{who} aborted the association request{why}: it refuses us or the requested "
                           "SOP classes; its log says why.", code="association_aborted")
    timeout = settings["dicom.acse_timeout"]
    if waited >= timeout * 0.9:
        return RemoteError(f"{who} accepted the connection but did not answer the association request "
                           f"within {timeout:g} s ([dicom] acse_timeout): is it a DICOM port, and is the "
                           "service there hung?", code="timeout")
    return RemoteError(f"{who} closed the connection without answering the association request: is "
                       f"port {node.port} a DICOM port?", code="association_aborted")


def _describe_reject(primitive: Any) -> str:
    if primitive is None:
        return "the association was rejected"
    parts = []
    for attr in ("result_str", "source_str", "reason_str"):
        with contextlib.suppress(Exception):
            parts.append(str(getattr(primitive, attr)))
    return ", ".join(p for p in parts if p) or "the association was rejected"


def _no_delay(event: evt.Event) -> None:
    """Send each PDU at once: without TCP_NODELAY a C-STORE whose data ends in a small PDV waits
    for the peer's delayed ACK (~40 ms per instance on Linux)."""
    sock: Any = getattr(event.assoc.dul.socket, "socket", None)
    with contextlib.suppress(AttributeError, OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@contextlib.contextmanager
def associate(
    settings: Settings,
    node: Node,
    contexts: Sequence[Any] = (Verification,),
    *,
    ae: AE | None = None,
    ext_neg: list[Any] | None = None,
    evt_handlers: list[Any] | None = None,
) -> Iterator[Association]:
    """Open an association to ``node`` and release it at the end of the ``with`` block.

    Parameters
    ----------
    contexts : sequence
        Abstract syntaxes (or presentation contexts) to request, when ``ae`` is not given.
    ae : AE, optional
        A prepared AE (for requested contexts with specific transfer syntaxes).

    Raises
    ------
    RemoteError
        When the node cannot be reached, rejects or aborts the association.
    """
    check_reachable(node)
    if ae is None:
        ae = AE(ae_title=settings["dicom.aet"])
        for cx in contexts:
            if hasattr(cx, "abstract_syntax"):
                ae.add_requested_context(cx.abstract_syntax, cx.transfer_syntax)
            else:
                ae.add_requested_context(cx)
    ae.acse_timeout = settings["dicom.acse_timeout"]
    ae.dimse_timeout = settings["dicom.dimse_timeout"]
    ae.network_timeout = settings["dicom.network_timeout"]
    received: dict[str, Any] = {}

    def on_acse(event: evt.Event) -> None:
        received["primitive"] = getattr(event, "primitive", None)

    def on_pdu(event: evt.Event) -> None:
        if type(getattr(event, "pdu", None)).__name__ == "A_ABORT_RQ":
            received["abort"] = event.pdu

    handlers = list(evt_handlers or []) + [(evt.EVT_ACSE_RECV, on_acse), (evt.EVT_PDU_RECV, on_pdu),
                                           (evt.EVT_CONN_OPEN, _no_delay)]
    asked = time.monotonic()
    assoc = ae.associate(node.host, node.port, ae_title=node.aet, ext_neg=ext_neg, evt_handlers=handlers)
    if assoc.is_rejected:
        why = _describe_reject(received.get("primitive"))
        hint = ""
        if "called" in why.lower():
            hint = f" Check that {node.name!r} is really called {node.aet!r}."
        elif "calling" in why.lower():
            hint = (
                f" The remote node does not know our AE title {settings['dicom.aet']!r}: "
                "declare it in its configuration."
            )
        raise RemoteError(
            f"{node.name} ({node.aet} at {node.host}:{node.port}) rejected the association: {why}.{hint}",
            code="association_rejected",
        )
    if not assoc.is_established:
        raise _not_established(settings, node, received.get("abort"), time.monotonic() - asked)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()


def echo(settings: Settings, node: Node) -> dict[str, Any]:
    """C-ECHO ``node``; return ``{"ok": True, "status": 0, "rtt_ms": ...}``.

    Raises
    ------
    RemoteError
        Unreachable, rejected, aborted, or a non-success status.
    """
    started = time.perf_counter()
    with associate(settings, node, [Verification]) as assoc:
        status = assoc.send_c_echo()
        if not status or "Status" not in status:
            raise RemoteError(
                f"{node.name} did not answer the C-ECHO within {settings['dicom.dimse_timeout']:g} s",
                code="timeout",
            )
        code = int(status.Status)
    rtt = (time.perf_counter() - started) * 1000
    if code != 0:
        raise RemoteError(f"{node.name} answered the C-ECHO with status 0x{code:04X}", code="echo_failed")
    return {
        "ok": True,
        "status": code,
        "rtt_ms": round(rtt, 1),
        "modality": node.name,
        "aet": node.aet,
        "host": node.host,
        "port": node.port,
    }


# -- status codes ---------------------------------------------------------------------------

SUCCESS = 0x0000
CANCEL = 0xFE00
PENDING = (0xFF00, 0xFF01)
WARNING_SUBOPS = 0xB000  # C-MOVE/C-GET: sub-operations complete, one or more failures or warnings
MOVE_DESTINATION_UNKNOWN = 0xA801
#: Storage warnings (PS3.4 B.2.3): the instance is stored, perhaps changed.
STORE_WARNINGS = (0xB000, 0xB006, 0xB007)

#: Uncompressed transfer syntaxes, in the order we propose them.
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: What we accept for instances a C-GET brings in (uncompressed first: most peers pick the first).
GET_TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1-255


def _meaning(code: int, op: str) -> tuple[str, str]:
    """``(short meaning, what to do)`` of a failure status of ``op`` (PS3.4 and PS3.7 Annex C)."""
    if code == MOVE_DESTINATION_UNKNOWN:
        return "Move destination unknown", ""
    if 0xA700 <= code <= 0xA7FF:
        what = {0xA701: "cannot count the matches", 0xA702: "cannot perform the sub-operations"}.get(code, "")
        return (
            "Out of resources" + (f" ({what})" if what else ""),
            "The remote node is overloaded or its storage is full; try again later or ask its administrator.",
        )
    if 0xA900 <= code <= 0xA9FF:
        if op == "store":
            return "Data set does not match SOP class", "The remote node refuses this object as it is."
        return (
            "Identifier does not match SOP class",
            "The remote node does not accept this query; try fewer filters or another level.",
        )
    if 0xAA00 <= code <= 0xAAFF:
        return "None of the frames requested were found", ""
    if 0xC000 <= code <= 0xCFFF:
        if op == "store":
            return "Cannot understand", "The remote node could not parse or file the object; see its log."
        return "Unable to process", "The remote node failed on the request; its log says why."
    return {
        0x0122: ("SOP class not supported", "The remote node does not implement this service."),
        0x0124: (
            "Not authorized",
            "The remote node refuses this operation from our AE title; allow it there.",
        ),
        0x0117: ("Invalid object instance", "The remote node refused the object."),
        0x0210: ("Duplicate invocation", ""),
        0x0211: ("Unrecognized operation", "The remote node does not implement this operation."),
        0x0212: ("Mistyped argument", ""),
        0x0110: ("Processing failure", "The remote node failed on the request; its log says why."),
        CANCEL: ("Cancelled", ""),
    }.get(code, ("Failed", ""))


_ERROR_CODES = {
    MOVE_DESTINATION_UNKNOWN: "move_destination_unknown",
    0x0122: "sop_class_not_supported",
    0x0124: "not_authorized",
    CANCEL: "cancelled",
    0x0211: "unrecognized_operation",
}


def error_code(code: int) -> str:
    """The stable snake_case code of a failure status."""
    if code in _ERROR_CODES:
        return _ERROR_CODES[code]
    if 0xA700 <= code <= 0xA7FF:
        return "out_of_resources"
    if 0xA900 <= code <= 0xA9FF:
        return "identifier_mismatch"
    if 0xC000 <= code <= 0xCFFF:
        return "unable_to_process"
    return "failed_status"


def local_address(host: str) -> str:
    """Our IP address as the node at ``host`` sees it (the source address of the route there)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return str(s.getsockname()[0])
    except OSError:
        return "<this machine's address>"


def status_message(
    code: int,
    op: str,
    node: Node,
    *,
    comment: str = "",
    settings: Settings | None = None,
    destination: str = "",
    our_port: int | None = None,
) -> str:
    """A sentence for the user: the status, its meaning and the fix."""
    meaning, fix = _meaning(code, op)
    opname = {"find": "C-FIND", "move": "C-MOVE", "get": "C-GET", "store": "C-STORE", "echo": "C-ECHO"}.get(
        op, op
    )
    text = f"{node.name} answered the {opname} with 0x{code:04X} {meaning}"
    if op == "move" and (code == MOVE_DESTINATION_UNKNOWN or 0xC000 <= code <= 0xCFFF):
        ours = settings["dicom.aet"] if settings else ""
        dest = destination or ours
        if settings is not None and dest == ours:
            port = our_port or settings["dicom.port"]
            declare = (
                f"declare {dest} at {local_address(node.host)}:{port} in its configuration, "
                "or retrieve with C-GET"
            )
        else:
            declare = f"declare {dest!r} with its address and port in its configuration"
        if code == MOVE_DESTINATION_UNKNOWN:
            fix = (
                f"the remote node does not know our AE title — {declare}"
                if dest == ours
                else f"the remote node does not know the AE title {dest!r} — {declare}"
            )
            text = f"{node.name} answered the C-MOVE with 0x{code:04X} {meaning}: {fix}"
            fix = ""
        else:
            # Orthanc and others answer 0xC000 when the destination is unknown or unreachable.
            fix = (
                f"The usual cause: it does not know the destination {dest} or cannot connect to it — "
                f"{declare}; its log says which"
            )
    if comment:
        text += f" ({comment.strip()})"
    return text + (f". {fix}" if fix else "")


def status_error(code: int, op: str, node: Node, **kw: Any) -> RemoteError:
    """A :class:`RemoteError` for a failure status, with :func:`status_message` and :func:`error_code`."""
    return RemoteError(status_message(code, op, node, **kw), code=error_code(code))


def _status_of(status: Dataset | None, since: float, node: Node, op: str, settings: Settings) -> int:
    """The Status of a response, or a RemoteError when there was none (abort or timeout).

    ``since`` is when we started waiting (``time.monotonic()``): an empty response well before
    the DIMSE timeout means the peer closed the association.
    """
    if status is not None and "Status" in status:
        return int(status.Status)
    opname = {"find": "C-FIND", "move": "C-MOVE", "get": "C-GET"}.get(op, op.upper())
    if time.monotonic() - since < settings["dicom.dimse_timeout"] * 0.9:
        raise RemoteError(
            f"{node.name} aborted the association on our {opname}: it probably refuses this "
            f"operation from our AE title {settings['dicom.aet']} — declare it there with "
            "the right to query and retrieve (Orthanc: DicomModalities)",
            code="association_aborted",
        )
    raise RemoteError(
        f"{node.name} did not answer the {opname} within {settings['dicom.dimse_timeout']:g} s",
        code="timeout",
    )


def _timed(
    responses: Iterator[tuple[Dataset, Dataset | None]],
) -> Iterator[tuple[Dataset, Dataset | None, float]]:
    """The responses, each with when we started waiting for it."""
    since = time.monotonic()
    for status, found in responses:
        yield status, found, since
        since = time.monotonic()


# -- identifiers and answers ----------------------------------------------------------------

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")

#: What we ask back at each level, beyond the filters (PS3.4 C.6.1.1 / C.6.2.1).
RETURN_KEYS: dict[str, tuple[str, ...]] = {
    "PATIENT": (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedInstances",
    ),
    "STUDY": (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyDescription",
        "ModalitiesInStudy",
        "StudyID",
        "SOPClassesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    "SERIES": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "BodyPartExamined",
        "SeriesDate",
        "NumberOfSeriesRelatedInstances",
    ),
    "IMAGE": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
        "NumberOfFrames",
    ),
}


def _level(level: str) -> str:
    level = level.upper()
    if level == "INSTANCE":
        level = "IMAGE"
    if level not in LEVELS:
        raise RemoteError(
            f"Unknown query level {level!r}: use PATIENT, STUDY, SERIES or IMAGE", code="bad_request"
        )
    return level


def identifier(level: str, keys: dict[str, Any], return_keys: Iterable[str] = ()) -> Dataset:
    """The C-FIND/C-MOVE/C-GET identifier: QueryRetrieveLevel, the matching keys and the return keys.

    Raises
    ------
    RemoteError
        ``bad_request`` for a keyword that is not a DICOM attribute.
    """
    ds = Dataset()
    values = {k: ("" if v is None else v) for k, v in keys.items()}
    text = "".join(str(v) for v in values.values())
    if not text.isascii():
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8 (PS3.3 C.12.1.1.2)
    ds.QueryRetrieveLevel = _level(level)
    for keyword in list(return_keys) + list(values):
        if tag_for_keyword(keyword) is None:
            raise RemoteError(f"{keyword!r} is not a DICOM attribute keyword", code="bad_request")
        value = values.get(keyword, "")
        if isinstance(value, (list, tuple)):
            value = "\\".join(str(v) for v in value)
        setattr(ds, keyword, value if value != "" else None)
    return ds


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(_text(v) for v in value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value).strip(" \x00")


def answer_dict(ds: Dataset) -> dict[str, str]:
    """A response identifier as ``{keyword: text}`` (sequences and private tags left out)."""
    out: dict[str, str] = {}
    for elem in ds:
        if elem.tag.is_private or elem.VR == "SQ" or not elem.keyword:
            continue
        if elem.keyword in ("QueryRetrieveLevel", "SpecificCharacterSet"):
            continue
        try:
            out[elem.keyword] = _text(elem.value)
        except Exception:  # a value that cannot be decoded must not lose the others
            out[elem.keyword] = "<undecodable>"
    return out


def raw_elements(ds: Dataset) -> list[dict[str, str]]:
    """Every element of an identifier as sent or received, for a transcript."""
    out = []
    for elem in ds:
        if isinstance(elem.value, DicomSequence):
            value = f"<sequence of {len(elem.value)} item(s)>"
        else:
            try:
                value = _text(elem.value)
            except Exception:
                value = "<undecodable>"
        out.append(
            {
                "tag": f"({elem.tag.group:04X},{elem.tag.element:04X})",
                "keyword": elem.keyword or "",
                "vr": str(elem.VR),
                "value": value,
            }
        )
    return out


def _find_model(level: str) -> UID:
    return (
        PatientRootQueryRetrieveInformationModelFind
        if level == "PATIENT"
        else StudyRootQueryRetrieveInformationModelFind
    )


def _move_model(level: str) -> UID:
    return (
        PatientRootQueryRetrieveInformationModelMove
        if level == "PATIENT"
        else StudyRootQueryRetrieveInformationModelMove
    )


def _get_model(level: str) -> UID:
    return (
        PatientRootQueryRetrieveInformationModelGet
        if level == "PATIENT"
        else StudyRootQueryRetrieveInformationModelGet
    )


def _require_context(assoc: Association, model: UID, node: Node, what: str, hint: str = "") -> None:
    if not any(cx.abstract_syntax == model for cx in assoc.accepted_contexts):
        raise RemoteError(
            f"{node.name} accepted the association but not the {model.name}: it does not "
            f"support {what}.{(' ' + hint) if hint else ''}",
            code="not_accepted",
        )


def _hex(code: int) -> str:
    return f"0x{code:04X}"


# -- C-FIND ---------------------------------------------------------------------------------


def find(
    settings: Settings,
    node: Node,
    level: str,
    filters: dict[str, Any],
    *,
    return_keys: Iterable[str] | None = None,
    limit: int = 500,
) -> dict[str, Any]:
    """C-FIND ``node`` at ``level`` (Patient Root for PATIENT, else Study Root).

    Parameters
    ----------
    filters : dict
        ``{keyword: matching value}`` (wildcards, ranges and UID lists as PS3.4 C.2.2.2 says).
    return_keys : iterable of str, optional
        Asked back empty; default :data:`RETURN_KEYS` of the level.
    limit : int
        At most this many answers; beyond it the association is aborted and ``truncated`` set.

    Returns
    -------
    dict
        ``answers`` (list of ``{keyword: text}``), ``truncated``, ``status`` and ``transcript``
        (``identifier`` as sent, ``responses`` as received, ``ms``).

    Raises
    ------
    RemoteError
        Unreachable, rejected, the model not accepted, or a failure status.
    """
    level = _level(level)
    keys = RETURN_KEYS[level] if return_keys is None else tuple(return_keys)
    ds = identifier(level, filters, [k for k in keys if k not in filters])
    model = _find_model(level)
    transcript: dict[str, Any] = {
        "op": "C-FIND",
        "model": model.name,
        "level": level,
        "identifier": raw_elements(ds),
        "responses": [],
    }
    answers: list[dict[str, str]] = []
    truncated = False
    final = SUCCESS
    started = time.perf_counter()
    with associate(settings, node, [model]) as assoc:
        _require_context(assoc, model, node, f"C-FIND at the {level} level")
        for status, found, waiting in _timed(assoc.send_c_find(ds, model)):
            code = _status_of(status, waiting, node, "find", settings)
            if code in PENDING:
                if found is not None:
                    if len(answers) >= limit:
                        truncated = True
                        transcript["responses"].append(
                            {"status": "aborted", "note": f"more than {limit} answers"}
                        )
                        assoc.abort()
                        break
                    answers.append(answer_dict(found))
                    if len(transcript["responses"]) < 200:
                        transcript["responses"].append(
                            {"status": _hex(code), "identifier": raw_elements(found)}
                        )
                continue
            final = code
            comment = str(status.get("ErrorComment", "") or "")
            transcript["responses"].append(
                {"status": _hex(code), **({"comment": comment} if comment else {})}
            )
            if code not in (SUCCESS, CANCEL):
                raise status_error(code, "find", node, comment=comment)
    transcript["ms"] = round((time.perf_counter() - started) * 1000, 1)
    transcript["answers"] = len(answers)
    return {"answers": answers, "truncated": truncated, "status": final, "transcript": transcript}


# -- C-MOVE and C-GET -----------------------------------------------------------------------


@dataclass
class RetrieveReport:
    """What a C-MOVE or C-GET did: the last sub-operation counters and the final status."""

    status: int = SUCCESS
    completed: int = 0
    failed: int = 0
    warning: int = 0
    remaining: int = 0
    failed_uids: list[str] = field(default_factory=list)
    cancelled: bool = False
    comment: str = ""

    def counters(self) -> dict[str, int]:
        return {
            "remaining": self.remaining,
            "completed": self.completed,
            "failed": self.failed,
            "warning": self.warning,
        }


Observer = Callable[[dict[str, Any]], None]


def _counter(status: Dataset, name: str, default: int) -> int:
    value = status.get(f"NumberOf{name}Suboperations")
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _retrieve_loop(
    assoc: Association,
    responses: Iterator[tuple[Dataset, Dataset | None]],
    op: str,
    node: Node,
    settings: Settings,
    model: UID,
    on_response: Observer | None,
    cancelled: Callable[[], bool] | None,
    **message_kw: Any,
) -> RetrieveReport:
    """Follow the responses of a C-MOVE or C-GET; send C-CANCEL when asked to stop."""
    report = RetrieveReport()
    cancel_sent: float | None = None
    for status, found, waiting in _timed(responses):
        code = _status_of(status, waiting, node, op, settings)
        report.remaining = _counter(status, "Remaining", report.remaining if code in PENDING else 0)
        report.completed = _counter(status, "Completed", report.completed)
        report.failed = _counter(status, "Failed", report.failed)
        report.warning = _counter(status, "Warning", report.warning)
        comment = str(status.get("ErrorComment", "") or "")
        entry: dict[str, Any] = {"status": _hex(code), **report.counters()}
        if comment:
            entry["comment"] = comment
        if found is not None and "FailedSOPInstanceUIDList" in found:
            uids = found.FailedSOPInstanceUIDList
            report.failed_uids = [
                str(u) for u in (uids if isinstance(uids, (list, MultiValue)) else [uids]) if u
            ]
            entry["failed_uids"] = report.failed_uids[:50]
        if on_response is not None:
            on_response(entry)
        if code in PENDING:
            if cancelled is not None and cancelled() and cancel_sent is None:
                assoc.send_c_cancel(1, query_model=model)
                cancel_sent = time.monotonic()
                report.cancelled = True
                if on_response is not None:
                    on_response({"status": "C-CANCEL sent"})
            elif cancel_sent is not None and time.monotonic() - cancel_sent > 10:
                assoc.abort()  # the peer ignores our C-CANCEL
                break
            continue
        report.status = code
        if code == 0xA702 and report.failed and not comment:
            comment = f"all {report.failed} sub-operation(s) failed"
        report.comment = comment
        if code == CANCEL:
            report.cancelled = True
        elif code not in (SUCCESS, WARNING_SUBOPS):
            raise status_error(code, op, node, comment=comment, settings=settings, **message_kw)
    return report


def retrieve_keys(level: str, keys: dict[str, Any]) -> dict[str, Any]:
    """The unique keys a hierarchical retrieve at ``level`` needs (PS3.4 C.4.2.2.1), from ``keys``."""
    level = _level(level)
    wanted = {
        "PATIENT": ("PatientID",),
        "STUDY": ("StudyInstanceUID",),
        "SERIES": ("StudyInstanceUID", "SeriesInstanceUID"),
        "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
    }[level]
    missing = [k for k in wanted if not keys.get(k)]
    if missing:
        raise RemoteError(f"A retrieve at the {level} level needs {', '.join(missing)}", code="bad_request")
    return {k: keys[k] for k in wanted}


def move(
    settings: Settings,
    node: Node,
    level: str,
    keys: dict[str, Any],
    destination: str | None = None,
    *,
    on_response: Observer | None = None,
    cancelled: Callable[[], bool] | None = None,
    our_port: int | None = None,
) -> RetrieveReport:
    """C-MOVE: ask ``node`` to send what ``keys`` names to ``destination`` (default: our AE title).

    The instances arrive at the destination's SCP as ordinary C-STOREs (ours, for a retrieve).

    Raises
    ------
    RemoteError
        Unreachable, rejected, the model not accepted, or a failure status such as 0xA801
        (``move_destination_unknown``, with the fix).
    """
    level = _level(level)
    destination = (destination or settings["dicom.aet"]).strip()
    ds = identifier(level, retrieve_keys(level, keys))
    model = _move_model(level)
    with associate(settings, node, [model]) as assoc:
        _require_context(assoc, model, node, "C-MOVE", "Retrieve with C-GET instead.")
        if on_response is not None:
            on_response(
                {
                    "request": "C-MOVE",
                    "model": model.name,
                    "destination": destination,
                    "identifier": raw_elements(ds),
                }
            )
        responses = assoc.send_c_move(ds, destination, model)
        return _retrieve_loop(
            assoc,
            responses,
            "move",
            node,
            settings,
            model,
            on_response,
            cancelled,
            destination=destination,
            our_port=our_port,
        )


def _received_file(event: evt.Event, spool_dir: Path) -> Path:
    """The received dataset as a DICOM file in ``spool_dir`` (already there when pynetdicom spools)."""
    with contextlib.suppress(AttributeError, TypeError):
        path = Path(event.dataset_path)  # set when pynetdicom spools received datasets (the sidecar)
        if path.exists():
            return path
    fd, name = _mkstemp(spool_dir)
    with os.fdopen(fd, "wb") as f:
        f.write(event.encoded_dataset(include_meta=True))
    return Path(name)


def _mkstemp(folder: Path) -> tuple[int, str]:
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=folder, prefix="get-", suffix=".dcm")


def get(
    settings: Settings,
    node: Node,
    level: str,
    keys: dict[str, Any],
    *,
    store: Callable[[Path], int],
    spool_dir: Path,
    sop_classes: Sequence[str] = (),
    on_response: Observer | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> RetrieveReport:
    """C-GET: have ``node`` send what ``keys`` names back over our association.

    Parameters
    ----------
    store : callable
        ``store(path) -> status`` for each instance received (a spooled DICOM file that it
        consumes); its status is answered to the peer (0x0000, or a failure such as 0xA700).
    spool_dir : Path
        Where received instances are written when pynetdicom does not spool them itself.
    sop_classes : sequence of str
        Storage SOP classes expected besides the common ones (e.g. SOPClassesInStudy).

    Raises
    ------
    RemoteError
        As :func:`move`.
    """
    level = _level(level)
    ds = identifier(level, retrieve_keys(level, keys))
    model = _get_model(level)
    contexts = [build_context(model)]
    classes = [str(c) for c in sop_classes if c]
    classes += [
        str(cx.abstract_syntax)
        for cx in StoragePresentationContexts
        if str(cx.abstract_syntax) not in classes
    ]
    classes = classes[: MAX_CONTEXTS - 1]
    contexts += [build_context(uid, list(GET_TRANSFER_SYNTAXES)) for uid in classes]
    roles = [build_role(uid, scp_role=True) for uid in classes]
    ae = AE(ae_title=settings["dicom.aet"])
    ae.requested_contexts = contexts

    def on_store(event: evt.Event) -> int:
        try:
            path = _received_file(event, spool_dir)
        except Exception as exc:
            LOGGER.warning("C-GET from %s: cannot spool an instance: %s", node.name, exc)
            return 0xA700
        return store(path)

    with associate(settings, node, ae=ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
        _require_context(assoc, model, node, "C-GET", "Retrieve with C-MOVE instead.")
        if on_response is not None:
            on_response({"request": "C-GET", "model": model.name, "identifier": raw_elements(ds)})
        responses = assoc.send_c_get(ds, model)
        return _retrieve_loop(assoc, responses, "get", node, settings, model, on_response, cancelled)


# -- C-STORE (send) -------------------------------------------------------------------------


@dataclass(frozen=True)
class SendItem:
    """One stored instance to send."""

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    size: int = 0


@dataclass
class SendReport:
    """What a send did."""

    sent: int = 0
    warnings: int = 0
    failed: int = 0
    transcoded: int = 0
    bytes_sent: int = 0
    cancelled: bool = False


#: ``on_result(item, status, message)``: status is the peer's code, or None when not sent.
ResultObserver = Callable[[SendItem, int | None, str], None]


def _send_contexts(items: Sequence[SendItem]) -> list[list[PresentationContext]]:
    """Presentation contexts for ``items``, in groups of at most 128 (one association each).

    Per SOP class: one context with the uncompressed syntaxes (the stored one first when it is
    uncompressed), and one per compressed syntax stored, so that an instance goes as stored
    when the peer takes its syntax and is decompressed when it takes only uncompressed ones.
    """
    by_class: dict[str, list[str]] = {}
    for item in items:
        syntaxes = by_class.setdefault(item.sop_class_uid, [])
        if item.transfer_syntax_uid not in syntaxes:
            syntaxes.append(item.transfer_syntax_uid)
    groups: list[list[PresentationContext]] = [[]]
    for sop_class, syntaxes in by_class.items():
        uncompressed = [ts for ts in syntaxes if ts in UNCOMPRESSED]
        plain = uncompressed + [ts for ts in UNCOMPRESSED if ts not in uncompressed]
        others = [ts for ts in syntaxes if ts not in UNCOMPRESSED]
        wanted = [build_context(sop_class, plain)] + [build_context(sop_class, [ts]) for ts in others]
        if len(wanted) > MAX_CONTEXTS:
            wanted = wanted[:1]  # the rest are sent decompressed
        if len(groups[-1]) + len(wanted) > MAX_CONTEXTS:
            groups.append([])
        groups[-1].extend(wanted)
    return [g for g in groups if g]


def _accepted(assoc: Association, sop_class: str) -> dict[str, PresentationContext]:
    """Accepted contexts for ``sop_class`` in which we may send C-STOREs, by transfer syntax.

    On an association we requested that is every accepted one; on a C-GET requester's, only
    those where SCP/SCU role selection made the requester the storage SCP (``as_scu``).
    """
    return {
        str(cx.transfer_syntax[0]): cx for cx in assoc.accepted_contexts
        if cx.abstract_syntax == sop_class and cx.as_scu
    }


def send(
    settings: Settings,
    node: Node,
    items: Sequence[SendItem],
    *,
    on_result: ResultObserver | None = None,
    cancelled: Callable[[], bool] | None = None,
    originator: tuple[str, int] | None = None,
) -> SendReport:
    """C-STORE every item to ``node`` over one association (one per 128 presentation contexts).

    An instance goes as stored when the peer accepted its transfer syntax (the file is streamed
    without decoding); else it is decoded, decompressed when needed and sent in an uncompressed
    syntax the peer accepted. A failure of one instance (status or no accepted context) is
    reported to ``on_result`` and the send goes on; ``cancelled()`` is checked between instances.
    ``originator`` (AE title, message ID) marks the C-STOREs as sub-operations of that C-MOVE.

    Raises
    ------
    RemoteError
        When the node cannot be reached or the association fails (instances already sent stay
        counted in the report given to ``on_result``).
    """
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True  # stream files as stored, no decoding
    report = SendReport()
    pending = list(items)
    for group in _send_contexts(items):
        classes = {str(cx.abstract_syntax) for cx in group}
        batch = [i for i in pending if i.sop_class_uid in classes]
        ae = AE(ae_title=settings["dicom.aet"])
        ae.requested_contexts = group
        with associate(settings, node, ae=ae) as assoc, _reactor_held(assoc):
            send_over(settings, assoc, node, batch, report, on_result=on_result, cancelled=cancelled,
                      originator=originator)
            if report.cancelled:
                return report
    return report


def send_over(
    settings: Settings,
    assoc: Association,
    node: Node,
    items: Sequence[SendItem],
    report: SendReport,
    *,
    on_result: ResultObserver | None = None,
    cancelled: Callable[[], bool] | None = None,
    originator: tuple[str, int] | None = None,
    first_msg_id: int = 1,
) -> SendReport:
    """C-STORE ``items`` over an open association (ours, or a C-GET requester's), counting in ``report``.

    Used by :func:`send` and by the C-GET service provider, which sends back over the
    requester's association; ``node`` names the peer in messages.

    Raises
    ------
    RemoteError
        When the association is aborted.
    """
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True  # stream files as stored, no decoding
    with _store_responses_decoded_here(assoc):
        for n, item in enumerate(items):
            if cancelled is not None and cancelled():
                report.cancelled = True
                return report
            if not assoc.is_established:
                raise RemoteError(
                    f"{node.name} aborted the association after {report.sent} instance(s)",
                    code="association_aborted",
                )
            msg_id = (first_msg_id + n - 1) % 65535 + 1
            status, message = _store_one(settings, assoc, node, item, report, msg_id, originator)
            if on_result is not None:
                on_result(item, status, message)
    return report


class _HeldCheckpoint(threading.Event):
    """An association's reactor checkpoint that stays cleared: ``set()`` does nothing."""

    def set(self) -> None:
        pass


@contextlib.contextmanager
def _reactor_held(assoc: Association) -> Iterator[None]:
    """Keep the association's reactor thread paused during a run of C-STOREs.

    pynetdicom unpauses the reactor after each response; the reactor then looks at the DIMSE
    queue once more while ``send_c_store`` may already be waiting on it for the next
    response, and when the reactor takes that response the C-STORE is lost and the
    association aborted. (The window is tiny in pynetdicom but widens to the queue wait of
    :mod:`dicomnode.net.latency`.) Held paused, the reactor cannot take it. Uses pynetdicom 3's
    ``_reactor_checkpoint`` and ``_is_paused``.
    """
    original = assoc._reactor_checkpoint
    original.clear()
    deadline = time.monotonic() + 2.0
    # Paused means blocked on the cleared checkpoint: it finishes at most one loop first.
    while not assoc._is_paused and time.monotonic() < deadline:
        time.sleep(0.0005)
    time.sleep(0.01)
    while not assoc._is_paused and time.monotonic() < deadline:
        time.sleep(0.0005)
    assoc._reactor_checkpoint = _HeldCheckpoint()
    try:
        yield
    finally:
        assoc._reactor_checkpoint = original
        original.set()


# -- C-STORE requests written straight to the socket ------------------------------------------
#
# pynetdicom hands every P-DATA PDU of a message to its DUL thread through a queue (and encodes
# the command set with pydicom): a 128 KiB instance to a peer with DCMTK's 16 KiB PDUs is nine
# queue round trips. A file stored in the accepted transfer syntax needs no encoding at all,
# so its PDUs are built here and written with one sendall per MiB. Only for associations
# whose reactor is held (``_reactor_held``) or that are served by the calling thread (C-GET):
# then nothing else writes to the socket meanwhile. The response comes back through
# pynetdicom's DIMSE queue as usual.

_ELEMENT = struct.Struct("<HHI")  # Implicit VR Little Endian element header (group, element, length)
_PDV = struct.Struct(">BBIIBB")  # P-DATA-TF PDU header + PDV item header (PS3.8 9.3.5)
_SEND_BATCH = 1 << 20


def _command_element(element: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0, element, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def store_command(sop_class_uid: str, sop_instance_uid: str, msg_id: int,
                  originator: tuple[str, int] | None = None) -> bytes:
    """The C-STORE-RQ command set (PS3.7 9.3.1.1) as Implicit VR Little Endian bytes."""
    parts = [
        _command_element(0x0002, _padded(sop_class_uid, b"\0")),
        _command_element(0x0100, (0x0001).to_bytes(2, "little")),  # Command Field: C-STORE-RQ
        _command_element(0x0110, msg_id.to_bytes(2, "little")),
        _command_element(0x0700, (0x0000).to_bytes(2, "little")),  # Priority: MEDIUM
        _command_element(0x0800, (0x0000).to_bytes(2, "little")),  # Command Data Set Type: present
        _command_element(0x1000, _padded(sop_instance_uid, b"\0")),
    ]
    if originator is not None:
        parts.append(_command_element(0x1030, _padded(originator[0][:16], b" ")))
        parts.append(_command_element(0x1031, (originator[1] & 0xFFFF).to_bytes(2, "little")))
    body = b"".join(parts)
    return _command_element(0x0000, len(body).to_bytes(4, "little")) + body


def _dataset_offset(path: str) -> int:
    """Where the data set starts in a Part 10 file (after the preamble and the file meta)."""
    with open(path, "rb") as f:
        head = f.read(144)
    if len(head) == 144 and head[128:132] == b"DICM" and head[132:138] == b"\x02\x00\x00\x00UL":
        return 144 + int.from_bytes(head[140:144], "little")
    return int(split_dataset(Path(path))[1])


def _pdv(context_id: int, control: int, data: bytes | memoryview) -> bytes:
    return _PDV.pack(0x04, 0, len(data) + 6, len(data) + 2, context_id, control)


def _socket_of(assoc: Association) -> socket.socket:
    sock: socket.socket = assoc.dul.socket.socket  # type: ignore[union-attr,assignment]
    return sock


_STORE_RSP_ELEMENTS = frozenset((0x0000, 0x0002, 0x0100, 0x0120, 0x0800, 0x0900, 0x0902, 0x1000))


def parse_store_response(command: bytes) -> C_STORE | None:
    """A C-STORE-RSP command set (Implicit VR Little Endian) as pynetdicom's primitive, or
    ``None`` for anything else or anything unusual (left to pynetdicom)."""
    values: dict[int, bytes] = {}
    pos = 0
    while pos + 8 <= len(command):
        group, element, length = _ELEMENT.unpack_from(command, pos)
        pos += 8
        if group != 0 or pos + length > len(command):
            return None
        values[element] = command[pos:pos + length]
        pos += length
    if pos != len(command) or not values.keys() <= _STORE_RSP_ELEMENTS:
        return None
    if values.get(0x0100) != b"\x01\x80":  # Command Field: C-STORE-RSP
        return None
    if len(values.get(0x0120, b"")) != 2 or len(values.get(0x0900, b"")) != 2:
        return None
    try:
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = int.from_bytes(values[0x0120], "little")
        rsp.Status = int.from_bytes(values[0x0900], "little")
        # The affected UIDs are not read: nobody uses them in a response, and pynetdicom's
        # setters validate each UID with a regular expression (a fifth of this function).
        if 0x0902 in values:
            rsp.ErrorComment = values[0x0902].rstrip(b"\0 ").decode("ascii", "replace")  # type: ignore[assignment]
    except (ValueError, TypeError, UnicodeDecodeError):
        return None
    return rsp


@contextlib.contextmanager
def _store_responses_decoded_here(assoc: Association) -> Iterator[None]:
    """While C-STOREs go out on ``assoc``, its DUL thread turns a C-STORE-RSP (a single command
    fragment) into the primitive with :func:`parse_store_response` instead of pydicom, ~0.5 ms
    less per instance; everything else takes pynetdicom's path. Only this association's DIMSE
    provider is changed, and only inside the block."""
    dimse = assoc.dimse
    original = dimse.receive_primitive
    # A send buffer that holds a whole instance: sendall returns at once and this thread
    # waits once per instance (for the response) instead of at each drained fragment.
    with contextlib.suppress(OSError, AttributeError):
        _socket_of(assoc).setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)

    def receive_primitive(primitive: Any) -> None:
        pdvs = primitive.presentation_data_value_list
        if dimse.message is None and len(pdvs) == 1:
            context_id, data = pdvs[0]
            if len(data) > 1 and data[0] & 3 == 3:  # a whole command set in one fragment
                rsp = parse_store_response(bytes(data[1:]))
                if rsp is not None:
                    dimse.msg_queue.put((context_id, rsp))
                    return
        original(primitive)

    dimse.receive_primitive = receive_primitive  # type: ignore[method-assign]
    try:
        yield
    finally:
        if dimse.__dict__.get("receive_primitive") is receive_primitive:
            del dimse.receive_primitive


def send_c_store_direct(assoc: Association, cx: PresentationContext, item: SendItem, msg_id: int,
                        originator: tuple[str, int] | None = None) -> Dataset | None:
    """C-STORE ``item``'s file, stored in ``cx``'s transfer syntax, writing the PDUs ourselves.

    Returns the response status dataset (as ``Association.send_c_store``), an empty one when
    none came within the DIMSE timeout (the association is then aborted).
    """
    context_id = int(cx.context_id or 0)
    max_pdu = int(assoc.dimse.maximum_pdu_size or 0)
    chunk = max_pdu - 6 if max_pdu else _SEND_BATCH
    command = store_command(item.sop_class_uid, item.sop_instance_uid, msg_id, originator)
    sock = _socket_of(assoc)
    buf = bytearray(_pdv(context_id, 0x03, command) + command)  # command, last fragment
    offset = _dataset_offset(item.path)
    with open(item.path, "rb") as f:
        remaining = os.fstat(f.fileno()).st_size - offset
        f.seek(offset)
        while remaining > 0:
            data = f.read(min(chunk, remaining))
            if not data:
                raise OSError(f"{item.path} is shorter than its size")
            remaining -= len(data)
            buf += _pdv(context_id, 0x00 if remaining > 0 else 0x02, data)  # data set; last fragment
            buf += data
            if len(buf) >= _SEND_BATCH:
                sock.sendall(buf)
                buf.clear()
    if buf:
        sock.sendall(buf)
    _cx_id, rsp = assoc.dimse.get_msg(block=True)
    if rsp is None:
        assoc._handle_no_response()
        return Dataset()
    return assoc._check_received_status(rsp)


C_FIND_RSP = 0x8020
C_GET_RSP = 0x8010
C_MOVE_RSP = 0x8021


def send_response_direct(assoc: Association, context_id: int, command_field: int, sop_class_uid: str,
                         msg_id: int, status: int, dataset: bytes | None, *, comment: str = "",
                         counts: tuple[int | None, int | None, int | None, int | None] | None = None) -> None:
    """Write a C-FIND/C-GET/C-MOVE response (PS3.7 9.3.2.2, 9.3.3.2, 9.3.4.2) straight to the socket.

    ``counts`` are the Number of Remaining, Completed, Failed and Warning Sub-operations (None
    leaves one out); ``dataset`` the encoded identifier. Same rules as
    :func:`send_c_store_direct`: the calling thread must be the association's only writer.
    """
    parts = [
        _command_element(0x0002, _padded(sop_class_uid, b"\0")),
        _command_element(0x0100, command_field.to_bytes(2, "little")),
        _command_element(0x0120, (msg_id & 0xFFFF).to_bytes(2, "little")),
        _command_element(0x0800, (0x0101 if dataset is None else 0x0000).to_bytes(2, "little")),
        _command_element(0x0900, status.to_bytes(2, "little")),
    ]
    if comment:
        text = comment[:64].encode("ascii", "replace")
        parts.append(_command_element(0x0902, text + b" " if len(text) % 2 else text))
    for element, value in zip((0x1020, 0x1021, 0x1022, 0x1023), counts or (), strict=False):
        if value is not None:
            parts.append(_command_element(element, (value & 0xFFFF).to_bytes(2, "little")))
    body = b"".join(parts)
    command = _command_element(0x0000, len(body).to_bytes(4, "little")) + body
    out = bytearray(_pdv(context_id, 0x03, command) + command)
    if dataset is not None:
        max_pdu = int(assoc.dimse.maximum_pdu_size or 0)
        chunk = max_pdu - 6 if max_pdu else _SEND_BATCH
        view = memoryview(dataset)
        for start in range(0, len(view), chunk):
            piece = view[start:start + chunk]
            out += _pdv(context_id, 0x02 if start + chunk >= len(view) else 0x00, piece)
            out += piece
    _socket_of(assoc).sendall(out)


def _store_one(
    settings: Settings, assoc: Association, node: Node, item: SendItem, report: SendReport, msg_id: int,
    originator: tuple[str, int] | None = None,
) -> tuple[int | None, str]:
    accepted = _accepted(assoc, item.sop_class_uid)
    move_kw: dict[str, Any] = {}
    if originator is not None:
        move_kw = {"originator_aet": originator[0], "originator_id": originator[1]}
    try:
        if item.transfer_syntax_uid in accepted:
            cx = accepted[item.transfer_syntax_uid]
            response = send_c_store_direct(assoc, cx, item, msg_id, originator)
        else:
            plain = [ts for ts in UNCOMPRESSED if ts in accepted]
            if not plain:
                report.failed += 1
                name = UID(item.sop_class_uid).name
                return None, (
                    f"{node.name} accepted no presentation context for {name} "
                    f"({UID(item.transfer_syntax_uid).name} or uncompressed): "
                    "it does not store this kind of object"
                )
            if UID(item.transfer_syntax_uid).is_compressed:
                # The same instance, decoded frame by frame behind the renderer's guards, in its
                # worker processes (a codec fed a corrupt stream may loop, allocate or crash).
                ds = render.decompressed(item.path)
            else:
                ds = pydicom.dcmread(item.path)
            report.transcoded += 1
            response = assoc.send_c_store(ds, msg_id=msg_id, **move_kw)
    except RenderError as exc:
        report.failed += 1
        return None, f"Cannot send this instance: {exc.message}"
    except (OSError, ValueError, AttributeError, NotImplementedError, RuntimeError) as exc:
        report.failed += 1
        return None, f"Cannot send this instance: {type(exc).__name__}: {exc}"
    if response is None or "Status" not in response:
        report.failed += 1
        return None, (
            f"No answer from {node.name} within {settings['dicom.dimse_timeout']:g} s "
            "or the association was aborted"
        )
    code = int(response.Status)
    comment = str(response.get("ErrorComment", "") or "")
    if code == SUCCESS or code in STORE_WARNINGS:
        report.sent += 1
        report.bytes_sent += item.size
        if code != SUCCESS:
            report.warnings += 1
            return code, f"Warning 0x{code:04X}" + (f": {comment}" if comment else "")
        return code, ""
    report.failed += 1
    return code, status_message(code, "store", node, comment=comment)


# -- connectivity test ----------------------------------------------------------------------


def connectivity_test(settings: Settings, node: Node, *, our_port: int | None = None) -> list[dict[str, Any]]:
    """Outgoing C-ECHO, a C-FIND probe, and a C-MOVE of one small result to ourselves.

    The C-MOVE proves that ``node`` has our AE title declared with the right address (the most
    common Query/Retrieve set-up mistake). It stores the moved instance here.

    Returns
    -------
    list of dict
        One step each: ``name``, ``ok`` (True, False, or None when skipped), ``message``, ``ms``.
    """
    steps: list[dict[str, Any]] = []

    def step(name: str, fn: Callable[[], str]) -> bool:
        started = time.perf_counter()
        try:
            message, ok = fn(), True
        except RemoteError as exc:
            message, ok = exc.message, False
        steps.append(
            {
                "name": name,
                "ok": ok,
                "message": message,
                "ms": round((time.perf_counter() - started) * 1000, 1),
            }
        )
        return ok

    found: dict[str, Any] = {}

    def do_echo() -> str:
        return f"{node.name} answered in {echo(settings, node)['rtt_ms']} ms"

    def do_find() -> str:
        studies = unique_keys(settings, node, "STUDY", {}, limit=1)
        if studies:
            found["study"] = studies[0]
            return "C-FIND answered with at least one study"
        return "C-FIND answered: the remote node holds no study"

    def do_move() -> str:
        keys = _probe_instance(settings, node, found.get("study", ""))
        if keys is None:
            # Nothing to move: a move of a study that does not exist still checks the destination.
            report = move(
                settings,
                node,
                "STUDY",
                {"StudyInstanceUID": "1.2.826.0.1.3680043.10.1024.0"},
                our_port=our_port,
            )
            return (
                f"C-MOVE to {settings['dicom.aet']} accepted (the remote node had nothing to send, "
                f"final status 0x{report.status:04X})"
            )
        report = move(settings, node, "IMAGE", keys, our_port=our_port)
        if report.completed:
            return (
                f"{node.name} sent one instance to {settings['dicom.aet']}: it knows our AE title "
                "and can reach our DICOM port"
            )
        raise RemoteError(
            f"{node.name} accepted the C-MOVE but could not send the instance to us "
            f"({report.failed} failed, status 0x{report.status:04X}): check the address "
            f"and port it has for {settings['dicom.aet']} and that a firewall lets it in "
            f"(we are at {local_address(node.host)}:{our_port or settings['dicom.port']})",
            code="move_failed",
        )

    if not step("C-ECHO", do_echo):
        steps += [
            {"name": n, "ok": None, "message": "skipped: the C-ECHO failed", "ms": 0}
            for n in ("C-FIND", "C-MOVE to us")
        ]
        return steps
    step("C-FIND", do_find)
    step("C-MOVE to us", do_move)
    return steps


def unique_keys(settings: Settings, node: Node, level: str, keys: dict[str, Any], *, limit: int) -> list[str]:
    """The unique keys of what matches ``keys`` at ``level`` (a study's SeriesInstanceUIDs...), by C-FIND."""
    unique = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}[level]
    answers = find(settings, node, level, keys, return_keys=[unique], limit=limit)["answers"]
    return [a[unique] for a in answers if a.get(unique)]


def _probe_instance(settings: Settings, node: Node, study_uid: str) -> dict[str, str] | None:
    """The unique keys of one instance of ``study_uid``, found by C-FIND, or ``None``."""
    keys = {"StudyInstanceUID": study_uid}
    for level, key in (("SERIES", "SeriesInstanceUID"), ("IMAGE", "SOPInstanceUID")):
        found = unique_keys(settings, node, level, keys, limit=1) if study_uid else []
        if not found:
            return None
        keys[key] = found[0]
    return keys
