"""``multipart/related`` bodies (RFC 2387) written and read as streams, and media-type headers.

DICOMweb moves instances, frames and bulk data as ``multipart/related`` messages (PS3.18
8.6.1.2). Both directions here hold about one chunk in memory whatever the message size:

* :func:`write_parts` yields the bytes of a message part by part, reading files in chunks, so
  a 2 GB study starts at once and never sits in memory;
* :class:`MultipartReader` splits an incoming stream (a STOW-RS request, a WADO-RS answer)
  into parts, each a file-like object read up to the next delimiter.

:func:`parse_media_type` and :func:`parse_accept` read ``Content-Type`` and ``Accept``
header values (RFC 9110 8.3.1, 12.5.1), with quoted parameters and ``q`` weights.
"""
from __future__ import annotations

import os
import uuid
from bisect import bisect_right
from collections.abc import Iterable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from itertools import chain
from typing import IO
from typing import Any
from typing import BinaryIO

from dicomnode.errors import DolmenError

#: Bytes read from a file or a stream, and of a multipart body written, at a time.
CHUNK = 1 << 20

#: Longest header block of one part; more is refused (a malformed or hostile body).
MAX_HEADER_BYTES = 64 * 1024


class MultipartError(DolmenError):
    """A malformed multipart body or media-type header."""

    code = "bad_multipart"
    http_status = 400


# -- media types ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaType:
    """A media type with its parameters (names lower-cased, values unquoted) and weight."""

    type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    def param(self, name: str, default: str | None = None) -> str | None:
        """A parameter's value, or ``default``."""
        return self.params.get(name, default)


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            current.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            current.append(ch)
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def parse_media_type(text: str) -> MediaType:
    """Parse ``type/subtype; name=value; ...`` (a ``Content-Type`` value or one ``Accept`` item).

    Raises
    ------
    MultipartError
        When there is no ``type/subtype``.
    """
    pieces = _split(text, ";")
    media = pieces[0].strip().lower()
    if "/" not in media:
        raise MultipartError(f"{text.strip()[:100]!r} is not a media type (type/subtype)")
    params: dict[str, str] = {}
    q = 1.0
    for piece in pieces[1:]:
        name, sep, value = piece.partition("=")
        name = name.strip().lower()
        if not name or not sep:
            continue
        if name == "q":
            try:
                q = float(value.strip())
            except ValueError:
                q = 0.0
            continue
        params[name] = _unquote(value)
    return MediaType(media, params, q)


def parse_accept(values: Iterable[str]) -> list[MediaType]:
    """The media types of ``Accept`` header values (or ``accept`` query values), best first.

    Items with ``q=0`` are dropped; equal weights keep their order. Unparseable items are
    skipped, as RFC 9110 lets a server do.
    """
    items: list[MediaType] = []
    for value in values:
        for piece in _split(value, ","):
            if not piece.strip():
                continue
            try:
                media = parse_media_type(piece)
            except MultipartError:
                continue
            if media.q > 0:
                items.append(media)
    return sorted(items, key=lambda m: -m.q)


def new_boundary() -> str:
    """A boundary no DICOM file will contain by chance."""
    return f"dolmen-{uuid.uuid4().hex}"


def content_type(media_type: str, boundary: str, **params: str) -> str:
    """``multipart/related; type="..."; boundary=...`` (extra parameters after ``type``)."""
    extra = "".join(f"; {k.replace('_', '-')}={v}" for k, v in params.items())
    return f'multipart/related; type="{media_type}"{extra}; boundary={boundary}'


