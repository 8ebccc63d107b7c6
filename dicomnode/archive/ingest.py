"""The one ingest path: a spooled file, bytes or a stream in, an :class:`IngestResult` out.

C-STORE, the upload form, STOW-RS, ``dolmen import`` and retrieval jobs all end here. It
parses only what indexing needs (pixel data is skipped, large values deferred), validates,
makes the file durable in the store, and commits the rows in one transaction. Success is
reported only after that commit (the crash contract in ARCHITECTURE.md).
"""
from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from typing import Any
from typing import BinaryIO

import peewee

from dicomnode import ids
from dicomnode.archive.index import Instance
from dicomnode.archive.index import Patient
from dicomnode.archive.index import Series
from dicomnode.archive.index import Study
from dicomnode.archive.index import db
from dicomnode.archive.index import utcnow
from dicomnode.archive.index import write_transaction
from dicomnode.archive.resources import remove_instance_rows
from dicomnode.archive.store import Store
from dicomnode.errors import DolmenError
from dicomnode.errors import RejectedInstance
from dicomnode.errors import StorageFull
from dicomnode.header import IndexHeader
from dicomnode.header import read_index_header

LOGGER = logging.getLogger(__name__)

STORED = "stored"
DUPLICATE = "duplicate"
REJECTED = "rejected"
#: Attempts of an ingest transaction that another writer's rows made fail (PostgreSQL, two nodes).
RACE_ATTEMPTS = 5


@dataclass(frozen=True)
class Source:
    """Where an object came from, kept with the instance and in logs."""

    origin: str = "import"  # dicom | upload | stow | import | retrieve
    aet: str = ""
    ip: str = ""
    called_aet: str = ""


@dataclass(frozen=True)
class IngestResult:
    """What happened to one object.

    ``status`` is ``stored``, ``duplicate`` (already stored, nothing changed) or ``rejected``
    with ``reason`` for the user. The identifiers are set unless the object was rejected
    before they could be read.
    """

    status: str
    reason: str = ""
    instance_id: str = ""
    study_id: str = ""
    series_id: str = ""
    patient_id: str = ""
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    study_instance_uid: str = ""
    code: str = ""

    @property
    def ok(self) -> bool:
        """True when the object is in the archive (stored now or before)."""
        return self.status in (STORED, DUPLICATE)


