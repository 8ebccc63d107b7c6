"""Browse the archive: study and patient lists, patient → study → series → instance pages,
previews, tag tables, downloads, deletion and the lookup box.

Every page reads the index; only the instance page, previews and downloads open a file.
Lists keep their filters, sort and page in the query string (bookmarkable), and answer htmx
with their results partial.
"""
from __future__ import annotations

import base64
import datetime as dt
import logging
import math
import re
from typing import Any
from urllib.parse import quote

import pydicom
from flask import Blueprint
from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import MultiDict

from dicomnode import tags
from dicomnode.archive import changes
from dicomnode.archive import query
from dicomnode.archive import resources
from dicomnode.archive import stack
from dicomnode.archive.index import Instance
from dicomnode.archive.index import Patient
from dicomnode.archive.index import Series
from dicomnode.archive.index import Study
from dicomnode.errors import DolmenError
from dicomnode.errors import NotFound
from dicomnode.render import PRESET_LABELS
from dicomnode.render import WINDOW_PRESETS
from dicomnode.render import placeholder
from webapp import files
from webapp import htmx
from webapp.present import dicom_date
from webapp.present import person
from webapp.services import services
from webapp.urls import args_with as _args_with

LOGGER = logging.getLogger(__name__)

bp = Blueprint("browse", __name__)

#: URL prefix of each level (``/studies/<id>``...).
PREFIX = {"patient": "patients", "study": "studies", "series": "series", "instance": "instances"}
PER_PAGE = (25, 50, 100, 200)
DATE_PRESETS = {"today": "Today", "yesterday": "Yesterday", "7d": "Last 7 days", "30d": "Last 30 days"}
GRID_PAGE = 500  # thumbnails per series page: a grid of 500 renders once, then comes from the cache
THUMBNAIL_SIZE = 160
PREVIEW_SIZE = 1024  # longer side of the preview on the instance page
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def _thumbnails() -> resources.ThumbnailCache:
    return resources.ThumbnailCache(services().store.root)


# -- template filters (registered for the whole app) -------------------------------------------


bp.app_template_filter("dicom_date")(dicom_date)
bp.app_template_filter("person")(person)


@bp.app_template_filter("dicom_time")
def dicom_time(value: str | None) -> str:
    """``134501.25`` → ``13:45:01``; ``1345`` → ``13:45``."""
    value = (value or "").strip().split(".")[0]
    if re.fullmatch(r"\d{4}(\d{2})?", value):
        return ":".join(value[i:i + 2] for i in range(0, len(value), 2))
    return value


@bp.app_template_filter("uid_name")
def uid_name(value: str | None) -> str:
    """The registered name of a UID (``CT Image Storage``), or ``""`` when it has none."""
    uid = pydicom.uid.UID((value or "").strip())
    name = uid.name if uid else ""
    return "" if name == str(uid) else name


@bp.app_template_filter("multi")
def multi(value: str | None) -> list[str]:
    """A backslash-separated value as a list (``CT\\MR`` → ``["CT", "MR"]``)."""
    return [v for v in (value or "").split("\\") if v]


# -- query-string helpers ----------------------------------------------------------------------


def _int_arg(name: str, default: int, low: int = 1, high: int | None = None) -> int:
    try:
        value = int(request.args.get(name, default))
    except ValueError:
        return default
    value = max(low, value)
    return min(value, high) if high is not None else value


def _date_arg(name: str, args: Any = None) -> str:
    """A date field (``2024-01-31`` from <input type=date>, or ``20240131``) as DICOM DA."""
    raw = (request.args if args is None else args).get(name, "").strip()
    if not raw:
        return ""
    digits = raw.replace("-", "")
    if not re.fullmatch(r"\d{8}", digits):
        raise query.QueryError(f"{raw!r} is not a date: use YYYY-MM-DD")
    return digits


def _date_range(preset: str, low: str, high: str) -> str:
    """A DICOM date range (PS3.4 C.2.2.2.5) from a preset or from two dates."""
    today = dt.date.today()
    if preset in DATE_PRESETS:
        start = {"today": today, "yesterday": today - dt.timedelta(days=1),
                 "7d": today - dt.timedelta(days=6), "30d": today - dt.timedelta(days=29)}[preset]
        end = start if preset == "yesterday" else today
        return f"{start:%Y%m%d}-{end:%Y%m%d}"
    if low and high and low > high:
        low, high = high, low
    if low or high:
        return f"{low}-{high}" if low != high else low
    return ""


