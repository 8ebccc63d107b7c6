"""Hardening of pynetdicom's DICOM upper layer (PS3.8) against hostile peers.

Applied once by the sidecar (:func:`apply`), whatever ``DOLMEN_NO_NETPATCH`` says: unlike
:mod:`dicomnode.net.latency`, nothing here is about speed.

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
  :data:`MAX_PENDING` connections may wait for theirs (a new one closes the oldest);
* it listened with a backlog of 5, so the sixth connection of a burst waited a second;
* it accepted A-ASSOCIATE-RQs without presentation contexts, with 129 of them, duplicate or
  even identifiers, no User Information or Application Context item, AE titles of spaces or
  control characters, syntax names that are not UIDs; here they get an A-ASSOCIATE-RJ
  (PS3.8 9.3.4) and a log line;
* a PDU out of sequence left the connection open until the ARTIM timer; our own answer
  arriving after it raised ``InvalidEventError`` in the DUL thread; a command set it could
  not read raised inside its state machine: each now ends in an A-ABORT and a closed
  connection, logged once;
* a C-STORE data set whose association ended before it was handled (the peer aborted,
  vanished, or sent another command first) stayed in the spool folder with its descriptor
  open; each association now removes its unhandled spool files when it ends;
* its own log lines carried the peer's text raw (a newline in an AE title forges a line):
  they are escaped (:class:`PeerInputFilter`);
* its network timeout counted only what the peer sent: a C-STORE that took us longer than
  the timeout to file was answered, then the association aborted as idle.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import AE
from pynetdicom import association
from pynetdicom import dimse
from pynetdicom import dimse_messages
from pynetdicom import dul
from pynetdicom import evt
from pynetdicom import fsm
from pynetdicom import transport
from pynetdicom.pdu import A_ASSOCIATE_RQ

LOGGER = logging.getLogger(__name__)

MAX_ASSOCIATE_PDU = 1024 * 1024  # an A-ASSOCIATE-RQ/AC/RJ: 128 contexts of 64 syntaxes fit easily
MAX_SMALL_PDU = 1024  # A-RELEASE-RQ/RP and A-ABORT are 4 bytes long (PS3.8 9.3.6-9.3.8)
UNLIMITED_PDATA = 128 * 1024 * 1024  # the P-DATA-TF cap when our maximum length is 0 (no limit)
MAX_PENDING = 32  # connections waiting for their A-ASSOCIATE-RQ at once (each costs two polling threads)
LISTEN_BACKLOG = 128  # pending TCP connections the kernel queues for accept()
DEFAULT_DEADLINE = 60.0  # seconds for one PDU when the AE has no timeout set

PDU_NAMES = {0x01: "A-ASSOCIATE-RQ", 0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", 0x04: "P-DATA-TF",
             0x05: "A-RELEASE-RQ", 0x06: "A-RELEASE-RP", 0x07: "A-ABORT"}

# A-ABORT reasons, PS3.8 Table 9-26 (source 2: the service provider).
REASON_UNRECOGNIZED_PDU = 0x01
REASON_UNEXPECTED_PDU = 0x02
REASON_INVALID_PARAMETER = 0x06

#: Set by the DICOM service: ``(calling_aet, over_tls)`` -> why that calling AE title may not
#: associate on this kind of port (a modality declared ``tls = true`` calling the plain port), or None.
CALLING_CHECK: Callable[[str, bool], str | None] | None = None
#: Set by the DICOM service: called with (peer "ip:port", reason) when a TLS handshake fails.
TLS_FAILED: Callable[[str, str], None] | None = None

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")  # PS3.5 9.1, leniently (leading zeros allowed)
_applied = False
_lock = threading.Lock()


class _Timeout(Exception):
    pass


def printable(text: Any, limit: int = 64) -> str:
    """``text`` safe for a log line: control characters escaped, at most ``limit`` characters.

    A calling AE title is the peer's to choose; written raw, a newline forges log lines and
    an escape sequence repaints the operator's terminal.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("latin-1")
    text = str(text)
    out = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text[:limit])
    return out + ("..." if len(text) > limit else "")


