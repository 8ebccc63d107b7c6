"""The README documents every configuration key, and the architecture rules hold."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from dicomnode.config import DICOMWEB_SERVER_KEYS
from dicomnode.config import MODALITY_KEYS
from dicomnode.config import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _rows() -> set[tuple[str, str]]:
    return set(re.findall(r"^\| `\[([a-z_.A-Z0-9]+)\]` \| `([a-zA-Z0-9_]+)` \|", README, re.M))


def test_every_setting_has_a_readme_row() -> None:
    rows = _rows()
    missing = [s.key for s in SETTINGS if tuple(s.key.rsplit(".", 1)) not in rows]
    assert not missing, f"README.md lacks a configuration row for {missing}"


def test_every_modality_key_has_a_readme_row() -> None:
    rows = _rows()
    missing = [k for k in MODALITY_KEYS if ("modalities.NAME", k) not in rows]
    assert not missing, f"README.md lacks a [modalities.NAME] row for {missing}"


def test_every_dicomweb_server_key_has_a_readme_row() -> None:
    rows = _rows()
    missing = [k for k in DICOMWEB_SERVER_KEYS if ("dicomweb.servers.NAME", k) not in rows]
    assert not missing, f"README.md lacks a [dicomweb.servers.NAME] row for {missing}"


def test_every_viewer_key_has_a_readme_row() -> None:
    from dicomnode.config import VIEWER_KEYS

    rows = _rows()
    missing = [k for k in VIEWER_KEYS if ("viewers.NAME", k) not in rows]
    assert not missing, f"README.md lacks a [viewers.NAME] row for {missing}"


def test_readme_has_no_row_for_an_unknown_key() -> None:
    known = {tuple(s.key.rsplit(".", 1)) for s in SETTINGS}
    known |= {("modalities.NAME", k) for k in MODALITY_KEYS} | {("http.users", "NAME")}
    known |= {("dicomweb.servers.NAME", k) for k in DICOMWEB_SERVER_KEYS}
    from dicomnode.config import VIEWER_KEYS

    known |= {("viewers.NAME", k) for k in VIEWER_KEYS}
    extra = _rows() - known
    assert not extra, f"README.md documents keys that do not exist: {sorted(extra)}"


def test_dicomnode_never_imports_flask() -> None:
    code = (
        "import importlib, pkgutil, sys, dicomnode\n"
        "for m in pkgutil.walk_packages(dicomnode.__path__, 'dicomnode.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = [n for n in ('flask', 'werkzeug', 'jinja2') if n in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, f"dicomnode imports {result.stdout} {result.stderr}"


def test_ci_calls_make_test_only() -> None:
    lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert any("make test" in ln for ln in lines)
    assert not any(("pytest" in ln) for ln in lines)


def _architecture_rows() -> dict[str, str]:
    section = README.split("## Architecture", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return dict(re.findall(r"^\| `([^`]+)`(?:, `[^`]+`)* \| (.*) \|$", section, re.M))


def test_the_architecture_table_names_every_package_and_module() -> None:
    rows = _architecture_rows()
    problems = []
    for top in ("dicomnode", "webapp"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path.name == "__init__.py":
                continue
            relative = path.relative_to(ROOT)
            package = relative.parent.as_posix() + "/"
            if package in (f"{top}/",) and f"{relative.as_posix()}" in rows:
                continue  # a top-level module with a row of its own
            row = rows.get(package)
            if row is None:
                problems.append(f"no row for {package}")
            elif f"`{path.stem}`" not in row:
                problems.append(f"the {package} row does not name `{path.stem}`")
    for name in rows:
        if not (ROOT / name.rstrip("/")).exists():
            problems.append(f"a row for {name}, which does not exist")
    assert not problems, problems


def test_dicomnode_has_at_most_twelve_top_level_modules() -> None:
    modules = [p.name for p in (ROOT / "dicomnode").glob("*.py") if p.name != "__init__.py"]
    assert len(modules) <= 12, modules
    too_long = {str(p.relative_to(ROOT)): n for top in ("dicomnode", "webapp") for p in (ROOT / top).rglob("*.py")
                if (n := len(p.read_text(encoding="utf-8").splitlines())) > 800}
    assert not too_long, too_long