def _contains(text: str) -> str:
    """Free text typed in a name or description box: a substring unless it has wildcards."""
    text = text.strip()
    if not text or "*" in text or "?" in text:
        return text
    return f"*{text}*"


def _sort(level: str, default: str, default_dir: str) -> tuple[str, str]:
    sort = request.args.get("sort", default)
    if sort not in query.ORDER[level]:
        sort = default
    direction = request.args.get("dir", default_dir)
    return sort, ("asc" if direction == "asc" else "desc")


def _list_context(level: str, filters: dict[str, str], sort: str, direction: str,
                  where: Any = None) -> dict[str, Any]:
    """Count, sort and page a list; a malformed filter becomes a message instead of rows."""
    per = _int_arg("per", 50)
    if per not in PER_PAGE:
        per = 50
    page = query.list_page(level, filters, sort, descending=direction == "desc", number=_int_arg("page", 1),
                           size=per, where=where)
    return {"results": page, "sort": sort, "dir": direction, "per": per, "per_choices": PER_PAGE,
            "args_with": _args_with, "filtered": not query.is_universal(filters) or where is not None}


def _render_list(page: str, partial: str, level: str, filters: dict[str, str],
                 default_sort: tuple[str, str], where: Any = None, **context: Any) -> ResponseReturnValue:
    sort, direction = _sort(level, *default_sort)
    try:
        ctx = _list_context(level, filters, sort, direction, where)
        status = 200
    except query.QueryError as exc:
        ctx = {"error": exc.message, "results": query.Page([], 1, 50, 0), "sort": sort, "dir": direction,
               "per": 50, "per_choices": PER_PAGE, "args_with": _args_with, "filtered": True}
        status = 400
    return htmx.render(page, partial, http_status=status, form=request.args, **ctx, **context)


# -- lists -------------------------------------------------------------------------------------


def _study_filters(args: Any) -> tuple[dict[str, str], Any]:
    """The study list's filters (and label condition) from its address's arguments."""
    filters = {
        "PatientName": _contains(args.get("name", "")),
        "PatientID": args.get("pid", "").strip(),
        "AccessionNumber": args.get("accession", "").strip(),
        "StudyDescription": _contains(args.get("description", "")),
        "ModalitiesInStudy": args.get("modality", "").strip(),
        "StudyDate": _date_range(args.get("date", ""), _date_arg("from", args), _date_arg("to", args)),
    }
    label = args.get("label", "").strip()
    return filters, (changes.with_labels("Study", [label]) if label else None)


@bp.route("/studies")
def studies() -> ResponseReturnValue:
    """The study list, the landing page: filters, sortable columns, pages and a count."""
    args = request.args
    filters: dict[str, str] = {}
    try:
        filters, where = _study_filters(args)
    except (query.QueryError, changes.BadLabel) as exc:
        return htmx.render("browse/studies.html", "browse/_studies.html", http_status=400,
                           form=args, error=exc.message, results=query.Page([], 1, 50, 0), sort="date",
                           dir="desc", per=50, per_choices=PER_PAGE, args_with=_args_with,
                           filtered=True, modalities=resources.modalities_in_archive(), date_presets=DATE_PRESETS,
                           labels=changes.all_labels())
    return _render_list("browse/studies.html", "browse/_studies.html", query.STUDY, filters,
                        ("date", "desc"), where=where, modalities=resources.modalities_in_archive(),
                        date_presets=DATE_PRESETS, labels=changes.all_labels())


@bp.route("/patients")
def patients() -> ResponseReturnValue:
    """The patient list: name, ID and birth date filters, sortable columns, pages."""
    args = request.args
    try:
        filters = {"PatientName": _contains(args.get("name", "")), "PatientID": args.get("pid", "").strip(),
                   "PatientBirthDate": _date_arg("birth")}
    except query.QueryError as exc:
        return htmx.render("browse/patients.html", "browse/_patients.html", http_status=400, form=args,
                           error=exc.message, results=query.Page([], 1, 50, 0), sort="name", dir="asc",
                           per=50, per_choices=PER_PAGE, args_with=_args_with, filtered=True)
    return _render_list("browse/patients.html", "browse/_patients.html", query.PATIENT, filters,
                        ("name", "asc"))


