"""Orthanc's network routes: modalities, echo, store, query/retrieve, and jobs.

Every DICOM operation goes through the sidecar's control socket, as the pages' do; a
synchronous request (Orthanc's default for store, move and get) waits for its job to end.
Query answers are kept in this process, the latest :data:`MAX_QUERIES`, as Orthanc keeps them
in memory.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from typing import Any

from flask.typing import ResponseReturnValue
from pydicom.datadict import keyword_for_tag
from pydicom.datadict import tag_for_keyword

from dicomnode import jobs as joblib
from dicomnode import peers
from dicomnode.archive import orthanc
from dicomnode.archive.index import Job
from dicomnode.config import OPERATIONS
from dicomnode.errors import DolmenError
from dicomnode.errors import NotFound
from dicomnode.errors import RemoteError
from webapp.api.rest import answer
from webapp.api.rest import flag
from webapp.api.rest import json_body
from webapp.api.rest import route
from webapp.api.rest.resources import any_resource
from webapp.services import services
from webapp.services import settings

MAX_QUERIES = 100
SYNC_TIMEOUT = 3600.0  # seconds a synchronous request waits for its job
_QUERIES: OrderedDict[str, dict[str, Any]] = OrderedDict()
_QUERIES_LOCK = threading.Lock()
#: Dolmen's job kinds as Orthanc's job types.
JOB_TYPES = {"send": "DicomModalityStore", "move": "DicomMoveScu", "get": "DicomGetScu",
             "stow": "DicomWebStowClient", "wado": "DicomWebWadoClient", "anonymize": "ResourceModification",
             "modify": "ResourceModification"}
JOB_STATES = {"pending": "Pending", "running": "Running", "success": "Success", "failure": "Failure",
              "cancelled": "Failure"}


def _call(op: str, **args: Any) -> dict[str, Any]:
    return services().control.call(op, **args)


# -- modalities --------------------------------------------------------------------------------


def modality_json(node: peers.Node) -> dict[str, Any]:
    allow = set(node.allow)
    return {"AET": node.aet, "AllowEcho": "echo" in allow, "AllowEventReport": False,
            "AllowFind": "find" in allow, "AllowFindWorklist": False, "AllowGet": "get" in allow,
            "AllowMove": "move" in allow, "AllowNAction": False, "AllowStore": "store" in allow,
            "AllowTranscoding": False, "Description": node.description, "Host": node.host, "LocalAet": "",
            "Manufacturer": "Generic", "Port": node.port, "Timeout": 0, "UseDicomTls": node.tls,
            "Origin": node.origin}


@route("/modalities")
def modalities() -> ResponseReturnValue:
    nodes = peers.MODALITIES.all(settings())
    if flag("expand"):
        return answer({n.name: modality_json(n) for n in nodes})
    return answer([n.name for n in nodes])


@route("/modalities/<name>")
def modality_operations(name: str) -> ResponseReturnValue:
    peers.MODALITIES.get(settings(), name)
    return answer(["configuration", "echo", "find-worklist", "get", "move", "query", "storage-commitment",
                   "store", "store-straight"])


@route("/modalities/<name>/configuration")
def modality_configuration(name: str) -> ResponseReturnValue:
    return answer(modality_json(peers.MODALITIES.get(settings(), name)))


@route("/modalities/<name>", methods=("PUT",))
def modality_put(name: str) -> ResponseReturnValue:
    """Declare or change a modality: ``{"AET", "Host", "Port", "AllowEcho"...}`` or ``[aet, host, port]``."""
    body = json_body()
    if isinstance(body, list) and len(body) >= 3:
        body = {"AET": body[0], "Host": body[1], "Port": body[2]}
    if not isinstance(body, dict):
        raise orthanc.BadRequest('Send {"AET": ..., "Host": ..., "Port": ...} or [AET, host, port]')
    port = body.get("Port")
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    existing = None
    try:
        existing = peers.MODALITIES.get(settings(), name)
    except NotFound:
        pass
    allow = [op for op in OPERATIONS if body.get(f"Allow{op.capitalize()}", True if existing is None
                                                  else op in existing.allow)]
    fields = {"name": name, "aet": body.get("AET", ""), "host": body.get("Host", ""), "port": port,
              "allow": allow, "description": str(body.get("Description", existing.description if existing else "")),
              "fallback_get": bool(existing.fallback_get) if existing else False,
              "tls": bool(body.get("UseDicomTls", existing.tls if existing else False))}
    try:
        peers.MODALITIES.save(settings(), fields, original=name if existing else None)
    except DolmenError as exc:
        if exc.code in ("invalid", "read_only"):
            raise orthanc.BadRequest(exc.message) from None
        raise
    return answer({})


@route("/modalities/<name>", methods=("DELETE",))
def modality_delete(name: str) -> ResponseReturnValue:
    try:
        peers.MODALITIES.delete(settings(), name)
    except DolmenError as exc:
        if exc.code == "read_only":
            raise orthanc.BadRequest(exc.message) from None
        raise
    return answer({})


@route("/modalities/<name>/echo", methods=("POST",))
def echo(name: str) -> ResponseReturnValue:
    """C-ECHO; ``{}`` on success, else Orthanc's error with why."""
    _call("echo", modality=peers.MODALITIES.get(settings(), name).name)
    return answer({})