def peer_of(assoc: Any) -> str:
    """``"10.0.0.5:51234 (calling AE 'CT1')"``: the peer of ``assoc`` as log lines name it."""
    remote = assoc.requestor if assoc.is_acceptor else assoc.acceptor
    try:
        where = f"{remote.address}:{remote.port}"
    except Exception:  # noqa: BLE001 - no address yet
        where = "unknown address"
    aet = printable(str(getattr(remote, "ae_title", "") or "").strip(), 16)
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
            except TimeoutError:
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


def _take(provider: Any, raw: socket.socket, n: int, deadline: float) -> bytes | None:
    """:func:`_read_exact`, starting with the bytes a parked reader left unread
    (:func:`dicomnode.net.latency.unpark`)."""
    unread = getattr(provider, "_unread", b"")
    if not unread:
        return _read_exact(raw, n, deadline)
    if len(unread) >= n:
        provider._unread = unread[n:]
        return unread[:n]
    provider._unread = b""
    rest = _read_exact(raw, n - len(unread), deadline)
    return None if rest is None else unread + rest


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


def _ae_problem(raw: bytes, which: str) -> str | None:
    """Why a 16-byte AE title field of an A-ASSOCIATE-RQ is invalid (PS3.5 AE: no control
    characters, no backslash, not only spaces), or ``None``."""
    if not raw.strip(b" \0"):
        return f"{which} AE title is empty or only spaces"
    if any(b < 0x20 or b == 0x7F or b == 0x5C for b in raw.rstrip(b"\0")):
        return f"{which} AE title {printable(raw.strip())!r} holds control characters or a backslash"
    return None


def _associate_problem(pdu: Any) -> tuple[str, int] | None:
    """Why a decoded A-ASSOCIATE-RQ must be rejected, with the A-ASSOCIATE-RJ reason
    (PS3.8 9.3.4: 1 no reason given, 2 application context name not supported), or ``None``.

    PS3.8 9.3.2: one Application Context item, one to 128 Presentation Context items with odd
    and distinct identifiers (1-255), one User Information item.
    """
    if pdu.application_context_name is None:
        return "no Application Context item", 2
    contexts = pdu.presentation_context
    if not contexts:
        return "no Presentation Context item", 1
    if len(contexts) > 128:
        return f"{len(contexts)} presentation contexts (at most 128)", 1
    ids = [cx.context_id for cx in contexts]
    if any(i is None or not 1 <= i <= 255 or i % 2 == 0 for i in ids):
        return f"presentation context identifiers {sorted(set(i for i in ids if i is not None))[:8]} " \
               "are not all odd numbers from 1 to 255", 1
    if len(set(ids)) != len(ids):
        return "duplicate presentation context identifiers", 1
    if pdu.user_information is None:
        return "no User Information item", 1
    for cx in contexts:
        for sub in cx.abstract_transfer_syntax_sub_items:
            uid = getattr(sub, "abstract_syntax_name", None) or getattr(sub, "transfer_syntax_name", None)
            text = str(uid or "").rstrip("\0 ")
            if not _UID.fullmatch(text):
                # Written into log lines and the association log further on: only a real UID.
                return f"presentation context {cx.context_id}: {printable(text)!r} is not a UID", 1
    return None


