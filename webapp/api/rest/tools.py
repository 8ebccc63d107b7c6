"""Orthanc's upload, search, change log, system and statistics routes."""
from __future__ import annotations

import contextlib
import gzip
import os
import zlib
from typing import Any

from flask import request
from flask.typing import ResponseReturnValue

from dicomnode import __version__
from dicomnode.archive import changes
from dicomnode.archive import maintags
from dicomnode.archive import orthanc
from dicomnode.archive import resources as archive_resources
from dicomnode.archive.ingest import IngestResult
from dicomnode.archive.ingest import Source
from dicomnode.archive.unzip import ZipLimits
from dicomnode.archive.unzip import ingest_zip
from dicomnode.archive.unzip import is_zip
from dicomnode.errors import DolmenError
from dicomnode.errors import RejectedInstance
from webapp import files
from webapp.api.rest import answer
from webapp.api.rest import flag
from webapp.api.rest import int_arg
from webapp.api.rest import json_body
from webapp.api.rest import route
from webapp.api.rest.resources import LEVEL
from webapp.api.rest.resources import any_resource
from webapp.api.rest.resources import instance_metadata
from webapp.api.rest.resources import stable_age
from webapp.services import services
from webapp.services import settings

#: The Orthanc release whose REST API Dolmen answers (``/system`` ``Version``), and its API version.
ORTHANC_VERSION = "1.12.1"
ORTHANC_API_VERSION = 21


class UnsupportedEncoding(DolmenError):
    code = "unsupported_encoding"
    http_status = 415


# -- upload ------------------------------------------------------------------------------------


def _upload_answer(result: IngestResult) -> dict[str, Any]:
    return {"ID": result.instance_id, "ParentPatient": result.patient_id, "ParentSeries": result.series_id,
            "ParentStudy": result.study_id, "Path": f"/instances/{result.instance_id}",
            "Status": "Success" if result.status == "stored" else "AlreadyStored"}


def _spool_body() -> str:
    """The request body in the store's spool, inflated when sent with ``Content-Encoding: gzip``.

    The body may be as large as ``[http] max_upload_mb`` once inflated: a gzip bomb stops there.
    """
    svc = services()
    svc.store.check_space()
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    stream: Any = request.stream
    if encoding in ("gzip", "x-gzip"):
        stream = gzip.GzipFile(fileobj=request.stream, mode="rb")
    elif encoding not in ("", "identity"):
        raise UnsupportedEncoding(f"Content-Encoding {encoding[:32]!r} is not accepted: send gzip, or the body "
                                  "uncompressed")
    cap = settings()["http.max_upload_mb"] * 1024 * 1024
    try:
        return str(svc.store.spool_stream(stream, owner="web", max_bytes=cap))
    except (OSError, EOFError, zlib.error) as exc:
        raise RejectedInstance(f"The compressed body cannot be inflated: {exc}") from None


@route("/instances", methods=("POST",))
def upload() -> ResponseReturnValue:
    """``POST /instances``: one DICOM file, or a ZIP of them, as the raw body (any Content-Type).

    One file answers ``{ID, ParentPatient, ParentStudy, ParentSeries, Path, Status}``; a ZIP a
    list with one answer per member (members refused say why in ``Details``).
    """
    spool = _spool_body()
    ingestor = services().ingestor
    source = Source("upload", ip=request.remote_addr or "")
    try:
        if os.path.getsize(spool) == 0:
            raise orthanc.BadRequest("The body is empty: send a DICOM file or a ZIP of DICOM files")
        if is_zip(spool):
            limits = ZipLimits(max_entries=settings()["http.max_zip_entries"],
                               max_bytes=settings()["http.max_zip_mb"] * 1024 * 1024,
                               max_member_bytes=ingestor.max_bytes)
            out = []
            for member, result in ingest_zip(ingestor, spool, source, limits):
                if not member and not result.ok:
                    raise RejectedInstance(result.reason)
                if result.ok:
                    out.append(_upload_answer(result))
                else:
                    out.append({"Details": result.reason, "ID": None, "Name": member, "Status": "Failure"})
            return answer(out)
        if ingestor.max_bytes is not None and os.path.getsize(spool) > ingestor.max_bytes:
            raise RejectedInstance(f"The file is larger than the limit of {ingestor.max_bytes // (1024 * 1024)} "
                                   "MiB ([dicom] max_object_mb)")
        result = ingestor.ingest_spooled(spool, source)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spool)
    if not result.ok:
        if result.code == "storage_full":
            raise DolmenError(result.reason, code="storage_full")
        raise RejectedInstance(result.reason)
    return answer(_upload_answer(result))


# -- search ------------------------------------------------------------------------------------


@route("/tools/find", methods=("POST",))
def find() -> ResponseReturnValue:
    """Orthanc's ``/tools/find``: Level, Query, Expand, Limit, Since, CaseSensitive, RequestedTags, Labels."""
    body = json_body()
    resource_type, rows, options = orthanc.find(body, case_sensitive_pn=settings()["dicom.case_sensitive_pn"])
    if not options["expand"]:
        return answer(rows)  # public ids
    described = orthanc.describe(resource_type, rows, stable_age=stable_age(),
                                 requested_tags=options["requested_tags"], store=services().store)
    if options["metadata"] and resource_type == "Instance":
        for body_out, row in zip(described, rows, strict=True):
            body_out["Metadata"] = instance_metadata(row)
    return answer(described)