@route("/tools/dicom-echo", methods=("POST",))
def dicom_echo() -> ResponseReturnValue:
    """C-ECHO a node by name, or one not declared (``{"AET", "Host", "Port"}``)."""
    body = json_body()
    if isinstance(body, str):
        return echo(body)
    if not isinstance(body, dict):
        raise orthanc.BadRequest('Send a modality name, or {"AET": ..., "Host": ..., "Port": ...}')
    port = body.get("Port")
    _call("echo", node={"aet": body.get("AET", ""), "host": body.get("Host", ""),
                        "port": int(port) if isinstance(port, str) and port.isdigit() else port})
    return answer({})


# -- store ---------------------------------------------------------------------------------------


def _is_synchronous(body: Any) -> bool:
    if not isinstance(body, dict):
        return True
    if "Synchronous" in body:
        return bool(body["Synchronous"])
    return not bool(body.get("Asynchronous", False))


def _job_started(job_id: int, synchronous: bool, content: Any) -> ResponseReturnValue:
    if not synchronous:
        return answer({"ID": str(job_id), "Path": f"/jobs/{job_id}"})
    job = _wait(job_id)
    if job.state != "success":
        raise RemoteError(job.error or f"The job {job_id} ended in {job.state}", code="remote_error")
    return answer(content(job))


def _wait(job_id: int) -> Job:
    from dicomnode.archive.index import close_index

    deadline = time.monotonic() + SYNC_TIMEOUT
    delay = 0.005
    while True:
        job = Job.get_by_id(job_id)
        if job.state in ("success", "failure", "cancelled"):
            return job
        if time.monotonic() > deadline:
            raise RemoteError(f"Job {job_id} is still {job.state} after {SYNC_TIMEOUT:.0f} s; follow it at "
                              f"/jobs/{job_id}", code="timeout")
        close_index()  # no read transaction held open while the sidecar writes
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


@route("/modalities/<name>/store", methods=("POST",))
def store(name: str) -> ResponseReturnValue:
    """C-STORE local resources: a bare id, a list of ids, or ``{"Resources": [...], "Synchronous"}``."""
    node = peers.MODALITIES.get(settings(), name)
    body = _raw_or_json()
    ids = body.get("Resources") if isinstance(body, dict) else body
    if isinstance(ids, str):
        ids = [ids]
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise orthanc.BadRequest('Send a resource id, a list of ids, or {"Resources": [ids]}')
    chosen = [any_resource(i.strip()) for i in ids]
    job_id = _call("send", modality=node.name, resources=[{"level": lv, "id": row.public_id} for lv, row in chosen],
                   description="REST API")["job"]

    def content(job: Job) -> dict[str, Any]:
        return {"Description": "REST API", "FailedInstancesCount": int(job.failed), "InstancesCount": int(job.done),
                "LocalAet": settings()["dicom.aet"], "ParentResources": [row.public_id for _lv, row in chosen],
                "RemoteAet": node.aet}

    return _job_started(job_id, _is_synchronous(body), content)


