"""The peers Dolmen talks to: DICOM nodes (``[modalities]``) and DICOMweb servers (``[dicomweb.servers]``).

Both come from one kind of :class:`Registry`: the entries of the configuration file first
(read-only, they win over a page entry of the same name), then those added in the modalities
or DICOMweb page (rows of the index). The SCP uses the nodes to decide what a calling AE may
ask (access control); the SCU and the DICOMweb client use them to find where to send, query
and retrieve.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from typing import Generic
from typing import TypeVar

import peewee

from dicomnode.archive.index import DicomwebServer
from dicomnode.archive.index import Modality
from dicomnode.archive.index import write_transaction
from dicomnode.config import OPERATIONS
from dicomnode.config import DicomwebServerConfig
from dicomnode.config import ModalityConfig
from dicomnode.config import Settings
from dicomnode.config import check_aet
from dicomnode.config import check_name
from dicomnode.errors import DolmenError
from dicomnode.errors import NotFound

LOGGER = logging.getLogger(__name__)

P = TypeVar("P")


@dataclass(frozen=True)
class Registry(Generic[P]):
    """Peers of one kind: the configuration's, then the page's (index rows), by name.

    ``configured`` lists the configuration's entries, ``from_config`` and ``from_row`` make a
    peer of one, ``values`` turns checked form fields into row values and ``check`` finds
    the problems of form fields. A value named in ``keep_if_empty`` (a password) is left as
    stored when an edit leaves it empty.
    """

    kind: str  # "modality"
    plural: str  # "modalities"
    section: str  # "[modalities]"
    page: str  # "modalities page"
    model: type[peewee.Model]
    configured: Callable[[Settings], Iterable[Any]]
    from_config: Callable[[Any], P]
    from_row: Callable[[Any], P]
    values: Callable[[Mapping[str, Any]], dict[str, Any]]
    check: Callable[[Settings, Mapping[str, Any], str | None], dict[str, str]]
    keep_if_empty: tuple[str, ...] = ()

    def all(self, settings: Settings) -> list[P]:
        """Every known peer, the configuration's first, then the page's, by name."""
        return self._read(settings)[0]

    def _read(self, settings: Settings) -> tuple[list[P], bool]:
        """:meth:`all`, and whether the page's peers could be read."""
        peers: dict[str, P] = {c.name: self.from_config(c) for c in self.configured(settings)}
        complete = True
        try:
            model: Any = self.model
            for row in model.select().order_by(model.name):
                peers.setdefault(str(row.name), self.from_row(row))
        except peewee.DatabaseError as exc:  # the index is down: the configuration's still work
            LOGGER.warning("Cannot read page-managed %s: %s", self.plural, exc)
            complete = False
        ordered = sorted(peers.values(), key=lambda p: (p.origin != "config", p.name.lower()))  # type: ignore[attr-defined]
        return ordered, complete

    def _changed(self) -> None:
        forget_nodes()
        for listener in list(CHANGE_LISTENERS):
            try:
                listener(self.kind)
            except Exception:  # noqa: BLE001 - a listener's failure must not undo a saved change
                LOGGER.exception("A listener for changed %s failed", self.plural)

    def get(self, settings: Settings, name: str) -> P:
        """The peer called ``name``.

        Raises
        ------
        NotFound
            When no peer has that name.
        """
        for peer in self.all(settings):
            if peer.name == name:  # type: ignore[attr-defined]
                return peer
        raise NotFound(f"No {self.kind} called {name!r}: declare it in {self.section} or in the {self.page}")

    def name_problem(self, settings: Settings, name: str, original: str | None) -> str | None:
        """What is wrong with ``name`` for a new peer (or for ``original`` renamed), if anything."""
        problem = check_name(name)
        if problem:
            return problem
        if name != original and any(p.name == name for p in self.all(settings)):  # type: ignore[attr-defined]
            return f"a {self.kind} called {name!r} exists already"
        return None

    def is_configured(self, settings: Settings, name: str) -> bool:
        return any(c.name == name for c in self.configured(settings))

    def save(self, settings: Settings, fields: Mapping[str, Any], original: str | None = None) -> P:
        """Create (or, with ``original``, update) a page-managed peer after :attr:`check`.

        Raises
        ------
        DolmenError
            ``invalid`` with the first problem, ``read_only`` for a peer of the configuration.
        NotFound
            When ``original`` is not a page-managed peer.
        """
        if original is not None and self.is_configured(settings, original):
            raise DolmenError(f"{original!r} is declared in the configuration file; change it there",
                              code="read_only")
        problems = self.check(settings, fields, original)
        if problems:
            name, problem = next(iter(problems.items()))
            raise DolmenError(f"{name}: {problem}", code="invalid")
        values = self.values(fields)
        model: Any = self.model
        with write_transaction():
            if original is None:
                row = model.create(**values)
            else:
                row = model.get_or_none(model.name == original)
                if row is None:
                    raise NotFound(f"No {self.kind} called {original!r} in the {self.page}")
                for key, value in values.items():
                    if value or key not in self.keep_if_empty:
                        setattr(row, key, value)
                row.save()
        self._changed()
        return self.from_row(row)

    def delete(self, settings: Settings, name: str) -> None:
        """Remove a page-managed peer.

        Raises
        ------
        DolmenError
            ``read_only`` for a peer of the configuration.
        NotFound
            When there is no page-managed peer of that name.
        """
        if self.is_configured(settings, name):
            raise DolmenError(f"{name!r} is declared in the configuration file; remove it there",
                              code="read_only")
        model: Any = self.model
        with write_transaction():
            count = model.delete().where(model.name == name).execute()
        if not count:
            raise NotFound(f"No {self.kind} called {name!r} in the {self.page}")
        self._changed()


