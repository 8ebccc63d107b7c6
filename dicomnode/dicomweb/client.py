"""DICOMweb client: search, retrieve from and send to remote DICOMweb servers (PS3.18).

The servers are :data:`dicomnode.peers.DICOMWEB_SERVERS` (``[dicomweb.servers.NAME]`` in the
configuration, then those of the DICOMweb page). The operations:

* :func:`qido` — QIDO-RS search; answers are DICOM JSON, :func:`simplify` turns them into
  ``{keyword: text}`` for pages;
* :func:`retrieve` — WADO-RS of studies, series or instances, read as a stream and filed
  part by part through the one ingest path (nothing is held in memory);
* :func:`stow` — STOW-RS of local resources, in batches streamed from the files;
* :func:`proxy_get` — any GET on the server (Orthanc's ``/dicom-web/servers/{name}/get``).

Retrieve and send run as jobs of the kinds ``wado`` and ``stow`` in the sidecar (registered
here with :func:`dicomnode.jobs.register_kind`), or synchronously for the JSON API.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from urllib.parse import quote
from urllib.parse import urlencode
from urllib.parse import urlparse

import requests

from dicomnode import __version__
from dicomnode import jobs
from dicomnode.archive import query
from dicomnode.archive.index import Instance
from dicomnode.archive.index import Patient
from dicomnode.archive.index import Series
from dicomnode.archive.index import Study
from dicomnode.archive.ingest import Ingestor
from dicomnode.archive.ingest import Source
from dicomnode.archive.store import Store
from dicomnode.dicomweb.multipart import MultipartReader
from dicomnode.dicomweb.multipart import Part
from dicomnode.dicomweb.multipart import SizedBody
from dicomnode.dicomweb.multipart import new_boundary
from dicomnode.dicomweb.multipart import parse_media_type
from dicomnode.errors import DolmenError
from dicomnode.errors import NotFound
from dicomnode.errors import RemoteError
from dicomnode.peers import DICOMWEB_SERVERS
from dicomnode.peers import Server

LOGGER = logging.getLogger(__name__)

#: Seconds to connect, and to wait for the next bytes of an answer.
TIMEOUT = (10.0, 300.0)
#: Instances and bytes per STOW-RS request.
STOW_BATCH = 50
STOW_BATCH_BYTES = 256 * 1024 * 1024
RETRIEVE_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


# -- HTTP ----------------------------------------------------------------------------------------


def session(server: Server) -> requests.Session:
    """A session with the server's credentials and headers."""
    s = requests.Session()
    s.headers["User-Agent"] = f"Dolmen/{__version__}"
    if server.username:
        s.auth = (server.username, server.password)
    s.headers.update(server.headers)
    return s


def _describe(exc: requests.RequestException, server: Server) -> str:
    where = urlparse(server.url).netloc or server.url
    if isinstance(exc, requests.ConnectionError):
        return f"Cannot connect to {server.name} ({where}): {_connection_reason(exc)}"
    if isinstance(exc, requests.Timeout):
        return f"{server.name} ({where}) did not answer in time"
    return f"{server.name}: {_connection_reason(exc)}"


def _connection_reason(exc: BaseException) -> str:
    """What a requests/urllib3 connection error says after its "[Errno N]", on one line."""
    text = str(exc)
    reason = re.search(r"\] ([^'\"()]+)", text)
    return (reason.group(1) if reason else text).splitlines()[0][:200]


#: What an HTTP error status most likely means, added to the message.
HINTS = {401: "check the user name and password", 403: "the credentials lack the rights",
         404: "check the server's URL"}


