"""Short runs of the fuzzing harness (tests/fuzz/fuzz_dicom.py) on each target.

``make test`` runs each target for a few seconds with the plain mutator (seeded, so a
failure reproduces), and the render target once through atheris/libFuzzer when atheris is
installed (its start-up, instrumenting pydicom, takes most of that test's time). Longer
runs are done by hand, as the README's Security section says.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "tests" / "fuzz" / "fuzz_dicom.py"
SECONDS = float(os.environ.get("DOLMEN_FUZZ_SECONDS", "5"))


def run(tmp_path: Path, *args: str) -> re.Match[str]:
    command = [sys.executable, str(HARNESS), *args, "--findings", str(tmp_path / "findings")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=SECONDS * 10 + 180, cwd=tmp_path)
    summary = re.search(r"fuzz \w+ \((.+?)\): (\d+) executions .*?, (\d+) distinct finding", result.stdout)
    assert summary, f"no summary line:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert int(summary.group(2)) > 20, summary.group(0)
    assert result.returncode == 0 and summary.group(3) == "0", (
        f"{summary.group(0)}\n{result.stdout[-4000:]}\nfindings kept in {tmp_path / 'findings'}")
    return summary


@pytest.mark.parametrize("target", ["ingest", "render"])
def test_plain_mutator_finds_no_unexpected_exception(target: str, tmp_path: Path) -> None:
    summary = run(tmp_path, "--target", target, "--seconds", str(SECONDS), "--no-atheris", "--seed", "1")
    assert summary.group(1) == "plain mutator"


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed")
def test_atheris_run_finds_no_unexpected_exception(tmp_path: Path) -> None:
    summary = run(tmp_path, "--target", "render", "--seconds", "3")
    assert summary.group(1) == "atheris/libFuzzer"