# -- resource pages ----------------------------------------------------------------------------


@bp.route("/patients/<public_id>")
def patient(public_id: str) -> ResponseReturnValue:
    """A patient: the patient module and the list of its studies, newest first."""
    row = resources.get("patient", public_id)
    studies = resources.studies_of(row)
    return render_template("browse/patient.html", patient=row, studies=studies)


@bp.route("/studies/<public_id>")
def study(public_id: str) -> ResponseReturnValue:
    """A study: patient and study modules, and its series with a thumbnail of each."""
    row = resources.get("study", public_id)
    series = resources.series_of(row)
    values = {"StudyInstanceUID": row.study_instance_uid, "PatientID": row.patient.patient_id,
              "AccessionNumber": row.accession_number}
    viewers = [(v.label or v.name, v.link(**values)) for v in services().settings.viewers]
    return render_template("browse/study.html", study=row, patient=row.patient, series_list=series,
                           key_images=resources.key_images(series), labels=changes.labels_of("Study", row),
                           all_labels=changes.all_labels(), viewers=viewers)


@bp.route("/studies/<public_id>/labels", methods=["POST"])
def study_labels(public_id: str) -> ResponseReturnValue:
    """Add (``label``) or remove (``remove``) a label of a study, from its page."""
    row = resources.get("study", public_id)
    try:
        if request.form.get("remove"):
            changes.remove_label("Study", row, request.form["remove"].strip())
        else:
            label = request.form.get("label", "").strip()
            changes.add_label("Study", row, label)
            flash(f"Labelled {label}.", "ok")
    except changes.BadLabel as exc:
        flash(exc.message, "error")
    return redirect(url_for("browse.study", public_id=public_id) + "#labels", code=303)


#: Most studies one bulk action takes ("all matching" included).
BULK_MAX = 10000


def _bulk_rows() -> list[Any]:
    """The studies a bulk action applies to: the ticked ones, or every one matching the list's
    filters (the list's address travels in ``query``)."""
    form = request.form
    if form.get("all_matching"):
        from urllib.parse import parse_qs

        args = {k: v[0] for k, v in parse_qs(form.get("query", "")).items()}
        filters, where = _study_filters(args)
        q = query.select(query.STUDY, filters)
        if where is not None:
            q = q.where(where)
        rows = list(q.order_by(Study.pk).limit(BULK_MAX + 1))
    else:
        ids = form.getlist("ids")[: BULK_MAX + 1]
        rows = list(Study.select().where(Study.public_id.in_(ids))) if ids else []
    if len(rows) > BULK_MAX:
        raise query.QueryError(f"More than {BULK_MAX:,} studies: narrow the filters first")
    return rows


@bp.route("/studies/bulk", methods=["POST"])
def studies_bulk() -> ResponseReturnValue:
    """The study list's bulk actions on the ticked (or all matching) studies: anonymize, send,
    download as one ZIP, label, delete (after a confirmation)."""
    action = request.form.get("action", "")
    back = url_for("browse.studies") + ("?" + request.form["query"] if request.form.get("query") else "")
    try:
        rows = _bulk_rows()
    except (query.QueryError, changes.BadLabel) as exc:
        flash(exc.message, "error")
        return redirect(back, code=303)
    if not rows:
        flash("Tick at least one study (or “all matching”) first.", "error")
        return redirect(back, code=303)
    noun = f"{len(rows)} stud{'y' if len(rows) == 1 else 'ies'}"
    if action == "zip":
        return files.archive_response([("study", r) for r in rows], name=f"dolmen-{len(rows)}-studies")
    if action == "label":
        label = request.form.get("label", "").strip()
        try:
            for row in rows:
                changes.add_label("Study", row, label)
        except changes.BadLabel as exc:
            flash(exc.message, "error")
            return redirect(back, code=303)
        flash(f"Labelled {noun} {label}.", "ok")
        return redirect(back, code=303)
    if action == "anonymize":
        from webapp.pages.auth import current_user

        who = current_user() or request.remote_addr or ""
        for row in rows:
            services().control.call("job_submit", kind="anonymize", target="study", description=(
                f"Anonymize study {row.study_description or row.public_id}")[:255],
                params={"body": {}, "level": "Study", "id": row.public_id, "user": who})
        flash(f"Anonymizing {noun}: one job each, below.", "ok")
        return redirect(url_for("jobs.jobs"), code=303)
    if action == "send":
        job_id = services().control.call(
            "send", modality=request.form.get("modality", ""), description=f"{noun} from the study list",
            resources=[{"level": "study", "id": r.public_id} for r in rows])["job"]
        return redirect(url_for("jobs.job", job_id=job_id), code=303)
    if action == "delete":
        if request.form.get("confirm") != str(len(rows)):
            return render_template("browse/bulk_delete.html", rows=rows, form=request.form,
                                   instances=sum(r.num_instances for r in rows), size=sum(r.size for r in rows))
        cache = resources.ThumbnailCache(services().store.root)
        for row in rows:
            try:
                resources.delete(services().store, "study", row.public_id, cache=cache)
            except NotFound:
                pass  # deleted by someone else meanwhile
        flash(f"Deleted {noun}.", "ok")
        return redirect(back, code=303)
    flash(f"Unknown action {action[:40]!r}.", "error")
    return redirect(back, code=303)


