"""Configuration: one table of settings, loaded from TOML into a frozen :class:`Settings`.

Every key is optional. ``load(path)`` checks each value against its row of :data:`SETTINGS`
and raises :class:`~dicomnode.errors.ConfigError` naming the key and the problem, e.g.
``[dicom] aet: longer than 16 characters``. The README's configuration table is tested
against :data:`SETTINGS`, so a key cannot exist without documentation.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from dicomnode.errors import ConfigError

#: Operations a remote node may ask of Dolmen (and the access-control vocabulary).
OPERATIONS = ("echo", "store", "find", "move", "get")

# PS3.5 6.2: AE is at most 16 characters of the default repertoire, no control characters
# and no backslash; leading/trailing spaces are not significant, so all-spaces is empty.
_AET_FORBIDDEN = re.compile(r"[\\\x00-\x1f\x7f]")


def check_aet(value: str) -> str | None:
    """Return the problem with an AE title, or ``None`` when it is valid.

    Parameters
    ----------
    value : str
        The AE title, as typed by the user.
    """
    if not isinstance(value, str):
        return "must be a string"
    if not value.strip():
        return "must not be empty or only spaces"
    if len(value) > 16:
        return "longer than 16 characters"
    if _AET_FORBIDDEN.search(value):
        return "contains a backslash or a control character"
    if not value.isascii():
        return "must use ASCII characters only"
    return None


def _check_port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else "must be between 1 and 65535"


def _check_port_or_zero(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be between 0 and 65535 (0 picks a free port)"


def _check_host(value: str) -> str | None:
    if not value or any(c.isspace() for c in value):
        return "must be a host name or an IP address"
    return None


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _check_ops(value: list[str]) -> str | None:
    bad = [v for v in value if v not in OPERATIONS]
    if bad:
        return f"unknown operation {bad[0]!r}; choose from {', '.join(OPERATIONS)}"
    return None


def _check_database(value: str) -> str | None:
    if value and not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
        return "must start with sqlite:/// or postgresql://"
    return None


def _check_objects(value: str) -> str | None:
    if value not in ("files", "s3"):
        return f'must be "files" or "s3" (got {value!r})'
    return None


def _check_level(value: str) -> str | None:
    levels = ("DEBUG", "INFO", "WARNING", "ERROR")
    return None if value.upper() in levels else f"must be one of {', '.join(levels)}"


def _check_pdu(value: int) -> str | None:
    if value == 0 or 4096 <= value <= 16 * 1024 * 1024:
        return None
    return "must be 0 (no limit) or between 4096 and 16777216"


def _check_root(value: str) -> str | None:
    if not value.startswith("/") or value.strip("/") == "" or any(c.isspace() or c in "?#<>" for c in value):
        return "must be a path like /dicom-web/ (starting with /, not / alone)"
    return None


def _check_oe2(value: str) -> str | None:
    if value and not os.path.isfile(os.path.join(value, "index.html")):
        return f"{value!r} holds no index.html: point it at the dist/ folder of a built Orthanc Explorer 2"
    return None


def _check_syntaxes(value: list[str]) -> str | None:
    for uid in value:
        if uid != "all" and not re.fullmatch(r"[0-9]+(\.[0-9]+)*", uid):
            return f"{uid!r} is not a transfer syntax UID"
    return None


@dataclass(frozen=True)
class Setting:
    """One row of the settings table: dotted key, type, default, help text and check."""

    key: str
    type: type
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None


SETTINGS: tuple[Setting, ...] = (
    Setting("dicom.aet", str, "DOLMEN", "Our AE title: what modalities put as the called AE.", check_aet),
    Setting("dicom.host", str, "0.0.0.0", "Address the DICOM server listens on.", _check_host),
    Setting("dicom.port", int, 4242, "TCP port of the DICOM server (0 picks a free port).", _check_port_or_zero),
    Setting("dicom.max_associations", int, 16, "Associations served at once; more are rejected (transient).", _positive),
    Setting("dicom.acse_timeout", float, 30.0, "Seconds to wait for association negotiation.", _positive),
    Setting("dicom.dimse_timeout", float, 60.0, "Seconds to wait for a DIMSE message.", _positive),
    Setting("dicom.network_timeout", float, 120.0, "Seconds an idle association is kept open.", _positive),
    Setting("dicom.max_pdu", int, 262144, "Largest PDU we accept, in bytes (0: no limit).", _check_pdu),
    Setting("dicom.max_object_mb", int, 4096, "Largest object accepted over C-STORE, in MiB; larger ones abort the association.", _positive),
    Setting("dicom.transfer_syntaxes", list, ["all"], 'Transfer syntaxes accepted for storage: ["all"] or a list of UIDs.', _check_syntaxes),
    Setting("dicom.unknown_aet", list, ["echo", "store"], "What a calling AE not declared in [modalities] may ask.", _check_ops),
    Setting("dicom.check_calling_host", bool, False, "Refuse a declared AE calling from another host than its declared one.", None),
    Setting("dicom.check_called_aet", bool, False, "Refuse associations whose called AE is not ours.", None),
    Setting("dicom.case_sensitive_pn", bool, False, "Match person names case-sensitively in C-FIND and QIDO-RS.", None),
    Setting("dicom.max_find_results", int, 0, "Most answers to one C-FIND (0: no limit); past it the C-FIND ends with 0xA700 and a comment saying so.", _non_negative),
    Setting("dicom.find_read_files", bool, False, "C-FIND: read attributes the index does not hold from one instance of each answer (else they are returned empty).", None),
    Setting("dicom.tls.port", int, 2762, "TCP port of the DICOM TLS listener (PS3.15 Annex B), beside the plain port; it runs when certificate is set (0 picks a free port).", _check_port_or_zero),
    Setting("dicom.tls.certificate", str, "", "PEM file of Dolmen's certificate (with its chain): the TLS listener's, and the client certificate of associations Dolmen opens over TLS; empty: no TLS.", None),
    Setting("dicom.tls.private_key", str, "", "PEM file of the certificate's private key (unencrypted).", None),
    Setting("dicom.tls.trusted_certificates", str, "", "PEM bundle of the CAs that peers' certificates must chain to (both ways).", None),
    Setting("dicom.tls.require_client_certificate", bool, True, "Refuse TLS clients without a certificate from a trusted CA.", None),
    Setting("dicom.association_log_days", int, 30, "Days the association log keeps its rows.", _positive),
    Setting("dicom.association_log_rows", int, 100000, "Most rows the association log keeps (the oldest go first).", _positive),
    Setting("http.host", str, "127.0.0.1", "Address the web server listens on (another address needs [http.users]).", _check_host),
    Setting("http.port", int, 8042, "TCP port of the web server (0 picks a free port).", _check_port_or_zero),
    Setting("http.threads", int, 8, "Web server worker threads.", _positive),
    Setting("http.max_upload_mb", int, 2048, "Largest HTTP request body accepted, in MiB.", _positive),
    Setting("http.max_zip_entries", int, 50000, "Most entries a ZIP file sent to the upload page may hold.", _positive),
    Setting("http.max_zip_mb", int, 16384, "Most a ZIP file sent to the upload page may unpack to, in MiB (zip bombs).", _positive),
    Setting("http.oe2_path", str, "", "Folder of a built Orthanc Explorer 2 web app (its dist/, holding index.html) to serve at /ui/app/; empty: none.", _check_oe2),
    Setting("storage.path", str, "./dolmen-data", "Folder holding the files, the index and the control socket.", None),
    Setting("storage.database", str, "", "Index URL: empty for <storage.path>/index.db, or sqlite:///FILE, or postgresql://user@host/db.", _check_database),
    Setting("storage.overwrite", bool, False, "A second copy of a stored instance replaces the first (else it is kept and reported as already stored).", None),
    Setting("storage.min_free_mb", int, 256, "Refuse new objects when the storage volume has less free space than this, in MiB.", _non_negative),
    Setting("storage.fsync", bool, True, "fsync each file and its folder before acknowledging (turn off only on battery-backed storage).", None),
    Setting("storage.busy_timeout", float, 30.0, "Seconds a write waits for the SQLite index held by another process before the object is refused (C-STORE 0x0110, the sender may retry).", _positive),
    Setting("storage.objects", str, "files", 'Where stored objects go: "files" (under storage.path) or "s3" (the bucket of [storage.s3], shared by several nodes).', _check_objects),
    Setting("storage.s3.endpoint", str, "", "URL of the S3-compatible server, e.g. http://s3.example.org:8333 (empty: AWS S3).", None),
    Setting("storage.s3.bucket", str, "dolmen", "Bucket holding the objects (it must exist).", None),
    Setting("storage.s3.prefix", str, "", "Folder of the bucket for this archive's objects (empty: the bucket's top; lets archives share a bucket).", None),
    Setting("storage.s3.region", str, "us-east-1", "Region the requests are signed for.", None),
    Setting("storage.s3.access_key", str, "", "Access key (empty: boto3's environment, ~/.aws or instance role).", None),
    Setting("storage.s3.secret_key", str, "", "Secret key.", None),
    Setting("storage.s3.cache_mb", int, 2048, "Local read cache of objects under storage.path/cache, in MiB (least recently used go first).", _positive),
    Setting("storage.s3.timeout", float, 30.0, "Seconds before a request to the object store is given up.", _positive),
    Setting("storage.stable_age", int, 60, "Seconds without a new instance after which a series, study or patient is stable (IsStable, the Stable* changes; Orthanc's StableAge).", _positive),
    Setting("log.level", str, "INFO", "DEBUG, INFO, WARNING or ERROR.", _check_level),
    Setting("dicomweb.root", str, "/dicom-web/", "Path of the DICOMweb service (QIDO-RS, WADO-RS, STOW-RS) and of the DICOMweb client's JSON endpoints.", _check_root),
    Setting("dicomweb.wado_root", str, "/wado", "Path of the WADO-URI service.", _check_root),
    Setting("anonymize.secret", str, "", "Project secret for stable pseudonyms: the same patient and UIDs anonymized twice (or at two sites sharing it) get the same new values; empty: random each time.", None),
    Setting("anonymize.safe_private_creators", list, [], "Private creators whose blocks the RetainSafePrivate option keeps (e.g. [\"SIEMENS CSA HEADER\"]).", None),
    Setting("jobs.node", str, "", "This node's name in the shared jobs table (several nodes on one PostgreSQL index); empty: host name and storage folder.", None),
    Setting("jobs.concurrency", int, 2, "Jobs (send, retrieve, DICOMweb transfers) run at once by the DICOM service.", _positive),
)

_BY_KEY = {s.key: s for s in SETTINGS}

#: Keys of one ``[modalities.NAME]`` table.
MODALITY_KEYS: dict[str, tuple[type, Any, str]] = {
    "aet": (str, None, "AE title of the remote node (required)."),
    "host": (str, None, "Host name or IP address of the remote node (required)."),
    "port": (int, 104, "DICOM port of the remote node."),
    "allow": (list, list(OPERATIONS), "What the node may ask of us: echo, store, find, move, get."),
    "description": (str, "", "Free text shown in the modalities page."),
    "fallback_get": (bool, False, "Retrieve by C-GET when the node refuses our C-MOVE (it does not know our AE title)."),
    "tls": (bool, False, "DICOM over TLS with this node: every association Dolmen opens to it uses TLS (needs [dicom.tls]), and its AE title is refused on the plain port."),
}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_name(value: str) -> str | None:
    """Return the problem with a modality's symbolic name, or ``None`` when it is valid."""
    if not _NAME.fullmatch(value):
        return "letters, digits, '-', '_' or '.', starting with a letter or digit (64 at most)"
    return None

