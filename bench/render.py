"""Time Dolmen's renderer on a 512 x 512 16-bit CT instance, with Orthanc alongside.

Run from the repository root::

    .venv/bin/python bench/render.py [--runs 50]

Generates the instance with numpy + pydicom in a temporary folder, then prints the
mean and median time of ``dicomnode.render.render`` for a full-size PNG preview and a
256-pixel thumbnail, and for the same instance RLE and JPEG 2000 compressed, decoded in
the renderer's worker processes and in process (the cost of the isolation). When
``/usr/sbin/Orthanc`` exists it is started on free ports with a temporary configuration,
given the same file through ``POST /instances``, and ``GET /instances/{id}/preview`` is
timed the same way (one kept-alive HTTP connection); the ratio Orthanc / Dolmen is printed.
Orthanc is stopped at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dicomnode.render import render  # noqa: E402

ORTHANC = Path("/usr/sbin/Orthanc")


def make_ct(path: Path, *, window: bool = True) -> None:
    """Write a 512 x 512 signed 16-bit CT slice: a water cylinder with bone and air.

    With `window`, (0028,1050)/(0028,1051) are 40/400; without, Dolmen computes its
    automatic (histogram percentile) window.
    """
    rng = np.random.default_rng(1)
    y, x = np.mgrid[-256:256, -256:256]
    hu = np.full((512, 512), -1000.0)
    hu[x**2 + y**2 < 230**2] = 0.0
    hu[(x - 80) ** 2 + y**2 < 40**2] = 900.0
    hu[(x + 90) ** 2 + (y - 30) ** 2 < 50**2] = -800.0
    hu += rng.normal(0, 12, hu.shape)
    stored = np.clip(hu + 1024, -2048, 4095).astype(np.int16)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Bench^Render"
    ds.PatientID = "BENCH"
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 512
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    if window:
        ds.WindowCenter = 40
        ds.WindowWidth = 400
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)


def timed(function: Callable[[], object], runs: int) -> list[float]:
    """Return the duration in milliseconds of `runs` calls, after one warm-up call."""
    function()
    durations = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        durations.append((time.perf_counter() - start) * 1000)
    return durations


def report(label: str, durations: list[float]) -> float:
    """Print mean and median; return the median."""
    median = statistics.median(durations)
    print(f"{label:<44} mean {statistics.mean(durations):7.2f} ms   median {median:7.2f} ms")
    return median


def free_port() -> int:
    """Return a TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bench_orthanc(path: Path, workdir: Path, runs: int) -> float | None:
    """Start Orthanc, upload `path`, time its PNG preview; return the median in ms."""
    http_port, dicom_port = free_port(), free_port()
    storage = workdir / "orthanc"
    storage.mkdir()
    config = workdir / "orthanc.json"
    config.write_text(
        json.dumps(
            {
                "Name": "bench",
                "HttpPort": http_port,
                "DicomPort": dicom_port,
                "StorageDirectory": str(storage),
                "IndexDirectory": str(storage),
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
            }
        )
    )
    log = (workdir / "orthanc.log").open("wb")
    process = subprocess.Popen(
        [str(ORTHANC), str(config)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        connection = wait_for_orthanc(process, http_port)
        connection.request(
            "POST", "/instances", body=path.read_bytes(), headers={"Content-Type": "application/dicom"}
        )
        response = connection.getresponse()
        instance = json.loads(response.read())["ID"]

        def preview() -> None:
            connection.request("GET", f"/instances/{instance}/preview", headers={"Accept": "image/png"})
            reply = connection.getresponse()
            body = reply.read()
            if reply.status != 200 or not body.startswith(b"\x89PNG"):
                raise RuntimeError(f"Orthanc preview failed: HTTP {reply.status}")

        return report("Orthanc GET /instances/{id}/preview", timed(preview, runs))
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def wait_for_orthanc(process: subprocess.Popen[bytes], port: int) -> http.client.HTTPConnection:
    """Poll ``GET /system`` until Orthanc answers; return a connection to it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with status {process.returncode}")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("GET", "/system")
            if connection.getresponse().read() and connection.sock is not None:
                connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return connection
        except OSError:
            connection.close()
            time.sleep(0.05)  # polling interval of a readiness probe
    raise RuntimeError("Orthanc did not answer within 60 s")


def bench_compressed(path: Path, workdir: Path, runs: int) -> None:
    """The same CT compressed: decoded in the renderer's worker processes, then in process."""
    import pydicom
    from pydicom.uid import JPEG2000Lossless
    from pydicom.uid import RLELossless

    from dicomnode.render.decodepool import DEFAULT_WORKERS
    from dicomnode.render import configure_decoding
    from dicomnode.render import start_decoding

    start_decoding()
    for syntax, label in ((RLELossless, "RLE"), (JPEG2000Lossless, "JPEG 2000")):
        ds = pydicom.dcmread(path)
        try:
            ds.compress(syntax)
        except Exception as exc:  # noqa: BLE001 - no encoder for this syntax here
            print(f"{syntax.name}: not benchmarked ({exc})")
            continue
        target = workdir / f"ct-{syntax}.dcm"
        ds.save_as(target)
        render(target)  # the workers are up and warm
        report(f"Dolmen render() {label} preview, worker", timed(lambda t=target: render(t), runs))
        configure_decoding(workers=0)
        report(f"Dolmen render() {label} preview, in process", timed(lambda t=target: render(t), runs))
        configure_decoding(workers=DEFAULT_WORKERS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dolmen-bench-") as tmp:
        workdir = Path(tmp)
        path = workdir / "ct.dcm"
        make_ct(path)
        print(f"512 x 512 signed 16-bit CT, {path.stat().st_size} bytes, {args.runs} runs")
        dolmen = report("Dolmen render() PNG preview", timed(lambda: render(path), args.runs))
        report("Dolmen render() PNG thumbnail 256 px", timed(lambda: render(path, max_size=256), args.runs))
        report("Dolmen render() JPEG preview", timed(lambda: render(path, fmt="jpeg"), args.runs))
        auto = workdir / "ct-no-window.dcm"
        make_ct(auto, window=False)
        report("Dolmen render() PNG preview, auto window", timed(lambda: render(auto), args.runs))
        bench_compressed(path, workdir, args.runs)
        if ORTHANC.exists():
            orthanc = bench_orthanc(path, workdir, args.runs)
            if orthanc is not None:
                print(f"Orthanc / Dolmen median ratio: {orthanc / dolmen:.2f}")
        else:
            print(f"{ORTHANC} not found: no Orthanc comparison")


if __name__ == "__main__":
    main()
