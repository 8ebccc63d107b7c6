"""Configuration: defaults, and a clear message naming the key for every bad value."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dicomnode import config
from dicomnode.errors import ConfigError


def test_defaults_match_the_issue() -> None:
    s = config.load(None) if not __import__("os").environ.get("DOLMEN_CONFIG") else config.from_dict({})
    assert s["dicom.aet"] == "DOLMEN"
    assert s["dicom.port"] == 4242
    assert s["http.host"] == "127.0.0.1"
    assert s["http.port"] == 8042
    assert s.storage_path == Path("./dolmen-data").resolve()
    assert s.database_url == f"sqlite:///{Path('./dolmen-data').resolve() / 'index.db'}"
    assert s["storage.overwrite"] is False
    assert s["dicom.unknown_aet"] == ["echo", "store"]


@pytest.mark.parametrize("doc, message", [
    ({"dicom": {"aet": "A" * 17}}, "[dicom] aet: longer than 16 characters"),
    ({"dicom": {"aet": "BAD\\AET"}}, "[dicom] aet: contains a backslash or a control character"),
    ({"dicom": {"aet": "TAB\tAET"}}, "[dicom] aet: contains a backslash or a control character"),
    ({"dicom": {"aet": "    "}}, "[dicom] aet: must not be empty or only spaces"),
    ({"dicom": {"port": 70000}}, "[dicom] port: must be between 0 and 65535"),
    ({"dicom": {"port": "4242"}}, "[dicom] port: must be a whole number"),
    ({"dicom": {"colour": "blue"}}, "[dicom] colour: unknown key"),
    ({"dicomm": {}}, "[dicomm]: unknown section"),
    ({"dicom": {"unknown_aet": ["echo", "fly"]}}, "[dicom] unknown_aet: unknown operation 'fly'"),
    ({"storage": {"database": "mysql://x"}}, "[storage] database: must start with sqlite:/// or postgresql://"),
    ({"http": {"host": "0.0.0.0"}}, "[http] host: listening on 0.0.0.0 exposes patient data"),
    ({"modalities": {"pacs": {"aet": "PACS"}}}, "[modalities.pacs] host: missing"),
    ({"modalities": {"pacs": {"aet": "PACS", "host": "h", "port": 0}}}, "[modalities.pacs] port: must be between 1 and 65535"),
    ({"modalities": {"pacs": {"aet": "PACS", "host": "h", "colour": 1}}}, "[modalities.pacs] colour: unknown key"),
    ({"modalities": {"a": {"aet": "X", "host": "h"}, "b": {"aet": "X", "host": "h"}}}, "AE title 'X' is declared twice"),
    ({"http": {"users": {"alice": "plaintext"}}}, "[http.users] alice: must be a password hash"),
])
def test_bad_values_name_the_key(doc: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.from_dict(doc)
    assert message in info.value.message


def test_modalities_and_users_are_read() -> None:
    s = config.from_dict({
        "http": {"host": "0.0.0.0", "users": {"alice": "scrypt:32768:8:1$abc$def"}},
        "modalities": {"pacs": {"aet": "PACS", "host": "10.0.0.5", "port": 104, "allow": ["echo", "find"]}},
    })
    assert s.modality("pacs") == config.ModalityConfig("pacs", "PACS", "10.0.0.5", 104, ("echo", "find"))
    assert s.users == {"alice": "scrypt:32768:8:1$abc$def"}
    # to_dict round-trips through the same checks
    again = config.from_dict(s.to_dict())
    assert again.modalities == s.modalities and again.values["storage.path"] == str(s.storage_path)


def test_load_reports_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        config.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[dicom\naet = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad)


def test_serve_with_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[dicom]\naet = "ABCDEFGHIJKLMNOPQ"\n')
    result = subprocess.run([sys.executable, "-m", "webapp.cli", "serve", "--config", str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "[dicom] aet: longer than 16 characters" in result.stderr


def test_check_config_command(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[dicom]\naet = "ARCHIVE"\nport = 11112\n')
    result = subprocess.run([sys.executable, "-m", "webapp.cli", "check-config", "--config", str(good)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout and "ARCHIVE" in result.stdout and "11112" in result.stdout