@bp.route("/series/<public_id>")
def series(public_id: str) -> ResponseReturnValue:
    """A series: patient, study and series modules, and its instances as a thumbnail grid."""
    row = resources.get("series", public_id)
    study_row = row.study
    page = query.paginate(resources.instances_in_series(row), _int_arg("page", 1), GRID_PAGE, row.num_instances)
    return htmx.render("browse/series.html", "browse/_instances.html", series=row, study=study_row,
                       patient=study_row.patient, results=page, args_with=_args_with)


@bp.route("/instances/<public_id>")
def instance(public_id: str) -> ResponseReturnValue:
    """An instance: all modules, the preview with frames and windows, and the full tag table."""
    row = resources.get("instance", public_id)
    series_row = row.series
    study_row = series_row.study
    viewer = _viewer(row, series_row)
    context: dict[str, Any] = dict(instance=row, series=series_row, study=study_row,
                                   patient=study_row.patient, viewer=viewer)
    if htmx.is_htmx():
        return htmx.render("browse/instance.html", "browse/_viewer.html", **context)
    nodes, tag_error = None, None
    try:
        ds = pydicom.dcmread(services().store.path(row.path), defer_size=4096)
        nodes = tags.tag_tree(ds)
    except FileNotFoundError:
        tag_error = "The file of this instance is missing from the store."
    except Exception as exc:  # noqa: BLE001 - a damaged file must not break the page
        LOGGER.info("Cannot read the tags of %s: %s", public_id, exc)
        tag_error = f"The file cannot be read: {exc}"
    neighbours = resources.neighbours(row, series_row)
    return htmx.render("browse/instance.html", "browse/_viewer.html", nodes=nodes, tag_error=tag_error,
                       previous=neighbours[0], next=neighbours[1], **context)


def _viewer(row: Instance, series_row: Series) -> dict[str, Any]:
    """Frame (1-based in URLs, as in DICOMweb) and window of the preview from the query string."""
    frames = max(1, row.number_of_frames or 1)
    frame = _int_arg("frame", 1, 1, frames)
    window = request.args.get("window", "")
    if window not in WINDOW_PRESETS:
        window = ""
    is_pdf = row.sop_class_uid == ENCAPSULATED_PDF
    presets = PRESET_LABELS if series_row.modality == "CT" else {}
    return {"frames": frames, "frame": frame, "window": window, "presets": presets, "is_pdf": is_pdf,
            "size": PREVIEW_SIZE}


# -- images and downloads ----------------------------------------------------------------------


@bp.route("/instances/<public_id>/preview.png")
def preview(public_id: str) -> ResponseReturnValue:
    """The rendered PNG of one frame (``frame`` from 1, ``window``, ``size`` bounds the longer side).

    An instance that cannot be rendered gets a placeholder image that says why.
    """
    return files.preview_response(resources.get("instance", public_id), _int_arg("frame", 1))


@bp.route("/instances/<public_id>/preview.jpg")
def preview_jpeg(public_id: str) -> ResponseReturnValue:
    """:func:`preview` as JPEG (the series viewer's frames: a fifth of the bytes)."""
    return files.preview_response(resources.get("instance", public_id), _int_arg("frame", 1), jpeg=True)


