"""DICOMweb: QIDO-RS, WADO-RS and STOW-RS under ``[dicomweb] root``, WADO-URI at ``[dicomweb] wado_root``.

The views read the request, call the engine in :mod:`dicomnode.dicomweb` (``qido``, ``wado``, ``stow``,
``negotiate``) and write its answer:
``application/dicom+json`` for searches and metadata, ``multipart/related`` streamed one file
at a time for retrieves. Both roots come from the settings when the blueprint is registered.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from collections.abc import Iterator
from typing import Any

from flask import Blueprint
from flask import Flask
from flask import Response
from flask import jsonify
from flask import request
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import wrap_file

from dicomnode.archive import query
from dicomnode.archive.ingest import Source
from dicomnode.dicomweb import negotiate
from dicomnode.dicomweb import qido
from dicomnode.dicomweb import stow
from dicomnode.dicomweb import wado
from dicomnode.dicomweb.multipart import CHUNK
from dicomnode.dicomweb.multipart import MultipartFile
from dicomnode.dicomweb.multipart import Part
from dicomnode.dicomweb.multipart import content_type
from dicomnode.dicomweb.multipart import new_boundary
from dicomnode.dicomweb.multipart import parse_accept
from dicomnode.dicomweb.multipart import read_file
from dicomnode.dicomweb.multipart import write_parts
from dicomnode.errors import DolmenError
from dicomnode.errors import NotFound
from dicomnode.errors import RenderError
from webapp.services import services
from webapp.services import settings

bp = Blueprint("dicomweb", __name__)

DICOM_JSON = "application/dicom+json"


def root_of(app: Flask) -> str:
    """The DICOMweb root of an app's settings, without its trailing slash (``/dicom-web``)."""
    return "/" + str(app.config["DOLMEN"]["dicomweb.root"]).strip("/")


@bp.record
def _roots(state: BlueprintSetupState) -> None:
    # Runs before the routes below are added: they are prefixed with the configured root.
    state.url_prefix = root_of(state.app)
    wado_root = "/" + str(state.app.config["DOLMEN"]["dicomweb.wado_root"]).strip("/")
    state.app.add_url_rule(wado_root, f"{bp.name}.wado_uri", wado_uri)


def _base() -> str:
    """The service's absolute URL, for Retrieve URLs and BulkDataURIs."""
    return request.url_root.rstrip("/") + root_of_request()


def root_of_request() -> str:
    return "/" + str(settings()["dicomweb.root"]).strip("/")


def _accept() -> list[Any]:
    values = request.args.getlist("accept") or request.headers.getlist("Accept")
    return parse_accept(values)


def _json(doc: Any, status: int = 200, warnings: Iterable[str] = ()) -> Response:
    response = Response(json.dumps(doc, ensure_ascii=False, separators=(",", ":")), status,
                        content_type=DICOM_JSON)
    for text in warnings:
        response.headers.add("Warning", f'299 {request.host} "{text}"')
    return response


def _multipart(parts: Iterable[Part], media_type: str, **params: str) -> Response:
    boundary = new_boundary()
    return Response(write_parts(parts, boundary), direct_passthrough=True,
                    content_type=content_type(media_type, boundary, **params))


def _multipart_files(parts: Iterable[Part], media_type: str) -> Response:
    """A multipart answer of files sent as stored: the web server sends it from the files
    (``wsgi.file_wrapper``) with its Content-Length, without a copy through the app."""
    boundary = new_boundary()
    body = MultipartFile(parts, boundary)
    response = Response(wrap_file(request.environ, body, CHUNK), direct_passthrough=True,
                        content_type=content_type(media_type, boundary))
    response.content_length = body.size
    return response


# -- errors: JSON whatever the root ---------------------------------------------------------------


def _error(status: int, code: str, message: str) -> Response:
    response = jsonify({"error": {"status": status, "code": code, "message": message}})
    response.status_code = status
    return response


@bp.errorhandler(DolmenError)
def _dolmen_error(exc: DolmenError) -> ResponseReturnValue:
    return _error(exc.http_status, exc.code, exc.message)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> ResponseReturnValue:
    status = exc.code or 500
    return _error(status, exc.name.lower().replace(" ", "_"), exc.description or exc.name)


# -- QIDO-RS -----------------------------------------------------------------------------------


def _search(level: str, **scope: str) -> Response:
    negotiate.negotiate_json(_accept())
    req = qido.parse_qido(level, request.args.items(multi=True), scope)
    answers = qido.qido(req, _base(), case_sensitive_pn=settings()["dicom.case_sensitive_pn"],
                      store=services().store)
    return _json(answers, warnings=req.warnings)


@bp.route("/studies")
def search_studies() -> ResponseReturnValue:
    """QIDO-RS: studies matching the query parameters."""
    return _search(query.STUDY)


