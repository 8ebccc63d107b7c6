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
   ``GET /instances/<id>/preview.png`` of the CT slice; beside each, the CPU time the web
   process spent per request (from /proc), which a busy machine inflates far less.
4. When ``/usr/sbin/Orthanc`` is installed, times Orthanc's ``GET /instances/<id>/preview`` on
   the same file the same way (``bench/render.py`` times the renderer alone).

Indexing 10,000 studies takes minutes: ``--keep DIR`` keeps the data folder in DIR and a later
run with the same DIR starts from it.

Targets (issue 3): first page of ``/studies`` under 100 ms; the preview no slower than Orthanc's.
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
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.render import ORTHANC  # noqa: E402
from bench.render import bench_orthanc  # noqa: E402
from bench.render import make_ct  # noqa: E402
from dicomnode import demodata  # noqa: E402
from dicomnode.archive import index  # noqa: E402
from dicomnode.archive.ingest import Ingestor  # noqa: E402
from dicomnode.archive.ingest import Source  # noqa: E402
from dicomnode.archive.store import Store  # noqa: E402
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


def scale_up(data: Path, copies: int) -> int:
    """Add ``copies`` copies of every indexed patient, study, series and instance row.

    Each copy gets its own Patient ID, UIDs and Orthanc identifiers (computed as ingest does),
    so the list pages see ``copies + 1`` times the studies. The copies share the originals'
    files (their ``path`` gets a suffix): only list pages are timed on them. Returns the
    number of studies now indexed.
    """
    from dicomnode import ids
    from dicomnode.archive.index import Instance
    from dicomnode.archive.index import Patient
    from dicomnode.archive.index import Series
    from dicomnode.archive.index import Study

    index.open_index(f"sqlite:///{data / 'index.db'}", synchronous_full=False)
    try:
        patients = list(Patient.select().dicts())
        studies = list(Study.select().dicts())
        series = list(Series.select().dicts())
        instances = list(Instance.select().dicts())
        by_pk = {"patient": {p["pk"]: p for p in patients}, "study": {s["pk"]: s for s in studies},
                 "series": {s["pk"]: s for s in series}}
        start = time.perf_counter()
        top = max(r["pk"] for r in patients + studies + series + instances)
        step = 10 ** len(str(top))  # copy k of the row with pk n gets pk k * step + n
        for k in range(1, copies + 1):
            rows: dict[str, list[dict[str, Any]]] = {"patient": [], "study": [], "series": [], "instance": []}
            for p in patients:
                pid = f"{p['patient_id']}-{k}"
                rows["patient"].append({**p, "pk": k * step + p["pk"], "patient_id": pid,
                                        "public_id": ids.patient_id(pid)})
            for st in studies:
                pid = f"{by_pk['patient'][st['patient']]['patient_id']}-{k}"
                uid = f"{st['study_instance_uid']}.{k}"
                rows["study"].append({**st, "pk": k * step + st["pk"], "patient": k * step + st["patient"],
                                      "study_instance_uid": uid, "public_id": ids.study_id(pid, uid),
                                      "accession_number": f"{st['accession_number']}-{k}"})
            for se in series:
                st = by_pk["study"][se["study"]]
                pid = f"{by_pk['patient'][st['patient']]['patient_id']}-{k}"
                uid = f"{se['series_instance_uid']}.{k}"
                public_id = ids.series_id(pid, f"{st['study_instance_uid']}.{k}", uid)
                rows["series"].append({**se, "pk": k * step + se["pk"], "study": k * step + se["study"],
                                       "series_instance_uid": uid, "public_id": public_id})
            for i in instances:
                se = by_pk["series"][i["series"]]
                st = by_pk["study"][se["study"]]
                pid = f"{by_pk['patient'][st['patient']]['patient_id']}-{k}"
                uid = f"{i['sop_instance_uid']}.{k}"
                rows["instance"].append({
                    **i, "pk": k * step + i["pk"], "series": k * step + i["series"], "sop_instance_uid": uid,
                    "path": f"{i['path']}.copy{k}",
                    "public_id": ids.instance_id(pid, f"{st['study_instance_uid']}.{k}",
                                                 f"{se['series_instance_uid']}.{k}", uid)})
            with index.db.atomic():
                for model, name in ((Patient, "patient"), (Study, "study"), (Series, "series"),
                                    (Instance, "instance")):
                    for n in range(0, len(rows[name]), 500):
                        model.insert_many(rows[name][n:n + 500]).execute()
        total = Study.select().count()
        print(f"Copied the rows {copies} times in {time.perf_counter() - start:.1f} s: {total} studies")
        return int(total)
    finally:
        index.close_index()


