"""C-STORE to a remote node: the instances of a send job, or the sub-operations of a C-MOVE/C-GET we serve."""

from __future__ import annotations

import logging
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom import build_context
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from dicomnode import render
from dicomnode.config import Settings
from dicomnode.errors import DolmenError
from dicomnode.errors import RemoteError
from dicomnode.errors import RenderError
from dicomnode.net.connect import MAX_CONTEXTS
from dicomnode.net.connect import UNCOMPRESSED
from dicomnode.net.connect import associate
from dicomnode.net.connect import status_message
from dicomnode.net.wire import SendItem
from dicomnode.net.wire import StoreStatus
from dicomnode.net.wire import _reactor_held
from dicomnode.net.wire import _store_responses_decoded_here
from dicomnode.net.wire import responses_read_here
from dicomnode.net.wire import send_c_store_direct
from dicomnode.net.wire import stop_reading_here
from dicomnode.peers import Node
from dicomnode.status import STORE_WARNINGS
from dicomnode.status import SUCCESS

LOGGER = logging.getLogger(__name__)

# -- C-STORE (send) -------------------------------------------------------------------------


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
    with _store_responses_decoded_here(assoc), responses_read_here(assoc):
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



def _store_one(
    settings: Settings, assoc: Association, node: Node, item: SendItem, report: SendReport, msg_id: int,
    originator: tuple[str, int] | None = None,
) -> tuple[int | None, str]:
    accepted = _accepted(assoc, item.sop_class_uid)
    move_kw: dict[str, Any] = {}
    if originator is not None:
        move_kw = {"originator_aet": originator[0], "originator_id": originator[1]}
    try:
        item = item.local()
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
            stop_reading_here(assoc)  # pynetdicom's path: its DUL thread reads the response
            status = assoc.send_c_store(ds, msg_id=msg_id, **move_kw)
            response = StoreStatus.of(status) if "Status" in status else StoreStatus(None)
    except (RenderError, DolmenError) as exc:
        report.failed += 1
        return None, f"Cannot send this instance: {exc.message}"
    except (OSError, ValueError, AttributeError, NotImplementedError, RuntimeError) as exc:
        report.failed += 1
        return None, f"Cannot send this instance: {type(exc).__name__}: {exc}"
    if response.Status is None:
        report.failed += 1
        return None, (
            f"No answer from {node.name} within {settings['dicom.dimse_timeout']:g} s "
            "or the association was aborted"
        )
    code = response.Status
    comment = response.ErrorComment
    if code == SUCCESS or code in STORE_WARNINGS:
        report.sent += 1
        report.bytes_sent += item.size
        if code != SUCCESS:
            report.warnings += 1
            return code, f"Warning 0x{code:04X}" + (f": {comment}" if comment else "")
        return code, ""
    report.failed += 1
    return code, status_message(code, "store", node, comment=comment)


