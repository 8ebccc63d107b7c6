"""Resources of the archive by identifier: fetch, look up, delete, and the thumbnail cache.

A *resource* is a patient, study, series or instance named by its Orthanc-compatible public
identifier (:mod:`dicomnode.ids`). This module is what the browse pages, the JSON API and the
lookup box share:

* :func:`get` fetches one row, raising :class:`~dicomnode.errors.NotFound` for an unknown or
  malformed identifier (a malformed one never reaches the database).
* :func:`lookup` finds resources by the identifiers people paste: (0010,0020) *Patient ID*,
  (0008,0050) *Accession Number*, the Study, Series and SOP Instance UIDs, or a public id.
  The index answers through the one query translator (:func:`dicomnode.archive.query.select`);
  no file is read.
* :func:`delete` removes a resource, its files and rows together, and
  :func:`remove_instance_rows` is the one place that takes instance rows out of the index
  while keeping the parents' counters right (the ingest path uses it when it overwrites).
* :class:`ThumbnailCache` keeps rendered thumbnails under ``<storage>/cache/thumbs/``.

Deleting follows the order of the crash contract: the rows go in one transaction first,
then the files and cached thumbnails. A crash in between leaves files without rows, which
start-up reconciliation re-indexes: a deletion can be undone by a crash, data is never lost.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomnode.archive import changes
from dicomnode.archive import query
from dicomnode.archive.index import Instance
from dicomnode.archive.index import Patient
from dicomnode.archive.index import Series
from dicomnode.archive.index import Study
from dicomnode.archive.index import utcnow
from dicomnode.archive.index import write_transaction
from dicomnode.archive.store import Store
from dicomnode.errors import DolmenError
from dicomnode.errors import NotFound
from dicomnode.errors import RenderError
from dicomnode.render import WINDOW_PRESETS
from dicomnode.render import Window
from dicomnode.render import placeholder
from dicomnode.render import render

LOGGER = logging.getLogger(__name__)

PATIENT = "patient"
STUDY = "study"
SERIES = "series"
INSTANCE = "instance"
LEVELS = (PATIENT, STUDY, SERIES, INSTANCE)
MODELS: dict[str, Any] = {PATIENT: Patient, STUDY: Study, SERIES: Series, INSTANCE: Instance}
#: The level's name in Orthanc's REST API ("ResourceType").
_RESOURCE_TYPE = {PATIENT: "Patient", STUDY: "Study", SERIES: "Series", INSTANCE: "Instance"}

#: An Orthanc identifier: a SHA-1 in five dash-separated groups of eight hex digits.
PUBLIC_ID = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{8}){4}")

#: Largest number of matches a lookup returns.
LOOKUP_LIMIT = 100

_CHUNK = 500  # rows per IN (...) list; SQLite allows 999 parameters in old builds


def is_public_id(text: str) -> bool:
    """True when ``text`` has the shape of a public identifier."""
    return bool(PUBLIC_ID.fullmatch(text))


def get(level: str, public_id: str) -> Any:
    """The row of ``level`` (``"patient"``...) whose public identifier is ``public_id``.

    Raises
    ------
    NotFound
        When the identifier is malformed or names nothing (deleted meanwhile, or a typo).
    """
    model = MODELS[level]
    if not isinstance(public_id, str) or not is_public_id(public_id):
        raise NotFound(f"{public_id[:80]!r} is not a {level} identifier: they look like "
                       "8 hexadecimal digits in five groups separated by dashes")
    row = model.get_or_none(model.public_id == public_id)
    if row is None:
        raise NotFound(f"No {level} {public_id} in the archive: it may have been deleted")
    return row


def instances_of(level: str, row: Any) -> Any:
    """The instances of a resource as a query joined to their series, study and patient."""
    q = Instance.select(Instance, Series).join(Series).join(Study).join(Patient)
    if level == INSTANCE:
        return q.where(Instance.pk == row.pk)
    if level == SERIES:
        return q.where(Series.pk == row.pk)
    if level == STUDY:
        return q.where(Study.pk == row.pk)
    return q.where(Patient.pk == row.pk)


# -- lookup ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """A resource found by :func:`lookup`: its level, public id, what matched and a label."""

    level: str
    public_id: str
    matched: str  # "PatientID", "AccessionNumber", ..., "public id"
    label: str


def lookup(text: str) -> list[Match]:
    """Resources whose identifier is exactly ``text``.

    ``text`` is compared with (0010,0020) *Patient ID*, (0008,0050) *Accession Number*,
    (0020,000D) *Study Instance UID*, (0020,000E) *Series Instance UID*, (0008,0018)
    *SOP Instance UID* (single value matching, PS3.4 C.2.2.2.1) and the public identifiers.
    At most :data:`LOOKUP_LIMIT` matches are returned, patients first.

    Raises
    ------
    DolmenError
        When ``text`` holds a wildcard: a lookup names one thing, the study list searches.
    """
    text = text.strip().strip("\x00")
    if not text:
        return []
    if "*" in text or "?" in text:
        raise DolmenError("The lookup box takes an exact identifier; search with wildcards "
                          "in the Studies or Patients list instead.", code="bad_query")
    matches: list[Match] = []
    if is_public_id(text):
        for level in LEVELS:
            row = MODELS[level].get_or_none(MODELS[level].public_id == text)
            if row is not None:
                matches.append(_match(level, row, "public id"))
    searches = [(query.PATIENT, "PatientID"), (query.STUDY, "AccessionNumber")]
    if re.fullmatch(r"[0-9]+(\.[0-9]+)*", text) and len(text) <= 64:
        searches += [(query.STUDY, "StudyInstanceUID"), (query.SERIES, "SeriesInstanceUID"),
                     (query.IMAGE, "SOPInstanceUID")]
    for qlevel, keyword in searches:
        level = {query.PATIENT: PATIENT, query.STUDY: STUDY, query.SERIES: SERIES,
                 query.IMAGE: INSTANCE}[qlevel]
        rows = query.select(qlevel, {keyword: text}).limit(LOOKUP_LIMIT - len(matches))
        matches.extend(_match(level, row, keyword) for row in rows)
        if len(matches) >= LOOKUP_LIMIT:
            break
    return matches


def _match(level: str, row: Any, matched: str) -> Match:
    if level == PATIENT:
        label = f"{row.patient_name} ({row.patient_id})"
    elif level == STUDY:
        label = f"{row.study_date} {row.study_description} — {row.patient.patient_name}"
    elif level == SERIES:
        label = f"{row.modality} #{row.series_number or ''} {row.series_description}"
    else:
        label = f"instance #{row.instance_number or ''} of {row.series.series_description}"
    return Match(level, row.public_id, matched, " ".join(label.split()))


# -- removing rows -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Removed:
    """What :func:`remove_instance_rows` took out of the index."""

    instances: int
    size: int
    paths: tuple[str, ...]
    instance_ids: tuple[str, ...]
    series: int
    studies: int
    patients: int


def remove_instance_rows(instance_pks: Iterable[int], *, prune: bool = True) -> Removed:
    """Delete instance rows and fix every counter above them; no file is touched.

    Call inside :func:`~dicomnode.archive.index.write_transaction`. The series, studies and patients
    of the removed instances get their ``num_*`` and ``size`` counters decreased, and the
    studies' (0008,0061) *Modalities in Study* and (0008,0062) *SOP Classes in Study*
    recomputed from what remains.

    Parameters
    ----------
    instance_pks : iterable of int
        Primary keys of the instances to remove.
    prune : bool
        Also delete the series, studies and patients left empty. The ingest path passes
        False when it replaces an instance inside the same series.
    """
    pks = list(dict.fromkeys(instance_pks))
    rows: list[tuple[int, str, str, int, int, int, int]] = []
    for chunk in _chunks(pks):
        rows.extend(
            Instance.select(Instance.pk, Instance.public_id, Instance.path, Instance.file_size,
                            Series.pk, Study.pk, Study.patient)
            .join(Series).join(Study).where(Instance.pk.in_(chunk)).tuples())
    if not rows:
        return Removed(0, 0, (), (), 0, 0, 0)
    per_series: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    study_of: dict[int, int] = {}
    patient_of: dict[int, int] = {}
    for _pk, _pid, _path, size, series_pk, study_pk, patient_pk in rows:
        per_series[series_pk][0] += 1
        per_series[series_pk][1] += size or 0
        study_of[series_pk] = study_pk
        patient_of[study_pk] = patient_pk
    for chunk in _chunks([r[0] for r in rows]):
        Instance.delete().where(Instance.pk.in_(chunk)).execute()

    now = utcnow()
    per_study: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])  # instances, size, series gone
    for series_pk, (count, size) in per_series.items():
        Series.update(num_instances=Series.num_instances - count, size=Series.size - size,
                      updated_at=now).where(Series.pk == series_pk).execute()
        gone = prune and not Instance.select().where(Instance.series == series_pk).exists()
        if gone:
            Series.delete().where(Series.pk == series_pk).execute()
        totals = per_study[study_of[series_pk]]
        totals[0] += count
        totals[1] += size
        totals[2] += int(gone)
    per_patient: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    series_gone = sum(t[2] for t in per_study.values())
    studies_gone = 0
    for study_pk, (count, size, removed_series) in per_study.items():
        Study.update(num_instances=Study.num_instances - count, size=Study.size - size,
                     num_series=Study.num_series - removed_series, updated_at=now).where(
            Study.pk == study_pk).execute()
        gone = prune and not Series.select().where(Series.study == study_pk).exists()
        if gone:
            Study.delete().where(Study.pk == study_pk).execute()
            studies_gone += 1
        else:
            _refresh_study_lists(study_pk)
        totals = per_patient[patient_of[study_pk]]
        totals[0] += count
        totals[1] += size
        totals[2] += removed_series
        totals[3] += int(gone)
    patients_gone = 0
    for patient_pk, (count, size, removed_series, removed_studies) in per_patient.items():
        Patient.update(num_instances=Patient.num_instances - count, size=Patient.size - size,
                       num_series=Patient.num_series - removed_series,
                       num_studies=Patient.num_studies - removed_studies, updated_at=now).where(
            Patient.pk == patient_pk).execute()
        if prune and not Study.select().where(Study.patient == patient_pk).exists():
            Patient.delete().where(Patient.pk == patient_pk).execute()
            patients_gone += 1
    return Removed(len(rows), sum(r[3] or 0 for r in rows), tuple(r[2] for r in rows),
                   tuple(r[1] for r in rows), series_gone, studies_gone, patients_gone)


def _refresh_study_lists(study_pk: int) -> None:
    """Recompute a study's ModalitiesInStudy and SOPClassesInStudy from its remaining rows."""
    modalities = sorted({m for (m,) in Series.select(Series.modality).where(
        Series.study == study_pk).distinct().tuples() if m})
    classes = sorted({c for (c,) in Instance.select(Instance.sop_class_uid).join(Series).where(
        Series.study == study_pk).distinct().tuples() if c})
    Study.update(modalities_in_study="\\".join(modalities),
                 sop_classes_in_study="\\".join(classes)).where(Study.pk == study_pk).execute()


