"""Each DIMSE status code is defined once, in dicomnode/status.py."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from dicomnode import status

ROOT = Path(__file__).resolve().parent.parent
#: Codes of PS3.4/PS3.7 statuses (the general ones and each service's).
_STATUS_LITERAL = re.compile(r"0x(0000|0110|0117|0122|0124|021[0-2]|A[7-9A][0-9A-Fa-f]{2}|B00[0-7]|C[0-9A-Fa-f]{3}|FE00|FF0[01])$",
                             re.I)


def test_each_code_has_one_name() -> None:
    names = {n: v for n, v in vars(status).items() if n.isupper() and isinstance(v, int)}
    by_code: dict[int, list[str]] = {}
    for name, code in names.items():
        by_code.setdefault(code, []).append(name)
    assert {c: n for c, n in by_code.items() if len(n) > 1} == {}


def test_no_status_literal_outside_the_vocabulary() -> None:
    found = []
    for path in sorted([*ROOT.joinpath("dicomnode").rglob("*.py"), *ROOT.joinpath("webapp").rglob("*.py")]):
        if path == ROOT / "dicomnode" / "status.py":
            continue
        text = path.read_text(encoding="utf-8")  # once: get_source_segment re-splits it on each call
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Compare) and re.search(r"code|status", ast.get_source_segment(text, node) or "", re.I):
                for side in [node.left, *node.comparators]:
                    segment = ast.get_source_segment(text, side) or ""
                    if isinstance(side, ast.Constant) and _STATUS_LITERAL.match(segment):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} {segment}")
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                segment = ast.get_source_segment(text, node.value) or ""
                if _STATUS_LITERAL.match(segment) and any(
                        isinstance(t, ast.Name) and t.id.isupper() for t in node.targets):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {segment}")
    assert not found, found
