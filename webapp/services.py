"""The engine objects a request needs, built once per app: settings, store, ingest, sidecar client."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app

from dicomnode.config import Settings
from dicomnode.control import ControlClient
from dicomnode.ingest import Ingestor
from dicomnode.store import Store


@dataclass
class Services:
    settings: Settings
    store: Store
    ingestor: Ingestor
    control: ControlClient
    supervisor: Any = None  # dicomnode.supervisor.Supervisor under `dolmen serve`

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


def services() -> Services:
    """This app's :class:`Services`."""
    return current_app.extensions["dolmen"]  # type: ignore[no-any-return]


def settings() -> Settings:
    """This app's frozen settings."""
    return current_app.config["DOLMEN"]  # type: ignore[no-any-return]