# -- DICOM nodes ---------------------------------------------------------------------------------


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
    tls: bool = False


def _from_config(m: ModalityConfig) -> Node:
    return Node(m.name, m.aet, m.host, m.port, tuple(m.allow), m.description, "config", m.fallback_get, m.tls)


def _from_row(m: Modality) -> Node:
    allow = tuple(a for a in str(m.allow).split(",") if a in OPERATIONS)
    return Node(m.name, m.aet, m.host, m.port, allow, m.description, "page", bool(m.fallback_get), bool(m.tls))


def plain_port_refusal(settings: Settings, calling_aet: str, over_tls: bool) -> str | None:
    """Why ``calling_aet`` may not associate on this port: a node declared ``tls = true`` calling
    the plain port. ``None`` when it may."""
    if over_tls:
        return None
    secure = [n for n in nodes_with_aet(settings, calling_aet, cached=True) if n.tls]
    if not secure:
        return None
    where = f"port {settings['dicom.tls.port']}" if settings["dicom.tls.port"] else "the TLS port"
    return (f"modality {secure[0].name!r} ({calling_aet}) must connect over TLS ({where}), "
            "not the plain DICOM port")


#: How long a process keeps the node list its DICOM server decides access with. A change made
#: in this process, or announced to the sidecar by the web process (control op
#: ``peers_changed``), takes effect at once; one made on another node sharing the index, within
#: this many seconds.
NODE_CACHE_SECONDS = 2.0
#: Called with the kind ("modality", ...) after a page-managed peer was saved or deleted.
CHANGE_LISTENERS: list[Callable[[str], None]] = []
_node_cache: dict[int, tuple[float, Settings, list[Node]]] = {}
_node_cache_lock = threading.Lock()


def forget_nodes() -> None:
    """Drop the node list kept for access decisions (a modality was added, changed or removed)."""
    with _node_cache_lock:
        _node_cache.clear()


def _known_nodes(settings: Settings) -> list[Node]:
    """:meth:`Registry.all` of the modalities, kept :data:`NODE_CACHE_SECONDS`: every
    association asks it once or twice (its calling AE title on the plain port, then each
    operation's access), and reading the table took ~0.25 ms, the index connection ~0.4 ms."""
    now = time.monotonic()
    entry = _node_cache.get(id(settings))
    if entry is not None and entry[1] is settings and entry[0] > now:
        return entry[2]
    nodes, complete = MODALITIES._read(settings)
    if complete:  # a list read while the index was down is not kept
        with _node_cache_lock:
            _node_cache[id(settings)] = (now + NODE_CACHE_SECONDS, settings, nodes)
    return nodes


def nodes_with_aet(settings: Settings, aet: str, *, cached: bool = False) -> list[Node]:
    """Nodes whose AE title is ``aet`` (spaces around it are not significant); with ``cached``,
    from the list kept for access decisions (:func:`_known_nodes`)."""
    aet = aet.strip()
    nodes = _known_nodes(settings) if cached else MODALITIES.all(settings)
    return [n for n in nodes if n.aet.strip() == aet]