def reject(provider: Any, problem: str, reason: int, source: int = 1) -> None:
    """Log ``problem`` with the peer, send an A-ASSOCIATE-RJ (permanent; ``source`` 1 is the
    service user, 2 the provider's ACSE) and close."""
    LOGGER.warning("DICOM association from %s rejected: %s", peer_of(provider.assoc), problem)
    sock = provider.socket
    raw = getattr(sock, "socket", None)
    if raw is not None:
        try:
            raw.settimeout(1.0)
            raw.sendall(struct.pack(">BBLBBBB", 0x03, 0, 4, 0, 1, source, reason))
        except OSError:
            pass
    connected = sock.socket is not None and sock._is_connected
    sock.close()
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
        head = _take(self, raw, 6, deadline)
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
        body = _take(self, raw, length, deadline)
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
    if assoc.is_acceptor and pdu_type in (0x02, 0x03):
        refuse(self, f"{name} PDU sent by the requesting side (out of sequence)", REASON_UNEXPECTED_PDU)
        return
    if pdu_type == 0x01 and len(body) >= 68 and assoc.is_acceptor and not assoc.is_established:
        version = struct.unpack(">H", body[:2])[0]
        if not version & 1:  # PS3.8 9.3.2: protocol version, bit 0 set
            reject(self, f"protocol version 0x{version:04X} not supported", 2, source=2)
            return
        # PS3.8 9.3.2: called AE title at bytes 11-26 of the PDU, calling AE title at 27-42.
        problem = _ae_problem(body[4:20], "called") or None
        if problem:
            reject(self, problem, 7)  # called-AE-title-not-recognized
            return
        problem = _ae_problem(body[20:36], "calling")
        if problem:
            reject(self, problem, 3)  # calling-AE-title-not-recognized
            return
        if CALLING_CHECK is not None:
            problem = CALLING_CHECK(body[20:36].decode("ascii", "replace").strip(" \0"),
                                    isinstance(raw, ssl.SSLSocket))
            if problem:
                reject(self, problem, 3)  # calling-AE-title-not-recognized
                return
    data = head + body
    try:
        if pdu_type == 0x01 and assoc.is_acceptor and not assoc.is_established:
            # Checked before pynetdicom's decoder runs its event handlers on it (they fail on
            # a request without User Information, with a logged traceback).
            request = A_ASSOCIATE_RQ()
            request.decode(data)
            problem_reason = _associate_problem(request)
            if problem_reason:
                reject(self, *problem_reason)
                return
            assoc._dolmen_requested = True  # counts against [dicom] max_associations from now on
            # What pynetdicom's _decode_pdu does, without decoding the request a second time.
            evt.trigger(assoc, evt.EVT_DATA_RECV, {"data": data})
            evt.trigger(assoc, evt.EVT_PDU_RECV, {"pdu": request})
            pdu, event = request, "Evt6"
        else:
            pdu, event = self._decode_pdu(bytearray(data))
    except Exception as exc:  # noqa: BLE001 - whatever the decoder raises, the PDU is malformed
        detail = printable(f"{type(exc).__name__}: {exc}".rstrip(": "), 200)
        refuse(self, f"malformed {name} PDU ({detail})", REASON_INVALID_PARAMETER)
        return
    self.event_queue.put(event)
    self._recv_pdu.put(pdu)


#: FSM events raised by our own side (a primitive from the local user), PS3.8 Table 9-10.
LOCAL_EVENTS = {"Evt1", "Evt7", "Evt8", "Evt9", "Evt11", "Evt14", "Evt15"}
#: FSM events raised by a PDU from the peer, by name.
PEER_EVENTS = {"Evt3": "A-ASSOCIATE-AC", "Evt4": "A-ASSOCIATE-RJ", "Evt6": "A-ASSOCIATE-RQ",
               "Evt10": "P-DATA-TF", "Evt12": "A-RELEASE-RQ", "Evt13": "A-RELEASE-RP",
               "Evt19": "an invalid PDU"}
STATES = {"Sta2": "before its A-ASSOCIATE-RQ", "Sta3": "while its A-ASSOCIATE-RQ was being answered",
          "Sta5": "while waiting for the A-ASSOCIATE-AC", "Sta6": "during the association",
          "Sta7": "while waiting for the A-RELEASE-RP", "Sta8": "while the release was being answered"}


