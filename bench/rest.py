#!/usr/bin/env python3
"""Orthanc's REST API, Dolmen beside Orthanc on the same data in the same run.

Starts a real ``dolmen serve`` and, when /usr/sbin/Orthanc exists, Debian's Orthanc on free
ports, loads ``--studies`` one-instance studies into each through ``POST /instances``, and
prints, for each server and as a ratio (Dolmen / Orthanc, lower is better):

* ``POST /instances`` rate over one keep-alive connection (the first ``--rate-instances``),
* ``/tools/find`` at the Study level: a PatientName wildcard, an exact StudyInstanceUID,
* ``GET /studies?expand&since=0&limit=100``,

each query the median of ``--repeat`` runs. Dolmen fsyncs each file and its folder before it
answers (its crash contract); Orthanc does not: ``--no-fsync`` compares like with like.

    .venv/bin/python bench/rest.py [--studies 10000] [--repeat 20] [--threads 4] [--no-fsync]
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dicomnode import demodata  # noqa: E402
from tests.conftest import make_config_doc  # noqa: E402
from tests.conftest import start_dolmen  # noqa: E402
from tests.conftest import start_orthanc  # noqa: E402
from tests.conftest import write_toml  # noqa: E402


def encoded(count: int) -> list[bytes]:
    out = []
    for _rel, ds in demodata.iter_instances(patients=count, studies=1, series=1, instances=1, size=8):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def load(url: str, blobs: list[bytes], threads: int) -> None:
    chunks = [blobs[i::threads] for i in range(threads)]

    def run(chunk: list[bytes]) -> None:
        with requests.Session() as session:
            for blob in chunk:
                session.post(url + "/instances", data=blob, timeout=120).raise_for_status()

    workers = [threading.Thread(target=run, args=(c,)) for c in chunks]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def rate(url: str, blobs: list[bytes]) -> float:
    with requests.Session() as session:
        start = time.perf_counter()
        for blob in blobs:
            session.post(url + "/instances", data=blob, timeout=120).raise_for_status()
        return len(blobs) / (time.perf_counter() - start)


def median_ms(call: Callable[[], requests.Response], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call().raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def queries(url: str, study_uid: str, repeat: int, expected: int) -> dict[str, float]:
    session = requests.Session()
    wildcard = session.post(url + "/tools/find", json={"Level": "Study", "Query": {"PatientName": "SCHM*"}},
                            timeout=120).json()
    assert len(wildcard) >= 1, wildcard
    exact = session.post(url + "/tools/find", json={"Level": "Study", "Query": {"StudyInstanceUID": study_uid}},
                         timeout=120).json()
    assert len(exact) == 1, exact
    assert len(session.get(url + "/studies?expand&since=0&limit=100", timeout=120).json()) == min(100, expected)
    return {
        "find PatientName SCHM*": median_ms(lambda: session.post(
            url + "/tools/find", json={"Level": "Study", "Query": {"PatientName": "SCHM*"}}, timeout=120), repeat),
        "find exact StudyInstanceUID": median_ms(lambda: session.post(
            url + "/tools/find", json={"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}, timeout=120),
            repeat),
        "GET /studies?expand&limit=100": median_ms(lambda: session.get(
            url + "/studies?expand&since=0&limit=100", timeout=120), repeat),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=10000)
    parser.add_argument("--rate-instances", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--no-fsync", dest="fsync", action="store_false",
                        help="run Dolmen with [storage] fsync = false, as Orthanc (which never fsyncs its files)")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="bench-rest-", dir="/tmp"))
    print(f"encoding {args.studies} one-instance studies ...", flush=True)
    blobs = encoded(args.studies)
    import pydicom

    study_uid = str(pydicom.dcmread(io.BytesIO(blobs[len(blobs) // 2]), stop_before_pixels=True).StudyInstanceUID)
    first, rest = blobs[: args.rate_instances], blobs[args.rate_instances:]
    results: dict[str, dict[str, float]] = {}
    servers = []
    try:
        doc = make_config_doc(base / "dolmen", storage={"fsync": args.fsync})
        dolmen = start_dolmen(write_toml(base / "dolmen.toml", doc), base / "dolmen.log")
        servers.append(("Dolmen", dolmen, dolmen.url))
        if os.path.exists("/usr/sbin/Orthanc"):
            orthanc = start_orthanc(base / "orthanc", "ORTHANC")
            servers.append(("Orthanc", orthanc, orthanc.url))
        for name, _server, url in servers:
            print(f"{name}: POST /instances x {len(first)} over one connection ...", flush=True)
            figures = {"POST /instances per s": rate(url, first)}
            print(f"{name}: loading {len(rest)} more with {args.threads} threads ...", flush=True)
            start = time.perf_counter()
            load(url, rest, args.threads)
            print(f"{name}: loaded in {time.perf_counter() - start:.1f} s", flush=True)
            figures.update(queries(url, study_uid, args.repeat, args.studies))
            results[name] = figures
    finally:
        for _name, server, _url in servers:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)

    print(f"\n{args.studies} studies (one instance each), Dolmen {'with' if args.fsync else 'without'} fsync")
    names = [n for n, _s, _u in servers]
    print(f"{'':34}" + "".join(f"{n:>12}" for n in names) + ("   ratio" if len(names) == 2 else ""))
    for key in results["Dolmen"]:
        row = f"{key:34}" + "".join(f"{results[n][key]:12.1f}" for n in names)
        if len(names) == 2:
            ours, theirs = results["Dolmen"][key], results["Orthanc"][key]
            ratio = theirs / ours if key.endswith("per s") else ours / theirs
            row += f"  {ratio:6.2f}"
        print(row)
    print("(ms for queries, instances/s for POST; ratio = Dolmen's time / Orthanc's, lower is better)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
