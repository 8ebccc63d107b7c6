"""The dolmen command: import, demo-data, passwd."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from werkzeug.security import check_password_hash

from tests.conftest import make_config_doc
from tests.conftest import write_toml


def _dolmen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "webapp.cli", *args], capture_output=True, text=True, timeout=300)


def test_demo_data_is_deterministic(short_tmp: Path) -> None:
    a = _dolmen("demo-data", str(short_tmp / "a"), "--patients", "1", "--studies", "1", "--series", "1", "--instances", "3", "--size", "16")
    b = _dolmen("demo-data", str(short_tmp / "b"), "--patients", "1", "--studies", "1", "--series", "1", "--instances", "3", "--size", "16")
    assert a.returncode == b.returncode == 0 and "3 instances written" in a.stdout
    for f in (short_tmp / "a").rglob("*.dcm"):
        assert f.read_bytes() == (short_tmp / "b" / f.relative_to(short_tmp / "a")).read_bytes()


def test_import_files_folders_and_zips(short_tmp: Path) -> None:
    _dolmen("demo-data", str(short_tmp / "demo"), "--patients", "2", "--studies", "1", "--series", "1", "--instances", "4", "--size", "16")
    files = sorted((short_tmp / "demo").rglob("*.dcm"))
    with zipfile.ZipFile(short_tmp / "p1.zip", "w") as zf:
        for f in files[4:]:
            zf.write(f, f.name)
    (short_tmp / "junk.txt").write_text("not dicom")
    config = write_toml(short_tmp / "c.toml", make_config_doc(short_tmp / "data"))
    result = _dolmen("import", "--config", str(config), str(short_tmp / "demo" / "PAT00000"),
                     str(short_tmp / "p1.zip"), str(short_tmp / "junk.txt"))
    assert result.returncode == 1  # one file was rejected
    assert "8 stored, 0 already stored, 1 rejected (9 files)" in result.stdout
    assert "junk.txt" in result.stderr and "DICM" in result.stderr
    again = _dolmen("import", "--config", str(config), "-q", str(short_tmp / "demo"))
    assert again.returncode == 0 and "0 stored, 8 already stored, 0 rejected" in again.stdout
    missing = _dolmen("import", "--config", str(config), str(short_tmp / "nope"))
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr


def test_passwd_makes_a_hash_that_checks(short_tmp: Path) -> None:
    result = _dolmen("passwd", "alice", "--password", "correct horse")
    assert result.returncode == 0
    line = result.stdout.strip()
    assert line.startswith('alice = "')
    hashed = line.split('"')[1]
    assert check_password_hash(hashed, "correct horse") and not check_password_hash(hashed, "wrong")
    assert _dolmen("passwd", "--password", "short").returncode == 2
