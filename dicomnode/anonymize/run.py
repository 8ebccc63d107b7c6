"""Anonymize or modify a stored resource: read each instance, change it, store the copy through
the one ingest path, journal it; or, for a dry run, only say what would change.

Used as it is by the web process (Orthanc's synchronous calls, dry runs) and by the sidecar's
job kinds (:mod:`dicomnode.jobs.modify`). All or nothing: an instance that cannot be read or
stored (the source deleted mid-way, a full disk) stops the operation, and the copies already
stored are deleted again, so no half-anonymized study is left behind.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydicom import dcmread

from dicomnode.anonymize.profile import Plan
from dicomnode.anonymize.profile import Session
from dicomnode.anonymize.profile import apply
from dicomnode.anonymize.profile import burned_in_warning
from dicomnode.anonymize.profile import encode
from dicomnode.archive import orthanc
from dicomnode.archive import resources
from dicomnode.archive.index import Export
from dicomnode.archive.index import utcnow
from dicomnode.archive.ingest import IngestResult
from dicomnode.archive.ingest import Ingestor
from dicomnode.archive.ingest import Source
from dicomnode.archive.store import Store
from dicomnode.errors import DolmenError
from dicomnode.errors import NotFound

LOGGER = logging.getLogger(__name__)
LEVEL = {"Patient": resources.PATIENT, "Study": resources.STUDY, "Series": resources.SERIES,
         "Instance": resources.INSTANCE}
#: Most distinct changes a dry run lists (each with the number of instances it applies to).
MAX_DIFFS = 2000


class SourceGone(DolmenError):
    """The resource changed under the operation (deleted, or an instance file missing): 409."""

    code = "conflict"
    http_status = 409
    orthanc_status = 8


def _row(resource_type: str, public_id: str) -> Any:
    model: Any = orthanc.MODEL[resource_type]
    row = model.get_or_none(model.public_id == public_id)
    if row is None:
        raise NotFound(f"No {resource_type.lower()} {public_id[:60]!r} in the archive")
    return row


def _label(resource_type: str, row: Any) -> str:
    study = orthanc.ancestor(resource_type, row, "Study") if resource_type != "Patient" else None
    patient = orthanc.ancestor(resource_type, row, "Patient")
    parts = [str(patient.patient_name or patient.patient_id or "")]
    if study is not None:
        parts.append(" ".join(filter(None, [study.study_description, study.study_date])))
    return " / ".join(p for p in parts if p)[:200]


def _read(store: Store, instance: Any) -> Any:
    try:
        return dcmread(str(store.path(instance.path)), force=True)
    except (OSError, NotFound) as exc:
        raise SourceGone(f"Instance {instance.public_id} could not be read ({exc}): was it deleted while "
                         "the operation ran? Nothing was stored.") from None


def dry_run(plan: Plan, resource_type: str, public_id: str, store: Store) -> dict[str, Any]:
    """What the operation would change, without writing anything: each distinct change with the
    number of instances it applies to (the first :data:`MAX_DIFFS`)."""
    row = _row(resource_type, public_id)
    session = Session(plan)
    instances = orthanc.instance_rows(resource_type, row)
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    warnings: set[str] = set()
    for instance in instances:
        ds = _read(store, instance)
        for diff in apply(ds, session):
            key = (diff.path, diff.before, diff.after, diff.action)
            if key in seen:
                seen[key]["Instances"] += 1
            elif len(seen) < MAX_DIFFS:
                seen[key] = {**diff.as_json(), "Instances": 1}
        warning = burned_in_warning(ds)
        if warning:
            warnings.add(warning)
    changes = sorted(seen.values(), key=lambda d: (d["Tag"], str(d["Before"])))
    return {"DryRun": True, "Type": resource_type, "ID": public_id, "InstancesCount": len(instances),
            "Changes": changes, "Truncated": len(seen) >= MAX_DIFFS, "Warnings": sorted(warnings),
            "IsAnonymization": plan.kind == "anonymize"}


def run(plan: Plan, resource_type: str, public_id: str, *, store: Store, ingestor: Ingestor, user: str = "",
        job: int | None = None, progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Carry the operation out; Orthanc's answer (``ID``, ``Path``, ``PatientID``, ``Type``, counts).

    Raises
    ------
    SourceGone
        When an instance vanished mid-way (its copies were deleted again).
    DolmenError
        When a copy could not be stored (idem).
    """
    row = _row(resource_type, public_id)
    instances = orthanc.instance_rows(resource_type, row)
    numbered_from = Export.select().where(Export.kind == "anonymize").count() if plan.kind == "anonymize" else 0
    entry = Export.create(user=user[:200], kind=plan.kind, level=resource_type, source_id=public_id,
                          source_label=_label(resource_type, row), profile=plan.profile,
                          options=json.dumps(sorted(plan.options)), instances=len(instances), job=job)
    session = Session(plan, numbered_from=numbered_from)
    source = Source(origin=plan.kind, aet=user[:64])
    stored: list[str] = []
    warnings: set[str] = set()
    last = None
    # Instance n is stored (spool, fsync, index: mostly outside the GIL) by a worker thread
    # while instance n+1 is read and changed here.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{plan.kind}-store")
    pending: Future[IngestResult] | None = None
    pending_instance: tuple[Any, str] | None = None

    def settle() -> None:
        nonlocal last, pending, pending_instance
        if pending is None or pending_instance is None:
            return
        result = pending.result()
        instance, new_sop = pending_instance
        pending, pending_instance = None, None
        if not result.ok:
            raise DolmenError(f"The copy of instance {instance.public_id} was refused: {result.reason}",
                              code=result.code or "rejected")
        if result.status == "stored":
            stored.append(result.instance_id)
        elif new_sop == instance.sop_instance_uid:
            raise DolmenError(f"The copy of instance {instance.public_id} keeps its SOPInstanceUID, so it is "
                              "the same instance to the archive and was not stored: let the UIDs be renewed "
                              "(drop SOPInstanceUID from Keep)", code="conflict")
        last = result

    try:
        for n, instance in enumerate(instances, 1):
            if cancelled is not None and cancelled():
                raise DolmenError("Cancelled: the copies made so far were deleted again", code="cancelled")
            ds = _read(store, instance)
            apply(ds, session)
            warning = burned_in_warning(ds)
            if warning:
                warnings.add(warning)
            data = encode(ds)
            settle()
            pending = pool.submit(_store, ingestor, data, source, plan.kind)
            pending_instance = (instance, str(ds.get("SOPInstanceUID", "")))
            if progress is not None and n > 1:
                progress(n - 1, len(instances))
        settle()
        if progress is not None:
            progress(len(instances), len(instances))
    except Exception as exc:
        if pending is not None:  # the copy in flight: wait for it, so that it is deleted too
            try:
                result = pending.result()
                if result.status == "stored":
                    stored.append(result.instance_id)
            except Exception:  # noqa: BLE001 - the first error is the one raised
                pass
        for instance_id in reversed(stored):
            try:
                resources.delete(store, resources.INSTANCE, instance_id)
            except NotFound:
                pass
        Export.update(status="failure", message=str(exc)[:2000]).where(Export.pk == entry.pk).execute()
        raise
    finally:
        pool.shutdown(wait=True)
    if last is None:
        Export.update(status="failure", message="nothing to do: the resource has no instances").where(
            Export.pk == entry.pk).execute()
        raise SourceGone(f"The {resource_type.lower()} {public_id} has no instances left")
    new_id = {"Patient": last.patient_id, "Study": last.study_id, "Series": last.series_id,
              "Instance": last.instance_id}[resource_type]
    if not plan.keep_source and new_id != public_id:
        try:
            resources.delete(store, LEVEL[resource_type], public_id)
        except NotFound:
            pass
    Export.update(status="success", result_id=new_id, at=utcnow()).where(Export.pk == entry.pk).execute()
    LOGGER.info("%s of %s %s by %s: %d instance(s) -> %s", plan.kind, resource_type, public_id, user or "?",
                len(instances), new_id)
    return {"Description": "REST API", "FailedInstancesCount": 0, "ID": new_id,
            "InstancesCount": len(instances), "IsAnonymization": plan.kind == "anonymize",
            "Path": f"/{orthanc.SEGMENT[resource_type]}/{new_id}", "PatientID": last.patient_id,
            "Type": resource_type, "Warnings": sorted(warnings), "Journal": entry.pk}


def _store(ingestor: Ingestor, data: bytes, source: Source, kind: str) -> IngestResult:
    from dicomnode.archive import index

    try:
        return ingestor.ingest_bytes(data, source, owner=kind)
    finally:
        index.close_index()  # this thread's connection, not kept by a pool thread


def one_instance(plan: Plan, public_id: str, store: Store) -> bytes:
    """``POST /instances/{id}/anonymize|modify``: the changed file, not stored (as Orthanc)."""
    instance = _row("Instance", public_id)
    ds = _read(store, instance)
    apply(ds, Session(plan))
    return encode(ds)
