"""Orthanc's ``/anonymize`` and ``/modify`` (one resource, and the bulk forms), Dolmen's dry run
and export journal (``GET /exports``)."""
from __future__ import annotations

import json
from typing import Any

from flask import Response
from flask import request
from flask.typing import ResponseReturnValue

from dicomnode.anonymize import run as runner
from dicomnode.anonymize.profile import Plan
from dicomnode.anonymize.profile import PlanError
from dicomnode.anonymize.profile import plan_for
from dicomnode.archive import orthanc
from dicomnode.archive.index import Export
from webapp.api.rest import answer
from webapp.api.rest import int_arg
from webapp.api.rest import json_body
from webapp.api.rest import route
from webapp.api.rest.resources import SEGMENTS
from webapp.api.rest.resources import fetch
from webapp.services import services
from webapp.services import settings


def user() -> str:
    from webapp.pages.auth import current_user

    return current_user() or request.remote_addr or ""


def make_plan(body: Any, kind: str, resource_type: str) -> Plan:
    return plan_for(settings(), body, kind, resource_type)


def carry_out(body: Any, kind: str, resource_type: str, public_id: str) -> dict[str, Any]:
    """Run (or dry-run, or queue) one operation; Orthanc's answer."""
    plan = make_plan(body, kind, resource_type)
    fetch(resource_type, public_id)  # 404 for an unknown resource, before anything else
    svc = services()
    if plan.dry_run:
        return runner.dry_run(plan, resource_type, public_id, svc.store)
    if plan.asynchronous:
        params = {"body": body if isinstance(body, dict) else {}, "level": resource_type, "id": public_id,
                  "user": user()}
        job_id = svc.control.call("job_submit", kind=kind, target=resource_type.lower(), params=params,
                                  description=f"{kind.capitalize()} {resource_type.lower()} {public_id}")["job"]
        return {"ID": str(job_id), "Path": f"/jobs/{job_id}"}
    return runner.run(plan, resource_type, public_id, store=svc.store, ingestor=svc.ingestor, user=user())


@route(f"/{SEGMENTS}/<public_id>/<any(anonymize, modify):kind>", methods=("POST",))
def modify(segment: str, public_id: str, kind: str) -> ResponseReturnValue:
    """``POST /studies/{id}/anonymize`` (``/modify``); an instance answers the changed file."""
    resource_type = orthanc.TYPE_OF_SEGMENT[segment]
    body = json_body(default={})
    if resource_type == "Instance":
        plan = make_plan(body, kind, resource_type)
        if not plan.dry_run:
            fetch(resource_type, public_id)
            data = runner.one_instance(plan, public_id, services().store)
            return Response(data, mimetype="application/dicom")
    return answer(carry_out(body, kind, resource_type, public_id))


@route("/tools/bulk-<any(anonymize, modify):kind>", methods=("POST",))
def bulk(kind: str) -> ResponseReturnValue:
    """``{"Resources": [ids], ...}``: each resource in turn, with the same options (Orthanc 1.9.4)."""
    body = json_body()
    if not isinstance(body, dict) or not isinstance(body.get("Resources"), list) or not body["Resources"]:
        raise PlanError("Resources must be a non-empty list of resource ids")
    rest = {k: v for k, v in body.items() if k not in ("Resources", "Level")}
    targets = []
    for public_id in body["Resources"]:
        level, _row = _any(str(public_id))
        targets.append((level, str(public_id)))
    for level, _public_id in targets:
        make_plan(rest, kind, level)  # every body checked before anything runs
    answers = [carry_out(rest, kind, level, public_id) for level, public_id in targets]
    if rest.get("Asynchronous") or rest.get("DryRun"):
        return answer({"Resources": answers})
    return answer({"Description": "REST API", "FailedInstancesCount": 0, "IsAnonymization": kind == "anonymize",
                   "InstancesCount": sum(a["InstancesCount"] for a in answers),
                   "Resources": [{"ID": a["ID"], "Path": a["Path"], "Type": a["Type"]} for a in answers]})


def _any(public_id: str) -> tuple[str, Any]:
    from webapp.api.rest.resources import LEVEL
    from webapp.api.rest.resources import any_resource

    level, row = any_resource(public_id)
    return next(t for t, lv in LEVEL.items() if lv == level), row


def journal_json(entry: Export) -> dict[str, Any]:
    return {"ID": entry.pk, "At": entry.at.isoformat(timespec="seconds") + "Z", "User": entry.user,
            "Kind": entry.kind, "Level": entry.level, "Source": entry.source_id, "SourceLabel": entry.source_label,
            "Result": entry.result_id, "Profile": entry.profile, "Options": json.loads(entry.options or "[]"),
            "Instances": entry.instances, "Status": entry.status, "Message": entry.message, "Job": entry.job}


@route("/exports")
def exports() -> ResponseReturnValue:
    """Dolmen's export journal, newest first (``?limit=``, default 100)."""
    limit = int_arg("limit", 100) or 100
    rows = Export.select().order_by(Export.pk.desc()).limit(min(limit, 10000))
    return answer([journal_json(e) for e in rows])
