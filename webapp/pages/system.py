"""The home page: is the DICOM server up, what does the archive hold."""
from __future__ import annotations

import time

from flask import Blueprint
from flask import redirect
from flask import url_for
from flask.typing import ResponseReturnValue

from dicomnode.archive import stats
from webapp.htmx import render
from webapp.services import services

bp = Blueprint("system", __name__)


@bp.route("/")
def root() -> ResponseReturnValue:
    """The landing page: the study list."""
    return redirect(url_for("browse.studies"))


@bp.route("/system")
def home() -> ResponseReturnValue:
    """The DICOM server's status, the archive's figures and how to connect a modality."""
    svc = services()
    return render("system/home.html", "system/_status.html", status=svc.sidecar_status(),
                  statistics=stats.statistics(), settings=svc.settings, now=time.time())
