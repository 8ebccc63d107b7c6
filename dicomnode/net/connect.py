"""Opening an association to a remote node, and saying in plain words why it failed.

Every SCU operation goes through :func:`associate`; every failure status a peer answers
becomes a :class:`~dicomnode.errors.RemoteError` through :func:`status_error`, whose
words come from :mod:`dicomnode.status`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000
from pydicom.uid import UID
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.uid import ImplicitVRLittleEndian
from pydicom.uid import JPEG2000Lossless
from pydicom.uid import JPEGBaseline8Bit
from pydicom.uid import JPEGExtended12Bit
from pydicom.uid import JPEGLossless
from pydicom.uid import JPEGLosslessSV1
from pydicom.uid import JPEGLSLossless
from pydicom.uid import JPEGLSNearLossless
from pydicom.uid import RLELossless
from pynetdicom import AE
from pynetdicom import evt
from pynetdicom.association import Association

from dicomnode.config import Settings
from dicomnode.errors import RemoteError
from dicomnode.net import tls
from dicomnode.peers import Node
from dicomnode.status import MOVE_DESTINATION_UNKNOWN
from dicomnode.status import error_code
from dicomnode.status import is_unable_to_process
from dicomnode.status import meaning as dimse_meaning

LOGGER = logging.getLogger(__name__)

# SOP classes (PS3.4 Annex C.6): pynetdicom generates its own constants at run time.
Verification = UID("1.2.840.10008.1.1")
PatientRootQueryRetrieveInformationModelFind = UID("1.2.840.10008.5.1.4.1.2.1.1")
PatientRootQueryRetrieveInformationModelMove = UID("1.2.840.10008.5.1.4.1.2.1.2")
PatientRootQueryRetrieveInformationModelGet = UID("1.2.840.10008.5.1.4.1.2.1.3")
StudyRootQueryRetrieveInformationModelFind = UID("1.2.840.10008.5.1.4.1.2.2.1")
StudyRootQueryRetrieveInformationModelMove = UID("1.2.840.10008.5.1.4.1.2.2.2")
StudyRootQueryRetrieveInformationModelGet = UID("1.2.840.10008.5.1.4.1.2.2.3")

CONNECT_TIMEOUT = 10.0


def check_reachable(node: Node, timeout: float = CONNECT_TIMEOUT) -> None:
    """Open and close a TCP connection to the node, turning each failure into a clear message.

    Raises
    ------
    RemoteError
        ``unknown_host``, ``connection_refused``, ``host_unreachable`` or ``timeout``.
    """
    where = f"{node.host}:{node.port}"
    try:
        with socket.create_connection((node.host, node.port), timeout=timeout):
            pass
    except socket.gaierror:
        raise RemoteError(
            f"Unknown host {node.host!r}: the name does not resolve. Check the "
            f"host of modality {node.name!r}.",
            code="unknown_host",
        ) from None
    except ConnectionRefusedError:
        raise RemoteError(
            f"Connection refused by {where}: nothing listens on that port. Check the "
            f"port of {node.name!r} and that its DICOM service is running.",
            code="connection_refused",
        ) from None
    except TimeoutError:
        raise RemoteError(
            f"No answer from {where} within {timeout:g} s: the host is down or a "
            "firewall drops the connection.",
            code="timeout",
        ) from None
    except OSError as exc:
        raise RemoteError(
            f"Host {where} is unreachable ({exc.strerror or exc}). Check the address and the network route.",
            code="host_unreachable",
        ) from None


def tls_diagnosis(node: Node, context: Any, timeout: float = 3.0) -> str | None:
    """Why a TLS association to ``node`` failed, found by a handshake of our own, or ``None``.

    pynetdicom only logs the error. Under TLS 1.3 a server that refuses our certificate says so
    after the handshake, with its first record: hence the read (a DICOM server then waits for
    our A-ASSOCIATE-RQ, so silence means the handshake was fine).
    """
    try:
        with socket.create_connection((node.host, node.port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=node.host) as secure:
                secure.settimeout(timeout)
                try:
                    secure.recv(1)
                except TimeoutError:
                    return None
    except (ssl.SSLError, ConnectionResetError, TimeoutError) as exc:
        return tls.describe(exc)
    except OSError:
        return None
    return None


def _client_context(settings: Settings) -> Any:
    key = tuple(settings[f"dicom.tls.{k}"] for k in ("certificate", "private_key", "trusted_certificates"))
    context = _CLIENT_CONTEXTS.get(key)
    if context is None:
        context = _CLIENT_CONTEXTS[key] = tls.client_context(settings)
    return context


_CLIENT_CONTEXTS: dict[tuple[str, ...], Any] = {}


def _not_established(settings: Settings, node: Node, abort_pdu: Any, waited: float) -> RemoteError:
    """Why an association request that was neither accepted nor rejected failed (PS3.8 9.3.8).

    An A-ABORT from the peer (with its source and reason), a connection closed without an
    answer, or silence until ``[dicom] acse_timeout``.
    """
    who = f"{node.name} ({node.aet} at {node.host}:{node.port})"
    if abort_pdu is not None:
        parts = []
        for attr in ("source_str", "reason_str"):
            with contextlib.suppress(Exception):
                text = str(getattr(abort_pdu, attr))
                if text and "no value" not in text:
                    parts.append(text)
        why = f" ({', '.join(parts)})" if parts else ""
        return RemoteError(f"{who} aborted the association request{why}: it refuses us or the requested "
                           "SOP classes; its log says why.", code="association_aborted")
    timeout = settings["dicom.acse_timeout"]
    if waited >= timeout * 0.9:
        return RemoteError(f"{who} accepted the connection but did not answer the association request "
                           f"within {timeout:g} s ([dicom] acse_timeout): is it a DICOM port, and is the "
                           "service there hung?", code="timeout")
    return RemoteError(f"{who} closed the connection without answering the association request: is "
                       f"port {node.port} a DICOM port?", code="association_aborted")


def _describe_reject(primitive: Any) -> str:
    if primitive is None:
        return "the association was rejected"
    parts = []
    for attr in ("result_str", "source_str", "reason_str"):
        with contextlib.suppress(Exception):
            parts.append(str(getattr(primitive, attr)))
    return ", ".join(p for p in parts if p) or "the association was rejected"


def _no_delay(event: evt.Event) -> None:
    """Send each PDU at once: without TCP_NODELAY a C-STORE whose data ends in a small PDV waits
    for the peer's delayed ACK (~40 ms per instance on Linux)."""
    sock: Any = getattr(event.assoc.dul.socket, "socket", None)
    with contextlib.suppress(AttributeError, OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@contextlib.contextmanager
def associate(
    settings: Settings,
    node: Node,
    contexts: Sequence[Any] = (Verification,),
    *,
    ae: AE | None = None,
    ext_neg: list[Any] | None = None,
    evt_handlers: list[Any] | None = None,
) -> Iterator[Association]:
    """Open an association to ``node`` and release it at the end of the ``with`` block.

    Parameters
    ----------
    contexts : sequence
        Abstract syntaxes (or presentation contexts) to request, when ``ae`` is not given.
    ae : AE, optional
        A prepared AE (for requested contexts with specific transfer syntaxes).

    Raises
    ------
    RemoteError
        When the node cannot be reached, rejects or aborts the association.
    """
    tls_args = None
    if node.tls:
        if not tls.enabled(settings):
            raise RemoteError(f"{node.name} requires DICOM over TLS, but Dolmen has no certificate: "
                              "set [dicom.tls] in the configuration", code="tls_config")
        tls_args = (_client_context(settings), node.host)
    check_reachable(node)
    if ae is None:
        ae = AE(ae_title=settings["dicom.aet"])
        for cx in contexts:
            if hasattr(cx, "abstract_syntax"):
                ae.add_requested_context(cx.abstract_syntax, cx.transfer_syntax)
            else:
                ae.add_requested_context(cx)
    ae.acse_timeout = settings["dicom.acse_timeout"]
    ae.dimse_timeout = settings["dicom.dimse_timeout"]
    ae.network_timeout = settings["dicom.network_timeout"]
    received: dict[str, Any] = {}

    def on_acse(event: evt.Event) -> None:
        received["primitive"] = getattr(event, "primitive", None)

    def on_pdu(event: evt.Event) -> None:
        if type(getattr(event, "pdu", None)).__name__ == "A_ABORT_RQ":
            received["abort"] = event.pdu

    handlers = list(evt_handlers or []) + [(evt.EVT_ACSE_RECV, on_acse), (evt.EVT_PDU_RECV, on_pdu),
                                           (evt.EVT_CONN_OPEN, _no_delay)]
    asked = time.monotonic()
    assoc = ae.associate(node.host, node.port, ae_title=node.aet, ext_neg=ext_neg, evt_handlers=handlers,
                         tls_args=tls_args)
    if tls_args is not None and not assoc.is_established and not assoc.is_rejected:
        why = tls_diagnosis(node, tls_args[0])
        if why:
            raise RemoteError(f"TLS handshake with {node.name} ({node.host}:{node.port}) failed: {why}.",
                              code="tls_handshake")
    if assoc.is_rejected:
        why = _describe_reject(received.get("primitive"))
        hint = ""
        if "called" in why.lower():
            hint = f" Check that {node.name!r} is really called {node.aet!r}."
        elif "calling" in why.lower():
            hint = (
                f" The remote node does not know our AE title {settings['dicom.aet']!r}: "
                "declare it in its configuration."
            )
        raise RemoteError(
            f"{node.name} ({node.aet} at {node.host}:{node.port}) rejected the association: {why}.{hint}",
            code="association_rejected",
        )
    if not assoc.is_established:
        raise _not_established(settings, node, received.get("abort"), time.monotonic() - asked)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()


#: Uncompressed transfer syntaxes, in the order we propose them.
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: What we accept for instances a C-GET brings in (uncompressed first: most peers pick the first).
GET_TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1-255


def local_address(host: str) -> str:
    """Our IP address as the node at ``host`` sees it (the source address of the route there)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return str(s.getsockname()[0])
    except OSError:
        return "<this machine's address>"


def status_message(
    code: int,
    op: str,
    node: Node,
    *,
    comment: str = "",
    settings: Settings | None = None,
    destination: str = "",
    our_port: int | None = None,
) -> str:
    """A sentence for the user: the status, its meaning and the fix."""
    meaning, fix = dimse_meaning(code, op)
    opname = {"find": "C-FIND", "move": "C-MOVE", "get": "C-GET", "store": "C-STORE", "echo": "C-ECHO"}.get(
        op, op
    )
    text = f"{node.name} answered the {opname} with 0x{code:04X} {meaning}"
    if op == "move" and (code == MOVE_DESTINATION_UNKNOWN or is_unable_to_process(code)):
        ours = settings["dicom.aet"] if settings else ""
        dest = destination or ours
        if settings is not None and dest == ours:
            port = our_port or settings["dicom.port"]
            declare = (
                f"declare {dest} at {local_address(node.host)}:{port} in its configuration, "
                "or retrieve with C-GET"
            )
        else:
            declare = f"declare {dest!r} with its address and port in its configuration"
        if code == MOVE_DESTINATION_UNKNOWN:
            fix = (
                f"the remote node does not know our AE title — {declare}"
                if dest == ours
                else f"the remote node does not know the AE title {dest!r} — {declare}"
            )
            text = f"{node.name} answered the C-MOVE with 0x{code:04X} {meaning}: {fix}"
            fix = ""
        else:
            # Orthanc and others answer 0xC000 when the destination is unknown or unreachable.
            fix = (
                f"The usual cause: it does not know the destination {dest} or cannot connect to it — "
                f"{declare}; its log says which"
            )
    if comment:
        text += f" ({comment.strip()})"
    return text + (f". {fix}" if fix else "")


def status_error(code: int, op: str, node: Node, **kw: Any) -> RemoteError:
    """A :class:`RemoteError` for a failure status, with :func:`status_message` and :func:`error_code`."""
    return RemoteError(status_message(code, op, node, **kw), code=error_code(code))


def _status_of(status: Dataset | None, since: float, node: Node, op: str, settings: Settings) -> int:
    """The Status of a response, or a RemoteError when there was none (abort or timeout).

    ``since`` is when we started waiting (``time.monotonic()``): an empty response well before
    the DIMSE timeout means the peer closed the association.
    """
    if status is not None and "Status" in status:
        return int(status.Status)
    opname = {"find": "C-FIND", "move": "C-MOVE", "get": "C-GET"}.get(op, op.upper())
    if time.monotonic() - since < settings["dicom.dimse_timeout"] * 0.9:
        raise RemoteError(
            f"{node.name} aborted the association on our {opname}: it probably refuses this "
            f"operation from our AE title {settings['dicom.aet']} — declare it there with "
            "the right to query and retrieve (Orthanc: DicomModalities)",
            code="association_aborted",
        )
    raise RemoteError(
        f"{node.name} did not answer the {opname} within {settings['dicom.dimse_timeout']:g} s",
        code="timeout",
    )


def _timed(
    responses: Iterator[tuple[Dataset, Dataset | None]],
) -> Iterator[tuple[Dataset, Dataset | None, float]]:
    """The responses, each with when we started waiting for it."""
    since = time.monotonic()
    for status, found in responses:
        yield status, found, since
        since = time.monotonic()

