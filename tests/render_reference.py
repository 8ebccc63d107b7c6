"""Reference table for ``tests/test_render.py``: pydicom's own test images.

Every image file shipped inside pydicom (``pydicom/data/test_files``; the files of the
separate pydicom-data download are not used) has one entry: its expected rendered size
and mode, and the reference rendering Dolmen's output is compared with.

References
----------
``dcm2pnm`` / ``dcmj2pnm`` / ``dcml2pnm``
    DCMTK 3.6 renders the file itself: ``dcm2pnm`` for uncompressed, deflated and RLE
    data, ``dcmj2pnm`` for JPEG baseline / extended / lossless, ``dcml2pnm`` for
    JPEG-LS. Always with ``-O`` (no overlays: Dolmen does not burn in overlay planes).
``pydicom``
    DCMTK 3.6 cannot decode the file (JPEG 2000, or a data set it cannot parse), so
    pydicom decodes it (``Dataset.decompress()``, written as Explicit VR Little
    Endian) and ``dcm2pnm`` renders that copy: the decoded samples are pydicom's,
    the display pipeline is still checked against DCMTK.

How both sides use the same window (the ``window`` column)
-----------------------------------------------------------
``file``
    The file has (0028,1050) *Window Center* / (0028,1051) *Window Width*: DCMTK
    gets ``+Wi 1`` (first window), Dolmen renders with its default, which is the
    file's first window.
``minmax``
    No window in the file. DCMTK gets ``+Wm`` (min-max window of the frame's
    modality values, center ``(min + max + 1) / 2``, width ``max - min + 1``) and
    Dolmen is given that same window explicitly, computed from pydicom's decoded
    frame and ``apply_modality_lut``. (Dolmen's own automatic window uses the
    0.5/99.5 percentiles, which DCMTK has no option for.)
``none``
    Colour images: no VOI transformation on either side.

Dolmen rounds the windowed value to the nearest grey level where DCMTK truncates,
hence differences of 1 on monochrome images; lossy colour JPEG differs by a few
levels at most between libjpeg builds. ``max_mean`` bounds the mean absolute
difference, ``max_abs`` the largest one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    """One pydicom test image and how to check Dolmen's rendering of it."""

    name: str
    """File name in ``pydicom/data/test_files``."""
    size: tuple[int, int]
    """Expected (width, height) of the rendering."""
    mode: str
    """Expected Pillow mode: ``"L"`` for monochrome, ``"RGB"`` for colour."""
    reference: str
    """``dcm2pnm``, ``dcmj2pnm``, ``dcml2pnm`` or ``pydicom`` (see the module docstring)."""
    covers: str
    """What the entry exercises."""
    window: str = "none"
    """``file``, ``minmax`` or ``none`` (see the module docstring)."""
    frames: int = 1
    twin: str | None = None
    """A file with the same pixels that DCMTK renders instead (see ``note``)."""
    error: str | None = None
    """When set, Dolmen must refuse the file with a RenderError containing this text."""
    note: str = ""
    max_mean: float = 1.0
    max_abs: int = 2


