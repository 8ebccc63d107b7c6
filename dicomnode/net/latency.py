"""Latency fixes for pynetdicom's polling reactors, applied once by the sidecar and the SCU.

pynetdicom's DUL and association reactors poll: each loop sleeps 1 ms, the socket is checked
with a zero-timeout ``select``, and a received C-STORE is written to its spool file through
pydicom's general-purpose file-meta writer. A C-STORE round trip crosses several of those
sleeps: measured with DCMTK's storescu against a do-nothing handler, pynetdicom took 6.5 ms
per 256×256 instance where DCMTK's own storescp takes 0.6 ms.

What changes here, behaviour otherwise unchanged:

* The DUL thread waits *in* ``select`` on its socket and on a wake-up pipe that is written
  whenever a primitive is queued for sending, so incoming PDUs are read and outgoing ones
  sent at once, and an idle association wakes 100 times a second instead of 1,000.
* The acceptor's association reactor waits on its DIMSE message queue instead of sleeping
  1 ms before each look at it, and is woken there when the peer's A-RELEASE-RQ or A-ABORT
  arrives (it only looked for those between two waits, so every release cost the
  requester up to 5 ms).
* An association shares the AE's supported presentation contexts instead of taking a
  ``deepcopy`` of them (0.2 s per association with every storage SOP class).
* The file meta of a received dataset is written directly as bytes.
* A PDU is read from the socket in large reads rather than 4 KiB ones (33 system calls
  for a 132 KiB instance).
* C-STORE, the one message that arrives thousands of times per association, skips pydicom:
  the C-STORE-RQ command set is decoded and the C-STORE-RSP command set encoded directly as
  bytes (both are Implicit VR Little Endian, PS3.7 6.3.1 and 9.3.1). pynetdicom built a
  pydicom Dataset for each, encoded the response twice (once to measure its group length)
  and ran its logging handlers, which format messages nobody logs at our level: ~3 ms of
  CPU per instance. Anything unusual (an unknown element, a multi-valued or empty UID, a
  user handler bound to ``EVT_DIMSE_RECV``/``EVT_DIMSE_SENT``, pynetdicom logging at INFO,
  an Offending Element) takes pynetdicom's own path. The C-STORE-RSP is written to the
  socket by the thread that served the request instead of being queued to the DUL thread.
* A thread sending C-STOREs (C-MOVE and C-GET sub-operations, send jobs) may *park* the DUL
  thread (:func:`park`) and read each C-STORE-RSP from the socket itself: handing every
  response from the DUL thread to the sender cost ~100 µs of a ~430 µs sub-operation. Any
  other PDU is given back (:func:`unpark`) and read by the DUL thread as usual.
"""
from __future__ import annotations

import copy
import logging
import os
import queue
import select
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom import _config as pynetdicom_config
from pynetdicom import association
from pynetdicom import dimse
from pynetdicom import dimse_messages
from pynetdicom import dul
from pynetdicom import evt
from pynetdicom import transport
from pynetdicom._handlers import standard_dimse_recv_handler
from pynetdicom._handlers import standard_dimse_sent_handler
from pynetdicom._handlers import standard_pdu_sent_handler
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import A_ABORT
from pynetdicom.pdu_primitives import A_P_ABORT
from pynetdicom.pdu_primitives import A_RELEASE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext

LOGGER_PYNETDICOM = logging.getLogger("pynetdicom")

RECV_CHUNK = 256 * 1024  # largest single read; bounds what one recv() allocates
IDLE_WAIT = 0.01  # longest a DUL thread sleeps when nothing happens (timers, kill flag)
QUEUE_WAIT = 0.005  # longest the association reactor waits for a DIMSE message per loop
_applied = False
_lock = threading.Lock()


class _TimeShim:
    """``time`` for a pynetdicom module whose reactor sleeps ``skipped`` seconds per loop.

    In pynetdicom.association the 1 ms poll sleep becomes a no-op (the patched ``get_msg``
    below blocks on the queue instead); in pynetdicom.dul the ``sleep(0)`` left by a zero
    ``_run_loop_delay`` (the wait happens in ``select``) would be a system call per loop.
    """

    def __init__(self, skipped: float) -> None:
        self.skipped = skipped

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        if seconds != self.skipped:
            time.sleep(seconds)


