"""Jobs: the list, one job's page with its failures and transcript, cancel and retry, and send.

Pages read the Job table directly; starting, cancelling and retrying go to the sidecar. Live
progress is htmx polling that stops when the server answers the element without its trigger
(once the job has ended).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from flask import abort
from flask import jsonify
from flask import make_response
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask.typing import ResponseReturnValue

from dicomnode import jobs as joblib
from dicomnode.archive.index import Instance
from dicomnode.archive.index import Job
from dicomnode.archive.index import Patient
from dicomnode.archive.index import Series
from dicomnode.archive.index import Study
from dicomnode.errors import DolmenError
from dicomnode.errors import NotFound
from webapp.htmx import is_htmx
from webapp.htmx import render
from webapp.services import services

bp = Blueprint("jobs", __name__)

PAGE_SIZE = 100
KIND_LABELS = {
    "send": "Send",
    "move": "Retrieve (C-MOVE)",
    "get": "Retrieve (C-GET)",
    "wado": "DICOMweb retrieve",
    "stow": "DICOMweb send",
}
RESOURCE_LEVELS = ("patient", "study", "series", "instance")


def kind_label(kind: str) -> str:
    """What the list shows for a kind of job."""
    registered = joblib.kinds().get(kind)
    return KIND_LABELS.get(kind) or (registered.label if registered else kind)


def _helpers() -> dict[str, Any]:
    return {
        "percent": joblib.percent,
        "duration": joblib.duration,
        "kind_label": kind_label,
        "active_states": joblib.ACTIVE,
    }


LEVEL_MODELS: dict[str, Any] = {"patient": Patient, "study": Study, "series": Series, "instance": Instance}


def _local_entry(level: str, row: Any) -> dict[str, Any]:
    from webapp.pages.browse import dicom_date
    from webapp.pages.browse import person
    from webapp.pages.qr import local_url

    label = {
        "patient": lambda: f"Patient {person(row.patient_name)} ({row.patient_id})",
        "study": lambda: f"Study {dicom_date(row.study_date)} {row.study_description}",
        "series": lambda: f"Series {row.series_number or ''} {row.series_description}",
        "instance": lambda: f"Instance {row.instance_number or ''}",
    }[level]()
    return {
        "label": " ".join(label.split()),
        "count": getattr(row, "num_instances", 1),
        "url": local_url(level, row.public_id) or "",
    }


def local_resources(job: Job) -> list[dict[str, Any]]:
    """The local resources of a job: what a send sends, what a retrieve brought (or was to bring)."""
    params = joblib.params_of(job)
    if job.kind == "send":
        out = []
        for resource in params.get("resources") or []:
            model = LEVEL_MODELS.get(str(resource.get("level")))
            row = model.get_or_none(model.public_id == str(resource.get("id"))) if model else None
            if row is not None:
                out.append(_local_entry(str(resource["level"]), row))
        return out
    if job.kind == "stow":  # local public ids of any level
        out = []
        for public_id in params.get("resources") or []:
            for level, model in LEVEL_MODELS.items():
                row = model.get_or_none(model.public_id == str(public_id))
                if row is not None:
                    out.append(_local_entry(level, row))
                    break
        return out
    if job.kind == "wado":  # {"Study": uid, "Series": uid, "Instance": uid}
        out = []
        for resource in params.get("resources") or []:
            for level, key, field in (
                ("instance", "Instance", Instance.sop_instance_uid),
                ("series", "Series", Series.series_instance_uid),
                ("study", "Study", Study.study_instance_uid),
            ):
                if isinstance(resource, dict) and resource.get(key):
                    rows = LEVEL_MODELS[level].select().where(field == str(resource[key]))
                    out += [_local_entry(level, row) for row in rows]
                    break
        return out
    if job.kind not in ("move", "get"):
        return []
    keys = params.get("keys") or {}
    for level, key, field in (
        ("series", "SeriesInstanceUID", Series.series_instance_uid),
        ("study", "StudyInstanceUID", Study.study_instance_uid),
        ("patient", "PatientID", Patient.patient_id),
    ):
        if keys.get(key):
            model = LEVEL_MODELS[level]
            return [_local_entry(level, row) for row in model.select().where(field == keys[key])]
    return []


@bp.route("/jobs")
def jobs() -> ResponseReturnValue:
    """Every job, newest first: type, target, state, progress, start, end and duration."""
    state = request.args.get("state", "")
    query = Job.select().order_by(Job.created_at.desc(), Job.pk.desc())
    if state in joblib.STATES:
        query = query.where(Job.state == state)
    elif state == "active":
        query = query.where(Job.state.in_(joblib.ACTIVE))
    rows = list(query.limit(PAGE_SIZE))
    polling = any(j.state in joblib.ACTIVE for j in rows)
    return render(
        "jobs/jobs.html",
        "jobs/_list.html",
        rows=rows,
        state=state,
        states=joblib.STATES,
        polling=polling,
        **_helpers(),
    )


def _job(job_id: int) -> Job:
    return joblib.get(job_id)


@bp.route("/jobs/<int:job_id>")
def job(job_id: int) -> ResponseReturnValue:
    """One job: progress, counters, error, failed instances with the peer's status, transcript."""
    row = _job(job_id)
    details = joblib.details_of(row)
    return render(
        "jobs/job.html",
        "jobs/_job.html",
        job=row,
        params=joblib.params_of(row),
        failures=[d for d in details if d.get("type") == "failure"],
        transcript=[d for d in details if d.get("type") != "failure"],
        local=local_resources(row),
        **_helpers(),
    )