def reuse(data: Path, studies: int) -> tuple[str, Path]:
    """The CT slice of a data folder a previous run kept (public id, stored file); checks the count."""
    from dicomnode.archive.index import Instance
    from dicomnode.archive.index import Patient
    from dicomnode.archive.index import Series
    from dicomnode.archive.index import Study

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


def cpu_ms(pid: int) -> float:
    """CPU time (user + system) a process has used, in ms, from /proc (0 where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def timed(session: requests.Session, url: str, runs: int, headers: dict[str, str] | None = None,
          pid: int | None = None) -> tuple[list[float], float]:
    """Durations in ms of ``runs`` GETs of ``url`` (after one warm-up), each checked for 200, and
    the CPU ms the server process ``pid`` spent per request: steadier than the wall time on a
    machine busy with other work."""
    durations = []
    cpu = 0.0
    for n in range(runs + 1):
        if n == 1 and pid:
            cpu = cpu_ms(pid)
        start = time.perf_counter()
        reply = session.get(url, headers=headers, timeout=60)
        elapsed = (time.perf_counter() - start) * 1000
        if reply.status_code != 200:
            raise SystemExit(f"GET {url}: HTTP {reply.status_code}")
        if n:
            durations.append(elapsed)
    return durations, ((cpu_ms(pid) - cpu) / runs if pid else 0.0)


def line(label: str, measured: tuple[list[float], float], target: float | None = None) -> float:
    durations, cpu = measured
    median = statistics.median(durations)
    p95 = sorted(durations)[max(0, int(len(durations) * 0.95) - 1)]
    verdict = "" if target is None else ("  ok" if median < target else f"  OVER {target:.0f} ms")
    server = f"   server CPU {cpu:6.1f} ms" if cpu else ""
    print(f"  {label:<40} median {median:6.1f} ms   p95 {p95:6.1f} ms{server}{verdict}")
    return median


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--keep", type=Path, help="keep the indexed data here and reuse it in later runs")
    ap.add_argument("--copies", type=int, default=0,
                    help="then copy the rows this many times (e.g. 9: 100,000 studies; list pages only)")
    args = ap.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="bb-", dir="/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    server = None
    scratch: list[Path] = []
    try:
        data = base / "data"
        if (data / "index.db").exists():
            ct_id, ct_file = reuse(data, args.studies)
        else:
            ct_id, ct_file = populate(data, args.studies)
        studies = args.studies
        if args.copies:  # on a copy of the data folder, which --keep keeps as it was
            copy = Path(tempfile.mkdtemp(prefix="bb-", dir="/tmp"))
            shutil.copytree(data, copy / "data", ignore=shutil.ignore_patterns("run", "tmp"))
            scratch.append(copy)
            data = copy / "data"
            studies = scale_up(data, args.copies) - 1
        doc = make_config_doc(data, storage={"fsync": False}, log={"level": "WARNING"})
        server = start_dolmen(write_toml(base / "dolmen.toml", doc), base / "dolmen.log")
        session = requests.Session()
        url = server.url
        pid = server.proc.pid  # the web process (the DICOM sidecar is another)
        pages = [
            ("/studies (first page, 50 rows)", "/studies", None),
            ("/studies?name=mul (filtered)", "/studies?name=mul", None),
            ("/studies?modality=MR&date=30d", "/studies?modality=MR&date=30d", None),
            ("/studies?sort=name&dir=asc (sorted)", "/studies?sort=name&dir=asc", None),
            ("/studies?page=150 (deep page)", "/studies?page=150", None),
            ("/studies htmx partial (HX-Request)", "/studies?name=s*", {"HX-Request": "true"}),
            ("/patients (first page)", "/patients", None),
        ]
        print(f"dolmen serve with {studies} studies; {args.runs} requests each, one kept-alive "
              "connection")
        first = 0.0
        for label, path, headers in pages:
            median = line(label, timed(session, url + path, args.runs, headers, pid), TARGET_MS)
            first = first or median
        print("Preview of a 512×512 signed 16-bit CT slice (PNG, full size)")
        dolmen = line("Dolmen GET /instances/{id}/preview.png",
                      timed(session, f"{url}/instances/{ct_id}/preview.png", args.runs, pid=pid))
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
        for folder in scratch:
            shutil.rmtree(folder, ignore_errors=True)
        if args.keep:
            print(f"Data kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
