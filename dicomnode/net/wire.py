"""The DIMSE wire codec for the hot paths: C-STORE requests written straight from the file,
and C-STORE/C-FIND/C-MOVE/C-GET responses encoded and parsed without pydicom (PS3.7 E, PS3.8 9.3.5).

The SCU writes C-STOREs and reads their responses here; the SCP writes its Q/R responses here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import split_dataset
from pynetdicom.presentation import PresentationContext

from dicomnode.net import latency
from dicomnode.net.hardening import _read_exact
from dicomnode.net.hardening import _Timeout

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendItem:
    """One stored instance to send.

    ``path`` is a local file; or, with ``store`` set, the object's name in that store, made a
    local file by :meth:`local` only when its turn comes (an object store fetches it then).
    """

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    size: int = 0
    store: Any = field(default=None, compare=False, repr=False)

    def local(self) -> SendItem:
        """This item with ``path`` a local file (fetched from the object store if need be)."""
        if self.store is None:
            return self
        return SendItem(str(self.store.path(self.path)), self.sop_class_uid, self.sop_instance_uid,
                        self.transfer_syntax_uid, self.size)


class _HeldCheckpoint(threading.Event):
    """An association's reactor checkpoint that stays cleared: ``set()`` does nothing."""

    def set(self) -> None:
        pass


@contextlib.contextmanager
def _reactor_held(assoc: Association) -> Iterator[None]:
    """Keep the association's reactor thread paused during a run of C-STOREs.

    pynetdicom unpauses the reactor after each response; the reactor then looks at the DIMSE
    queue once more while ``send_c_store`` may already be waiting on it for the next
    response, and when the reactor takes that response the C-STORE is lost and the
    association aborted. (The window is tiny in pynetdicom but widens to the queue wait of
    :mod:`dicomnode.net.latency`.) Held paused, the reactor cannot take it. Uses pynetdicom 3's
    ``_reactor_checkpoint`` and ``_is_paused``.
    """
    original = assoc._reactor_checkpoint
    original.clear()
    deadline = time.monotonic() + 2.0
    # Paused means blocked on the cleared checkpoint: it finishes at most one loop first.
    while not assoc._is_paused and time.monotonic() < deadline:
        time.sleep(0.0005)
    time.sleep(0.01)
    while not assoc._is_paused and time.monotonic() < deadline:
        time.sleep(0.0005)
    assoc._reactor_checkpoint = _HeldCheckpoint()
    try:
        yield
    finally:
        assoc._reactor_checkpoint = original
        original.set()


# -- C-STORE requests written straight to the socket ------------------------------------------
#
# pynetdicom hands every P-DATA PDU of a message to its DUL thread through a queue (and encodes
# the command set with pydicom): a 128 KiB instance to a peer with DCMTK's 16 KiB PDUs is nine
# queue round trips. A file stored in the accepted transfer syntax needs no encoding at all,
# so its PDUs are built here and written with one sendall per MiB. Only for associations
# whose reactor is held (``_reactor_held``) or that are served by the calling thread (C-GET):
# then nothing else writes to the socket meanwhile. The response comes back through
# pynetdicom's DIMSE queue as usual.

_ELEMENT = struct.Struct("<HHI")  # Implicit VR Little Endian element header (group, element, length)
_PDV = struct.Struct(">BBIIBB")  # P-DATA-TF PDU header + PDV item header (PS3.8 9.3.5)
_SEND_BATCH = 1 << 20


