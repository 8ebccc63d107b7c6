"""Query/Retrieve against remote nodes, and the modalities they are declared as.

Every network operation is asked of the sidecar over the control socket: ``find`` answers
at once (capped), ``move``/``get``/``send`` start a job and answer its id.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from flask import abort
from flask import redirect
from flask import request
from flask import url_for
from flask.typing import ResponseReturnValue

from dicomnode import peers
from dicomnode.archive.resources import presence
from dicomnode.config import OPERATIONS
from dicomnode.errors import DolmenError
from webapp.htmx import render
from webapp.present import local_url
from webapp.present import sop_class_name
from webapp.present import started
from webapp.search import DICOM_LEVEL
from webapp.search import FILTERS
from webapp.search import LABELS
from webapp.search import LEVELS
from webapp.search import PRESETS
from webapp.search import query_filters
from webapp.services import services
from webapp.services import settings

bp = Blueprint("qr", __name__)

FIND_LIMIT = 200


# -- helpers --------------------------------------------------------------------------------


def _context() -> dict[str, Any]:
    svc = services()
    return {"modalities": peers.MODALITIES.all(svc.settings), "our_aet": svc.settings["dicom.aet"]}


# -- Query/Retrieve -------------------------------------------------------------------------


@bp.route("/query")
def query() -> ResponseReturnValue:
    """The Query/Retrieve page: a form, and the remote node's answers when a modality is chosen."""
    args = request.args
    level = args.get("level", "study")
    if level not in LEVELS:
        level = "study"
    ctx = _context()
    name = args.get("modality", "")
    if not name and len(ctx["modalities"]) == 1:
        name = ctx["modalities"][0].name
    filters = query_filters(level, args)
    result: dict[str, Any] | None = None
    error = ""
    rows: list[dict[str, Any]] = []
    if name and args.get("run", "1") != "0" and "modality" in args:
        try:
            node = peers.MODALITIES.get(settings(), name)
            result = services().control.call(
                "find", modality=node.name, level=DICOM_LEVEL[level], filters=filters, limit=FIND_LIMIT
            )
            answers = result["answers"]
            rows = [{"answer": a, "here": h} for a, h in zip(answers, presence(level, answers), strict=True)]
        except DolmenError as exc:
            error = exc.message
    return render(
        "qr/query.html",
        "qr/_results.html",
        level=level,
        levels=LEVELS,
        args=args,
        modality=name,
        filters=filters,
        field_names=FILTERS[level],
        labels=LABELS,
        presets=PRESETS,
        result=result,
        rows=rows,
        error=error,
        limit=FIND_LIMIT,
        trail=args.get("trail", "")[:300],
        sop_class_name=sop_class_name,
        local_url=local_url,
        **ctx,
    )


@bp.route("/query/retrieve", methods=["POST"])
def retrieve() -> ResponseReturnValue:
    """Start a C-MOVE or C-GET job for one result row; the job's progress, or its page."""
    form = request.form
    method = form.get("method", "move")
    if method not in ("move", "get"):
        abort(400)
    level = form.get("level", "study")
    if level not in LEVELS:
        abort(400)
    keys = {
        k: form[k]
        for k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
        if form.get(k)
    }
    args: dict[str, Any] = {
        "modality": form.get("modality", ""),
        "level": DICOM_LEVEL[level],
        "keys": keys,
        "missing_only": bool(form.get("missing_only")),
        "description": form.get("description", "")[:255],
    }
    if method == "move":
        args["destination"] = form.get("destination", "").strip() or settings()["dicom.aet"]
    sop_classes = [c for c in form.get("sop_classes", "").split("\\") if c]
    if sop_classes:
        args["sop_classes"] = sop_classes
    return started(services().control.call(method, **args)["job"])


# -- modalities -----------------------------------------------------------------------------


@bp.route("/modalities")
def modalities() -> ResponseReturnValue:
    """The remote nodes: from the configuration (read-only) and added here."""
    return render("qr/modalities.html", "qr/modalities.html", **_context())


def _form_fields() -> dict[str, Any]:
    form = request.form
    port = form.get("port", "").strip()
    return {
        "name": form.get("name", "").strip(),
        "aet": form.get("aet", ""),
        "host": form.get("host", "").strip(),
        "port": int(port) if port.isdigit() else port,
        "allow": form.getlist("allow"),
        "description": form.get("description", "").strip(),
        "fallback_get": bool(form.get("fallback_get")),
        "tls": bool(form.get("tls")),
    }


