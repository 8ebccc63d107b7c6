"""Hostile-input helpers: the survival contract (issue 7) and a raw PDU builder.

The survival contract, asserted after every hostile case::

    from tests.hostile import Survival, hostile_sections

    def test_something(dolmen_factory):
        server = dolmen_factory(**hostile_sections())       # a known modality is declared
        survival = Survival(server)                          # warms up, then takes the baseline
        ...                                                  # the hostile case
        survival.check(problem=r"rejected|aborted", aet="EVIL")   # everything below, or fails

``check`` asserts that

* the web process and the sidecar are still up (``restarted=True`` accepts a new sidecar pid);
* a C-ECHO from the known modality (``KNOWN``) answers within 2 s;
* a C-STORE association, a C-ECHO association and two HTTP requests run at the same time
  and all complete normally;
* the sidecar's thread and file-descriptor counts (``/proc/<pid>/task``, ``/proc/<pid>/fd``)
  come back to the baseline;
* no file exists outside the storage root (``forbidden`` paths, and nothing new in the
  folder holding the storage root), no index row lacks its file, and (``spool_empty``) no
  temporary file is left in the storage's spool;
* one log line written since the baseline names the peer's IP, its AE title (``aet``) and
  the problem (``problem``, a regular expression);
* no Python traceback reached a client (:func:`assert_no_traceback` for HTTP answers) and
  none was logged (``tracebacks_ok=True`` to allow logged ones).

The PDU builder (PS3.8 9.3) writes A-ASSOCIATE-RQ, P-DATA-TF, A-RELEASE-RQ and A-ABORT
PDUs as bytes, so tests can send exactly the malformed stream they mean.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import re
import socket
import sqlite3
import struct
import time
from collections.abc import Iterable
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.uid import ImplicitVRLittleEndian

from dicomnode import config
from tests.conftest import DolmenProcess
from tests.conftest import free_port
from tests.conftest import wait_for

KNOWN_AET = "KNOWN"
#: The web server's worker threads (``[http] threads``, left at its default by these tests).
WEB_THREADS = next(s.default for s in config.SETTINGS if s.key == "http.threads")
VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\.py\", line \d+")


def hostile_sections(**overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Configuration sections for ``dolmen_factory``: the known modality ``KNOWN`` and small
    timeouts; ``overrides`` are merged per section (``dicom={"max_associations": 4}``)."""
    sections: dict[str, dict[str, Any]] = {
        "dicom": {"acse_timeout": 5.0, "dimse_timeout": 10.0, "network_timeout": 10.0},
        "modalities__known": {
            "aet": KNOWN_AET,
            "host": "127.0.0.1",
            "port": free_port(),
            "allow": ["echo", "store", "find", "move", "get"],
        },
    }
    for name, table in overrides.items():
        sections.setdefault(name, {}).update(table)
    return sections


# -- datasets -----------------------------------------------------------------------------------


