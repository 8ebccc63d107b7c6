"""Login when users are configured in ``[http.users]`` (as Orthanc's RegisteredUsers).

Browsers log in through a form and keep a session cookie; API and DICOMweb clients send HTTP
Basic credentials with each request. Without users, Dolmen only listens on the loopback
address (checked when the configuration is loaded), and no login is asked.
"""
from __future__ import annotations

from urllib.parse import urlparse

from flask import Blueprint
from flask import Flask
from flask import Response
from flask import redirect
from flask import render_template
from flask import request
from flask import session
from flask import url_for
from flask.typing import ResponseReturnValue
from werkzeug.security import check_password_hash

from webapp.errors import wants_json
from webapp.services import settings

bp = Blueprint("auth", __name__)

OPEN_ENDPOINTS = {"auth.login", "auth.logout", "static"}


def check_user(user: str, password: str) -> bool:
    """True when ``user`` is configured and ``password`` matches its hash."""
    hashed = settings().users.get(user)
    if hashed is None:
        # Spend the same time as a real check, so user names cannot be probed by timing.
        check_password_hash("scrypt:32768:8:1$x$" + "0" * 128, password)
        return False
    return check_password_hash(hashed, password)


def current_user() -> str | None:
    """The logged-in user, from the session or HTTP Basic credentials."""
    user = session.get("user")
    if isinstance(user, str) and user in settings().users:
        return user
    auth = request.authorization
    if auth and auth.type == "basic" and auth.username and check_user(auth.username, auth.password or ""):
        return auth.username
    return None


def init_app(app: Flask) -> None:
    """Require a user on every route but the login page and static files, when users exist."""
    app.register_blueprint(bp)

    @app.before_request
    def _require_login() -> ResponseReturnValue | None:
        if not settings().users or request.endpoint in OPEN_ENDPOINTS:
            return None
        if current_user():
            return None
        # A program gets the challenge, never the login page: clients such as httplib2 send
        # their credentials only after a 401 with WWW-Authenticate.
        if wants_json() or request.authorization or request.headers.get("HX-Request"):
            return Response('{"error": {"status": 401, "code": "unauthorized", "message": '
                            '"Log in: send HTTP Basic credentials of a user of [http.users]"}}',
                            401, {"WWW-Authenticate": 'Basic realm="Dolmen"',
                                  "Content-Type": "application/json"})
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def _safe_next(target: str | None) -> str:
    if not target:
        return url_for("system.home")
    parsed = urlparse(target)
    if parsed.scheme or parsed.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("system.home")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    """The login form."""
    error = None
    if request.method == "POST":
        user = request.form.get("user", "")
        if check_user(user, request.form.get("password", "")):
            session.clear()
            session["user"] = user
            return redirect(_safe_next(request.args.get("next")))
        error = "Unknown user or wrong password."
    return render_template("auth/login.html", error=error, users=bool(settings().users)), (401 if error else 200)


@bp.route("/logout", methods=["POST"])
def logout() -> ResponseReturnValue:
    """End the session."""
    session.clear()
    return redirect(url_for("auth.login"))


__all__ = ["bp", "check_user", "current_user", "init_app"]