def request(server: Server, method: str, path: str, *, ok: Iterable[int] = (200,),
            hints: Mapping[int, str] | None = None, **kwargs: Any) -> requests.Response:
    """One request to ``server`` (``path`` is appended to its URL).

    ``hints`` replace the :data:`HINTS` for some statuses (a 404 to a retrieve says that the
    server does not have the resource, not that its URL is wrong).

    Raises
    ------
    RemoteError
        When the server cannot be reached or answers another status than ``ok``; the
        message quotes the server's own error text.
    """
    url = server.base + path
    kwargs.setdefault("timeout", TIMEOUT)
    s = session(server)
    try:
        response = s.request(method, url, **kwargs)
    except requests.RequestException as exc:
        raise RemoteError(_describe(exc, server)) from exc
    finally:
        if not kwargs.get("stream"):
            s.close()  # a streamed answer keeps its connection until it is read
    if response.status_code not in tuple(ok):
        text = response.text[:300].strip() if not kwargs.get("stream") else ""
        response.close()
        hint = {**HINTS, **(hints or {})}.get(response.status_code)
        raise RemoteError(f"{server.name} answered {response.status_code} {response.reason} to {method} "
                          f"{path.split('?')[0]}{f' ({hint})' if hint else ''}{': ' + text if text else ''}")
    return response


# -- QIDO-RS -------------------------------------------------------------------------------------

QIDO_PATHS = {"study": "/studies", "series": "/series", "instance": "/instances"}