def _modality_form(
    fields: dict[str, Any], problems: dict[str, str], original: str | None, status: int = 200
) -> ResponseReturnValue:
    return render(
        "qr/modality_form.html",
        "qr/modality_form.html",
        http_status=status,
        fields=fields,
        problems=problems,
        original=original,
        operations=OPERATIONS,
        **_context(),
    )


@bp.route("/modalities/new", methods=["GET", "POST"])
def modality_new() -> ResponseReturnValue:
    """Add a node; ``?aet=&host=&port=&name=`` prefill the form (links from the association log)."""
    if request.method == "POST":
        fields = _form_fields()
        problems = peers.check_node(settings(), fields)
        if problems:
            return _modality_form(fields, problems, None, 400)
        peers.MODALITIES.save(settings(), fields)
        return redirect(url_for("qr.modalities"), code=303)
    args = request.args
    aet = args.get("aet", "").strip()
    port = args.get("port", "104")
    fields = {
        "name": args.get("name", aet.lower().replace(" ", "-")),
        "aet": aet,
        "host": args.get("host", ""),
        "port": int(port) if port.isdigit() else 104,
        "allow": list(OPERATIONS),
        "description": "",
        "fallback_get": False,
        "tls": False,
    }
    return _modality_form(fields, {}, None)


@bp.route("/modalities/<name>/edit", methods=["GET", "POST"])
def modality_edit(name: str) -> ResponseReturnValue:
    """Edit a node added in this page."""
    node = peers.MODALITIES.get(settings(), name)
    if node.origin == "config":
        raise DolmenError(
            f"{name!r} is declared in the configuration file; change it there", code="read_only"
        )
    if request.method == "POST":
        fields = _form_fields()
        problems = peers.check_node(settings(), fields, original=name)
        if problems:
            return _modality_form(fields, problems, name, 400)
        peers.MODALITIES.save(settings(), fields, original=name)
        return redirect(url_for("qr.modalities"), code=303)
    fields = {
        "name": node.name,
        "aet": node.aet,
        "host": node.host,
        "port": node.port,
        "allow": list(node.allow),
        "description": node.description,
        "fallback_get": node.fallback_get,
        "tls": node.tls,
    }
    return _modality_form(fields, {}, name)


@bp.route("/modalities/<name>/delete", methods=["POST"])
def modality_delete(name: str) -> ResponseReturnValue:
    """Remove a node added in this page."""
    peers.MODALITIES.delete(settings(), name)
    return redirect(url_for("qr.modalities"), code=303)


@bp.route("/modalities/<name>/echo", methods=["POST"])
def modality_echo(name: str) -> ResponseReturnValue:
    """C-ECHO the node: the round-trip time, or the precise reason it failed."""
    node = peers.MODALITIES.get(settings(), name)
    try:
        result, error = services().control.call("echo", modality=node.name), ""
    except DolmenError as exc:
        result, error = None, exc.message
    return render("qr/echo.html", "qr/_echo.html", node=node, result=result, error=error)


@bp.route("/query/echo", methods=["POST"])
def echo() -> ResponseReturnValue:
    """C-ECHO the modality chosen in the Query/Retrieve form."""
    return modality_echo(request.form.get("modality", ""))


@bp.route("/modalities/<name>/test", methods=["POST"])
def modality_test(name: str) -> ResponseReturnValue:
    """Two-way connectivity test: C-ECHO, a C-FIND probe, a C-MOVE of one instance to us."""
    node = peers.MODALITIES.get(settings(), name)
    try:
        steps = services().control.call("connectivity_test", timeout=300, modality=node.name)["steps"]
        error = ""
    except DolmenError as exc:
        steps, error = [], exc.message
    return render(
        "qr/test.html", "qr/_test.html", node=node, steps=steps, error=error, our_aet=settings()["dicom.aet"]
    )


@bp.app_context_processor
def _send_targets() -> dict[str, Any]:
    """``send_targets()`` for the "Send to modality" form that the browse pages include."""

    def send_targets() -> list[peers.Node]:
        return peers.MODALITIES.all(settings())

    return {"send_targets": send_targets}
