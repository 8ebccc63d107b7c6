"""C-MOVE and C-GET: the matching instances sent with :mod:`dicomnode.net.send` to the move
destination over one association, or back over the requester's; and :class:`RetrieveService`,
the Query/Retrieve service class that routes C-FIND, C-MOVE and C-GET to Dolmen's code."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import association as pynetdicom_association
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dimse_primitives import C_GET
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.dsutils import decode
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import QueryRetrieveServiceClass

from dicomnode import peers
from dicomnode.archive import query
from dicomnode.archive.index import Instance
from dicomnode.archive.index import Series
from dicomnode.errors import DolmenError
from dicomnode.net import send
from dicomnode.net import wire
from dicomnode.net.find import serve_find
from dicomnode.net.service import LEVELS_OF_ROOT
from dicomnode.net.service import QR_MODELS
from dicomnode.net.service import ROOT_NAME
from dicomnode.net.service import Context
from dicomnode.net.service import assoc_peer
from dicomnode.net.service import element_text
from dicomnode.net.service import log_event
from dicomnode.status import CANCEL
from dicomnode.status import DOES_NOT_MATCH_SOP_CLASS
from dicomnode.status import MOVE_DESTINATION_UNKNOWN
from dicomnode.status import NOT_AUTHORIZED
from dicomnode.status import PENDING
from dicomnode.status import STORE_WARNINGS
from dicomnode.status import SUBOPS_WARNING
from dicomnode.status import SUCCESS
from dicomnode.status import UNABLE_TO_PERFORM_SUBOPS
from dicomnode.status import UNABLE_TO_PROCESS

LOGGER = logging.getLogger(__name__)


#: Seconds between two C-MOVE/C-GET pending responses.
PENDING_INTERVAL = 0.1


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
    allowed = LEVELS_OF_ROOT[root]
    if level not in allowed:
        raise DolmenError(f"QueryRetrieveLevel {level or '(missing)'!r}: {ROOT_NAME[root]} has "
                          + ", ".join(allowed), code="identifier_mismatch")
    filters: dict[str, Any] = {}
    for lv in allowed[: allowed.index(level) + 1]:
        keyword = query.UNIQUE_KEY[lv]
        value = element_text(identifier[keyword]) if keyword in identifier else ""
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
    store = ctx.ingestor.store
    if store.shared:  # an object store: each object is fetched when its turn comes
        items = [wire.SendItem(str(row[0]), str(row[1]), str(row[2]), str(row[3]), int(row[4] or 0), store)
                 for row in rows]
    else:
        root = str(store.root)
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
    calling, called, ip = assoc_peer(assoc)
    started = time.monotonic()
    settings = ctx.settings
    name = "C-MOVE" if op == "move" else "C-GET"

    def refuse(status: int, reason: str, comment: str = "") -> None:
        LOGGER.warning("%s from %s at %s refused: %s", name, calling, ip, reason)
        log_event(calling, called, ip, op, False, reason, 0, time.monotonic() - started)
        _respond(service, req, context, status, None, comment=comment or reason)

    refusal = peers.access(settings, calling, ip, op)
    if refusal:
        refuse(NOT_AUTHORIZED, refusal)
        return
    destination: peers.Node | None = None
    if op == "move":
        wanted = str(req.MoveDestination or "").strip()
        found = peers.nodes_with_aet(settings, wanted, cached=True)
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
        status = DOES_NOT_MATCH_SOP_CLASS if exc.code == "identifier_mismatch" else UNABLE_TO_PROCESS
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
        log_event(calling, called, ip, op, True, f"{level} level{target}: requester went away; "
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
    log_event(calling, called, ip, op, True, detail, progress.completed, time.monotonic() - started)