REFERENCES: list[Entry] = [
    # --- uncompressed, monochrome -------------------------------------------------
    Entry(
        "CT_small.dcm",
        (128, 128),
        "L",
        "dcm2pnm",
        "MONOCHROME2 signed 16-bit, Rescale Slope/Intercept, Pixel Padding Value",
        "minmax",
    ),
    Entry("MR_small.dcm", (64, 64), "L", "dcm2pnm", "MONOCHROME2 signed 16-bit, Window Center/Width", "file"),
    Entry("MR_small_implicit.dcm", (64, 64), "L", "dcm2pnm", "Implicit VR Little Endian", "file"),
    Entry("MR_small_bigendian.dcm", (64, 64), "L", "dcm2pnm", "Explicit VR Big Endian 16-bit", "file"),
    Entry("MR_small_expb.dcm", (64, 64), "L", "dcm2pnm", "Explicit VR Big Endian 16-bit", "file"),
    Entry("MR_small_padded.dcm", (64, 64), "L", "dcm2pnm", "trailing padding after Pixel Data", "file"),
    Entry(
        "examples_overlay.dcm",
        (484, 300),
        "L",
        "dcm2pnm",
        "12 bits stored in 16, unsigned, Window Center/Width",
        "file",
        note="has an overlay plane, which DCMTK draws by default (-O turns it off)",
    ),
    Entry(
        "image_dfl.dcm",
        (512, 512),
        "L",
        "dcm2pnm",
        "8-bit unsigned, Deflated Explicit VR Little Endian",
        "minmax",
    ),
    Entry("liver_1frame.dcm", (512, 512), "L", "dcm2pnm", "1-bit (SEG) little endian", "minmax"),
    Entry("liver_expb_1frame.dcm", (512, 512), "L", "dcm2pnm", "1-bit (SEG) big endian", "minmax"),
    Entry("rtdose.dcm", (10, 10), "L", "dcm2pnm", "32-bit unsigned, 15 frames", "minmax", frames=15),
    Entry("rtdose_1frame.dcm", (10, 10), "L", "dcm2pnm", "32-bit unsigned", "minmax"),
    Entry(
        "rtdose_expb.dcm",
        (10, 10),
        "L",
        "dcm2pnm",
        "32-bit big endian, 15 frames",
        "minmax",
        frames=15,
        twin="rtdose.dcm",
        note="DCMTK 3.6.7 renders this big endian 32-bit file wrongly (mean difference ~100 "
        "to its little endian twin, whose pixels pydicom decodes identically); compared "
        "with DCMTK's rendering of rtdose.dcm",
    ),
    Entry(
        "rtdose_expb_1frame.dcm",
        (10, 10),
        "L",
        "dcm2pnm",
        "32-bit big endian",
        "minmax",
        twin="rtdose_1frame.dcm",
        note="as rtdose_expb.dcm",
    ),
    # --- uncompressed, colour ------------------------------------------------------
    Entry("examples_rgb_color.dcm", (320, 240), "RGB", "dcm2pnm", "RGB 8-bit"),
    Entry("ExplVR_BigEnd.dcm", (80, 60), "RGB", "dcm2pnm", "RGB 8-bit, Explicit VR Big Endian"),
    Entry("SC_rgb_jpeg_dcmd.dcm", (256, 256), "RGB", "dcm2pnm", "RGB 8-bit, Implicit VR"),
    Entry("SC_rgb_small_odd.dcm", (3, 3), "RGB", "dcm2pnm", "RGB 3x3, odd length pixel data"),
    Entry("SC_rgb_small_odd_big_endian.dcm", (3, 3), "RGB", "dcm2pnm", "RGB 3x3, big endian, odd length"),
    Entry(
        "SC_ybr_full_422_uncompressed.dcm",
        (100, 100),
        "RGB",
        "dcm2pnm",
        "YBR_FULL_422 uncompressed (subsampled chroma, converted to RGB)",
    ),
    Entry("examples_palette.dcm", (800, 350), "RGB", "dcm2pnm", "PALETTE COLOR, 16-bit LUT entries"),
    # --- RLE ------------------------------------------------------------------------
    Entry("MR_small_RLE.dcm", (64, 64), "L", "dcm2pnm", "RLE Lossless, signed 16-bit", "file"),
    Entry("rtdose_rle.dcm", (10, 10), "L", "dcm2pnm", "RLE Lossless, 32-bit, 15 frames", "minmax", frames=15),
    Entry("rtdose_rle_1frame.dcm", (10, 10), "L", "dcm2pnm", "RLE Lossless, 32-bit", "minmax"),
    Entry("SC_rgb_rle.dcm", (100, 100), "RGB", "dcm2pnm", "RLE Lossless, RGB 8-bit"),
    Entry(
        "SC_rgb_rle_2frame.dcm", (100, 100), "RGB", "dcm2pnm", "RLE Lossless, RGB 8-bit, 2 frames", frames=2
    ),
    Entry("SC_rgb_rle_16bit.dcm", (100, 100), "RGB", "dcm2pnm", "RLE Lossless, RGB 16-bit"),
    Entry(
        "SC_rgb_rle_16bit_2frame.dcm",
        (100, 100),
        "RGB",
        "dcm2pnm",
        "RLE Lossless, RGB 16-bit, 2 frames",
        frames=2,
    ),
    Entry("SC_rgb_rle_32bit.dcm", (100, 100), "RGB", "dcm2pnm", "RLE Lossless, RGB 32-bit"),
    Entry(
        "SC_rgb_rle_32bit_2frame.dcm",
        (100, 100),
        "RGB",
        "dcm2pnm",
        "RLE Lossless, RGB 32-bit, 2 frames",
        frames=2,
    ),
    # --- JPEG -----------------------------------------------------------------------
    Entry("JPGExtended.dcm", (256, 1024), "L", "dcmj2pnm", "JPEG Extended 12-bit", "minmax"),
    Entry("SC_rgb_jpeg_gdcm.dcm", (100, 100), "RGB", "dcmj2pnm", "JPEG Lossless SV1, RGB"),
    Entry(
        "SC_rgb_dcmtk_+eb+cr.dcm", (100, 100), "RGB", "dcmj2pnm", "JPEG Baseline, RGB (no colour transform)"
    ),
    Entry("SC_rgb_dcmtk_+eb+cy+n1.dcm", (100, 100), "RGB", "dcmj2pnm", "JPEG Baseline, YBR_FULL", max_abs=3),
    Entry("SC_rgb_dcmtk_+eb+cy+n2.dcm", (100, 100), "RGB", "dcmj2pnm", "JPEG Baseline, YBR_FULL"),
    Entry(
        "SC_rgb_dcmtk_+eb+cy+np.dcm", (100, 100), "RGB", "dcmj2pnm", "JPEG Baseline, YBR_FULL_422", max_abs=3
    ),
    Entry("SC_rgb_dcmtk_+eb+cy+s2.dcm", (100, 100), "RGB", "dcmj2pnm", "JPEG Baseline, YBR_FULL_422"),
    Entry("SC_rgb_dcmtk_+eb+cy+s4.dcm", (100, 100), "RGB", "dcmj2pnm", "JPEG Baseline, YBR_FULL"),
    Entry("SC_rgb_jpeg_dcmtk.dcm", (100, 100), "RGB", "dcmj2pnm", "JPEG Baseline, YBR_FULL"),
    Entry(
        "SC_rgb_jpeg_lossy_gdcm.dcm",
        (100, 100),
        "RGB",
        "dcmj2pnm",
        "JPEG Baseline, YBR_FULL (GDCM)",
        max_abs=3,
    ),
    Entry("SC_rgb_small_odd_jpeg.dcm", (3, 3), "RGB", "dcmj2pnm", "JPEG Baseline, YBR_FULL, 3x3"),
    Entry(
        "SC_jpeg_no_color_transform.dcm",
        (256, 256),
        "RGB",
        "dcmj2pnm",
        "JPEG Baseline, RGB without Adobe transform",
    ),
    Entry(
        "SC_jpeg_no_color_transform_2.dcm",
        (256, 256),
        "RGB",
        "dcmj2pnm",
        "JPEG Baseline, RGB without Adobe transform",
    ),
    Entry(
        "SC_rgb_jpeg_app14_dcmd.dcm", (256, 256), "RGB", "dcmj2pnm", "JPEG Baseline, RGB with APP14 marker"
    ),
    Entry(
        "examples_ybr_color.dcm",
        (320, 240),
        "RGB",
        "dcmj2pnm",
        "JPEG Baseline, YBR_FULL_422, 30 frames",
        frames=30,
        max_abs=4,
    ),
    Entry(
        "SC_rgb_jpeg.dcm",
        (256, 256),
        "RGB",
        "pydicom",
        "JPEG Baseline, Pixel Data written implicit in an explicit VR data set",
        note="DCMTK 3.6.7 cannot parse this data set (an element it reads as 1.3 GB long)",
    ),
    # --- JPEG-LS ----------------------------------------------------------------------
    Entry(
        "MR_small_jpeg_ls_lossless.dcm", (64, 64), "L", "dcml2pnm", "JPEG-LS Lossless, signed 16-bit", "file"
    ),
    Entry("JPEGLSNearLossless_08.dcm", (10, 45), "L", "dcml2pnm", "JPEG-LS near-lossless, 8-bit", "minmax"),
    Entry("JPEGLSNearLossless_16.dcm", (10, 50), "L", "dcml2pnm", "JPEG-LS near-lossless, 16-bit", "minmax"),
    Entry("SC_rgb_jls_lossy_line.dcm", (100, 100), "RGB", "dcml2pnm", "JPEG-LS lossy RGB, line interleaved"),
    Entry(
        "SC_rgb_jls_lossy_sample.dcm", (100, 100), "RGB", "dcml2pnm", "JPEG-LS lossy RGB, sample interleaved"
    ),
    # --- JPEG 2000 (DCMTK 3.6 has no JPEG 2000 codec) ------------------------------------
    Entry("MR_small_jp2klossless.dcm", (64, 64), "L", "pydicom", "JPEG 2000 Lossless, signed 16-bit", "file"),
    Entry("693_J2KI.dcm", (512, 512), "L", "pydicom", "JPEG 2000, 14 bits stored, Rescale + Window", "file"),
    Entry(
        "J2K_pixelrep_mismatch.dcm",
        (512, 512),
        "L",
        "pydicom",
        "JPEG 2000 Lossless, 13 bits, codestream unsigned but Pixel Representation 1",
        "file",
    ),
    Entry("JPEG2000.dcm", (256, 1024), "L", "pydicom", "JPEG 2000, signed 16-bit", "minmax"),
    Entry("SC_rgb_gdcm_KY.dcm", (100, 100), "RGB", "pydicom", "JPEG 2000, RGB"),
    Entry("GDCMJ2K_TextGBR.dcm", (400, 400), "RGB", "pydicom", "JPEG 2000 Lossless, YBR_RCT, JP2 header"),
    Entry("examples_jpeg2k.dcm", (640, 480), "RGB", "pydicom", "JPEG 2000 Lossless, YBR_RCT"),
    # --- refused: pydicom cannot decode them, or the file is broken ------------------------
    Entry(
        "JPEG-lossy.dcm",
        (256, 1024),
        "L",
        "dcmj2pnm",
        "JPEG Extended 12-bit, invalid SOS parameters",
        error="JPEG Extended",
        note="pydicom's plugins cannot decode it (pylibjpeg-libjpeg fails, Pillow has no 12-bit "
        "JPEG); DCMTK can",
    ),
    Entry(
        "JPEG2000-embedded-sequence-delimiter.dcm",
        (256, 1024),
        "L",
        "pydicom",
        "JPEG 2000 codestream with 4 bytes replaced by a sequence delimiter",
        error="JPEG 2000",
        note="a corrupt codestream: neither pydicom nor DCMTK decode it",
    ),
    Entry(
        "MR_truncated.dcm",
        (64, 64),
        "L",
        "dcm2pnm",
        "Pixel Data shorter than Rows x Columns",
        error="truncated",
        note="DCMTK refuses it too",
    ),
    Entry(
        "badVR.dcm",
        (10, 10),
        "L",
        "dcm2pnm",
        "Number of Frames '1A'",
        error="Number of Frames",
        note="pydicom cannot decode it (int('1A')); DCMTK renders it as one frame",
    ),
]
"""Every image in pydicom's bundled test files."""


NO_IMAGE: list[tuple[str, str]] = [
    ("reportsi.dcm", "This instance has no image: it is a Basic Text SR"),
    ("test-SR.dcm", "This instance has no image: it is a Comprehensive SR"),
    ("rtplan.dcm", "This instance has no image: it is an RT Plan"),
    ("waveform_ecg.dcm", "This instance has no image: it is a 12-lead ECG Waveform"),
]
"""Bundled instances without pixel data, and the start of the message render() gives."""
