"""Remote DICOMweb servers: the servers page, search and retrieve, send, and Orthanc's JSON endpoints.

Pages under ``/dicomweb``; the JSON endpoints of Orthanc's DICOMweb plugin under the
DICOMweb root (``/dicom-web/servers...``). Transfers started from the pages are jobs run by
the sidecar; the JSON endpoints run them in the request unless ``"Synchronous": false``.
"""
from __future__ import annotations

import time
from typing import Any

from flask import Blueprint
from flask import Response
from flask import abort
from flask import current_app
from flask import jsonify
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue

from dicomnode import jobs
from dicomnode import peers
from dicomnode.archive.index import Job
from dicomnode.archive.resources import presence
from dicomnode.dicomweb import client
from dicomnode.errors import DolmenError
from dicomnode.jobs import transfer
from webapp.api.dicomweb import root_of
from webapp.htmx import render
from webapp.present import local_url
from webapp.present import sop_class_name
from webapp.present import started
from webapp.search import PRESETS
from webapp.search import query_filters
from webapp.services import services
from webapp.services import settings

bp = Blueprint("dicomweb_client", __name__)

#: QIDO-RS levels (it has no patient level).
LEVELS = ("study", "series", "instance")
SEARCH_LIMIT = 200
#: Attributes asked with includefield, so the result tables have their columns.
INCLUDE = {"study": ("StudyDescription",), "series": ("BodyPartExamined", "SeriesDate", "StudyInstanceUID"),
           "instance": ("NumberOfFrames",)}
#: Longest pause between two looks at a job a synchronous JSON call waits for, in seconds.
WAIT_STEP = 0.5


@bp.record
def _json_routes(state: BlueprintSetupState) -> None:
    root = root_of(state.app)
    for rule, view, methods in (("/servers", api_servers, ["GET"]), ("/servers/<name>", api_server, ["GET"]),
                                ("/servers/<name>/get", api_get, ["POST"]),
                                ("/servers/<name>/stow", api_stow, ["POST"]),
                                ("/servers/<name>/retrieve", api_retrieve, ["POST"])):
        state.app.add_url_rule(root + rule, f"{bp.name}.{view.__name__}", view, methods=methods)


@bp.app_context_processor
def _send_targets() -> dict[str, Any]:
    def dicomweb_servers() -> list[peers.Server]:
        return peers.DICOMWEB_SERVERS.all(settings())

    return {"dicomweb_servers": dicomweb_servers}


# -- the servers page ----------------------------------------------------------------------------


def _fields(form: Any) -> dict[str, Any]:
    return {"name": form.get("name", "").strip(), "url": form.get("url", "").strip(),
            "username": form.get("username", "").strip(), "password": form.get("password", ""),
            "headers": peers.parse_headers(form.get("headers", ""))}


def _servers_page(fields: dict[str, Any] | None = None, problems: dict[str, str] | None = None,
                  status: int = 200) -> ResponseReturnValue:
    return render("dicomweb_client/servers.html", "dicomweb_client/servers.html", status,
                  servers=peers.DICOMWEB_SERVERS.all(settings()), fields=fields or {}, problems=problems or {},
                  root=root_of(current_app))


@bp.route("/dicomweb/servers")
def servers() -> ResponseReturnValue:
    """The remote DICOMweb servers (from the configuration, read-only, and added here)."""
    return _servers_page()


@bp.route("/dicomweb/servers", methods=["POST"])
def server_add() -> ResponseReturnValue:
    """Add a server from the form; the page again with the problems when a field is wrong."""
    fields = _fields(request.form)
    problems = peers.check_server(settings(), fields)
    if problems:
        return _servers_page(fields, problems, 400)
    peers.DICOMWEB_SERVERS.save(settings(), fields)
    return redirect(url_for("dicomweb_client.servers"), code=303)


@bp.route("/dicomweb/servers/<name>/edit", methods=["GET", "POST"])
def server_edit(name: str) -> ResponseReturnValue:
    """Edit a page-managed server (an empty password keeps the stored one)."""
    server = peers.DICOMWEB_SERVERS.get(settings(), name)
    if server.origin == "config":
        raise DolmenError(f"{name!r} is declared in the configuration file; change it there",
                          code="read_only")
    problems: dict[str, str] = {}
    if request.method == "POST":
        fields = _fields(request.form)
        problems = peers.check_server(settings(), fields, original=name)
        if not problems:
            peers.DICOMWEB_SERVERS.save(settings(), fields, original=name)
            return redirect(url_for("dicomweb_client.servers"), code=303)
    else:
        fields = {"name": server.name, "url": server.url, "username": server.username,
                  "headers": dict(server.headers)}
    return render_template("dicomweb_client/edit.html", original=name, fields=fields, problems=problems,
                           has_password=bool(server.password)), (400 if problems else 200)