def progress_fragment(job_id: int) -> ResponseReturnValue:
    """The compact live progress of a job (polls itself until the job ends)."""
    row = _job(job_id)
    response = make_response(
        render_template("jobs/_progress.html", job=row, local=local_resources(row), **_helpers())
    )
    response.headers.add("Vary", "HX-Request")
    return response


@bp.route("/jobs/<int:job_id>/progress")
def progress(job_id: int) -> ResponseReturnValue:
    """The compact progress for htmx; the job's page otherwise."""
    if not is_htmx():
        return redirect(url_for("jobs.job", job_id=job_id))
    return progress_fragment(job_id)


@bp.route("/jobs/<int:job_id>/cancel", methods=["POST"])
def cancel(job_id: int) -> ResponseReturnValue:
    """Ask the sidecar to stop a job; back to where the user was."""
    services().control.call("job_cancel", job=job_id)
    return redirect(_back(url_for("jobs.job", job_id=job_id)), code=303)


@bp.route("/jobs/<int:job_id>/retry", methods=["POST"])
def retry(job_id: int) -> ResponseReturnValue:
    """Queue a failed or cancelled job again; to the new job's page."""
    new_id = services().control.call("job_retry", job=job_id)["job"]
    return redirect(url_for("jobs.job", job_id=new_id), code=303)


def _back(default: str) -> str:
    target = request.form.get("next", "")
    return target if target.startswith("/") and not target.startswith("//") else default


@bp.route("/jobs/send", methods=["POST"])
def send() -> ResponseReturnValue:
    """Start sending a local patient, study, series or instance to a modality (the Send form)."""
    form = request.form
    level = form.get("level", "")
    resource_id = form.get("resource_id", "").strip()
    if level not in RESOURCE_LEVELS or not resource_id:
        abort(400)
    try:
        job_id = services().control.call(
            "send",
            modality=form.get("modality", ""),
            resources=[{"level": level, "id": resource_id}],
            description=form.get("description", "")[:255],
        )["job"]
    except DolmenError as exc:
        if exc.code == "not_found":  # the sidecar's answer, as the page's own 404
            raise NotFound(exc.message) from None
        raise
    if is_htmx():
        return progress_fragment(job_id)
    return redirect(url_for("jobs.job", job_id=job_id), code=303)


# -- JSON -----------------------------------------------------------------------------------


@bp.route("/api/jobs")
def api_jobs() -> ResponseReturnValue:
    """The latest jobs as JSON (``?state=`` filters)."""
    query = Job.select().order_by(Job.created_at.desc(), Job.pk.desc())
    state = request.args.get("state", "")
    if state in joblib.STATES:
        query = query.where(Job.state == state)
    return jsonify([joblib.as_dict(j) for j in query.limit(PAGE_SIZE)])


@bp.route("/api/jobs/<int:job_id>")
def api_job(job_id: int) -> ResponseReturnValue:
    """One job as JSON, with its failures and transcript (``Details``)."""
    return jsonify(joblib.as_dict(_job(job_id), with_details=True))
