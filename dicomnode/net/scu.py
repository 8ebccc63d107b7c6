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
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom import StoragePresentationContexts
from pynetdicom import build_context
from pynetdicom import build_role
from pynetdicom import evt
from pynetdicom.association import Association

from dicomnode.config import Settings
from dicomnode.errors import RemoteError
from dicomnode.net.connect import GET_TRANSFER_SYNTAXES
from dicomnode.net.connect import MAX_CONTEXTS
from dicomnode.net.connect import Verification
from dicomnode.net.connect import _status_of
from dicomnode.net.connect import _timed
from dicomnode.net.connect import associate
from dicomnode.net.connect import local_address
from dicomnode.net.connect import status_error
from dicomnode.net.identifiers import RETURN_KEYS
from dicomnode.net.identifiers import _find_model
from dicomnode.net.identifiers import _get_model
from dicomnode.net.identifiers import _hex
from dicomnode.net.identifiers import _level
from dicomnode.net.identifiers import _move_model
from dicomnode.net.identifiers import _require_context
from dicomnode.net.identifiers import answer_dict
from dicomnode.net.identifiers import identifier
from dicomnode.net.identifiers import raw_elements
from dicomnode.peers import Node
from dicomnode.status import CANCEL
from dicomnode.status import PENDING_STATUSES
from dicomnode.status import SUBOPS_WARNING
from dicomnode.status import SUCCESS
from dicomnode.status import UNABLE_TO_PERFORM_SUBOPS

LOGGER = logging.getLogger(__name__)


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
            if code in PENDING_STATUSES:
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
        report.remaining = _counter(status, "Remaining", report.remaining if code in PENDING_STATUSES else 0)
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
        if code in PENDING_STATUSES:
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
        if code == UNABLE_TO_PERFORM_SUBOPS and report.failed and not comment:
            comment = f"all {report.failed} sub-operation(s) failed"
        report.comment = comment
        if code == CANCEL:
            report.cancelled = True
        elif code not in (SUCCESS, SUBOPS_WARNING):
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
