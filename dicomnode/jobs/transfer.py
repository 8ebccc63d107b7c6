"""The DICOM job kinds: ``send`` (C-STORE), ``move`` (C-MOVE retrieve) and ``get`` (C-GET retrieve).

Registered in :mod:`dicomnode.jobs` when imported (the runner imports this module at start).
The network work is :mod:`dicomnode.net.scu`'s; here are the parameters, the local side (which
files to send, where retrieved instances go) and the progress.

Parameters (``Job.params``):

* ``send``: ``modality``, ``resources`` (a list of ``{"level": "patient|study|series|instance",
  "id": public id}``).
* ``move`` and ``get``: ``modality``, ``level`` (PATIENT, STUDY, SERIES, IMAGE), ``keys`` (the
  unique keys: PatientID, StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID), optional
  ``missing_only`` (retrieve only the instances not here), ``sop_classes`` (C-GET: storage SOP
  classes to accept besides the common ones); ``move`` also ``destination`` (default our AE
  title) and ``our_port`` (for the message when the remote node does not know us).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicomnode import jobs
from dicomnode import peers
from dicomnode import status
from dicomnode.archive.index import Instance
from dicomnode.archive.index import Patient
from dicomnode.archive.index import Series
from dicomnode.archive.index import Study
from dicomnode.archive.ingest import Source
from dicomnode.errors import DolmenError
from dicomnode.errors import RemoteError
from dicomnode.net import scu
from dicomnode.net import send
from dicomnode.net import wire

LOGGER = logging.getLogger(__name__)

RESOURCE_LEVELS = ("patient", "study", "series", "instance")
#: SOP Instance UIDs per C-MOVE/C-GET when retrieving missing instances only.
UID_CHUNK = 100


# -- send -----------------------------------------------------------------------------------


def send_items(resources: list[dict[str, Any]]) -> list[wire.SendItem]:
    """The stored instances of local resources, in study/series/instance order, each once.

    Raises
    ------
    DolmenError
        ``bad_request`` for an unknown level; ``not_found`` when a resource has no instance.
    """
    fields = {
        "patient": Patient.public_id,
        "study": Study.public_id,
        "series": Series.public_id,
        "instance": Instance.public_id,
    }
    seen: set[int] = set()
    items: list[wire.SendItem] = []
    for resource in resources:
        level, public_id = str(resource.get("level", "")).lower(), str(resource.get("id", ""))
        if level not in fields:
            raise DolmenError(
                f"Unknown resource level {level!r}: use {', '.join(RESOURCE_LEVELS)}", code="bad_request"
            )
        query = (
            Instance.select(
                Instance.pk,
                Instance.path,
                Instance.sop_class_uid,
                Instance.sop_instance_uid,
                Instance.transfer_syntax_uid,
                Instance.file_size,
            )
            .join(Series)
            .join(Study)
            .join(Patient)
            .where(fields[level] == public_id)
            .order_by(
                Study.study_date,
                Study.pk,
                Series.series_number,
                Series.pk,
                Instance.instance_number,
                Instance.pk,
            )
        )
        rows = list(query)
        if not rows:
            raise DolmenError(f"No {level} {public_id} here (or it holds no instance)", code="not_found")
        for row in rows:
            if row.pk in seen:
                continue
            seen.add(row.pk)
            items.append(
                wire.SendItem(
                    str(row.path),
                    str(row.sop_class_uid),
                    str(row.sop_instance_uid),
                    str(row.transfer_syntax_uid),
                    int(row.file_size),
                )
            )
    return items


def describe(resources: list[dict[str, Any]]) -> str:
    """What a send job sends, in words: ``study MULLER^ANNA 20150101 MR HEAD``."""
    models: dict[str, Any] = {"patient": Patient, "study": Study, "series": Series, "instance": Instance}
    parts = []
    for resource in resources:
        level, public_id = str(resource.get("level", "")), str(resource.get("id", ""))
        model = models.get(level)
        row = model.get_or_none(model.public_id == public_id) if model is not None else None
        if row is None:
            parts.append(f"{level} {public_id}")
        elif level == "patient":
            parts.append(f"patient {row.patient_name} ({row.patient_id})")
        elif level == "study":
            parts.append(f"study {row.patient.patient_name} {row.study_date} {row.study_description}")
        elif level == "series":
            parts.append(
                f"series {row.series_number or ''} {row.modality} {row.series_description} "
                f"of {row.study.patient.patient_name}"
            )
        else:
            parts.append(f"instance {row.instance_number or ''} of series {row.series.series_description}")
    return ", ".join(" ".join(p.split()) for p in parts)


def run_send(job: jobs.JobContext) -> None:
    """C-STORE every instance of the resources to the modality, over one association."""
    node = peers.MODALITIES.get(job.settings, str(job.params.get("modality", "")))
    items = send_items(list(job.params.get("resources") or []))
    assert job.store is not None
    items = [
        wire.SendItem(i.path, i.sop_class_uid, i.sop_instance_uid, i.transfer_syntax_uid, i.size, job.store)
        for i in items
    ]
    job.progress(total=len(items), force=True)

    def on_result(item: wire.SendItem, code: int | None, message: str) -> None:
        if code is not None and (code == status.SUCCESS or code in status.STORE_WARNINGS):
            job.progress(
                done=job.done + 1,
                bytes_done=job.bytes_done + item.size,
                warning=job.warning + (code != status.SUCCESS),
            )
            if code != status.SUCCESS:
                job.note(sop_instance_uid=item.sop_instance_uid, status=f"0x{code:04X}", message=message)
        else:
            job.fail_item(
                sop_instance_uid=item.sop_instance_uid,
                status=f"0x{code:04X}" if code is not None else None,
                message=message,
            )

    def cancelled() -> bool:  # between two instances: give way to reception, then check
        job.give_way()
        return job.cancelled()

    report = send.send(job.settings, node, items, on_result=on_result, cancelled=cancelled)
    job.flush(force=True)
    if report.cancelled:
        raise jobs.JobCancelled(f"cancelled after {report.sent} of {len(items)} instances")
    if report.failed:
        raise jobs.JobFailed(f"{report.failed} of {len(items)} instances failed")


# -- retrieve -------------------------------------------------------------------------------


def _local_uids(uids: list[str]) -> set[str]:
    here: set[str] = set()
    for n in range(0, len(uids), 500):
        chunk = uids[n : n + 500]
        rows: Any = Instance.select(Instance.sop_instance_uid).where(Instance.sop_instance_uid.in_(chunk))
        here.update(str(row[0]) for row in rows.tuples())
    return here


def missing_parts(
    job: jobs.JobContext, node: peers.Node, level: str, keys: dict[str, Any]
) -> list[dict[str, Any]]:
    """IMAGE-level key sets naming the instances under ``keys`` that are not here (C-FIND at each level)."""
    settings = job.settings
    level = level.upper()
    if level == "IMAGE":
        return [] if _local_uids([str(keys["SOPInstanceUID"])]) else [dict(keys)]
    studies = (
        [str(keys["StudyInstanceUID"])]
        if level != "PATIENT"
        else scu.unique_keys(settings, node, "STUDY", {"PatientID": keys["PatientID"]}, limit=10000)
    )
    parts: list[dict[str, Any]] = []
    for study in studies:
        series = (
            [str(keys["SeriesInstanceUID"])]
            if level == "SERIES"
            else scu.unique_keys(settings, node, "SERIES", {"StudyInstanceUID": study}, limit=10000)
        )
        for series_uid in series:
            job.check_cancelled()
            remote = scu.unique_keys(
                settings,
                node,
                "IMAGE",
                {"StudyInstanceUID": study, "SeriesInstanceUID": series_uid},
                limit=100000,
            )
            here = _local_uids(remote)
            missing = [u for u in remote if u not in here]
            for n in range(0, len(missing), UID_CHUNK):
                parts.append(
                    {
                        "StudyInstanceUID": study,
                        "SeriesInstanceUID": series_uid,
                        "SOPInstanceUID": missing[n : n + UID_CHUNK],
                    }
                )
    job.note(
        message=f"{sum(len(p['SOPInstanceUID']) for p in parts)} instance(s) missing here", parts=len(parts)
    )
    return parts


class _Progress:
    """Maps the sub-operation counters of successive retrieves onto the job's counters."""

    def __init__(self, job: jobs.JobContext, expected: int = 0) -> None:
        self.job = job
        self.base = {"completed": 0, "failed": 0, "warning": 0}
        self.last = {"completed": 0, "failed": 0, "warning": 0, "remaining": 0}
        self.expected = expected

    def __call__(self, entry: dict[str, Any]) -> None:
        self.job.note(**entry)
        if "completed" not in entry:
            return
        self.last = {k: int(entry.get(k, 0)) for k in ("completed", "failed", "warning", "remaining")}
        completed = self.base["completed"] + self.last["completed"]
        failed = self.base["failed"] + self.last["failed"]
        warning = self.base["warning"] + self.last["warning"]
        total = max(self.expected, completed + failed + warning + self.last["remaining"])
        self.job.progress(total=total, done=completed + warning, failed=failed, warning=warning)

    def next_part(self) -> None:
        for k in self.base:
            self.base[k] += self.last[k]
        self.last = {"completed": 0, "failed": 0, "warning": 0, "remaining": 0}


