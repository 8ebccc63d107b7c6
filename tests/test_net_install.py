"""pynetdicom is the release dicomnode/net was written against, and every name it patches exists."""
from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from dicomnode import net

ROOT = Path(__file__).resolve().parent.parent
#: pynetdicom modules whose contents are internals (the public API is pynetdicom's package root,
#: sop_class, evt, _config and the presentation helpers).
INTERNALS = {"dul", "transport", "dimse", "dimse_messages", "fsm", "_handlers", "acse", "association",
             "service_class", "pdu", "pdu_items", "pdu_primitives", "dimse_primitives", "dsutils"}


def test_the_installed_pynetdicom_is_the_pinned_release() -> None:
    assert importlib.metadata.version("pynetdicom") == net.PYNETDICOM_VERSION
    requirement = next(r for r in importlib.metadata.requires("dolmen") or [] if r.startswith("pynetdicom"))
    assert requirement.replace(" ", "") == f"pynetdicom=={net.PYNETDICOM_VERSION}"


@pytest.mark.parametrize("name", [f"{m}.{n}" for m, names in net.PATCHED.items() for n, _ in names])
def test_each_patched_name_exists(name: str) -> None:
    assert name not in net.missing_attributes()


def test_a_missing_name_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from pynetdicom import dul

    monkeypatch.delattr(dul.DULServiceProvider, "_read_pdu_data")
    assert net.missing_attributes() == ["pynetdicom.dul.DULServiceProvider._read_pdu_data"]
    with pytest.raises(net.NetPatchError, match=r"lacks pynetdicom\.dul\.DULServiceProvider\._read_pdu_data"):
        net.install(Path("/nonexistent"), 1, latency=False)


def test_install_applies_every_patch_in_a_fresh_interpreter(tmp_path: Path) -> None:
    code = f"""
from pathlib import Path
from pynetdicom import association, dimse, dimse_messages, dul, fsm, transport
before = (dul.DULServiceProvider._read_pdu_data, dul.DULServiceProvider.run_reactor,
          dimse_messages.NamedTemporaryFile, association.Association.run, association.uid_to_service_class,
          fsm.StateMachine.do_action, dimse.DIMSEServiceProvider.get_msg, transport.AssociationSocket.recv)
from dicomnode import net
net.install(Path({str(tmp_path)!r}), 1024, latency=LATENCY)
after = (dul.DULServiceProvider._read_pdu_data, dul.DULServiceProvider.run_reactor,
         dimse_messages.NamedTemporaryFile, association.Association.run, association.uid_to_service_class,
         fsm.StateMachine.do_action, dimse.DIMSEServiceProvider.get_msg, transport.AssociationSocket.recv)
print([a is not b for a, b in zip(before, after)])
net.install(Path({str(tmp_path)!r}), 1024, latency=LATENCY)  # idempotent
again = (dul.DULServiceProvider._read_pdu_data, dul.DULServiceProvider.run_reactor,
         dimse_messages.NamedTemporaryFile, association.Association.run, association.uid_to_service_class,
         fsm.StateMachine.do_action, dimse.DIMSEServiceProvider.get_msg, transport.AssociationSocket.recv)
print(all(a is b for a, b in zip(after, again)))
"""
    for latency, expected in ((True, [True] * 8), (False, [True] * 6 + [False] * 2)):
        out = subprocess.run([sys.executable, "-c", code.replace("LATENCY", str(latency))], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=True).stdout.split("\n")
        assert out[0] == str(expected), (latency, out)
        assert out[1] == "True"


def _pynetdicom_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "pynetdicom":
                found |= {f"pynetdicom.{a.name}" for a in node.names}
            elif node.module.startswith("pynetdicom."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pynetdicom.")}
    return found


def test_only_dicomnode_net_imports_pynetdicom_internals() -> None:
    offenders = {}
    for path in sorted([*ROOT.joinpath("dicomnode").rglob("*.py"), *ROOT.joinpath("webapp").rglob("*.py")]):
        if ROOT.joinpath("dicomnode", "net") in path.parents:
            continue
        internal = {m for m in _pynetdicom_imports(path) if m.split(".")[1] in INTERNALS}
        if internal:
            offenders[str(path.relative_to(ROOT))] = sorted(internal)
    assert not offenders
