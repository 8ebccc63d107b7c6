"""Hostile images (issue 7): inconsistent pixel modules and corrupt compressed streams.

Each file is stored in a real ``dolmen serve`` and then asked for through every door that
renders or decodes pixels: the preview and thumbnail of the browse pages, WADO-RS
``/rendered``, ``/thumbnail`` and ``/frames`` (raw samples), and WADO-URI. Each answer must
be an image (the placeholder saying why) or an error status, within 2 s, without a
traceback; the web process's peak memory stays bounded while a good preview is answered
at the same time; and the survival contract holds afterwards.

The decode pool itself (:mod:`dicomnode.render.decodepool`) is tested directly: a decode past its
timeout is killed, one past its memory limit fails, a worker that crashes is replaced.
"""
from __future__ import annotations

import concurrent.futures
import io
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.data
import pytest
import requests
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.encaps import get_frame
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.uid import JPEGBaseline8Bit
from pydicom.uid import RLELossless
from pydicom.uid import generate_uid

from dicomnode import render
from dicomnode.errors import RenderError
from dicomnode.render import decodepool
from tests.hostile import Survival
from tests.hostile import assert_no_traceback
from tests.hostile import encode
from tests.hostile import hostile_sections
from tests.hostile import small_instance

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
TRANSCODE = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
DEADLINE = 2.0  # seconds for any answer about a hostile image
PNG = b"\x89PNG\r\n\x1a\n"
JPEG = b"\xff\xd8"

#: (file, what it holds) of pydicom's bundled compressed images that are mutated.
COMPRESSED_SOURCES = [
    ("SC_rgb_jpeg_dcmtk.dcm", "jpeg-baseline"),
    ("JPEG-lossy.dcm", "jpeg-extended"),
    ("SC_rgb_jpeg_gdcm.dcm", "jpeg-lossless"),
    ("JPEGLSNearLossless_16.dcm", "jpeg-ls"),
    ("MR_small_jp2klossless.dcm", "jpeg-2000"),
    ("MR_small_RLE.dcm", "rle-16bit"),
    ("SC_rgb_rle.dcm", "rle-rgb"),
]


# --------------------------------------------------------------------------- the hostile files


def short_uid() -> str:
    """A fresh UID short enough for small_instance to append to."""
    return f"2.25.{random.getrandbits(96)}"


def _fresh(ds: Dataset, study: str) -> Dataset:
    """Give `ds` new UIDs in `study` (a series of its own), so it is stored as a new instance."""
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = ds.get("PatientID") or "HOSTILE"
    return ds


def _module_case(study: str, **attributes: Any) -> Dataset:
    """A 16-bit MONOCHROME2 CT whose pixel module is then overridden by `attributes`."""
    ds = _fresh(small_instance(study, size=8), study)
    pixel_bytes = attributes.pop("pixel_bytes", None)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    if pixel_bytes is not None:
        ds.PixelData = pixel_bytes
    return ds


def pixel_module_cases(study: str) -> dict[str, Dataset]:
    """Image Pixel modules that lie about the pixel data."""
    cases = {
        "65535x65535": _module_case(study, Rows=65535, Columns=65535, pixel_bytes=bytes(10)),
        "bits-allocated-0": _module_case(study, BitsAllocated=0, BitsStored=0, HighBit=0),
        "bits-allocated-64": _module_case(study, BitsAllocated=64, BitsStored=64, HighBit=63,
                                          pixel_bytes=bytes(8 * 8 * 8)),
        "bits-stored-over-allocated": _module_case(study, BitsStored=24, HighBit=23),
        "frames-2^31-1": _module_case(study, NumberOfFrames=2**31 - 1),
        "16384x16384-8bit-few-bytes": _module_case(study, Rows=16384, Columns=16384, BitsAllocated=8,
                                                   BitsStored=8, HighBit=7, pixel_bytes=bytes(64)),
    }
    # NumberOfFrames 2**31 is out of IS's range: written raw, as a hostile device would.
    ds = _module_case(study)
    ds.add_new(0x00280008, "IS", None)
    ds[0x00280008]._value = "2147483648"
    cases["frames-2^31"] = ds
    # Compressed, 2**31 frames, one fragment.
    ds = _module_case(study, NumberOfFrames="2147483647")
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate([b"\x00" * 64])
    cases["rle-frames-2^31-1"] = ds
    # PALETTE COLOR whose indices run past a 16-entry lookup table.
    ds = _module_case(study, PhotometricInterpretation="PALETTE COLOR", BitsAllocated=8, BitsStored=8,
                      HighBit=7, pixel_bytes=bytes(range(64)))
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [16, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", bytes(range(32)))
    cases["palette-past-lut"] = ds
    # PALETTE COLOR with a descriptor claiming 0 bits per entry and no data.
    ds = _module_case(study, PhotometricInterpretation="PALETTE COLOR", BitsAllocated=8, BitsStored=8,
                      HighBit=7, pixel_bytes=bytes(64))
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [0, 65535, 0])
    cases["palette-bad-descriptor"] = ds
    return cases