@bp.route("/series/<public_id>/view")
def series_viewer(public_id: str) -> ResponseReturnValue:
    """The series viewer: every frame in spatial order, scrolled, windowed, zoomed, played."""
    row = resources.get("series", public_id)
    study_row = row.study
    frames, spatial = stack.frames_of(row)
    window, declared, fps = _file_display(frames[0].instance) if frames else (None, [], DEFAULT_FPS)
    presets = {k: [WINDOW_PRESETS[k].center, WINDOW_PRESETS[k].width] for k in PRESET_LABELS} \
        if row.modality == "CT" else {}
    labels = dict(PRESET_LABELS) if row.modality == "CT" else {}
    for n, (label, center, width) in enumerate(declared[1:], start=2):  # the first is "From the file"
        presets[f"file-{n}"] = [center, width]
        labels[f"file-{n}"] = f"{label} (W {width:g} L {center:g})"
    data = {
        "frames": [[f.instance, f.frame, f.frames, f.number, f.position] for f in frames],
        "spatial": spatial,
        "window": window,
        "presets": presets,
        "labels": labels,
        "base": url_for("browse.instance", public_id="ID").rsplit("ID", 1)[0],
        "size": PREVIEW_SIZE,
        "fps": fps,
        "truncated": row.num_instances > stack.MAX_INSTANCES,
    }
    # The first image's URL as viewer.js builds it: the page preloads it while the script loads.
    first = (f"{data['base']}{quote(frames[0].instance, safe='')}/preview.jpg?frame={frames[0].frame}"
             f"&size={PREVIEW_SIZE}") if frames else ""
    return render_template("browse/viewer.html", series=row, study=study_row, patient=study_row.patient,
                           data=data, count=len(frames), first=first)


#: Cine frames per second when the file gives no rate.
DEFAULT_FPS = 10


def _file_display(instance_id: str) -> tuple[list[float] | None, list[tuple[str, float, float]], int]:
    """How the series' first file asks to be shown: where dragging starts (its first window,
    else one over the stored bit range; None when the file cannot be read), each window it
    declares with its explanation (the viewer's Window menu), and the cine rate in frames per
    second ((0018,0040) Cine Rate, else (0008,2144) Recommended Display Frame Rate, else 1000 /
    (0018,1063) Frame Time in ms; :data:`DEFAULT_FPS` without them), within 1 to 60."""
    try:
        ds = pydicom.dcmread(services().store.path(resources.get("instance", instance_id).path),
                             stop_before_pixels=True, specific_tags=[
                                 "WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "BitsStored",
                                 "PixelRepresentation", "RescaleSlope", "RescaleIntercept", "CineRate",
                                 "RecommendedDisplayFrameRate", "FrameTime"])
    except Exception:  # noqa: BLE001 - the viewer still opens, windowing starts from a guess
        return None, [], DEFAULT_FPS
    window, declared = _windows(ds)
    return window, declared, _cine_rate(ds)


def _cine_rate(ds: pydicom.Dataset) -> int:
    for name in ("CineRate", "RecommendedDisplayFrameRate"):
        try:
            rate = float(ds.get(name) or 0)
        except (TypeError, ValueError):
            rate = 0.0
        if rate > 0 and math.isfinite(rate):
            return max(1, min(60, round(rate)))
    try:
        frame_time = float(ds.get("FrameTime") or 0)
    except (TypeError, ValueError):
        frame_time = 0.0
    if frame_time > 0 and math.isfinite(frame_time):
        return max(1, min(60, round(1000 / frame_time)))
    return DEFAULT_FPS


