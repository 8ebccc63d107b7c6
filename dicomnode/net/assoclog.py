"""The association log: reading, explaining and pruning what the DICOM server recorded.

The SCP writes one :class:`~dicomnode.archive.index.AssociationEvent` row per inbound association
(``associate``, when it is released, aborted or rejected) and per refused operation
(``echo``, ``store``, ``find``, ``move``, ``get``). This module selects rows for the
association log page and the ``/api/associations`` endpoint, turns a refusal's reason into a
plain-language sentence and what to do about it, and keeps the table bounded
(``[dicom] association_log_days`` and ``[dicom] association_log_rows``).
"""
from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import peewee

from dicomnode.archive.index import AssociationEvent
from dicomnode.archive.index import utcnow
from dicomnode.archive.index import write_transaction
from dicomnode.archive.query import _wildcard
from dicomnode.config import OPERATIONS
from dicomnode.config import Settings

LOGGER = logging.getLogger(__name__)

#: What a row's ``operation`` can be, in the order the page offers them (``negotiate``: the
#: presentation contexts we declined when an association was accepted).
LOGGED_OPERATIONS = ("associate", "negotiate", *OPERATIONS)

#: How the page names each operation.
OPERATION_LABELS = {
    "associate": "Association",
    "negotiate": "Negotiation",
    "echo": "Echo (C-ECHO)",
    "store": "Store (C-STORE)",
    "find": "Query (C-FIND)",
    "move": "Retrieve (C-MOVE)",
    "get": "Retrieve (C-GET)",
}

#: What each operation asks, as the end of "may not ...".
_VERBS = {
    "associate": "open an association",
    "negotiate": "use what it proposed",
    "echo": "check the connection (C-ECHO)",
    "store": "send us images (C-STORE)",
    "find": "search our archive (C-FIND)",
    "move": "retrieve from us to another node (C-MOVE)",
    "get": "retrieve from us (C-GET)",
}

#: Refusal kinds, recognised in the reason the SCP recorded (first match wins).
_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("unknown_destination", re.compile(r"unknown move destination|move destination \S* ?unknown", re.I)),
    ("unknown_aet", re.compile(r"unknown (calling )?AE", re.I)),
    ("wrong_host", re.compile(r"declared host|wrong host|not from (its|the) (declared )?host", re.I)),
    ("wrong_called_aet", re.compile(r"called AE", re.I)),
    ("no_context", re.compile(r"presentation context|abstract syntax|transfer syntax|SOP class", re.I)),
    ("not_allowed", re.compile(r"not allowed|may not", re.I)),
    ("busy", re.compile(r"too many associations|max(imum)?[_ ]associations|busy", re.I)),
    ("bad_request", re.compile(r"^(bad query|bad identifier|cannot read the identifier)", re.I)),
    ("aborted", re.compile(r"^abort", re.I)),
    ("rejected", re.compile(r"reject", re.I)),
)


@dataclass(frozen=True)
class Explanation:
    """Why a row was refused, for a person: ``kind``, a sentence and what to do ('' if nothing);
    ``add_aet``: the unknown AE title that declaring as a modality would let through."""

    kind: str
    text: str
    hint: str = ""
    add_aet: str = ""


@dataclass(frozen=True)
class Filters:
    """The association log's filters; empty strings match everything.

    ``aet`` matches the calling or the called AE title and ``ip`` the peer's address, both as
    a case-insensitive substring (``*`` and ``?`` are wildcards); ``result`` is ``accepted``
    or ``refused``; ``operation`` one of :data:`LOGGED_OPERATIONS`; ``after`` keeps the rows
    logged after the one with that ID (for a program following the log).
    """

    aet: str = ""
    ip: str = ""
    result: str = ""
    operation: str = ""
    after: int = 0

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> Filters:
        """Filters from a query string; unknown ``result`` and ``operation`` values are ignored."""
        result = args.get("result", "")
        operation = args.get("operation", "")
        after = args.get("after", "").strip()
        return cls(aet=args.get("aet", "").strip()[:64], ip=args.get("ip", "").strip()[:64],
                   result=result if result in ("accepted", "refused") else "",
                   operation=operation if operation in LOGGED_OPERATIONS else "",
                   after=int(after) if after.isdigit() and len(after) < 19 else 0)

    @property
    def active(self) -> bool:
        return bool(self.aet or self.ip or self.result or self.operation or self.after)


def _contains(field: Any, text: str) -> Any:
    return _wildcard(field, text if "*" in text or "?" in text else f"*{text}*", True)


def select(filters: Filters) -> peewee.ModelSelect[AssociationEvent]:
    """The rows matching ``filters``, newest first."""
    q = AssociationEvent.select()
    if filters.aet:
        q = q.where(_contains(AssociationEvent.calling_aet, filters.aet)
                    | _contains(AssociationEvent.called_aet, filters.aet))
    if filters.ip:
        q = q.where(_contains(AssociationEvent.peer_ip, filters.ip))
    if filters.result:
        q = q.where(AssociationEvent.accepted == (filters.result == "accepted"))
    if filters.operation:
        q = q.where(AssociationEvent.operation == filters.operation)
    if filters.after:
        q = q.where(AssociationEvent.pk > filters.after)
    return q.order_by(AssociationEvent.at.desc(), AssociationEvent.pk.desc())


def kind(reason: str) -> str:
    """The kind of refusal a recorded reason describes ('other' when not recognised)."""
    for name, pattern in _KINDS:
        if pattern.search(reason or ""):
            return name
    return "other"


