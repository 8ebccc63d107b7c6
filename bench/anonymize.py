#!/usr/bin/env python3
"""Anonymize one study of ``--instances`` instances, Dolmen beside Orthanc in the same run.

Starts a real ``dolmen serve`` and, when /usr/sbin/Orthanc exists, Debian's Orthanc on free
ports, loads the same generated study (``--series`` series of ``--size``² images) into each
through ``POST /instances``, then times ``POST /studies/{id}/anonymize`` (synchronous, the
original kept) ``--repeat`` times and prints instances/s for each and the ratio of the times
(Dolmen / Orthanc, lower is better). Dolmen fsyncs each copy before it answers, Orthanc does
not: ``--no-fsync`` compares like with like.

    .venv/bin/python bench/anonymize.py [--instances 1000] [--series 4] [--size 64] [--repeat 3] [--no-fsync]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.rest import load  # noqa: E402
from dicomnode import demodata  # noqa: E402
from tests.conftest import make_config_doc  # noqa: E402
from tests.conftest import start_dolmen  # noqa: E402
from tests.conftest import start_orthanc  # noqa: E402
from tests.conftest import write_toml  # noqa: E402


def study(instances: int, series: int, size: int) -> list[bytes]:
    out = []
    for _rel, ds in demodata.iter_instances(patients=1, studies=1, series=series, instances=instances // series,
                                            size=size):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--series", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-fsync", dest="fsync", action="store_false")
    args = parser.parse_args()
    blobs = study(args.instances, args.series, args.size)
    base = Path(tempfile.mkdtemp(prefix="bench-anon-", dir="/tmp"))
    servers = []
    results: dict[str, float] = {}
    try:
        doc = make_config_doc(base / "dolmen", storage={"fsync": args.fsync})
        dolmen = start_dolmen(write_toml(base / "dolmen.toml", doc), base / "dolmen.log")
        servers.append(("Dolmen", dolmen))
        if os.path.exists("/usr/sbin/Orthanc"):
            servers.append(("Orthanc", start_orthanc(base / "orthanc", "ORTHANC")))
        import requests

        for name, server in servers:
            print(f"{name}: loading {len(blobs)} instances ...", flush=True)
            load(server.url, blobs, 4)
            study_id = requests.get(server.url + "/studies", timeout=60).json()[0]
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                answer = requests.post(f"{server.url}/studies/{study_id}/anonymize", data="{}", timeout=3600)
                answer.raise_for_status()
                times.append(time.perf_counter() - start)
                assert answer.json()["InstancesCount"] == len(blobs), answer.text[:300]
            results[name] = len(blobs) / statistics.median(times)
            print(f"{name}: {results[name]:.1f} instances/s (median of {args.repeat})", flush=True)
    finally:
        for _name, server in servers:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(f"\nanonymize one study of {len(blobs)} instances ({args.size}x{args.size}), "
          f"Dolmen {'with' if args.fsync else 'without'} fsync")
    for name, value in results.items():
        print(f"  {name:8} {value:8.1f} instances/s")
    if len(results) == 2:
        print(f"  ratio (Dolmen's time / Orthanc's, lower is better): {results['Orthanc'] / results['Dolmen']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