# -- writing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One part to write: its ``Content-Type`` and a body.

    The body is bytes, a path (read in chunks), or an iterable of byte chunks.
    """

    content_type: str
    body: bytes | str | os.PathLike[str] | Iterable[bytes]
    headers: tuple[tuple[str, str], ...] = ()

    def head(self, boundary: str) -> bytes:
        lines = [f"--{boundary}", f"Content-Type: {self.content_type}"]
        lines += [f"{k}: {v}" for k, v in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def size(self) -> int | None:
        """Length of the body when known without reading it."""
        if isinstance(self.body, bytes):
            return len(self.body)
        if isinstance(self.body, (str, os.PathLike)):
            return os.path.getsize(self.body)
        return None


def read_file(path: str | os.PathLike[str], chunk: int = CHUNK) -> Iterator[bytes]:
    """The bytes of a file, one chunk at a time."""
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk)
            if not data:
                return
            yield data


def _body(part: Part) -> Iterator[bytes]:
    if isinstance(part.body, bytes):
        yield part.body
    elif isinstance(part.body, (str, os.PathLike)):
        yield from read_file(part.body)
    else:
        yield from part.body


def write_parts(parts: Iterable[Part], boundary: str, min_write: int = CHUNK) -> Iterator[bytes]:
    """The bytes of a ``multipart/related`` body made of ``parts``, as they are produced.

    Pieces are gathered up to ``min_write`` bytes: a part's head and the CRLF after its body
    would otherwise each be a write, and a send, of their own (three per instance of a study).
    """
    pending: list[bytes] = []
    size = 0
    for part in parts:
        for piece in chain((part.head(boundary),), _body(part), (b"\r\n",)):
            if len(piece) > 4 * min_write:  # a large body in one piece (transcoded): not copied
                if pending:
                    yield b"".join(pending)
                    pending, size = [], 0
                yield piece
                continue
            pending.append(piece)
            size += len(piece)
            if size >= min_write:
                yield pending[0] if len(pending) == 1 else b"".join(pending)
                pending, size = [], 0
    pending.append(f"--{boundary}--\r\n".encode("ascii"))
    yield b"".join(pending)


class MultipartFile:
    """A ``multipart/related`` body of parts whose bodies are files or bytes, as a read-only,
    seekable file, so that a web server can send it straight from the files
    (``wsgi.file_wrapper``) with a Content-Length known before a byte is read.

    :meth:`read` returns at most the rest of one segment (the bytes between two files, or a
    file), so that nothing is copied to join them; one file is open at a time.

    Raises
    ------
    OSError
        From :meth:`read`, when a file is shorter than it was when the body was made.
    """

    def __init__(self, parts: Iterable[Part], boundary: str) -> None:
        self._segments: list[bytes | str | os.PathLike[str]] = []
        self._starts: list[int] = []
        self._sizes: list[int] = []
        pending = b""
        for part in parts:
            pending += part.head(boundary)
            if isinstance(part.body, bytes):
                pending += part.body + b"\r\n"
                continue
            if not isinstance(part.body, (str, os.PathLike)):
                raise TypeError("a MultipartFile holds parts whose bodies are files or bytes")
            self._add(pending)
            self._add(part.body, os.path.getsize(part.body))
            pending = b"\r\n"
        self._add(pending + f"--{boundary}--\r\n".encode("ascii"))
        self.size = self._starts[-1] + self._sizes[-1]
        self._pos = 0
        self._file: tuple[int, BinaryIO] | None = None

    def _add(self, segment: bytes | str | os.PathLike[str], size: int | None = None) -> None:
        length = len(segment) if isinstance(segment, bytes) else int(size or 0)
        if length:
            self._starts.append(self._starts[-1] + self._sizes[-1] if self._starts else 0)
            self._sizes.append(length)
            self._segments.append(segment)

    def __len__(self) -> int:
        return self.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        if self._pos >= self.size:
            return b""
        n = bisect_right(self._starts, self._pos) - 1
        within = self._pos - self._starts[n]
        count = self._sizes[n] - within if size < 0 else min(size, self._sizes[n] - within)
        segment = self._segments[n]
        if isinstance(segment, bytes):
            data = segment[within:within + count]
        else:
            if self._file is None or self._file[0] != n:
                self._close_file()
                self._file = (n, open(segment, "rb"))  # noqa: SIM115 - closed by _close_file
            f = self._file[1]
            if f.tell() != within:
                f.seek(within)
            data = f.read(count)
            if len(data) < count:
                raise OSError(f"{segment} is shorter than when the answer began")
        self._pos += len(data)
        return data

    def _close_file(self) -> None:
        if self._file is not None:
            self._file[1].close()
            self._file = None

    def close(self) -> None:
        self._close_file()


def body_size(parts: Iterable[Part], boundary: str) -> int | None:
    """The length :func:`write_parts` will produce, or ``None`` if a body's size is unknown."""
    total = len(f"--{boundary}--\r\n")
    for part in parts:
        size = part.size()
        if size is None:
            return None
        total += len(part.head(boundary)) + size + 2
    return total


class SizedBody:
    """An iterable body with a length, so ``requests`` streams it with a Content-Length.

    Without a length ``requests`` would use chunked transfer encoding, which some servers
    refuse for uploads.
    """

    def __init__(self, parts: list[Part], boundary: str) -> None:
        self.parts = parts
        self.boundary = boundary
        size = body_size(parts, boundary)
        if size is None:
            raise ValueError("every part needs a known size")
        self.len = size

    def __len__(self) -> int:
        return self.len

    def __iter__(self) -> Iterator[bytes]:
        return write_parts(self.parts, self.boundary)


# -- reading -------------------------------------------------------------------------------------