def _chunks(values: list[int]) -> Iterable[list[int]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start:start + _CHUNK]


# -- deleting resources ------------------------------------------------------------------------


@dataclass(frozen=True)
class Deleted:
    """What :func:`delete` removed, and the nearest parent still in the archive."""

    level: str
    public_id: str
    instances: int
    size: int
    parent_level: str | None
    parent_id: str | None


def delete(store: Store, level: str, public_id: str, *, cache: ThumbnailCache | None = None) -> Deleted:
    """Delete a patient, study, series or instance: its rows, then its files and thumbnails.

    Raises
    ------
    NotFound
        When the resource does not exist (already deleted by someone else, for instance).
    """
    with write_transaction():
        row = get(level, public_id)
        chain = _parents(level, row)
        pks = [pk for (pk,) in instances_of(level, row).select(Instance.pk).tuples()]
        removed = remove_instance_rows(pks, prune=True)
        model = MODELS[level]
        if level != INSTANCE and model.select().where(model.pk == row.pk).exists():
            # A resource without instances (nothing to prune it) goes too; rows below cascade.
            model.delete().where(model.pk == row.pk).execute()
        parent_level, parent_id = None, None
        gone = [(level, public_id)]
        for candidate_level, candidate in chain:
            model = MODELS[candidate_level]
            if model.select().where(model.pk == candidate.pk).exists():
                parent_level, parent_id = candidate_level, candidate.public_id
                break
            gone.append((candidate_level, candidate.public_id))
        for gone_level, gone_id in gone:
            changes.log_deleted(_RESOURCE_TYPE[gone_level], [gone_id])
    for rel in removed.paths:
        try:
            store.delete(rel)
        except (OSError, DolmenError) as exc:
            LOGGER.warning("Could not delete the file %s of a deleted %s: %s", rel, level, exc)
    if cache is not None:
        for instance_id in removed.instance_ids:
            cache.forget(instance_id)
    LOGGER.info("Deleted %s %s: %d instances, %d bytes", level, public_id, removed.instances, removed.size)
    return Deleted(level, public_id, removed.instances, removed.size, parent_level, parent_id)