@bp.route("/dicomweb/servers/<name>/delete", methods=["POST"])
def server_delete(name: str) -> ResponseReturnValue:
    """Remove a page-managed server."""
    peers.DICOMWEB_SERVERS.delete(settings(), name)
    return redirect(url_for("dicomweb_client.servers"), code=303)


@bp.route("/dicomweb/servers/<name>/test", methods=["POST"])
def server_test(name: str) -> ResponseReturnValue:
    """Ask the server for one study (QIDO-RS) and say how it went."""
    server = peers.DICOMWEB_SERVERS.get(settings(), name)
    start = time.perf_counter()
    try:
        client.qido(server, "study", {}, limit=1)
        outcome = {"ok": True, "ms": (time.perf_counter() - start) * 1000}
    except DolmenError as exc:
        outcome = {"ok": False, "message": exc.message}
    return render("dicomweb_client/test.html", "dicomweb_client/_test.html", server=server, outcome=outcome)


# -- search and retrieve -----------------------------------------------------------------------


@bp.route("/dicomweb/servers/<name>/search")
def search(name: str) -> ResponseReturnValue:
    """Search a remote server with the Query/Retrieve page's filters; drill down and retrieve."""
    server = peers.DICOMWEB_SERVERS.get(settings(), name)
    args = request.args
    level = args.get("level", "study")
    if level not in LEVELS:
        level = "study"
    filters = query_filters(level, args)
    study = filters.pop("StudyInstanceUID", None) if level != "study" else None
    series = filters.pop("SeriesInstanceUID", None) if level == "instance" else None
    rows: list[dict[str, Any]] = []
    error = ""
    ms: float | None = None
    ran = "run" in args or bool(filters) or bool(study)
    if ran:
        start = time.perf_counter()
        try:
            answers = [client.simplify(a) for a in client.qido(
                server, level, filters, study=study, series=series if study else None, limit=SEARCH_LIMIT,
                includefield=INCLUDE[level])]
            ms = (time.perf_counter() - start) * 1000
            for a in answers:  # servers may leave out the UIDs of the scope
                if study:
                    a.setdefault("StudyInstanceUID", study)
                if series:
                    a.setdefault("SeriesInstanceUID", series)
            rows = [{"answer": a, "here": h} for a, h in zip(answers, presence(level, answers), strict=True)]
        except DolmenError as exc:
            error = exc.message
    return render("dicomweb_client/search.html", "dicomweb_client/_results.html", server=server, level=level,
                  levels=LEVELS, args=args, presets=PRESETS, rows=rows, error=error, ran=ran, ms=ms,
                  limit=SEARCH_LIMIT, trail=args.get("trail", "")[:300], local_url=local_url,
                  sop_class_name=sop_class_name)


def _submit(kind: str, server: str, resources: list[Any], description: str) -> int:
    result = services().control.call("job_submit", kind=kind, target=server,
                                     params={"server": server, "resources": resources},
                                     description=description[:255])
    return int(result["job"])


@bp.route("/dicomweb/servers/<name>/retrieve", methods=["POST"])
def retrieve(name: str) -> ResponseReturnValue:
    """Start a WADO-RS retrieve job for one study, series or instance of the search results."""
    peers.DICOMWEB_SERVERS.get(settings(), name)
    resource = {k: request.form[k] for k in ("Study", "Series", "Instance") if request.form.get(k)}
    client.resource_path(resource)  # a 400 for a missing or malformed UID
    description = request.form.get("description", "").strip() or " / ".join(resource.values())
    return started(_submit("wado", name, [resource], description))


@bp.route("/dicomweb/send", methods=["POST"])
def send() -> ResponseReturnValue:
    """Start a STOW-RS job sending a local patient, study, series or instance (the Send menu)."""
    form = request.form
    level, resource_id = form.get("level", ""), form.get("resource_id", "").strip()
    if level not in ("patient", "study", "series", "instance") or not resource_id:
        abort(400)
    server = peers.DICOMWEB_SERVERS.get(settings(), form.get("server", ""))
    resources = client.local_levels([resource_id])  # a 404 now rather than a failed job
    return started(_submit("stow", server.name, [resource_id], transfer.describe(resources)))


