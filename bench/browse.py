#!/usr/bin/env python3
"""Time the browse pages of a real ``dolmen serve`` holding 10,000 studies, and a preview.

    .venv/bin/python bench/browse.py [--studies 10000] [--runs 30] [--keep DIR]

1. Indexes ``--studies`` studies (one series, one 8×8 instance each; four studies per patient)
   through the one ingest path (``Ingestor.ingest_bytes``, fsync off: the bench measures pages,
   not disks), so the rows are exactly what a C-STORE or an upload writes.
2. Adds a 512×512 signed 16-bit CT slice (``bench/render.py``'s ``make_ct``).
3. Starts ``dolmen serve`` on free ports and times, over one kept-alive HTTP connection, the
   median and 95th percentile of ``--runs`` requests (after one warm-up) of: the first page of
   ``/studies``, filtered, sorted, a deep page, the htmx partial, ``/patients``; and
   ``GET /instances/<id>/preview.png`` of the CT slice.
4. When ``/usr/sbin/Orthanc`` is installed, times Orthanc's ``GET /instances/<id>/preview`` on
   the same file the same way (``bench/render.py`` times the renderer alone).

Indexing 10,000 studies takes minutes: ``--keep DIR`` keeps the data folder in DIR and a later
run with the same DIR starts from it.

Targets (issue 3): first page of ``/studies`` under 100 ms; the preview no slower than Orthanc's.
"""
from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.render import ORTHANC  # noqa: E402
from bench.render import bench_orthanc  # noqa: E402
from bench.render import make_ct  # noqa: E402
from dicomnode import demodata  # noqa: E402
from dicomnode import index  # noqa: E402
from dicomnode.ingest import Ingestor  # noqa: E402
from dicomnode.ingest import Source  # noqa: E402
from dicomnode.store import Store  # noqa: E402
from tests.conftest import make_config_doc  # noqa: E402
from tests.conftest import start_dolmen  # noqa: E402
from tests.conftest import write_toml  # noqa: E402

TARGET_MS = 100.0
STUDIES_PER_PATIENT = 4


def populate(data: Path, studies: int) -> tuple[str, Path]:
    """Index ``studies`` studies and the 512×512 CT through the ingest path; the CT's id and file."""
    store = Store(data, fsync=False, min_free_mb=0)
    index.open_index(f"sqlite:///{data / 'index.db'}", synchronous_full=False)
    ingestor = Ingestor(store)
    source = Source(origin="import")
    start = time.perf_counter()
    for n in range(studies):
        ds = demodata.make_instance(n // STUDIES_PER_PATIENT, n % STUDIES_PER_PATIENT, 0, 0, size=8)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        result = ingestor.ingest_bytes(buf.getvalue(), source)
        if result.status != "stored":
            raise SystemExit(f"study {n}: {result.status} {result.reason}")
        if (n + 1) % 2000 == 0:
            print(f"  indexed {n + 1} studies ({(n + 1) / (time.perf_counter() - start):.0f}/s)", flush=True)
    ct = data.parent / "ct.dcm"
    make_ct(ct)
    result = ingestor.ingest_bytes(ct.read_bytes(), source)
    index.close_index()
    print(f"Indexed {studies} studies in {time.perf_counter() - start:.1f} s")
    return result.instance_id, ct


def reuse(data: Path, studies: int) -> tuple[str, Path]:
    """The CT slice of a data folder a previous run kept (public id, stored file); checks the count."""
    from dicomnode.index import Instance
    from dicomnode.index import Patient
    from dicomnode.index import Series
    from dicomnode.index import Study

    index.open_index(f"sqlite:///{data / 'index.db'}", synchronous_full=False)
    try:
        have = Study.select().count() - 1
        if have != studies:
            raise SystemExit(f"{data} holds {have} studies, not {studies}: use another --keep folder")
        ct = (Instance.select(Instance.public_id, Instance.path).join(Series).join(Study).join(Patient)
              .where(Patient.patient_id == "BENCH").get())
        print(f"Reusing {have} studies indexed in {data}")
        return str(ct.public_id), Store(data, fsync=False, min_free_mb=0).path(ct.path)
    finally:
        index.close_index()


def timed(session: requests.Session, url: str, runs: int,
          headers: dict[str, str] | None = None) -> list[float]:
    """Durations in ms of ``runs`` GETs of ``url`` (after one warm-up), each checked for 200."""
    durations = []
    for n in range(runs + 1):
        start = time.perf_counter()
        reply = session.get(url, headers=headers, timeout=60)
        elapsed = (time.perf_counter() - start) * 1000
        if reply.status_code != 200:
            raise SystemExit(f"GET {url}: HTTP {reply.status_code}")
        if n:
            durations.append(elapsed)
    return durations


def line(label: str, durations: list[float], target: float | None = None) -> float:
    median = statistics.median(durations)
    p95 = sorted(durations)[max(0, int(len(durations) * 0.95) - 1)]
    verdict = "" if target is None else ("  ok" if median < target else f"  OVER {target:.0f} ms")
    print(f"  {label:<48} median {median:7.1f} ms   p95 {p95:7.1f} ms{verdict}")
    return median


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--keep", type=Path, help="keep the indexed data here and reuse it in later runs")
    args = ap.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="bb-", dir="/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        data = base / "data"
        if (data / "index.db").exists():
            ct_id, ct_file = reuse(data, args.studies)
        else:
            ct_id, ct_file = populate(data, args.studies)
        doc = make_config_doc(data, storage={"fsync": False}, log={"level": "WARNING"})
        server = start_dolmen(write_toml(base / "dolmen.toml", doc), base / "dolmen.log")
        session = requests.Session()
        url = server.url
        pages = [
            ("/studies (first page, 50 rows)", "/studies", None),
            ("/studies?name=mul (filtered)", "/studies?name=mul", None),
            ("/studies?modality=MR&date=30d", "/studies?modality=MR&date=30d", None),
            ("/studies?sort=name&dir=asc (sorted)", "/studies?sort=name&dir=asc", None),
            ("/studies?page=150 (deep page)", "/studies?page=150", None),
            ("/studies htmx partial (HX-Request)", "/studies?name=s*", {"HX-Request": "true"}),
            ("/patients (first page)", "/patients", None),
        ]
        print(f"dolmen serve with {args.studies} studies; {args.runs} requests each, one kept-alive "
              "connection")
        first = 0.0
        for label, path, headers in pages:
            median = line(label, timed(session, url + path, args.runs, headers), TARGET_MS)
            first = first or median
        print("Preview of a 512×512 signed 16-bit CT slice (PNG, full size)")
        dolmen = line("Dolmen GET /instances/{id}/preview.png",
                      timed(session, f"{url}/instances/{ct_id}/preview.png", args.runs))
        if ORTHANC.exists():
            orthanc_dir = Path(tempfile.mkdtemp(prefix="orthanc-", dir=base))
            orthanc = bench_orthanc(ct_file, orthanc_dir, args.runs)
            if orthanc is not None:
                print(f"  Orthanc / Dolmen median ratio: {orthanc / dolmen:.2f} (above 1: Dolmen is faster)")
        else:
            print(f"  {ORTHANC} not found: no Orthanc comparison")
        return 0 if first < TARGET_MS else 1
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"Data kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