def _retrieve(job: jobs.JobContext, method: str) -> None:
    params = job.params
    node = peers.MODALITIES.get(job.settings, str(params.get("modality", "")))
    level = str(params.get("level", "STUDY")).upper()
    keys = scu.retrieve_keys(level, dict(params.get("keys") or {}))
    if params.get("missing_only"):
        parts = [("IMAGE", p) for p in missing_parts(job, node, level, keys)]
        expected = sum(len(p["SOPInstanceUID"]) for _, p in parts)
        if not parts:
            job.progress(total=0, force=True)
            return
    else:
        parts, expected = [(level, keys)], 0
    progress = _Progress(job, expected)
    failed_uids: list[str] = []
    for part_level, part_keys in parts:
        job.check_cancelled()
        report = _retrieve_part(job, node, method, part_level, part_keys, progress)
        failed_uids += report.failed_uids
        progress.next_part()
        if report.cancelled:
            raise jobs.JobCancelled("cancelled: the remote node was sent a C-CANCEL")
    for uid in failed_uids[: jobs.MAX_DETAILS]:
        job.fail_item(count=False, sop_instance_uid=uid, message="listed as failed by the remote node")
    job.flush(force=True)
    if job.failed:
        raise jobs.JobFailed(f"{job.failed} instance(s) could not be retrieved")


