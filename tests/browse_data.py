"""Instances the browse tests need besides the demo set: hostile names, multi-frame, PDF, private tags."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID
from pydicom.uid import ExplicitVRLittleEndian

from dicomnode import demodata

XSS = "<script>alert(1)</script>"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
       b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
       b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\n"
       b"trailer<</Root 1 0 R>>\n%%EOF")


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def hostile(path: Path) -> Path:
    """A CT instance whose PatientName and descriptions are HTML."""
    ds = demodata.make_instance(700, 0, 0, 0, size=32)
    ds.PatientName = XSS
    ds.PatientID = "XSS<b>1</b>"
    ds.StudyDescription = '"><img src=x onerror=alert(2)>'
    ds.SeriesDescription = "<i>series</i>"
    return save(ds, path)


def rich(path: Path) -> Path:
    """A CT instance with a private block, a nested sequence and a long text value."""
    ds = demodata.make_instance(701, 0, 0, 0, size=32)
    ds.add_new(0x00290010, "LO", "DOLMEN TEST")
    ds.add_new(0x00291001, "LO", "private value")
    ds.add_new(0x00291002, "OB", b"\x01\x02" * 300)
    inner = Dataset()
    inner.CodeValue = "T-D0050"
    inner.CodingSchemeDesignator = "SRT"
    inner.CodeMeaning = "Tissue"
    item = Dataset()
    item.ReferencedSOPClassUID = demodata.CT_IMAGE_STORAGE
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item])
    ds.ImageComments = "long comment " * 60
    return save(ds, path)


def multiframe(path: Path, frames: int = 5, size: int = 32) -> Path:
    """A multi-frame MR instance whose frames differ (frame k is filled with k * 100)."""
    ds = demodata.make_instance(702, 0, 0, 0, size=size, modality="MR")
    pixels = np.stack([np.full((size, size), k * 100, dtype=np.uint16) for k in range(frames)])
    pixels[:, : size // 2, : size // 2] = 4000
    ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    ds.WindowCenter = 2048 - 1024  # stored values 0..4000 after the -1024 intercept
    ds.WindowWidth = 4096
    return save(ds, path)


def pdf(path: Path) -> Path:
    """An Encapsulated PDF instance (PS3.3 A.45.1)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF
    meta.MediaStorageSOPInstanceUID = demodata.uid("pdf", 703)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "PDF^REPORT"
    ds.PatientID = "PDF703"
    ds.StudyInstanceUID = demodata.uid("study", 703)
    ds.SeriesInstanceUID = demodata.uid("series", 703)
    ds.Modality = "DOC"
    ds.StudyDate = "20240102"
    ds.InstanceNumber = 1
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = PDF + (b"\x00" if len(PDF) % 2 else b"")
    return save(ds, path)
