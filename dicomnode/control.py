"""The local control socket between the web process and the DICOM sidecar (protocol v1).

* An ``AF_UNIX`` stream socket at ``<storage>/run/control.sock`` (folder 0700, socket 0600).
* One UTF-8 JSON object per line, one request per connection:
  ``{"v": 1, "op": "echo", "args": {"modality": "pacs"}}``.
* Reply ``{"v": 1, "ok": true, "result": {...}}`` or
  ``{"v": 1, "ok": false, "error": {"code": "association_rejected", "message": "..."}}`` —
  ``code`` is stable snake_case for programs, ``message`` is shown to the user as is.

JSON only: never pickle (``multiprocessing.connection`` unpickles what it receives).
Debug by hand::

    printf '{"v":1,"op":"status"}\\n' | socat - UNIX-CONNECT:dolmen-data/run/control.sock
"""
from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicomnode.errors import DolmenError
from dicomnode.errors import SidecarUnavailable

LOGGER = logging.getLogger(__name__)

VERSION = 1
MAX_LINE = 1 << 20  # one request or reply line, in bytes
AF_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL

#: Client timeouts per operation, in seconds; long work is a job, so these stay short.
TIMEOUTS: dict[str, float] = {"status": 5.0, "echo": 45.0, "find": 120.0}
DEFAULT_TIMEOUT = 30.0

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def check_socket_path(path: str | os.PathLike[str]) -> None:
    """Raise :class:`DolmenError` when ``path`` is too long for an AF_UNIX socket."""
    length = len(os.fsencode(os.path.abspath(path)))
    if length > AF_UNIX_PATH_MAX:
        raise DolmenError(
            f"The control socket path {os.path.abspath(path)} is {length} bytes long; Unix sockets "
            f"allow {AF_UNIX_PATH_MAX}. Choose a shorter [storage] path.", code="config_error")


def _read_line(sock: socket.socket, timeout: float | None) -> bytes:
    sock.settimeout(timeout)
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if b"\n" in chunk:
            break
        if total > MAX_LINE:
            raise ValueError("line too long")
    data = b"".join(chunks)
    line, _, _ = data.partition(b"\n")
    if len(line) > MAX_LINE:
        raise ValueError("line too long")
    return line


class _RequestHandler(socketserver.BaseRequestHandler):
    server: ControlServer

    def handle(self) -> None:
        try:
            line = _read_line(self.request, 10.0)
            request = json.loads(line.decode("utf-8"))
            if not isinstance(request, dict):
                raise ValueError("request is not a JSON object")
            reply = self.server.dispatch(request)
        except (ValueError, UnicodeDecodeError) as exc:
            reply = _error("bad_request", f"Malformed control request: {exc}")
        except OSError:
            return
        try:
            self.request.sendall(json.dumps(reply, default=str).encode("utf-8") + b"\n")
        except OSError:
            pass


def _error(code: str, message: str, http_status: int | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if http_status is not None:
        error["status"] = http_status  # the HTTP status the web process answers it with
    return {"v": VERSION, "ok": False, "error": error}


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves the control protocol; register operations with :meth:`register`."""

    daemon_threads = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        check_socket_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise DolmenError(f"{path} exists and is not a socket; remove it", code="config_error")
            path.unlink()
        self.path = path
        self.handlers: dict[str, Handler] = {}
        old = os.umask(0o177)
        try:
            super().__init__(str(path), _RequestHandler)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self._thread: threading.Thread | None = None

    def register(self, op: str, handler: Handler) -> None:
        """Serve ``op`` with ``handler(args) -> result``; raise DolmenError to reply an error."""
        self.handlers[op] = handler

    def dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one decoded request."""
        if request.get("v") != VERSION:
            return _error("bad_version", f"Unsupported control protocol version {request.get('v')!r}; this sidecar speaks v{VERSION}")
        op = request.get("op")
        handler = self.handlers.get(op) if isinstance(op, str) else None
        if handler is None:
            return _error("unknown_op", f"Unknown control operation {op!r}")
        args = request.get("args") or {}
        if not isinstance(args, dict):
            return _error("bad_request", "args must be a JSON object")
        try:
            return {"v": VERSION, "ok": True, "result": handler(args)}
        except DolmenError as exc:
            return _error(exc.code, exc.message, exc.http_status)
        except Exception as exc:
            LOGGER.exception("Control operation %s failed", op)
            return _error("internal_error", f"The sidecar failed on {op}: {type(exc).__name__}: {exc}")

    def start(self) -> None:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and remove the socket file."""
        self.shutdown()
        self.server_close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class ControlClient:
    """Asks the sidecar over its control socket.

    Parameters
    ----------
    path : path
        The socket path.
    describe_down : callable, optional
        Returns extra text for the user when the sidecar does not answer (the supervisor's
        last exit, for example).
    """

    def __init__(self, path: str | os.PathLike[str], describe_down: Callable[[], str] | None = None) -> None:
        self.path = str(path)
        self.describe_down = describe_down

    def call(self, op: str, timeout: float | None = None, **args: Any) -> dict[str, Any]:
        """Send one request and return its ``result``.

        Raises
        ------
        SidecarUnavailable
            The socket is missing, refused or silent past the timeout.
        DolmenError
            The sidecar answered an error; ``code`` and ``message`` are the sidecar's.
        """
        timeout = timeout if timeout is not None else TIMEOUTS.get(op, DEFAULT_TIMEOUT)
        request = json.dumps({"v": VERSION, "op": op, "args": args}).encode("utf-8") + b"\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(min(timeout, 5.0))
                sock.connect(self.path)
                sock.sendall(request)
                line = _read_line(sock, timeout)
        except (TimeoutError, FileNotFoundError, ConnectionRefusedError, OSError, ValueError) as exc:
            why = {FileNotFoundError: "it is not running (no control socket)",
                   ConnectionRefusedError: "it refused the connection",
                   socket.timeout: f"it did not answer within {timeout:g} s"}.get(type(exc), str(exc))
            extra = self.describe_down() if self.describe_down else ""
            raise SidecarUnavailable(
                f"The DICOM service is unavailable: {why}." + (f" {extra}" if extra else "")) from None
        if not line:
            raise SidecarUnavailable("The DICOM service closed the control connection without answering.")
        reply = json.loads(line.decode("utf-8"))
        if reply.get("ok"):
            result = reply.get("result") or {}
            return result if isinstance(result, dict) else {"value": result}
        error = reply.get("error") or {}
        failure = DolmenError(str(error.get("message", "The sidecar reported an error")),
                              code=str(error.get("code", "error")))
        status = error.get("status")
        if isinstance(status, int) and 400 <= status <= 599:
            failure.http_status = status  # a RemoteError stays a 502 on this side of the socket
        raise failure