def _windows(ds: pydicom.Dataset) -> tuple[list[float], list[tuple[str, float, float]]]:
    def values(name: str) -> list[Any]:
        value = ds.get(name)
        if value is None or value == "":
            return []
        return list(value) if isinstance(value, pydicom.multival.MultiValue) else [value]

    def number(value: Any) -> float | None:
        try:
            return float(value)
        except (TypeError, ValueError):
            return None

    centers, widths = values("WindowCenter"), values("WindowWidth")
    names = [str(v) for v in values("WindowCenterWidthExplanation")]
    declared = []
    for n, (c, w) in enumerate(zip(centers, widths)):  # noqa: B905 - the shorter list bounds the pairs
        center, width = number(c), number(w)
        if center is not None and width and width > 0:
            label = names[n] if n < len(names) and names[n].strip() else f"File window {n + 1}"
            declared.append((label, center, width))
    if declared:
        return [declared[0][1], declared[0][2]], declared
    bits = int(ds.get("BitsStored", 12) or 12)
    slope, intercept = number(ds.get("RescaleSlope")) or 1.0, number(ds.get("RescaleIntercept")) or 0.0
    low = -(2 ** (bits - 1)) if ds.get("PixelRepresentation", 0) == 1 else 0
    high = low + 2 ** bits
    return [(low + high) / 2 * slope + intercept, (high - low) * slope], []


@bp.route("/instances/<public_id>/thumbnail.png")
def thumbnail(public_id: str) -> ResponseReturnValue:
    """A small PNG of the first frame, rendered once and then served from the cache."""
    row = resources.get("instance", public_id)
    data = _thumbnails().get(services().store, row, size=THUMBNAIL_SIZE)
    return files.image_response(data, f"t-{row.path.rsplit('/', 1)[-1]}")


@bp.route("/instances/<public_id>/file")
def instance_file(public_id: str) -> ResponseReturnValue:
    """The stored DICOM file, as an attachment."""
    return files.file_response(resources.get("instance", public_id))


@bp.route("/instances/<public_id>/pdf")
def instance_pdf(public_id: str) -> ResponseReturnValue:
    """The PDF inside an Encapsulated PDF instance (0042,0011) *Encapsulated Document*."""
    return files.pdf_response(resources.get("instance", public_id))


@bp.route("/instances/<public_id>/tags/<path:tag_path>")
def tag_value(public_id: str, tag_path: str) -> ResponseReturnValue:
    """The value of one element (a long text or binary value the tag table shows by length)."""
    return files.element_response(resources.get("instance", public_id), tag_path, attachment=True)


@bp.route("/patients/<public_id>/archive", defaults={"level": "patient"})
@bp.route("/studies/<public_id>/archive", defaults={"level": "study"})
@bp.route("/series/<public_id>/archive", defaults={"level": "series"})
def archive(level: str, public_id: str) -> ResponseReturnValue:
    """A ZIP of every file of a patient, study or series, streamed as it is read."""
    return files.archive_response([(level, resources.get(level, public_id))])


# -- deleting ----------------------------------------------------------------------------------


def _summary(level: str, row: Any) -> dict[str, Any]:
    """What deleting a resource removes, for the confirmation."""
    if level == "instance":
        return {"instances": 1, "size": row.file_size}
    return {"instances": row.num_instances, "size": row.size}


@bp.route("/patients/<public_id>/delete", methods=["GET", "POST"], defaults={"level": "patient"})
@bp.route("/studies/<public_id>/delete", methods=["GET", "POST"], defaults={"level": "study"})
@bp.route("/series/<public_id>/delete", methods=["GET", "POST"], defaults={"level": "series"})
@bp.route("/instances/<public_id>/delete", methods=["GET", "POST"], defaults={"level": "instance"})
def delete(level: str, public_id: str) -> ResponseReturnValue:
    """GET asks for confirmation; POST deletes the files and rows, then goes to the parent."""
    row = resources.get(level, public_id)
    if request.method == "GET":
        return htmx.render("browse/confirm_delete.html", "browse/_confirm_delete.html", level=level, row=row,
                           summary=_summary(level, row), title=_title(level, row))
    title = _title(level, row)
    deleted = resources.delete(services().store, level, public_id, cache=_thumbnails())
    flash(f"Deleted {level} {title}: {deleted.instances} instance{'s' if deleted.instances != 1 else ''}.",
          "ok")
    if deleted.parent_level:
        target = url_for(f"browse.{deleted.parent_level}", public_id=deleted.parent_id)
    else:
        target = url_for("browse.patients" if level == "patient" else "browse.studies")
    return redirect(target, code=303)


