"""Query/Retrieve against remote nodes, and the modalities they are declared as.

Every network operation is asked of the sidecar over the control socket: ``find`` answers
at once (capped), ``move``/``get``/``send`` start a job and answer its id.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint
from flask import abort
from flask import current_app
from flask import redirect
from flask import request
from flask import url_for
from flask.typing import ResponseReturnValue
from pydicom.uid import UID

from dicomnode import peers
from dicomnode.archive.index import Instance
from dicomnode.archive.index import Patient
from dicomnode.archive.index import Series
from dicomnode.archive.index import Study
from dicomnode.config import OPERATIONS
from dicomnode.errors import DolmenError
from webapp.htmx import is_htmx
from webapp.htmx import render
from webapp.services import services
from webapp.services import settings

bp = Blueprint("qr", __name__)

LEVELS = ("patient", "study", "series", "instance")
#: The C-FIND level of each page level.
DICOM_LEVEL = {"patient": "PATIENT", "study": "STUDY", "series": "SERIES", "instance": "IMAGE"}
#: Text filters of the form, by level (DICOM keywords; dates are handled apart).
FILTERS = {
    "patient": ("PatientName", "PatientID"),
    "study": (
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "StudyDescription",
        "ModalitiesInStudy",
        "StudyInstanceUID",
    ),
    "series": (
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "StudyInstanceUID",
        "ModalitiesInStudy",
        "SeriesDescription",
    ),
    "instance": ("StudyInstanceUID", "SeriesInstanceUID"),
}
LABELS = {
    "PatientName": "Patient name",
    "PatientID": "Patient ID",
    "AccessionNumber": "Accession number",
    "StudyDescription": "Study description",
    "ModalitiesInStudy": "Modality",
    "SeriesDescription": "Series description",
    "StudyInstanceUID": "Study Instance UID",
    "SeriesInstanceUID": "Series Instance UID",
}
PRESETS = (
    ("", "Any date"),
    ("today", "Today"),
    ("yesterday", "Yesterday"),
    ("week", "Last 7 days"),
    ("month", "Last 30 days"),
    ("year", "Last 365 days"),
    ("custom", "Between…"),
)
FIND_LIMIT = 200
#: What "already here" compares, by level: the remote count attribute.
REMOTE_COUNT = {
    "patient": "NumberOfPatientRelatedInstances",
    "study": "NumberOfStudyRelatedInstances",
    "series": "NumberOfSeriesRelatedInstances",
}


# -- helpers --------------------------------------------------------------------------------


def _dicom_date(value: str) -> str:
    """``2024-03-01`` (an HTML date input) or ``20240301`` -> ``20240301``; anything else -> ''."""
    digits = value.replace("-", "").strip()
    return digits if len(digits) == 8 and digits.isdigit() else ""


def date_range(preset: str, start: str, end: str, today: dt.date | None = None) -> str:
    """The (0008,0020) *Study Date* range matching value for a preset or a custom range ('' = any)."""
    today = today or dt.date.today()
    days = {"today": 0, "yesterday": 1, "week": 6, "month": 29, "year": 364}
    if preset in days:
        first = today - dt.timedelta(days=days[preset])
        last = first if preset == "yesterday" else today
        return f"{first:%Y%m%d}-{last:%Y%m%d}" if first != last else f"{first:%Y%m%d}"
    start, end = _dicom_date(start), _dicom_date(end)
    if start and end and start == end:
        return start
    return f"{start}-{end}" if start or end else ""


def query_filters(level: str, args: Any) -> dict[str, str]:
    """The C-FIND matching keys for the form's fields at ``level``."""
    filters: dict[str, str] = {}
    for key in FILTERS[level]:
        value = str(args.get(key, "")).strip()
        if value:
            filters["Modality" if key == "ModalitiesInStudy" and level == "series" else key] = value
    if level in ("study", "series"):
        dates = date_range(args.get("preset", ""), args.get("date_from", ""), args.get("date_to", ""))
        if dates:
            filters["StudyDate"] = dates
    return filters


