#!/usr/bin/env python3
"""Network jobs: send a 1,000-instance 256×256 study to DCMTK storescp, retrieve it from Orthanc
by C-MOVE and by C-GET, and the same send done by Orthanc, on the same data in the same run.

Starts DCMTK's storescp, Orthanc (holding the study, with Dolmen declared as a modality) and two
real ``dolmen serve`` (one per retrieve method, so each starts empty), all on free ports and
with TCP_NODELAY=1 (else DCMTK and Orthanc wait ~40 ms per message on Nagle's algorithm).
Each figure is the job's own duration, from its start to its end, as the jobs page shows it.

    .venv/bin/python bench/network.py [--instances 1000] [--size 256]
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dicomnode import demodata  # noqa: E402
from dicomnode import ids  # noqa: E402
from dicomnode.control import ControlClient  # noqa: E402
from tests.conftest import DolmenProcess  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.conftest import make_config_doc  # noqa: E402
from tests.conftest import start_dolmen  # noqa: E402
from tests.conftest import start_orthanc  # noqa: E402
from tests.conftest import wait_for  # noqa: E402
from tests.conftest import write_toml  # noqa: E402

ENV = dict(os.environ, TCP_NODELAY="1")


def run_job(server: DolmenProcess, op: str, **args: Any) -> dict[str, Any]:
    """Start a job through the control socket and wait for it; the job as the JSON API shows it."""
    job_id = ControlClient(server.control_socket).call(op, **args)["job"]

    def ended() -> dict[str, Any] | None:
        job: dict[str, Any] = server.get(f"/api/jobs/{job_id}").json()
        return job if job["State"] in ("success", "failure", "cancelled") else None

    job = wait_for(ended, timeout=1800, interval=0.2, what=f"{op} job {job_id}")
    if job["State"] != "success":
        raise SystemExit(f"{op} job failed: {job['Error']}")
    return job


def line(label: str, n: int, seconds: float, mb: float) -> None:
    print(f"  {label:<44} {seconds:7.2f} s  {n / seconds:8.0f} instances/s  {mb / seconds:7.1f} MB/s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    if not shutil.which("storescp") or not os.path.exists("/usr/sbin/Orthanc"):
        print("needs DCMTK (storescp) and Orthanc (/usr/sbin/Orthanc)", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="bn-", dir="/tmp"))
    started: list[Any] = []
    try:
        n = args.instances
        files = demodata.write(base / "study", patients=1, studies=1, series=1, instances=n, size=args.size)
        mb = sum(p.stat().st_size for p in files) / 1e6
        print(f"Study: {n} instances of {args.size}×{args.size}, {mb:.0f} MB")

        scp_port = free_port()
        storescp = subprocess.Popen(["storescp", "--ignore", "-aet", "STORESCP", str(scp_port)], env=ENV,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(storescp)
        wait_for(lambda: socket.create_connection(("127.0.0.1", scp_port), timeout=1).close() or True,
                 what="storescp")

        docs = [make_config_doc(base / f"dolmen{i}", log={"level": "WARNING"}) for i in range(2)]
        modalities = {f"dolmen{i}": [f"DOLMEN{i}", "127.0.0.1", d["dicom"]["port"]] for i, d in enumerate(docs)}
        modalities["scp"] = ["STORESCP", "127.0.0.1", scp_port]
        orthanc = start_orthanc(base / "orthanc", "PACS", DicomModalities=modalities)
        started.append(orthanc)
        for path in files:
            orthanc.post("/instances", data=path.read_bytes()).raise_for_status()
        study_uid = str(demodata.uid("study", 0, 0))
        servers = []
        for i, doc in enumerate(docs):
            doc["dicom"]["aet"] = f"DOLMEN{i}"
            doc["modalities.pacs"] = {"aet": "PACS", "host": "127.0.0.1", "port": orthanc.dicom_port}
            doc["modalities.scp"] = {"aet": "STORESCP", "host": "127.0.0.1", "port": scp_port}
            servers.append(start_dolmen(write_toml(base / f"dolmen{i}.toml", doc), base / f"dolmen{i}.log"))
            started.append(servers[-1])

        print("Dolmen")
        keys = {"StudyInstanceUID": study_uid}
        job = run_job(servers[0], "move", modality="pacs", level="STUDY", keys=keys)
        line("retrieve from Orthanc by C-MOVE", job["Done"], job["Duration"], mb)
        job = run_job(servers[1], "get", modality="pacs", level="STUDY", keys=keys)
        line("retrieve from Orthanc by C-GET", job["Done"], job["Duration"], mb)
        study_id = ids.study_id("PAT00000", study_uid)
        job = run_job(servers[1], "send", modality="scp", resources=[{"level": "study", "id": study_id}])
        dolmen_send = job["Duration"]
        line("send to storescp (C-STORE, one association)", job["Done"], dolmen_send, mb)

        print("Orthanc (same data, same storescp)")
        orthanc_id = orthanc.post("/tools/lookup", data=study_uid).json()[0]["ID"]
        start = time.perf_counter()
        answer = orthanc.post("/modalities/scp/store", json={"Resources": [orthanc_id], "Synchronous": True})
        answer.raise_for_status()
        orthanc_send = time.perf_counter() - start
        line("send to storescp (/modalities/scp/store)", n, orthanc_send, mb)
        print(f"Send, Dolmen vs Orthanc: {orthanc_send / dolmen_send:.2f}× Orthanc's rate")
        return 0
    finally:
        for process in reversed(started):
            if isinstance(process, subprocess.Popen):
                process.terminate()
                process.wait(10)
            else:
                process.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