def _stop_dul(self: Any) -> bool:
    """``DULServiceProvider.stop_dul``, whose wait for the reactor to end spun on ``sleep(0)``
    (a no-op once :class:`_TimeShim` is installed in pynetdicom.dul): wake it and wait."""
    if self.state_machine.current_state != "Sta1":
        return False
    self._kill_thread = True
    if hasattr(self, "_wake_lock"):
        _wake(self)
    while self.is_alive():
        self.join(0.001)
    return True


def _copy_contexts(value: Any, memo: Any = None) -> Any:
    """``deepcopy`` for pynetdicom.transport, which copies the AE's supported contexts for
    every association (~0.2 s by ``deepcopy`` for the ~180 storage contexts, 0.8 ms even
    field by field) before the first PDU is answered. The list is shared instead: the
    association only reads it (negotiation builds new contexts for its results), and Dolmen
    never changes an AE's contexts once its server runs. Anything else goes to ``deepcopy``.
    """
    if isinstance(value, list) and all(type(cx) is PresentationContext for cx in value):
        return value
    return copy.deepcopy(value, memo)


def _get_msg(self: Any, block: bool = False) -> Any:
    try:
        return self.msg_queue.get(block=True, timeout=self.dimse_timeout if block else QUEUE_WAIT)
    except queue.Empty:
        return None, None


class _UserQueue(queue.Queue):  # type: ignore[type-arg]
    """A DUL's ``to_user_queue`` that wakes the acceptor's association reactor, waiting on its
    DIMSE message queue (:func:`_get_msg`), when a release or an abort arrives.

    The wake-up is ``(None, None)``, what pynetdicom itself queues there on an abort; the
    reactor takes it for "no message" and goes on to its release and abort checks.
    """

    def __init__(self, provider: Any) -> None:
        super().__init__()
        self.provider = provider

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        if type(item) in (A_RELEASE, A_ABORT, A_P_ABORT):
            assoc = getattr(self.provider, "assoc", None)
            if assoc is not None and assoc.is_acceptor and getattr(assoc, "dimse", None) is not None:
                assoc.dimse.msg_queue.put((None, None))


def _wake(provider: Any) -> None:
    with provider._wake_lock:
        if provider._wake_w >= 0:
            try:
                os.write(provider._wake_w, b"\0")
            except (BlockingIOError, OSError):
                pass  # the pipe is full: the reactor is already due to wake


def park(provider: Any) -> bool:
    """Make the DUL thread of ``provider`` stop reading its socket, so that the calling thread
    may read the next PDUs itself (the response to a C-STORE it wrote, without the handoff
    from the DUL thread: ~15% of a C-MOVE sub-operation). True once the DUL thread is
    parked; False when these patches are not applied or it did not answer within a second.
    Undo with :func:`unpark`.
    """
    if getattr(provider, "_wake_w", -1) < 0 or not provider.is_alive():
        return False
    provider._park_ack.clear()
    provider._parked = True
    _wake(provider)
    if provider._park_ack.wait(1.0):
        return True
    unpark(provider)
    return False


def unpark(provider: Any, unread: bytes = b"") -> None:
    """Let the DUL thread read the socket again, starting with ``unread``: bytes the parked
    reader took from the socket but leaves to pynetdicom (any PDU it does not handle)."""
    if unread:
        provider._unread = bytes(unread) + provider._unread
    provider._parked = False
    _wake(provider)


