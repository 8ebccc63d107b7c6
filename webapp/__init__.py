"""Dolmen's web application: pages, JSON API and DICOMweb over the :mod:`dicomnode` engine.

``create_app(settings=None)`` builds the app; nothing is bound at import.
"""
from __future__ import annotations

import importlib
import logging
import os
import secrets
from typing import Any

from flask import Flask

from dicomnode import __version__
from dicomnode import config
from dicomnode import render
from dicomnode.archive import index
from dicomnode.archive.ingest import Ingestor
from dicomnode.archive.store import open_store
from dicomnode.control import ControlClient
from webapp import paths
from webapp.services import Services

LOGGER = logging.getLogger(__name__)

#: Blueprint modules, one per area (module name = blueprint name = template folder): the pages
#: under webapp/pages, the machine APIs under webapp/api.
BLUEPRINTS = ("pages.system", "api.api", "pages.browse", "pages.upload", "pages.qr", "pages.jobs",
              "pages.associations", "api.dicomweb", "pages.dicomweb_client", "pages.oe2", "pages.modify")

#: The main navigation; entries whose endpoint is not registered are left out.
NAV = (
    ("browse.studies", "Studies"), ("browse.patients", "Patients"), ("upload.upload", "Upload"),
    ("qr.query", "Query/Retrieve"), ("qr.modalities", "Modalities"), ("jobs.jobs", "Jobs"),
    ("associations.associations", "Associations"),
    ("dicomweb_client.servers", "DICOMweb"), ("modify.journal", "Exports"), ("system.home", "System"),
)

# No inline script or style anywhere: every script and stylesheet is a file under /static.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "object-src 'self'; frame-src 'self'; frame-ancestors 'self'; base-uri 'none'; form-action 'self'")


def _secret_key(storage: os.PathLike[str] | str) -> bytes:
    """A random key generated once into the data folder (never hard-coded)."""
    path = os.path.join(storage, "run", "secret_key")
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        with open(path, "rb") as f:
            key = f.read()
            if len(key) >= 32:
                return key
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def create_app(settings: config.Settings | None = None, *, supervisor: Any = None) -> Flask:
    """Build the Flask app for ``settings`` (default: ``$DOLMEN_CONFIG`` or the defaults).

    Parameters
    ----------
    supervisor : dicomnode.supervisor.Supervisor, optional
        Under ``dolmen serve``, so that pages can say when the sidecar was restarted.
    """
    settings = settings or config.load()
    app = Flask(__name__, template_folder=str(paths.TEMPLATES), static_folder=str(paths.STATIC))
    app.config["DOLMEN"] = settings
    app.config["SECRET_KEY"] = _secret_key(settings.storage_path)
    app.config["MAX_CONTENT_LENGTH"] = settings["http.max_upload_mb"] * 1024 * 1024
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["MAX_FORM_MEMORY_SIZE"] = 1024 * 1024
    app.config["MAX_FORM_PARTS"] = 20000

    store = open_store(settings)
    index.open_index(settings.database_url, synchronous_full=False,
                     busy_timeout=settings["storage.busy_timeout"])
    index.close_index()
    render.start_decoding()  # compressed frames decode in worker processes (dicomnode.render.decodepool)
    describe = supervisor.describe if supervisor else None
    app.extensions["dolmen"] = Services(
        settings=settings, store=store,
        ingestor=Ingestor(store, overwrite=settings["storage.overwrite"],
                          max_bytes=settings["dicom.max_object_mb"] * 1024 * 1024),
        control=ControlClient(settings.control_socket, describe), supervisor=supervisor)

    from dicomnode import peers
    from webapp.services import announce_peer_change

    if announce_peer_change not in peers.CHANGE_LISTENERS:
        peers.CHANGE_LISTENERS.append(announce_peer_change)

    from webapp import csrf
    from webapp import db
    from webapp import errors
    from webapp.pages import auth

    db.init_app(app)
    csrf.init_app(app)
    errors.init_app(app)
    auth.init_app(app)

    for name in BLUEPRINTS:
        try:
            module = importlib.import_module(f"webapp.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"webapp.{name}":
                continue  # an area not built (yet)
            raise
        app.register_blueprint(module.bp)

    @app.context_processor
    def _globals() -> dict[str, Any]:
        from webapp.pages.auth import current_user

        nav = [(e, label) for e, label in NAV if e in app.view_functions]
        return {"dolmen_version": __version__, "aet": settings["dicom.aet"], "nav_items": nav,
                "nav_endpoints": app.view_functions,
                "segment_of": {"patient": "patients", "study": "studies", "series": "series", "instance": "instances"},
                "current_user": current_user() if settings.users else None,
                "dicom_badge": app.extensions["dolmen"].dicom_badge}

    @app.before_request
    def _body_limits() -> None:
        from flask import request
        from werkzeug.exceptions import UnsupportedMediaType

        # Nothing here decodes a compressed request body: refuse one rather than take a gzip
        # stream (a bomb, perhaps) for the DICOM or form data it claims to carry.
        if request.path.rstrip("/") == "/instances" and request.method == "POST":
            return  # Orthanc's upload: takes raw DICOM, ZIP and gzip, with its own caps (webapp.api.rest)
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            raise UnsupportedMediaType(f"Content-Encoding {encoding[:32]!r} is not accepted: send the body "
                                       "uncompressed")
        # Bodies parsed in memory at once (URL-encoded forms, JSON) get the form field limit, not
        # max_upload_mb: werkzeug applies MAX_FORM_MEMORY_SIZE to multipart fields only, so a
        # 2 GiB URL-encoded POST to /login would otherwise be read into memory.
        if request.mimetype in ("application/x-www-form-urlencoded", "application/json") or (
                request.mimetype.startswith("text/")):
            request.max_content_length = app.config["MAX_FORM_MEMORY_SIZE"]

    from webapp.api import rest

    rest.init_app(app)  # after the login and cross-site checks, and the body limits

    # Static files are cached by browsers for a year: their URLs carry the file's modification
    # time (?v=...), so a new release's files get new URLs. Before, each page asked again for
    # the stylesheet and the scripts (four round trips before the series viewer's first image).
    app.config["SEND_FILE_MAX_AGE_DEFAULT"] = 365 * 24 * 3600
    static_versions: dict[str, str] = {}

    @app.url_defaults
    def _static_version(endpoint: str, values: dict[str, Any]) -> None:
        if endpoint != "static" or "filename" not in values or "v" in values:
            return
        name = str(values["filename"])
        version = static_versions.get(name)
        if version is None:
            try:
                version = str(int(os.stat(os.path.join(str(app.static_folder), name)).st_mtime))
            except OSError:
                version = __version__
            static_versions[name] = version
        values["v"] = version

    @app.after_request
    def _headers(response: Any) -> Any:
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
        return response

    return app