def _parents(level: str, row: Any) -> list[tuple[str, Any]]:
    """The resource's ancestors, nearest first."""
    chain: list[tuple[str, Any]] = []
    if level == INSTANCE:
        row = row.series
        chain.append((SERIES, row))
    if level in (INSTANCE, SERIES):
        row = row.study
        chain.append((STUDY, row))
    if level in (INSTANCE, SERIES, STUDY):
        chain.append((PATIENT, row.patient))
    return chain


# -- thumbnails --------------------------------------------------------------------------------


class ThumbnailCache:
    """Rendered thumbnails kept under ``<storage>/cache/thumbs/<id[:2]>/<id>/``.

    An entry is keyed by the instance's public id, the name of its stored file (new for each
    stored copy, so an overwritten instance never shows its old image), the frame, the window
    and the size. :func:`delete` removes an instance's folder. Writes go to a temporary file
    renamed into place, so concurrent requests never read half a PNG.

    Parameters
    ----------
    root : path
        The storage root; thumbnails go to ``cache/thumbs`` inside it.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve() / "cache" / "thumbs"

    def folder(self, instance_id: str) -> Path:
        """The folder of one instance's thumbnails."""
        if not is_public_id(instance_id):
            raise NotFound(f"{instance_id[:80]!r} is not an instance identifier")
        return self.root / instance_id[:2] / instance_id

    def get(self, store: Store, instance: Instance, *, frame: int = 0, window: str | None = None,
            size: int = 160) -> bytes:
        """The PNG thumbnail of ``frame`` of ``instance``, rendered once then read from disk.

        ``window`` names one of :data:`dicomnode.render.WINDOW_PRESETS` (None: the file's
        own). An instance that cannot be rendered gets a placeholder saying why, cached too.
        """
        preset: Window | None = WINDOW_PRESETS.get(window or "")
        stem = Path(instance.path).stem
        name = f"{stem}-f{frame}-{window if preset else 'default'}-{size}.png"
        target = self.folder(instance.public_id) / name
        with contextlib.suppress(FileNotFoundError):
            return target.read_bytes()
        path = store.path(instance.path)
        if not path.exists():
            raise NotFound(f"The file of instance {instance.public_id} is missing from the store")
        try:
            data = render(path, frame=frame, window=preset, max_size=size)
        except RenderError as exc:
            data = placeholder(exc.message, size=size)
        self._write(target, data)
        return data

    def forget(self, instance_id: str) -> None:
        """Remove every cached thumbnail of an instance."""
        with contextlib.suppress(FileNotFoundError, NotFound):
            shutil.rmtree(self.folder(instance_id))

    @staticmethod
    def _write(target: Path, data: bytes) -> None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except OSError as exc:  # a full or read-only cache only costs speed
            LOGGER.warning("Could not cache a thumbnail at %s: %s", target, exc)


