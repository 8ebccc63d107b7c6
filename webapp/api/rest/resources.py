"""Orthanc's resource routes: lists, one resource, children and parents, content, labels, deletion."""
from __future__ import annotations

from typing import Any

from flask import Response
from flask import request
from flask.typing import ResponseReturnValue

from dicomnode import tags
from dicomnode.archive import changes
from dicomnode.archive import orthanc
from dicomnode.archive import resources
from dicomnode.errors import NotFound
from webapp import files
from webapp.api.rest import answer
from webapp.api.rest import flag
from webapp.api.rest import int_arg
from webapp.api.rest import route
from webapp.services import services
from webapp.services import settings

#: Dolmen's level names (dicomnode.archive.resources) for Orthanc's resource types.
LEVEL = {"Patient": "patient", "Study": "study", "Series": "series", "Instance": "instance"}
SEGMENTS = "<any(patients, studies, series, instances):segment>"
PARENTS_SEGMENTS = "<any(patients, studies, series):segment>"


def stable_age() -> float:
    return float(settings()["storage.stable_age"])


def fetch(resource_type: str, public_id: str) -> Any:
    """The row, or Orthanc's 404 "Unknown resource"."""
    return resources.get(LEVEL[resource_type], public_id)


def any_resource(public_id: str) -> tuple[str, Any]:
    """(Dolmen's level, row) of an id of any level (Orthanc's ids do not say theirs)."""
    if not resources.is_public_id(public_id):
        raise NotFound(f"{public_id[:80]!r} is not a resource identifier: they look like "
                       "8 hexadecimal digits in five groups separated by dashes")
    for resource_type in orthanc.TYPES:
        row = orthanc.MODEL[resource_type].get_or_none(orthanc.MODEL[resource_type].public_id == public_id)
        if row is not None:
            return LEVEL[resource_type], row
    raise NotFound(f"No resource {public_id} in the archive: it may have been deleted")


def requested_tags() -> list[str]:
    raw = request.args.get("requestedTags", "") or request.args.get("requested-tags", "")
    return [t.strip() for t in raw.replace(",", ";").split(";") if t.strip()] if raw else []


def rendered(resource_type: str, rows: list[Any], *, expand: bool = True) -> list[Any]:
    """A list as Orthanc answers it: ids, or the resources (``?expand``), simplified as asked."""
    if not expand:
        return [r.public_id for r in rows]
    return orthanc.describe(resource_type, rows, stable_age=stable_age(), requested_tags=requested_tags(),
                            store=services().store)


@route(f"/{SEGMENTS}")
def list_resources(segment: str) -> ResponseReturnValue:
    """``GET /studies`` (``?expand``, ``?since=&limit=``, ``?requestedTags=``)."""
    resource_type = orthanc.TYPE_OF_SEGMENT[segment]
    rows = orthanc.list_rows(resource_type, since=int_arg("since"), limit=int_arg("limit"))
    return answer(rendered(resource_type, rows, expand=flag("expand")))


@route(f"/{SEGMENTS}/<public_id>")
def one(segment: str, public_id: str) -> ResponseReturnValue:
    resource_type = orthanc.TYPE_OF_SEGMENT[segment]
    return answer(rendered(resource_type, [fetch(resource_type, public_id)])[0])


@route(f"/{SEGMENTS}/<public_id>", methods=("DELETE",))
def delete(segment: str, public_id: str) -> ResponseReturnValue:
    """``DELETE``: the resource, its files and the parents it leaves empty; the nearest one left."""
    resource_type = orthanc.TYPE_OF_SEGMENT[segment]
    deleted = resources.delete(services().store, LEVEL[resource_type], public_id,
                               cache=resources.ThumbnailCache(services().store.root))
    remaining = None
    if deleted.parent_level:
        parent_type = next(t for t, lv in LEVEL.items() if lv == deleted.parent_level)
        remaining = {"ID": deleted.parent_id, "Path": f"/{orthanc.SEGMENT[parent_type]}/{deleted.parent_id}",
                     "Type": parent_type}
    return answer({"RemainingAncestor": remaining})


