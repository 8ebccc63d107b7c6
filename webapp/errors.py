"""Errors rendered in one place: JSON under /api and /dicom-web, a fragment to htmx, a page otherwise.

A traceback never reaches a client; unexpected errors are logged with ``LOGGER.exception``.
"""
from __future__ import annotations

import logging

from flask import Flask
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


def wants_json() -> bool:
    """True for the JSON API, DICOMweb and WADO routes, and for clients asking for JSON only."""
    if request.path.startswith(JSON_PREFIXES):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and "text/html" not in request.accept_mimetypes


def error_response(status: int, title: str, message: str, code: str) -> ResponseReturnValue:
    """Answer an error in the form the client expects."""
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
        return error_response(exc.http_status, title, exc.message, exc.code)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> ResponseReturnValue:
        messages = {
            404: "There is nothing at this address. The resource may have been deleted.",
            405: "This address does not accept this method.",
            413: "The request is larger than the limit set by [http] max_upload_mb.",
        }
        status = exc.code or 500
        return error_response(status, exc.name, messages.get(status, exc.description or exc.name),
                              exc.name.lower().replace(" ", "_"))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> ResponseReturnValue:
        LOGGER.exception("Unexpected error on %s %s", request.method, request.path)
        return error_response(500, "Internal error",
                              "Dolmen failed unexpectedly; the details are in its log.", "internal_error")
