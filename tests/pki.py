"""Test certificates made with openssl: a CA (``ca``), certificates it signs (``cert``), in one
folder. Used by the TLS tests and by ``bench/ingest.py --tls``."""
from __future__ import annotations

import subprocess
from pathlib import Path

CA_CNF = """[ca]
default_ca = CA_default
[CA_default]
dir = {dir}
database = {dir}/index.txt
new_certs_dir = {dir}
serial = {dir}/serial
default_md = sha256
policy = policy_any
unique_subject = no
[policy_any]
commonName = supplied
"""


class Pki:
    """Keys and certificates in ``folder``: ``path("server.crt")``..."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, name: str) -> str:
        return str(self.folder / name)

    def _run(self, *args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=self.folder, timeout=60)

    def ca(self, name: str) -> None:
        self._run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                  "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "3650", "-subj", f"/CN=Dolmen test {name}")
        (self.folder / f"{name}.cnf").write_text(CA_CNF.format(dir=self.folder / f"{name}-db"))
        (self.folder / f"{name}-db").mkdir()
        (self.folder / f"{name}-db" / "index.txt").write_text("")
        (self.folder / f"{name}-db" / "serial").write_text("1000\n")

    def cert(self, name: str, ca: str, *, san: str = "IP:127.0.0.1,DNS:localhost",
             start: str | None = None, end: str | None = None) -> None:
        self._run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                  "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (self.folder / f"{name}.ext").write_text(
            f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyAgreement\n"
            "extendedKeyUsage=serverAuth,clientAuth\n")
        dates = ["-startdate", start or "20250101000000Z", "-enddate", end or "20450101000000Z"]
        self._run("ca", "-batch", "-notext", "-config", f"{ca}.cnf", "-cert", f"{ca}.crt", "-keyfile", f"{ca}.key",
                  "-in", f"{name}.csr", "-out", f"{name}.crt", "-extfile", f"{name}.ext", *dates)