@route(f"/{SEGMENTS}/<public_id>/<any(patient, study, series, studies, instances):relative>")
def relative(segment: str, public_id: str, relative: str) -> ResponseReturnValue:
    """Children (``/studies/{id}/series``, ``/patients/{id}/instances``) or a parent (``/instances/{id}/study``)."""
    resource_type = orthanc.TYPE_OF_SEGMENT[segment]
    row = fetch(resource_type, public_id)
    wanted = {"patient": "Patient", "study": "Study", "studies": "Study", "series": "Series",
              "instances": "Instance"}[relative]
    parent = orthanc.TYPES.index(wanted) < orthanc.TYPES.index(resource_type)
    if wanted == resource_type or (parent and relative in ("studies", "instances")) or (
            not parent and relative in ("patient", "study")):
        raise NotFound(f"A {resource_type} has no {relative}: its parents are named in the singular "
                       "(/instances/{id}/study), its children in the plural (/studies/{id}/instances)")
    if parent:
        return answer(rendered(wanted, [orthanc.ancestor(resource_type, row, wanted)])[0])
    rows = orthanc.children(resource_type, row, wanted)
    return answer(rendered(wanted, rows, expand=request.args.get("expand", "true").lower() not in ("false", "0")))


@route(f"/{SEGMENTS}/<public_id>/statistics")
def statistics(segment: str, public_id: str) -> ResponseReturnValue:
    resource_type = orthanc.TYPE_OF_SEGMENT[segment]
    return answer(orthanc.statistics(resource_type, fetch(resource_type, public_id)))


def tag_form() -> str:
    if flag("simplify"):
        return "simplify"
    if flag("short"):
        return "short"
    return "full"


@route(f"/{PARENTS_SEGMENTS}/<public_id>/shared-tags")
def shared_tags(segment: str, public_id: str) -> ResponseReturnValue:
    """The elements with the same value in every instance (pixel data and sequences aside)."""
    resource_type = orthanc.TYPE_OF_SEGMENT[segment]
    rows = orthanc.instance_rows(resource_type, fetch(resource_type, public_id))
    full = orthanc.shared_tags(tags.orthanc_tags(files.read_dataset(r, stop_before_pixels=True)) for r in rows)
    form = tag_form()
    if form == "full":
        return answer(full)
    return answer({(v["Name"] if form == "simplify" else k): v["Value"] for k, v in full.items()})


@route(f"/{PARENTS_SEGMENTS}/<public_id>/archive", methods=("GET", "POST"))
def archive(segment: str, public_id: str) -> ResponseReturnValue:
    """A ZIP of the resource's files (``/media`` too: Dolmen writes no DICOMDIR)."""
    resource_type = orthanc.TYPE_OF_SEGMENT[segment]
    return files.archive_response([(LEVEL[resource_type], fetch(resource_type, public_id))])


@route(f"/{PARENTS_SEGMENTS}/<public_id>/media", methods=("GET", "POST"))
def media(segment: str, public_id: str) -> ResponseReturnValue:
    return archive(segment, public_id)


# -- labels ------------------------------------------------------------------------------------


@route(f"/{SEGMENTS}/<public_id>/labels")
def labels(segment: str, public_id: str) -> ResponseReturnValue:
    resource_type = orthanc.TYPE_OF_SEGMENT[segment]
    return answer(changes.labels_of(resource_type, fetch(resource_type, public_id)))


@route(f"/{SEGMENTS}/<public_id>/labels/<label>", methods=("GET", "PUT", "DELETE"))
def label(segment: str, public_id: str, label: str) -> ResponseReturnValue:
    """PUT adds, DELETE removes, GET answers the label if the resource has it (else 404)."""
    resource_type = orthanc.TYPE_OF_SEGMENT[segment]
    row = fetch(resource_type, public_id)
    changes.check_label(label)
    if request.method == "PUT":
        changes.add_label(resource_type, row, label)
    elif request.method == "DELETE":
        changes.remove_label(resource_type, row, label)
    elif label not in changes.labels_of(resource_type, row):
        raise NotFound(f"The {resource_type.lower()} has no label {label!r}")
    else:
        return answer(label)
    return answer({})


# -- instance content --------------------------------------------------------------------------


def instance(public_id: str) -> Any:
    return fetch("Instance", public_id)


@route("/instances/<public_id>/tags")
def instance_tags(public_id: str) -> ResponseReturnValue:
    """The data set without its file meta: ``?simplify``, ``?short``, else the full form."""
    ds = files.read_dataset(instance(public_id))
    return answer(tags.orthanc_tags(ds, tag_form()))


@route("/instances/<public_id>/simplified-tags")
def instance_simplified_tags(public_id: str) -> ResponseReturnValue:
    return answer(tags.orthanc_tags(files.read_dataset(instance(public_id)), "simplify"))


@route("/instances/<public_id>/header")
def instance_header(public_id: str) -> ResponseReturnValue:
    """The file meta information (group 0002)."""
    ds = files.read_dataset(instance(public_id), stop_before_pixels=True)
    return answer(tags.orthanc_tags(ds.file_meta, tag_form()))


