"""Orthanc's change log and stability, and labels, kept in the index.

* The ingest path logs ``NewInstance`` (and ``NewSeries``, ``NewStudy``, ``NewPatient`` for
  what an instance creates) in its own transaction; :func:`log_deleted` logs ``Deleted``.
* A series, study or patient is *stable* when no instance has arrived for
  ``storage.stable_age`` seconds (Orthanc's ``StableAge``); :func:`mark_stable` logs
  ``StableSeries``, ``StableStudy`` and ``StablePatient`` once per quiet period. It runs when
  the change log is read, so a script polling ``/changes`` sees them in order.
* Labels (Orthanc 1.12): short names on any resource, deleted with it.
"""
from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from typing import Any

from dicomnode.archive.index import Change
from dicomnode.archive.index import Instance
from dicomnode.archive.index import Label
from dicomnode.archive.index import Patient
from dicomnode.archive.index import Series
from dicomnode.archive.index import Study
from dicomnode.archive.index import rows_with_pks
from dicomnode.archive.index import utcnow
from dicomnode.archive.index import write_transaction
from dicomnode.errors import DolmenError

#: Orthanc's resource type → model and the change path prefix.
MODEL_OF = {"Patient": Patient, "Study": Study, "Series": Series, "Instance": Instance}
PATH_OF = {"Patient": "patients", "Study": "studies", "Series": "series", "Instance": "instances"}
_FK = {"Patient": "patient", "Study": "study", "Series": "series", "Instance": "instance"}


class BadLabel(DolmenError):
    code = "bad_label"
    http_status = 400


def log_deleted(resource_type: str, public_ids: Iterable[str]) -> None:
    """Log ``Deleted`` for resources removed (call inside the deleting transaction)."""
    now = utcnow()
    rows = [{"change_type": "Deleted", "resource_type": resource_type, "public_id": p, "at": now}
            for p in public_ids]
    if rows:
        Change.insert_many(rows).execute()


def is_stable(row: Any, stable_age: float) -> bool:
    """True when nothing arrived in the resource for ``stable_age`` seconds."""
    return bool(row.updated_at <= utcnow() - dt.timedelta(seconds=stable_age))


def mark_stable(stable_age: float) -> int:
    """Log Stable* for the resources that became stable, once each; how many were logged."""
    cutoff = utcnow() - dt.timedelta(seconds=stable_age)
    logged = 0
    for resource_type, model in (("Series", Series), ("Study", Study), ("Patient", Patient)):
        if not model.select().where((model.stable == False) & (model.updated_at <= cutoff)).exists():  # noqa: E712
            continue
        with write_transaction():
            rows = list(model.select(model.pk, model.public_id).where(
                (model.stable == False) & (model.updated_at <= cutoff)).order_by(model.updated_at).tuples())  # noqa: E712
            if not rows:
                continue
            now = utcnow()
            Change.insert_many([{"change_type": f"Stable{resource_type}", "resource_type": resource_type,
                                 "public_id": public_id, "at": now} for _pk, public_id in rows]).execute()
            for start in range(0, len(rows), 500):
                model.update(stable=True).where(model.pk.in_([pk for pk, _ in rows[start:start + 500]])).execute()
            logged += len(rows)
    return logged


def orthanc_date(value: dt.datetime | None) -> str:
    """``20261207T052728``: Orthanc's timestamps (UTC here, where Orthanc writes local time)."""
    return value.strftime("%Y%m%dT%H%M%S") if value else ""


def as_json(change: Change) -> dict[str, Any]:
    return {"ChangeType": change.change_type, "Date": orthanc_date(change.at), "ID": change.public_id,
            "Path": f"/{PATH_OF[change.resource_type]}/{change.public_id}",
            "ResourceType": change.resource_type, "Seq": change.seq}


