"""Files, images and ZIPs of stored instances as HTTP responses, for the pages and the REST API.

One implementation of each download: the browse pages (``/instances/<id>/file``,
``preview.png``, ``/studies/<id>/archive``) and Orthanc's routes (``/file``, ``/preview``,
``/archive``, ``/tools/create-archive``) call the same functions.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import pydicom
from flask import Response
from flask import make_response
from flask import request
from flask import send_file
from flask.typing import ResponseReturnValue

from dicomnode import tags
from dicomnode.archive import resources
from dicomnode.archive.index import Instance
from dicomnode.archive.zipstream import archive_name
from dicomnode.archive.zipstream import stream_zip
from dicomnode.errors import DolmenError
from dicomnode.errors import NotFound
from dicomnode.errors import RenderError
from dicomnode.render import WINDOW_PRESETS
from dicomnode.render import Window
from dicomnode.render import placeholder
from dicomnode.render import render as render_image
from webapp.services import services


def window_arg() -> Window | None:
    """``window=ct-lung`` (a preset) or ``window=40,400`` (center,width); empty: the file's own."""
    raw = request.args.get("window", "").strip()
    if not raw:
        return None
    if raw in WINDOW_PRESETS:
        return WINDOW_PRESETS[raw]
    try:
        center, width = (float(v) for v in raw.split(","))
        return Window(center, width)
    except ValueError:
        raise DolmenError(f"Unknown window {raw[:40]!r}: use one of {', '.join(WINDOW_PRESETS)} "
                          "or CENTER,WIDTH", code="bad_request") from None


def image_response(data: bytes, etag: str, mimetype: str = "image/png") -> ResponseReturnValue:
    response = make_response(data)
    response.mimetype = mimetype
    response.headers["Cache-Control"] = "private, max-age=3600"
    response.set_etag(etag)
    return response.make_conditional(request)


def _path(row: Instance) -> Any:
    path = services().store.path(row.path)
    if not path.exists():
        raise NotFound(f"The file of instance {row.public_id} is missing from the store")
    return path


def preview_response(row: Instance, frame: int, *, jpeg: bool = False) -> ResponseReturnValue:
    """The rendered frame ``frame`` (from 1) as PNG (or JPEG); ``window`` and ``size`` from the query.

    An instance that cannot be rendered gets a placeholder image that says why.
    """
    window = window_arg()
    size = request.args.get("size", "")
    max_size = min(max(int(size), 16), 8192) if size.isdigit() else None
    path = _path(row)
    fmt = "jpeg" if jpeg else "png"
    try:
        data = render_image(path, frame=frame - 1, window=window, max_size=max_size, fmt=fmt)
    except RenderError as exc:
        data, fmt = placeholder(exc.message, size=min(max_size or 512, 512)), "png"
    etag = f"{path.stem}-{frame}-{request.args.get('window', '')}-{max_size}-{fmt}"
    return image_response(data, etag, f"image/{fmt}")


def file_response(row: Instance) -> ResponseReturnValue:
    """The stored DICOM file, as an attachment."""
    response = send_file(_path(row), mimetype="application/dicom", as_attachment=True,
                         download_name=f"{row.public_id}.dcm", conditional=True)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def read_dataset(row: Instance, *, stop_before_pixels: bool = False) -> pydicom.Dataset:
    """The data set of a stored instance."""
    try:
        return pydicom.dcmread(_path(row), stop_before_pixels=stop_before_pixels)
    except pydicom.errors.InvalidDicomError as exc:
        raise RenderError(f"The stored file of instance {row.public_id} cannot be read: {exc}") from None


def pdf_response(row: Instance) -> ResponseReturnValue:
    """The PDF inside an Encapsulated PDF instance (0042,0011) *Encapsulated Document*."""
    ds = read_dataset(row)
    data = ds.get("EncapsulatedDocument")
    mime = str(ds.get("MIMETypeOfEncapsulatedDocument", "") or "")
    if not isinstance(data, bytes) or (mime and mime != "application/pdf"):
        raise NotFound("This instance holds no encapsulated PDF")
    end = data.rfind(b"%%EOF")
    if end >= 0:  # drop the padding after the end marker (the value has an even length)
        data = data[:end + 5]
    response = make_response(data)
    response.mimetype = "application/pdf"
    response.headers.set("Content-Disposition", "inline", filename=f"{row.public_id}.pdf")
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def element_response(row: Instance, tag_path: str, *, attachment: bool) -> ResponseReturnValue:
    """The value of one element named by a path of :func:`dicomnode.tags.element_at`."""
    ds = read_dataset(row)
    elem = tags.element_at(ds, tag_path)
    data = tags.value_bytes(elem)
    binary = elem.VR in tags.BINARY_VRS or elem.VR in ("OB or OW", "US or OW")
    response = make_response(data)
    response.mimetype = "application/octet-stream" if (binary or not attachment) else "text/plain"
    if attachment:
        name = f"{row.public_id}-{tag_path.replace('/', '-')}.{'bin' if binary else 'txt'}"
        response.headers.set("Content-Disposition", "attachment", filename=name)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _label(level: str, row: Any) -> str:
    if level == "patient":
        text = f"{row.patient_id} {row.patient_name}"
    elif level == "study":
        text = f"{row.patient.patient_id} {row.study_date} {row.study_description}"
    elif level == "series":
        text = f"{row.study.patient.patient_id} {row.modality} {row.series_description}"
    else:
        text = row.public_id
    return archive_name(text.strip() or row.public_id)


def archive_response(chosen: Iterable[tuple[str, Any]], name: str | None = None) -> ResponseReturnValue:
    """A ZIP of every file of the resources ``[(level, row)]``, streamed as it is read.

    The names (patient / study / series / IMnnnnn.dcm) are read once, up front: the download then
    holds one file open at a time and no database connection while the client reads.
    """
    store = services().store
    entries = []
    seen: set[int] = set()
    chosen = list(chosen)
    for level, row in chosen:
        for pname, pid, st_date, st_desc, se_number, modality, se_desc, number, pk, path in \
                resources.archive_rows(level, row):
            if pk in seen:
                continue
            seen.add(pk)
            series_label = f"SE{'' if se_number is None else se_number} {modality} {se_desc}".strip()
            entries.append((archive_name(f"{pname} {pid}".strip(), f"{st_date} {st_desc}".strip(), series_label,
                                         f"IM{pk if number is None else number:05}.dcm"),
                            functools.partial(store.path, path)))  # fetched at its turn (object store)
    if name is None:
        name = _label(*chosen[0]) if len(chosen) == 1 else "Archive"
    response = Response(stream_zip(entries), mimetype="application/zip")
    response.headers.set("Content-Disposition", "attachment", filename=f"{name}.zip")
    return response
