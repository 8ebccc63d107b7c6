"""STOW-RS (PS3.18 10.5): store instances posted over HTTP through the one ingest path.

:func:`stow` spools each part, checks it belongs to the study of the URL, files it through
:class:`dicomnode.archive.ingest.Ingestor` and builds the Store Instances Response (PS3.18 Annex I).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any
from typing import BinaryIO

import pydicom

from dicomnode import status
from dicomnode.archive import query
from dicomnode.archive.index import Series
from dicomnode.archive.ingest import Ingestor
from dicomnode.archive.ingest import IngestResult
from dicomnode.archive.ingest import Source
from dicomnode.dicomweb.dicomjson import value_json
from dicomnode.dicomweb.multipart import MultipartReader
from dicomnode.dicomweb.multipart import parse_media_type
from dicomnode.dicomweb.negotiate import UnsupportedMediaType
from dicomnode.errors import DolmenError

LOGGER = logging.getLogger(__name__)


@dataclass
class StowResult:
    """The answer of a STOW-RS request: HTTP status and Store Instances Response (PS3.18 Annex I)."""

    status: int
    body: dict[str, Any]
    stored: int = 0
    failed: int = 0


def _stow_boundary(content_type: str) -> str:
    media = parse_media_type(content_type or "application/octet-stream")
    if media.type != "multipart/related":
        raise UnsupportedMediaType(
            f"STOW-RS takes multipart/related; type=\"application/dicom\", not {media.type}")
    kind = (media.param("type") or "application/dicom").lower()
    if kind != "application/dicom":
        raise UnsupportedMediaType(
            f"STOW-RS here takes DICOM files (type=\"application/dicom\"), not type=\"{kind}\"")
    boundary = media.param("boundary")
    if not boundary:
        raise UnsupportedMediaType("The multipart Content-Type has no boundary parameter")
    return boundary


def _uids_of(path: str | os.PathLike[str]) -> tuple[str, str, str]:
    """(Study Instance UID, SOP Class UID, SOP Instance UID) of a spooled file, best effort."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                             specific_tags=[0x0020000D, 0x00080016, 0x00080018])
        return tuple(str(ds.get(k, "") or "").strip(" \x00")  # type: ignore[return-value]
                     for k in ("StudyInstanceUID", "SOPClassUID", "SOPInstanceUID"))
    except Exception:
        return ("", "", "")


def _failure_code(result: IngestResult) -> int:
    if result.code in ("storage_full", "too_large"):
        return status.OUT_OF_RESOURCES
    if result.code == "rejected":
        return status.UNABLE_TO_PROCESS
    return status.PROCESSING_FAILURE


#: Parts one STOW-RS request may hold (a batch of more instances is split by the client).
MAX_STOW_PARTS = 10_000


def stow(ingestor: Ingestor, stream: BinaryIO | Any, content_type: str, base: str, source: Source,
         study_uid: str | None = None) -> StowResult:
    """Store each ``application/dicom`` part of a STOW-RS body through the one ingest path.

    Status (PS3.18 Table 10.5.3-1): 200 when every instance is stored (or already was), 202
    when some failed, 409 when none could be stored; 400 for a body without any part; 413 for a
    body of more than :data:`MAX_STOW_PARTS` parts (the first ones are stored and listed, the
    rest is not read).
    Failure reasons (PS3.18 Table I.2-2): 0xA700 out of resources (storage full, object too
    large), 0xC000 cannot understand (not DICOM, missing or invalid UIDs, a SOP Instance UID
    already filed in another study), 0xC409 the instance belongs to another study than the
    URL's, 0x0110 processing failure (the index failed).

    Raises
    ------
    UnsupportedMediaType
        When the body is not ``multipart/related; type="application/dicom"``.
    """
    boundary = _stow_boundary(content_type)
    store = ingestor.store
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    studies: set[str] = set()
    too_many = False
    for count, part in enumerate(MultipartReader(stream, boundary), 1):
        if count > MAX_STOW_PARTS:
            # The rest of the body is not read: each part costs a spool file and a parse.
            too_many = True
            LOGGER.warning("STOW-RS from %s stopped after %d parts (at most %d per request)",
                           source.ip or "?", MAX_STOW_PARTS, MAX_STOW_PARTS)
            break
        kind = parse_media_type(part.content_type).type if part.content_type else "application/dicom"
        if kind != "application/dicom":
            failed.append(_sop_item("", "", status.UNABLE_TO_PROCESS))
            LOGGER.info("STOW-RS part of type %s refused", kind)
            continue
        try:
            spool = store.spool_stream(part, owner="web", max_bytes=ingestor.max_bytes)  # type: ignore[arg-type]
        except DolmenError as exc:
            LOGGER.info("STOW-RS part refused: %s", exc.message)
            failed.append(_sop_item("", "", status.OUT_OF_RESOURCES if exc.code in ("storage_full", "too_large")
                                    else status.PROCESSING_FAILURE))
            continue
        if study_uid is not None:
            found_study, sop_class, sop_uid = _uids_of(spool)
            if found_study != study_uid:
                os.unlink(spool)
                LOGGER.info("STOW-RS to study %s: refused instance %s of study %s", study_uid, sop_uid,
                            found_study)
                failed.append(_sop_item(sop_class, sop_uid, status.STUDY_MISMATCH))
                continue
        result = ingestor.ingest_spooled(spool, source)
        if result.ok:
            studies.add(result.study_instance_uid)
            item = _sop_item(result.sop_class_uid, result.sop_instance_uid)
            item["00081190"] = {"vr": "UR", "Value": [
                f"{base}/studies/{result.study_instance_uid}/series/{_series_uid(result)}"
                f"/instances/{result.sop_instance_uid}"]}
            referenced.append(item)
        else:
            failed.append(_sop_item(result.sop_class_uid, result.sop_instance_uid, _failure_code(result)))
    if not referenced and not failed:
        raise query.QueryError("The STOW-RS request holds no DICOM instance")
    body: dict[str, Any] = {}
    study = study_uid or (next(iter(studies)) if len(studies) == 1 else None)
    if study:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    http_status = 200 if not failed else (202 if referenced else 409)
    if too_many:
        http_status = 413  # what came before the limit is stored and listed
    return StowResult(http_status, body, len(referenced), len(failed))


def _series_uid(result: IngestResult) -> str:
    row = Series.select(Series.series_instance_uid).where(Series.public_id == result.series_id).first()
    return str(row.series_instance_uid) if row else ""


def _sop_item(sop_class: str, sop_uid: str, failure: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"00081150": value_json("UI", sop_class), "00081155": value_json("UI", sop_uid)}
    if failure is not None:
        item["00081197"] = {"vr": "US", "Value": [failure]}
    return item
