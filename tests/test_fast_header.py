"""The fast header reader gives pydicom's values, or gives up and lets pydicom read the file.

For every file, the outcome of ``fast_header`` must be ``None`` (pydicom reads it) or exactly
what the pydicom path (``read_header`` + ``_header``) gives: the same indexed fields, or the
same rejection. Checked on every pydicom test and charset file, on files written in each
encoding the reader handles, and on thousands of truncated and corrupted variants.
"""
from __future__ import annotations

import io
import random
import warnings
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_charset_files
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.uid import ImplicitVRLittleEndian
from pydicom.uid import JPEGBaseline8Bit

from dicomnode import demodata
from dicomnode.errors import RejectedInstance
from dicomnode.header import _header
from dicomnode.header import fast_header
from dicomnode.header import read_header
from tests.conftest import pydicom_test_files


def _pydicom_outcome(path: Path) -> tuple[str, Any]:
    try:
        return "ok", _header(read_header(path))
    except RejectedInstance as exc:
        return "rejected", exc.message


def _fast_outcome(path: Path) -> tuple[str, Any] | None:
    try:
        head = fast_header(path)
    except RejectedInstance as exc:
        return "rejected", exc.message
    return None if head is None else ("ok", head)


def _check(path: Path) -> bool:
    """Assert the fast reader agrees with pydicom; True when it read the file itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = _fast_outcome(path)
        if fast is None:
            return False
        assert fast == _pydicom_outcome(path), path
    return True


def _write(ds: Dataset, path: Path, implicit: bool = False) -> Path:
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ds.file_meta.TransferSyntaxUID
    ds.save_as(path, enforce_file_format=True)
    return path


#: Files the reader must read itself (not hand to pydicom): the common kinds.
MUST_READ = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "rtplan.dcm",
             "MR_small_implicit.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG-lossy.dcm", "reportsi.dcm", "liver_1frame.dcm"]


@pytest.mark.parametrize("path", pydicom_test_files(), ids=lambda p: p.name)
def test_every_pydicom_file_agrees(path: Path) -> None:
    _check(path)


def test_common_files_are_read_without_pydicom() -> None:
    for name in MUST_READ:
        assert _check(Path(get_testdata_file(name))), name
    for path in get_charset_files("*.dcm"):
        _check(Path(path))


@pytest.mark.parametrize("name", sorted(Path(p).name for p in get_charset_files("*.dcm")))
def test_charset_files_agree(name: str) -> None:
    _check(Path(get_charset_files(name)[0]))


def _instance() -> Dataset:
    ds = demodata.make_instance(3, 1, 0, 2, 16)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Müller^Zoë=ミュラー"
    ds.StudyDescription = "Kopf \\ Hals "  # two values, padding
    ds.AccessionNumber = ""
    return ds


def test_encodings_and_structures(tmp_path: Path) -> None:
    ds = _instance()
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.3"
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    inner = Dataset()
    inner.CodeValue = "X"
    item.ConceptNameCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item, Dataset()])
    ds.ReferencedImageSequence.is_undefined_length = True
    item.ConceptNameCodeSequence.is_undefined_length = True
    for i, implicit in enumerate((False, True)):
        assert _check(_write(ds, tmp_path / f"seq{i}.dcm", implicit))
    # Defined-length items and sequences.
    ds.ReferencedImageSequence.is_undefined_length = False
    item.ConceptNameCodeSequence.is_undefined_length = False
    assert _check(_write(ds, tmp_path / "defined.dcm"))
    # Encapsulated pixel data with trailing padding after it.
    ds = _instance()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(300) + b"\xff\xd9", b"\x01" * 51])
    ds["PixelData"].VR = "OB"
    ds.DataSetTrailingPadding = b"\0" * 8
    assert _check(_write(ds, tmp_path / "encaps.dcm"))


@pytest.mark.parametrize("keyword, value", [
    ("InstanceNumber", "1.5"), ("InstanceNumber", " 7 "), ("InstanceNumber", "1\\2"), ("NumberOfFrames", "0"),
    ("SeriesNumber", ""), ("SOPInstanceUID", "1.2.3\\4.5"), ("StudyInstanceUID", ""), ("PatientID", "  x  "),
    ("PatientName", "A^B="), ("PatientName", "A\\B"), ("Modality", "CT\\PT"), ("StudyDate", " 2020 "),
    ("SpecificCharacterSet", ["", "ISO 2022 IR 87"]), ("SpecificCharacterSet", "NONSENSE"),
    ("SpecificCharacterSet", ""), ("SeriesInstanceUID", "1.2.abc"),
])
def test_odd_values_agree(tmp_path: Path, keyword: str, value: Any) -> None:
    ds = demodata.make_instance(1, 0, 0, 0, 16)
    setattr(ds, keyword, value)
    for implicit in (False, True):
        _check(_write(ds, tmp_path / f"{implicit}.dcm", implicit))


def test_truncated_and_corrupted_variants_agree(tmp_path: Path) -> None:
    """Cut and bit-flipped copies: the reader gives up or agrees, never differs."""
    rng = random.Random(20260)
    sources = [Path(get_testdata_file(n)) for n in ("CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm",
                                                    "rtplan.dcm")]
    buf = io.BytesIO()
    _instance().save_as(buf, enforce_file_format=True)
    originals = [p.read_bytes() for p in sources] + [buf.getvalue()]
    target = tmp_path / "variant.dcm"
    read = 0
    for data in originals:
        header_end = min(len(data), 2048)
        cuts = list(range(128, header_end, 3)) + rng.sample(range(header_end, len(data)), min(40, len(data) - header_end))
        for cut in cuts:
            target.write_bytes(data[:cut])
            read += _check(target)
        for _ in range(400):
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                pos = rng.randrange(132, header_end)
                mutated[pos] = rng.randrange(256)
            target.write_bytes(bytes(mutated))
            read += _check(target)
    assert read > 500  # most corruptions hit values, which the reader handles itself


def test_rejections_come_from_pydicom(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"\0" * 128 + b"NOPE" + b"\0" * 100)
    assert fast_header(path) is None
    ds = demodata.make_instance(1, 0, 0, 0, 16)
    del ds.file_meta.TransferSyntaxUID
    pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=True)
    assert path.read_bytes()[128:132] == b"DICM" and fast_header(path) is None
    ds = demodata.make_instance(1, 0, 0, 0, 16)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    del ds.SOPInstanceUID
    _write(ds, path)
    with pytest.raises(RejectedInstance, match="Missing SOP Instance UID"):
        fast_header(path)
