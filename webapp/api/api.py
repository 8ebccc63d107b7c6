"""The JSON API, with Orthanc's names where Orthanc has the same thing (``/api/statistics``)."""
from __future__ import annotations

from typing import Any

from flask import Blueprint
from flask import jsonify
from flask.typing import ResponseReturnValue

from dicomnode import __version__
from dicomnode.archive import stats
from webapp.services import services

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.route("/system")
def system() -> ResponseReturnValue:
    """Name, AE title, DICOM port, version, and whether the DICOM service answers."""
    svc = services()
    status = svc.sidecar_status()
    body: dict[str, Any] = {
        "Name": "Dolmen", "Version": __version__, "DicomAet": svc.settings["dicom.aet"],
        "DicomPort": status.get("port", svc.settings["dicom.port"]), "HttpPort": svc.settings["http.port"],
        "DicomServer": {"Running": status["ok"], **({"Error": status["error"]} if not status["ok"] else {
            "Uptime": status.get("uptime"), "Associations": status.get("associations"),
            "InstancesReceived": status.get("instances_received")})},
    }
    return jsonify(body)


@bp.route("/statistics")
def statistics() -> ResponseReturnValue:
    """Counts and disk size, with Orthanc's field names."""
    return jsonify(stats.statistics())
