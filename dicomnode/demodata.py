"""Deterministic synthetic studies for demos, tests and benchmarks (``dolmen demo-data``).

Every instance is a valid CT or MR Image Storage object in Explicit VR Little Endian with a
real pixel ramp and a disc, so previews are not blank. The same arguments always give
byte-identical files, so two runs (or Dolmen and Orthanc) are compared on the same data.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID
from pydicom.uid import ExplicitVRLittleEndian

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ROOT = "1.2.826.0.1.3680043.10.1024"  # a private test root

FIRST = ["ANNA", "BRUNO", "CHLOE", "DAVID", "EMMA", "FELIX", "GRETA", "HUGO",
         "IRIS", "JONAS", "KARIN", "LUCAS", "MARIE", "NOAH", "OLGA", "PAUL"]
LAST = ["MULLER", "SCHMIDT", "DUBOIS", "ROSSI", "GARCIA", "SMITH", "NOVAK",
        "JANSSEN", "BERG", "COSTA", "WEBER", "MARTIN", "BRAIN", "KNEE"]
BODY = ["HEAD", "CHEST", "ABDOMEN", "PELVIS", "KNEE", "SPINE"]


def uid(*parts: object) -> str:
    """A deterministic UID under :data:`ROOT` from any parts."""
    digest = hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()
    return f"{ROOT}.{int(digest[:24], 16)}"


def pixels(size: int, seed: int) -> np.ndarray:
    """A 16-bit ramp with a bright disc, different for each seed."""
    y, x = np.mgrid[0:size, 0:size]
    disc = ((x - size / 2) ** 2 + (y - size / 2) ** 2) < (size / 2.5) ** 2
    img = (x * 4 + y * 2 + seed * 37) % 1200 + disc * 800
    return img.astype(np.uint16)


def modality_of(p: int, st: int) -> str:
    """CT for most studies, MR for every third."""
    return "CT" if (p + st) % 3 else "MR"


def make_instance(p: int, st: int, se: int, i: int, size: int = 128, modality: str | None = None) -> Dataset:
    """Instance ``i`` of series ``se`` of study ``st`` of patient ``p``.

    Returns a :class:`~pydicom.dataset.Dataset` with file meta, ready for ``save_as`` or
    for sending with a C-STORE.
    """
    modality = modality or modality_of(p, st)
    pid = f"PAT{p:05d}"
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    sop_uid = uid("instance", p, st, se, i)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = f"{LAST[p % len(LAST)]}^{FIRST[p % len(FIRST)]}"
    ds.PatientID = pid
    ds.PatientBirthDate = f"{1940 + p % 60}{1 + p % 12:02d}{1 + p % 28:02d}"
    ds.PatientSex = "FM"[p % 2]
    ds.StudyInstanceUID = uid("study", p, st)
    ds.StudyDate = f"{2015 + st % 10}{1 + (p + st) % 12:02d}{1 + (p * 3 + st) % 28:02d}"
    ds.StudyTime = f"{8 + st % 10:02d}{(p * 7) % 60:02d}00"
    ds.StudyID = str(st + 1)
    ds.AccessionNumber = f"ACC{p:05d}{st:02d}"
    ds.StudyDescription = f"{modality} {BODY[(p + st) % len(BODY)]}"
    ds.ReferringPhysicianName = "WHO^KNOWS"
    ds.SeriesInstanceUID = uid("series", p, st, se)
    ds.SeriesNumber = se + 1
    ds.SeriesDescription = f"Series {se + 1} {BODY[(p + st) % len(BODY)].lower()}"
    ds.Modality = modality
    ds.BodyPartExamined = BODY[(p + st) % len(BODY)]
    ds.InstanceNumber = i + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(i) * 2.5]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SliceThickness = 2.5
    ds.PixelSpacing = [0.7, 0.7]
    ds.FrameOfReferenceUID = uid("for", p, st)
    ds.Rows = size
    ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.PixelData = pixels(size, p * 1000 + st * 100 + se * 10 + i).tobytes()
    return ds


def iter_instances(patients: int = 4, studies: int = 2, series: int = 2, instances: int = 10,
                   size: int = 128, first_patient: int = 0) -> Iterator[tuple[str, Dataset]]:
    """Yield ``(relative path, dataset)`` for the whole synthetic data set, in a fixed order."""
    for p in range(first_patient, first_patient + patients):
        for st in range(studies):
            for se in range(series):
                for i in range(instances):
                    rel = os.path.join(f"PAT{p:05d}", f"ST{st}", f"SE{se}", f"IM{i:04d}.dcm")
                    yield rel, make_instance(p, st, se, i, size)


def write(out: str | os.PathLike[str], **shape: int) -> list[Path]:
    """Write the data set under ``out`` (keyword arguments as :func:`iter_instances`).

    Returns the paths written, in order.
    """
    paths: list[Path] = []
    for rel, ds in iter_instances(**shape):
        path = Path(out) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_large(path: str | os.PathLike[str], megabytes: int, *, p: int = 900, st: int = 0, se: int = 0,
                i: int = 0) -> Path:
    """Write one multi-frame 512×512 16-bit instance of about ``megabytes`` MiB, streamed to disk.

    For tests and benchmarks of large transfers: the pixel data is written in chunks, so
    making a 2 GB object needs no 2 GB of memory.
    """
    frames = max(1, megabytes * 1024 * 1024 // (512 * 512 * 2))
    ds = make_instance(p, st, se, i, 16)
    del ds.PixelData
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063
    ds.FrameTime = 40.0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    frame = pixels(512, p + st + se + i).tobytes()
    length = len(frame) * frames
    with open(path, "ab") as f:
        # (7FE0,0010) Pixel Data, OW, explicit VR little endian: tag, VR, 2 reserved bytes, length.
        f.write(b"\xe0\x7f\x10\x00OW\x00\x00" + length.to_bytes(4, "little"))
        for _ in range(frames):
            f.write(frame)
    return path
