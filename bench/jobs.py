#!/usr/bin/env python3
"""Does the DICOM server keep receiving while jobs run? C-STORE reception alone and beside sends.

Issue 4: "Several jobs can run at once (configurable concurrency) without slowing the SCP's
reception." Starts DCMTK's storescp (it discards what it gets) and a real ``dolmen serve``
with ``[jobs] concurrency = 2`` holding a study to send, then times DCMTK's storescu sending
``--receive`` instances to Dolmen over one association:

1. with no job running;
2. while two send jobs push the held study to storescp (each job's end is checked to come
   after the reception's end, so the jobs ran during the whole of it).

Prints instances/s of each reception and their ratio. Then the other side: one send job of the
held study alone, and one while a peer holds an association open to Dolmen without sending
anything (a modality between two studies). Send jobs give way only while objects arrive, so the
idle association should cost the send nothing (before, any open association made the send
pause 20 ms per instance). All on free ports, TCP_NODELAY=1 for DCMTK.

    .venv/bin/python bench/jobs.py [--send 1500] [--receive 500] [--size 256]
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
from tests.conftest import free_port  # noqa: E402
from tests.conftest import make_config_doc  # noqa: E402
from tests.conftest import start_dolmen  # noqa: E402
from tests.conftest import wait_for  # noqa: E402
from tests.conftest import write_toml  # noqa: E402

ENV = dict(os.environ, TCP_NODELAY="1")


def receive(folder: Path, port: int, aet: str) -> float:
    """Send every file under ``folder`` to Dolmen with storescu (one association); seconds taken."""
    start = time.perf_counter()
    subprocess.run(["storescu", "-aec", aet, "+sd", "+r", "127.0.0.1", str(port), str(folder)],
                   env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--send", type=int, default=1500, help="instances of the study the jobs send")
    ap.add_argument("--receive", type=int, default=500, help="instances received in each phase")
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    if not shutil.which("storescp"):
        print("needs DCMTK (storescp, storescu)", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="bj-", dir="/tmp"))
    started: list[Any] = []
    try:
        held = demodata.write(base / "held", patients=1, studies=1, series=1, instances=args.send,
                              size=args.size, first_patient=0)
        for n, name in enumerate(("idle", "busy")):
            demodata.write(base / name, patients=1, studies=1, series=1, instances=args.receive,
                           size=args.size, first_patient=10 + n)
        mb = sum(p.stat().st_size for p in held) / 1e6
        print(f"Held study: {args.send} instances of {args.size}×{args.size} ({mb:.0f} MB); "
              f"{args.receive} instances received per phase")

        scp_port = free_port()
        storescp = subprocess.Popen(["storescp", "--ignore", "-aet", "STORESCP", str(scp_port)], env=ENV,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(storescp)
        wait_for(lambda: socket.create_connection(("127.0.0.1", scp_port), timeout=1).close() or True,
                 what="storescp")
        doc = make_config_doc(base / "dolmen", log={"level": "WARNING"}, jobs={"concurrency": 2})
        doc["modalities.scp"] = {"aet": "STORESCP", "host": "127.0.0.1", "port": scp_port}
        server = start_dolmen(write_toml(base / "dolmen.toml", doc), base / "dolmen.log")
        started.append(server)
        aet = server.aet
        receive(base / "held", server.dicom_port, aet)  # the study the jobs send; warms the server up

        idle = receive(base / "idle", server.dicom_port, aet)
        print(f"  reception, no job running          {idle:6.2f} s  {args.receive / idle:6.0f} instances/s")

        study = ids.study_id("PAT00000", demodata.uid("study", 0, 0))
        control = ControlClient(server.control_socket)
        job_ids = [control.call("send", modality="scp", resources=[{"level": "study", "id": study}])["job"]
                   for _ in range(2)]
        wait_for(lambda: all(server.get(f"/api/jobs/{j}").json()["State"] == "running" for j in job_ids),
                 timeout=60, interval=0.05, what="both send jobs to run")
        busy = receive(base / "busy", server.dicom_port, aet)
        jobs = [server.get(f"/api/jobs/{j}").json() for j in job_ids]
        during = all(j["State"] == "running" for j in jobs)
        print(f"  reception beside two send jobs     {busy:6.2f} s  {args.receive / busy:6.0f} instances/s"
              f"{'' if during else '  (a job ended before the reception did: raise --send)'}")
        print(f"  jobs had sent {sum(j['Done'] for j in jobs)} of {2 * args.send} instances meanwhile")
        print(f"Reception beside two jobs: {idle / busy:.2f}× its rate alone")
        for j in job_ids:
            wait_for(lambda j=j: server.get(f"/api/jobs/{j}").json()["State"] in ("success", "failure"),
                     timeout=1800, interval=0.2, what=f"send job {j}")

        def send_seconds() -> float:
            job_id = control.call("send", modality="scp", resources=[{"level": "study", "id": study}])["job"]
            job = wait_for(lambda: (lambda j: j if j["State"] in ("success", "failure") else None)(
                server.get(f"/api/jobs/{job_id}").json()), timeout=1800, interval=0.05, what="send job")
            assert job["State"] == "success", job["Error"]
            return float(job["Duration"])

        alone = send_seconds()
        print(f"  send job, no association open      {alone:6.2f} s  {args.send / alone:6.0f} instances/s")
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification
        peer = AE(ae_title="IDLEPEER")
        peer.add_requested_context(Verification)
        assoc = peer.associate("127.0.0.1", server.dicom_port, ae_title=aet)
        assert assoc.is_established, "the idle association was not accepted"
        try:
            beside = send_seconds()
        finally:
            assoc.release()
        print(f"  send job, an idle association open {beside:6.2f} s  {args.send / beside:6.0f} instances/s")
        print(f"Send beside an idle association: {beside / alone:.2f}× its time alone")
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
