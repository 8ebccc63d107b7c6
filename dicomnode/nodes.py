"""Remote DICOM nodes: those declared in ``[modalities]`` and those added in the modalities page.

The SCP uses this registry to decide what a calling AE may ask (access control); the SCU
uses it to find where to send, query and retrieve. Config entries win over page entries of
the same name and cannot be edited from the page.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import peewee

from dicomnode.config import OPERATIONS
from dicomnode.config import ModalityConfig
from dicomnode.config import Settings
from dicomnode.errors import NotFound
from dicomnode.index import Modality

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Node:
    """A remote node, whichever its origin (``config`` or ``page``)."""

    name: str
    aet: str
    host: str
    port: int
    allow: tuple[str, ...]
    description: str = ""
    origin: str = "config"
    fallback_get: bool = False


def _from_config(m: ModalityConfig) -> Node:
    return Node(m.name, m.aet, m.host, m.port, tuple(m.allow), m.description, "config", m.fallback_get)


def _from_row(m: Modality) -> Node:
    allow = tuple(a for a in str(m.allow).split(",") if a in OPERATIONS)
    return Node(m.name, m.aet, m.host, m.port, allow, m.description, "page", bool(m.fallback_get))


def all_nodes(settings: Settings) -> list[Node]:
    """Every known node, config first, then page-managed ones, by name."""
    nodes = {m.name: _from_config(m) for m in settings.modalities}
    try:
        for row in Modality.select().order_by(Modality.name):
            nodes.setdefault(row.name, _from_row(row))
    except peewee.DatabaseError as exc:  # the index is down: config nodes still work
        LOGGER.warning("Cannot read page-managed modalities: %s", exc)
    return sorted(nodes.values(), key=lambda n: (n.origin != "config", n.name.lower()))


def get_node(settings: Settings, name: str) -> Node:
    """The node called ``name``.

    Raises
    ------
    NotFound
        When no node has that name.
    """
    for node in all_nodes(settings):
        if node.name == name:
            return node
    raise NotFound(f"No modality called {name!r}: declare it in [modalities] or in the modalities page")


def nodes_with_aet(settings: Settings, aet: str) -> list[Node]:
    """Nodes whose AE title is ``aet`` (spaces around it are not significant)."""
    aet = aet.strip()
    return [n for n in all_nodes(settings) if n.aet.strip() == aet]


def access(settings: Settings, calling_aet: str, peer_ip: str, operation: str) -> str | None:
    """Why ``calling_aet`` at ``peer_ip`` may not ask ``operation``, or ``None`` when it may.

    A declared node may ask what its ``allow`` list says. An unknown AE may ask what
    ``[dicom] unknown_aet`` says (echo and store by default, as in Orthanc). With
    ``[dicom] check_calling_host``, a declared AE must call from its declared host.
    """
    matches = nodes_with_aet(settings, calling_aet)
    if not matches:
        if operation in settings["dicom.unknown_aet"]:
            return None
        return (f"unknown AE title {calling_aet!r} may not {operation} "
                "(declare it as a modality, or allow it in [dicom] unknown_aet)")
    if settings["dicom.check_calling_host"]:
        import socket

        def addresses(host: str) -> set[str]:
            try:
                return {info[4][0] for info in socket.getaddrinfo(host, None)}
            except OSError:
                return {host}

        matches = [n for n in matches if peer_ip in addresses(n.host)]
        if not matches:
            return f"AE title {calling_aet!r} called from {peer_ip}, not from its declared host"
    if any(operation in n.allow for n in matches):
        return None
    return f"modality {matches[0].name!r} ({calling_aet}) is not allowed to {operation}"
