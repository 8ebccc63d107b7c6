"""Tests of dicomnode.render: pydicom's test images against DCMTK's rendering of them.

The table and how both renderers are made to use the same window are in
``tests/render_reference.py``. DCMTK runs through conftest's ``dcmtk`` fixture
(TCP_NODELAY=1). Run with ``-s`` to see the measured differences.
"""

from __future__ import annotations

import io
import statistics
import subprocess
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.encaps import get_frame
from pydicom.pixels import apply_modality_lut
from pydicom.pixels import pixel_array
from pydicom.uid import MPEG2MPML
from pydicom.uid import CTImageStorage
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pydicom.uid import EncapsulatedPDFStorage
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.uid import RLELossless
from pydicom.uid import SecondaryCaptureImageStorage
from pydicom.uid import generate_uid

from dicomnode.errors import RenderError
from dicomnode.render import MAX_FRAME_BYTES
from dicomnode.render import PRESET_LABELS
from dicomnode.render import WINDOW_PRESETS
from dicomnode.render import Window
from dicomnode.render import frame_count
from dicomnode.render import has_pixels
from dicomnode.render import placeholder
from dicomnode.render import render
from tests.render_reference import NO_IMAGE
from tests.render_reference import REFERENCES
from tests.render_reference import Entry

Array = npt.NDArray[np.uint8]
Dcmtk = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# --------------------------------------------------------------------------- helpers


def bundled(name: str) -> Path:
    """Path of one of pydicom's bundled test files."""
    return Path(get_testdata_file(name))


def decode_png(data: bytes) -> Image.Image:
    """Open encoded image bytes, checking they are a complete, valid image."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def pixels(data: bytes) -> Array:
    return np.asarray(decode_png(data))


def dcmtk_render(dcmtk: Dcmtk, tool: str, source: Path, out: Path, *options: str) -> Array:
    """Render `source` with a DCMTK tool as PNG (overlays off) and return the pixels.

    `dcmtk` is conftest's fixture, which runs the tool with TCP_NODELAY=1.
    """
    dcmtk(tool, "-O", *options, "+on", source, out)
    return np.asarray(Image.open(out))


def min_max_window(path: Path, frame: int) -> Window:
    """The window DCMTK's ``+Wm`` computes: min and max modality values of the frame."""
    ds = pydicom.dcmread(path)
    values = apply_modality_lut(pixel_array(ds, index=frame), ds)
    low, high = float(values.min()), float(values.max())
    return Window((low + high + 1) / 2, max(high - low + 1, 1))


def reference_rendering(
    dcmtk: Dcmtk, entry: Entry, frame: int, tmp_path: Path
) -> tuple[Array, Window | None]:
    """Return the reference pixels of `entry` and the window Dolmen must use to match."""
    path = bundled(entry.name)
    source = bundled(entry.twin) if entry.twin else path
    tool = entry.reference
    if tool == "pydicom":
        ds = pydicom.dcmread(path)
        ds.decompress()
        # Only what rendering needs: some of these files have elements pydicom reads but
        # cannot write back (SC_rgb_jpeg.dcm's (0008,0008)).
        decoded = Dataset()
        decoded.file_meta = ds.file_meta
        for element in ds:
            if element.tag.group == 0x0028 or element.keyword in (
                "SOPClassUID",
                "SOPInstanceUID",
                "PixelData",
            ):
                decoded.add(element)
        source = write(decoded, tmp_path / "decoded-by-pydicom.dcm")
        tool = "dcm2pnm"
    options = ["+F", str(frame + 1)]
    window = None
    if entry.window == "file":
        options += ["+Wi", "1"]
    elif entry.window == "minmax":
        options.append("+Wm")
        window = min_max_window(path, frame)
    return dcmtk_render(dcmtk, tool, source, tmp_path / f"dcmtk-{frame}.png", *options), window


