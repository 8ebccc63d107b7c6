#!/usr/bin/env python3
"""C-STORE ingest rate: 1,000 instances of 256×256 over one association with DCMTK's storescu.

Starts a real ``dolmen serve`` on free ports and, when /usr/sbin/Orthanc exists, Orthanc on
the same data in the same run, and prints instances/s for each and the ratio. DCMTK and
Orthanc run with TCP_NODELAY=1 (else both wait ~40 ms per message on Nagle's algorithm).

    .venv/bin/python bench/ingest.py [--instances 1000] [--size 256] [--rounds 1] [--big-mb 0]

With ``--rounds N`` each server receives N sets of new instances (other patients), Dolmen
and Orthanc taking turns, so that a busy machine slows both alike; the median of the
rounds is printed.

``--tls`` also sends each round's data (other patients) to Dolmen's DICOM TLS port with
``storescu +tls`` (certificates made with openssl for the run) and prints TLS against plain;
issue 17's goal is within 1.3× of plain. The small-instance case of issue 17 is
``--instances 10000 --size 32 --rounds 2`` (with ``--fsync off`` too: Orthanc does not fsync).

``--big-mb 2048`` also sends a study of that many MiB (in 512 MiB multi-frame objects) and
prints the sidecar's peak RSS while it receives it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dicomnode import demodata  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.conftest import make_config_doc  # noqa: E402
from tests.conftest import start_dolmen  # noqa: E402
from tests.conftest import start_orthanc  # noqa: E402
from tests.conftest import write_toml  # noqa: E402
from tests.pki import Pki  # noqa: E402

ENV = dict(os.environ, TCP_NODELAY="1")


def storescu(aet: str, port: int, *paths: Path, tls: list[str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(["storescu", *(tls or []), "-aec", aet, "127.0.0.1", str(port), "+sd", "+r", *map(str, paths)],
                   check=True, env=ENV, capture_output=True)
    return time.perf_counter() - start


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--big-mb", type=int, default=0)
    ap.add_argument("--fsync", choices=("on", "off"), default="on")
    ap.add_argument("--tls", action="store_true", help="also send over DICOM TLS and compare with plain")
    args = ap.parse_args()
    if not shutil.which("storescu"):
        print("storescu (DCMTK) is needed: apt-get install dcmtk")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bi-", dir="/tmp"))
    try:
        per_series = min(args.instances, 500)
        sets = []
        for r in range(args.rounds):
            data = tmp / f"data{r}"
            demodata.write(data, patients=1, studies=1, series=max(1, args.instances // per_series),
                           instances=per_series, size=args.size, first_patient=r)
            sets.append(data)
        tls_sets = []
        for r in range(args.rounds if args.tls else 0):
            data = tmp / f"tls{r}"
            demodata.write(data, patients=1, studies=1, series=max(1, args.instances // per_series),
                           instances=per_series, size=args.size, first_patient=100 + r)
            tls_sets.append(data)
        n = len(list(sets[0].rglob("*.dcm")))
        mb = sum(p.stat().st_size for p in sets[0].rglob("*.dcm")) / 1e6
        print(f"data: {args.rounds} set(s) of {n} instances of {args.size}x{args.size}, {mb:.0f} MB each")

        doc = make_config_doc(tmp / "dolmen", storage={"fsync": args.fsync == "on", "min_free_mb": 0},
                              log={"level": "WARNING"})
        tls_args: list[str] = []
        if args.tls:
            pki = Pki(tmp / "pki")
            pki.folder.mkdir()
            pki.ca("ca")
            pki.cert("server", "ca")
            pki.cert("client", "ca")
            doc["dicom.tls"] = {"port": free_port(), "certificate": pki.path("server.crt"),
                                "private_key": pki.path("server.key"), "trusted_certificates": pki.path("ca.crt")}
            tls_args = ["+tls", pki.path("client.key"), pki.path("client.crt"), "+cf", pki.path("ca.crt")]
        server = start_dolmen(write_toml(tmp / "dolmen.toml", doc), tmp / "dolmen.log")
        orthanc = start_orthanc(tmp / "orthanc", "ORTHANC") if os.path.exists("/usr/sbin/Orthanc") else None
        rates: dict[str, list[float]] = {"Dolmen": [], "Orthanc": [], "TLS": []}
        try:
            for r, data in enumerate(sets):
                elapsed = storescu("DOLMEN", server.dicom_port, data)
                rates["Dolmen"].append(n / elapsed)
                print(f"round {r + 1}: Dolmen : {n} instances in {elapsed:.2f} s = {n / elapsed:.0f} instances/s "
                      f"(fsync {args.fsync})")
                if args.tls:
                    elapsed = storescu("DOLMEN", doc["dicom.tls"]["port"], tls_sets[r], tls=tls_args)
                    rates["TLS"].append(n / elapsed)
                    print(f"round {r + 1}: Dolmen over TLS: {n} instances in {elapsed:.2f} s = {n / elapsed:.0f} instances/s")
                if orthanc is not None:
                    elapsed = storescu("ORTHANC", orthanc.dicom_port, data)
                    rates["Orthanc"].append(n / elapsed)
                    print(f"round {r + 1}: Orthanc: {n} instances in {elapsed:.2f} s = {n / elapsed:.0f} instances/s")
            count = server.get("/api/statistics").json()["CountInstances"]
            expected = n * args.rounds * (2 if args.tls else 1)
            assert count == expected, f"Dolmen indexed {count} of {expected}"
            dolmen_rate = statistics.median(rates["Dolmen"])
            print(f"Dolmen : {dolmen_rate:.0f} instances/s (median of {args.rounds})")
            if orthanc is not None:
                orthanc_rate = statistics.median(rates["Orthanc"])
                print(f"Orthanc: {orthanc_rate:.0f} instances/s (median of {args.rounds})")
                ratios = [d / o for d, o in zip(rates["Dolmen"], rates["Orthanc"])]
                print(f"ratio Dolmen/Orthanc: {dolmen_rate / orthanc_rate:.2f} "
                      f"(per round: {', '.join(f'{x:.2f}' for x in ratios)}; median {statistics.median(ratios):.2f})")
            else:
                print("Orthanc not installed: no comparison")
            if args.tls:
                tls_rate = statistics.median(rates["TLS"])
                print(f"Dolmen over TLS: {tls_rate:.0f} instances/s (median of {args.rounds}); "
                      f"time over TLS / plain: {dolmen_rate / tls_rate:.2f}")
            if args.big_mb:
                big = tmp / "big"
                for k in range(max(1, args.big_mb // 512)):
                    demodata.write_large(big / f"big{k}.dcm", min(512, args.big_mb), p=950, i=k)
                pid = server.sidecar_pid()
                peak = [rss_mb(pid)]
                done = threading.Event()

                def watch() -> None:
                    while not done.wait(0.05):
                        peak[0] = max(peak[0], rss_mb(pid))

                watcher = threading.Thread(target=watch)
                watcher.start()
                elapsed = storescu("DOLMEN", server.dicom_port, big)
                done.set()
                watcher.join()
                size = sum(p.stat().st_size for p in big.rglob("*.dcm")) / 1e6
                print(f"Dolmen : {size:.0f} MB study in {elapsed:.1f} s ({size / elapsed:.0f} MB/s), "
                      f"sidecar peak RSS {peak[0]:.0f} MB")
        finally:
            server.stop()
            if orthanc is not None:
                orthanc.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
