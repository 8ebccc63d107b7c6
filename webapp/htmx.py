"""One way to answer htmx: the page includes the partial; an htmx request gets the partial alone."""
from __future__ import annotations

from typing import Any

from flask import make_response
from flask import render_template
from flask import request
from flask.typing import ResponseReturnValue


def is_htmx() -> bool:
    """True for an htmx request that is not a history restore."""
    return request.headers.get("HX-Request") == "true" and request.headers.get("HX-History-Restore-Request") != "true"


def render(page: str, partial: str, http_status: int = 200, **context: Any) -> ResponseReturnValue:
    """Render ``page`` (which includes ``partial``), or ``partial`` alone for htmx."""
    response = make_response(render_template(partial if is_htmx() else page, **context), http_status)
    response.headers.add("Vary", "HX-Request")
    return response