def _do_action(original: Any) -> Any:
    def do_action(self: Any, event: str) -> None:
        state = self.current_state
        if (event, state) not in fsm.TRANSITION_TABLE:
            if event in LOCAL_EVENTS and state in ("Sta1", "Sta13"):
                # Our answer came after the peer's protocol error ended the association (an
                # A-ASSOCIATE-AC decided while it sent a P-DATA too early): nothing to do.
                # pynetdicom raised, killing the DUL thread with a traceback.
                return
            if event == "Evt15" and state == "Sta2":
                # Abort asked for a connection that has not sent its A-ASSOCIATE-RQ yet (at
                # shutdown): there is no association to abort, close the connection.
                sock = self.dul.socket
                if sock is not None:
                    sock.close()
                return
        elif event in PEER_EVENTS and fsm.TRANSITION_TABLE[(event, state)] in ("AA-1", "AA-8") \
                and self.dul.assoc.is_acceptor:
            LOGGER.warning("DICOM connection from %s aborted: %s received %s (out of sequence)",
                           peer_of(self.dul.assoc), PEER_EVENTS[event], STATES.get(state, state))
            original(self, event)  # sends the A-ABORT and waits in Sta13 for the peer to close
            # ... which a hostile peer never does: close now rather than at the ARTIM timeout.
            sock = self.dul.socket
            if sock is not None and sock.socket is not None:
                sock.close()  # queues Evt17: Sta13 -> AR-5 -> Sta1
            return
        original(self, event)
    return do_action


def _receive_primitive(original: Any) -> Any:
    def receive_primitive(self: Any, primitive: Any) -> None:
        try:
            original(self, primitive)
        except Exception as exc:  # noqa: BLE001 - a command set pynetdicom cannot read
            # pynetdicom raised inside its state machine, which killed the DUL thread with
            # a traceback; treat it as the invalid PDU it is (Evt19: A-ABORT, close).
            self.message = None
            LOGGER.warning("DICOM connection from %s aborted: invalid DIMSE message (%s)",
                           peer_of(self.assoc), printable(f"{type(exc).__name__}: {exc}", 200))
            self.dul.event_queue.put("Evt19")
    return receive_primitive


def drop_partial_spool(provider: Any) -> None:
    """Close and remove the spool file of a C-STORE still being received by ``provider``
    (a DIMSE service provider) when its association ends: the peer aborted or vanished
    half-way, and pynetdicom leaves the partial file behind."""
    message = getattr(provider, "message", None)
    spool = getattr(message, "_data_set_file", None)
    if spool is None:
        return
    provider.message = None
    try:
        spool.close()
    except OSError:
        pass
    name = getattr(spool, "name", None)
    if name:
        try:
            os.unlink(name)
        except OSError:
            return
        LOGGER.warning("DICOM connection from %s ended in the middle of a C-STORE: partial object removed",
                       peer_of(provider.assoc))


def drop_queued_spools(provider: Any) -> None:
    """Remove the spool files of C-STOREs received whole but never handled: the association
    ended first (a peer releasing or aborting right after its data set). pynetdicom leaves
    them in the message queue, files and descriptors open, for ever."""
    while True:
        try:
            _context_id, primitive = provider.msg_queue.get_nowait()
        except Exception:  # noqa: BLE001 - queue.Empty, or a queue already gone
            return
        spool = getattr(primitive, "_dataset_file", None)
        if spool is None:
            continue
        try:
            spool.close()
        except OSError:
            pass
        try:
            os.unlink(spool.name)
        except (OSError, AttributeError):
            continue
        LOGGER.warning("DICOM connection from %s ended before its C-STORE was handled: object removed",
                       peer_of(provider.assoc))


_local = threading.local()


def _spool_factory(original: Any) -> Any:
    """Wrap the factory of received data set files so that each association knows its own."""
    def factory(*args: Any, **kwargs: Any) -> Any:
        spool = original(*args, **kwargs)
        spools = getattr(_local, "spools", None)
        if spools is not None:
            spools.append(spool)
        return spool
    factory._dolmen_tracks = True  # type: ignore[attr-defined]
    return factory


def _drop_leftovers(assoc: Any) -> None:
    """Remove every spool file of ``assoc`` that still exists once the association is over.

    A handled C-STORE consumes its file (ingest renames it, pynetdicom removes what is
    left), so a file still there was never handled: a data set cut short, a second command
    set replacing the first before its data set was complete, a message left in the queue.
    """
    for spool in getattr(assoc, "_dolmen_spools", ()):
        try:
            spool.close()
        except OSError:
            pass
        name = getattr(spool, "name", None)
        if name and os.path.exists(name):
            try:
                os.unlink(name)
            except OSError:
                continue
            LOGGER.warning("DICOM connection from %s ended with an unhandled C-STORE data set: removed",
                           peer_of(assoc))