def explain(row: AssociationEvent, settings: Settings) -> Explanation | None:
    """Why ``row`` was refused or cut short, in plain language; ``None`` for an accepted row.

    The sentence is built from the row (what was asked, by whom, from where); only the hints
    name settings, which may have changed since.
    """
    if row.accepted:
        return None
    calling, called, ip = row.calling_aet or "(empty)", row.called_aet, row.peer_ip
    what = _VERBS.get(row.operation, row.operation or "do that")
    ours = settings["dicom.aet"]
    reason_kind = kind(row.reason)
    if reason_kind == "rejected" and settings["dicom.check_called_aet"] and called and called != ours:
        reason_kind = "wrong_called_aet"  # the only reason this server rejects on its own
    if reason_kind == "unknown_destination":
        m = re.search(r"destination '([^']*)'", row.reason or "")
        target = f"“{m.group(1)}”" if m else "an AE title"
        return Explanation(
            reason_kind,
            f"It asked us to send images to {target}, which is not one of our modalities: we send "
            "only to declared nodes, never to an address taken from the request.",
            "Add the destination as a modality with its host and port (often the requester itself).",
            m.group(1).strip() if m else "")
    if reason_kind == "unknown_aet":
        return Explanation(
            reason_kind,
            f"The AE title “{calling}” is not one of our modalities, and unknown AE titles may not {what}.",
            f"Add it as a modality (it may then ask what its record allows), or allow “{row.operation}” "
            "for every unknown AE title in [dicom] unknown_aet.",
            row.calling_aet.strip())
    if reason_kind == "wrong_host":
        return Explanation(
            reason_kind,
            f"“{calling}” is a declared modality, but it called from {ip or 'an unknown address'}, "
            "not from the host it is declared with.",
            "Correct the modality's host in the modalities page, or turn off [dicom] check_calling_host.")
    if reason_kind == "wrong_called_aet":
        return Explanation(
            reason_kind,
            f"It called the AE title “{called}”, but this server is “{ours}”.",
            f"Set the called AE title to {ours} on the remote node, or turn off [dicom] check_called_aet.")
    if reason_kind == "no_context":
        m = re.search(r"presentation contexts? for (.+)", row.reason or "", re.S)
        declined = f": {m.group(1).strip()}" if m else ""
        return Explanation(
            reason_kind,
            f"We declined part of what it proposed (no acceptable presentation context){declined}.",
            "It may still do what else it asked. For a storage class, compare its transfer syntaxes "
            "with [dicom] transfer_syntaxes; other services (worklist, print, ...) Dolmen does not offer.")
    if reason_kind == "not_allowed":
        m = re.search(r"modality '([^']*)'", row.reason or "")
        name = f"the modality “{m.group(1)}”" if m else f"the modality with AE title “{calling}”"
        return Explanation(
            reason_kind, f"It is {name}, whose record does not allow it to {what}.",
            f"Edit the modality and tick “{row.operation}” under “It may ask us”.")
    if reason_kind == "bad_request":
        detail = (row.reason or "").partition(":")[2].strip()
        return Explanation(reason_kind, f"We could not read its request{': ' + detail if detail else ''}.",
                           "The remote node sent a query or identifier we do not understand.")
    if reason_kind == "busy":
        return Explanation(
            reason_kind, "We were serving as many associations as we may at once.",
            "Raise [dicom] max_associations, or have the node retry later.")
    if reason_kind == "aborted":
        return Explanation(
            reason_kind,
            "The association was broken off before a normal release: the remote node or the "
            "network aborted it, it stayed idle too long, or an object was larger than we accept.",
            "The remote node's own log says which; see also [dicom] network_timeout and max_object_mb.")
    if reason_kind == "rejected":
        return Explanation(reason_kind, "We rejected the association during negotiation.",
                           "The DICOM service's log has the details.")
    return Explanation("other", (row.reason or "Refused, with no reason recorded.").strip())


def as_dict(row: AssociationEvent, settings: Settings) -> dict[str, Any]:
    """One row for ``/api/associations``."""
    why = explain(row, settings)
    return {
        "ID": row.pk,
        "Time": row.at.isoformat(timespec="seconds") + "Z",
        "CallingAet": row.calling_aet,
        "CalledAet": row.called_aet,
        "PeerIp": row.peer_ip,
        "Operation": row.operation,
        "Accepted": bool(row.accepted),
        "Reason": row.reason,
        "Kind": why.kind if why else "",
        "Explanation": why.text if why else "",
        "Hint": why.hint if why else "",
        "UnknownAet": why.add_aet if why else "",
        "Count": row.count,
        "Duration": round(float(row.duration or 0.0), 3),
    }


def prune(settings: Settings, now: dt.datetime | None = None) -> int:
    """Delete rows older than ``[dicom] association_log_days`` and beyond the newest
    ``[dicom] association_log_rows``; return how many went."""
    days = settings["dicom.association_log_days"]
    cap = settings["dicom.association_log_rows"]
    cutoff = (now or utcnow()) - dt.timedelta(days=days)
    removed = 0
    with write_transaction():
        removed += AssociationEvent.delete().where(AssociationEvent.at < cutoff).execute()
        # The pk of the oldest row to keep; rows are inserted in time order.
        keep = (AssociationEvent.select(AssociationEvent.pk).order_by(AssociationEvent.pk.desc())
                .offset(cap - 1).limit(1).scalar())
        if keep is not None:
            removed += AssociationEvent.delete().where(AssociationEvent.pk < keep).execute()
    if removed:
        LOGGER.info("Association log: %d old row(s) removed", removed)
    return int(removed)
