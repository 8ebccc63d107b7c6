"""The Anonymize… and Modify… forms of the patient, study and series pages, and the export journal.

The form posts to the address Orthanc's REST API uses (``/studies/{id}/anonymize``): a browser
gets this page (``webapp.api.rest`` routes only programs there). *Preview changes* shows the dry
run's table (every element that would change, before and after); *Anonymize* / *Modify* runs it
as a job in the DICOM service and goes to the job's page, which links to the result.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint
from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask.typing import ResponseReturnValue

from dicomnode.anonymize import run as runner
from dicomnode.anonymize.profile import OPTIONS
from dicomnode.anonymize.profile import PlanError
from dicomnode.anonymize.profile import plan_for
from dicomnode.archive import orthanc
from dicomnode.archive import resources
from dicomnode.archive.index import Export
from dicomnode.errors import DolmenError
from webapp.services import services
from webapp.services import settings

bp = Blueprint("modify", __name__)

SEGMENT_TYPES = {"patients": "Patient", "studies": "Study", "series": "Series"}
#: The options in the form, with a line each saying what they keep.
OPTION_HELP = {
    "RetainLongitudinalTemporalInformation": "keep dates and times as they are",
    "RetainLongitudinalTemporalInformationModifiedDates": "keep the intervals, dates cleaned",
    "RetainPatientCharacteristics": "keep sex, age, size, weight, smoking and pregnancy status",
    "RetainDeviceIdentity": "keep device serial numbers, station names, device UIDs",
    "RetainInstitutionIdentity": "keep institution names and addresses",
    "RetainUIDs": "keep Study, Series, SOP and Frame of Reference UIDs",
    "RetainSafePrivate": "keep the private blocks of [anonymize] safe_private_creators",
    "CleanDescriptors": "keep study, series and protocol descriptions, the patient's names struck out",
    "CleanStructuredContent": "keep structured report content, cleaned",
    "CleanGraphics": "keep graphic annotations and overlays",
}


def _split(text: str) -> list[str]:
    return [t for t in text.replace(",", " ").split() if t]


def body_from_form(kind: str, form: Any) -> dict[str, Any]:
    """The Orthanc body a filled-in form stands for."""
    body: dict[str, Any] = {}
    replace: dict[str, str] = {}
    for n, line in enumerate(form.get("replace", "").splitlines(), 1):
        if not line.strip():
            continue
        if "=" not in line:
            raise PlanError(f"Replace, line {n}: write Tag = value (e.g. StudyDescription = Research copy)")
        tag, value = line.split("=", 1)
        replace[tag.strip()] = value.strip()
    if replace:
        body["Replace"] = replace
    for key, field in (("Keep", "keep"), ("Remove", "remove")):
        tags = _split(form.get(field, ""))
        if tags:
            body[key] = tags
    if kind == "anonymize":
        options = [o for o in OPTIONS if form.get(f"opt-{o}")]
        if options:
            body["Options"] = options
        if form.get("profile"):
            body["Profile"] = form["profile"]
    if form.get("keep_private"):
        body["KeepPrivateTags"] = True
    if form.get("force"):
        body["Force"] = True
    if not form.get("keep_source"):
        body["KeepSource"] = False
    return body


def _resource(segment: str, public_id: str) -> tuple[str, Any]:
    resource_type = SEGMENT_TYPES[segment]
    return resource_type, resources.get(resource_type.lower(), public_id)


@bp.route("/<any(patients, studies, series):segment>/<public_id>/<any(anonymize, modify):kind>",
          methods=["GET", "POST"])
def form(segment: str, public_id: str, kind: str) -> ResponseReturnValue:
    resource_type, row = _resource(segment, public_id)
    values = request.form if request.method == "POST" else {"keep_source": "1"}
    preview = None
    error = None
    if request.method == "POST":
        try:
            body = body_from_form(kind, request.form)
            plan = plan_for(settings(), body, kind, resource_type)
            if request.form.get("action") == "preview":
                preview = runner.dry_run(plan, resource_type, public_id, services().store)
            else:
                from webapp.pages.auth import current_user

                who = current_user() or request.remote_addr or ""
                params = {"body": body, "level": resource_type, "id": public_id, "user": who}
                job_id = services().control.call(
                    "job_submit", kind=kind, target=resource_type.lower(), params=params,
                    description=f"{kind.capitalize()} {resource_type.lower()} {_title(resource_type, row)}"[:255])["job"]
                flash(f"{kind.capitalize()} started: the result is linked from this page when it is done.", "ok")
                return redirect(url_for("jobs.job", job_id=job_id), code=303)
        except DolmenError as exc:
            error = exc.message
    status = 400 if error else 200
    return render_template(
        "modify/form.html", kind=kind, segment=segment, level=resource_type.lower(), resource_type=resource_type,
        row=row, title=_title(resource_type, row), values=values, preview=preview, error=error,
        options=OPTION_HELP, profiles=sorted(settings().anonymize_profiles),
        back=url_for(f"browse.{resource_type.lower()}", public_id=public_id)), status


def _title(resource_type: str, row: Any) -> str:
    if resource_type == "Patient":
        return f"{row.patient_name or '(no name)'} ({row.patient_id})"
    if resource_type == "Study":
        return f"{row.study_description or '(no description)'} {row.study_date or ''}".strip()
    return f"{row.modality or ''} {row.series_description or '(no description)'}".strip()


@bp.route("/exports")
def journal() -> ResponseReturnValue:
    """The export journal: who anonymized or modified what, when, and what came of it."""
    rows = list(Export.select().order_by(Export.pk.desc()).limit(200))
    links = {}
    for entry in rows:
        for public_id in (entry.source_id, entry.result_id):
            if public_id and public_id not in links:
                model = orthanc.MODEL.get(entry.level)
                if model is not None and model.get_or_none(model.public_id == public_id) is not None:
                    links[public_id] = url_for(f"browse.{entry.level.lower()}", public_id=public_id)
    return render_template("modify/journal.html", rows=rows, links=links)
