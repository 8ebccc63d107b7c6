"""The PDU mutator (tests/fuzz_pdu.py) against a live Dolmen, then the survival contract:
10 seconds in ``make test``, 5 minutes under ``make test-long`` (``DOLMEN_LONG_TESTS=1``)."""

from __future__ import annotations

import os

from tests.fuzz_pdu import fuzz
from tests.hostile import Survival
from tests.hostile import hostile_sections

SECONDS = 300.0 if os.environ.get("DOLMEN_LONG_TESTS") else 10.0


def test_pdu_mutator_leaves_the_server_alive(dolmen_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = dolmen_factory(**hostile_sections(dicom={"acse_timeout": 2.0, "network_timeout": 4.0}))
    survival = Survival(server)
    report = fuzz(server.dicom_port, SECONDS, seed=int(os.environ.get("DOLMEN_FUZZ_SEED", "7")), out=tmp_path)
    print(f"PDU mutator: {report}")
    assert report.executions > 20, report
    assert not report.findings, report
    survival.check()
