"""Content negotiation for DICOMweb (PS3.18 8.7): which media type and transfer syntax to answer.

:func:`negotiate_instances`, :func:`negotiate_frames`, :func:`negotiate_rendered` and
:func:`negotiate_json` read the parsed ``Accept`` header and return a :class:`Choice` or raise
:class:`NotAcceptable` (HTTP 406); the transfer-syntax constants and the bitstream media types
of PS3.18 Table 8.7.3-4 live here.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dicomnode.dicomweb.multipart import MediaType
from dicomnode.errors import DolmenError

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
UNCOMPRESSED = (EXPLICIT_LE, IMPLICIT_LE)
NATIVE = (EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, DEFLATED_LE)

#: Media type of the compressed bitstream of each transfer syntax (PS3.18 Table 8.7.3-4).
BITSTREAM_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx", "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc", "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg", "1.2.840.10008.1.2.4.101": "video/mpeg",
    "1.2.840.10008.1.2.4.102": "video/mp4", "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4", "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4", "1.2.840.10008.1.2.4.107": "video/H265",
    "1.2.840.10008.1.2.4.108": "video/H265",
}
_MEDIA_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}

class NotAcceptable(DolmenError):
    """No media type of the request's Accept can be produced (HTTP 406)."""

    code = "not_acceptable"
    http_status = 406


class UnsupportedMediaType(DolmenError):
    """The request body's media type is not one the service takes (HTTP 415)."""

    code = "unsupported_media_type"
    http_status = 415



@dataclass(frozen=True)
class Choice:
    """The selected media type of a response and its transfer syntax (``*``: as stored)."""

    media_type: str
    transfer_syntax: str = "*"
    multipart: bool = True


def _wants(media: MediaType, base: str) -> tuple[bool, bool]:
    """(acceptable, multipart) for one Accept item and the media type of the parts."""
    if media.type == "multipart/related":
        inner = (media.param("type") or base).lower()
        inner = _MEDIA_ALIASES.get(inner, inner)
        return inner == base or inner in ("*/*", base.split("/")[0] + "/*"), True
    if media.type in ("*/*", base.split("/")[0] + "/*"):
        return True, True
    return _MEDIA_ALIASES.get(media.type, media.type) == base, False


def negotiate_instances(accept: list[MediaType], stored: Iterable[str],
                        query_ts: str | None = None) -> Choice:
    """The transfer syntax for a retrieve of instances (``application/dicom``).

    Without a transfer syntax parameter the standard's default, Explicit VR Little Endian, is
    used (PS3.18 8.7.3.5); ``*`` sends each file as stored. Any uncompressed syntax can be
    produced; a compressed one only when every instance is stored in it.

    Raises
    ------
    NotAcceptable
        When no item of ``accept`` can be produced.
    """
    stored_set = set(stored)
    items = accept or [MediaType("multipart/related", {"type": "application/dicom"})]
    reasons = []
    for media in items:
        ok, multipart = _wants(media, "application/dicom")
        if not ok:
            continue
        ts = media.param("transfer-syntax") or query_ts or EXPLICIT_LE
        if ts == "*" or ts in UNCOMPRESSED or stored_set == {ts}:
            return Choice("application/dicom", ts, multipart)
        reasons.append(ts)
    if reasons:
        raise NotAcceptable(f"Cannot send these instances in transfer syntax {reasons[0]}: they are stored "
                            f"in {', '.join(sorted(stored_set))}; ask for transfer-syntax=* or {EXPLICIT_LE}")
    raise NotAcceptable('Ask for multipart/related; type="application/dicom"')


def negotiate_frames(accept: list[MediaType], stored: str, query_ts: str | None = None) -> Choice:
    """The media type and transfer syntax of frames (or pixel bulk data) stored in ``stored``.

    ``application/octet-stream`` (the default, and what ``*/*`` means) gives uncompressed
    frames, decoded if need be, unless its transfer syntax is ``*`` or the stored one;
    ``image/jpeg``, ``image/jls``, ``image/jp2``, ``image/dicom-rle``... give the compressed
    bitstream when the file holds that compression.

    Raises
    ------
    NotAcceptable
        When no item of ``accept`` can be produced.
    """
    native = BITSTREAM_MEDIA.get(stored)
    for media in accept or [MediaType("multipart/related", {"type": "application/octet-stream"})]:
        inner = (media.param("type") or "*/*") if media.type == "multipart/related" else media.type
        inner = _MEDIA_ALIASES.get(inner.lower(), inner.lower())
        ts = media.param("transfer-syntax") or query_ts
        if inner in ("*/*", "application/*"):
            inner = "application/octet-stream"
        elif inner.endswith("/*") and native is not None and native.startswith(inner[:-1]):
            inner = native
        if inner == "application/octet-stream":
            if ts in (None, *UNCOMPRESSED) or (ts in ("*", stored) and native is None):
                return Choice("application/octet-stream", EXPLICIT_LE)
            if ts in ("*", stored) and native is not None:
                return Choice(native, stored)
        elif native is not None and inner == native and ts in (None, "*", stored):
            return Choice(native, stored)
    raise NotAcceptable(
        'Frames can be sent as multipart/related; type="application/octet-stream" (uncompressed)'
        + (f' or type="{native}" (as stored, {stored})' if native else ""))


def negotiate_rendered(accept: list[MediaType], default: str = "image/jpeg") -> str:
    """``image/jpeg`` or ``image/png`` from ``Accept`` (JPEG when anything goes).

    Raises
    ------
    NotAcceptable
        When neither is acceptable.
    """
    if not accept:
        return default
    for media in accept:
        if media.type in ("image/jpeg", "image/png"):
            return media.type
        if media.type in ("*/*", "image/*"):
            return default
        if media.type == "multipart/related" and media.param("type") in ("image/jpeg", "image/png"):
            return str(media.param("type"))
    raise NotAcceptable("Rendered images are available as image/jpeg or image/png")


def negotiate_json(accept: list[MediaType]) -> None:
    """Check that ``application/dicom+json`` is acceptable (it is the only metadata form here).

    Raises
    ------
    NotAcceptable
        When the client accepts only other types (``application/dicom+xml``...).
    """
    if not accept or any(m.type in ("application/dicom+json", "application/json", "*/*", "application/*")
                         for m in accept):
        return
    raise NotAcceptable("Metadata and search results are available as application/dicom+json only")
