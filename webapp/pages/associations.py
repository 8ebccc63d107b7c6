"""The association log: every inbound association and operation, accepted or refused and why.

Reads the AssociationEvent table the DICOM service writes; the list refreshes itself while it
shows the newest rows. A refused unknown AE title links to the modalities page's add form,
pre-filled with its AE title and address. The DICOM service prunes old rows
(``[dicom] association_log_days`` and ``association_log_rows``); the page only reads.
"""
from __future__ import annotations

import zlib
from typing import Any

from flask import Blueprint
from flask import jsonify
from flask import request
from flask.typing import ResponseReturnValue

from dicomnode import peers
from dicomnode.archive import query
from dicomnode.net import assoclog
from webapp.htmx import is_htmx
from webapp.htmx import render
from webapp.services import services
from webapp.urls import args_with

bp = Blueprint("associations", __name__)

PER_PAGE = (25, 50, 100, 200)
#: Seconds between two refreshes of the newest rows.
REFRESH = 3


def _int_arg(name: str, default: int) -> int:
    try:
        return max(1, int(request.args.get(name, default)))
    except ValueError:
        return default


def _page(filters: assoclog.Filters, per: int) -> query.Page:
    q: Any = assoclog.select(filters)  # paginate takes any model's query
    return query.paginate(q, _int_arg("page", 1), per, q.count())


@bp.route("/associations")
def associations() -> ResponseReturnValue:
    """The association log, newest first: time, calling and called AE, address, operation,
    accepted or refused with the reason in plain language, instances stored and duration."""
    settings = services().settings
    filters = assoclog.Filters.from_args(request.args)
    per = _int_arg("per", 50)
    if per not in PER_PAGE:
        per = 50
    page = _page(filters, per)
    live = page.number == 1 and request.args.get("live") != "0"
    known = {n.aet.strip(): n for n in peers.MODALITIES.all(settings)}
    # What the list shows: its newest row, how many match, and the declared AE titles (a
    # refused unknown AE's button turns into "since declared" once it is added).
    declared = zlib.crc32(" ".join(sorted(known)).encode())
    seen = f"{page.rows[0].pk if page.rows else 0}:{page.total}:{declared}"
    if live and is_htmx() and request.headers.get("X-Log-Seen") == seen:
        return "", 204, {"Vary": "HX-Request"}  # the live list already shows this
    return render(
        "associations/associations.html",
        "associations/_list.html",
        results=page,
        filters=filters,
        form=request.args,
        per=per,
        per_choices=PER_PAGE,
        args_with=args_with,
        explain=lambda row: assoclog.explain(row, settings),
        known=known,
        live=live,
        seen=seen,
        refresh=REFRESH,
        operations=assoclog.LOGGED_OPERATIONS,
        operation_labels=assoclog.OPERATION_LABELS,
        unknown_aet=settings["dicom.unknown_aet"],
        keep_days=settings["dicom.association_log_days"],
        keep_rows=settings["dicom.association_log_rows"],
    )


@bp.route("/api/associations")
def api_associations() -> ResponseReturnValue:
    """The association log as JSON, newest first; the page's filters and ``page``/``per``
    (at most 1000); the number of matching rows in ``X-Total-Count``."""
    settings = services().settings
    filters = assoclog.Filters.from_args(request.args)
    page = _page(filters, min(_int_arg("per", 100), 1000))
    response = jsonify([assoclog.as_dict(row, settings) for row in page.rows])
    response.headers["X-Total-Count"] = str(page.total)
    return response