def _association_run(original: Any) -> Any:
    def run(self: Any) -> None:
        try:
            original(self)
        finally:
            # Both reactors have stopped: what is still spooled will never be handled.
            dimse_provider = getattr(self, "dimse", None)
            if dimse_provider is not None:
                drop_partial_spool(dimse_provider)
                drop_queued_spools(dimse_provider)
            _drop_leftovers(self)
    return run


def _run_reactor(original: Any) -> Any:
    def run_reactor(self: Any) -> None:
        # Data set files are created in this (the DUL) thread: note them on the association.
        _local.spools = self.assoc._dolmen_spools = []
        try:
            original(self)
        finally:
            dimse_provider = getattr(self.assoc, "dimse", None)
            if dimse_provider is not None:
                drop_partial_spool(dimse_provider)
    return run_reactor


def _send_pdu(original: Any) -> Any:
    def send_pdu(self: Any, primitive: Any) -> None:
        original(self, primitive)
        # Our answer is activity too. pynetdicom restarted the network timeout only on what
        # the peer sent, so a C-STORE whose ingest took longer than [dicom] network_timeout
        # (a busy index) was answered and then aborted as "idle", the peer having waited for
        # that very answer.
        timer = getattr(self, "_idle_timer", None)
        if timer is not None:
            timer.restart()
    return send_pdu


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

    def make_server(self, address: Any, ae_title: str | None = None, contexts: Any = None,
                    ssl_context: Any = None, evt_handlers: Any = None, server_class: Any = None,
                    **kwargs: Any) -> Any:
        """Servers are :class:`DolmenAssociationServer` (the public ``server_class`` hook)."""
        if server_class in (None, transport.ThreadedAssociationServer):
            server_class = DolmenAssociationServer
            kwargs.setdefault("request_handler", DolmenRequestHandler)
        return super().make_server(address, ae_title=ae_title, contexts=contexts, ssl_context=ssl_context,
                                   evt_handlers=evt_handlers, server_class=server_class, **kwargs)

    def shutdown(self) -> None:
        """Stop the servers and abort every association, waiting connections included."""
        super().shutdown()
        for assoc in self.active_associations_all:
            try:
                assoc.abort()
            except Exception:  # noqa: BLE001 - shutting down regardless
                pass


class DolmenRequestHandler(transport.RequestHandler):
    """pynetdicom's request handler, noting when each connection was accepted."""

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        assoc._dolmen_accepted = time.monotonic()  # type: ignore[attr-defined]
        return assoc


class DolmenAssociationServer(transport.ThreadedAssociationServer):
    """pynetdicom's threaded server with a deeper listen backlog and a cap on idle connections."""

    # socketserver listens with a backlog of 5: the sixth of a burst of connections had its
    # SYN dropped and waited a second for the retransmission.
    request_queue_size = LISTEN_BACKLOG

    def get_request(self) -> tuple[Any, Any]:
        """Accept a connection; a TLS one is wrapped without its handshake, which pynetdicom did
        here, in the one thread that accepts every connection: a client that never finished its
        handshake stopped the TLS port for everyone. It runs in the connection's own thread."""
        client, address = self.socket.accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket) and not self._handshake(request, client_address):
            return
        super().process_request_thread(request, client_address)

    def _handshake(self, sock: ssl.SSLSocket, address: Any) -> bool:
        """The TLS handshake within the ACSE timeout; on failure one log line naming the peer."""
        from dicomnode.net import tls

        previous = sock.gettimeout()
        sock.settimeout(self.ae.acse_timeout or DEFAULT_DEADLINE)
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        try:
            sock.do_handshake()
        except (OSError, ValueError) as exc:  # ssl.SSLError, timeouts, resets
            reason = tls.describe(exc)
            LOGGER.warning("DICOM TLS connection from %s closed: handshake failed: %s", peer, reason)
            try:
                sock.close()
            except OSError:
                pass
            if TLS_FAILED is not None:
                TLS_FAILED(peer, reason)
            return False
        sock.settimeout(previous)
        return True

    def verify_request(self, request: Any, client_address: Any) -> bool:
        all_assocs = getattr(self.ae, "active_associations_all", None)
        pending = sorted((a for a in (all_assocs or []) if a.is_acceptor and not requested(a)),
                         key=lambda a: getattr(a, "_dolmen_accepted", 0.0))
        # Too many connections wait for their A-ASSOCIATE-RQ: close the one that waited
        # longest rather than refuse the newcomer. A modality sends its request within
        # milliseconds of connecting, so idle connections cannot starve it.
        for assoc in pending[:max(0, len(pending) - MAX_PENDING + 1)]:
            LOGGER.warning("DICOM connection from %s closed: %d connections wait for their "
                           "A-ASSOCIATE-RQ, this one the longest", peer_of(assoc), len(pending))
            sock = getattr(assoc.dul, "socket", None)
            if sock is not None:
                sock.close()
        return bool(super().verify_request(request, client_address))