class _Source:
    """Buffered reads from the underlying stream."""

    def __init__(self, stream: IO[bytes] | BinaryIO | Any, chunk: int) -> None:
        self.stream = stream
        self.chunk = chunk
        self.buffer = bytearray()
        self.eof = False

    def fill(self) -> bool:
        """Read one more chunk; False at the end of the stream."""
        if self.eof:
            return False
        data = self.stream.read(self.chunk)
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True


class PartReader:
    """The body of one part: a read-only file-like object that stops at the next delimiter."""

    def __init__(self, source: _Source, delimiter: bytes, headers: dict[str, str]) -> None:
        self._src = source
        self._delim = delimiter
        self.headers = headers
        self.done = False
        self._scan = 0  # buffer positions before this are known to hold no delimiter start

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the body (all of it when ``size`` < 0); b"" at its end."""
        if self.done:
            return b""
        out = bytearray()
        src = self._src
        while size < 0 or len(out) < size:
            buf = src.buffer
            at = buf.find(self._delim, max(0, self._scan))
            if at >= 0:
                take = at if size < 0 else min(at, size - len(out))
                out += buf[:take]
                del buf[:take]
                self._scan = 0
                if take == at:
                    del buf[:len(self._delim)]
                    self.done = True
                    break
                continue
            # No delimiter yet: everything but a possible partial delimiter at the end is body.
            safe = len(buf) - len(self._delim) + 1
            if safe > 0:
                take = safe if size < 0 else min(safe, size - len(out))
                out += buf[:take]
                del buf[:take]
                self._scan = max(0, safe - take)
                if size >= 0 and len(out) >= size:
                    break
            if not src.fill():
                raise MultipartError("The multipart body ends inside a part (no closing delimiter)")
        return bytes(out)

    def drain(self) -> None:
        """Skip what is left of the body."""
        while not self.done:
            if not self.read(CHUNK):
                break


class MultipartReader:
    """Iterate over the parts of a ``multipart/related`` stream.

    Each part is a :class:`PartReader`; read it (or not) before asking for the next one,
    which skips whatever was left unread.

    Parameters
    ----------
    stream : file-like
        The body, read with ``read(n)``.
    boundary : str
        The ``boundary`` parameter of the message's Content-Type.
    """

    def __init__(self, stream: IO[bytes] | BinaryIO | Any, boundary: str, *, chunk: int = CHUNK) -> None:
        if not boundary or len(boundary) > 200:
            raise MultipartError("The multipart Content-Type has no usable boundary parameter")
        self._src = _Source(stream, chunk)
        # The first delimiter may start the body without a preceding CRLF.
        self._src.buffer += b"\r\n"
        self._delim = b"\r\n--" + boundary.encode("latin-1")
        self._started = False
        self._finished = False

    def __iter__(self) -> Iterator[PartReader]:
        src = self._src
        # Preamble: skip to the first delimiter.
        first = PartReader(src, self._delim, {})
        try:
            first.drain()
        except MultipartError:
            raise MultipartError("The body holds no multipart delimiter for its boundary") from None
        current: PartReader | None = None
        while True:
            if current is not None:
                current.drain()
            if not self._after_delimiter():
                return
            headers = self._headers()
            current = PartReader(src, self._delim, headers)
            yield current

    def _after_delimiter(self) -> bool:
        """After a delimiter: ``--`` closes the message, else skip padding and the CRLF."""
        src = self._src
        while len(src.buffer) < 2 and src.fill():
            pass
        if src.buffer[:2] == b"--":
            self._finished = True
            return False
        while True:
            end = src.buffer.find(b"\r\n")
            if end >= 0:
                if src.buffer[:end].strip(b" \t"):
                    raise MultipartError("Unexpected bytes after a multipart delimiter")
                del src.buffer[:end + 2]
                return True
            if len(src.buffer) > 1024 or not src.fill():
                raise MultipartError("The multipart body ends after a delimiter")

    def _headers(self) -> dict[str, str]:
        src = self._src
        while True:
            if src.buffer[:2] == b"\r\n":  # a part without headers
                del src.buffer[:2]
                return {}
            end = src.buffer.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(src.buffer) > MAX_HEADER_BYTES:
                raise MultipartError("A part's headers are longer than 64 KiB")
            if not src.fill():
                raise MultipartError("The multipart body ends inside a part's headers")
        block = bytes(src.buffer[:end]).decode("latin-1")
        del src.buffer[:end + 4]
        headers: dict[str, str] = {}
        for line in block.split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return headers


__all__ = ["CHUNK", "MediaType", "MultipartError", "MultipartReader", "Part", "PartReader", "SizedBody",
           "body_size", "content_type", "new_boundary", "parse_accept", "parse_media_type", "read_file",
           "write_parts"]