@bp.route("/series")
def search_series() -> ResponseReturnValue:
    """QIDO-RS: series of any study."""
    return _search(query.SERIES)


@bp.route("/instances")
def search_instances() -> ResponseReturnValue:
    """QIDO-RS: instances of any study."""
    return _search(query.IMAGE)


@bp.route("/studies/<study>/series")
def search_study_series(study: str) -> ResponseReturnValue:
    """QIDO-RS: series of one study."""
    return _search(query.SERIES, StudyInstanceUID=study)


@bp.route("/studies/<study>/instances")
def search_study_instances(study: str) -> ResponseReturnValue:
    """QIDO-RS: instances of one study."""
    return _search(query.IMAGE, StudyInstanceUID=study)


@bp.route("/studies/<study>/series/<series>/instances")
def search_series_instances(study: str, series: str) -> ResponseReturnValue:
    """QIDO-RS: instances of one series."""
    return _search(query.IMAGE, StudyInstanceUID=study, SeriesInstanceUID=series)


# -- WADO-RS -----------------------------------------------------------------------------------


def _retrieve(study: str, series: str | None = None, instance: str | None = None) -> Response:
    rows = wado.instances(study, series, instance)
    choice = negotiate.negotiate_instances(_accept(), {r.transfer_syntax_uid for r in rows},
                                    request.args.get("transfer-syntax"))
    parts = wado.instance_parts(services().store, rows, choice)
    if not choice.multipart and len(rows) == 1:
        part = next(iter(parts), None)
        if part is None:
            raise NotFound("The file of this instance is missing from the store")
        body = part.body if isinstance(part.body, bytes) else read_file(part.body)
        return Response(body, content_type=part.content_type, direct_passthrough=True)
    wanted = choice.transfer_syntax
    if wanted == "*" or all(r.transfer_syntax_uid == wanted for r in rows):
        return _multipart_files(parts, "application/dicom")  # no transcoding: files as they are
    return _multipart(parts, "application/dicom")


@bp.route("/studies/<study>")
def retrieve_study(study: str) -> ResponseReturnValue:
    """WADO-RS: every instance of a study, streamed."""
    return _retrieve(study)


@bp.route("/studies/<study>/series/<series>")
def retrieve_series(study: str, series: str) -> ResponseReturnValue:
    """WADO-RS: every instance of a series, streamed."""
    return _retrieve(study, series)


@bp.route("/studies/<study>/series/<series>/instances/<instance>")
def retrieve_instance(study: str, series: str, instance: str) -> ResponseReturnValue:
    """WADO-RS: one instance."""
    return _retrieve(study, series, instance)


def _metadata(study: str, series: str | None = None, instance: str | None = None) -> Response:
    negotiate.negotiate_json(_accept())
    rows = wado.instances(study, series, instance)
    return Response(wado.metadata(services().store, rows, _base()), content_type=DICOM_JSON)


@bp.route("/studies/<study>/metadata")
def study_metadata(study: str) -> ResponseReturnValue:
    """WADO-RS: the data sets of a study's instances, without bulk data."""
    return _metadata(study)


@bp.route("/studies/<study>/series/<series>/metadata")
def series_metadata(study: str, series: str) -> ResponseReturnValue:
    """WADO-RS: the data sets of a series' instances."""
    return _metadata(study, series)


@bp.route("/studies/<study>/series/<series>/instances/<instance>/metadata")
def instance_metadata(study: str, series: str, instance: str) -> ResponseReturnValue:
    """WADO-RS: the data set of one instance."""
    return _metadata(study, series, instance)


@bp.route("/studies/<study>/series/<series>/instances/<instance>/frames/<frames>")
def retrieve_frames(study: str, series: str, instance: str, frames: str) -> ResponseReturnValue:
    """WADO-RS: frames, uncompressed or as their stored bitstream."""
    row = wado.instances(study, series, instance)[0]
    numbers = wado.parse_frame_list(frames, int(row.number_of_frames or 1))
    choice = negotiate.negotiate_frames(_accept(), row.transfer_syntax_uid, request.args.get("transfer-syntax"))
    parts = list(wado.frame_parts(services().store, row, numbers, choice))  # errors before the first byte
    return _multipart(parts, choice.media_type)


@bp.route("/studies/<study>/series/<series>/instances/<instance>/bulkdata/<path:element>")
def retrieve_bulkdata(study: str, series: str, instance: str, element: str) -> ResponseReturnValue:
    """WADO-RS: one bulk data value named by a BulkDataURI of the metadata."""
    row = wado.instances(study, series, instance)[0]
    if element.lower() in ("7fe00010", "7fe00008", "7fe00009"):
        choice = negotiate.negotiate_frames(_accept(), row.transfer_syntax_uid, request.args.get("transfer-syntax"))
        parts = wado.pixel_bulk_parts(services().store, row, choice)
        first = next(parts)  # errors before the first byte
        return _multipart(_chain(first, parts), choice.media_type)
    value = wado.bulk_value(services().store, row, element)
    return _multipart([Part("application/octet-stream", value)], "application/octet-stream")


