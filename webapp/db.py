"""One index connection per request: opened lazily by peewee, closed at teardown."""
from __future__ import annotations

from flask import Flask

from dicomnode.archive import index


def init_app(app: Flask) -> None:
    """Close the request thread's connection when the request ends."""

    @app.teardown_appcontext
    def _close(_exc: BaseException | None) -> None:
        index.close_index()