__all__ = ["INSTANCE", "LEVELS", "PATIENT", "SERIES", "STUDY", "Deleted", "Match", "Removed",
           "ThumbnailCache", "delete", "get", "instances_of", "is_public_id", "lookup",
           "remove_instance_rows"]


#: What "already here" compares, by level: the remote answer's count attribute.
REMOTE_COUNT = {
    "patient": "NumberOfPatientRelatedInstances",
    "study": "NumberOfStudyRelatedInstances",
    "series": "NumberOfSeriesRelatedInstances",
}


def _remote_count(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def presence(level: str, answers: list[dict[str, str]]) -> list[dict[str, Any]]:
    """For each answer, what of it is already here: ``state`` (none, partial, complete, here),
    ``local`` and ``remote`` instance counts, and the local resource's ``public_id``."""
    model: Any
    if level == "patient":
        key, model, field = "PatientID", Patient, Patient.patient_id
    elif level == "study":
        key, model, field = "StudyInstanceUID", Study, Study.study_instance_uid
    elif level == "series":
        key, model, field = "SeriesInstanceUID", Series, Series.series_instance_uid
    else:
        key, model, field = "SOPInstanceUID", Instance, Instance.sop_instance_uid
    values = list({a.get(key, "") for a in answers if a.get(key)})
    local: dict[str, tuple[int, str]] = {}
    for n in range(0, len(values), 500):
        count_field = model.num_instances if model is not Instance else None
        columns = [field, model.public_id] + ([count_field] if count_field is not None else [])
        for row in model.select(*columns).where(field.in_(values[n : n + 500])).tuples():
            count = int(row[2]) if count_field is not None else 1
            previous = local.get(row[0], (0, row[1]))
            local[row[0]] = (previous[0] + count, previous[1])
    out = []
    for answer in answers:
        here, public_id = local.get(answer.get(key, ""), (0, ""))
        remote = _remote_count(answer.get(REMOTE_COUNT.get(level, ""), "")) if level != "instance" else 1
        if not here:
            state = "none"
        elif remote is None:
            state = "here"
        elif here >= remote:
            state = "complete"
        else:
            state = "partial"
        out.append({"state": state, "local": here, "remote": remote, "public_id": public_id})
    return out


# -- what the pages list ------------------------------------------------------------------------


def studies_of(patient: Patient) -> list[Study]:
    """A patient's studies, newest first."""
    return list(Study.select().where(Study.patient == patient.pk)
                .order_by(Study.study_date.desc(), Study.study_time.desc(), Study.pk.desc()))


def series_of(study: Study) -> list[Series]:
    """A study's series by Series Number."""
    return list(query.order(Series.select().where(Series.study == study.pk), query.SERIES, "number"))


def instances_in_series(series: Series) -> Any:
    """A series' instances by Instance Number (a query, to paginate)."""
    return query.order(Instance.select().where(Instance.series == series.pk), query.IMAGE, "number")


def stored_instances(sop_instance_uids: Iterable[str]) -> dict[str, Instance]:
    """The stored instances among ``sop_instance_uids``, by SOP Instance UID."""
    keys = list(sop_instance_uids)
    found: dict[str, Instance] = {}
    for start in range(0, len(keys), 500):
        for inst in Instance.select(Instance, Instance.series).where(
                Instance.sop_instance_uid.in_(keys[start:start + 500])):
            found[inst.sop_instance_uid] = inst
    return found


def modalities_in_archive(most: int = 64) -> list[str]:
    """Every modality in the archive, for the filter.

    A skip scan of the (0008,0060) *Modality* index: one indexed "next value after" lookup per
    modality, instead of a DISTINCT that reads every series (10 ms with 100,000 of them).
    """
    found: list[str] = []
    last = ""
    while len(found) < most:
        row = (Series.select(Series.modality).where(Series.modality > last)
               .order_by(Series.modality).limit(1).first())
        if row is None:
            break
        last = row.modality
        found.append(last)
    return found


def key_images(series: list[Series]) -> dict[int, str]:
    """The public id of the middle instance (by InstanceNumber) of each series."""
    images = {}
    for s in series:
        middle = (Instance.select(Instance.public_id).where(Instance.series == s.pk)
                  .order_by(Instance.instance_number, Instance.pk)
                  .offset(max(0, s.num_instances // 2)).limit(1).first())
        if middle is None:  # counters off: fall back to the first
            middle = Instance.select(Instance.public_id).where(Instance.series == s.pk).first()
        if middle is not None:
            images[s.pk] = middle.public_id
    return images


def neighbours(row: Instance, series_row: Series) -> tuple[str | None, str | None]:
    """The previous and next instances of the series, in InstanceNumber order."""
    siblings = Instance.select(Instance.public_id).where(Instance.series == series_row.pk)
    ids = [i for (i,) in query.order(siblings, query.IMAGE, "number").tuples()]
    at = ids.index(row.public_id) if row.public_id in ids else -1
    before = ids[at - 1] if at > 0 else None
    after = ids[at + 1] if 0 <= at < len(ids) - 1 else None
    return before, after


def archive_rows(level: str, row: Any) -> list[tuple[Any, ...]]:
    """What a ZIP of a resource names its files by, one tuple per instance in study, series and
    instance order: patient name and ID, study date and description, series number, modality
    and description, instance number, the instance's pk and path."""
    return list(instances_of(level, row).select(
        Patient.patient_name, Patient.patient_id, Study.study_date, Study.study_description,
        Series.series_number, Series.modality, Series.series_description, Instance.instance_number,
        Instance.pk, Instance.path,
    ).order_by(Study.study_date, Study.pk, Series.series_number, Series.pk, Instance.instance_number,
               Instance.pk).tuples())


LEVEL_MODELS: dict[str, Any] = {"patient": Patient, "study": Study, "series": Series, "instance": Instance}


def job_resources(kind: str, params: dict[str, Any]) -> list[tuple[str, Any]]:
    """The local resources of a job of ``kind`` with ``params``, as (level, row): what a send
    sends, what a retrieve brought (or was to bring)."""
    out: list[tuple[str, Any]] = []
    if kind == "send":
        for resource in params.get("resources") or []:
            model = LEVEL_MODELS.get(str(resource.get("level")))
            row = model.get_or_none(model.public_id == str(resource.get("id"))) if model else None
            if row is not None:
                out.append((str(resource["level"]), row))
        return out
    if kind == "stow":  # local public ids of any level
        for public_id in params.get("resources") or []:
            for level, model in LEVEL_MODELS.items():
                row = model.get_or_none(model.public_id == str(public_id))
                if row is not None:
                    out.append((level, row))
                    break
        return out
    if kind == "wado":  # {"Study": uid, "Series": uid, "Instance": uid}
        for resource in params.get("resources") or []:
            for level, key, field in (
                ("instance", "Instance", Instance.sop_instance_uid),
                ("series", "Series", Series.series_instance_uid),
                ("study", "Study", Study.study_instance_uid),
            ):
                if isinstance(resource, dict) and resource.get(key):
                    rows = LEVEL_MODELS[level].select().where(field == str(resource[key]))
                    out += [(level, row) for row in rows]
                    break
        return out
    if kind not in ("move", "get"):
        return []
    keys = params.get("keys") or {}
    for level, key, field in (
        ("series", "SeriesInstanceUID", Series.series_instance_uid),
        ("study", "StudyInstanceUID", Study.study_instance_uid),
        ("patient", "PatientID", Patient.patient_id),
    ):
        if keys.get(key):
            model = LEVEL_MODELS[level]
            return [(level, row) for row in model.select().where(field == keys[key])]
    return []
