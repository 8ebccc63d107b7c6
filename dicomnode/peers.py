"""Remote DICOM nodes: those declared in ``[modalities]`` and those added in the modalities page.

The SCP uses this registry to decide what a calling AE may ask (access control); the SCU
uses it to find where to send, query and retrieve. Config entries win over page entries of
the same name and cannot be edited from the page.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import peewee

from dicomnode.archive.index import Modality
from dicomnode.archive.index import write_transaction
from dicomnode.config import OPERATIONS
from dicomnode.config import ModalityConfig
from dicomnode.config import Settings
from dicomnode.config import check_aet
from dicomnode.config import check_name
from dicomnode.errors import DolmenError
from dicomnode.errors import NotFound

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


# -- page-managed nodes ---------------------------------------------------------------------

def check_node(settings: Settings, fields: dict[str, object], original: str | None = None) -> dict[str, str]:
    """Problems with the fields of a page-managed node, by field name (empty when valid).

    ``fields`` holds ``name``, ``aet``, ``host``, ``port``, ``allow`` (a list of operations),
    ``description`` and ``fallback_get``; ``original`` is the name of the row being edited.
    """
    problems: dict[str, str] = {}
    name = str(fields.get("name", "")).strip()
    if check_name(name):
        problems["name"] = str(check_name(name))
    elif name != original and any(n.name == name for n in all_nodes(settings)):
        problems["name"] = f"a modality called {name!r} exists already"
    aet = str(fields.get("aet", ""))
    problem = check_aet(aet)
    if problem:
        problems["aet"] = problem
    else:
        clash = [n for n in nodes_with_aet(settings, aet) if n.name != original]
        if clash:
            problems["aet"] = (f"{aet.strip()!r} is already the AE title of {clash[0].name!r}; "
                               "each node needs its own (the DICOM server tells callers apart by it)")
    host = str(fields.get("host", "")).strip()
    if not host or any(c.isspace() for c in host) or len(host) > 255:
        problems["host"] = "a host name or an IP address"
    port = fields.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        problems["port"] = "a whole number between 1 and 65535"
    allow = fields.get("allow") or []
    if not isinstance(allow, (list, tuple)) or any(a not in OPERATIONS for a in allow):
        problems["allow"] = f"choose among {', '.join(OPERATIONS)}"
    return problems


def save_node(settings: Settings, fields: dict[str, object], original: str | None = None) -> Node:
    """Create (or, with ``original``, update) a page-managed node after :func:`check_node`.

    Raises
    ------
    DolmenError
        ``invalid`` with the first problem, or ``read_only`` for a node from the configuration.
    """
    if original is not None and settings.modality(original) is not None:
        raise DolmenError(f"{original!r} is declared in the configuration file; change it there",
                          code="read_only")
    problems = check_node(settings, fields, original)
    if problems:
        field, problem = next(iter(problems.items()))
        raise DolmenError(f"{field}: {problem}", code="invalid")
    values = {"name": str(fields["name"]).strip(), "aet": str(fields["aet"]).strip(),
              "host": str(fields["host"]).strip(), "port": int(fields["port"]),  # type: ignore[call-overload]
              "allow": ",".join(a for a in OPERATIONS if a in (fields.get("allow") or [])),  # type: ignore[operator]
              "description": str(fields.get("description", ""))[:255],
              "fallback_get": bool(fields.get("fallback_get"))}
    with write_transaction():
        if original is None:
            row = Modality.create(**values)
        else:
            found = Modality.get_or_none(Modality.name == original)
            if found is None:
                raise NotFound(f"No modality called {original!r} in the modalities page")
            row = found
            for key, value in values.items():
                setattr(row, key, value)
            row.save()
    return _from_row(row)


def delete_node(settings: Settings, name: str) -> None:
    """Remove a page-managed node.

    Raises
    ------
    DolmenError
        ``read_only`` for a node from the configuration; NotFound when there is none.
    """
    if settings.modality(name) is not None:
        raise DolmenError(f"{name!r} is declared in the configuration file; remove it there",
                          code="read_only")
    with write_transaction():
        count = Modality.delete().where(Modality.name == name).execute()
    if not count:
        raise NotFound(f"No modality called {name!r} in the modalities page")
