"""Hardening of pynetdicom's DICOM upper layer (PS3.8) against hostile peers.

Applied once by the sidecar (:func:`apply`), whatever ``DOLMEN_NO_NETPATCH`` says: unlike
:mod:`dicomnode.netpatch`, nothing here is about speed.

pynetdicom trusts what a peer sends more than a server on a hospital network may:

* it reads a PDU's body as long as its length field says, 4 GB included, growing a buffer
  as the bytes come; here a PDU longer than allowed (a P-DATA-TF over the maximum length
  we negotiated, an A-ASSOCIATE-RQ over :data:`MAX_ASSOCIATE_PDU`, a release or abort PDU
  over :data:`MAX_SMALL_PDU`) is refused before a byte of its body is read;
* it reads a PDU with no deadline, so a peer trickling one byte a minute holds a thread for
  ever; here a PDU must arrive whole within the ACSE timeout before the association is
  established and within the network timeout afterwards;
* after an unknown PDU type it keeps reading the stream a byte at a time and waits out the
  ARTIM timer (an HTTP request on the DICOM port took ten seconds to close); here the peer
  gets an A-ABORT (PS3.8 9.3.8: source 2, the reason) and the connection is closed at once;
* it logged such problems without naming the peer, and a PDU it could not decode with a
  traceback; here one WARNING line names the peer's address, its calling AE title when
  known, and the problem;
* it counted connections that never sent an A-ASSOCIATE-RQ against
  ``[dicom] max_associations``, so 200 idle connections kept every modality out until
  they timed out; here only associations past their A-ASSOCIATE-RQ count, and at most
  :data:`MAX_PENDING` connections may wait for theirs (more are closed at once).
"""
from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from typing import Any

from pynetdicom import AE
from pynetdicom import dul
from pynetdicom import transport

LOGGER = logging.getLogger(__name__)

MAX_ASSOCIATE_PDU = 1024 * 1024  # an A-ASSOCIATE-RQ/AC/RJ: 128 contexts of 64 syntaxes fit easily
MAX_SMALL_PDU = 1024  # A-RELEASE-RQ/RP and A-ABORT are 4 bytes long (PS3.8 9.3.6-9.3.8)
UNLIMITED_PDATA = 128 * 1024 * 1024  # the P-DATA-TF cap when our maximum length is 0 (no limit)
MAX_PENDING = 128  # connections waiting for their A-ASSOCIATE-RQ at once
DEFAULT_DEADLINE = 60.0  # seconds for one PDU when the AE has no timeout set

PDU_NAMES = {0x01: "A-ASSOCIATE-RQ", 0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", 0x04: "P-DATA-TF",
             0x05: "A-RELEASE-RQ", 0x06: "A-RELEASE-RP", 0x07: "A-ABORT"}

# A-ABORT reasons, PS3.8 Table 9-26 (source 2: the service provider).
REASON_UNRECOGNIZED_PDU = 0x01
REASON_UNEXPECTED_PDU = 0x02
REASON_INVALID_PARAMETER = 0x06

_applied = False
_lock = threading.Lock()


class _Timeout(Exception):
    pass


def peer_of(assoc: Any) -> str:
    """``"10.0.0.5:51234 (calling AE 'CT1')"``: the peer of ``assoc`` as log lines name it."""
    remote = assoc.requestor if assoc.is_acceptor else assoc.acceptor
    try:
        where = f"{remote.address}:{remote.port}"
    except Exception:  # noqa: BLE001 - no address yet
        where = "unknown address"
    aet = str(getattr(remote, "ae_title", "") or "").strip()
    return f"{where} (calling AE {aet!r})" if aet and assoc.is_acceptor else \
        f"{where} (AE {aet!r})" if aet else where


def _describe_junk(head: bytes) -> str:
    """What the first bytes of a non-DICOM stream look like."""
    if head[:4] in (b"GET ", b"POST", b"HEAD", b"PUT ", b"OPTI", b"DELE", b"PATC", b"CONN", b"PRI "):
        return "an HTTP request, not DICOM (the web UI is on the HTTP port)"
    if head[0] == 0x16 and head[1] == 0x03:
        return "a TLS handshake, not DICOM (TLS is not enabled on this port)"
    return f"unknown PDU type 0x{head[0]:02X}, not DICOM"


def _local_max_pdu(assoc: Any) -> int:
    local = assoc.acceptor if assoc.is_acceptor else assoc.requestor
    try:
        value = int(local.maximum_length or 0)
    except (TypeError, ValueError):
        value = 0
    return value or UNLIMITED_PDATA


def _cap(assoc: Any, pdu_type: int) -> int:
    if pdu_type == 0x04:
        return _local_max_pdu(assoc)
    if pdu_type in (0x01, 0x02, 0x03):
        return MAX_ASSOCIATE_PDU
    return MAX_SMALL_PDU


def _read_exact(raw: socket.socket, n: int, deadline: float) -> bytes | None:
    """``n`` bytes from ``raw`` by ``deadline``; ``None`` when the peer closed first."""
    parts: list[bytes] = []
    got = 0
    previous = raw.gettimeout()
    try:
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Timeout(got)
            raw.settimeout(left)
            try:
                chunk = raw.recv(min(n - got, 256 * 1024))
            except (socket.timeout, TimeoutError):
                raise _Timeout(got) from None
            if not chunk:
                return None
            parts.append(chunk)
            got += len(chunk)
    finally:
        try:
            raw.settimeout(previous)
        except OSError:
            pass
    return b"".join(parts)