def _title(level: str, row: Any) -> str:
    """A short human name of a resource."""
    if level == "patient":
        return f"{person(row.patient_name) or '(no name)'} ({row.patient_id or 'no ID'})"
    if level == "study":
        return f"{dicom_date(row.study_date)} {row.study_description or '(no description)'}".strip()
    if level == "series":
        number = f"#{row.series_number} " if row.series_number is not None else ""
        return f"{number}{row.modality} {row.series_description}".strip()
    return f"#{row.instance_number if row.instance_number is not None else ''}".strip()


# -- lookup ------------------------------------------------------------------------------------


@bp.route("/lookup")
def lookup() -> ResponseReturnValue:
    """Find a resource by an identifier pasted in the header box; one match goes straight there."""
    text = request.args.get("q", "").strip()
    if not text:
        return redirect(url_for("browse.studies"))
    try:
        matches = resources.lookup(text)
    except DolmenError as exc:
        return render_template("browse/lookup.html", q=text, matches=[], error=exc.message), 400
    if len(matches) == 1:
        m = matches[0]
        return redirect(url_for(f"browse.{m.level}", public_id=m.public_id), code=303)
    status = 200 if matches else 404
    return render_template("browse/lookup.html", q=text, matches=matches, error=None), status


# -- the pattern library -----------------------------------------------------------------------


@bp.route("/-/patterns")
def patterns() -> ResponseReturnValue:
    """Every component of the interface on one page, with made-up data, for screenshots."""
    return render_template("patterns.html", **_pattern_samples())


def _pattern_samples() -> dict[str, Any]:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = Dataset()
    ds.PatientName = "<script>alert(1)</script>^DOE"
    ds.PatientID = "PAT001"
    ds.Modality = "CT"
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = "1.2.3.4.5"
    inner = Dataset()
    inner.CodeValue = "T-D0050"
    inner.CodeMeaning = "Tissue"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item, Dataset()])
    ds.add_new(0x00291010, "LO", "SIEMENS CSA HEADER")
    ds.add_new(0x00291010, "LO", "SIEMENS CSA HEADER")
    ds.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
    ds.add_new(0x00291008, "CS", "IMAGE NUM 4")
    ds.add_new(0x00291010 + 0, "OB", b"\x00" * 4096)
    ds.ImageComments = "x" * 600
    page = query.Page(rows=[None] * 50, number=3, size=50, total=1234)
    upload_rows = [
        {"name": "CT/IM0001.dcm", "status": "stored", "reason": "", "study_id": "", "instance_id": ""},
        {"name": "CT/IM0002.dcm", "status": "duplicate", "reason": "Already stored", "study_id": "",
         "instance_id": ""},
        {"name": "export.zip › notes.txt", "status": "rejected",
         "reason": "Not a readable DICOM file: File is missing DICOM File Meta Information header",
         "study_id": "", "instance_id": ""},
    ]
    patient = Patient(public_id="0" * 8 + "-00000000" * 4, patient_name="DOE^JANE", patient_id="PAT001",
                      patient_birth_date="19700101", patient_sex="F", num_studies=2)
    study = Study(public_id=patient.public_id, study_date="20240301", study_time="081200",
                  study_description="CT THORAX", accession_number="ACC0001", study_id="1",
                  referring_physician_name="WHO^KNOWS", modalities_in_study="CT\\SR", num_series=3,
                  num_instances=1204, size=631 * 1024 * 1024, study_instance_uid="1.2.826.0.1.3680043.10.1")
    series = Series(public_id=patient.public_id, series_number=3, modality="CT",
                    series_description="Axial 1.0", body_part_examined="CHEST", series_date="20240301",
                    series_time="081500", num_instances=412,
                    size=211 * 1024 * 1024, series_instance_uid="1.2.826.0.1.3680043.10.2")
    thumb = "data:image/png;base64," + base64.b64encode(placeholder("No image", size=160)).decode()
    return {"nodes": tags.tag_tree(ds), "results": page, "thumb": thumb,
            "sample": {"patient": patient, "study": study, "series": series}, "args_with": lambda **kw: {},
            "form": MultiDict({"name": "doe", "modality": "CT"}), "modalities": ["CT", "MR", "US"],
            "date_presets": DATE_PRESETS, "sort": "date", "dir": "desc", "per": 50,
            "per_choices": PER_PAGE, "upload_rows": upload_rows,
            "counts": {"stored": 1, "duplicate": 1, "rejected": 1}}