def small_instance(
    study: str = "1.2.826.0.1.3680043.10.1078.1",
    series: str | None = None,
    sop: str | None = None,
    n: int = 1,
    size: int = 8,
) -> Dataset:
    """A tiny CT image (``size``² 16-bit pixels) with file meta, ready for C-STORE or ``save_as``."""
    from dicomnode import demodata

    ds = demodata.make_instance(7, 0, 0, n, size, "CT")
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series or f"{study}.1"
    ds.SOPInstanceUID = sop or f"{study}.1.{n}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def encode(ds: Dataset) -> bytes:
    """``ds`` as a DICOM file (preamble, meta, data set)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def implicit_bytes(ds: Dataset) -> bytes:
    """``ds`` without meta, Implicit VR Little Endian: the data set of a C-STORE."""
    from pynetdicom.dsutils import encode as encode_dataset

    data = encode_dataset(ds, True, True)
    assert data is not None
    return data


# -- raw PDUs (PS3.8 9.3) -------------------------------------------------------------------------


def pdu(pdu_type: int, body: bytes, length: int | None = None) -> bytes:
    """A PDU: type, reserved byte, 4-byte big-endian length (``length`` to lie), body."""
    return struct.pack(">BBL", pdu_type, 0, len(body) if length is None else length) + body


def item(item_type: int, body: bytes, length: int | None = None) -> bytes:
    """A variable item of an A-ASSOCIATE PDU: type, reserved, 2-byte length, body."""
    return struct.pack(">BBH", item_type, 0, len(body) if length is None else length) + body


def _uid_item(item_type: int, uid: str) -> bytes:
    return item(item_type, uid.encode("ascii"))


def presentation_context(
    context_id: int, abstract: str = VERIFICATION, syntaxes: Sequence[str] = (ImplicitVRLittleEndian,)
) -> bytes:
    """A Presentation Context item (0x20) proposing ``abstract`` with ``syntaxes``."""
    body = struct.pack(">BBBB", context_id, 0, 0, 0) + _uid_item(0x30, abstract)
    body += b"".join(_uid_item(0x40, ts) for ts in syntaxes)
    return item(0x20, body)


def user_information(
    max_pdu: int = 16384, implementation_uid: str = "1.2.826.0.1.3680043.10.1078.99"
) -> bytes:
    """A User Information item (0x50): Maximum Length and Implementation Class UID sub-items."""
    return item(0x50, item(0x51, struct.pack(">L", max_pdu)) + _uid_item(0x52, implementation_uid))


def associate_rq(
    called: bytes | str = "DOLMEN",
    calling: bytes | str = KNOWN_AET,
    contexts: Iterable[bytes] | None = None,
    *,
    user_info: bytes | None = None,
    max_pdu: int = 16384,
    extra: bytes = b"",
    length: int | None = None,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU (0x01). AE titles are padded to 16 bytes (longer ones are cut,
    pass bytes to write anything); ``contexts`` defaults to one Verification context (id 1)."""

    def ae(value: bytes | str) -> bytes:
        raw = value.encode("latin-1") if isinstance(value, str) else value
        return raw[:16].ljust(16, b" ")

    if contexts is None:
        contexts = [presentation_context(1)]
    body = struct.pack(">HH", 1, 0) + ae(called) + ae(calling) + b"\0" * 32
    body += _uid_item(0x10, APPLICATION_CONTEXT) + b"".join(contexts)
    body += user_information(max_pdu) if user_info is None else user_info
    return pdu(0x01, body + extra, length)


def p_data(*pdvs: tuple[int, int, bytes], length: int | None = None) -> bytes:
    """A P-DATA-TF PDU (0x04) of ``(context id, message control header, data)`` values."""
    body = b"".join(
        struct.pack(">LBB", len(data) + 2, context_id, header) + data for context_id, header, data in pdvs
    )
    return pdu(0x04, body, length)


def release_rq() -> bytes:
    """An A-RELEASE-RQ PDU (0x05)."""
    return pdu(0x05, b"\0\0\0\0")


def abort() -> bytes:
    """An A-ABORT PDU (0x07) from the service user."""
    return pdu(0x07, b"\0\0\0\0")


def command_set(elements: dict[int, bytes]) -> bytes:
    """A command set (group 0000, Implicit VR Little Endian) with its group length, from
    ``{element: value bytes}``."""
    body = b"".join(struct.pack("<HHL", 0, el, len(v)) + v for el, v in sorted(elements.items()) if el)
    return struct.pack("<HHL", 0, 0, 4) + struct.pack("<L", len(body)) + body


def _ui(uid: str) -> bytes:
    raw = uid.encode("latin-1")
    return raw + b"\0" if len(raw) % 2 else raw


def echo_rq(message_id: int = 1) -> bytes:
    """A C-ECHO-RQ command set."""
    return command_set(
        {
            0x0002: _ui(VERIFICATION),
            0x0100: struct.pack("<H", 0x0030),
            0x0110: struct.pack("<H", message_id),
            0x0800: struct.pack("<H", 0x0101),
        }
    )


