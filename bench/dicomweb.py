#!/usr/bin/env python3
"""DICOMweb: QIDO-RS latency over 10,000 studies and WADO-RS throughput of a 1,000-instance study.

Both servers get the same data in the same run: Dolmen through its ingest path (in-process,
before ``dolmen serve`` starts on that storage), Orthanc with its DICOMweb plugin through
``POST /instances``. Then, over one kept-alive HTTP connection each:

* QIDO-RS ``GET /dicom-web/studies?PatientName=NOVAK*`` (about 1 study in 14 matches) and the
  same with ``&limit=25`` (what a study list asks): median latency in ms;
* WADO-RS ``GET /dicom-web/studies/{uid}`` of a study of 1,000 instances, with
  ``Accept: multipart/related; type="application/dicom"; transfer-syntax=*`` (files as stored),
  read to the end: MB/s, best of 3, and the server's CPU seconds per 100 MB (median).

The servers take turns, request by request, so that a load elsewhere on the machine hits both
alike. ``--keep DIR`` keeps the filled servers' data there and reuses it on the next run.

    .venv/bin/python bench/dicomweb.py [--studies 10000] [--big 1000] [--size 512] [--runs 20] [--keep DIR]
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dicomnode import demodata  # noqa: E402
from dicomnode.archive import index  # noqa: E402
from dicomnode.archive.ingest import Ingestor  # noqa: E402
from dicomnode.archive.ingest import Source  # noqa: E402
from dicomnode.archive.store import Store  # noqa: E402
from tests.conftest import ORTHANC  # noqa: E402
from tests.conftest import ORTHANC_DICOMWEB_PLUGIN  # noqa: E402
from tests.conftest import make_config_doc  # noqa: E402
from tests.conftest import start_dolmen  # noqa: E402
from tests.conftest import start_orthanc  # noqa: E402
from tests.conftest import write_toml  # noqa: E402

ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
BIG_PATIENT = 99999


def encoded(ds: object) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)  # type: ignore[attr-defined]
    return out.getvalue()


def data_set(studies: int, big: int, size: int) -> tuple[list[bytes], list[bytes], str]:
    """Small one-instance studies (4 per patient) and one study of ``big`` instances."""
    small = [encoded(demodata.make_instance(p, st, 0, 0, size=16))
             for p in range((studies + 3) // 4) for st in range(4)][:studies]
    big_sets = [demodata.make_instance(BIG_PATIENT, 0, i // 250, i, size=size) for i in range(big)]
    return small, [encoded(d) for d in big_sets], str(big_sets[0].StudyInstanceUID)


def fill_dolmen(folder: Path, files: list[bytes]) -> None:
    store = Store(folder, fsync=False)
    index.open_index(f"sqlite:///{folder / 'index.db'}", synchronous_full=False)
    ingestor = Ingestor(store)
    for data in files:
        result = ingestor.ingest_bytes(data, Source("import"))
        assert result.ok, result.reason
    index.close_index()


def fill_orthanc(url: str, files: list[bytes]) -> None:
    def post(data: bytes) -> None:
        with requests.post(url + "/instances", data=data, timeout=60) as r:
            r.raise_for_status()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(post, files))


def qido(session: requests.Session, url: str, query: str) -> Callable[[], int]:
    # The query string as written: requests would send '*' as %2A, which Orthanc's plugin
    # does not decode (it would match nothing, quickly).
    def run() -> int:
        r = session.get(f"{url}/dicom-web/studies?{query}", headers={"Accept": "application/dicom+json"})
        r.raise_for_status()
        return len(r.json())
    return run


def wado_mb_s(session: requests.Session, url: str, study: str) -> tuple[float, int]:
    """One WADO-RS retrieve of the study read to the end: (MB/s, bytes)."""
    start = time.perf_counter()
    size = 0
    with session.get(f"{url}/dicom-web/studies/{study}", headers={"Accept": ACCEPT}, stream=True) as r:
        r.raise_for_status()
        for chunk in r.iter_content(1 << 20):
            size += len(chunk)
    return size / 1e6 / (time.perf_counter() - start), size


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(servers: dict[str, tuple[str, int]], study: str, runs: int) -> dict[str, dict[str, float]]:
    """Each figure for every server, the servers taking turns (a load elsewhere hits both alike).

    ``servers``: name -> (URL, pid of the process answering HTTP). Besides MB/s, the server's
    CPU time per 100 MB retrieved, which the other processes of a busy machine disturb less.
    """
    sessions = {name: requests.Session() for name in servers}
    calls = {name: {"wide": qido(sessions[name], url, "PatientName=NOVAK*"),
                    "narrow": qido(sessions[name], url, "PatientName=NOVAK*&limit=25")}
             for name, (url, _) in servers.items()}
    out: dict[str, dict[str, float]] = {name: {"count": calls[name]["wide"]()} for name in servers}
    for figure in ("wide", "narrow"):
        times: dict[str, list[float]] = {name: [] for name in servers}
        for name in servers:
            calls[name][figure]()  # warm-up
        for _ in range(runs):
            for name in servers:
                times[name].append(_ms(calls[name][figure]))
        for name in servers:
            out[name][figure] = statistics.median(times[name])
    cpu: dict[str, list[float]] = {name: [] for name in servers}
    for _ in range(3):
        for name, (url, pid) in servers.items():
            before = cpu_seconds(pid)
            rate, size = wado_mb_s(sessions[name], url, study)
            cpu[name].append((cpu_seconds(pid) - before) / (size / 1e8))
            out[name]["rate"] = max(out[name].get("rate", 0.0), rate)
            out[name]["size"] = size
    for name in servers:
        sessions[name].close()
        o = out[name]
        o["cpu"] = statistics.median(cpu[name])
        print(f"{name:8} QIDO-RS PatientName=NOVAK* ({o['count']:.0f} studies): {o['wide']:7.1f} ms · "
              f"with limit=25: {o['narrow']:6.1f} ms · WADO-RS study ({o['size'] / 1e6:.0f} MB): "
              f"{o['rate']:6.0f} MB/s, {o['cpu']:.2f} CPU s per 100 MB", flush=True)
    return out


def _ms(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=10000)
    ap.add_argument("--big", type=int, default=1000)
    ap.add_argument("--size", type=int, default=512, help="rows and columns of the big study's images")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--keep", type=Path, help="keep the filled servers' data in this folder, and reuse it")
    args = ap.parse_args()
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="dwb-", dir="/tmp"))
    with_orthanc = os.path.exists(ORTHANC) and os.path.exists(ORTHANC_DICOMWEB_PLUGIN)
    running: list[object] = []
    try:
        data = tmp / "dolmen"
        marker = tmp / "filled.txt"
        if marker.exists():
            study = marker.read_text().strip()
        else:
            start = time.perf_counter()
            small, big, study = data_set(args.studies, args.big, args.size)
            print(f"{len(small)} small studies and a study of {len(big)} instances "
                  f"({sum(map(len, big)) / 1e6:.0f} MB) made in {time.perf_counter() - start:.0f} s",
                  flush=True)
            start = time.perf_counter()
            fill_dolmen(data, small + big)
            print(f"Dolmen filled in {time.perf_counter() - start:.0f} s", flush=True)
        doc = make_config_doc(data, storage={"fsync": False})
        dolmen = start_dolmen(write_toml(tmp / "dolmen.toml", doc), tmp / "dolmen.log")
        running.append(dolmen)
        servers = {"Dolmen": (dolmen.url, dolmen.proc.pid)}
        if with_orthanc:
            orthanc = start_orthanc(tmp / "orthanc", "ORTHANC", Plugins=[ORTHANC_DICOMWEB_PLUGIN],
                                    DicomWeb={"Enable": True, "Root": "/dicom-web/"})
            running.append(orthanc)
            servers["Orthanc"] = (orthanc.url, orthanc.proc.pid)
            if not marker.exists():
                start = time.perf_counter()
                fill_orthanc(orthanc.url, small + big)
                print(f"Orthanc filled in {time.perf_counter() - start:.0f} s", flush=True)
        else:
            print("Orthanc or its DICOMweb plugin is not installed: no comparison")
        marker.write_text(study)
        out = measure(servers, study, args.runs)
        if with_orthanc:
            mine, theirs = out["Dolmen"], out["Orthanc"]
            print(f"Dolmen vs Orthanc: QIDO {theirs['wide'] / mine['wide']:.1f}x faster "
                  f"(limit=25: {theirs['narrow'] / mine['narrow']:.1f}x), "
                  f"WADO-RS {mine['rate'] / theirs['rate']:.2f}x the throughput "
                  f"for {mine['cpu'] / theirs['cpu']:.2f}x the CPU time")
    finally:
        for server in reversed(running):
            server.stop()  # type: ignore[attr-defined]
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
