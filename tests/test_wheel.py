"""The wheel ships templates/ and static/, and an installed copy finds them."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_templates_and_static(short_tmp: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(short_tmp / "dist"), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next((short_tmp / "dist").glob("dolmen-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "webapp/templates/base.html" in names
    assert any(n.startswith("webapp/static/vendor/htmx-") for n in names)
    assert "webapp/static/dolmen.css" in names and "dicomnode/archive/ingest.py" in names
    assert "dicomnode/net/scp.py" in names and "dicomnode/render/source.py" in names
    target = short_tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = "import webapp.paths as p; print(p.TEMPLATES); print(p.STATIC)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(short_tmp), env=dict(os.environ, PYTHONPATH=str(target))).stdout.split()
    assert out[0] == str(target / "webapp" / "templates") and out[1] == str(target / "webapp" / "static")
