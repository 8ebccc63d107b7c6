"""Jobs: the list, one job's page with its failures and transcript, cancel and retry, and send.

Pages read the Job table directly; starting, cancelling and retrying go to the sidecar. Live
progress is htmx polling that stops when the server answers the element without its trigger
(once the job has ended).
"""

from __future__ import annotations

from flask import Blueprint
from flask import abort
from flask import jsonify
from flask import redirect
from flask import request
from flask import url_for
from flask.typing import ResponseReturnValue

from dicomnode import jobs as joblib
from dicomnode.archive.index import Job
from dicomnode.errors import DolmenError
from dicomnode.errors import NotFound
from webapp.htmx import is_htmx
from webapp.htmx import render
from webapp.present import job_helpers
from webapp.present import local_resources
from webapp.present import progress_fragment
from webapp.services import services

bp = Blueprint("jobs", __name__)

PAGE_SIZE = 100
RESOURCE_LEVELS = ("patient", "study", "series", "instance")


@bp.route("/jobs")
def jobs() -> ResponseReturnValue:
    """Every job, newest first: type, target, state, progress, start, end and duration."""
    state = request.args.get("state", "")
    rows = joblib.recent(state, PAGE_SIZE)
    polling = any(j.state in joblib.ACTIVE for j in rows)
    return render(
        "jobs/jobs.html",
        "jobs/_list.html",
        rows=rows,
        state=state,
        states=joblib.STATES,
        polling=polling,
        **job_helpers(),
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
        **job_helpers(),
    )


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
    return jsonify([joblib.as_dict(j) for j in joblib.recent(request.args.get("state", ""), PAGE_SIZE)])


@bp.route("/api/jobs/<int:job_id>")
def api_job(job_id: int) -> ResponseReturnValue:
    """One job as JSON, with its failures and transcript (``Details``)."""
    return jsonify(joblib.as_dict(_job(job_id), with_details=True))