#: Keys of one ``[dicomweb.servers.NAME]`` table (a remote DICOMweb server).
DICOMWEB_SERVER_KEYS: dict[str, tuple[type, Any, str]] = {
    "url": (str, None, "Base URL of the remote DICOMweb service, e.g. https://pacs.example.org/dicom-web (required)."),
    "username": (str, "", "User name for HTTP Basic authentication."),
    "password": (str, "", "Password for HTTP Basic authentication."),
    "headers": (dict, {}, 'Extra HTTP headers sent with each request, e.g. {Authorization = "Bearer ..."}.'),
}


@dataclass(frozen=True)
class ModalityConfig:
    """A remote DICOM node declared in ``[modalities.NAME]``."""

    name: str
    aet: str
    host: str
    port: int = 104
    allow: tuple[str, ...] = OPERATIONS
    description: str = ""
    fallback_get: bool = False
    tls: bool = False


@dataclass(frozen=True)
class ViewerConfig:
    """An external viewer declared in ``[viewers.NAME]``: *Open in LABEL* on study pages."""

    name: str
    url: str
    label: str = ""

    def link(self, **values: str) -> str:
        """The URL with ``{StudyInstanceUID}``, ``{PatientID}``, ``{AccessionNumber}`` filled in (URL-encoded)."""
        from urllib.parse import quote

        out = self.url
        for key in VIEWER_FIELDS:
            out = out.replace("{" + key + "}", quote(values.get(key, ""), safe=""))
        return out