def access(settings: Settings, calling_aet: str, peer_ip: str, operation: str) -> str | None:
    """Why ``calling_aet`` at ``peer_ip`` may not ask ``operation``, or ``None`` when it may.

    A declared node may ask what its ``allow`` list says. An unknown AE may ask what
    ``[dicom] unknown_aet`` says (echo and store by default, as in Orthanc). With
    ``[dicom] check_calling_host``, a declared AE must call from its declared host.
    """
    matches = nodes_with_aet(settings, calling_aet, cached=True)
    if not matches:
        if operation in settings["dicom.unknown_aet"]:
            return None
        return (f"unknown AE title {calling_aet!r} may not {operation} "
                "(declare it as a modality, or allow it in [dicom] unknown_aet)")
    if settings["dicom.check_calling_host"]:
        import socket

        def addresses(host: str) -> set[str]:
            try:
                return {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
            except OSError:
                return {host}

        matches = [n for n in matches if peer_ip in addresses(n.host)]
        if not matches:
            return f"AE title {calling_aet!r} called from {peer_ip}, not from its declared host"
    if any(operation in n.allow for n in matches):
        return None
    return f"modality {matches[0].name!r} ({calling_aet}) is not allowed to {operation}"


def check_node(settings: Settings, fields: Mapping[str, Any], original: str | None = None) -> dict[str, str]:
    """Problems with the fields of a page-managed node, by field name (empty when valid).

    ``fields`` holds ``name``, ``aet``, ``host``, ``port``, ``allow`` (a list of operations),
    ``description`` and ``fallback_get``; ``original`` is the name of the row being edited.
    """
    problems: dict[str, str] = {}
    name_problem = MODALITIES.name_problem(settings, str(fields.get("name", "")).strip(), original)
    if name_problem:
        problems["name"] = name_problem
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
    if fields.get("tls") and not settings["dicom.tls.certificate"]:
        problems["tls"] = "needs Dolmen's own certificate: set [dicom.tls] in the configuration first"
    return problems


def _node_values(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": str(fields["name"]).strip(), "aet": str(fields["aet"]).strip(),
            "host": str(fields["host"]).strip(), "port": int(fields["port"]),
            "allow": ",".join(a for a in OPERATIONS if a in (fields.get("allow") or [])),
            "description": str(fields.get("description", ""))[:255],
            "fallback_get": bool(fields.get("fallback_get")), "tls": bool(fields.get("tls"))}


MODALITIES: Registry[Node] = Registry(
    "modality", "modalities", "[modalities]", "modalities page", Modality,
    lambda settings: settings.modalities, _from_config, _from_row, _node_values,
    lambda settings, fields, original: check_node(settings, fields, original))


# -- DICOMweb servers ----------------------------------------------------------------------------

_URL = re.compile(r"https?://[^\s/?#]+[^\s?#]*")


@dataclass(frozen=True)
class Server(DicomwebServerConfig):
    """A remote DICOMweb server, from the configuration (``config``) or the page (``page``)."""

    origin: str = "config"

    @property
    def base(self) -> str:
        """The URL without a trailing slash."""
        return self.url.rstrip("/")


def _server_from_config(s: DicomwebServerConfig) -> Server:
    return Server(s.name, s.url, s.username, s.password, dict(s.headers), "config")


def _server_from_row(row: DicomwebServer) -> Server:
    try:
        headers = json.loads(str(row.headers) or "{}")
    except ValueError:
        headers = {}
    return Server(str(row.name), str(row.url), str(row.username), str(row.password),
                  {str(k): str(v) for k, v in (headers or {}).items()}, "page")


def check_server(settings: Settings, fields: Mapping[str, Any],
                 original: str | None = None) -> dict[str, str]:
    """Problems with the fields of a page-managed server, by field name (empty when valid)."""
    problems: dict[str, str] = {}
    name_problem = DICOMWEB_SERVERS.name_problem(settings, str(fields.get("name", "")).strip(), original)
    if name_problem:
        problems["name"] = name_problem
    if not _URL.fullmatch(str(fields.get("url", "")).strip()):
        problems["url"] = "an http:// or https:// URL, e.g. https://pacs.example.org/dicom-web"
    headers = fields.get("headers") or {}
    if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", k) and isinstance(v, str)
            and "\n" not in v and "\r" not in v for k, v in headers.items()):
        problems["headers"] = "one 'Name: value' per line"
    return problems


def parse_headers(text: str) -> dict[str, str]:
    """``Name: value`` lines (as typed in the page) as a dict; lines without ``:`` are ignored."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip():
            out[name.strip()] = value.strip()
    return out


def _server_values(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": str(fields["name"]).strip(), "url": str(fields["url"]).strip(),
            "username": str(fields.get("username") or "").strip(),
            "password": str(fields.get("password") or ""),
            "headers": json.dumps(dict(fields.get("headers") or {}))}


#: An empty password in an edit keeps the one stored, so that editing does not need it again.
DICOMWEB_SERVERS: Registry[Server] = Registry(
    "DICOMweb server", "DICOMweb servers", "[dicomweb.servers]", "DICOMweb page", DicomwebServer,
    lambda settings: settings.dicomweb_servers, _server_from_config, _server_from_row, _server_values,
    lambda settings, fields, original: check_server(settings, fields, original), keep_if_empty=("password",))