def _mutations(frame: bytes, rng: random.Random) -> dict[str, bytes]:
    """Corrupt versions of one compressed frame."""
    header = 24 if frame[:2] == b"\xff\xd8" else 64
    flipped = bytearray(frame)
    for _ in range(max(4, len(frame) // 50)):
        at = rng.randrange(min(header, len(frame) - 1), len(frame))
        flipped[at] ^= 1 << rng.randrange(8)
    header_flipped = bytearray(frame)
    for _ in range(6):
        at = rng.randrange(2, min(len(frame), 200))
        header_flipped[at] = rng.randrange(256)
    out = {
        "truncated": frame[: len(frame) // 2],
        "header-only": frame[:header],
        "bit-flips": bytes(flipped),
        "header-bytes": bytes(header_flipped),
        "zeroed-body": frame[:header] + bytes(len(frame) - header),
        "random": rng.randbytes(len(frame)),
        "doubled": frame + frame,
    }
    if frame[:2] == b"\xff\xd8":
        # Markers with lengths running past the end, and a marker loop.
        out["marker-length-past-end"] = frame[:2] + b"\xff\xe0\xff\xff" + frame[2:40]
        out["only-markers"] = b"\xff\xd8" + b"\xff\xd0" * 2000 + b"\xff\xd9"
    elif frame[:4] == b"\xff\x4f\xff\x51":
        siz = bytearray(frame)
        siz[40:42] = (0xFFFF).to_bytes(2, "big")  # components in SIZ, past the real ones
        out["siz-components"] = bytes(siz)
        # A JP2 header whose first box has length 0: pydicom's box walk never ended (fuzzing).
        out["jp2-zero-length-box"] = b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00\x00\x00\x00ftyp" + frame
    else:
        # RLE header: 15 segments whose offsets run past the end of the frame.
        offsets = b"".join((64 + 10**6 * k).to_bytes(4, "little") for k in range(15))
        head = (15).to_bytes(4, "little") + offsets
        out["rle-offsets-past-end"] = head + frame[64:]
        out["rle-zero-segments"] = bytes(64) + frame[64:]
    return out


def compressed_cases(study: str) -> dict[str, Dataset]:
    """Mutated frames of every bundled compressed image kind."""
    rng = random.Random(7)
    cases: dict[str, Dataset] = {}
    for name, label in COMPRESSED_SOURCES:
        original = pydicom.dcmread(TEST_FILES / name)
        frames = int(original.get("NumberOfFrames") or 1)
        frame = get_frame(original.PixelData, 0, number_of_frames=frames)
        for mutation, data in _mutations(frame, rng).items():
            ds = pydicom.dcmread(TEST_FILES / name)
            ds.NumberOfFrames = 1
            ds.PixelData = encapsulate([data])
            cases[f"{label}-{mutation}"] = _fresh(ds, study)
    return cases


# --------------------------------------------------------------------------- the server side


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A private ``dolmen serve`` holding a good image and every hostile one."""
    import tempfile

    from tests.conftest import make_config_doc
    from tests.conftest import start_dolmen
    from tests.conftest import write_toml

    folder = Path(tempfile.mkdtemp(prefix="dhi-", dir="/tmp"))
    config = write_toml(folder / "c.toml", make_config_doc(folder / "data", **hostile_sections()))
    server = start_dolmen(config, folder / "serve.log")
    study = short_uid()
    good = _fresh(pydicom.dcmread(TEST_FILES / "MR_small_jp2klossless.dcm"), study)
    cases = {"good-jpeg-2000": good, **pixel_module_cases(study), **compressed_cases(study)}
    stored: dict[str, dict[str, str]] = {}
    names = list(cases)
    for start in range(0, len(names), 20):
        batch = names[start : start + 20]
        response = requests.post(server.url + "/upload", headers={"Accept": "application/json"}, timeout=120,
                                 files=[("files", (f"{n}.dcm", encode(cases[n]))) for n in batch])
        assert response.status_code == 200, response.text[:2000]
        for n, row in zip(batch, response.json()["files"], strict=True):
            assert row["status"] == "stored", f"{n} was not stored: {row}"
            ds = cases[n]
            stored[n] = {"id": row["instance_id"], "study": str(ds.StudyInstanceUID),
                         "series": str(ds.SeriesInstanceUID), "sop": str(ds.SOPInstanceUID)}
    yield server, stored
    server.stop()
    import shutil

    if os.environ.get("DOLMEN_KEEP") is None:
        shutil.rmtree(folder, ignore_errors=True)


def image_urls(ids: dict[str, str]) -> dict[str, str]:
    """Every address that renders or decodes the instance's pixels."""
    dw = f"/dicom-web/studies/{ids['study']}/series/{ids['series']}/instances/{ids['sop']}"
    wado = (f"/wado?requestType=WADO&studyUID={ids['study']}&seriesUID={ids['series']}"
            f"&objectUID={ids['sop']}")
    return {
        "preview": f"/instances/{ids['id']}/preview.png",
        "preview-frame-2": f"/instances/{ids['id']}/preview.png?frame=2&size=128",
        "thumbnail": f"/instances/{ids['id']}/thumbnail.png",
        "instance-page": f"/instances/{ids['id']}",
        "wado-rs-rendered": f"{dw}/rendered",
        "wado-rs-frame-rendered": f"{dw}/frames/1/rendered",
        "wado-rs-thumbnail": f"{dw}/thumbnail",
        "wado-rs-frames": f"{dw}/frames/1",
        "wado-rs-metadata": f"{dw}/metadata",
        "wado-rs-transcoded": dw,
        "wado-uri-jpeg": wado + "&contentType=image/jpeg",
        "wado-uri-png": wado + "&contentType=image/png&columns=64",
    }


def _vm_hwm_kb(pid: int) -> int:
    """Peak resident memory of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _check_answer(name: str, url: str, response: requests.Response, elapsed: float) -> None:
    where = f"{name} {url}"
    assert elapsed < DEADLINE, f"{where} took {elapsed:.2f} s"
    assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:300]}"
    body = response.content
    if response.status_code == 200:
        kind = response.headers.get("Content-Type", "")
        if kind.startswith("image/png"):
            assert body.startswith(PNG), where
            Image.open(io.BytesIO(body)).verify()
        elif kind.startswith("image/jpeg"):
            assert body.startswith(JPEG), where
        elif kind.startswith("text/html") or "json" in kind or "multipart" in kind:
            assert_no_traceback(body, where)
        else:
            assert kind.startswith(("application/dicom", "application/octet-stream")), f"{where}: {kind}"
    else:
        assert_no_traceback(body, where)


def test_every_hostile_image_is_answered_quickly_and_the_web_is_unaffected(hostile_server: Any) -> None:
    server, stored = hostile_server
    survival = Survival(server)
    good = stored["good-jpeg-2000"]
    good_preview = f"{server.url}/instances/{good['id']}/preview.png"
    for label, url in image_urls(good).items():  # templates compiled, decoders warm
        accept = TRANSCODE if label == "wado-rs-transcoded" else "*/*"
        assert requests.get(server.url + url, timeout=30, headers={"Accept": accept}).status_code == 200
    baseline_kb = _vm_hwm_kb(server.proc.pid)

    hostile = {name: ids for name, ids in stored.items() if name != "good-jpeg-2000"}
    jobs = [(name, label, url) for name, ids in hostile.items() for label, url in image_urls(ids).items()]
    placeholders = 0

    def fetch(job: tuple[str, str, str]) -> tuple[str, str, requests.Response, float]:
        name, label, url = job
        started = time.monotonic()
        accept = TRANSCODE if label == "wado-rs-transcoded" else "*/*"
        try:
            response = requests.get(server.url + url, timeout=30, headers={"Accept": accept})
        except requests.RequestException as exc:
            raise AssertionError(f"{name}:{label} {url}: {exc}") from exc
        return f"{name}:{label}", url, response, time.monotonic() - started

    def good_while_busy() -> list[float]:
        times = []
        for _ in range(15):
            started = time.monotonic()
            response = requests.get(good_preview + f"?size={100 + len(times)}", timeout=30)
            assert response.status_code == 200 and response.content.startswith(PNG)
            assert b"could not" not in response.content
            times.append(time.monotonic() - started)
        return times

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        meanwhile = pool.submit(good_while_busy)
        for name, url, response, elapsed in pool.map(fetch, jobs):
            _check_answer(name, url, response, elapsed)
            placeholders += response.headers.get("Content-Type", "").startswith("image/")
        good_times = meanwhile.result(timeout=120)
    assert max(good_times) < DEADLINE, f"a good preview waited {max(good_times):.2f} s behind hostile ones"
    assert placeholders >= len(hostile), "previews should answer placeholder images, not only errors"
    grown_mb = (_vm_hwm_kb(server.proc.pid) - baseline_kb) / 1024
    assert grown_mb < 200, f"the web process's peak memory grew by {grown_mb:.0f} MiB"
    for label, url in image_urls(good).items():  # the good image still renders everywhere
        accept = TRANSCODE if label == "wado-rs-transcoded" else "*/*"
        response = requests.get(server.url + url, timeout=10, headers={"Accept": accept})
        assert response.status_code == 200, f"{label}: {response.status_code} {response.text[:200]}"
    survival.check(web_resources=True)


@pytest.mark.parametrize("name", ["65535x65535", "bits-allocated-0", "bits-allocated-64",
                                  "bits-stored-over-allocated", "frames-2^31", "rle-frames-2^31-1",
                                  "jpeg-2000-truncated", "rle-16bit-rle-offsets-past-end",
                                  "jpeg-2000-jp2-zero-length-box"])
def test_the_placeholder_says_why(hostile_server: Any, name: str) -> None:
    """The preview of a refused image is a placeholder; WADO-RS says why with a 4xx status."""
    server, stored = hostile_server
    ids = stored[name]
    preview = requests.get(server.url + image_urls(ids)["preview"], timeout=10)
    assert preview.status_code == 200 and preview.content.startswith(PNG)
    good_url = server.url + image_urls(stored["good-jpeg-2000"])["preview"]
    good = requests.get(good_url + "?size=512", timeout=10)
    assert len(preview.content) != len(good.content)
    rendered = requests.get(server.url + image_urls(ids)["wado-rs-rendered"], timeout=10,
                            headers={"Accept": "image/jpeg"})
    assert 400 <= rendered.status_code < 500, rendered.status_code
    is_json = "json" in rendered.headers["Content-Type"]
    message = rendered.json()["error"]["message"] if is_json else rendered.text
    assert message and "Traceback" not in message


def test_inconsistent_modules_are_refused_before_decoding() -> None:
    """In process: each inconsistent pixel module gives a RenderError without a large allocation."""
    import tracemalloc

    study = short_uid()
    for name, ds in pixel_module_cases(study).items():
        data = encode(ds)
        tracemalloc.start()
        started = time.monotonic()
        try:
            try:
                render.render(pydicom.dcmread(io.BytesIO(data)))
                outcome = "rendered"
            except RenderError as exc:
                outcome = exc.message
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert time.monotonic() - started < DEADLINE, name
        assert peak < 16 * 1024 * 1024, f"{name}: peak {peak} bytes"
        if name == "palette-past-lut":
            assert outcome == "rendered"  # indices past the table take its last entry (PS3.3 C.7.6.3.1.5)
        else:
            assert outcome != "rendered", name


# --------------------------------------------------------------------------- the decode pool


def _big_jpeg(size: int = 4096) -> tuple[dict[str, Any], bytes]:
    """A noisy greyscale baseline JPEG of size x size, and its pixel options."""
    rng = np.random.default_rng(3)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(buffer, "JPEG", quality=95)
    options = {"rows": size, "columns": size, "samples_per_pixel": 1, "bits_allocated": 8, "bits_stored": 8,
               "pixel_representation": 0, "photometric_interpretation": "MONOCHROME2", "number_of_frames": 1,
               "planar_configuration": 0}
    return options, buffer.getvalue()


@pytest.fixture
def pool() -> Any:
    created: list[decodepool.DecodePool] = []

    def make(**kw: Any) -> decodepool.DecodePool:
        p = decodepool.DecodePool(**kw)
        created.append(p)
        return p

    yield make
    for p in created:
        p.close()


def test_a_decode_past_its_timeout_is_killed_and_the_worker_replaced(pool: Callable[..., Any]) -> None:
    options, data = _big_jpeg()
    p = pool(workers=1, timeout=0.02)
    started = time.monotonic()
    with pytest.raises(RenderError, match="longer than 0.02 s"):
        p.decode(JPEGBaseline8Bit, options, data)
    assert time.monotonic() - started < 1.0
    assert p.killed == 1
    p.timeout = 30
    arr, photometric = p.decode(JPEGBaseline8Bit, options, data)  # a fresh worker
    assert arr.shape == (4096, 4096) and photometric == "MONOCHROME2"


def test_a_decode_past_its_memory_limit_fails_cleanly(pool: Callable[..., Any]) -> None:
    options, data = _big_jpeg()
    p = pool(workers=1, memory_bytes=200 * 1024 * 1024)
    with pytest.raises(RenderError, match="could not|memory|failed"):
        p.decode(JPEGBaseline8Bit, options, data)
    small_options, small = _big_jpeg(64)
    arr, _ = p.decode(JPEGBaseline8Bit, small_options, small)
    assert arr.shape == (64, 64)


def test_a_crashed_worker_is_replaced(pool: Callable[..., Any]) -> None:
    options, data = _big_jpeg(64)
    p = pool(workers=1)
    p.decode(JPEGBaseline8Bit, options, data)
    (worker,) = p._idle
    os.kill(worker.proc.pid, signal.SIGSEGV)
    worker.proc.wait(5)
    arr, _ = p.decode(JPEGBaseline8Bit, options, data)
    assert arr.shape == (64, 64)
    # Killed in the middle of a decode: the caller gets a RenderError, the next call works.
    big_options, big = _big_jpeg()
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        future = ex.submit(p.decode, JPEGBaseline8Bit, big_options, big)
        deadline = time.monotonic() + 5
        while not future.done() and time.monotonic() < deadline:
            busy = [int(pid) for pid in os.listdir("/proc")
                    if pid.isdigit() and _child_of(int(pid), os.getpid())]
            if busy:
                for pid in busy:
                    os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        with pytest.raises(RenderError, match="decoder failed|killed by signal"):
            future.result(timeout=30)
    arr, _ = p.decode(JPEGBaseline8Bit, options, data)
    assert arr.shape == (64, 64)


def _child_of(pid: int, parent: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return int(fields[1]) == parent and b"dicomnode.render.decodepool" in cmdline


def test_compressed_frames_decode_in_workers_and_match_in_process_decoding() -> None:
    """The pool changes where decoding happens, not what it gives."""
    def outcome(name: str) -> bytes | str:
        try:
            return render.render(TEST_FILES / name)
        except RenderError as exc:
            return exc.message

    names = [name for name, _ in COMPRESSED_SOURCES]
    pooled = [outcome(name) for name in names]
    render.configure_decoding(workers=0)
    try:
        local = [outcome(name) for name in names]
    finally:
        render.configure_decoding(workers=decodepool.DEFAULT_WORKERS)
    assert pooled == local
    assert sum(isinstance(o, bytes) for o in pooled) >= 6


def test_uncompressed_good_image_is_not_sent_to_a_worker(tmp_path: Path) -> None:
    ds = small_instance(short_uid(), size=64)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "ct.dcm"
    path.write_bytes(encode(ds))
    render.configure_decoding(workers=1, timeout=0.000001)  # any worker use would time out
    try:
        assert render.render(path).startswith(PNG)
    finally:
        render.configure_decoding(workers=decodepool.DEFAULT_WORKERS, timeout=decodepool.DEFAULT_TIMEOUT)


@pytest.mark.parametrize("name", [name for name, _ in COMPRESSED_SOURCES])
def test_decompressed_matches_pydicom(name: str) -> None:
    """WADO-RS transcoding decodes through the guarded workers and gives pydicom's result."""
    reference = pydicom.dcmread(TEST_FILES / name)
    try:
        reference.decompress(generate_instance_uid=False)
    except Exception:  # noqa: BLE001 - a file no codec here decodes (JPEG-lossy.dcm)
        with pytest.raises(RenderError):
            render.decompressed(TEST_FILES / name)
        return
    ds = render.decompressed(TEST_FILES / name)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.PhotometricInterpretation == reference.PhotometricInterpretation
    assert np.array_equal(ds.pixel_array, reference.pixel_array)


def test_fuzz_findings_are_render_errors(tmp_path: Path) -> None:
    """Found by tests/fuzz/fuzz_dicom.py: a UID that is no transfer syntax in the file meta
    (pydicom's properties raised ValueError), and an SOP Class UID element with a VR pydicom
    does not know (NotImplementedError on first access)."""
    data = encode(small_instance(short_uid(), size=8))
    assert data.count(b"1.2.840.10008.1.2.1\0") == 1  # (0002,0010), Explicit VR Little Endian
    path = tmp_path / "ts.dcm"
    path.write_bytes(data.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.5.1.4\0"))
    with pytest.raises(RenderError, match="transfer syntax '1.2.840.10008.5.1.4' is unknown"):
        render.render(path)
    ds = small_instance(short_uid(), size=8)
    del ds.PixelData
    data = bytearray(encode(ds))
    at = data.index(b"\x08\x00\x16\x00UI")  # (0008,0016) SOP Class UID, explicit VR
    data[at + 4 : at + 6] = b"U4"
    path.write_bytes(bytes(data))
    with pytest.raises(RenderError) as caught:
        render.render(path)
    assert caught.value.code == "render_error"  # a message of its own, not the safety net


def test_sending_a_corrupt_compressed_instance_decoded_for_the_peer(tmp_path: Path) -> None:
    """The sidecar decompresses for a peer that takes only uncompressed syntaxes through the same
    guarded workers: a stream that made pylibjpeg-rle panic (a BaseException that escaped the
    send loop) is one failed instance, and the next one goes."""
    from pynetdicom import AE
    from pynetdicom import evt
    from pynetdicom.sop_class import MRImageStorage

    from dicomnode import config
    from dicomnode.net import send
    from dicomnode.net import wire
    from dicomnode.peers import Node
    from tests.conftest import free_port

    study = short_uid()
    bad = compressed_cases(study)["rle-16bit-bit-flips"]
    good = _fresh(pydicom.dcmread(TEST_FILES / "MR_small_jp2klossless.dcm"), study)
    items = []
    for name, ds in (("bad", bad), ("good", good)):
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(encode(ds))
        items.append(wire.SendItem(str(path), str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                                  str(ds.file_meta.TransferSyntaxUID), path.stat().st_size))
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0

    ae = AE(ae_title="PLAIN")
    ae.add_supported_context(MRImageStorage)  # uncompressed syntaxes only
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        settings = config.from_dict({"storage": {"path": str(tmp_path / "s")}, "dicom": {"port": 4242}})
        failures: list[str] = []
        report = send.send(settings, Node("plain", "PLAIN", "127.0.0.1", port, ()), items,
                          on_result=lambda item, status, message: failures.append(message) if status is None
                          else None)
    finally:
        server.shutdown()
    assert (report.sent, report.failed) == (1, 1), failures
    assert received == [str(good.SOPInstanceUID)]
    assert "could not be decoded" in failures[0] or "decoder failed" in failures[0], failures
