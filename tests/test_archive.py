"""Tests of dicomnode.archive.zipstream: streaming ZIP downloads and safe entry names."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import tracemalloc
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from dicomnode.archive.zipstream import MAX_PART_CHARS
from dicomnode.archive.zipstream import archive_name
from dicomnode.archive.zipstream import stream_zip

UNZIP = shutil.which("unzip")


def unzip_test(path: Path) -> None:
    """Check an archive with Info-ZIP's ``unzip -t`` when installed, else with zipfile."""
    if UNZIP is None:
        with zipfile.ZipFile(path) as archive:
            assert archive.testzip() is None
        return
    result = subprocess.run([UNZIP, "-tq", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No errors detected" in result.stdout


def write_stream(chunks: Iterator[bytes], path: Path) -> None:
    """Write a stream of chunks to `path`."""
    with path.open("wb") as out:
        for chunk in chunks:
            out.write(chunk)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Files around the chunk size (1 KiB in these tests), a real DICOM file, an empty one."""
    folder = tmp_path / "src"
    folder.mkdir()
    made: dict[str, Path] = {}
    for size in (0, 1, 1023, 1024, 1025, 10_000, 300_000):
        path = folder / f"f{size}"
        path.write_bytes(os.urandom(size))
        made[f"f{size}"] = path
    made["ct"] = Path(str(get_testdata_file("CT_small.dcm")))
    return made


# -- stream_zip ----------------------------------------------------------------------------


def test_archive_opens_and_every_entry_matches(files: dict[str, Path], tmp_path: Path) -> None:
    entries = [(archive_name("DOE^JOHN PAT001", "CT", key), path) for key, path in files.items()]
    archive_path = tmp_path / "out.zip"
    write_stream(stream_zip(entries, chunk_size=1024), archive_path)

    unzip_test(archive_path)
    with zipfile.ZipFile(archive_path) as archive:
        assert archive.testzip() is None
        infos = archive.infolist()
        assert [info.filename for info in infos] == [name for name, _ in entries]
        for info, (_, path) in zip(infos, entries, strict=True):
            data = path.read_bytes()
            assert info.compress_type == zipfile.ZIP_STORED
            assert info.flag_bits & 0x08  # sizes and CRC in a data descriptor
            assert info.file_size == len(data)
            assert zlib.crc32(data) == info.CRC
            assert archive.read(info) == data
            assert (info.external_attr >> 16) & 0o777 == 0o644


def test_data_descriptors_follow_each_entry(files: dict[str, Path]) -> None:
    data = b"".join(stream_zip([("a", files["f1025"])], chunk_size=1024))
    payload = files["f1025"].read_bytes()
    # Local header: CRC and sizes zero; the descriptor after the data carries them.
    signature, _, flags, method, _, _, crc, csize, usize, name_len, extra_len = struct.unpack(
        "<IHHHHHIIIHH", data[:30]
    )
    assert (signature, flags & 0x08, method, crc, csize, usize) == (0x04034B50, 8, 0, 0, 0, 0)
    start = 30 + name_len + extra_len
    assert data[start : start + len(payload)] == payload
    descriptor = struct.unpack("<IIII", data[start + len(payload) : start + len(payload) + 16])
    assert descriptor == (0x08074B50, zlib.crc32(payload), len(payload), len(payload))


def test_names_are_sanitised_and_deduplicated(files: dict[str, Path]) -> None:
    entries = [
        ("../../etc/passwd", files["f1"]),
        ("/abs/x.dcm", files["f1"]),
        ("C:\\windows\\x.dcm", files["f1"]),
        ("s/IM1.dcm", files["f1"]),
        ("s/IM1.dcm", files["f1"]),
        ("S/im1.DCM", files["f1"]),
        ("a\x00b/..", files["f1"]),
    ]
    data = b"".join(stream_zip(entries))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
    assert names == [
        "etc/passwd",
        "abs/x.dcm",
        "C_/windows/x.dcm",
        "s/IM1.dcm",
        "s/IM1_2.dcm",
        "S/im1_3.DCM",
        "ab",
    ]


def test_non_ascii_names_are_flagged_utf8(files: dict[str, Path]) -> None:
    name = archive_name("Buc^Jérôme", "山田^太郎", "IM1.dcm")
    data = b"".join(stream_zip([(name, files["f1"])]))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        (info,) = archive.infolist()
    assert info.filename == "Buc^Jérôme/山田^太郎/IM1.dcm"
    assert info.flag_bits & 0x800


def test_missing_file_is_skipped(files: dict[str, Path], tmp_path: Path) -> None:
    entries = [("a", files["f1"]), ("gone", tmp_path / "nope"), ("b", files["f1023"])]
    data = b"".join(stream_zip(entries))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == ["a", "b"]
        assert archive.testzip() is None


def test_empty_archive(tmp_path: Path) -> None:
    path = tmp_path / "empty.zip"
    write_stream(stream_zip([]), path)
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == []


def test_entries_are_consumed_lazily(files: dict[str, Path]) -> None:
    consumed: list[str] = []

    def entries() -> Iterator[tuple[str, Path]]:
        for key in ("f300000", "f10000"):
            consumed.append(key)
            yield key, files[key]

    stream = stream_zip(entries(), chunk_size=1024)
    assert consumed == []
    first = next(stream)
    assert consumed == ["f300000"]
    assert len(first) < 2 * 1024 + 200
    rest = list(stream)
    assert consumed == ["f300000", "f10000"]
    # Chunks stay near chunk_size (a chunk plus what was pending, headers and descriptors):
    # data is never gathered into big blocks.
    assert max(len(chunk) for chunk in rest) < 2 * 1024 + 200


def test_chunk_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        stream_zip([], chunk_size=0)  # at the call, before any byte is sent


def test_zip64_with_more_than_65535_entries(tmp_path: Path) -> None:
    source = tmp_path / "tiny.dcm"
    source.write_bytes(b"DICM")
    count = 65_536 + 2
    path = tmp_path / "many.zip"
    write_stream(stream_zip((f"SE{n // 1000}/IM{n:05d}.dcm", source) for n in range(count)), path)

    tail = path.read_bytes()[-200:]
    assert b"PK\x06\x06" in tail  # ZIP64 end of central directory record
    assert b"PK\x06\x07" in tail  # and its locator
    end = tail[tail.rindex(b"PK\x05\x06") :]
    assert struct.unpack("<HH", end[8:12]) == (0xFFFF, 0xFFFF)
    unzip_test(path)
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        assert len(infos) == count
        assert infos[-1].filename == f"SE65/IM{count - 1:05d}.dcm"
        assert archive.read(infos[-1]) == b"DICM"
        assert zlib.crc32(b"DICM") == infos[-1].CRC


def test_memory_stays_flat_on_a_300_mb_file(tmp_path: Path) -> None:
    size = 300 * 1024 * 1024
    big = tmp_path / "big.dcm"
    head = os.urandom(4096)
    with big.open("wb") as out:  # sparse: costs no disk, still read in full
        out.write(head)
        out.truncate(size)
    expected_crc = zlib.crc32(head)
    zeros = bytes(1 << 20)
    remaining = size - len(head)
    while remaining:
        step = min(remaining, len(zeros))
        expected_crc = zlib.crc32(zeros[:step] if step < len(zeros) else zeros, expected_crc)
        remaining -= step

    total = 0
    chunks = 0
    tail = b""
    tracemalloc.start()
    try:
        for chunk in stream_zip([("a.dcm", big), ("b.dcm", big)]):
            total += len(chunk)
            chunks += 1
            tail = chunk
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes"
    assert chunks > 2 * size // (1 << 16)  # yielded as it went, not at the end
    assert total > 2 * size
    # The central directory in the last chunk records both entries, CRC computed on the fly.
    first = tail.index(b"PK\x01\x02")
    header = struct.unpack("<IHHHHHHIIIHHHHHII", tail[first : first + 46])
    assert header[7] == expected_crc
    assert header[8] == header[9] == size


@pytest.mark.skipif(
    not os.environ.get("DOLMEN_SLOW_TESTS"), reason="reads 2 x 4 GiB; set DOLMEN_SLOW_TESTS=1"
)
def test_zip64_with_a_file_over_4_gib(tmp_path: Path) -> None:
    size = (4 << 30) + 12345
    big = tmp_path / "big.dcm"
    with big.open("wb") as out:
        out.write(b"head")
        out.truncate(size)
    path = tmp_path / "big.zip"
    # Write the archive sparse too, skipping runs of zeros.
    with path.open("wb") as out:
        for chunk in stream_zip([("a.dcm", big), ("b.dcm", big)], chunk_size=1 << 20):
            if chunk.count(0) == len(chunk):
                out.seek(len(chunk), os.SEEK_CUR)
            else:
                out.write(chunk)
        out.truncate()
    unzip_test(path)
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        assert [info.file_size for info in infos] == [size, size]
        assert infos[1].header_offset > 0xFFFFFFFF


# -- archive_name --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (
            ("DOE^JOHN PAT001", "20200101 CT CHEST", "SE1 Axial", "IM0001.dcm"),
            "DOE^JOHN PAT001/20200101 CT CHEST/SE1 Axial/IM0001.dcm",
        ),
        (("../../etc/passwd",), "etc_passwd"),
        (("..", "..", "etc", "passwd"), "_/_/etc/passwd"),
        (("/abs",), "abs"),
        (("/abs", "x"), "abs/x"),
        (("a\x00b",), "ab"),
        (("C:\\x",), "C__x"),
        (("C:",), "C_"),
        (("T1/T2 map",), "T1_T2 map"),
        (("line\nbreak\ttab",), "line break tab"),
        (("  padded  ",), "padded"),
        (("trailing dots...",), "trailing dots"),
        (("",), "_"),
        ((".",), "_"),
        (("CON",), "_CON"),
        (("nul.txt",), "_nul.txt"),
        (("COM1",), "_COM1"),
        (("CONSOLE",), "CONSOLE"),
        (("evil\u202etxt.exe",), "eviltxt.exe"),  # RIGHT-TO-LEFT OVERRIDE removed
        (("Je\u0301ro\u0302me",), "Jérôme"),  # NFC
        (('a<b>c:d"e|f?g*h',), "a_b_c_d_e_f_g_h"),
        (("bad\ud800surrogate",), "badsurrogate"),
        ((), "_"),
    ],
)
def test_archive_name(parts: tuple[str, ...], expected: str) -> None:
    assert archive_name(*parts) == expected


def test_archive_name_limits_length_and_keeps_extension() -> None:
    long = "X" * 200
    assert archive_name(long) == "X" * MAX_PART_CHARS
    name = archive_name(long + ".dcm")
    assert name.endswith(".dcm") and len(name) == MAX_PART_CHARS


NASTY = [
    "../../etc/passwd",
    "/abs",
    "a\x00b",
    "C:\\x",
    "\\\\server\\share\\x",
    "..",
    "...",
    ". .",
    " ",
    "~/.ssh/id_rsa",
    "a/../../b",
    "\x1b[31mred",
    "x" * 1000,
    "é" * 100 + ".dcm",
    "山田" * 50,
    "CON.txt",
    "lpt9",
    "\u2028\u2029",
    "\ufeffbom",
    "\U0001f600 emoji",
    "dot.",
]


@pytest.mark.parametrize("text", NASTY)
def test_archive_name_is_always_safe(text: str) -> None:
    name = archive_name("Patient", text, text + ".dcm")
    assert not name.startswith(("/", "\\"))
    assert "\\" not in name and ":" not in name and "\x00" not in name
    components = name.split("/")
    assert len(components) == 3
    for component in components:
        assert component not in {"", ".", ".."}
        assert component == component.strip(". ")
        assert len(component) <= MAX_PART_CHARS
        assert all(unicodedata.category(char)[0] != "C" for char in component)
    name.encode("utf-8")  # no lone surrogates
    assert archive_name(*components) == name  # cleaning again changes nothing
