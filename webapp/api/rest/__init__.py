"""Orthanc's REST API at the HTTP root, beside the pages (``/patients``, ``/tools/find``, ...).

Orthanc's paths and the pages share addresses, so the REST routes live in a map of their
own (:data:`MAP`) and a ``before_request`` hook chooses, per request:

* a browser navigation or htmx (:func:`webapp.errors.is_browser`) gets the page when there is
  one at that address, else the REST answer (a browser can open ``/statistics``);
* anything else (curl, requests, httpx, axios, pyorthanc) gets the REST answer when the map
  has the address, else whatever the app has there (``/api/...``, ``/dicom-web/...``).

The answer varies with ``Accept``, ``Sec-Fetch-Dest``, ``HX-Request`` and ``Authorization``,
said in ``Vary``. Errors in a REST answer take Orthanc's body (:func:`webapp.errors.orthanc_error`).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flask import Flask
from flask import Response
from flask import g
from flask import request
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.exceptions import NotFound
from werkzeug.routing import Map
from werkzeug.routing import Rule

from dicomnode.archive.orthanc import BadRequest
from dicomnode.errors import DolmenError
from webapp.errors import is_browser

MAP = Map(strict_slashes=False, merge_slashes=False)
VIEWS: dict[str, Callable[..., Any]] = {}
VARY = "Accept, Sec-Fetch-Dest, HX-Request, Authorization"


class BadJson(DolmenError):
    """Orthanc's "Cannot parse a JSON document" (28)."""

    code = "bad_json"
    http_status = 400
    orthanc_status = 28


def route(rule: str, methods: tuple[str, ...] = ("GET",)) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a REST view for ``rule``."""

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        endpoint = f"{view.__module__.rsplit('.', 1)[-1]}.{view.__name__}"
        MAP.add(Rule(rule, endpoint=endpoint, methods=list(methods)))
        VIEWS[endpoint] = view
        return view

    return decorator


def answer(body: Any, status: int = 200) -> Response:
    """JSON with Orthanc's keys in Orthanc's (sorted) order, UTF-8; compact, which json's C encoder
    writes five times faster than an indented one (pipe it to ``jq`` to read it)."""
    return Response(json.dumps(body, ensure_ascii=False, sort_keys=True) + "\n", status,
                    mimetype="application/json")


def json_body(*, default: Any = None) -> Any:
    """The request body as JSON; an empty body gives ``default``."""
    data = request.get_data(cache=True)
    if not data.strip():
        if default is not None:
            return default
        raise BadRequest("The body must contain a JSON document")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadJson(f"The body is not valid JSON: {exc}") from None


def flag(name: str) -> bool:
    """An Orthanc query-string flag: present (``?expand``), or ``true``/``1``; ``false``/``0`` is off."""
    if name not in request.args:
        return False
    return request.args.get(name, "").lower() not in ("false", "0", "no")


def int_arg(name: str, default: int = 0) -> int:
    value = request.args.get(name)
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {value[:40]!r}") from None
    if number < 0:
        from dicomnode.archive.orthanc import OutOfRange

        raise OutOfRange(f"{name} cannot be negative ({number})")
    return number


def init_app(app: Flask) -> None:
    """Register the dispatch hook (after login and the cross-site check) and the views."""
    from webapp.api.rest import modify  # noqa: F401 - registers its routes
    from webapp.api.rest import network  # noqa: F401
    from webapp.api.rest import resources  # noqa: F401
    from webapp.api.rest import tools  # noqa: F401

    @app.before_request
    def _dispatch() -> Any:
        adapter = MAP.bind_to_environ(request.environ)
        try:
            endpoint, args = adapter.match()
        except NotFound:
            return None
        except MethodNotAllowed as exc:
            if request.url_rule is not None and is_browser():
                return None  # the page at this address takes this method
            if request.url_rule is not None and request.method in request.url_rule.methods:  # type: ignore[operator]
                return None
            g.rest = True
            return Response("", 405, {"Allow": ", ".join(sorted(exc.valid_methods or []))})
        if request.url_rule is not None and is_browser():
            return None  # the page
        g.rest = True
        response = VIEWS[endpoint](**args)
        return response

    @app.after_request
    def _vary(response: Response) -> Response:
        if g.get("rest") or MAP.bind_to_environ(request.environ).test():
            response.vary.update(v.strip() for v in VARY.split(","))
        return response


__all__ = ["MAP", "answer", "flag", "init_app", "int_arg", "json_body", "route"]
