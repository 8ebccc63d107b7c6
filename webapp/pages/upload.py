"""Upload DICOM files, folders and ZIP files from the browser or a script.

``POST /upload`` takes the multipart field ``files`` (any number, ZIP files included), so
``curl -F files=@a.dcm -F files=@b.zip http://host:8042/upload`` works as well as the form.
Parts are written straight into the store's spool folder while the request is parsed (not
to ``/tmp``), then each goes through the one ingest path. The answer is a table with one row
per file (stored, already stored, or rejected with the reason), or JSON when asked for.
dolmen.js sends large selections in batches, skipping files the archive already holds.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO
from typing import Any

from flask import Blueprint
from flask import current_app
from flask import jsonify
from flask import request
from flask.typing import ResponseReturnValue
from werkzeug.formparser import parse_form_data

from dicomnode.archive import resources
from dicomnode.archive.ingest import REJECTED
from dicomnode.archive.ingest import IngestResult
from dicomnode.archive.ingest import Source
from dicomnode.archive.unzip import ZipLimits
from dicomnode.archive.unzip import ingest_zip
from dicomnode.archive.unzip import is_zip
from webapp import htmx
from webapp.errors import prefers_json
from webapp.services import services
from webapp.services import settings

bp = Blueprint("upload", __name__)

#: Files per request and bytes per request sent by dolmen.js (a larger file goes alone).
BATCH_FILES = 20
BATCH_BYTES = 64 * 1024 * 1024
#: SOP Instance UIDs one "already stored?" check may ask about.
MAX_CHECK = 1000


def _row(name: str, result: IngestResult, uid: str = "") -> dict[str, Any]:
    return {"name": name, "status": result.status, "reason": result.reason,
            "uid": uid or result.sop_instance_uid,
            "instance_id": result.instance_id, "study_id": result.study_id}


def _counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts = {"stored": 0, "duplicate": 0, "rejected": 0}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def _page(rows: list[dict[str, Any]], http_status: int = 200,
          error: str | None = None) -> ResponseReturnValue:
    counts = _counts(rows)
    if prefers_json():
        response = jsonify({"files": rows, **counts, "error": error})
        response.status_code = http_status
        return response
    return htmx.render("upload/upload.html", "upload/_results.html", http_status=http_status, rows=rows,
                       counts=counts, error=error, batch_files=BATCH_FILES, batch_bytes=BATCH_BYTES,
                       skip_stored=not settings()["storage.overwrite"])


@bp.route("/upload", methods=["GET", "POST"])
def upload() -> ResponseReturnValue:
    """The upload form; POST stores the ``files`` parts and answers one row per file."""
    if request.method == "GET":
        return _page([])
    svc = services()
    svc.store.check_space()
    spool = svc.store.spool_dir("web")
    spooled: list[str] = []

    def stream_factory(total_content_length: int | None, content_type: str | None, filename: str | None,
                       content_length: int | None = None) -> IO[bytes]:
        f = tempfile.NamedTemporaryFile(dir=spool, suffix=".part", delete=False)  # noqa: SIM115
        spooled.append(f.name)
        return f

    config = current_app.config
    rows: list[dict[str, Any]] = []
    try:
        _, _form, files = parse_form_data(
            request.environ, stream_factory=stream_factory, max_content_length=config["MAX_CONTENT_LENGTH"],
            max_form_memory_size=config["MAX_FORM_MEMORY_SIZE"], max_form_parts=config["MAX_FORM_PARTS"])
        source = Source("upload", ip=request.remote_addr or "")
        limits = ZipLimits(max_entries=settings()["http.max_zip_entries"],
                           max_bytes=settings()["http.max_zip_mb"] * 1024 * 1024,
                           max_member_bytes=svc.ingestor.max_bytes)
        for part in files.getlist("files"):
            path = getattr(part.stream, "name", None)
            part.stream.close()
            name = part.filename or "(unnamed)"
            if not isinstance(path, str):
                continue
            if not part.filename and os.path.getsize(path) == 0:
                continue  # an empty file input
            rows.extend(_ingest_part(name, path, source, limits))
    finally:
        for path in spooled:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    if not rows:
        return _page([], 400, "No file was sent: choose files, a folder or ZIP files "
                              "(multipart field 'files').")
    return _page(rows)


def _ingest_part(name: str, path: str, source: Source, limits: ZipLimits) -> list[dict[str, Any]]:
    """Ingest one uploaded part: a DICOM file, or every member of a ZIP file."""
    ingestor = services().ingestor
    if is_zip(path):
        rows = []
        for member, result in ingest_zip(ingestor, path, source, limits):
            rows.append(_row(f"{name} › {member}" if member else name, result))
        return rows
    if ingestor.max_bytes is not None and os.path.getsize(path) > ingestor.max_bytes:
        mib = ingestor.max_bytes // (1024 * 1024)
        return [_row(name, IngestResult(REJECTED, reason=f"Larger than the limit of {mib} MiB "
                                                            "([dicom] max_object_mb)"))]
    return [_row(name, ingestor.ingest_spooled(path, source))]


@bp.route("/upload/check", methods=["POST"])
def check() -> ResponseReturnValue:
    """Which of the given SOP Instance UIDs are stored already (``uid`` and ``name`` fields, paired).

    dolmen.js reads each file's (0002,0003) *Media Storage SOP Instance UID* and asks here
    before sending, so that resuming a large upload does not send again what arrived. The
    answer holds a row for each file already stored; the index answers, no file is read.
    """
    uids = request.form.getlist("uid")[:MAX_CHECK]
    names = request.form.getlist("name")[:MAX_CHECK]
    wanted = {u.strip(): n for u, n in zip(uids, names, strict=False) if u.strip()}
    rows = []
    found = resources.stored_instances(wanted)
    for uid, name in wanted.items():
        inst = found.get(uid)
        if inst is not None:
            rows.append({"name": name, "status": "duplicate", "reason": "Already stored: not sent again",
                         "uid": uid, "instance_id": inst.public_id, "study_id": ""})
    return _page(rows)