class Ingestor:
    """Files objects into one store and the bound index.

    Parameters
    ----------
    store : Store
        Where files go.
    overwrite : bool
        A second copy of an instance replaces the first (``storage.overwrite``).
    max_bytes : int, optional
        Cap on one object spooled from a stream.
    """

    def __init__(self, store: Store, *, overwrite: bool = False, max_bytes: int | None = None) -> None:
        self.store = store
        self.overwrite = overwrite
        self.max_bytes = max_bytes

    # -- entry points -----------------------------------------------------------------------

    def ingest_stream(self, stream: BinaryIO | IO[bytes], source: Source, *, owner: str = "web") -> IngestResult:
        """Spool a stream (upload, STOW-RS part) and ingest it."""
        try:
            spool = self.store.spool_stream(stream, owner=owner, max_bytes=self.max_bytes)
        except DolmenError as exc:
            return IngestResult(REJECTED, reason=exc.message, code=exc.code)
        return self.ingest_spooled(spool, source)

    def ingest_bytes(self, data: bytes, source: Source, *, owner: str = "web") -> IngestResult:
        """Spool bytes and ingest them."""
        try:
            spool = self.store.spool_bytes(data, owner=owner)
        except DolmenError as exc:
            return IngestResult(REJECTED, reason=exc.message, code=exc.code)
        return self.ingest_spooled(spool, source)

    def ingest_copy(self, path: str | os.PathLike[str], source: Source, *, owner: str = "import") -> IngestResult:
        """Ingest a copy of a file the user owns (``dolmen import``); the original is left alone."""
        try:
            with open(path, "rb") as f:
                spool = self.store.spool_stream(f, owner=owner, max_bytes=self.max_bytes)
        except OSError as exc:
            return IngestResult(REJECTED, reason=f"Cannot read {path}: {exc.strerror}")
        except DolmenError as exc:
            return IngestResult(REJECTED, reason=exc.message, code=exc.code)
        return self.ingest_spooled(spool, source)

    def ingest_spooled(self, spool: str | os.PathLike[str], source: Source, *,
                       expected_sop_instance_uid: str | None = None,
                       expected_sop_class_uid: str | None = None) -> IngestResult:
        """Ingest a file already in the store's spool; it is moved into the store or removed.

        Parameters
        ----------
        spool : path
            A file in the spool folder (same volume as the store). It is consumed.
        source : Source
            Origin of the object.
        expected_sop_instance_uid, expected_sop_class_uid : str, optional
            The values of the C-STORE command set; the dataset must agree with them.
        """
        spool = Path(spool)
        try:
            return self._ingest(spool, source, expected_sop_instance_uid, expected_sop_class_uid)
        except DolmenError as exc:
            LOGGER.info("Rejected object from %s %s %s: %s", source.origin, source.aet, source.ip, exc.message)
            return IngestResult(REJECTED, reason=exc.message, code=exc.code)
        except RecursionError:
            # The header readers recurse into sequences: a few hundred levels exhaust Python's
            # stack (a hostile file nests 10,000). No real object nests that deep.
            reason = "Sequences nested too deeply to be read: the object was refused"
            LOGGER.warning("Rejected object from %s %s %s: %s", source.origin, source.aet, source.ip, reason)
            return IngestResult(REJECTED, reason=reason, code="rejected")
        except peewee.OperationalError as exc:
            # The index is locked past its busy timeout, read-only or gone. The file was removed
            # again (the crash contract): nothing is half-stored, and the sender may retry.
            reason = f"The index is unavailable ({exc}): nothing was stored, try again later"
            LOGGER.error("Object from %s %s %s not stored: %s", source.origin, source.aet, source.ip, reason)
            return IngestResult(REJECTED, reason=reason, code="index_unavailable")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spool)

    # -- the path ---------------------------------------------------------------------------

    def _ingest(self, spool: Path, source: Source, expected_sop: str | None,
                expected_class: str | None) -> IngestResult:
        self.store.check_space()
        size = os.stat(spool).st_size
        # The fsync of the file (the longest step) runs while the header is parsed and
        # checked; the store waits for it before renaming (the crash contract's order).
        synced = self.store.sync_early(spool, size)
        try:
            return self._file(spool, size, synced, source, expected_sop, expected_class)
        finally:
            if synced is not None:
                synced.cancel()  # not needed after all (rejected, duplicate): skip if not started

    def _file(self, spool: Path, size: int, synced: Future[None] | None, source: Source,
              expected_sop: str | None, expected_class: str | None) -> IngestResult:
        head = read_index_header(spool)
        if expected_sop and expected_sop.strip(" \x00") != head.sop_instance_uid:
            raise RejectedInstance(
                f"The C-STORE command names SOP Instance UID {expected_sop[:64]!r} but the dataset "
                f"holds {head.sop_instance_uid!r}")
        if expected_class and expected_class.strip(" \x00") != head.sop_class_uid:
            raise RejectedInstance(
                f"The C-STORE command names SOP Class {expected_class[:64]!r} but the dataset "
                f"holds {head.sop_class_uid!r}")
        pid = ids.patient_id(head.patient_id)
        stid = ids.study_id(head.patient_id, head.study_instance_uid)
        seid = ids.series_id(head.patient_id, head.study_instance_uid, head.series_instance_uid)
        inid = ids.instance_id(head.patient_id, head.study_instance_uid, head.series_instance_uid,
                               head.sop_instance_uid)
        base = dict(instance_id=inid, study_id=stid, series_id=seid, patient_id=pid,
                    sop_instance_uid=head.sop_instance_uid, sop_class_uid=head.sop_class_uid,
                    study_instance_uid=head.study_instance_uid)

        # Cheap early answer for the common re-send: no fsync, no write lock.
        if not self.overwrite:
            found = _existing(head.sop_instance_uid)
            if found is not None:
                return self._duplicate(found, inid, base)

        placed = self.store.place(spool, synced)
        rel = placed.rel
        old_path: str | None = None
        try:
            for attempt in range(1, RACE_ATTEMPTS + 1):
                try:
                    with write_transaction():
                        found = _existing(head.sop_instance_uid)
                        if found is not None:
                            if found[1] != inid:
                                raise _Refused(self._conflict_reason(found[0]))
                            if not self.overwrite:
                                raise _Duplicate(found)
                            old_path = found[2]
                            remove_instance_rows([found[0]], prune=False)  # same series: keep parents
                        self._insert(head, source, rel, size, pid, stid, seid, inid)
                        # The statements ran while the folder was being fsynced; the rows commit
                        # only once the file is durable under its name (the crash contract).
                        placed.wait()
                    break
                except peewee.IntegrityError:
                    # Another node (another process on the same PostgreSQL index) created the
                    # same patient, study, series or instance between our reads and our
                    # inserts: the transaction was rolled back; the next attempt sees its rows.
                    if attempt == RACE_ATTEMPTS:
                        raise
                    LOGGER.debug("ingest of %s raced another writer (attempt %d)", inid, attempt)
        except _Duplicate as dup:
            self.store.delete(rel)
            return self._duplicate(dup.found, inid, base)
        except _Refused as ref:
            self.store.delete(rel)
            raise RejectedInstance(ref.reason) from None
        except peewee.IntegrityError as exc:
            self.store.delete(rel)
            raise RejectedInstance(f"The index refused the instance: {exc}") from exc
        except BaseException:
            self.store.delete(rel)
            raise
        if old_path:
            self.store.delete(old_path)
        return IngestResult(STORED, **base)

    def _duplicate(self, found: tuple[int, str, str], inid: str, base: dict[str, str]) -> IngestResult:
        if found[1] != inid:
            raise RejectedInstance(self._conflict_reason(found[0]))
        return IngestResult(DUPLICATE, reason="Already stored", **base)

    @staticmethod
    def _conflict_reason(instance_pk: int) -> str:
        existing = Instance.get_by_id(instance_pk)
        study = existing.series.study
        return (f"SOP Instance UID {existing.sop_instance_uid} is already stored in another study "
                f"(patient {study.patient.patient_id!r}, study {study.study_instance_uid}); "
                "a SOP Instance UID must be unique, so this copy was refused")

    def _insert(self, head: IndexHeader, source: Source, rel: str, size: int,
                pid: str, stid: str, seid: str, inid: str) -> None:
        """Insert the instance row and bump its parents' counters.

        This is the hot path of every C-STORE, so it is plain SQL (a handful of statements on
        indexed columns) rather than peewee's query builder, whose SQL generation alone costs
        more than the statements; new parent rows too (:func:`_insert_row`).
        """
        f = head.fields
        now = utcnow()
        database = db.obj
        p = database.param
        row = database.execute_sql(
            f"SELECT se.pk, st.pk, st.patient_pk, st.modalities_in_study, st.sop_classes_in_study "
            f"FROM series se JOIN study st ON se.study_pk = st.pk WHERE se.public_id = {p}",
            (seid,)).fetchone()
        new_series = new_study = new_patient = False
        if row is None:
            main = f["main_tags"]
            found = database.execute_sql(f"SELECT pk FROM patient WHERE public_id = {p}", (pid,)).fetchone()
            if found is None:
                patient_pk = _insert_row(Patient, {
                    "public_id": pid, "main_tags": main["Patient"], "patient_id": head.patient_id,
                    **{k: f[k] for k in ("patient_name", "patient_name_key", "patient_name_ideo", "patient_name_phon",
                                         "patient_birth_date", "patient_sex")}})
                new_patient = True
            else:
                patient_pk = found[0]
            found = database.execute_sql(
                f"SELECT pk, modalities_in_study, sop_classes_in_study FROM study WHERE public_id = {p}",
                (stid,)).fetchone()
            if found is None:
                study_pk = _insert_row(Study, {
                    "public_id": stid, "patient": patient_pk, "study_instance_uid": head.study_instance_uid,
                    "main_tags": main["Study"],
                    **{k: f[k] for k in ("study_date", "study_time", "study_description",
                                         "accession_number", "study_id", "referring_physician_name")}})
                new_study = True
                modalities, classes = "", ""
            else:
                study_pk, modalities, classes = found
            series_pk = _insert_row(Series, {
                "public_id": seid, "study": study_pk, "series_instance_uid": head.series_instance_uid,
                "main_tags": main["Series"],
                **{k: f[k] for k in ("modality", "series_number", "series_description",
                                     "body_part_examined", "series_date", "series_time")}})
            new_series = True
            row = (series_pk, study_pk, patient_pk, modalities, classes)
        series_pk, study_pk, patient_pk, modalities, classes = row
        database.execute_sql(
            "INSERT INTO instance (public_id, series_pk, sop_instance_uid, sop_class_uid, "
            "instance_number, number_of_frames, transfer_syntax_uid, file_size, path, received_at, "
            "origin, sender_aet, sender_ip, called_aet, main_tags) VALUES "
            f"({', '.join([p] * 15)})",
            (inid, series_pk, head.sop_instance_uid, head.sop_class_uid, f["instance_number"],
             f["number_of_frames"], f["transfer_syntax_uid"], size, rel, now, source.origin,
             source.aet[:64], source.ip[:64], source.called_aet[:64], f["main_tags"]["Instance"]))
        # Orthanc's change log, in Orthanc's order: the instance, then what it created.
        changes = [("NewInstance", "Instance", inid)]
        if new_series:
            changes.append(("NewSeries", "Series", seid))
        if new_study:
            changes.append(("NewStudy", "Study", stid))
        if new_patient:
            changes.append(("NewPatient", "Patient", pid))
        for change in changes:
            database.execute_sql(
                f"INSERT INTO change (change_type, resource_type, public_id, at) VALUES ({p}, {p}, {p}, {p})",
                (*change, now))
        database.execute_sql(
            f"UPDATE series SET num_instances = num_instances + 1, size = size + {p}, updated_at = {p}, stable = {p} "
            f"WHERE pk = {p}", (size, now, False, series_pk))
        mods = set(filter(None, (modalities or "").split("\\")))
        if f["modality"]:
            mods.add(f["modality"])
        class_set = set(filter(None, (classes or "").split("\\")))
        class_set.add(head.sop_class_uid)
        database.execute_sql(
            f"UPDATE study SET num_instances = num_instances + 1, size = size + {p}, "
            f"num_series = num_series + {p}, updated_at = {p}, modalities_in_study = {p}, "
            f"sop_classes_in_study = {p}, stable = {p} WHERE pk = {p}",
            (size, int(new_series), now, "\\".join(sorted(mods)), "\\".join(sorted(class_set)), False, study_pk))
        database.execute_sql(
            f"UPDATE patient SET num_instances = num_instances + 1, size = size + {p}, "
            f"num_series = num_series + {p}, num_studies = num_studies + {p}, updated_at = {p}, stable = {p} "
            f"WHERE pk = {p}", (size, int(new_series), int(new_study), now, False, patient_pk))


