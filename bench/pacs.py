#!/usr/bin/env python3
"""Dolmen as a PACS: C-FIND latency with 10,000 studies indexed, and C-MOVE / C-GET throughput
for a 1,000-instance study, beside Orthanc's figures on the same data in the same run.

Writes a deterministic data set (10,000 one-instance studies of 16×16 and one study of 1,000
instances, cached under --data between runs), stores it into Dolmen's DICOM service (the
sidecar of ``dolmen serve``, started alone) and into
Debian's Orthanc with DCMTK's storescu, then asks both with DCMTK's tools (TCP_NODELAY=1):

* C-FIND, Study Root, STUDY level: a PatientName wildcard (``*ULLER^ANN*``, 92 answers) and an
  exact StudyInstanceUID (1 answer); median wall time of one findscu run (association, query,
  release) over --repeat runs.
* C-MOVE of the big study to DCMTK storescp (``--ignore``) and C-GET of it by getscu
  (``--ignore``): instances per second of the best of three runs.

    .venv/bin/python bench/pacs.py [--studies 10000] [--instances 1000] [--size 256] [--repeat 15]
                                   [--keep DIR]

With ``--keep DIR`` both servers' storage stays in DIR and the next run starts from it (storing
11,000 instances into each takes minutes). The servers take turns on every measurement, so a
machine busy with other work slows both alike.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dicomnode import demodata  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.conftest import make_config_doc  # noqa: E402
from tests.conftest import start_orthanc  # noqa: E402
from tests.conftest import start_sidecar  # noqa: E402
from tests.conftest import wait_for  # noqa: E402
from tests.conftest import write_toml  # noqa: E402

ENV = dict(os.environ, TCP_NODELAY="1")
STUDIES_PER_PATIENT = 4
BIG_PATIENT = 90000


def write_data(folder: Path, studies: int, instances: int, size: int) -> tuple[Path, Path]:
    """The small studies and the big one, written once and reused (the files are deterministic)."""
    small = folder / f"small-{studies}"
    big = folder / f"big-{instances}-{size}"
    small_done, big_done = small.with_suffix(".done"), big.with_suffix(".done")
    if not small_done.exists():
        shutil.rmtree(small, ignore_errors=True)
        print(f"Writing {studies} studies...", flush=True)
        demodata.write(small, patients=-(-studies // STUDIES_PER_PATIENT), studies=STUDIES_PER_PATIENT,
                       series=1, instances=1, size=16)
        small_done.touch()
    if not big_done.exists():
        shutil.rmtree(big, ignore_errors=True)
        print(f"Writing a study of {instances} instances of {size}x{size}...", flush=True)
        demodata.write(big, patients=1, studies=1, series=1, instances=instances, size=size,
                       first_patient=BIG_PATIENT)
        big_done.touch()
    return small, big


def run(*args: str) -> float:
    """Run a DCMTK tool; its wall time in seconds (failure stops the benchmark)."""
    started = time.perf_counter()
    result = subprocess.run(args, env=ENV, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or "E: " in result.stderr or "W: " in result.stderr:
        raise SystemExit(f"{' '.join(args[:8])}... failed:\n{result.stdout}\n{result.stderr}")
    return elapsed


def store_all(port: int, aet: str, *folders: Path) -> float:
    return run("storescu", "+sd", "+r", "-aet", "BENCH", "-aec", aet, "127.0.0.1", str(port),
               *map(str, folders))


def find_args(port: int, aet: str, *keys: str) -> list[str]:
    args = ["findscu", "-S", "-aet", "BENCH", "-aec", aet, "-k", "QueryRetrieveLevel=STUDY"]
    for k in keys:
        args += ["-k", k]
    return [*args, "127.0.0.1", str(port)]


def count_answers(port: int, aet: str, *keys: str) -> int:
    result = subprocess.run([*find_args(port, aet, *keys)[:1], "-v", *find_args(port, aet, *keys)[1:]],
                            env=ENV, capture_output=True, text=True)
    return (result.stdout + result.stderr).count("Find Response:")  # one per pending answer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=10000)
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--data", default="/tmp/dolmen-bench-pacs", help="folder caching the generated files")
    ap.add_argument("--keep", help="keep both servers' storage here and reuse it next time")
    args = ap.parse_args()
    if not shutil.which("findscu") or not os.path.exists("/usr/sbin/Orthanc"):
        print("needs DCMTK (findscu, movescu, getscu, storescp) and Orthanc (/usr/sbin/Orthanc)",
              file=sys.stderr)
        return 2
    small, big = write_data(Path(args.data), args.studies, args.instances, args.size)
    big_uid = demodata.uid("study", BIG_PATIENT, 0)
    exact_uid = demodata.uid("study", 1234 // STUDIES_PER_PATIENT, 1234 % STUDIES_PER_PATIENT)
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bp-", dir="/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    stored = base / f"stored-{args.studies}-{args.instances}-{args.size}"
    started: list[Any] = []
    try:
        scp_port = free_port()
        storescp = subprocess.Popen(["storescp", "--ignore", "-aet", "STORESCP", str(scp_port)], env=ENV,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(storescp)
        wait_for(lambda: socket.create_connection(("127.0.0.1", scp_port), timeout=1).close() or True,
                 what="storescp")
        doc = make_config_doc(base / "dolmen", log={"level": "WARNING"}, storage={"fsync": False}, **{
            "modalities.bench": {"aet": "BENCH", "host": "127.0.0.1", "port": free_port()},
            "modalities.scp": {"aet": "STORESCP", "host": "127.0.0.1", "port": scp_port},
        })
        # The DICOM service alone (the sidecar of `dolmen serve`): the web UI plays no part here.
        dolmen = start_sidecar(write_toml(base / "dolmen.toml", doc), base / "dolmen.log")
        started.append(dolmen)
        orthanc = start_orthanc(base / "orthanc", "ORTHANC", DicomModalities={
            "bench": ["BENCH", "127.0.0.1", free_port()], "scp": ["STORESCP", "127.0.0.1", scp_port]})
        started.append(orthanc)
        servers = {"Dolmen": (dolmen.dicom_port, dolmen.aet), "Orthanc": (orthanc.dicom_port, orthanc.aet)}
        total = args.studies + 1
        for name, (port, aet) in servers.items():
            if stored.exists():
                continue
            seconds = store_all(port, aet, small, big)
            print(f"{name}: stored {args.studies + args.instances} instances ({total} studies) "
                  f"in {seconds:.0f} s", flush=True)
        stored.touch()

        wildcard = ("PatientName=*ULLER^ANN*", "StudyInstanceUID", "StudyDate", "ModalitiesInStudy")
        exact = (f"StudyInstanceUID={exact_uid}", "PatientName", "StudyDate")
        figures: dict[str, dict[str, float]] = {name: {} for name in servers}
        timings: dict[str, dict[str, list[float]]] = {name: {} for name in servers}

        def turns(label: str, n: int, make: Any) -> None:
            """Both servers, taking turns, ``n`` times (after one warm-up run each)."""
            for port, aet in servers.values():
                run(*make(port, aet))
            for _ in range(n):
                for name, (port, aet) in servers.items():
                    timings[name].setdefault(label, []).append(run(*make(port, aet)))

        for name, (port, aet) in servers.items():
            figures[name]["answers"] = count_answers(port, aet, *wildcard)
        turns("wildcard", args.repeat, lambda port, aet: find_args(port, aet, *wildcard))
        turns("exact", args.repeat, lambda port, aet: find_args(port, aet, *exact))
        turns("move", 3, lambda port, aet: (
            "movescu", "-S", "-aet", "BENCH", "-aec", aet, "-aem", "STORESCP", "-k",
            "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={big_uid}", "127.0.0.1", str(port)))
        turns("get", 3, lambda port, aet: (
            "getscu", "--ignore", "-S", "-aet", "BENCH", "-aec", aet, "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={big_uid}", "127.0.0.1", str(port)))
        for name in servers:
            t = timings[name]
            figures[name].update(wildcard=statistics.median(t["wildcard"]),
                                 exact=statistics.median(t["exact"]),
                                 move=args.instances / min(t["move"]), get=args.instances / min(t["get"]))

        d, o = figures["Dolmen"], figures["Orthanc"]
        mb = sum(p.stat().st_size for p in big.rglob("*.dcm")) / 1e6
        print(f"\n{total} studies indexed; big study: {args.instances} instances, {mb:.0f} MB; "
              f"findscu/movescu/getscu wall time, TCP_NODELAY=1")
        print(f"{'':<48} {'Dolmen':>10} {'Orthanc':>10}  Dolmen vs Orthanc")
        print(f"{'C-FIND STUDY, PatientName wildcard (ms)':<48} {d['wildcard'] * 1000:10.1f} "
              f"{o['wildcard'] * 1000:10.1f}  {o['wildcard'] / d['wildcard']:.2f}x faster"
              f"   ({int(d['answers'])} / {int(o['answers'])} answers)")
        print(f"{'C-FIND STUDY, exact StudyInstanceUID (ms)':<48} {d['exact'] * 1000:10.1f} "
              f"{o['exact'] * 1000:10.1f}  {o['exact'] / d['exact']:.2f}x faster")
        print(f"{'C-MOVE to storescp (instances/s)':<48} {d['move']:10.0f} {o['move']:10.0f}  "
              f"{d['move'] / o['move']:.2f}x Orthanc's rate")
        print(f"{'C-GET by getscu (instances/s)':<48} {d['get']:10.0f} {o['get']:10.0f}  "
              f"{d['get'] / o['get']:.2f}x Orthanc's rate")
        return 0
    finally:
        for process in reversed(started):
            if isinstance(process, subprocess.Popen):
                process.terminate()
                process.wait(10)
            else:
                process.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