def compare(name: str, ours: Array, reference: Array, max_mean: float = 1.0, max_abs: int = 2) -> None:
    """Assert two renderings agree within tolerance; print the measured difference."""
    assert ours.shape == reference.shape
    difference = np.abs(ours.astype(np.int16) - reference.astype(np.int16))
    mean, largest = float(difference.mean()), int(difference.max())
    print(f"\n{name}: mean |difference| {mean:.3f}, max {largest}")
    assert mean <= max_mean, f"mean difference {mean:.3f} > {max_mean}"
    assert largest <= max_abs, f"max difference {largest} > {max_abs}"


def write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def image_dataset(
    rows: int = 4,
    columns: int = 4,
    pixel_bytes: bytes | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    **attributes: object,
) -> Dataset:
    """A minimal Secondary Capture MONOCHROME2 16-bit instance; attributes override."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixel_bytes if pixel_bytes is not None else bytes(rows * columns * 2)
    return ds


# --------------------------------------------------------------------------- the table

RENDERED = [entry for entry in REFERENCES if entry.error is None]
REFUSED = [entry for entry in REFERENCES if entry.error is not None]
MULTI_FRAME = [entry for entry in RENDERED if entry.frames > 1]


def test_table_covers_every_bundled_image() -> None:
    folder = bundled("CT_small.dcm").parent
    images = set()
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        if "Rows" in ds and ds.file_meta.get("TransferSyntaxUID"):
            images.add(path.name)
    assert images == {entry.name for entry in REFERENCES}


@pytest.mark.parametrize("entry", RENDERED, ids=lambda entry: entry.name)
def test_matches_reference(entry: Entry, tmp_path: Path, dcmtk: Dcmtk) -> None:
    reference, window = reference_rendering(dcmtk, entry, 0, tmp_path)
    image = decode_png(render(bundled(entry.name), window=window))
    assert image.format == "PNG"
    assert image.size == entry.size
    assert image.mode == entry.mode
    compare(entry.name, np.asarray(image), reference, entry.max_mean, entry.max_abs)


@pytest.mark.parametrize("entry", MULTI_FRAME, ids=lambda entry: entry.name)
def test_last_frame_matches_reference(entry: Entry, tmp_path: Path, dcmtk: Dcmtk) -> None:
    last = entry.frames - 1
    reference, window = reference_rendering(dcmtk, entry, last, tmp_path)
    path = bundled(entry.name)
    ours = pixels(render(path, frame=last, window=window))
    compare(f"{entry.name} frame {last + 1}", ours, reference, entry.max_mean, entry.max_abs)
    assert not np.array_equal(ours, pixels(render(path, frame=0, window=window)))
    assert frame_count(pydicom.dcmread(path)) == entry.frames


@pytest.mark.parametrize("entry", REFUSED, ids=lambda entry: entry.name)
def test_refused_with_reason(entry: Entry) -> None:
    assert entry.error is not None
    with pytest.raises(RenderError, match=entry.error):
        render(bundled(entry.name))


@pytest.mark.parametrize(("name", "message"), NO_IMAGE)
def test_instance_without_pixels(name: str, message: str) -> None:
    with pytest.raises(RenderError) as raised:
        render(bundled(name))
    assert str(raised.value) == message
    ds = pydicom.dcmread(bundled(name))
    assert not has_pixels(ds)
    assert frame_count(ds) == 0
    with pytest.raises(RenderError, match="has no image"):
        render(ds)


def test_encapsulated_pdf(tmp_path: Path) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = EncapsulatedPDFStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = EncapsulatedPDFStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DOC"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    path = write(ds, tmp_path / "pdf.dcm")
    for source in (path, pydicom.dcmread(path)):
        with pytest.raises(RenderError, match="^This instance has no image: it is an Encapsulated PDF$"):
            render(source)


# --------------------------------------------------------------------------- frames


def test_frame_out_of_range() -> None:
    path = bundled("rtdose.dcm")
    with pytest.raises(RenderError, match="^Frame 16 does not exist: this instance has 15 frames$"):
        render(path, frame=15)
    with pytest.raises(RenderError, match="this instance has 15 frames"):
        render(path, frame=-1)
    with pytest.raises(RenderError, match="^Frame 2 does not exist: this instance has 1 frame$"):
        render(bundled("CT_small.dcm"), frame=1)
    with pytest.raises(RenderError, match="^Frame 31 does not exist: this instance has 30 frames$"):
        render(pydicom.dcmread(bundled("examples_ybr_color.dcm")), frame=30)


def test_only_the_requested_frame_is_read(tmp_path: Path) -> None:
    """Frame 150 of a 200-frame, 26 MB instance: memory stays near one frame's size."""
    frames, rows, columns = 200, 256, 256
    ramp = np.arange(rows * columns, dtype=np.uint16).reshape(rows, columns) % 1000
    data = np.stack([ramp + 40 * index for index in range(frames)])
    ds = image_dataset(rows, columns, data.tobytes(), NumberOfFrames=frames)
    path = write(ds, tmp_path / "multiframe.dcm")
    del data, ds

    render(path, frame=1)  # warm-up: imports and caches are not the frame
    tracemalloc.start()
    try:
        png = render(path, frame=150, window=Window(6500, 1000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes: more than the requested frame was decoded"
    # Frame 150 holds ramp + 6000; LINEAR window 6500/1000 (PS3.3 C.11.2.1.2.1).
    expected = np.clip((ramp + 6000.0 - 6499.5) / 999 + 0.5, 0, 1) * 255
    assert np.abs(pixels(png) - np.rint(expected)).max() <= 1


def test_frame_count_and_has_pixels() -> None:
    assert frame_count(pydicom.dcmread(bundled("rtdose.dcm"))) == 15
    assert frame_count(pydicom.dcmread(bundled("CT_small.dcm"))) == 1
    header = pydicom.dcmread(bundled("examples_ybr_color.dcm"), stop_before_pixels=True)
    assert frame_count(header) == 30
    assert not has_pixels(header)
    assert has_pixels(pydicom.dcmread(bundled("examples_ybr_color.dcm")))
    with pytest.raises(RenderError, match=r"\(0028,0008\) Number of Frames is not a number"):
        frame_count(pydicom.dcmread(bundled("badVR.dcm")))


# --------------------------------------------------------------------------- windows and colour


def test_explicit_window_overrides_the_file_and_matches_dcmtk(tmp_path: Path, dcmtk: Dcmtk) -> None:
    path = bundled("MR_small.dcm")
    window = Window(900, 700)
    ours = pixels(render(path, window=window))
    assert not np.array_equal(ours, pixels(render(path)))
    reference = dcmtk_render(dcmtk, "dcm2pnm", path, tmp_path / "ww.png", "+Ww", "900", "700")
    compare("MR_small.dcm +Ww 900 700", ours, reference)


def test_sigmoid_window_matches_dcmtk(tmp_path: Path, dcmtk: Dcmtk) -> None:
    path = bundled("CT_small.dcm")
    ours = pixels(render(path, window=Window(40, 400, "SIGMOID")))
    reference = dcmtk_render(dcmtk, "dcm2pnm", path, tmp_path / "sig.png", "+Ww", "40", "400", "+Wfs")
    compare("CT_small.dcm SIGMOID 40/400", ours, reference)


def test_monochrome1_is_inverted_like_dcmtk(tmp_path: Path, dcmtk: Dcmtk) -> None:
    ds = pydicom.dcmread(bundled("CT_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    path = write(ds, tmp_path / "mono1.dcm")
    window = min_max_window(path, 0)
    ours = pixels(render(path, window=window))
    compare("CT_small as MONOCHROME1", ours, dcmtk_render(dcmtk, "dcm2pnm", path, tmp_path / "m1.png", "+Wm"))
    mono2 = pixels(render(bundled("CT_small.dcm"), window=window))
    assert np.array_equal(ours, 255 - mono2)


def test_voi_lut_sequence_matches_dcmtk(tmp_path: Path, dcmtk: Dcmtk) -> None:
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    del ds.WindowCenter, ds.WindowWidth
    values = ds.pixel_array
    first, count = int(values.min()), int(values.max() - values.min()) + 1
    curve = np.sqrt(np.linspace(0.0, 1.0, count)) * 65535  # a gamma curve, 16-bit entries
    item = Dataset()
    item.LUTDescriptor = [count, first, 16]
    item.LUTData = [int(v) for v in np.rint(curve)]
    ds.VOILUTSequence = [item]
    ds["VOILUTSequence"].value[0]["LUTDescriptor"].VR = "SS"
    ds["VOILUTSequence"].value[0]["LUTData"].VR = "US"
    path = write(ds, tmp_path / "voilut.dcm")
    ours = pixels(render(path))
    compare(
        "MR_small with a VOI LUT",
        ours,
        dcmtk_render(dcmtk, "dcm2pnm", path, tmp_path / "lut.png", "+Wl", "1"),
    )


def test_modality_lut_sequence_matches_dcmtk(tmp_path: Path, dcmtk: Dcmtk) -> None:
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    del ds.WindowCenter, ds.WindowWidth
    values = ds.pixel_array
    first, count = int(values.min()), int(values.max() - values.min()) + 1
    item = Dataset()
    item.LUTDescriptor = [count, first, 12]
    item.ModalityLUTType = "US"
    table = np.rint(np.linspace(0.0, 1.0, count) ** 2 * 4095).astype(int)
    item.LUTData = [int(v) for v in table]
    ds.ModalityLUTSequence = [item]
    ds["ModalityLUTSequence"].value[0]["LUTDescriptor"].VR = "SS"
    ds["ModalityLUTSequence"].value[0]["LUTData"].VR = "US"
    path = write(ds, tmp_path / "mlut.dcm")
    # 12 bits per entry, as real files have: pydicom's apply_modality_lut cannot
    # (dtype "uint12"), so the min-max window comes from the table directly.
    mapped = table[values - first]
    low, high = int(mapped.min()), int(mapped.max())
    ours = pixels(render(path, window=Window((low + high + 1) / 2, high - low + 1)))
    compare(
        "MR_small with a Modality LUT", ours, dcmtk_render(dcmtk, "dcm2pnm", path, tmp_path / "m.png", "+Wm")
    )


def test_enhanced_functional_groups_give_each_frame_its_window(tmp_path: Path, dcmtk: Dcmtk) -> None:
    """Per-frame (0028,9132) Frame VOI LUT and shared (0028,9145) Pixel Value Transformation."""
    mr = pydicom.dcmread(bundled("MR_small.dcm"))
    stored = mr.pixel_array.astype(np.int16)
    windows = [Window(600, 800), Window(1200, 400), Window(300, 300)]
    multi = image_dataset(64, 64, np.stack([stored] * 3).tobytes(), NumberOfFrames=3, PixelRepresentation=1)
    transformation = Dataset()
    transformation.RescaleSlope = 2
    transformation.RescaleIntercept = -100
    transformation.RescaleType = "US"
    shared = Dataset()
    shared.PixelValueTransformationSequence = [transformation]
    multi.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for window in windows:
        voi = Dataset()
        voi.WindowCenter = window.center
        voi.WindowWidth = window.width
        group = Dataset()
        group.FrameVOILUTSequence = [voi]
        per_frame.append(group)
    multi.PerFrameFunctionalGroupsSequence = per_frame
    path = write(multi, tmp_path / "enhanced.dcm")

    single = image_dataset(
        64, 64, stored.tobytes(), PixelRepresentation=1, RescaleSlope=2, RescaleIntercept=-100
    )
    plain = write(single, tmp_path / "plain.dcm")
    for index, window in enumerate(windows):
        ours = pixels(render(path, frame=index))
        center, width = f"{window.center:g}", f"{window.width:g}"
        reference = dcmtk_render(dcmtk, "dcm2pnm", plain, tmp_path / f"fg{index}.png", "+Ww", center, width)
        compare(f"functional groups frame {index + 1}", ours, reference)


def test_automatic_window_uses_percentiles_and_ignores_padding() -> None:
    """CT_small has no window; its -2000 padding must not squeeze the grey range."""
    path = bundled("CT_small.dcm")
    auto = pixels(render(path))
    assert auto.min() == 0 and auto.max() == 255
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array
    body = stored != ds.PixelPaddingValue
    white = float(np.mean(auto[body] == 255))
    black = float(np.mean(auto[body] == 0))
    assert 0.002 <= white <= 0.02 and 0.002 <= black <= 0.02
    assert not np.array_equal(auto, pixels(render(path, window=min_max_window(path, 0))))
    dose = pixels(render(bundled("rtdose.dcm"), frame=3))  # 32-bit: the float path
    assert dose.min() == 0 and dose.max() == 255


def test_presets_and_window_validation() -> None:
    assert list(WINDOW_PRESETS) == list(PRESET_LABELS)
    assert WINDOW_PRESETS["ct-brain"] == Window(40, 80)
    assert WINDOW_PRESETS["ct-soft-tissue"] == Window(40, 400)
    assert WINDOW_PRESETS["ct-lung"] == Window(-600, 1500)
    assert WINDOW_PRESETS["ct-bone"] == Window(400, 1800)
    for bad in ((40, 0), (40, -1), (float("nan"), 400)):
        with pytest.raises(ValueError):
            Window(*bad)
    with pytest.raises(ValueError, match="VOI LUT function"):
        Window(40, 400, "CUBIC")
    lung = pixels(render(bundled("CT_small.dcm"), window=WINDOW_PRESETS["ct-lung"]))
    bone = pixels(render(bundled("CT_small.dcm"), window=WINDOW_PRESETS["ct-bone"]))
    assert not np.array_equal(lung, bone)


# --------------------------------------------------------------------------- sources and output


@pytest.mark.parametrize(
    ("name", "frame"),
    [
        ("image_dfl.dcm", 0),
        ("MR_small_expb.dcm", 0),
        ("rtdose_rle.dcm", 7),
        ("liver_expb_1frame.dcm", 0),
        ("examples_ybr_color.dcm", 12),
        ("examples_palette.dcm", 0),
        ("SC_rgb_jpeg.dcm", 0),
    ],
)
def test_dataset_source_renders_like_the_path(name: str, frame: int) -> None:
    path = bundled(name)
    assert render(pydicom.dcmread(path), frame=frame) == render(path, frame=frame)
    assert render(str(path), frame=frame) == render(path, frame=frame)


def test_thumbnails_keep_aspect_ratio_within_bounds() -> None:
    assert decode_png(render(bundled("CT_small.dcm"), max_size=64)).size == (64, 64)
    palette = decode_png(render(bundled("examples_palette.dcm"), max_size=100))
    assert palette.size == (100, 44) and palette.mode == "RGB"
    tall = decode_png(render(bundled("JPEG2000.dcm"), max_size=128))
    assert tall.size == (32, 128)
    assert decode_png(render(bundled("MR_small.dcm"), max_size=256)).size == (64, 64)
    with pytest.raises(ValueError):
        render(bundled("MR_small.dcm"), max_size=0)


def test_jpeg_output() -> None:
    for name, mode in (("CT_small.dcm", "L"), ("examples_rgb_color.dcm", "RGB")):
        path = bundled(name)
        image = decode_png(render(path, fmt="jpeg", quality=95))
        assert image.format == "JPEG" and image.mode == mode
        difference = np.abs(np.asarray(image, dtype=np.int16) - pixels(render(path)).astype(np.int16))
        assert difference.mean() < 3
    small = render(bundled("examples_rgb_color.dcm"), fmt="jpeg", quality=20)
    assert len(small) < len(render(bundled("examples_rgb_color.dcm"), fmt="jpeg", quality=95))
    with pytest.raises(ValueError):
        render(bundled("CT_small.dcm"), fmt="gif")
    with pytest.raises(ValueError):
        render(bundled("CT_small.dcm"), fmt="jpeg", quality=0)


def test_placeholder() -> None:
    image = decode_png(placeholder("This instance has no image: it is a Basic Text SR"))
    assert image.format == "PNG" and image.size == (256, 256) and image.mode == "L"
    drawn = np.asarray(image)
    assert drawn.min() < drawn.max(), "no text was drawn"
    long_text = "A very long reason " * 40 + "Supercalifragilisticexpialidocious" * 3
    assert decode_png(placeholder(long_text, size=96)).size == (96, 96)
    assert decode_png(placeholder("", size=64)).size == (64, 64)
    assert decode_png(placeholder("JPEG too", fmt="jpeg")).format == "JPEG"


def test_png_preview_is_fast(tmp_path: Path) -> None:
    """A 512 x 512 16-bit CT preview; generous bound, the figure is in bench/render.py."""
    rng = np.random.default_rng(7)
    stored = (rng.normal(1024, 300, (512, 512))).clip(0, 4095).astype(np.int16)
    ds = image_dataset(
        512,
        512,
        stored.tobytes(),
        SOPClassUID=CTImageStorage,
        PixelRepresentation=1,
        RescaleIntercept=-1024,
        RescaleSlope=1,
    )
    path = write(ds, tmp_path / "ct.dcm")
    render(path)
    durations = []
    for _ in range(10):
        start = time.perf_counter()
        render(path)
        durations.append(time.perf_counter() - start)
    assert statistics.median(durations) < 0.25


# --------------------------------------------------------------------------- malformed input


MALFORMED = [
    pytest.param(
        dict(rows=65535, columns=65535, pixel_bytes=bytes(10)), "too large to render", id="65535x65535"
    ),
    pytest.param(
        dict(rows=16384, columns=16384, pixel_bytes=bytes(10), BitsAllocated=8, BitsStored=8, HighBit=7),
        "truncated",
        id="16384x16384-8bit",
    ),
    pytest.param(
        dict(BitsAllocated=64, BitsStored=64, HighBit=63), r"\(0028,0100\) Bits Allocated is 64", id="64bit"
    ),
    pytest.param(dict(BitsStored=20, HighBit=19), r"\(0028,0101\) Bits Stored is 20", id="stored>allocated"),
    pytest.param(
        dict(rows=64, columns=64, NumberOfFrames=1_000_000), "truncated or inconsistent", id="frames"
    ),
    pytest.param(dict(SamplesPerPixel=3, PlanarConfiguration=0), "Samples per Pixel", id="samples"),
    pytest.param(dict(PhotometricInterpretation="HSV"), "not supported", id="photometric"),
    pytest.param(dict(Rows=0), "0 pixels", id="zero-rows"),
]


@pytest.mark.parametrize(("arguments", "message"), MALFORMED)
@pytest.mark.parametrize("as_dataset", [False, True], ids=["path", "dataset"])
def test_malformed_pixel_module_is_refused_without_allocating(
    arguments: dict[str, Any], message: str, as_dataset: bool, tmp_path: Path
) -> None:
    ds = image_dataset(**arguments)
    path = write(ds, tmp_path / "bad.dcm")
    source = pydicom.dcmread(path) if as_dataset else path
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(RenderError, match=message):
            render(source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 2
    assert peak < 8 * 1024 * 1024


def test_absurd_frame_count_in_compressed_data(tmp_path: Path) -> None:
    ds = image_dataset(transfer_syntax=RLELossless, NumberOfFrames=1_000_000_000)
    ds.PixelData = encapsulate([b"\x00" * 64])
    path = write(ds, tmp_path / "frames.dcm")
    with pytest.raises(RenderError, match="Number of Frames is 1000000000"):
        render(path)


def test_deflate_bomb_is_refused_without_inflating_it_in_memory(tmp_path: Path) -> None:
    """600 MiB of zeros deflate to about 0.6 MB; render() must not inflate them at once."""
    ds = image_dataset(16384, 16384, b"\x00\x00")

    def encoded(transfer_syntax: str) -> tuple[bytes, bytes]:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        # (0002,0000) File Meta Information Group Length is the first element after "DICM".
        meta_end = 144 + int.from_bytes(data[140:144], "little")
        return data[:meta_end], data[meta_end:]

    meta, _ = encoded(DeflatedExplicitVRLittleEndian)
    _, body = encoded(ExplicitVRLittleEndian)
    body = body[: body.rindex(b"\xe0\x7f\x10\x00OW")]  # drop the 2-byte Pixel Data
    size = 600 * 1024 * 1024
    deflater = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [deflater.compress(body + b"\xe0\x7f\x10\x00OW\x00\x00" + size.to_bytes(4, "little"))]
    zeros = bytes(16 * 1024 * 1024)
    parts += [deflater.compress(zeros) for _ in range(size // len(zeros))]
    parts.append(deflater.flush())
    path = tmp_path / "bomb.dcm"
    path.write_bytes(meta + b"".join(parts))
    assert path.stat().st_size < 5 * 1024 * 1024

    tracemalloc.start()
    try:
        with pytest.raises(RenderError, match="inflates to more than 512 MiB"):
            render(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024 * 1024


@pytest.mark.parametrize(
    ("name", "header", "offset"),
    [
        ("SC_rgb_jpeg_dcmtk.dcm", b"\xff\xc0", 5),  # JPEG SOF0: length(2) precision(1), then Y, X
        ("MR_small_jp2klossless.dcm", b"\xff\x4f\xff\x51", 8),  # SIZ: Lsiz Rsiz, then Xsiz, Ysiz
    ],
)
def test_codestream_claiming_a_huge_image_is_refused(
    name: str, header: bytes, offset: int, tmp_path: Path
) -> None:
    """The codec allocates from the codestream header, so it must agree with Rows/Columns."""
    ds = pydicom.dcmread(bundled(name))
    frame = bytearray(get_frame(ds.PixelData, 0, number_of_frames=1))
    at = frame.index(header) + offset
    if header == b"\xff\xc0":
        frame[at : at + 4] = (60000).to_bytes(2, "big") * 2
    else:
        frame[at : at + 8] = (60000).to_bytes(4, "big") * 2
    ds.PixelData = encapsulate([bytes(frame)])
    path = write(ds, tmp_path / "huge.dcm")
    tracemalloc.start()
    try:
        with pytest.raises(RenderError, match="its codestream describes 60000 x 60000 pixels"):
            render(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024


def test_unsupported_transfer_syntax(tmp_path: Path) -> None:
    ds = image_dataset(transfer_syntax=MPEG2MPML)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    path = write(ds, tmp_path / "video.dcm")
    with pytest.raises(RenderError, match="MPEG2 Main Profile / Main Level .* is not supported"):
        render(path)


def test_frame_size_cap_is_512_mib() -> None:
    assert MAX_FRAME_BYTES == 512 * 1024 * 1024


def test_not_dicom(tmp_path: Path) -> None:
    path = tmp_path / "picture.png"
    path.write_bytes(placeholder("not DICOM"))
    with pytest.raises(RenderError):
        render(path)
    with pytest.raises(RenderError, match="Cannot open the file"):
        render(tmp_path / "missing.dcm")
