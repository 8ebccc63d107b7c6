"""The control socket protocol: JSON lines, stable error codes, clear 'unavailable' messages."""
from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest

from dicomnode.control import ControlClient
from dicomnode.control import ControlServer
from dicomnode.errors import DolmenError
from dicomnode.errors import SidecarUnavailable


@pytest.fixture
def server(short_tmp: Path):
    srv = ControlServer(short_tmp / "run" / "control.sock")
    srv.register("status", lambda args: {"aet": "DOLMEN", "echo": args})

    def fail(args: dict) -> dict:
        raise DolmenError("Connection refused by 10.0.0.5:104", code="connection_refused")

    srv.register("echo", fail)
    srv.register("boom", lambda args: 1 / 0)
    srv.start()
    yield srv
    srv.stop()


def _raw(path: Path, payload: bytes) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        s.sendall(payload)
        return json.loads(s.makefile("rb").readline())


def test_permissions(server: ControlServer) -> None:
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(server.path.parent).st_mode) == 0o700


def test_ok_and_error_replies(server: ControlServer) -> None:
    client = ControlClient(server.path)
    assert client.call("status", x=1) == {"aet": "DOLMEN", "echo": {"x": 1}}
    with pytest.raises(DolmenError) as info:
        client.call("echo", modality="pacs")
    assert info.value.code == "connection_refused" and "10.0.0.5:104" in info.value.message
    with pytest.raises(DolmenError) as info:
        client.call("boom")
    assert info.value.code == "internal_error" and "ZeroDivisionError" in info.value.message


@pytest.mark.parametrize("payload, code", [
    (b"not json\n", "bad_request"),
    (b"[1, 2]\n", "bad_request"),
    (b'{"v": 2, "op": "status"}\n', "bad_version"),
    (b'{"v": 1, "op": "teleport"}\n', "unknown_op"),
    (b'{"v": 1, "op": "status", "args": [1]}\n', "bad_request"),
])
def test_malformed_requests_get_error_codes(server: ControlServer, payload: bytes, code: str) -> None:
    reply = _raw(server.path, payload)
    assert reply["ok"] is False and reply["error"]["code"] == code


def test_unavailable_sidecar_is_explained(short_tmp: Path) -> None:
    client = ControlClient(short_tmp / "nothing.sock", lambda: "It exited with code -9 3 s ago.")
    with pytest.raises(SidecarUnavailable) as info:
        client.call("status")
    assert "not running" in info.value.message and "code -9" in info.value.message


def test_path_too_long_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DolmenError, match="Unix sockets allow"):
        ControlServer(tmp_path / ("x" * 120) / "control.sock")