def _chain(first: Part, rest: Iterator[Part]) -> Iterator[Part]:
    yield first
    yield from rest


# -- rendered and thumbnails ---------------------------------------------------------------------


def _rendered(rows: list[Any], frame: int = 0, *, thumbnail: bool = False, pick: bool = True) -> Response:
    fmt = negotiate.negotiate_rendered(_accept())
    params = wado.parse_render_params(request.args, thumbnail=thumbnail)
    row = wado.representative(rows) if pick else rows[0]
    data = wado.render_instance(services().store, row, frame, "png" if fmt == "image/png" else "jpeg", params)
    response = Response(data, content_type=fmt)
    if thumbnail:
        response.headers["Cache-Control"] = "private, max-age=300"
    return response


@bp.route("/studies/<study>/rendered")
@bp.route("/studies/<study>/thumbnail", endpoint="study_thumbnail")
def study_rendered(study: str) -> ResponseReturnValue:
    """A representative image of a study (the middle instance of its first series)."""
    return _rendered(wado.instances(study), thumbnail=request.path.endswith("/thumbnail"))


@bp.route("/studies/<study>/series/<series>/rendered")
@bp.route("/studies/<study>/series/<series>/thumbnail", endpoint="series_thumbnail")
def series_rendered(study: str, series: str) -> ResponseReturnValue:
    """A representative image of a series (its middle instance)."""
    return _rendered(wado.instances(study, series), thumbnail=request.path.endswith("/thumbnail"))


@bp.route("/studies/<study>/series/<series>/instances/<instance>/rendered")
@bp.route("/studies/<study>/series/<series>/instances/<instance>/thumbnail", endpoint="instance_thumbnail")
def instance_rendered(study: str, series: str, instance: str) -> ResponseReturnValue:
    """The first frame of an instance as JPEG or PNG."""
    return _rendered(wado.instances(study, series, instance), thumbnail=request.path.endswith("/thumbnail"),
                     pick=False)


@bp.route("/studies/<study>/series/<series>/instances/<instance>/frames/<int:frame>/rendered")
@bp.route("/studies/<study>/series/<series>/instances/<instance>/frames/<int:frame>/thumbnail",
          endpoint="frame_thumbnail")
def frame_rendered(study: str, series: str, instance: str, frame: int) -> ResponseReturnValue:
    """One frame (numbered from 1) as JPEG or PNG."""
    if frame < 1:
        raise query.QueryError("Frames are numbered from 1")
    return _rendered(wado.instances(study, series, instance), frame - 1,
                     thumbnail=request.path.endswith("/thumbnail"), pick=False)


# -- STOW-RS -----------------------------------------------------------------------------------


def _stow(study: str | None) -> Response:
    svc = services()
    result = stow.stow(svc.ingestor, request.stream, request.headers.get("Content-Type", ""), _base(),
                     Source("stow", ip=request.remote_addr or ""), study)
    return _json(result.body, result.status)


@bp.route("/studies", methods=["POST"])
def store_instances() -> ResponseReturnValue:
    """STOW-RS: store the DICOM files of a multipart/related request."""
    return _stow(None)


@bp.route("/studies/<study>", methods=["POST"])
def store_study_instances(study: str) -> ResponseReturnValue:
    """STOW-RS: store instances that must belong to ``study``."""
    return _stow(study)


# -- WADO-URI (registered at [dicomweb] wado_root by _roots) -------------------------------------


def wado_uri() -> ResponseReturnValue:
    """WADO-URI: one instance as a DICOM file, or one frame as JPEG or PNG."""
    try:
        req = wado.parse_wado_uri(request.args)
        row = wado.wado_uri_instance(req)
        store = services().store
        if req.content_type != "application/dicom":
            fmt = "png" if req.content_type == "image/png" else "jpeg"
            try:
                return Response(wado.render_instance(store, row, req.frame, fmt, req.render),
                                content_type=req.content_type)
            except RenderError:
                if req.explicit_type:
                    raise
                # No image to show and no type asked: the object itself (PS3.18 9.4.1.2).
        choice = negotiate.Choice("application/dicom", req.transfer_syntax, False)
        part = next(wado.instance_parts(store, [row], choice), None)
        if part is None:
            raise NotFound("The file of this instance is missing from the store")
        body = part.body if isinstance(part.body, bytes) else read_file(part.body)
        return Response(body, content_type="application/dicom", direct_passthrough=True)
    except DolmenError as exc:
        return _error(exc.http_status, exc.code, exc.message)