def _command_element(element: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0, element, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def store_command(sop_class_uid: str, sop_instance_uid: str, msg_id: int,
                  originator: tuple[str, int] | None = None) -> bytes:
    """The C-STORE-RQ command set (PS3.7 9.3.1.1) as Implicit VR Little Endian bytes."""
    parts = [
        _command_element(0x0002, _padded(sop_class_uid, b"\0")),
        _command_element(0x0100, (0x0001).to_bytes(2, "little")),  # Command Field: C-STORE-RQ
        _command_element(0x0110, msg_id.to_bytes(2, "little")),
        _command_element(0x0700, (0x0000).to_bytes(2, "little")),  # Priority: MEDIUM
        _command_element(0x0800, (0x0000).to_bytes(2, "little")),  # Command Data Set Type: present
        _command_element(0x1000, _padded(sop_instance_uid, b"\0")),
    ]
    if originator is not None:
        parts.append(_command_element(0x1030, _padded(originator[0][:16], b" ")))
        parts.append(_command_element(0x1031, (originator[1] & 0xFFFF).to_bytes(2, "little")))
    body = b"".join(parts)
    return _command_element(0x0000, len(body).to_bytes(4, "little")) + body


def _send_file_pdus(sock: socket.socket, f: Any, path: str, head: bytes, context_id: int, chunk: int) -> None:
    """Write ``head`` then the data set of the Part 10 file ``f`` as P-DATA-TF PDUs of at most
    ``chunk`` bytes of data, read straight into the buffer that goes to the socket (one copy
    from the page cache, one ``sendall`` per megabyte: a 128 KiB instance is one system call)."""
    start = f.read(144)
    if len(start) == 144 and start[128:132] == b"DICM" and start[132:138] == b"\x02\x00\x00\x00UL":
        offset = 144 + int.from_bytes(start[140:144], "little")
    else:
        offset = int(split_dataset(Path(path))[1])
    remaining = os.fstat(f.fileno()).st_size - offset
    f.seek(offset)
    per_batch = max(1, _SEND_BATCH // (chunk + _PDV.size))
    pieces = max(1, -(-remaining // chunk))
    buf = bytearray(len(head) + min(per_batch, pieces) * (chunk + _PDV.size))
    view = memoryview(buf)
    buf[:len(head)] = head
    pos = len(head)
    while remaining > 0:
        for _ in range(per_batch):
            if remaining <= 0:
                break
            n = min(chunk, remaining)
            remaining -= n
            _PDV.pack_into(buf, pos, 0x04, 0, n + 6, n + 2, context_id, 0x00 if remaining > 0 else 0x02)
            pos += _PDV.size
            end = pos + n
            while pos < end:
                got = f.readinto(view[pos:end])
                if not got:
                    raise OSError(f"{path} is shorter than its size")
                pos += got
        sock.sendall(view[:pos])
        pos = 0
    if pos:  # an empty data set: the command alone
        sock.sendall(view[:pos])


def _pdv(context_id: int, control: int, data: bytes | memoryview) -> bytes:
    return _PDV.pack(0x04, 0, len(data) + 6, len(data) + 2, context_id, control)


def _socket_of(assoc: Association) -> socket.socket:
    sock: socket.socket = assoc.dul.socket.socket  # type: ignore[union-attr,assignment]
    return sock


_STORE_RSP_ELEMENTS = frozenset((0x0000, 0x0002, 0x0100, 0x0120, 0x0800, 0x0900, 0x0902, 0x1000))


def parse_store_response(command: bytes) -> C_STORE | None:
    """A C-STORE-RSP command set (Implicit VR Little Endian) as pynetdicom's primitive, or
    ``None`` for anything else or anything unusual (left to pynetdicom)."""
    values: dict[int, bytes] = {}
    pos = 0
    while pos + 8 <= len(command):
        group, element, length = _ELEMENT.unpack_from(command, pos)
        pos += 8
        if group != 0 or pos + length > len(command):
            return None
        values[element] = command[pos:pos + length]
        pos += length
    if pos != len(command) or not values.keys() <= _STORE_RSP_ELEMENTS:
        return None
    if values.get(0x0100) != b"\x01\x80":  # Command Field: C-STORE-RSP
        return None
    if len(values.get(0x0120, b"")) != 2 or len(values.get(0x0900, b"")) != 2:
        return None
    try:
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = int.from_bytes(values[0x0120], "little")
        rsp.Status = int.from_bytes(values[0x0900], "little")
        # The affected UIDs are not read: nobody uses them in a response, and pynetdicom's
        # setters validate each UID with a regular expression (a fifth of this function).
        if 0x0902 in values:
            rsp.ErrorComment = values[0x0902].rstrip(b"\0 ").decode("ascii", "replace")  # type: ignore[assignment]
    except (ValueError, TypeError, UnicodeDecodeError):
        return None
    return rsp


@contextlib.contextmanager
def _store_responses_decoded_here(assoc: Association) -> Iterator[None]:
    """While C-STOREs go out on ``assoc``, its DUL thread turns a C-STORE-RSP (a single command
    fragment) into the primitive with :func:`parse_store_response` instead of pydicom, ~0.5 ms
    less per instance; everything else takes pynetdicom's path. Only this association's DIMSE
    provider is changed, and only inside the block."""
    dimse = assoc.dimse
    original = dimse.receive_primitive
    # A send buffer that holds a whole instance: sendall returns at once and this thread
    # waits once per instance (for the response) instead of at each drained fragment.
    with contextlib.suppress(OSError, AttributeError):
        _socket_of(assoc).setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)

    def receive_primitive(primitive: Any) -> None:
        pdvs = primitive.presentation_data_value_list
        if dimse.message is None and len(pdvs) == 1:
            context_id, data = pdvs[0]
            if len(data) > 1 and data[0] & 3 == 3:  # a whole command set in one fragment
                rsp = parse_store_response(bytes(data[1:]))
                if rsp is not None:
                    dimse.msg_queue.put((context_id, rsp))
                    return
        original(primitive)

    dimse.receive_primitive = receive_primitive  # type: ignore[method-assign]
    try:
        yield
    finally:
        if dimse.__dict__.get("receive_primitive") is receive_primitive:
            del dimse.receive_primitive


class StoreStatus:
    """A C-STORE response's status, as much of it as a sender looks at: ``Status`` (None when
    no valid response came) and ``ErrorComment``."""

    __slots__ = ("ErrorComment", "Status")

    def __init__(self, status: int | None, comment: str = "") -> None:
        self.Status = status
        self.ErrorComment = comment

    @classmethod
    def of(cls, rsp: Any) -> StoreStatus:
        comment = getattr(rsp, "ErrorComment", None)
        return cls(int(rsp.Status), str(comment or ""))


_MAX_RSP_PDU = 4096  # a C-STORE-RSP is ~200 bytes; anything longer is left to pynetdicom


def _read_response_here(assoc: Association, deadline: float) -> tuple[C_STORE | None, bytes, bool]:
    """Read the next PDU from ``assoc``'s socket in this thread (its DUL thread parked).

    Returns ``(response, unread, timed_out)``: the C-STORE-RSP when the PDU is one whole
    command fragment that :func:`parse_store_response` takes, else ``None`` and the bytes read
    (to give back to the DUL thread, which then handles the PDU as usual: an abort, a release,
    a C-CANCEL, a fragmented or unusual response, junk).
    """
    raw = _socket_of(assoc)
    try:
        head = _read_exact(raw, 6, deadline)
        if head is None:
            return None, b"", False  # closed: the DUL thread sees it too
        pdu_type, _, length = _PDU_HEAD.unpack(head)
        if pdu_type != 0x04 or length > _MAX_RSP_PDU:
            return None, head, False
        body = _read_exact(raw, length, deadline)
    except _Timeout:
        return None, b"", True
    except OSError:
        return None, b"", False
    if body is None:
        return None, head, False
    if length >= 6:
        item_length, _context_id, control = _PDV_ITEM.unpack_from(body, 0)
        if item_length == length - 4 and control & 3 == 3:  # one PDV: a whole command set
            rsp = parse_store_response(body[6:])
            if rsp is not None:
                return rsp, b"", False
    return None, head + body, False


_PDU_HEAD = struct.Struct(">BBI")
_PDV_ITEM = struct.Struct(">IBB")


@contextlib.contextmanager
def responses_read_here(assoc: Association) -> Iterator[bool]:
    """Park ``assoc``'s DUL thread (:func:`dicomnode.net.latency.park`) so that
    :func:`send_c_store_direct` reads each C-STORE-RSP itself; yields whether it could. The
    same conditions as :func:`send_c_store_direct` apply (nothing else waits for a message on
    this association meanwhile). A response read here skips pynetdicom's PDU and DIMSE
    events: nothing in Dolmen binds to P-DATA ones.
    """
    provider = assoc.dul
    parked = latency.park(provider)
    assoc._dolmen_parked = parked  # type: ignore[attr-defined]
    try:
        yield parked
    finally:
        stop_reading_here(assoc)


def stop_reading_here(assoc: Association) -> None:
    """Give ``assoc``'s socket back to its DUL thread (before a C-STORE by pynetdicom's own
    path, which waits for the DUL thread to read the response)."""
    assoc._dolmen_parked = False  # type: ignore[attr-defined]
    if getattr(assoc.dul, "_parked", False):
        latency.unpark(assoc.dul)


def send_c_store_direct(assoc: Association, cx: PresentationContext, item: SendItem, msg_id: int,
                        originator: tuple[str, int] | None = None) -> StoreStatus:
    """C-STORE ``item``'s file, stored in ``cx``'s transfer syntax, writing the PDUs ourselves.

    Returns the response's status; ``Status`` None when none came within the DIMSE timeout
    (the association is then aborted). Inside :func:`responses_read_here` the response is
    read by this thread; anything else on the socket goes back to the DUL thread, and this
    one then waits for the response through pynetdicom's DIMSE queue as usual.
    """
    context_id = int(cx.context_id or 0)
    max_pdu = int(assoc.dimse.maximum_pdu_size or 0)
    chunk = max_pdu - 6 if max_pdu else _SEND_BATCH
    command = store_command(item.sop_class_uid, item.sop_instance_uid, msg_id, originator)
    head = _pdv(context_id, 0x03, command) + command  # the command set, last fragment
    with open(item.path, "rb", buffering=0) as f:
        _send_file_pdus(_socket_of(assoc), f, item.path, head, context_id, chunk)
    block = True
    if getattr(assoc, "_dolmen_parked", False):
        timeout = assoc.dimse_timeout
        deadline = time.monotonic() + (timeout if timeout else 1e9)
        rsp, unread, timed_out = _read_response_here(assoc, deadline)
        if rsp is not None:
            assoc.dul._idle_timer.restart()
            return StoreStatus.of(rsp)
        # Not ours to handle: the DUL thread takes over the socket, for good on this association.
        assoc._dolmen_parked = False  # type: ignore[attr-defined]
        latency.unpark(assoc.dul, unread)
        block = not timed_out
    _cx_id, rsp = assoc.dimse.get_msg(block=block)
    if rsp is None:
        assoc._handle_no_response()
        return StoreStatus(None)
    if not rsp.is_valid_response:
        LOGGER.error("Received an invalid C-STORE response from the peer")
        assoc.abort()
        return StoreStatus(None)
    return StoreStatus.of(rsp)


C_FIND_RSP = 0x8020
C_GET_RSP = 0x8010
C_MOVE_RSP = 0x8021


def send_response_direct(assoc: Association, context_id: int, command_field: int, sop_class_uid: str,
                         msg_id: int, status: int, dataset: bytes | None, *, comment: str = "",
                         counts: tuple[int | None, int | None, int | None, int | None] | None = None) -> None:
    """Write a C-FIND/C-GET/C-MOVE response (PS3.7 9.3.2.2, 9.3.3.2, 9.3.4.2) straight to the socket.

    ``counts`` are the Number of Remaining, Completed, Failed and Warning Sub-operations (None
    leaves one out); ``dataset`` the encoded identifier. Same rules as
    :func:`send_c_store_direct`: the calling thread must be the association's only writer.
    """
    parts = [
        _command_element(0x0002, _padded(sop_class_uid, b"\0")),
        _command_element(0x0100, command_field.to_bytes(2, "little")),
        _command_element(0x0120, (msg_id & 0xFFFF).to_bytes(2, "little")),
        _command_element(0x0800, (0x0101 if dataset is None else 0x0000).to_bytes(2, "little")),
        _command_element(0x0900, status.to_bytes(2, "little")),
    ]
    if comment:
        text = comment[:64].encode("ascii", "replace")
        parts.append(_command_element(0x0902, text + b" " if len(text) % 2 else text))
    for element, value in zip((0x1020, 0x1021, 0x1022, 0x1023), counts or (), strict=False):
        if value is not None:
            parts.append(_command_element(element, (value & 0xFFFF).to_bytes(2, "little")))
    body = b"".join(parts)
    command = _command_element(0x0000, len(body).to_bytes(4, "little")) + body
    out = bytearray(_pdv(context_id, 0x03, command) + command)
    if dataset is not None:
        max_pdu = int(assoc.dimse.maximum_pdu_size or 0)
        chunk = max_pdu - 6 if max_pdu else _SEND_BATCH
        view = memoryview(dataset)
        for start in range(0, len(view), chunk):
            piece = view[start:start + chunk]
            out += _pdv(context_id, 0x02 if start + chunk >= len(view) else 0x00, piece)
            out += piece
    _socket_of(assoc).sendall(out)


