"""The C-STORE fast path of :mod:`dicomnode.net.latency` gives pynetdicom's own results.

The C-STORE-RSP command set it encodes must be byte for byte what pynetdicom encodes for the
same primitive; the C-STORE-RQ it decodes must be the primitive pynetdicom builds from the
same bytes; and anything it does not handle (malformed, unusual) must be left to pynetdicom
(``None``), never guessed at. The end-to-end path is exercised by test_scp_store.py.
"""
from __future__ import annotations

import random
import struct
from io import BytesIO
from typing import Any

import pytest
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.dsutils import encode

from dicomnode.net.latency import _store_request
from dicomnode.net.latency import encode_store_response
from dicomnode.net.latency import parse_command_set

CT = "1.2.840.10008.5.1.4.1.1.2"  # even length
MR = "1.2.840.10008.5.1.4.1.1.4"  # odd length
SOP_ODD = "1.2.826.0.1.3680043.8.498.1"
SOP_EVEN = "1.2.826.0.1.3680043.8.498.12"


def _response(status: int, msg_id: int = 7, sop_class: str | None = CT, sop_uid: str | None = SOP_ODD,
              comment: str | None = None) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = msg_id
    rsp.Status = status
    if sop_class is not None:
        rsp.AffectedSOPClassUID = sop_class
    if sop_uid is not None:
        rsp.AffectedSOPInstanceUID = sop_uid
    if comment is not None:
        rsp.ErrorComment = comment
    return rsp


def _pynetdicom_bytes(rsp: C_STORE) -> bytes:
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    return bytes(encode(msg.command_set, True, True))


RESPONSES = [
    dict(status=0x0000),
    dict(status=0x0000, sop_class=MR, sop_uid=SOP_EVEN),
    dict(status=0x0000, msg_id=0),
    dict(status=0x0000, msg_id=0xFFFF),
    dict(status=0x0000, sop_class=None, sop_uid=None),
    dict(status=0x0124, comment="Unknown calling AE title"),  # even length
    dict(status=0xA700, comment="Storage full"),
    dict(status=0xA900, comment="The C-STORE command names another SOP Instance UID"),
    dict(status=0xC000, comment="Not a DICOM file: no 'DICM' prefix at byte 128!"),  # odd
    dict(status=0xC000, comment="x" * 64),
    dict(status=0xC000, comment=""),
    dict(status=0xB000, sop_class=MR),
]


@pytest.mark.parametrize("kw", RESPONSES, ids=lambda kw: ",".join(f"{k}={v!r:.12}" for k, v in kw.items()))
def test_store_response_bytes_are_pynetdicoms(kw: dict[str, Any]) -> None:
    rsp = _response(**kw)
    assert encode_store_response(rsp) == _pynetdicom_bytes(rsp)


def test_store_response_leaves_unusual_ones_to_pynetdicom() -> None:
    with_offending = _response(0xC000)
    with_offending.OffendingElement = [0x00100010]
    assert encode_store_response(with_offending) is None
    assert encode_store_response(_response(0xC000, comment="Patient name Müller")) is None


# -- the request ------------------------------------------------------------------------------

def _request_bytes(msg_id: int = 3, sop_class: str = CT, sop_uid: str = SOP_ODD, priority: int = 2,
                   originator: tuple[str, int] | None = None) -> bytes:
    req = C_STORE()
    req.MessageID = msg_id
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = sop_uid
    req.Priority = priority
    req.DataSet = BytesIO(b"")
    if originator is not None:
        req.MoveOriginatorApplicationEntityTitle, req.MoveOriginatorMessageID = originator
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    return bytes(encode(msg.command_set, True, True))


def _pynetdicom_request(raw: bytes) -> C_STORE:
    msg = C_STORE_RQ()
    msg.command_set = decode(BytesIO(raw), True, True)
    return msg.message_to_primitive()


FIELDS = ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority",
          "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID")


@pytest.mark.parametrize("kw", [
    dict(),
    dict(sop_class=MR, sop_uid=SOP_EVEN, msg_id=0xFFFF, priority=0),
    dict(priority=1, originator=("MOVESCU", 12)),
    dict(originator=("ODDAET", 1)),
])
def test_store_request_is_pynetdicoms(kw: dict[str, Any]) -> None:
    raw = _request_bytes(**kw)
    elements = parse_command_set(raw)
    assert elements is not None
    fast = _store_request(elements)
    assert fast is not None
    expected = _pynetdicom_request(raw)
    for name in FIELDS:
        assert getattr(fast, name) == getattr(expected, name), name


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHL", 0, element, len(value)) + value


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_parse_command_set_refuses_malformed_input() -> None:
    raw = _request_bytes()
    assert parse_command_set(b"") == {}
    assert parse_command_set(raw[:-1]) is None  # last value cut short
    assert parse_command_set(raw[:5]) is None  # element header cut short
    assert parse_command_set(raw + b"\0\0\0") is None  # stray bytes
    assert parse_command_set(raw + _element(0x0110, b"\1\0")) is None  # a repeated element
    assert parse_command_set(raw + struct.pack("<HHL", 0x0008, 0x0018, 2) + b"1\0") is None  # group 0008
    assert parse_command_set(raw[:4] + b"\xff\xff\xff\x7f" + raw[8:]) is None  # length past the end
    rng = random.Random(7)
    for _ in range(2000):  # random corruption never raises
        corrupt = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            corrupt[rng.randrange(len(corrupt))] = rng.randrange(256)
        elements = parse_command_set(bytes(corrupt))
        if elements is not None:
            _store_request(elements)


def _with(raw: bytes, element: int, value: bytes | None) -> dict[int, bytes]:
    elements = parse_command_set(raw)
    assert elements is not None
    if value is None:
        del elements[element]
    else:
        elements[element] = value
    return elements


@pytest.mark.parametrize("element,value", [
    (0x0100, b"\x30\x00"),  # C-ECHO-RQ, not a C-STORE
    (0x0800, b"\x01\x01"),  # no data set
    (0x1000, None),  # no Affected SOP Instance UID
    (0x1000, b"\0\0"),  # an empty one
    (0x1000, b"1.2\\3.4\0"),  # two values
    (0x0110, b"\1\0\2\0"),  # Message ID with two values
    (0x0700, b"\1"),  # a US value of one byte
    (0x0120, b"\1\0"),  # Message ID Being Responded To: not in a C-STORE-RQ
], ids=repr)
def test_unusual_requests_go_to_pynetdicom(element: int, value: bytes | None) -> None:
    assert _store_request(_with(_request_bytes(), element, value)) is None


def test_request_values_lose_padding_like_pydicoms() -> None:
    elements = _with(_request_bytes(), 0x1030, b" MOVE AE  ")
    elements = {**elements, 0x1031: b"\4\0"}
    raw = b"".join(_element(e, v) for e, v in sorted(elements.items()))
    fast = _store_request(elements)
    assert fast is not None
    expected = _pynetdicom_request(raw)
    for name in FIELDS:
        assert getattr(fast, name) == getattr(expected, name), name


def test_invalid_uid_is_taken_as_pynetdicom_takes_it() -> None:
    elements = _with(_request_bytes(), 0x0002, b"1.2.3.x\0")
    raw = b"".join(_element(e, v) for e, v in sorted(elements.items()))
    with pytest.warns(UserWarning):
        fast = _store_request(elements)
    with pytest.warns(UserWarning):
        expected = _pynetdicom_request(raw)
    assert fast is not None and fast.AffectedSOPClassUID == expected.AffectedSOPClassUID == "1.2.3.x"