def _count(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def presence(level: str, answers: list[dict[str, str]]) -> list[dict[str, Any]]:
    """For each answer, what of it is already here: ``state`` (none, partial, complete, here),
    ``local`` and ``remote`` instance counts, and the local resource's ``public_id``."""
    if level == "patient":
        key, model, field = "PatientID", Patient, Patient.patient_id
    elif level == "study":
        key, model, field = "StudyInstanceUID", Study, Study.study_instance_uid
    elif level == "series":
        key, model, field = "SeriesInstanceUID", Series, Series.series_instance_uid
    else:
        key, model, field = "SOPInstanceUID", Instance, Instance.sop_instance_uid
    values = list({a.get(key, "") for a in answers if a.get(key)})
    local: dict[str, tuple[int, str]] = {}
    for n in range(0, len(values), 500):
        count_field = model.num_instances if model is not Instance else None
        columns = [field, model.public_id] + ([count_field] if count_field is not None else [])
        for row in model.select(*columns).where(field.in_(values[n : n + 500])).tuples():
            count = int(row[2]) if count_field is not None else 1
            previous = local.get(row[0], (0, row[1]))
            local[row[0]] = (previous[0] + count, previous[1])
    out = []
    for answer in answers:
        here, public_id = local.get(answer.get(key, ""), (0, ""))
        remote = _count(answer.get(REMOTE_COUNT.get(level, ""), "")) if level != "instance" else 1
        if not here:
            state = "none"
        elif remote is None:
            state = "here"
        elif here >= remote:
            state = "complete"
        else:
            state = "partial"
        out.append({"state": state, "local": here, "remote": remote, "public_id": public_id})
    return out


def local_url(level: str, public_id: str) -> str | None:
    """The local page of a resource, when the browse pages are there."""
    endpoint = f"browse.{level}"
    rules = list(current_app.url_map.iter_rules(endpoint)) if endpoint in current_app.view_functions else []
    for rule in rules:
        if len(rule.arguments) == 1:
            return url_for(endpoint, **{next(iter(rule.arguments)): public_id})
    return None


def sop_class_name(uid: str) -> str:
    """A SOP class's name, or the UID when pydicom does not know it."""
    try:
        name = UID(uid).name
    except Exception:
        return uid
    return name or uid


def _context() -> dict[str, Any]:
    svc = services()
    return {"modalities": peers.all_nodes(svc.settings), "our_aet": svc.settings["dicom.aet"]}


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
            node = peers.get_node(settings(), name)
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


def started(job_id: int) -> ResponseReturnValue:
    """After starting a job: its live progress for htmx, else its page."""
    if is_htmx():
        from webapp.pages.jobs import progress_fragment

        return progress_fragment(job_id)
    return redirect(url_for("jobs.job", job_id=job_id), code=303)


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
        peers.save_node(settings(), fields)
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
    }
    return _modality_form(fields, {}, None)


@bp.route("/modalities/<name>/edit", methods=["GET", "POST"])
def modality_edit(name: str) -> ResponseReturnValue:
    """Edit a node added in this page."""
    node = peers.get_node(settings(), name)
    if node.origin == "config":
        raise DolmenError(
            f"{name!r} is declared in the configuration file; change it there", code="read_only"
        )
    if request.method == "POST":
        fields = _form_fields()
        problems = peers.check_node(settings(), fields, original=name)
        if problems:
            return _modality_form(fields, problems, name, 400)
        peers.save_node(settings(), fields, original=name)
        return redirect(url_for("qr.modalities"), code=303)
    fields = {
        "name": node.name,
        "aet": node.aet,
        "host": node.host,
        "port": node.port,
        "allow": list(node.allow),
        "description": node.description,
        "fallback_get": node.fallback_get,
    }
    return _modality_form(fields, {}, name)


@bp.route("/modalities/<name>/delete", methods=["POST"])
def modality_delete(name: str) -> ResponseReturnValue:
    """Remove a node added in this page."""
    peers.delete_node(settings(), name)
    return redirect(url_for("qr.modalities"), code=303)


@bp.route("/modalities/<name>/echo", methods=["POST"])
def modality_echo(name: str) -> ResponseReturnValue:
    """C-ECHO the node: the round-trip time, or the precise reason it failed."""
    node = peers.get_node(settings(), name)
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
    node = peers.get_node(settings(), name)
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
        return peers.all_nodes(settings())

    return {"send_targets": send_targets}
