"""Addresses built from the current request, shared by the list pages."""
from __future__ import annotations

from typing import Any

from flask import request


def args_with(**changes: Any) -> dict[str, Any]:
    """The current query string with some values changed (None removes one); empty ones dropped.

    For ``url_for(request.endpoint, **args_with(page=2))`` in pagers and sort headers.
    """
    args: dict[str, Any] = dict(request.view_args or {})
    args.update((k, v) for k, v in request.args.items() if v != "")
    for key, value in changes.items():
        if value is None:
            args.pop(key, None)
        else:
            args[key] = value
    return args