def _raw_or_json() -> Any:
    from flask import request

    text = request.get_data(as_text=True).strip()
    if text and text[0] not in "[{\"":
        return text  # a bare id, as curl --data sends it
    return json_body()


# -- query / retrieve --------------------------------------------------------------------------


def _keyword(key: str) -> str:
    text = key.strip().strip("()")
    if len(text) == 9 and text[4] in ",-" or len(text) == 8:
        try:
            found = keyword_for_tag(int(text.replace(",", "").replace("-", ""), 16))
            if found:
                return str(found)
        except ValueError:
            pass
    if tag_for_keyword(text) is None:
        raise orthanc.BadRequest(f"Unknown DICOM tag {key[:60]!r} in Query")
    return text


def _full(answer_dict: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for keyword, value in answer_dict.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            continue
        out[f"{tag >> 16:04x},{tag & 0xFFFF:04x}"] = {"Name": keyword, "Type": "String",
                                                        "Value": "" if value is None else str(value)}
    return dict(sorted(out.items()))


@route("/modalities/<name>/query", methods=("POST",))
def query(name: str) -> ResponseReturnValue:
    """C-FIND; the answers are kept at ``/queries/{id}``."""
    node = peers.MODALITIES.get(settings(), name)
    body = json_body()
    if not isinstance(body, dict):
        raise orthanc.BadRequest('Send {"Level": "Study", "Query": {tag: value}}')
    resource_type = orthanc.level_of(body.get("Level", ""))
    level = orthanc.QUERY_LEVEL[resource_type]
    criteria = body.get("Query", {})
    if not isinstance(criteria, dict) or not all(isinstance(v, str) for v in criteria.values()):
        raise orthanc.BadRequest("Query must be an object of {tag: text}")
    filters = {_keyword(k): v for k, v in criteria.items()}
    result = _call("find", modality=node.name, level=level, filters=filters,
                   return_keys=list(filters), limit=1000)
    query_id = str(uuid.uuid4())
    with _QUERIES_LOCK:
        _QUERIES[query_id] = {"modality": node.name, "level": resource_type, "query": filters,
                              "answers": result["answers"]}
        while len(_QUERIES) > MAX_QUERIES:
            _QUERIES.popitem(last=False)
    return answer({"ID": query_id, "Path": f"/queries/{query_id}"})


def _query(query_id: str) -> dict[str, Any]:
    with _QUERIES_LOCK:
        found = _QUERIES.get(query_id)
    if found is None:
        raise NotFound(f"No query {query_id[:60]!r}: queries are kept in memory, the latest {MAX_QUERIES}")
    return found


def _answer(q: dict[str, Any], index: str) -> dict[str, Any]:
    if not index.isdigit() or int(index) >= len(q["answers"]):
        raise NotFound(f"No answer {index[:20]!r}: this query has {len(q['answers'])} (from 0)")
    return q["answers"][int(index)]


@route("/queries")
def queries() -> ResponseReturnValue:
    with _QUERIES_LOCK:
        return answer(list(_QUERIES))


@route("/queries/<query_id>")
def query_operations(query_id: str) -> ResponseReturnValue:
    _query(query_id)
    return answer(["answers", "level", "modality", "query", "retrieve"])


@route("/queries/<query_id>", methods=("DELETE",))
def query_delete(query_id: str) -> ResponseReturnValue:
    _query(query_id)
    with _QUERIES_LOCK:
        _QUERIES.pop(query_id, None)
    return answer({})


@route("/queries/<query_id>/level")
def query_level(query_id: str) -> ResponseReturnValue:
    from flask import Response

    return Response(_query(query_id)["level"], mimetype="text/plain")


@route("/queries/<query_id>/modality")
def query_modality(query_id: str) -> ResponseReturnValue:
    from flask import Response

    return Response(_query(query_id)["modality"], mimetype="text/plain")


@route("/queries/<query_id>/query")
def query_query(query_id: str) -> ResponseReturnValue:
    return answer(_content(_query(query_id)["query"]))


def _content(values: dict[str, Any]) -> Any:
    if flag("simplify"):
        return dict(sorted(values.items()))
    full = _full(values)
    if flag("short"):
        return {k: v["Value"] for k, v in full.items()}
    return full


@route("/queries/<query_id>/answers")
def query_answers(query_id: str) -> ResponseReturnValue:
    q = _query(query_id)
    if flag("expand"):
        return answer([_content(a) for a in q["answers"]])
    return answer([str(i) for i in range(len(q["answers"]))])


@route("/queries/<query_id>/answers/<index>")
def answer_operations(query_id: str, index: str) -> ResponseReturnValue:
    _answer(_query(query_id), index)
    return answer(["content", "retrieve"])


@route("/queries/<query_id>/answers/<index>/content")
def answer_content(query_id: str, index: str) -> ResponseReturnValue:
    return answer(_content(_answer(_query(query_id), index)))


def _target(body: Any) -> tuple[str, bool]:
    if isinstance(body, str):
        return body.strip() or settings()["dicom.aet"], True
    if isinstance(body, dict):
        target = body.get("TargetAet") or settings()["dicom.aet"]
        if not isinstance(target, str):
            raise orthanc.BadRequest("TargetAet must be an AE title")
        return target, _is_synchronous(body)
    raise orthanc.BadRequest('Send the target AE title, or {"TargetAet": ..., "Synchronous": ...}')


def _retrieve(node_name: str, resource_type: str, keys_list: list[dict[str, Any]], target: str,
              synchronous: bool, method: str = "move") -> ResponseReturnValue:
    level = orthanc.QUERY_LEVEL[resource_type]
    job_ids = []
    for keys in keys_list:
        args: dict[str, Any] = {"modality": node_name, "level": level, "description": "REST API",
                                "keys": {k: v for k, v in keys.items() if k in (
                                    "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}}
        if method == "move":
            args["destination"] = target
        job_ids.append(_call(method, **args)["job"])
    if not job_ids:
        raise orthanc.BadRequest("Nothing to retrieve: the query has no answer")
    if not synchronous:
        return answer({"ID": str(job_ids[-1]), "Path": f"/jobs/{job_ids[-1]}",
                       **({"Jobs": [str(j) for j in job_ids]} if len(job_ids) > 1 else {})})
    failed = [job for job in (_wait(j) for j in job_ids) if job.state != "success"]
    if failed:
        raise RemoteError(failed[0].error or f"The retrieve ended in {failed[0].state}", code="remote_error")
    node = peers.MODALITIES.get(settings(), node_name)
    return answer({"Description": "REST API", "LocalAet": settings()["dicom.aet"],
                   "Query": [{k: str(v) for k, v in keys.items()} for keys in keys_list], "RemoteAet": node.aet,
                   **({"TargetAet": target} if method == "move" else {})})


@route("/queries/<query_id>/retrieve", methods=("POST",))
def query_retrieve(query_id: str) -> ResponseReturnValue:
    q = _query(query_id)
    target, synchronous = _target(_raw_or_json() if _has_body() else {})
    return _retrieve(q["modality"], q["level"], q["answers"], target, synchronous)


@route("/queries/<query_id>/answers/<index>/retrieve", methods=("POST",))
def answer_retrieve(query_id: str, index: str) -> ResponseReturnValue:
    q = _query(query_id)
    target, synchronous = _target(_raw_or_json() if _has_body() else {})
    return _retrieve(q["modality"], q["level"], [_answer(q, index)], target, synchronous)


def _has_body() -> bool:
    from flask import request

    return bool(request.get_data(cache=True).strip())


@route("/modalities/<name>/<any(move, get):method>", methods=("POST",))
def move_or_get(name: str, method: str) -> ResponseReturnValue:
    """``{"Level": "Study", "Resources": [{"StudyInstanceUID": ...}], "TargetAet", "Synchronous"}``."""
    node = peers.MODALITIES.get(settings(), name)
    body = json_body()
    if not isinstance(body, dict):
        raise orthanc.BadRequest('Send {"Level": ..., "Resources": [{"StudyInstanceUID": ...}]}')
    resource_type = orthanc.level_of(body.get("Level", ""))
    items = body.get("Resources")
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise orthanc.BadRequest("Resources must be a list of objects of unique keys")
    keys_list = [{_keyword(k): v for k, v in i.items()} for i in items]
    target, synchronous = _target(body)
    return _retrieve(node.name, resource_type, keys_list, target, synchronous, method)


# -- jobs ------------------------------------------------------------------------------------------


def _timestamp(value: Any) -> str | None:
    return value.strftime("%Y%m%dT%H%M%S.%f") if value else None


def job_json(job: Job) -> dict[str, Any]:
    """A job in Orthanc's fields; ``Content`` carries Dolmen's counters and parameters."""
    params = joblib.params_of(job)
    state = str(job.state)
    runtime = ((job.ended_at or job.started_at) - job.started_at).total_seconds() if job.started_at else 0.0
    failed = state in ("failure", "cancelled")
    content: dict[str, Any] = {"Description": str(job.description), "FailedInstancesCount": int(job.failed),
                               "InstancesCount": int(job.done), "LocalAet": settings()["dicom.aet"],
                               "RemoteAet": str(job.target), "Parameters": params}
    if str(job.kind) in ("anonymize", "modify"):  # Orthanc's ResourceModification: the new resource
        content.pop("RemoteAet")
        content.update(next((dict(e) for e in joblib.details_of(job) if e.get("type") == "result"), {}))
        content.pop("type", None)
        content.pop("at", None)
    return {"CompletionTime": _timestamp(job.ended_at), "Content": content,
            "CreationTime": _timestamp(job.created_at), "EffectiveRuntime": runtime,
            "ErrorCode": (37 if state == "cancelled" else 9) if failed else 0,
            "ErrorDescription": ("This job was canceled" if state == "cancelled" else "Error in the network protocol")
            if failed else "Success",
            "ErrorDetails": str(job.error), "ID": str(job.pk), "Priority": 0, "Progress": joblib.percent(job),
            "State": JOB_STATES.get(state, "Pending"), "Timestamp": _timestamp(job.ended_at or job.created_at),
            "Type": JOB_TYPES.get(str(job.kind), str(job.kind))}


def _job(job_id: str) -> Job:
    job = Job.get_or_none(Job.pk == int(job_id)) if job_id.isdigit() else None
    if job is None:
        raise NotFound(f"No job {job_id[:60]!r}")
    return job


@route("/jobs")
def jobs() -> ResponseReturnValue:
    rows = joblib.recent("", 1000)
    if flag("expand"):
        return answer([job_json(j) for j in rows])
    return answer([str(j.pk) for j in rows])


@route("/jobs/<job_id>")
def job(job_id: str) -> ResponseReturnValue:
    return answer(job_json(_job(job_id)))


@route("/jobs/<job_id>/<any(cancel, resubmit, pause, resume):action>", methods=("POST",))
def job_action(job_id: str, action: str) -> ResponseReturnValue:
    """cancel, resubmit (a failed job runs again, as a new job whose id is answered); no pause."""
    row = _job(job_id)
    if action == "cancel":
        _call("job_cancel", job=row.pk)
        return answer({})
    if action == "resubmit":
        new_id = _call("job_retry", job=row.pk)["job"]
        return answer({"ID": str(new_id), "Path": f"/jobs/{new_id}"})
    raise orthanc.BadRequest(f"Dolmen's jobs cannot {action}: cancel one and resubmit it later")