#: pynetdicom loggers whose records come from decoding what a peer sent.
PEER_INPUT_LOGGERS = ("pynetdicom.dimse", "pynetdicom.dimse_messages", "pynetdicom.dimse_primitives",
                      "pynetdicom.dul", "pynetdicom.fsm", "pynetdicom.utils", "pynetdicom.acse",
                      "pynetdicom.pdu", "pynetdicom.pdu_items", "pynetdicom.pdu_primitives")


class StandardHandlerFilter(logging.Filter):
    """pynetdicom's own logging handlers fail on some malformed messages (a command set of
    no known kind): the traceback ``pynetdicom.events`` logs for them is dropped; those of
    our handlers are kept."""

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "event handler 'standard_" in message:
            self._local.standard = True
        elif record.exc_info and getattr(self._local, "standard", False):
            record.exc_info = None
            record.exc_text = None
            record.msg, record.args = printable(message, 300), ()
            self._local.standard = False
        return True


class PeerInputFilter(logging.Filter):
    """One escaped line for pynetdicom's complaints about what a peer sent.

    pynetdicom writes the peer's text into its messages as is (a calling AE title with a
    newline forges a log line) and adds a traceback to some (an over-long UID in a command
    set): the traceback says nothing the line does not, and our own line names the peer.
    Handler errors (``pynetdicom.events``, ``pynetdicom.service_class``) keep theirs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = printable(record.getMessage(), 500)
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        return True


def apply() -> None:
    """Install the hardening (idempotent); after :func:`dicomnode.net.latency.apply` and
    :func:`dicomnode.net.scp.install_spool`, so that the guard around DIMSE decoding wraps
    the latency fast path and the spool files tracked are the SCP's."""
    global _applied
    with _lock:
        if _applied:
            return
        dul.DULServiceProvider._read_pdu_data = _read_pdu_data  # type: ignore[method-assign]
        dul.DULServiceProvider.run_reactor = _run_reactor(dul.DULServiceProvider.run_reactor)  # type: ignore[method-assign]
        factory = dimse_messages.NamedTemporaryFile  # type: ignore[attr-defined]
        if not getattr(factory, "_dolmen_tracks", False):
            dimse_messages.NamedTemporaryFile = _spool_factory(factory)  # type: ignore[attr-defined]
        dul.DULServiceProvider.send_pdu = _send_pdu(dul.DULServiceProvider.send_pdu)  # type: ignore[method-assign]
        association.Association.run = _association_run(association.Association.run)  # type: ignore[method-assign]
        provider = dimse.DIMSEServiceProvider
        provider.receive_primitive = _receive_primitive(provider.receive_primitive)  # type: ignore[method-assign]
        for name in PEER_INPUT_LOGGERS:
            logging.getLogger(name).addFilter(PeerInputFilter())
        logging.getLogger("pynetdicom.events").addFilter(StandardHandlerFilter())
        fsm.StateMachine.do_action = _do_action(fsm.StateMachine.do_action)  # type: ignore[method-assign]
        _applied = True