def store_rq(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    """A C-STORE-RQ command set (a data set follows)."""
    return command_set(
        {
            0x0002: _ui(sop_class),
            0x0100: struct.pack("<H", 0x0001),
            0x0110: struct.pack("<H", message_id),
            0x0700: struct.pack("<H", 0),
            0x0800: struct.pack("<H", 0x0000),
            0x1000: _ui(sop_instance),
        }
    )


def status_of(command: bytes) -> int | None:
    """(0000,0900) *Status* of an encoded response command set, or ``None``."""
    pos = 0
    while pos + 8 <= len(command):
        group, element, length = struct.unpack_from("<HHL", command, pos)
        pos += 8
        if (group, element) == (0, 0x0900) and length == 2:
            return int(struct.unpack_from("<H", command, pos)[0])
        pos += length
    return None


def raw_store(
    port: int,
    sop_class: str,
    sop_instance: str,
    dataset: bytes,
    transfer_syntax: str,
    aet: str = KNOWN_AET,
    max_pdu: int = 16384,
    timeout: float = 60.0,
) -> int | None:
    """C-STORE ``dataset`` (bytes, in ``transfer_syntax``) written PDU by PDU, whatever it holds.

    The command set names ``sop_class`` and ``sop_instance`` (which may disagree with the data
    set). Returns the response's status, or ``None`` when the server aborted or closed instead.
    """
    with RawPeer(port, timeout=timeout) as peer:
        peer.send(
            associate_rq(
                calling=aet, contexts=[presentation_context(1, sop_class, [transfer_syntax])], max_pdu=max_pdu
            )
        )
        answer = peer.read_pdu()
        if answer is None or answer[0] != 0x02:
            return None
        peer.send(p_data((1, 0x03, store_rq(sop_class, sop_instance))))
        chunk = max_pdu - 6 - 100
        for start in range(0, max(len(dataset), 1), chunk):
            last = start + chunk >= len(dataset)
            try:
                peer.send(p_data((1, 0x02 if last else 0x00, dataset[start : start + chunk])))
            except OSError:
                return None
        status = None
        while True:
            answer = peer.read_pdu()
            if answer is None or answer[0] != 0x04:
                return None
            # One PDV: length, context id, header, command bytes (PS3.8 9.3.5.1, E.2).
            header = answer[1][5]
            status = status_of(answer[1][6:]) if header & 1 else None
            if header & 2:
                break
        try:
            peer.send(release_rq())
            peer.read_pdu()
        except OSError:
            pass
        return status


class RawPeer:
    """A TCP connection to the DICOM port that sends whatever it is given."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_pdu(self) -> tuple[int, bytes] | None:
        """The next PDU ``(type, body)``, or ``None`` when the server closed the connection."""
        head = self._read(6)
        if head is None:
            return None
        pdu_type, _, length = struct.unpack(">BBL", head)
        body = self._read(length)
        return (pdu_type, body) if body is not None else None

    def _read(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except (ConnectionResetError, TimeoutError):
                return None
            if not chunk:
                return None
            data += chunk
        return data

    def closed_by_server(self, timeout: float = 10.0) -> bool:
        """True once the server closed the connection (reading any PDUs it sends first)."""
        self.sock.settimeout(timeout)
        while True:
            try:
                if self.read_pdu() is None:
                    return True
            except OSError:
                return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- pynetdicom client helpers ---------------------------------------------------------------------


def echo(port: int, aet: str = KNOWN_AET, called: str = "DOLMEN", timeout: float = 2.0) -> int:
    """C-ECHO as ``aet``; returns the status (raises when no association or no answer)."""
    from pynetdicom import AE

    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        why = "rejected (busy or refused)" if assoc.is_rejected else "aborted or timed out"
        raise AssertionError(f"C-ECHO association as {aet} not established: {why}")
    try:
        status = assoc.send_c_echo()
        if "Status" not in status:
            raise AssertionError("C-ECHO got no answer")
        return int(status.Status)
    finally:
        assoc.release()


def store(
    port: int,
    datasets: Sequence[Dataset],
    aet: str = KNOWN_AET,
    called: str = "DOLMEN",
    timeout: float = 30.0,
) -> list[int | None]:
    """C-STORE ``datasets`` over one association; the status of each (``None``: no answer)."""
    from pynetdicom import AE

    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise AssertionError(f"C-STORE association as {aet} not established")
    out: list[int | None] = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            out.append(int(status.Status) if "Status" in status else None)
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def spool_contents(folder: Path) -> list[Path]:
    """Files under a spool ``folder`` (``tmp`` or ``tmp/scp``) but the empty ones the sidecar
    creates ahead for its next C-STOREs (``dicomnode.net.scp.RESERVE_PREFIX``)."""
    if not folder.exists():
        return []
    return [p for p in folder.rglob("*") if p.is_file() and not _reserved(p)]


def _reserved(path: Path) -> bool:
    from dicomnode.net.scp import RESERVE_PREFIX

    try:
        return path.name.startswith(RESERVE_PREFIX) and path.stat().st_size == 0
    except FileNotFoundError:
        return True  # taken and removed meanwhile


def rss_kb(pid: int) -> int:
    """Resident memory of process ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def assert_no_traceback(text: str | bytes, where: str = "answer") -> None:
    """Fail when ``text`` (an HTTP body, a DICOM Error Comment...) holds a Python traceback."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    assert not TRACEBACK.search(text), f"a Python traceback reached a client in the {where}:\n{text[:2000]}"


# -- the survival contract ---------------------------------------------------------------------------


def _count(path: str) -> int:
    try:
        return len(os.listdir(path))
    except FileNotFoundError:
        return -1


class Survival:
    """The survival contract of issue 7 for one running ``dolmen serve`` (see the module docstring).

    Creating it warms the sidecar up (a few concurrent C-STOREs, so pools are at full size)
    and records the baseline: pids, thread and fd counts, the log's length, the folder listing
    around the storage root.
    """

    def __init__(self, server: DolmenProcess, *, warm_up: bool = True) -> None:
        self.server = server
        if warm_up:
            # Enough at once to grow the pools to full size, within [dicom] max_associations.
            import tomllib

            limit = tomllib.loads(server.config.read_text()).get("dicom", {}).get("max_associations", 16)
            self._concurrent_traffic(stores=max(1, min(8, limit - 2)))
        self.rebase()

    def rebase(self) -> None:
        """Take the baseline now (after a case that was expected to change it)."""
        self.web_pid = self.server.proc.pid
        self.sidecar_pid = self.server.sidecar_pid()
        wait_for(lambda: self.server.status()["associations"] == 0, timeout=15, what="associations to end")
        self.threads = self._threads()
        self.fds = self._fds()
        self.web_threads = _count(f"/proc/{self.web_pid}/task")
        self.web_fds = self._web_fds()
        self.log_offset = len(self.server.log.read_bytes())
        self.outside = self._outside()

    # -- measurements
    def _threads(self) -> int:
        return _count(f"/proc/{self.server.sidecar_pid()}/task")

    def _fds(self) -> int:
        """Open descriptors of the sidecar, the index counted by its live connections.

        SQLite keeps the descriptor of a closed connection's database file for reuse while
        another connection of the process holds a lock on it (POSIX locks are per process), so
        the database file's count stays at the peak number of connections; each live
        connection also holds the -wal file, which is closed with it. The database file is
        therefore counted as many times as the -wal file: a leaked connection still counts.
        """
        targets = self._fd_targets()
        database = os.path.realpath(self.server.data / "index.db")
        live = sum(t == database + "-wal" for t in targets)
        return sum(t != database for t in targets) + min(live, sum(t == database for t in targets))

    def _web_fds(self) -> int:
        """Open descriptors of the web process, its index connections not counted: each waitress
        thread keeps one (webapp/db.py), so they are checked against ``[http] threads`` instead
        (:meth:`_web_connections`)."""
        database = os.path.realpath(self.server.data / "index.db")
        return sum(not t.startswith(database) for t in self._fd_targets(self.web_pid))

    def _web_connections(self) -> int:
        """Live index connections of the web process (each holds the -wal file)."""
        database = os.path.realpath(self.server.data / "index.db")
        return sum(t == database + "-wal" for t in self._fd_targets(self.web_pid))

    def _fd_targets(self, pid: int | None = None) -> list[str]:
        folder = f"/proc/{pid or self.server.sidecar_pid()}/fd"
        out = []
        for name in os.listdir(folder):
            try:
                out.append(os.readlink(f"{folder}/{name}"))
            except OSError:
                pass
        return sorted(out)

    def _outside(self) -> set[str]:
        root = self.server.data.resolve()
        return {str(p) for p in root.parent.rglob("*") if root not in p.parents and p != root}

    def new_log(self) -> str:
        """What the server logged since the baseline."""
        with open(self.server.log, "rb") as f:
            f.seek(self.log_offset)
            return f.read().decode("utf-8", "replace")

    def _concurrent_traffic(self, stores: int = 3) -> None:
        port = self.server.dicom_port
        n = int(time.time() * 1000) % 10**9
        study = f"1.2.826.0.1.3680043.10.1078.77.{n}"
        with concurrent.futures.ThreadPoolExecutor(stores + 3) as pool:
            stored = [pool.submit(store, port, [small_instance(study, n=k)]) for k in range(1, stores + 1)]
            echoes = pool.submit(echo, port, KNOWN_AET, "DOLMEN", 5.0)
            pages = [pool.submit(self.server.get, p) for p in ("/system", "/api/statistics")]
            for f in stored:
                assert f.result(timeout=60) == [0], "a concurrent C-STORE did not succeed"
            assert echoes.result(timeout=60) == 0
            for f in pages:
                response = f.result(timeout=60)
                assert response.status_code == 200, f"{response.url}: {response.status_code}"
                assert_no_traceback(response.text, response.url)

    def index_rows_without_file(self) -> list[str]:
        """Paths of index rows whose file is missing (SQLite index)."""
        db = self.server.data / "index.db"
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            rows = [r[0] for r in con.execute("SELECT path FROM instance")]
        finally:
            con.close()
        root = self.server.data.resolve()
        missing = []
        for rel in rows:
            path = (root / rel).resolve()
            if root not in path.parents or not path.is_file():
                missing.append(rel)
        return missing

    def spool_files(self) -> list[str]:
        """Temporary files left in the storage's spool folders (not counting the empty ones the
        sidecar creates ahead for the next C-STOREs)."""
        return [str(p) for p in spool_contents(self.server.data / "tmp")]

    # -- the contract
    def check(
        self,
        *,
        problem: str | None = None,
        aet: str | None = None,
        ip: str = "127.0.0.1",
        restarted: bool = False,
        forbidden: Iterable[str | os.PathLike[str]] = (),
        spool_empty: bool = True,
        tracebacks_ok: bool = False,
        tolerance: int = 2,
        settle: float = 20.0,
        web_resources: bool = False,
    ) -> None:
        """Assert the survival contract; see the module docstring for each argument's meaning.
        ``web_resources`` also waits for the web process's threads and fds to come back to the
        baseline (for cases aimed at the web process)."""
        server = self.server
        assert server.proc.poll() is None, f"dolmen serve died:\n{server.log_text()[-3000:]}"
        pid = wait_for(server.sidecar_pid, timeout=60, what="the sidecar to answer status")
        if not restarted:
            assert pid == self.sidecar_pid, f"the sidecar restarted (pid {self.sidecar_pid} -> {pid})"
        # A C-ECHO from the known modality within 2 s.
        started = time.monotonic()
        assert echo(server.dicom_port, KNOWN_AET, "DOLMEN", 2.0) == 0
        assert time.monotonic() - started < 2.0, "C-ECHO took longer than 2 s"
        self._concurrent_traffic()
        # Threads and fds back to the baseline (a new sidecar gets a fresh baseline).
        if pid != self.sidecar_pid:
            self.sidecar_pid = pid
        else:
            wait_for(
                lambda: self._threads() <= self.threads + tolerance,
                timeout=settle,
                what=f"sidecar threads back to {self.threads} (now {self._threads()})",
            )
            try:
                wait_for(lambda: self._fds() <= self.fds + tolerance, timeout=settle, what="fds")
            except AssertionError:
                raise AssertionError(f"sidecar fds not back to {self.fds}: {self._fd_targets()}") from None
        if web_resources:
            web = f"/proc/{self.web_pid}"
            wait_for(
                lambda: _count(f"{web}/task") <= self.web_threads + tolerance,
                timeout=settle,
                what=f"web threads back to {self.web_threads} (now {_count(web + '/task')})",
            )
            wait_for(
                lambda: self._web_fds() <= self.web_fds + tolerance,
                timeout=settle,
                what=f"web fds back to {self.web_fds} (now {self._web_fds()})",
            )
            assert self._web_connections() <= WEB_THREADS, (
                f"{self._web_connections()} index connections in the web process, more than its "
                f"{WEB_THREADS} threads: a connection leaked")
        # Files: nothing outside the storage root, no row without its file, no spool leftovers.
        for path in forbidden:
            assert not os.path.lexists(path), f"a file was written outside the storage root: {path}"
        new = self._outside() - self.outside
        assert not new, f"files appeared beside the storage root: {sorted(new)[:10]}"
        missing = self.index_rows_without_file()
        assert not missing, f"index rows without their file: {missing[:10]}"
        if spool_empty:
            wait_for(
                lambda: not self.spool_files(),
                timeout=settle,
                what=f"the spool to be empty (left: {self.spool_files()[:5]})",
            )
        # The log names the peer and the problem.
        log = self.new_log()
        if problem is not None:
            pattern = re.compile(problem, re.I)
            lines = [
                line
                for line in log.splitlines()
                if ip in line and pattern.search(line) and (aet is None or aet in line)
            ]
            assert lines, (
                f"no log line names the peer ({ip}, {aet}) and the problem /{problem}/; "
                f"logged since the case started:\n{log[-4000:]}"
            )
        if not tracebacks_ok:
            assert "Traceback (most recent call last)" not in log, f"a traceback was logged:\n{log[-6000:]}"
        self.rebase()


def wait_closed(peers: Iterable[RawPeer], timeout: float) -> None:
    """Wait until the server closed every one of ``peers``."""
    deadline = time.monotonic() + timeout
    for peer in peers:
        left = max(0.1, deadline - time.monotonic())
        assert peer.closed_by_server(left), "the server kept a connection open past its timeout"


def exists_anywhere(name: str, roots: Iterable[Path]) -> list[Path]:
    """Files named ``name`` under ``roots`` (for UIDs used as paths)."""
    return [p for root in roots for p in root.rglob(name)]