def _retrieve_part(
    job: jobs.JobContext, node: peers.Node, method: str, level: str, keys: dict[str, Any], progress: _Progress
) -> scu.RetrieveReport:
    params = job.params
    if method == "move":
        try:
            return scu.move(
                job.settings,
                node,
                level,
                keys,
                params.get("destination") or None,
                on_response=progress,
                cancelled=job.cancelled,
                our_port=params.get("our_port"),
            )
        except RemoteError as exc:
            # Orthanc answers 0xC000 (unable to process) when it does not know the destination.
            if exc.code in ("move_destination_unknown", "unable_to_process") and node.fallback_get:
                job.note(message=f"{exc.message} — falling back to C-GET as set for {node.name}")
                return _get(job, node, level, keys, progress)
            raise
    return _get(job, node, level, keys, progress)


def _get(
    job: jobs.JobContext, node: peers.Node, level: str, keys: dict[str, Any], progress: _Progress
) -> scu.RetrieveReport:
    assert job.ingestor is not None and job.store is not None
    ingestor = job.ingestor
    source = Source("retrieve", node.aet, node.host, job.settings["dicom.aet"])

    def store(path: Path) -> int:
        size = os.path.getsize(path)
        result = ingestor.ingest_spooled(path, source)
        if result.ok:
            job.progress(bytes_done=job.bytes_done + size)
            return status.SUCCESS
        job.fail_item(
            count=False,
            sop_instance_uid=result.sop_instance_uid,
            status=None,
            message=f"refused here: {result.reason}",
        )
        return status.OUT_OF_RESOURCES if result.code == "storage_full" else status.UNABLE_TO_PROCESS

    return scu.get(
        job.settings,
        node,
        level,
        keys,
        store=store,
        spool_dir=job.store.spool_dir("retrieve"),
        sop_classes=list(job.params.get("sop_classes") or []),
        on_response=progress,
        cancelled=job.cancelled,
    )


def run_move(job: jobs.JobContext) -> None:
    """Retrieve by C-MOVE: the remote node sends to our SCP (or another destination)."""
    _retrieve(job, "move")


def run_get(job: jobs.JobContext) -> None:
    """Retrieve by C-GET: the instances come back over our association, through the ingest path."""
    _retrieve(job, "get")


KINDS: dict[str, tuple[Callable[[jobs.JobContext], None], str]] = {
    "send": (run_send, "Send (C-STORE)"),
    "move": (run_move, "Retrieve (C-MOVE)"),
    "get": (run_get, "Retrieve (C-GET)"),
}

for _kind, (_run, _label) in KINDS.items():
    jobs.register_kind(_kind, _run, label=_label)