def qido(server: Server, level: str, filters: Mapping[str, str], *, study: str | None = None,
         series: str | None = None, limit: int | None = None, offset: int = 0,
         includefield: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Search ``server`` at ``level`` (study, series or instance): DICOM JSON answers.

    Raises
    ------
    RemoteError
        When the server fails or answers something that is not a JSON array.
    """
    path = QIDO_PATHS[level]
    for uid in (study, series):
        if uid is not None and not _UID.fullmatch(uid):
            raise DolmenError(f"{uid[:64]!r} is not a UID", code="bad_request")
    if series is not None and study is not None:
        path = f"/studies/{study}/series/{series}/instances"
    elif study is not None:
        path = f"/studies/{study}{path}"
    params: list[tuple[str, str]] = [(k, v) for k, v in filters.items() if v]
    params += [("includefield", f) for f in includefield]
    if limit is not None:
        params.append(("limit", str(limit)))
    if offset:
        params.append(("offset", str(offset)))
    response = request(server, "GET", path + ("?" + query_string(params) if params else ""), ok=(200, 204),
                       headers={"Accept": "application/dicom+json"})
    if response.status_code == 204 or not response.content.strip():
        return []
    kind = response.headers.get("Content-Type", "no content type").split(";")[0]
    try:
        answers = response.json()
    except ValueError:
        raise RemoteError(f"{server.name} did not answer the search with DICOM JSON (it sent {kind} that "
                          f"is not JSON): is {server.base} the server's DICOMweb root?") from None
    if not isinstance(answers, list):
        raise RemoteError(f"{server.name} answered the search with a JSON {type(answers).__name__} "
                          "instead of a list of matches: is its URL the DICOMweb root?")
    return [a for a in answers if isinstance(a, dict)]


def query_string(params: Iterable[tuple[str, str]]) -> str:
    """``k=v&...`` with the wildcards ``*`` and ``?`` left as they are.

    Orthanc's DICOMweb plugin does not decode ``%2A``: ``PatientName=DOE%2A`` matches nothing there.
    """
    return urlencode(list(params), quote_via=quote, safe="*?")


def simplify(answer: Mapping[str, Any]) -> dict[str, str]:
    """``{keyword: text}`` of a DICOM JSON answer (multiple values joined with backslashes)."""
    out: dict[str, str] = {}
    for tag, element in answer.items():
        attr = query.attribute(tag)
        keyword = attr.keyword if attr else _keyword(tag)
        if not keyword or not isinstance(element, Mapping):
            continue
        values = element.get("Value") or []
        texts = []
        for value in values:
            if isinstance(value, Mapping):
                texts.append(str(value.get("Alphabetic", "")))
            elif not isinstance(value, (list, dict)):
                texts.append(str(value))
        out[keyword] = "\\".join(texts)
    return out


def _keyword(tag: str) -> str:
    from pydicom.datadict import keyword_for_tag

    try:
        return str(keyword_for_tag(int(tag, 16)) or "")
    except ValueError:
        return ""


def proxy_get(server: Server, uri: str, headers: Mapping[str, str] | None = None,
              arguments: Mapping[str, str] | None = None) -> tuple[int, str, bytes]:
    """GET ``uri`` (relative to the server's URL) and return (status, content type, body).

    Raises
    ------
    RemoteError
        When the server cannot be reached.
    """
    if not uri.startswith("/"):
        uri = "/" + uri
    if arguments:
        uri += ("&" if "?" in uri else "?") + query_string(list(dict(arguments).items()))
    response = request(server, "GET", uri, ok=range(100, 600), headers=dict(headers or {}))
    kind = response.headers.get("Content-Type", "application/octet-stream")
    return response.status_code, kind, response.content


# -- WADO-RS into Dolmen --------------------------------------------------------------------------


@dataclass
class Transfer:
    """The outcome of a retrieve or a send."""

    done: int = 0
    failed: int = 0
    bytes: int = 0
    instances: list[str] = field(default_factory=list)  # local public ids (retrieve) or SOP UIDs (send)
    failures: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"Instances": len(self.instances), "Done": self.done, "Failed": self.failed,
                "Bytes": self.bytes, "Resources": self.instances, "Failures": self.failures[:100]}


def resource_path(resource: Mapping[str, Any]) -> str:
    """``/studies/{s}[/series/{se}[/instances/{i}]]`` for ``{"Study": s, "Series": se, "Instance": i}``.

    Raises
    ------
    DolmenError
        ``bad_request`` when a UID is missing or malformed.
    """
    parts = [("studies", resource.get("Study")), ("series", resource.get("Series")),
             ("instances", resource.get("Instance"))]
    path = ""
    for n, (name, uid) in enumerate(parts):
        if uid in (None, ""):
            if n == 0:
                raise DolmenError("Each resource needs at least a \"Study\" UID", code="bad_request")
            break
        if not isinstance(uid, str) or not _UID.fullmatch(uid) or len(uid) > 64:
            raise DolmenError(f"{str(uid)[:64]!r} is not a UID", code="bad_request")
        path += f"/{name}/{uid}"
    return path


def retrieve(server: Server, ingestor: Ingestor, resources: Iterable[Mapping[str, Any]], *,
             on_instance: Callable[[Transfer], None] | None = None,
             cancelled: Callable[[], bool] | None = None, owner: str = "dicomweb") -> Transfer:
    """WADO-RS each resource from ``server`` and file every part through the one ingest path.

    Parts are read from the network straight into the spool (a 2 GB study never sits in
    memory). ``on_instance`` is called after each part; ``cancelled`` is checked between parts.

    Raises
    ------
    RemoteError
        When the server cannot be reached or refuses a resource.
    """
    result = Transfer()
    host = urlparse(server.url).hostname or ""
    for resource in resources:
        path = resource_path(resource)
        response = request(server, "GET", path, stream=True, headers={"Accept": RETRIEVE_ACCEPT},
                           hints={404: f"{server.name} does not have this resource"})
        with response:
            media = parse_media_type(response.headers.get("Content-Type", "application/octet-stream"))
            response.raw.decode_content = True
            if media.type == "application/dicom":  # a server answering one part without multipart
                parts: Iterable[Any] = [response.raw]
            elif media.type == "multipart/related" and media.param("boundary"):
                parts = MultipartReader(response.raw, str(media.param("boundary")))
            else:
                raise RemoteError(f"{server.name} answered {media.type} instead of DICOM files to GET {path}")
            for part in parts:
                if cancelled is not None and cancelled():
                    return result
                outcome = ingestor.ingest_stream(part, Source("retrieve", ip=host), owner=owner)
                if outcome.ok:
                    result.done += 1
                    result.instances.append(outcome.instance_id)
                    result.bytes = _stored_bytes(result, outcome.instance_id)
                else:
                    result.failed += 1
                    result.failures.append({"resource": path, "sop_instance_uid": outcome.sop_instance_uid,
                                            "message": outcome.reason})
                if on_instance is not None:
                    on_instance(result)
    return result


def _stored_bytes(result: Transfer, instance_id: str) -> int:
    size = Instance.select(Instance.file_size).where(Instance.public_id == instance_id).scalar()
    return result.bytes + int(size or 0)


def count_instances(server: Server, resources: Iterable[Mapping[str, Any]]) -> int | None:
    """How many instances the resources hold according to the server (QIDO-RS), if it says."""
    total = 0
    try:
        for r in resources:
            if r.get("Instance"):
                total += 1
                continue
            if r.get("Series"):
                found = qido(server, "series", {"SeriesInstanceUID": str(r["Series"])}, study=str(r["Study"]))
                tag = "00201209"
            else:
                found = qido(server, "study", {"StudyInstanceUID": str(r["Study"])})
                tag = "00201208"
            values = (found[0].get(tag, {}).get("Value") or [None]) if found else [None]
            if values[0] is None:
                return None
            total += int(values[0])
    except (DolmenError, ValueError, TypeError):
        return None
    return total


# -- STOW-RS of local resources -------------------------------------------------------------------

_LEVEL_MODELS: tuple[tuple[str, Any], ...] = (("patient", Patient), ("study", Study), ("series", Series),
                                              ("instance", Instance))


def local_levels(public_ids: Iterable[str]) -> list[dict[str, str]]:
    """``[{"level": "study", "id": ...}]`` for local resources given by public id (any level).

    Raises
    ------
    NotFound
        When an identifier names no resource.
    """
    out = []
    for public_id in public_ids:
        for level, model in _LEVEL_MODELS:
            if model.select(model.pk).where(model.public_id == str(public_id)).exists():
                out.append({"level": level, "id": str(public_id)})
                break
        else:
            raise NotFound(f"No patient, study, series or instance {str(public_id)[:64]!r} here")
    return out


def local_instances(public_ids: Iterable[str]) -> list[Instance]:
    """The stored instances of local resources given by public id (any level), each once.

    Raises
    ------
    NotFound
        When an identifier names no resource.
    """
    seen: set[int] = set()
    out: list[Instance] = []
    models = dict(_LEVEL_MODELS)
    for resource in local_levels(public_ids):
        model = models[resource["level"]]
        found = (Instance.select(Instance.pk, Instance.path, Instance.sop_instance_uid, Instance.file_size)
                 .join(Series).join(Study).join(Patient).where(model.public_id == resource["id"])
                 .order_by(Series.series_number, Series.pk, Instance.instance_number, Instance.pk))
        for instance in found:
            if instance.pk not in seen:
                seen.add(instance.pk)
                out.append(instance)
    return out


def stow(server: Server, store: Store, instances: list[Instance], *,
         on_batch: Callable[[Transfer], None] | None = None,
         cancelled: Callable[[], bool] | None = None) -> Transfer:
    """STOW-RS the instances to ``server`` in batches, each request streamed from the files.

    A batch refused as a whole (HTTP 4xx/5xx without a Store Instances Response) counts its
    instances as failed with the server's message; the next batches are still tried.

    Raises
    ------
    RemoteError
        When the server cannot be reached at all.
    """
    result = Transfer()
    batches: list[list[Instance]] = [[]]
    size = 0
    for instance in instances:
        if batches[-1] and (len(batches[-1]) >= STOW_BATCH or size + instance.file_size > STOW_BATCH_BYTES):
            batches.append([])
            size = 0
        batches[-1].append(instance)
        size += int(instance.file_size)
    for batch in batches:
        if not batch or (cancelled is not None and cancelled()):
            continue
        boundary = new_boundary()
        body = SizedBody([Part("application/dicom", store.path(i.path)) for i in batch], boundary)
        response = request(server, "POST", "/studies", ok=range(100, 600), data=body,
                           headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                                    f'boundary={boundary}',
                                    "Accept": "application/dicom+json"})
        _count_stow(response, batch, result, server)
        if on_batch is not None:
            on_batch(result)
    return result


def _count_stow(response: requests.Response, batch: list[Instance], result: Transfer, server: Server) -> None:
    try:
        doc = response.json() if response.content.strip() else {}
    except ValueError:
        doc = {}
    failed_uids: dict[str, Any] = {}
    if isinstance(doc, dict):
        for item in (doc.get("00081198") or {}).get("Value") or []:
            uid = ((item.get("00081155") or {}).get("Value") or [""])[0]
            reason = ((item.get("00081197") or {}).get("Value") or [None])[0]
            failed_uids[str(uid)] = reason
    whole_batch = response.status_code >= 300 and not failed_uids and response.status_code != 202
    for instance in batch:
        uid = str(instance.sop_instance_uid)
        if whole_batch or uid in failed_uids:
            reason = failed_uids.get(uid)
            message = (f"failure reason 0x{int(reason):04X}" if isinstance(reason, int)
                       else f"{server.name} answered {response.status_code} {response.reason}")
            result.failed += 1
            result.failures.append({"sop_instance_uid": uid, "status": response.status_code,
                                    "message": message})
        else:
            result.done += 1
            result.bytes += int(instance.file_size)
            result.instances.append(uid)


# -- jobs (run in the sidecar) --------------------------------------------------------------------


def _progress(job: jobs.JobContext, kind: str) -> Callable[[Transfer], None]:
    """A callback copying a transfer's counters into the job, each new failure as a failed item."""
    def update(t: Transfer) -> None:
        for failure in t.failures[job.failed:]:
            job.fail_item(**failure)
        total = max(job.total, t.done + t.failed) if kind == "retrieve" else None
        job.progress(done=t.done, bytes_done=t.bytes, total=total)

    return update


def run_wado(job: jobs.JobContext) -> None:
    """Job kind ``wado``: params ``{"server": name, "resources": [{"Study": ..., ...}]}``."""
    server = DICOMWEB_SERVERS.get(job.settings, str(job.params.get("server", "")))
    resources = list(job.params.get("resources") or [])
    assert job.ingestor is not None
    total = count_instances(server, resources)
    if total is not None:
        job.progress(total=total, force=True)
    job.note(request=f"GET {server.base}", resources=resources)

    result = retrieve(server, job.ingestor, resources, on_instance=_progress(job, "retrieve"),
                      cancelled=job.cancelled)
    job.progress(done=result.done, total=max(job.total, result.done + result.failed), force=True)
    job.check_cancelled()
    if result.failed:
        raise jobs.JobFailed(f"{result.failed} of {result.done + result.failed} instances were refused")


def run_stow(job: jobs.JobContext) -> None:
    """Job kind ``stow``: params ``{"server": name, "resources": [local public ids]}``."""
    server = DICOMWEB_SERVERS.get(job.settings, str(job.params.get("server", "")))
    instances = local_instances(list(job.params.get("resources") or []))
    assert job.store is not None
    job.progress(total=len(instances), force=True)

    result = stow(server, job.store, instances, on_batch=_progress(job, "stow"), cancelled=job.cancelled)
    job.progress(done=result.done, bytes_done=result.bytes, force=True)
    job.check_cancelled()
    if result.failed:
        raise jobs.JobFailed(f"{result.failed} of {len(instances)} instances were refused by {server.name}")


jobs.register_kind("wado", run_wado, label="DICOMweb retrieve")
jobs.register_kind("stow", run_stow, label="DICOMweb send")


__all__ = ["Transfer", "count_instances",
           "local_instances", "local_levels", "proxy_get", "qido",
           "query_string", "resource_path", "retrieve", "run_stow", "run_wado", "simplify",
           "stow"]
