"""Where the templates and static files are, in a source checkout and in an installed wheel."""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    # In a wheel they are package data inside webapp/; in a checkout they sit beside webapp/.
    for candidate in (_HERE / name, _HERE.parent / name):
        if candidate.is_dir():
            return candidate
    raise RuntimeError(f"Dolmen's {name}/ folder is missing: reinstall the package")


TEMPLATES = _find("templates")
STATIC = _find("static")
