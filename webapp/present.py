"""How pages show things, shared by the blueprints (none of which imports another).

Formats (dates, person names, SOP classes), the local page of a resource, and what the
pages show of a job: its label, its local resources and its live progress fragment.
"""
from __future__ import annotations

import re
from typing import Any

from flask import current_app
from flask import make_response
from flask import redirect
from flask import render_template
from flask import url_for
from flask.typing import ResponseReturnValue
from pydicom.uid import UID

from dicomnode import jobs as joblib
from dicomnode.archive import resources
from dicomnode.archive.index import Job
from webapp.htmx import is_htmx


def dicom_date(value: str | None) -> str:
    """``20240131`` → ``2024-01-31``; anything else unchanged."""
    value = (value or "").strip()
    if re.fullmatch(r"\d{8}", value):
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def person(value: str | None) -> str:
    """A DICOM person name for people, every component group that is present (PS3.5 6.2.1.1):
    ``DOE^JOHN^^DR`` → ``DOE, JOHN``; ``Yamada^Tarou=山田^太郎=やまだ^たろう`` →
    ``Yamada, Tarou — 山田 太郎 (やまだ たろう)``; ``Wang^XiaoDong=王^小東`` → ``Wang, XiaoDong — 王 小東``."""
    groups = (value or "").split("=")
    alphabetic = _alphabetic(groups[0])
    ideographic = _spaced(groups[1]) if len(groups) > 1 else ""
    phonetic = _spaced(groups[2]) if len(groups) > 2 else ""
    text = " — ".join(part for part in (alphabetic, ideographic) if part)
    if phonetic:
        text = f"{text} ({phonetic})" if text else phonetic
    return text


def _alphabetic(group: str) -> str:
    parts = group.split("^")
    family, given = parts[0].strip(), " ".join(g.strip() for g in parts[1:3] if g.strip())
    if family and given:
        return f"{family}, {given}"
    return family or given


def _spaced(group: str) -> str:
    """An ideographic or phonetic group: family, given and middle names, space-separated."""
    return " ".join(p.strip() for p in group.split("^")[:3] if p.strip())


def sop_class_name(uid: str) -> str:
    """A SOP class's name, or the UID when pydicom does not know it."""
    try:
        name = UID(uid).name
    except Exception:
        return uid
    return name or uid


def local_url(level: str, public_id: str) -> str | None:
    """The local page of a resource, when the browse pages are there."""
    endpoint = f"browse.{level}"
    rules = list(current_app.url_map.iter_rules(endpoint)) if endpoint in current_app.view_functions else []
    for rule in rules:
        if len(rule.arguments) == 1:
            return url_for(endpoint, **{next(iter(rule.arguments)): public_id})
    return None


KIND_LABELS = {
    "send": "Send",
    "move": "Retrieve (C-MOVE)",
    "get": "Retrieve (C-GET)",
    "wado": "DICOMweb retrieve",
    "stow": "DICOMweb send",
}


def kind_label(kind: str) -> str:
    """What the list shows for a kind of job."""
    registered = joblib.kinds().get(kind)
    return KIND_LABELS.get(kind) or (registered.label if registered else kind)


def job_helpers() -> dict[str, Any]:
    return {
        "percent": joblib.percent,
        "duration": joblib.duration,
        "kind_label": kind_label,
        "active_states": joblib.ACTIVE,
    }


def _local_entry(level: str, row: Any) -> dict[str, Any]:
    label = {
        "patient": lambda: f"Patient {person(row.patient_name)} ({row.patient_id})",
        "study": lambda: f"Study {dicom_date(row.study_date)} {row.study_description}",
        "series": lambda: f"Series {row.series_number or ''} {row.series_description}",
        "instance": lambda: f"Instance {row.instance_number or ''}",
    }[level]()
    return {
        "label": " ".join(label.split()),
        "count": getattr(row, "num_instances", 1),
        "url": local_url(level, row.public_id) or "",
    }


def local_resources(job: Job) -> list[dict[str, Any]]:
    """The local resources of a job, as the pages list them (label, count, link); for an
    anonymization or modification, its source and (once done) its result."""
    if job.kind in ("anonymize", "modify"):
        from dicomnode.archive.index import Export

        params = joblib.params_of(job)
        level = str(params.get("level", "")).lower()
        model = resources.MODELS.get(level)
        entry = Export.get_or_none(Export.job == job.pk)
        out = []
        for prefix, public_id in (("From", params.get("id")), ("Result", entry.result_id if entry else "")):
            row = model.get_or_none(model.public_id == str(public_id)) if model and public_id else None
            if row is not None:
                item = _local_entry(level, row)
                item["label"] = f"{prefix}: {item['label']}"
                out.append(item)
        return out
    return [_local_entry(level, row) for level, row in resources.job_resources(job.kind, joblib.params_of(job))]


def progress_fragment(job_id: int) -> ResponseReturnValue:
    """The compact live progress of a job (polls itself until the job ends)."""
    row = joblib.get(job_id)
    response = make_response(
        render_template("jobs/_progress.html", job=row, local=local_resources(row), **job_helpers())
    )
    response.headers.add("Vary", "HX-Request")
    return response


def started(job_id: int) -> ResponseReturnValue:
    """After starting a job: its live progress for htmx, else its page."""
    if is_htmx():
        return progress_fragment(job_id)
    return redirect(url_for("jobs.job", job_id=job_id), code=303)