_INSERTS: dict[tuple[type, str], tuple[str, tuple[Any, ...]]] = {}


def _insert_row(model: Any, values: dict[str, Any]) -> int:
    """INSERT one row of ``model`` with ``values`` and the fields' defaults; its primary key.

    The statement is built once per model from its fields (peewee builds it on every call).
    """
    param = db.obj.param
    key = (model, param)
    if key not in _INSERTS:
        fields = tuple(f for f in model._meta.sorted_fields if f.name != "pk")
        sql = (f'INSERT INTO "{model._meta.table_name}" ({", ".join(f.column_name for f in fields)}) '
               f'VALUES ({", ".join([param] * len(fields))}) RETURNING pk')
        _INSERTS[key] = (sql, fields)
    sql, fields = _INSERTS[key]
    params = []
    for field in fields:
        if field.name in values:
            params.append(field.db_value(values[field.name]))
        else:
            default = field.default() if callable(field.default) else field.default
            params.append(field.db_value(default))
    return int(db.obj.execute_sql(sql, params).fetchone()[0])


def _existing(sop_instance_uid: str) -> tuple[int, str, str] | None:
    """(pk, public id, path) of the instance already holding this SOP Instance UID, if any."""
    database = db.obj
    row = database.execute_sql(
        f"SELECT pk, public_id, path FROM instance WHERE sop_instance_uid = {database.param}",
        (sop_instance_uid,)).fetchone()
    return None if row is None else (int(row[0]), str(row[1]), str(row[2]))


class _Duplicate(Exception):
    def __init__(self, found: tuple[int, str, str]) -> None:
        self.found = found


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


__all__ = ["DUPLICATE", "REJECTED", "STORED", "IngestResult", "Ingestor", "Source", "StorageFull"]
