"""One index connection per web thread: opened lazily by peewee, kept between requests.

Opening and closing a SQLite connection costs more than a small request (closing the last
connection of a WAL database checkpoints it), so a waitress thread keeps its connection; a
request that ends inside a transaction (an error half-way) has it rolled back and closed.
Threads that end have their connections closed by :class:`dicomnode.archive.index._ReapsDeadThreads`.
"""
from __future__ import annotations

import contextlib

from flask import Flask

from dicomnode.archive import index


def init_app(app: Flask) -> None:
    """Leave the request thread's connection clean when the request ends."""

    @app.teardown_appcontext
    def _release(_exc: BaseException | None) -> None:
        database = index.db.obj
        if database is None or database.is_closed():
            return
        if database.in_transaction() or _exc is not None:
            with contextlib.suppress(Exception):
                database.rollback()
            index.close_index()