def refuse(provider: Any, problem: str, reason: int) -> None:
    """Log ``problem`` with the peer, send an A-ABORT (source 2, ``reason``) and close."""
    assoc = provider.assoc
    LOGGER.warning("DICOM connection from %s closed: %s", peer_of(assoc), problem)
    sock = provider.socket
    raw = getattr(sock, "socket", None)
    if raw is not None:
        try:
            raw.settimeout(1.0)
            raw.sendall(struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 2, reason))
        except OSError:
            pass
    connected = sock.socket is not None and sock._is_connected
    sock.close()  # queues Evt17 (transport closed): the state machine ends the association
    if not connected:
        provider.event_queue.put("Evt17")


def _read_pdu_data(self: Any) -> None:
    """``DULServiceProvider._read_pdu_data`` with caps, a deadline and a logged refusal."""
    assoc = self.assoc
    sock = self.socket
    raw = getattr(sock, "socket", None)
    if raw is None:
        self.event_queue.put("Evt17")
        return
    budget = assoc.network_timeout if assoc.is_established else assoc.acse_timeout
    deadline = time.monotonic() + (budget if budget else DEFAULT_DEADLINE)
    try:
        head = _read_exact(raw, 6, deadline)
    except _Timeout:
        refuse(self, f"no whole PDU header within {budget or DEFAULT_DEADLINE:g} s (a slow or stalled peer)",
               REASON_UNEXPECTED_PDU)
        return
    except OSError:
        self.event_queue.put("Evt17")
        return
    if head is None:
        self.event_queue.put("Evt17")  # the peer closed the connection
        return
    pdu_type, _, length = struct.unpack(">BBL", head)
    name = PDU_NAMES.get(pdu_type)
    if name is None:
        refuse(self, _describe_junk(head), REASON_UNRECOGNIZED_PDU)
        return
    cap = _cap(assoc, pdu_type)
    if length > cap:
        refuse(self, f"{name} PDU of {length} bytes, more than the {cap} allowed", REASON_INVALID_PARAMETER)
        return
    try:
        body = _read_exact(raw, length, deadline)
    except _Timeout as exc:
        refuse(self, f"{name} PDU not received within {budget or DEFAULT_DEADLINE:g} s "
                     f"({exc.args[0]} of {length} bytes; a slow or stalled peer)", REASON_UNEXPECTED_PDU)
        return
    except OSError:
        self.event_queue.put("Evt17")
        return
    if body is None:
        LOGGER.warning("DICOM connection from %s closed by the peer in the middle of a %s PDU",
                       peer_of(assoc), name)
        self.event_queue.put("Evt17")
        return
    try:
        pdu, event = self._decode_pdu(bytearray(head + body))
    except Exception as exc:  # noqa: BLE001 - whatever the decoder raises, the PDU is malformed
        refuse(self, f"malformed {name} PDU ({type(exc).__name__}: {str(exc)[:200]})", REASON_INVALID_PARAMETER)
        return
    if pdu_type == 0x01:
        assoc._dolmen_requested = True  # counts against [dicom] max_associations from now on
    self.event_queue.put(event)
    self._recv_pdu.put(pdu)


def requested(assoc: Any) -> bool:
    """True once an acceptor association has received its A-ASSOCIATE-RQ."""
    return bool(getattr(assoc, "_dolmen_requested", False))


class DolmenAE(AE):
    """pynetdicom's AE, where connections still waiting for their A-ASSOCIATE-RQ do not count
    as associations (``[dicom] max_associations``, the ``associations`` of ``status``)."""

    @property
    def active_associations(self) -> list[Any]:
        return [a for a in super().active_associations if not a.is_acceptor or requested(a)]

    @property
    def active_associations_all(self) -> list[Any]:
        """Every association thread, connections waiting for their A-ASSOCIATE-RQ included."""
        return list(super().active_associations)

    def shutdown(self) -> None:
        """Stop the servers and abort every association, waiting connections included."""
        super().shutdown()
        for assoc in self.active_associations_all:
            try:
                assoc.abort()
            except Exception:  # noqa: BLE001 - shutting down regardless
                pass


def _verify_request(original: Any) -> Any:
    def verify_request(self: Any, request: Any, client_address: Any) -> bool:
        pending = [a for a in self.ae.active_associations_all if a.is_acceptor and not requested(a)] \
            if hasattr(self.ae, "active_associations_all") else []
        if len(pending) >= MAX_PENDING:
            LOGGER.warning("DICOM connection from %s:%s closed: %d connections already wait for their "
                           "A-ASSOCIATE-RQ", client_address[0], client_address[1], len(pending))
            return False
        return bool(original(self, request, client_address))
    return verify_request


def apply() -> None:
    """Install the hardening (idempotent)."""
    global _applied
    with _lock:
        if _applied:
            return
        dul.DULServiceProvider._read_pdu_data = _read_pdu_data  # type: ignore[method-assign]
        transport.AssociationServer.verify_request = _verify_request(  # type: ignore[method-assign]
            transport.AssociationServer.verify_request)
        _applied = True