@route("/instances/<public_id>/file")
def instance_file(public_id: str) -> ResponseReturnValue:
    return files.file_response(instance(public_id))


@route("/instances/<public_id>/pdf")
def instance_pdf(public_id: str) -> ResponseReturnValue:
    return files.pdf_response(instance(public_id))


def _image(public_id: str, frame: int) -> ResponseReturnValue:
    jpeg = "image/jpeg" in request.headers.get("Accept", "") and "image/png" not in request.headers.get("Accept", "")
    return files.preview_response(instance(public_id), frame, jpeg=jpeg)


@route("/instances/<public_id>/<any(preview, rendered, 'image-uint8'):kind>")
def instance_preview(public_id: str, kind: str) -> ResponseReturnValue:
    """The first frame as PNG (JPEG when only ``image/jpeg`` is accepted)."""
    return _image(public_id, 1)


@route("/instances/<public_id>/frames")
def instance_frames(public_id: str) -> ResponseReturnValue:
    return answer(list(range(instance(public_id).number_of_frames or 1)))


@route("/instances/<public_id>/frames/<int:frame>/<any(preview, rendered, 'image-uint8'):kind>")
def frame_preview(public_id: str, frame: int, kind: str) -> ResponseReturnValue:
    """Frame ``frame`` (from 0, as Orthanc counts them)."""
    row = instance(public_id)
    if frame >= (row.number_of_frames or 1):
        raise NotFound(f"Frame {frame} does not exist: the instance has {row.number_of_frames or 1} (from 0)")
    return _image(public_id, frame + 1)


@route("/instances/<public_id>/content/")
@route("/instances/<public_id>/content")
def content_root(public_id: str) -> ResponseReturnValue:
    ds = files.read_dataset(instance(public_id), stop_before_pixels=False)
    return answer([f"{t.group:04x}-{t.element:04x}" for t in sorted(ds.keys())])


@route("/instances/<public_id>/content/<path:path>")
def content(public_id: str, path: str) -> ResponseReturnValue:
    """``/content/0010-0010``, ``/content/0008-1140/0/0008-1155``: a value, or the items / tags below."""
    row = instance(public_id)
    parts = [p for p in path.split("/") if p]
    ds = files.read_dataset(row)
    try:
        tag_path = "/".join(p.replace("-", "").replace(",", "") if not p.isdigit() else p for p in parts)
        if parts and parts[-1].isdigit():  # an item of a sequence: the tags inside it
            elem = tags.element_at(ds, "/".join(tag_path.split("/")[:-1]))
            item = elem.value[int(parts[-1])]
            return answer([f"{t.group:04x}-{t.element:04x}" for t in sorted(item.keys())])
        elem = tags.element_at(ds, tag_path)
    except (IndexError, ValueError):
        raise NotFound(f"No element at {path!r} in this instance") from None
    if elem.VR == "SQ":
        return answer([str(i) for i in range(len(elem.value))])
    return files.element_response(row, tag_path, attachment=False)


@route("/instances/<public_id>/metadata")
def metadata(public_id: str) -> ResponseReturnValue:
    """Orthanc's metadata of an instance, from the index (``?expand`` for values)."""
    meta = instance_metadata(instance(public_id))
    return answer(meta if flag("expand") else sorted(meta))


@route("/instances/<public_id>/metadata/<name>")
def metadata_item(public_id: str, name: str) -> ResponseReturnValue:
    meta = instance_metadata(instance(public_id))
    if name not in meta:
        raise NotFound(f"The instance has no metadata {name!r}")
    return Response(meta[name], mimetype="text/plain")


def instance_metadata(row: Any) -> dict[str, str]:
    origin = {"dicom": "DicomProtocol", "upload": "RestApi", "stow": "RestApi", "import": "Lua",
              "retrieve": "DicomProtocol"}.get(row.origin, "Unknown")
    meta = {"IndexInSeries": str(row.instance_number or ""), "Origin": origin,
            "ReceptionDate": row.received_at.strftime("%Y%m%dT%H%M%S") if row.received_at else "",
            "RemoteAET": row.sender_aet or "", "RemoteIP": row.sender_ip or "", "CalledAET": row.called_aet or "",
            "SopClassUid": row.sop_class_uid, "TransferSyntax": row.transfer_syntax_uid}
    return {k: v for k, v in sorted(meta.items()) if v != "" or k in ("RemoteAET",)}