# -- Orthanc's JSON endpoints ---------------------------------------------------------------------


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise DolmenError("The request body must be a JSON object", code="bad_request")
    return body


def api_servers() -> ResponseReturnValue:
    """``GET /dicom-web/servers``: the names (``?expand``: with URL, user and origin)."""
    found = peers.DICOMWEB_SERVERS.all(settings())
    if "expand" in request.args:
        return jsonify({s.name: {"Url": s.url, "Username": s.username, "HttpHeaders": sorted(s.headers),
                                 "Origin": s.origin} for s in found})
    return jsonify([s.name for s in found])


def api_server(name: str) -> ResponseReturnValue:
    """``GET /dicom-web/servers/{name}``: the operations, as Orthanc lists them."""
    peers.DICOMWEB_SERVERS.get(settings(), name)
    return jsonify(["get", "retrieve", "stow"])


def api_get(name: str) -> ResponseReturnValue:
    """``POST .../get`` ``{"Uri": "/studies?...", "HttpHeaders": {}, "Arguments": {}}``: the answer."""
    server = peers.DICOMWEB_SERVERS.get(settings(), name)
    body = _body()
    uri = body.get("Uri")
    if not isinstance(uri, str) or not uri:
        raise DolmenError('"Uri" is missing: the path to GET on the server, e.g. "/studies"',
                          code="bad_request")
    status, kind, content = client.proxy_get(server, uri, _strings(body.get("HttpHeaders")),
                                             _strings(body.get("Arguments")))
    if status >= 400:
        text = content[:300].decode("utf-8", "replace")
        return jsonify({"error": {"status": 502, "code": "remote_error",
                                  "message": f"{name} answered {status}: {text}"}}), 502
    return Response(content, status, content_type=kind)


def _strings(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DolmenError("HttpHeaders and Arguments must be JSON objects", code="bad_request")
    return {str(k): str(v) for k, v in value.items()}


def _resources(body: dict[str, Any]) -> list[Any]:
    resources = body.get("Resources")
    if not isinstance(resources, list) or not resources:
        raise DolmenError('"Resources" must be a non-empty list', code="bad_request")
    return resources


def _run(kind: str, name: str, resources: list[Any], description: str, body: dict[str, Any]
         ) -> ResponseReturnValue:
    """Submit the job; answer its id at once (``"Synchronous": false``) or once it has ended."""
    job_id = _submit(kind, name, resources, description)
    if body.get("Synchronous", True) is False:
        return jsonify({"ID": job_id, "Path": url_for("jobs.api_job", job_id=job_id)})
    job = _wait(job_id)
    if job.state != jobs.SUCCESS:
        return jsonify({"error": {"status": 502, "code": f"job_{job.state}", "title": "Job failed",
                                  "message": str(job.error) or f"the job ended {job.state}",
                                  "job": job_id}}), 502
    return jsonify(jobs.as_dict(job, with_details=True))


def _wait(job_id: int) -> Job:
    """The job once it has ended, looking at the index with growing pauses (at most WAIT_STEP)."""
    pause = 0.02
    while True:
        job = jobs.get(job_id)
        if job.state not in jobs.ACTIVE:
            return job
        time.sleep(pause)
        pause = min(pause * 1.5, WAIT_STEP)


def api_stow(name: str) -> ResponseReturnValue:
    """``POST .../stow`` ``{"Resources": [local ids], "Synchronous": true}``: send through STOW-RS."""
    peers.DICOMWEB_SERVERS.get(settings(), name)
    body = _body()
    ids = [str(r) for r in _resources(body)]
    resources = client.local_levels(ids)  # a 404 now rather than a failed job
    return _run("stow", name, ids, transfer.describe(resources), body)


def api_retrieve(name: str) -> ResponseReturnValue:
    """``POST .../retrieve`` ``{"Resources": [{"Study": uid, "Series": uid, "Instance": uid}]}``."""
    peers.DICOMWEB_SERVERS.get(settings(), name)
    body = _body()
    resources = _resources(body)
    for resource in resources:
        if not isinstance(resource, dict):
            raise DolmenError('Each resource is an object like {"Study": "1.2.3"}', code="bad_request")
        client.resource_path(resource)
    description = "; ".join(client.resource_path(r) for r in resources)
    return _run("wado", name, resources, description, body)
