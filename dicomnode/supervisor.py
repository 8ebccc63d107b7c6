"""Starts the sidecar for ``dolmen serve``, watches it and restarts it with backoff.

The sidecar is a subprocess (``python -m dicomnode.sidecar --config F --watch-stdin``), not a
``multiprocessing`` child: forking a threaded process is unsafe. Its standard input is a pipe
that only this process holds, so the sidecar exits by itself when ``dolmen serve`` dies.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomnode.config import Settings
from dicomnode.control import ControlClient
from dicomnode.errors import DolmenError

LOGGER = logging.getLogger(__name__)

BACKOFF = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
STABLE_AFTER = 60.0  # seconds of life after which the backoff starts again from the beginning


@dataclass
class State:
    """What the pages show about the sidecar."""

    pid: int | None = None
    started_at: float | None = None
    restarts: int = 0
    last_exit_code: int | None = None
    last_exit_at: float | None = None
    running: bool = False


class Supervisor:
    """Runs and restarts the sidecar.

    Parameters
    ----------
    settings : Settings
        Written to ``<storage>/run/sidecar.json`` for the sidecar to read.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = State()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        run = settings.storage_path / "run"
        run.mkdir(parents=True, exist_ok=True)
        os.chmod(run, 0o700)
        self.config_path = run / "sidecar.json"
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(settings.to_dict(), f)
        self.client = ControlClient(settings.control_socket, self.describe)

    def describe(self) -> str:
        """A sentence on the sidecar's recent history, for error messages."""
        s = self.state
        if s.last_exit_code is None:
            return "It is starting." if not s.running else ""
        ago = time.time() - (s.last_exit_at or time.time())
        how = f"was killed by signal {-s.last_exit_code}" if s.last_exit_code < 0 else f"exited with code {s.last_exit_code}"
        return (f"It {how} {ago:.0f} s ago and has been restarted {s.restarts} time(s); "
                "see the log of dolmen serve.")

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicomnode.sidecar", "--config", str(self.config_path), "--watch-stdin"],
            stdin=subprocess.PIPE, env=env)
        with self._lock:
            self._proc = proc
            self.state.pid = proc.pid
            self.state.started_at = time.time()
            self.state.running = True
        LOGGER.info("Started the DICOM sidecar (pid %d)", proc.pid)
        return proc

    def start(self, wait: float = 20.0) -> None:
        """Start the sidecar and the watcher thread; wait until it answers ``status``.

        Raises
        ------
        DolmenError
            When the sidecar exits during start-up (a port in use, for example).
        """
        proc = self._spawn()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                raise DolmenError(f"The DICOM sidecar exited during start-up with code {code}; "
                                  "see the messages above (is the DICOM port already in use?)",
                                  code="sidecar_failed")
            try:
                self.client.call("status", timeout=2.0)
                break
            except DolmenError:
                time.sleep(0.05)
        else:
            LOGGER.warning("The DICOM sidecar did not answer within %.0f s; going on", wait)
        self._thread.start()

    def _watch(self) -> None:
        failures = 0
        while not self._stop.is_set():
            proc = self._proc
            if proc is None:
                return
            code = proc.wait()
            if self._stop.is_set():
                return
            lived = time.time() - (self.state.started_at or time.time())
            with self._lock:
                self.state.running = False
                self.state.last_exit_code = code
                self.state.last_exit_at = time.time()
            failures = 0 if lived > STABLE_AFTER else failures + 1
            delay = BACKOFF[min(failures, len(BACKOFF) - 1)] if failures else 0.2
            LOGGER.error("The DICOM sidecar (pid %s) exited with code %s after %.1f s; restarting in %.1f s",
                         proc.pid, code, lived, delay)
            if self._stop.wait(delay):
                return
            self.state.restarts += 1
            self._spawn()

    def status(self) -> dict[str, Any]:
        """The sidecar's own status, with the supervisor's view added under ``supervisor``."""
        sup = {"pid": self.state.pid, "restarts": self.state.restarts,
               "last_exit_code": self.state.last_exit_code, "last_exit_at": self.state.last_exit_at,
               "running": self.state.running}
        result = self.client.call("status")
        result["supervisor"] = sup
        return result

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the sidecar (SIGTERM, then SIGKILL after ``timeout``)."""
        self._stop.set()
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdin:
            proc.stdin.close()
        self.state.running = False
