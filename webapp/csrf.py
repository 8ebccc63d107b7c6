"""CSRF protection by origin check: every state change is a POST from our own pages.

A browser sends ``Sec-Fetch-Site`` (and ``Origin``) with every unsafe request; one from
another site is refused. Programs without a browser (curl, scripts) send neither and pass:
they cannot be tricked by a page into acting.
"""
from __future__ import annotations

from urllib.parse import urlparse

from flask import Flask
from flask import request

from dicomnode.errors import DolmenError

SAFE = {"GET", "HEAD", "OPTIONS"}


class CrossSiteRequest(DolmenError):
    code = "csrf"
    http_status = 403


def init_app(app: Flask) -> None:
    """Install the check as a ``before_request`` hook."""

    @app.before_request
    def _check_origin() -> None:
        if request.method in SAFE:
            return
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            raise CrossSiteRequest(f"Refused a {request.method} from another site ({site}): "
                                   "changes can only be made from Dolmen's own pages")
        origin = request.headers.get("Origin")
        # "null" is what a sandboxed frame or a data: page on another site sends; our own
        # pages always send their origin.
        if origin:
            if origin == "null" or urlparse(origin).netloc != request.host:
                raise CrossSiteRequest(f"Refused a {request.method} from origin {origin}: "
                                       "changes can only be made from Dolmen's own pages")
