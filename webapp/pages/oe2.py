"""Orthanc Explorer 2 on top of Dolmen: a built copy of its web app at ``/ui/app/``.

OE2 is Orthanc's own Vue application (AGPL, so not shipped here). When ``[http] oe2_path``
points at its built ``dist/`` folder, this serves it the way Orthanc's OE2 plugin does:

* ``/ui/app/assets/<file>``, ``/ui/app/favicon.ico``: files from the folder;
* ``/ui/app/`` and every other ``/ui/app/<route>`` (vue-router's addresses): ``index.html``;
* ``/ui/api/pre-login-configuration`` and ``/ui/api/configuration``: the two JSON documents the
  app reads before and after login (no Keycloak; ``UiOptions`` for what Dolmen implements).

Everything else OE2 calls is Orthanc's REST API, answered by :mod:`webapp.api.rest`.
"""
from __future__ import annotations

import mimetypes
import os
from typing import Any

from flask import Blueprint
from flask import Response
from flask import current_app
from flask import redirect
from flask import send_file
from flask.typing import ResponseReturnValue

from dicomnode.errors import NotFound
from webapp.api.rest import answer

bp = Blueprint("oe2", __name__)

#: The ``UiOptions`` OE2 gets: its defaults, with what Dolmen does not do (yet) turned off.
UI_OPTIONS: dict[str, Any] = {
    "EnableStudyList": True, "EnableUpload": True, "EnableDicomModalities": True,
    "EnableDeleteResources": True, "EnableDownloadZip": True, "EnableDownloadDicomDir": True,
    "EnableDownloadDicomFile": True, "EnableAnonymization": True, "EnableModification": True,
    "EnableSendTo": True, "EnableApiViewMenu": False, "EnableSettings": True, "EnableAuditLogs": False,
    "EnableLinkToLegacyUi": True, "EnableChangePassword": False, "EnableViewerQuickButton": False,
    "EnableReportQuickButton": False, "EnableEditLabels": True, "AvailableLabels": [],
    "EnableLabelsCount": True, "EnableMultiLabelsSearch": False, "EnableShares": False,
    "EnableAddSeries": False, "EnableOpenInOhifViewer": False, "EnableOpenInOhifViewer3": False,
    "EnableOpenInMedDreamViewer": False, "ViewersIcons": {}, "ViewersOrdering": [],
    "MaxStudiesDisplayed": 100, "PageLoadSize": 50, "MaxMyJobsHistorySize": 5,
    "StudyListSearchMode": "search-button", "StudyListSearchAsYouTypeMinChars": 3,
    "StudyListSearchAsYouTypeDelay": 400, "StudyListContentIfNoSearch": "most-recents",
    "DefaultOrdering": "Metadata,LastUpdate,DESC", "AutoAddWildcardsToSearchFields": True,
    "ShowOrthancName": True,
    "UploadReportTags": ["PatientName", "StudyDescription", "PatientID", "AccessionNumber", "StudyDate"],
    "UploadReportMaxTags": 2,
    "StudyListColumns": ["PatientBirthDate", "PatientName", "PatientID", "StudyDescription", "StudyDate",
                         "modalities", "AccessionNumber", "seriesAndInstancesCount"],
    "PatientMainTags": ["PatientID", "PatientName", "PatientBirthDate", "PatientSex", "OtherPatientIDs"],
    "StudyMainTags": ["StudyDate", "StudyTime", "StudyDescription", "AccessionNumber", "StudyID",
                      "StudyInstanceUID", "RequestingPhysician", "ReferringPhysicianName", "InstitutionName"],
    "SeriesMainTags": ["SeriesDate", "SeriesTime", "SeriesDescription", "SeriesNumber", "BodyPartExamined",
                       "ProtocolName", "SeriesInstanceUID"],
    "ModalitiesFilter": ["CR", "CT", "DOC", "DR", "DX", "KO", "MG", "MR", "NM", "OT", "PR", "PT", "PX",
                         "RTDOSE", "RTSTRUCT", "RTPLAN", "SEG", "SR", "US", "XA", "XC"],
    "Languages": [], "DefaultLanguage": None, "DateFormat": "yyyyMMdd",
}

# OE2 is a Vite build: module scripts from 'self', inline style attributes set by Vue and
# Bootstrap, fonts and icons as data: URLs. Nothing inline is executed.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; font-src 'self' data:; frame-ancestors 'self'; base-uri 'self'; "
       "form-action 'self'")

#: Placeholders older OE2 builds leave in their index-*.js for the plugin to fill in.
PLACEHOLDERS = {"${ORTHANC_API_BASE_URL}": "/", "${OE2_BASE_URL}": "/ui/app", "${OE2_API_BASE_URL}": "/ui/api/"}


def folder() -> str:
    path = current_app.config["DOLMEN"]["http.oe2_path"]
    if not path:
        raise NotFound("Orthanc Explorer 2 is not installed here: build it and point [http] oe2_path "
                       "at its dist/ folder (see README, Orthanc Explorer 2).")
    return os.path.abspath(path)


def _with_csp(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    return response


def _index() -> Response:
    response = send_file(os.path.join(folder(), "index.html"), mimetype="text/html", max_age=0)
    return _with_csp(response)


@bp.get("/ui/")
def root() -> ResponseReturnValue:
    return redirect("/ui/app/")


@bp.get("/ui/app")
@bp.get("/ui/app/")
@bp.get("/ui/app/index.html")
def index() -> ResponseReturnValue:
    return _index()


@bp.get("/ui/app/<path:route>")
def app_file(route: str) -> ResponseReturnValue:
    """A file of the build (assets/, favicon.ico); any other address is one of vue-router's."""
    base = folder()
    if route != "favicon.ico" and not route.startswith("assets/"):
        return _index()
    path = os.path.realpath(os.path.join(base, route))
    if not path.startswith(os.path.realpath(base) + os.sep) or not os.path.isfile(path):
        raise NotFound(f"{route[:200]} is not part of the Orthanc Explorer 2 build")
    mimetype = mimetypes.guess_type(path)[0] or "application/octet-stream"
    name = os.path.basename(path)
    if name.startswith("index") and name.endswith(".js"):
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
        if "${" in text:
            for key, value in PLACEHOLDERS.items():
                text = text.replace(key, value)
            return _with_csp(Response(text.encode("utf-8", "surrogateescape"), mimetype="text/javascript"))
    return _with_csp(send_file(path, mimetype=mimetype, max_age=3600, conditional=True))


@bp.get("/ui/api/pre-login-configuration")
def pre_login_configuration() -> ResponseReturnValue:
    return answer({"Keycloak": None})


@bp.get("/ui/api/configuration")
def configuration() -> ResponseReturnValue:
    from webapp.api.rest.tools import plugins_description

    return answer({"Keycloak": None, "Plugins": plugins_description(), "Tokens": {"RequiredForLinks": False},
                   "UiOptions": UI_OPTIONS})
