"""Domain exceptions, each carrying a message written for the user.

The web layer renders ``str(exc)`` as is, so messages say what went wrong and, where
possible, what to do about it.
"""
from __future__ import annotations


class DolmenError(Exception):
    """Base class of every error Dolmen explains to its user.

    Parameters
    ----------
    message : str
        Shown to the user verbatim.
    code : str, optional
        Stable snake_case identifier for programs (control protocol, JSON API).
    """

    code = "error"
    http_status = 400

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(DolmenError):
    """The configuration file is invalid; the message names the key and the problem."""

    code = "config_error"


class NotFound(DolmenError):
    """A resource asked for by identifier does not exist."""

    code = "not_found"
    http_status = 404


class RejectedInstance(DolmenError):
    """An object offered for storage was refused (not DICOM, truncated, missing UIDs...)."""

    code = "rejected"


class StorageFull(DolmenError):
    """The storage volume has less free space than the configured minimum."""

    code = "storage_full"
    http_status = 507


class RenderError(DolmenError):
    """An instance cannot be rendered as an image; the message says why."""

    code = "render_error"
    http_status = 415


class SidecarUnavailable(DolmenError):
    """The DICOM sidecar process did not answer on its control socket."""

    code = "sidecar_unavailable"
    http_status = 503


class RemoteError(DolmenError):
    """A remote DICOM node refused, failed or could not be reached."""

    code = "remote_error"
    http_status = 502


def first_line(exc: BaseException) -> str:
    """A one-line summary of an exception (a codec's or a library's), for a user-facing message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {lines[-1]}"
    return lines[0]