def read(since: int, limit: int, *, stable_age: float) -> dict[str, Any]:
    """``GET /changes``: the changes after ``since``, at most ``limit``, with ``Done`` and ``Last``."""
    mark_stable(stable_age)
    rows = list(Change.select().where(Change.seq > since).order_by(Change.seq).limit(limit + 1))
    done = len(rows) <= limit
    rows = rows[:limit]
    last = rows[-1].seq if rows else last_seq()
    return {"Changes": [as_json(c) for c in rows], "Done": done, "Last": last}


def last_seq() -> int:
    row = Change.select(Change.seq).order_by(Change.seq.desc()).first()
    return int(row.seq) if row else 0


def last_change() -> dict[str, Any]:
    """``GET /changes?last``."""
    row = Change.select().order_by(Change.seq.desc()).first()
    return {"Changes": [as_json(row)] if row else [], "Done": True, "Last": int(row.seq) if row else 0}


def clear() -> None:
    """``DELETE /changes``."""
    with write_transaction():
        Change.delete().execute()


# -- labels ----------------------------------------------------------------------------------

_LABEL = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_label(label: str) -> str:
    """A label as Orthanc accepts them: 1-64 letters, digits, ``_`` or ``-``."""
    if not _LABEL.fullmatch(label or ""):
        raise BadLabel(f"Invalid label {label[:80]!r}: a label is 1 to 64 letters, digits, '_' or '-'")
    return label


def labels_of(resource_type: str, row: Any) -> list[str]:
    fk = getattr(Label, _FK[resource_type])
    return sorted(lb for (lb,) in Label.select(Label.label).where(
        (Label.level == resource_type) & (fk == row.pk)).tuples())


def labels_by_pk(resource_type: str, pks: list[int]) -> dict[int, list[str]]:
    """Labels of many rows at once (for lists): ``{pk: [labels]}``."""
    fk = getattr(Label, _FK[resource_type])
    out: dict[int, list[str]] = {pk: [] for pk in pks}
    for pk, label in rows_with_pks(Label, fk, pks, "label", equals={"level": resource_type}):
        out[pk].append(label)
    return {pk: sorted(v) for pk, v in out.items()}


def add_label(resource_type: str, row: Any, label: str) -> None:
    check_label(label)
    with write_transaction():
        fk = getattr(Label, _FK[resource_type])
        exists = Label.select().where((Label.level == resource_type) & (fk == row.pk) & (Label.label == label)).exists()
        if not exists:
            Label.create(label=label, level=resource_type, **{_FK[resource_type]: row.pk})


def remove_label(resource_type: str, row: Any, label: str) -> None:
    check_label(label)
    with write_transaction():
        fk = getattr(Label, _FK[resource_type])
        Label.delete().where((Label.level == resource_type) & (fk == row.pk) & (Label.label == label)).execute()


def all_labels() -> list[str]:
    """``GET /tools/labels``: every label in use."""
    return sorted(lb for (lb,) in Label.select(Label.label).distinct().tuples())


def with_labels(resource_type: str, labels: list[str], constraint: str = "All") -> Any:
    """A condition on the level's model: its rows carrying All, Any or None of ``labels``."""
    model = MODEL_OF[resource_type]
    fk = getattr(Label, _FK[resource_type])
    for label in labels:
        check_label(label)
    constraint = (constraint or "All").capitalize()
    if constraint not in ("All", "Any", "None"):
        raise BadLabel(f"LabelsConstraint {constraint!r} is not All, Any or None")
    matching = Label.select(fk).where((Label.level == resource_type) & Label.label.in_(labels))
    if constraint == "Any":
        return model.pk.in_(matching)
    if constraint == "None":
        return model.pk.not_in(matching)
    from peewee import fn

    having_all = (Label.select(fk).where((Label.level == resource_type) & Label.label.in_(labels))
                  .group_by(fk).having(fn.COUNT(Label.label.distinct()) == len(set(labels))))
    return model.pk.in_(having_all)
