"""multipart/related bodies: the streamed writer and the seekable file a web server sends from."""
from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from dicomnode.dicomweb.multipart import MultipartFile
from dicomnode.dicomweb.multipart import MultipartReader
from dicomnode.dicomweb.multipart import Part
from dicomnode.dicomweb.multipart import write_parts


@pytest.fixture
def parts(tmp_path: Path) -> list[Part]:
    sizes = [0, 1, 5000, 300_000, 70]
    out = [Part("application/dicom", b"in memory")]
    for n, size in enumerate(sizes):
        path = tmp_path / f"f{n}.dcm"
        path.write_bytes(os.urandom(size))
        out.append(Part("application/dicom; transfer-syntax=1.2.840.10008.1.2.1", path))
    out.append(Part("application/octet-stream", b"last", (("Content-Location", "/x"),)))
    return out


def test_the_file_holds_what_the_writer_writes(parts: list[Part]) -> None:
    written = b"".join(write_parts(parts, "B"))
    body = MultipartFile(parts, "B")
    assert body.size == len(body) == len(written)
    read = b""
    while chunk := body.read(4096):
        assert len(chunk) <= 4096
        read += chunk
    assert read == written
    assert body.read() == b"" and body.tell() == body.size
    back = [(p.content_type, p.read()) for p in MultipartReader(io.BytesIO(written), "B")]
    expected = [(p.content_type, p.body if isinstance(p.body, bytes) else Path(p.body).read_bytes())
                for p in parts]
    assert [kind for kind, _ in back] == [kind for kind, _ in expected]
    assert [data for _, data in back] == [data for _, data in expected]


def test_reads_and_seeks_as_a_web_server_does(parts: list[Part]) -> None:
    """waitress reads a block, seeks back, then skips what the socket took (often less)."""
    written = b"".join(write_parts(parts, "B"))
    body = MultipartFile(parts, "B")
    assert body.seekable() and body.seek(0, os.SEEK_END) == body.size
    body.seek(0)
    sent = b""
    for step in range(10_000):
        at = body.tell()
        block = body.read(65536)
        if not block:
            break
        body.seek(at)
        taken = max(1, len(block) // (1 + step % 3))
        sent += block[:taken]
        body.seek(taken, os.SEEK_CUR)
    assert sent == written
    body.seek(len(written) - 10)
    assert body.read(100) == written[-10:]
    body.close()


def test_a_file_that_shrank_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "a.dcm"
    path.write_bytes(b"x" * 1000)
    body = MultipartFile([Part("application/dicom", path)], "B")
    path.write_bytes(b"x" * 10)
    with pytest.raises(OSError, match="shorter"):
        while body.read(4096):
            pass
    with pytest.raises(TypeError):
        MultipartFile([Part("application/dicom", iter([b"a"]))], "B")
