"""Errors rendered in one place: JSON under /api and /dicom-web, a fragment to htmx, a page otherwise.

A traceback never reaches a client; unexpected errors are logged with ``LOGGER.exception``.
"""
from __future__ import annotations

import logging

from flask import Flask
from flask import Response
from flask import g
from flask import jsonify
from flask import render_template
from flask import request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from dicomnode.errors import DolmenError
from webapp.htmx import is_htmx

LOGGER = logging.getLogger(__name__)

JSON_PREFIXES = ("/api/", "/dicom-web/", "/wado")


def is_browser() -> bool:
    """True for a browser navigation or htmx: the requests that get pages.

    ``Sec-Fetch-Dest: document`` (every browser's navigation), ``HX-Request``, or ``text/html``
    named in ``Accept`` by a client that sends no credentials of its own. ``*/*``, no
    ``Accept`` (curl, requests, httpx, axios, Orthanc's clients) is a program.
    """
    if request.headers.get("Sec-Fetch-Dest") == "document" or request.headers.get("HX-Request") == "true":
        return True
    accept = request.headers.get("Accept", "")
    return "text/html" in accept and "Authorization" not in request.headers


def prefers_json() -> bool:
    """True when the client asks for JSON rather than HTML in ``Accept`` (for pages that answer both)."""
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and "text/html" not in request.accept_mimetypes


def wants_json() -> bool:
    """True for the JSON API, DICOMweb and WADO routes, and for programs (not a browser)."""
    return request.path.startswith(JSON_PREFIXES) or not is_browser()


#: Orthanc's error codes (``OrthancFramework/Sources/Enumerations.h``): number and message.
ORTHANC_ERRORS = {
    -1: "Internal error", 3: "Parameter out of range", 8: "Bad request", 9: "Error in the network protocol",
    15: "Bad file format", 16: "Timeout", 17: "Unknown resource", 19: "The file storage is full",
    28: "Cannot parse a JSON document", 29: "Bad credentials were provided to an HTTP request",
    34: "Cannot send a response which is acceptable according to the Accept HTTP header",
    36: "The database is currently not available", 45: "Access to a resource is forbidden",
}
_ORTHANC_BY_HTTP = {400: 8, 401: 29, 403: 45, 404: 17, 406: 34, 413: 8, 415: 8, 500: -1, 502: 9, 503: 36,
                    504: 16, 507: 19}
_ORTHANC_BY_CODE = {"rejected": 15, "not_found": 17, "storage_full": 19, "remote_error": 9}


def orthanc_error(status: int, message: str, code: str = "", orthanc_status: int | None = None) -> ResponseReturnValue:
    """An error in Orthanc's body: HttpError, HttpStatus, Message, Method, OrthancError, OrthancStatus, Uri."""
    number = orthanc_status if orthanc_status is not None else _ORTHANC_BY_CODE.get(
        code, _ORTHANC_BY_HTTP.get(status, 8 if status < 500 else -1))
    name = ORTHANC_ERRORS.get(number, "Bad request")
    body = {"Details": message, "HttpError": HTTP_STATUS_CODES.get(status, "Error"), "HttpStatus": status,
            "Message": name, "Method": request.method, "OrthancError": name, "OrthancStatus": number,
            "Uri": request.path}
    if not message or message == name:
        del body["Details"]
    response = jsonify(body)
    response.status_code = status
    return response


def _orthanc_form() -> bool:
    """True when an error is answered in Orthanc's form: a REST request, or a program off /api and DICOMweb."""
    return bool(g.get("rest")) or (not request.path.startswith(JSON_PREFIXES) and not is_browser())


def error_response(status: int, title: str, message: str, code: str,
                   orthanc_status: int | None = None) -> ResponseReturnValue:
    """Answer an error in the form the client expects."""
    if _orthanc_form():
        return orthanc_error(status, message, code, orthanc_status)
    if wants_json():
        response = jsonify({"error": {"status": status, "code": code, "title": title, "message": message}})
        response.status_code = status
        return response
    template = "errors/_error.html" if is_htmx() else "errors/error.html"
    return render_template(template, status=status, title=title, message=message, code=code), status


def init_app(app: Flask) -> None:
    """Register the handlers."""

    @app.errorhandler(DolmenError)
    def _dolmen(exc: DolmenError) -> ResponseReturnValue:
        title = HTTP_STATUS_CODES.get(exc.http_status, "Error").capitalize()  # "Not found", for people
        return error_response(exc.http_status, title, exc.message, exc.code, getattr(exc, "orthanc_status", None))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> ResponseReturnValue:
        messages = {
            404: "There is nothing at this address. The resource may have been deleted.",
            405: "This address does not accept this method.",
            413: "The request is larger than the limit set by [http] max_upload_mb.",
        }
        status = exc.code or 500
        if status == 405 and _orthanc_form():
            return Response("", 405, {"Allow": ", ".join(sorted(getattr(exc, "valid_methods", None) or []))})
        response = error_response(status, exc.name, messages.get(status, exc.description or exc.name),
                                  exc.name.lower().replace(" ", "_"))
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> ResponseReturnValue:
        LOGGER.exception("Unexpected error on %s %s", request.method, request.path)
        return error_response(500, "Internal error",
                              "Dolmen failed unexpectedly; the details are in its log.", "internal_error")