def _parked_wait(provider: Any) -> bool:
    """The DUL's socket check while parked: acknowledge, then wait on the wake-up pipe only."""
    provider._park_ack.set()
    wake_r = provider._wake_r
    if wake_r < 0:
        return False
    try:
        ready, _, _ = select.select([wake_r], [], [], IDLE_WAIT)
    except (OSError, ValueError):
        return False
    if ready:
        try:
            while os.read(wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
    return False


def _ready(self: Any) -> bool:
    provider = self.assoc.dul
    if self.socket is None or self._is_connected is False:
        time.sleep(0.001)
        return False
    # Wait only when the DUL has nothing else to do.
    idle = provider.event_queue.empty() and provider.to_provider_queue.empty()
    wake_r = getattr(provider, "_wake_r", -1)
    watch: list[Any] = [self.socket] + ([wake_r] if wake_r >= 0 else [])
    try:
        ready, _, _ = select.select(watch, [], [], IDLE_WAIT if idle else 0)
    except (OSError, TimeoutError, ValueError):
        self.event_queue.put("Evt17")  # Evt17: transport connection closed
        return False
    if wake_r in ready:
        try:
            while os.read(wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
    return self.socket in ready


def _recv(self: Any, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv``: read ``nr_bytes``, fewer if the peer closes, in large reads."""
    bytestream = bytearray()
    while len(bytestream) < nr_bytes:
        data = self.socket.recv(min(nr_bytes - len(bytestream), RECV_CHUNK))
        if not data:  # the connection is broken: return what we have, as pynetdicom does
            break
        bytestream += data
    return bytestream


def _meta_element(group_element: int, vr: bytes, value: bytes) -> bytes:
    tag = group_element.to_bytes(4, "little")
    tag = tag[2:] + tag[:2]  # group then element, each little endian
    if vr == b"OB":
        return tag + vr + b"\0\0" + len(value).to_bytes(4, "little") + value
    return tag + vr + len(value).to_bytes(2, "little") + value


def _uid(value: str) -> bytes:
    raw = str(value).encode("ascii")
    return raw + (b"\0" if len(raw) % 2 else b"")


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """The File Meta Information group (PS3.10 7.1), explicit VR little endian, as bytes."""
    version = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    version += b" " if len(version) % 2 else b""
    body = b"".join((
        _meta_element(0x00020001, b"OB", b"\x00\x01"),
        _meta_element(0x00020002, b"UI", _uid(sop_class_uid)),
        _meta_element(0x00020003, b"UI", _uid(sop_instance_uid)),
        _meta_element(0x00020010, b"UI", _uid(transfer_syntax)),
        _meta_element(0x00020012, b"UI", _uid(PYNETDICOM_IMPLEMENTATION_UID)),
        _meta_element(0x00020013, b"SH", version),
    ))
    return _meta_element(0x00020000, b"UL", len(body).to_bytes(4, "little")) + body


def _create_file_meta(**kwargs: Any) -> dict[str, Any]:
    return kwargs


def _write_file_meta_info(fp: Any, meta: dict[str, Any], *args: Any, **kwargs: Any) -> None:
    fp.write(encode_file_meta(meta["sop_class_uid"], meta["sop_instance_uid"], meta["transfer_syntax"]))


# -- C-STORE fast path ------------------------------------------------------------------------

_ELEMENT = struct.Struct("<HHL")  # Implicit VR Little Endian element header: group, element, length
_STORE_RQ = 0x0001  # (0000,0100) Command Field of a C-STORE-RQ (PS3.7 E.1)
_STORE_RSP = 0x8001  # ... and of a C-STORE-RSP
_NO_DATASET = 0x0101  # (0000,0800) Command Data Set Type: no data set follows
# The elements a C-STORE-RQ may hold (PS3.7 9.3.1.1) and their VRs; any other makes the
# request go through pynetdicom's decoder.
_STORE_RQ_VR = {
    0x0000: "UL",  # Command Group Length
    0x0002: "UI",  # Affected SOP Class UID
    0x0100: "US",  # Command Field
    0x0110: "US",  # Message ID
    0x0700: "US",  # Priority
    0x0800: "US",  # Command Data Set Type
    0x1000: "UI",  # Affected SOP Instance UID
    0x1030: "AE",  # Move Originator Application Entity Title
    0x1031: "US",  # Move Originator Message ID
}
_STORE_RQ_REQUIRED = frozenset({0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000})
_SIZE = {"UL": 4, "US": 2}


def parse_command_set(raw: bytes) -> dict[int, bytes] | None:
    """The elements of an encoded command set, ``{element number: value bytes}``.

    ``None`` when ``raw`` is not a well-formed group 0000 in Implicit VR Little Endian
    (PS3.7 6.3.1): an element outside group 0000, a length past the end, a repeated element.
    """
    elements: dict[int, bytes] = {}
    pos, end = 0, len(raw)
    while pos < end:
        if end - pos < 8:
            return None
        group, element, length = _ELEMENT.unpack_from(raw, pos)
        pos += 8
        if group != 0 or length > end - pos or element in elements:
            return None
        elements[element] = raw[pos:pos + length]
        pos += length
    return elements


def _store_request(elements: dict[int, bytes]) -> C_STORE | None:
    """The C-STORE-RQ primitive for a decoded command set, or ``None`` to let pynetdicom decode it.

    Values are converted as pydicom converts them (UI and AE text in its default encoding,
    trailing padding removed) and set through the primitive's own validating setters, so
    the primitive is the one ``DIMSEMessage.message_to_primitive`` would build.
    """
    if not elements.keys() <= _STORE_RQ_VR.keys() or not _STORE_RQ_REQUIRED <= elements.keys():
        return None
    values: dict[int, Any] = {}
    for element, raw in elements.items():
        vr = _STORE_RQ_VR[element]
        if vr in _SIZE:
            if len(raw) != _SIZE[vr]:
                return None  # pydicom would read several values: a rarity left to it
            values[element] = int.from_bytes(raw, "little")
            continue
        text = raw.decode("latin-1")  # pydicom's default encoding for UI and AE
        if "\\" in text:
            return None  # multi-valued: pynetdicom warns and keeps the first value
        text = text.rstrip("\0 ") if vr == "UI" else text.strip()
        if vr == "UI" and not text:
            return None
        values[element] = text
    if values[0x0100] != _STORE_RQ or values[0x0800] == _NO_DATASET:
        return None
    request = C_STORE()
    try:
        request.AffectedSOPClassUID = values[0x0002]
        request.MessageID = values[0x0110]
        request.Priority = values[0x0700]
        request.AffectedSOPInstanceUID = values[0x1000]
        if 0x1030 in values:
            request.MoveOriginatorApplicationEntityTitle = values[0x1030]
        if 0x1031 in values:
            request.MoveOriginatorMessageID = values[0x1031]
    except (TypeError, ValueError):
        return None  # pynetdicom's decoder reports it as an invalid message
    return request


def _quiet(assoc: Any, event: Any, standard: Any) -> bool:
    """True when only pynetdicom's logging handler is bound to ``event``."""
    return all(handler is standard for handler, _args in assoc.get_handlers(event))


def _start_store(provider: Any, primitive: Any) -> tuple[Any, Any] | None:
    """Begin a C-STORE-RQ whose command set is in ``primitive``: ``(message, more)`` or ``None``.

    Mirrors ``DIMSEMessage.decode_msg`` for the final command fragment: the message takes
    the C-STORE-RQ class, and with ``STORE_RECV_CHUNKED_DATASET`` the data set goes to a
    spool file that starts with a preamble and the File Meta Information (PS3.10 7.1).
    ``more`` is a P-DATA with the data fragments that came in the same PDU, if any.
    ``None`` leaves the primitive to pynetdicom, untouched.
    """
    if type(primitive) is not P_DATA:
        return None
    pdvs = primitive.presentation_data_value_list
    if not pdvs:
        return None
    context_id, data = pdvs[0]
    if len(data) < 2 or data[0] & 3 != 3:  # not a whole command set in one fragment (PS3.8 E.2)
        return None
    assoc = provider.assoc
    if LOGGER_PYNETDICOM.isEnabledFor(logging.INFO) \
            or not _quiet(assoc, evt.EVT_DIMSE_RECV, standard_dimse_recv_handler):
        return None  # someone wants the decoded command set
    elements = parse_command_set(bytes(data[1:]))
    cx = assoc._accepted_cx.get(context_id)
    request = _store_request(elements) if elements is not None and cx is not None else None
    if request is None:
        return None
    msg = dimse_messages.DIMSEMessage()
    msg.__class__ = dimse_messages.C_STORE_RQ
    msg.context_id = context_id
    msg._dolmen_request = request  # type: ignore[attr-defined]
    if pynetdicom_config.STORE_RECV_CHUNKED_DATASET:
        spool: Any = dimse_messages.NamedTemporaryFile(  # type: ignore[attr-defined]
            delete=False, mode="wb", suffix=".dcm")
        msg._data_set_file = spool
        msg._data_set_path = Path(spool.name)
        spool.write(b"\0" * 128 + b"DICM" + encode_file_meta(
            str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID), cx.transfer_syntax[0]))
    more = None
    if len(pdvs) > 1:
        more = P_DATA()
        more.presentation_data_value_list.extend(pdvs[1:])
    return msg, more


def _continue_store(provider: Any, msg: Any, primitive: Any) -> None:
    """Add data fragments to a fast C-STORE-RQ; queue the request once the data set is whole."""
    if not msg.decode_msg(primitive, provider.assoc):
        return
    request = msg._dolmen_request
    request.DataSet = msg.data_set
    request._context_id = msg.context_id
    request._dataset_path = msg._data_set_path
    request._dataset_file = msg._data_set_file
    provider.message = None
    provider.msg_queue.put((msg.context_id, request))


def _receive_primitive(original: Any) -> Any:
    def receive_primitive(self: Any, primitive: Any) -> None:
        msg = self.message
        if msg is None:
            started = _start_store(self, primitive)
            if started is None:
                original(self, primitive)
                return
            msg, more = started
            self.message = msg
            if more is not None:
                _continue_store(self, msg, more)
        elif getattr(msg, "_dolmen_request", None) is None:
            original(self, primitive)
        else:
            _continue_store(self, msg, primitive)
    return receive_primitive


def _text_element(element: int, value: bytes, pad: bytes) -> bytes:
    if len(value) % 2:
        value += pad
    return _ELEMENT.pack(0, element, len(value)) + value


def _us(element: int, value: int) -> bytes:
    return _ELEMENT.pack(0, element, 2) + value.to_bytes(2, "little")


def encode_store_response(rsp: C_STORE) -> bytes | None:
    """The C-STORE-RSP command set (PS3.7 9.3.1.2) as Implicit VR Little Endian bytes.

    The same bytes pynetdicom writes for the primitive, or ``None`` when it holds something
    this encoder leaves to pynetdicom (an Offending Element, a non-ASCII Error Comment, a
    status or message ID out of range).
    """
    status, msg_id, comment = rsp.Status, rsp.MessageIDBeingRespondedTo, rsp.ErrorComment
    if rsp.OffendingElement is not None or not isinstance(status, int) or not isinstance(msg_id, int):
        return None
    if not (0 <= status <= 0xFFFF and 0 <= msg_id <= 0xFFFF):
        return None
    parts = []
    if rsp.AffectedSOPClassUID is not None:
        parts.append(_text_element(0x0002, str(rsp.AffectedSOPClassUID).encode("ascii", "strict"), b"\0"))
    parts += [_us(0x0100, _STORE_RSP), _us(0x0120, msg_id), _us(0x0800, _NO_DATASET), _us(0x0900, status)]
    if comment is not None:
        try:
            parts.append(_text_element(0x0902, str(comment).encode("ascii"), b" "))
        except UnicodeEncodeError:
            return None
    if rsp.AffectedSOPInstanceUID is not None:
        parts.append(_text_element(0x1000, str(rsp.AffectedSOPInstanceUID).encode("ascii", "strict"), b"\0"))
    body = b"".join(parts)
    return _ELEMENT.pack(0, 0x0000, 4) + len(body).to_bytes(4, "little") + body


def _send_msg(original: Any) -> Any:
    def send_msg(self: Any, primitive: Any, context_id: int) -> None:
        if type(primitive) is C_STORE and primitive.MessageIDBeingRespondedTo is not None \
                and _quiet(self.assoc, evt.EVT_DIMSE_SENT, standard_dimse_sent_handler):
            try:
                encoded = encode_store_response(primitive)
            except UnicodeEncodeError:
                encoded = None
            max_pdu = self.maximum_pdu_size
            if encoded is not None and (not max_pdu or len(encoded) <= max_pdu - 6):
                if _send_direct(self.dul, context_id, encoded):
                    return
                pdata = P_DATA()
                # The last (and only) command fragment: bits xxxxxx11 (PS3.8 E.2).
                pdata.presentation_data_value_list.append((context_id, b"\x03" + encoded))
                self.dul.send_pdu(pdata)
                return
        original(self, primitive, context_id)
    return send_msg


_PDATA_HEADER = struct.Struct(">BBLLBB")  # P-DATA-TF with one PDV item (PS3.8 9.3.5, E.2)


def _send_direct(provider: Any, context_id: int, command: bytes) -> bool:
    """Write a one-fragment command set as a P-DATA-TF PDU straight to the socket.

    Queued to the DUL thread, the response waited for that thread to wake, convert, encode
    and send it (~0.3 ms per C-STORE). Written here by the thread serving the request, as
    dicomnode.net.scu writes its responses: in an established association (Sta6) the DUL
    thread sends only what this thread queues, and nothing is queued (checked), so the two
    never write at once. ``False`` (queue it as usual) when anything is unusual: a state
    other than Sta6, something queued, a TLS socket, a handler bound to the PDU or data
    sent events. A failed write is reported to the DUL as pynetdicom's own send does
    (Evt17, transport connection closed).
    """
    assoc_socket = provider.socket
    raw = getattr(assoc_socket, "socket", None)
    if type(raw) is not socket.socket or provider.state_machine.current_state != "Sta6" \
            or not provider.to_provider_queue.empty() \
            or not _quiet(provider.assoc, evt.EVT_PDU_SENT, standard_pdu_sent_handler) \
            or provider.assoc.get_handlers(evt.EVT_DATA_SENT):
        return False
    header = _PDATA_HEADER.pack(0x04, 0, len(command) + 6, len(command) + 2, context_id, 0x03)
    try:
        raw.sendall(header + command)
    except OSError:
        assoc_socket.event_queue.put("Evt17")
    # An answer is activity, as for a queued PDU (dicomnode.net.hardening): the network timeout
    # starts again from here, not from the request, whose ingest may have taken long.
    timer = getattr(provider, "_idle_timer", None)
    if timer is not None:
        timer.restart()
    return True


def apply() -> None:
    """Install the patches (idempotent)."""
    global _applied
    with _lock:
        if _applied:
            return
        original_init = dul.DULServiceProvider.__init__
        original_run = dul.DULServiceProvider.run_reactor
        original_send = dul.DULServiceProvider.send_pdu

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            original_init(self, *args, **kwargs)
            self.to_user_queue = _UserQueue(self)
            self._run_loop_delay = 0  # the wait now happens inside select()
            self._wake_lock = threading.Lock()
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            self._parked = False  # see park()
            self._park_ack = threading.Event()
            self._unread = b""

        def run_reactor(self: Any) -> None:
            try:
                original_run(self)
            finally:
                with self._wake_lock:
                    for fd in (self._wake_r, self._wake_w):
                        if fd >= 0:
                            os.close(fd)
                    self._wake_r = self._wake_w = -1

        def send_pdu(self: Any, primitive: Any) -> None:
            original_send(self, primitive)
            _wake(self)

        dul.DULServiceProvider.__init__ = init  # type: ignore[method-assign]
        dul.DULServiceProvider.run_reactor = run_reactor  # type: ignore[method-assign]
        dul.DULServiceProvider.send_pdu = send_pdu  # type: ignore[method-assign]
        original_ready = transport.AssociationSocket.ready

        def ready(self: Any) -> bool:
            # A TLS socket may hold decrypted bytes select() cannot see (the rest of a record
            # already read): those first, then the same wait in select() as a plain socket.
            # (pynetdicom's own check slept 1 ms per poll: TLS ingest ran at 0.4x plain.)
            provider = self.assoc.dul
            if provider._unread:
                return True
            if provider._parked:
                return _parked_wait(provider)
            sock = self.socket
            if transport._HAS_SSL and isinstance(sock, transport.ssl.SSLSocket):  # type: ignore[attr-defined]
                try:
                    if sock.pending():
                        return True
                except (OSError, ValueError):
                    return bool(original_ready.fget(self))  # type: ignore[attr-defined]
            return _ready(self)

        transport.AssociationSocket.ready = property(ready)  # type: ignore[method-assign,assignment]
        transport.AssociationSocket.recv = _recv  # type: ignore[method-assign]
        dimse.DIMSEServiceProvider.get_msg = _get_msg  # type: ignore[method-assign]
        association.time = _TimeShim(0.001)  # type: ignore[attr-defined,assignment]
        dul.time = _TimeShim(0)  # type: ignore[attr-defined,assignment]
        dul.DULServiceProvider.stop_dul = _stop_dul  # type: ignore[method-assign]
        transport.deepcopy = _copy_contexts  # type: ignore[attr-defined,assignment]
        dimse_messages.create_file_meta = _create_file_meta  # type: ignore[attr-defined,assignment]
        dimse_messages.write_file_meta_info = _write_file_meta_info  # type: ignore[attr-defined,assignment]
        provider = dimse.DIMSEServiceProvider
        provider.receive_primitive = _receive_primitive(provider.receive_primitive)  # type: ignore[method-assign]
        provider.send_msg = _send_msg(provider.send_msg)  # type: ignore[method-assign]
        _applied = True
