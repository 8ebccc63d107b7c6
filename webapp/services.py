"""The engine objects a request needs, built once per app: settings, store, ingest, sidecar client."""
from __future__ import annotations

import time
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from flask import current_app

from dicomnode.archive.ingest import Ingestor
from dicomnode.archive.store import Store
from dicomnode.config import Settings
from dicomnode.control import ControlClient


@dataclass
class Services:
    settings: Settings
    store: Store
    ingestor: Ingestor
    control: ControlClient
    supervisor: Any = None  # dicomnode.supervisor.Supervisor under `dolmen serve`
    _badge: tuple[float, tuple[bool, str]] | None = field(default=None, init=False, repr=False)

    #: How long the header badge's probe of the sidecar is reused, in seconds.
    BADGE_TTL = 2.0
    #: How long after a restart the badge keeps saying so, in seconds.
    RESTART_NOTICE = 3600.0

    def sidecar_status(self) -> dict[str, Any]:
        """The sidecar's status, or ``{"ok": False, "error": message}`` when it is down."""
        from dicomnode.errors import DolmenError

        try:
            status = self.supervisor.status() if self.supervisor else self.control.call("status")
            status["ok"] = True
            return status
        except DolmenError as exc:
            result: dict[str, Any] = {"ok": False, "error": exc.message}
            if self.supervisor:
                result["supervisor"] = vars(self.supervisor.state)
            return result


    def dicom_badge(self) -> dict[str, str]:
        """The DICOM service badge of every page's header: ``state``, ``label`` and ``title``.

        ``state`` is up, restarted, restarting or down.

        Under ``dolmen serve`` it reads the supervisor's state, and asks the sidecar for
        ``status`` only after a restart (is the new one answering yet?); without a supervisor
        it asks every time. A probe's answer is reused for :attr:`BADGE_TTL` seconds, so a page
        costs no control-socket round trip.
        """
        sup = self.supervisor
        if sup is None:
            up, why = self._probe()
            if up:
                return {"state": "up", "label": "DICOM up", "title": "The DICOM service is running."}
            return {"state": "down", "label": "DICOM down", "title": why}
        state = sup.state
        history = sup.describe()
        if state.last_exit_at is None or time.time() - state.last_exit_at > self.RESTART_NOTICE:
            if state.running:
                return {"state": "up", "label": "DICOM up", "title": "The DICOM service is running."}
        if state.running and self._probe()[0]:
            return {"state": "restarted", "label": "DICOM restarted", "title": history}
        return {"state": "restarting", "label": "DICOM restarting",
                "title": f"The DICOM service stopped and is being restarted. {history}".strip()}

    def _probe(self) -> tuple[bool, str]:
        """Does the sidecar answer ``status``? Cached for :attr:`BADGE_TTL` seconds."""
        from dicomnode.errors import DolmenError

        now = time.monotonic()
        cached = self._badge
        if cached is not None and now - cached[0] < self.BADGE_TTL:
            return cached[1]
        try:
            self.control.call("status", timeout=0.5)
            answer = (True, "")
        except DolmenError as exc:
            answer = (False, exc.message)
        self._badge = (now, answer)
        return answer


def services() -> Services:
    """This app's :class:`Services`."""
    return current_app.extensions["dolmen"]  # type: ignore[no-any-return]


def settings() -> Settings:
    """This app's frozen settings."""
    return current_app.config["DOLMEN"]  # type: ignore[no-any-return]


def announce_peer_change(kind: str) -> None:
    """Tell this node's sidecar that a modality was saved or deleted (it keeps the node list
    its access decisions use for a couple of seconds: :data:`dicomnode.peers.NODE_CACHE_SECONDS`)."""
    from flask import has_app_context

    from dicomnode.errors import DolmenError

    if kind != "modality" or not has_app_context():
        return
    services = current_app.extensions.get("dolmen")
    if services is None:
        return
    try:
        services.control.call("peers_changed", timeout=2.0)
    except DolmenError:
        pass  # the sidecar is down: it reads the table afresh when it starts