@route("/tools/lookup", methods=("POST",))
def lookup() -> ResponseReturnValue:
    """The resources whose Patient ID, Study/Series/SOP Instance UID or Accession Number is the body."""
    text = request.get_data(as_text=True).strip()
    if not text:
        raise orthanc.BadRequest("Send the identifier to look up as the body")
    out = []
    for match in archive_resources.lookup(text):
        resource_type = next(t for t, lv in LEVEL.items() if lv == match.level)
        out.append({"ID": match.public_id, "Path": f"/{orthanc.SEGMENT[resource_type]}/{match.public_id}",
                    "Type": resource_type})
    return answer(out)


@route("/tools/count-resources")
def count_resources() -> ResponseReturnValue:
    return answer(orthanc.count_resources())


@route("/tools/labels")
def all_labels() -> ResponseReturnValue:
    return answer(changes.all_labels())


@route("/changes")
def read_changes() -> ResponseReturnValue:
    """``GET /changes?since=&limit=`` (limit 100 by default, at most 10,000), or ``?last``."""
    if flag("last"):
        return answer(changes.last_change())
    limit = int_arg("limit", 100) or 100
    return answer(changes.read(int_arg("since"), min(limit, 10000), stable_age=stable_age()))


@route("/changes", methods=("DELETE",))
def clear_changes() -> ResponseReturnValue:
    changes.clear()
    return answer({})


# -- archives --------------------------------------------------------------------------------


@route("/tools/<any('create-archive', 'create-media', 'create-media-extended'):kind>", methods=("POST",))
def create_archive(kind: str) -> ResponseReturnValue:
    """A ZIP of several resources: the body is a list of ids or ``{"Resources": [...]}``."""
    body = json_body()
    ids = body.get("Resources") if isinstance(body, dict) else body
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise orthanc.BadRequest("The body must be a list of resource ids, or {\"Resources\": [ids]}")
    if isinstance(body, dict) and body.get("Synchronous") is False:
        raise orthanc.BadRequest("Asynchronous archives are not supported: Dolmen streams the ZIP as it is "
                                 "read, so ask with Synchronous true")
    return files.archive_response([any_resource(i) for i in ids])


# -- system ------------------------------------------------------------------------------------


@route("/system")
def system() -> ResponseReturnValue:
    """Orthanc's ``/system``; ``Version`` is the Orthanc release whose API is answered, ``DolmenVersion`` ours."""
    svc = services()
    status = svc.sidecar_status()
    return answer({
        "ApiVersion": ORTHANC_API_VERSION,
        "Capabilities": {"HasExtendedChanges": False, "HasExtendedFind": False, "HasLabels": True},
        "CheckRevisions": False, "DatabaseBackendPlugin": None, "DatabaseServerIdentifier": "dolmen",
        "DatabaseVersion": 6,
        "DicomAet": settings()["dicom.aet"], "DicomPort": status.get("port", settings()["dicom.port"]),
        "DicomServerRunning": bool(status.get("ok")),
        "DolmenVersion": __version__, "HasLabels": True, "HttpPort": settings()["http.port"],
        "IngestTranscoding": "", "IsHttpServerSecure": False,
        "MainDicomTags": {level: ";".join(tags) for level, tags in maintags.BY_LEVEL.items()},
        "MaximumPatientCount": 0, "MaximumStorageMode": "Reject", "MaximumStorageSize": 0,
        "Name": "Dolmen", "OverwriteInstances": bool(settings()["storage.overwrite"]), "PluginsEnabled": False,
        "ReadOnly": False, "StorageAreaPlugin": None, "StorageCompression": False, "UserMetadata": {},
        "Version": ORTHANC_VERSION,
    })


def plugins_description() -> dict[str, dict[str, Any]]:
    """What stands in for Orthanc's plugins here, as ``/plugins/{id}`` describes each."""
    root = settings()["dicomweb.root"]
    found = {"dicom-web": {"Description": "DICOMweb (QIDO-RS, WADO-RS, STOW-RS, WADO-URI), built into Dolmen",
                           "Enabled": True, "ExtendsOrthancExplorer": False, "ID": "dicom-web",
                           "RootUri": root.rstrip("/") + "/", "Version": __version__}}
    if settings()["http.oe2_path"]:
        found["orthanc-explorer-2"] = {"Description": "Orthanc Explorer 2, served from [http] oe2_path",
                                       "Enabled": True, "ExtendsOrthancExplorer": False,
                                       "ID": "orthanc-explorer-2", "RootUri": "/ui/app/", "Version": "external"}
    return found


@route("/plugins")
def plugins() -> ResponseReturnValue:
    return answer(sorted(plugins_description()))


@route("/plugins/<name>")
def plugin(name: str) -> ResponseReturnValue:
    from dicomnode.errors import NotFound

    found = plugins_description().get(name)
    if found is None:
        raise NotFound(f"No plugin {name[:60]!r}: Dolmen has {', '.join(sorted(plugins_description()))}")
    return answer({k: v for k, v in found.items() if k != "Enabled"})


@route("/statistics")
def statistics() -> ResponseReturnValue:
    return answer(orthanc.global_statistics())


@route("/tools/now")
def now() -> ResponseReturnValue:
    from flask import Response

    from dicomnode.archive.index import utcnow

    return Response(utcnow().strftime("%Y%m%dT%H%M%S"), mimetype="text/plain")


@route("/tools/generate-uid")
def generate_uid() -> ResponseReturnValue:
    from flask import Response
    from pydicom.uid import generate_uid as new_uid

    level = request.args.get("level", "")
    orthanc.level_of(level or "instance")
    return Response(str(new_uid()), mimetype="text/plain")