#: Placeholders of a viewer's URL template.
VIEWER_FIELDS = ("StudyInstanceUID", "PatientID", "AccessionNumber")
#: Keys of one ``[viewers.NAME]`` table.
VIEWER_KEYS: dict[str, tuple[type, Any, str]] = {
    "url": (str, None, "URL template, e.g. https://ohif.example.org/viewer?StudyInstanceUIDs={StudyInstanceUID} (also {PatientID}, {AccessionNumber}; required)."),
    "label": (str, "", "The button's text after \"Open in\" (default: NAME)."),
}


@dataclass(frozen=True)
class DicomwebServerConfig:
    """A remote DICOMweb server declared in ``[dicomweb.servers.NAME]``."""

    name: str
    url: str
    username: str = ""
    password: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """The frozen, checked configuration. Read values with ``settings["dicom.aet"]``."""

    values: Mapping[str, Any]
    modalities: tuple[ModalityConfig, ...] = ()
    source: str | None = None
    users: Mapping[str, str] = field(default_factory=dict)
    dicomweb_servers: tuple[DicomwebServerConfig, ...] = ()
    anonymize_profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    viewers: tuple[ViewerConfig, ...] = ()

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def storage_path(self) -> Path:
        """Absolute path of the storage folder."""
        return Path(self.values["storage.path"]).expanduser().resolve()

    @property
    def database_url(self) -> str:
        """The index URL, defaulting to ``sqlite:///<storage>/index.db``."""
        url = str(self.values["storage.database"])
        return url or f"sqlite:///{self.storage_path / 'index.db'}"

    @property
    def control_socket(self) -> Path:
        """Path of the sidecar's control socket."""
        return self.storage_path / "run" / "control.sock"

    def modality(self, name: str) -> ModalityConfig | None:
        """Return the declared modality called ``name``, if any."""
        for m in self.modalities:
            if m.name == name:
                return m
        return None

    def to_dict(self) -> dict[str, Any]:
        """The settings as a TOML-shaped document that :func:`from_dict` reads back.

        ``storage.path`` is made absolute so that another process in another folder
        (the sidecar) reads the same files.
        """
        return self._raw({"storage.path": str(self.storage_path)})

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with some dotted keys changed (checked like a file would be)."""
        return from_dict(self._raw(changes), source=self.source)

    def _raw(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        raw: dict[str, Any] = {}
        for key, value in {**self.values, **changes}.items():
            *tables, name = key.split(".")
            table = raw
            for part in tables:  # storage.s3.endpoint -> raw["storage"]["s3"]["endpoint"]
                table = table.setdefault(part, {})
            table[name] = value
        raw["modalities"] = {
            m.name: {"aet": m.aet, "host": m.host, "port": m.port, "allow": list(m.allow),
                     "description": m.description, "fallback_get": m.fallback_get, "tls": m.tls}
            for m in self.modalities
        }
        if self.users:
            raw["http"]["users"] = dict(self.users)
        if self.viewers:
            raw["viewers"] = {v.name: {"url": v.url, "label": v.label} for v in self.viewers}
        if self.anonymize_profiles:
            raw["anonymize"]["profiles"] = {name: dict(body) for name, body in self.anonymize_profiles.items()}
        if self.dicomweb_servers:
            raw["dicomweb"]["servers"] = {
                s.name: {"url": s.url, "username": s.username, "password": s.password, "headers": dict(s.headers)}
                for s in self.dicomweb_servers
            }
        return raw


def _coerce(where: str, expected: type, value: Any) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool):
        raise ConfigError(f"{where}: must be a whole number, not true/false")
    if not isinstance(value, expected):
        names = {str: "a string", int: "a whole number", float: "a number", bool: "true or false",
                 list: "a list", dict: "a table"}
        raise ConfigError(f"{where}: must be {names.get(expected, expected.__name__)}, got {value!r}")
    if expected is list and not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: must be a list of strings")
    return value


def _where(key: str) -> str:
    section, _, name = key.rpartition(".")
    return f"[{section}] {name}"


def from_dict(raw: Mapping[str, Any], source: str | None = None) -> Settings:
    """Check a parsed TOML document and build :class:`Settings`.

    Raises
    ------
    ConfigError
        On an unknown section or key, a value of the wrong type, or a value failing its check.
    """
    values = {s.key: s.default for s in SETTINGS}
    sections = {s.key.split(".")[0] for s in SETTINGS} | {"modalities", "viewers"}
    viewers: list[ViewerConfig] = []
    modalities: list[ModalityConfig] = []
    users: dict[str, str] = {}
    dicomweb_servers: list[DicomwebServerConfig] = []
    profiles: dict[str, dict[str, Any]] = {}
    for section, table in raw.items():
        if section not in sections:
            raise ConfigError(f"[{section}]: unknown section; known sections are "
                              f"{', '.join('[' + s + ']' for s in sorted(sections))}")
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}]: must be a table")
        if section == "modalities":
            modalities = [_modality(name, t) for name, t in table.items()]
            continue
        if section == "viewers":
            viewers = [_viewer(name, t) for name, t in table.items()]
            continue
        items = list(table.items())
        while items:
            name, value = items.pop(0)
            key = f"{section}.{name}"
            if isinstance(value, dict) and any(k.startswith(key + ".") for k in _BY_KEY):
                # a sub-table such as [storage.s3]: its keys are storage.s3.NAME
                items.extend((f"{name}.{k}", v) for k, v in value.items())
                continue
            if key == "http.users":
                users = _users(value)
                continue
            if key == "dicomweb.servers":
                dicomweb_servers = _dicomweb_servers(value)
                continue
            if key == "anonymize.profiles":
                profiles = _profiles(value)
                continue
            setting = _BY_KEY.get(key)
            if setting is None:
                raise ConfigError(f"{_where(key)}: unknown key")
            value = _coerce(_where(key), setting.type, value)
            problem = setting.check(value) if setting.check else None
            if problem:
                raise ConfigError(f"{_where(key)}: {problem}")
            values[key] = value
    aets = [m.aet for m in modalities]
    if values["http.host"] not in ("127.0.0.1", "localhost", "::1") and not users:
        try:
            loopback = ipaddress.ip_address(values["http.host"]).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigError(
                f"[http] host: listening on {values['http.host']} exposes patient data beyond this "
                "machine; declare users in [http.users] (make a hash with `dolmen passwd`) first")
    _check_tls(values, modalities)
    dup = {a for a in aets if aets.count(a) > 1}
    if dup:
        raise ConfigError(f"[modalities]: AE title {sorted(dup)[0]!r} is declared twice")
    return Settings(values=values, modalities=tuple(modalities), source=source, users=users,
                    dicomweb_servers=tuple(dicomweb_servers), anonymize_profiles=profiles,
                    viewers=tuple(viewers))


def _profiles(value: Any) -> dict[str, dict[str, Any]]:
    """``[anonymize.profiles.NAME]``: each an /anonymize body (Options, Replace, Keep, Remove, ...)."""
    from dicomnode.anonymize.profile import PlanError
    from dicomnode.anonymize.profile import plan_from_body

    if not isinstance(value, dict):
        raise ConfigError("[anonymize.profiles]: must hold one table per profile, [anonymize.profiles.NAME]")
    for name, table in value.items():
        where = f"[anonymize.profiles.{name}]"
        if not _NAME.fullmatch(name) or not isinstance(table, dict):
            raise ConfigError(f"{where}: a table named with letters, digits, '-', '_' or '.'")
        try:
            plan_from_body({k: v for k, v in table.items() if k != "Profile"}, "anonymize", "Study")
        except PlanError as exc:
            raise ConfigError(f"{where}: {exc.message}") from None
    return {name: dict(table) for name, table in value.items()}


def _users(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError("[http.users]: must be a table of user = \"password hash\"")
    for user, hashed in value.items():
        if not isinstance(hashed, str) or ":" not in hashed:
            raise ConfigError(f"[http.users] {user}: must be a password hash made by `dolmen passwd`")
    return dict(value)


def _dicomweb_servers(value: Any) -> list[DicomwebServerConfig]:
    if not isinstance(value, dict):
        raise ConfigError("[dicomweb.servers]: must hold one table per server, [dicomweb.servers.NAME]")
    servers = []
    for name, table in value.items():
        where = f"[dicomweb.servers.{name}]"
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{where}: a name uses letters, digits, '-', '_' or '.' only")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table with at least url")
        out: dict[str, Any] = {}
        for key, item in table.items():
            if key not in DICOMWEB_SERVER_KEYS:
                raise ConfigError(f"{where} {key}: unknown key; known keys are {', '.join(DICOMWEB_SERVER_KEYS)}")
            out[key] = _coerce(f"{where} {key}", DICOMWEB_SERVER_KEYS[key][0], item)
        url = out.get("url", "")
        if not re.fullmatch(r"https?://[^\s/?#]+[^\s?#]*", url):
            raise ConfigError(f"{where} url: {'missing' if not url else 'must be an http:// or https:// URL'}")
        headers = out.get("headers", {})
        if not all(isinstance(v, str) for v in headers.values()):
            raise ConfigError(f"{where} headers: each header value must be a string")
        out["headers"] = dict(headers)
        servers.append(DicomwebServerConfig(name=name, **out))
    return servers


def _viewer(name: str, table: Any) -> ViewerConfig:
    where = f"[viewers.{name}]"
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: a name uses letters, digits, '-', '_' or '.' only")
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table with url")
    for key in table:
        if key not in VIEWER_KEYS:
            raise ConfigError(f"{where} {key}: unknown key; known keys are {', '.join(VIEWER_KEYS)}")
    url = _coerce(f"{where} url", str, table.get("url", ""))
    label = _coerce(f"{where} label", str, table.get("label", ""))
    if not re.match(r"https?://\S+$", url):
        raise ConfigError(f"{where} url: an http:// or https:// URL template, e.g. "
                          "https://ohif.example.org/viewer?StudyInstanceUIDs={StudyInstanceUID}")
    if not any("{" + key + "}" in url for key in VIEWER_FIELDS):
        raise ConfigError(f"{where} url: name the study with {{StudyInstanceUID}} (or {{PatientID}}, {{AccessionNumber}})")
    return ViewerConfig(name=name, url=url, label=label)


def _check_tls(values: dict[str, Any], modalities: list[ModalityConfig]) -> None:
    """[dicom.tls]: the certificate, its key and the trusted CAs go together and must be readable;
    a modality with ``tls = true`` needs them."""
    files = {k: values[f"dicom.tls.{k}"] for k in ("certificate", "private_key", "trusted_certificates")}
    if not any(files.values()):
        needing = [m.name for m in modalities if m.tls]
        if needing:
            raise ConfigError(f"[modalities.{needing[0]}] tls: needs Dolmen's certificate: set [dicom.tls] "
                              "certificate, private_key and trusted_certificates")
        return
    for key, value in files.items():
        if not value:
            raise ConfigError(f"[dicom.tls] {key}: missing (certificate, private_key and trusted_certificates "
                              "go together)")
        if not os.path.isfile(os.path.expanduser(value)):
            raise ConfigError(f"[dicom.tls] {key}: no such file: {value}")
    if values["dicom.tls.port"] and values["dicom.tls.port"] == values["dicom.port"]:
        raise ConfigError("[dicom.tls] port: must differ from [dicom] port")


def _modality(name: str, table: Any) -> ModalityConfig:
    where = f"[modalities.{name}]"
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: a name uses letters, digits, '-', '_' or '.' only")
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table with aet, host and port")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in MODALITY_KEYS:
            raise ConfigError(f"{where} {key}: unknown key; known keys are {', '.join(MODALITY_KEYS)}")
        out[key] = _coerce(f"{where} {key}", MODALITY_KEYS[key][0], value)
    for key in ("aet", "host"):
        if key not in out:
            raise ConfigError(f"{where} {key}: missing")
    for key, check in (("aet", check_aet), ("host", _check_host), ("port", _check_port),
                       ("allow", _check_ops)):
        if key in out:
            problem = check(out[key])
            if problem:
                raise ConfigError(f"{where} {key}: {problem}")
    allow = tuple(out.pop("allow", OPERATIONS))
    return ModalityConfig(name=name, allow=allow, **out)


def load(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read the TOML file at ``path`` (or ``$DOLMEN_CONFIG``; defaults when neither is set).

    Raises
    ------
    ConfigError
        When the file cannot be read or parsed, or a value is invalid.
    """
    path = path or os.environ.get("DOLMEN_CONFIG") or None
    if path is None:
        return from_dict({})
    try:
        with open(path, "rb") as f:
            raw = json.load(f) if str(path).endswith(".json") else tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return from_dict(raw, source=str(Path(path).resolve()))
