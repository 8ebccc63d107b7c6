"""Worker processes that decode compressed pixel data for :mod:`dicomnode.render`.

JPEG, JPEG-LS, JPEG 2000 and RLE codecs are C and Rust libraries fed with bytes a peer
sent: a corrupt stream can make one loop, allocate gigabytes or crash. The renderer checks
the pixel module and the codestream header before anything is decoded, and then hands
the frame to one of a few long-lived worker processes (``python -m dicomnode.render.decodepool``)
that run with an address-space limit (``RLIMIT_AS``). A worker that runs past its timeout
is killed; one that crashes is replaced. Either way the caller gets a
:class:`~dicomnode.errors.RenderError` and the web process is unaffected.

A subprocess, not :mod:`multiprocessing`: forking a threaded web process is unsafe. The
protocol carries no pickles, since the worker is the side that handles hostile bytes: a
request is one JSON line (transfer syntax, decoder options, payload size) followed by the
compressed frame; an answer is one JSON line (``ok``, shape, dtype, photometric
interpretation or an error message, payload size) followed by the decoded samples.

Uncompressed and deflated data are not decoded here: their size is fully known from the
pixel module before anything is read, and the renderer bounds it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO
from typing import Any

import numpy as np
import numpy.typing as npt

from dicomnode.errors import RenderError

LOGGER = logging.getLogger(__name__)

__all__ = ["CodecError", "DecodePool", "DEFAULT_MEMORY_BYTES", "DEFAULT_TIMEOUT", "DEFAULT_WORKERS"]

#: Worker processes at most (each decodes one frame at a time).
DEFAULT_WORKERS = 2
#: Seconds one frame may take to decode before its worker is killed.
DEFAULT_TIMEOUT = 10.0
#: Address space of a worker, in bytes: the interpreter and codecs (~150 MiB) plus
#: room for a 512 MiB frame and the codec's own working copy.
DEFAULT_MEMORY_BYTES = 2048 * 1024 * 1024

_PR_SET_PDEATHSIG = 1
_MAX_HEADER = 64 * 1024


class _Worker:
    """One worker process and its pipes."""

    def __init__(self, memory_bytes: int) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # One thread per library: the limit is on address space, and every thread's
        # stack counts against it.
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = "1"
        env["RUST_BACKTRACE"] = "0"  # a panicking Rust codec says one line, not forty
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicomnode.render.decodepool", "--memory", str(memory_bytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin: IO[bytes] = self.proc.stdin
        self.stdout: IO[bytes] = self.proc.stdout
        os.set_blocking(self.stdin.fileno(), False)  # writes wait in select, with the deadline
        self._buffer = b""

    def kill(self) -> None:
        """Kill the process and reap it."""
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(OSError):
            self.stdin.close()
        with contextlib.suppress(OSError):
            self.stdout.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _read(self, size: int | None, deadline: float) -> bytes:
        """Read one line (``size`` None) or exactly ``size`` bytes before ``deadline``."""
        fd = self.stdout.fileno()
        while True:
            if size is None:
                end = self._buffer.find(b"\n")
                if end >= 0:
                    line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
                    return line
                if len(self._buffer) > _MAX_HEADER:
                    raise _Broken("an oversized answer header")
            elif len(self._buffer) >= size:
                data, self._buffer = self._buffer[:size], self._buffer[size:]
                return data
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                raise TimeoutError
            want = 1 << 20 if size is None else max(1 << 16, min(size - len(self._buffer), 1 << 24))
            chunk = os.read(fd, want)
            if not chunk:
                raise _Broken("no answer (it exited)")
            self._buffer += chunk

    def _write(self, data: bytes, deadline: float) -> None:
        """Write ``data`` before ``deadline`` (a worker busy or stuck does not read)."""
        fd = self.stdin.fileno()
        view = memoryview(data)
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            _, ready, _ = select.select([], [fd], [], left)
            if not ready:
                raise TimeoutError
            try:
                written = os.write(fd, view[: 1 << 16])
            except BlockingIOError:
                continue
            except OSError as exc:  # BrokenPipeError: the worker exited
                raise _Broken(f"an unwritable pipe ({exc})") from exc
            view = view[written:]

    def call(self, header: dict[str, Any], payload: bytes, timeout: float) -> tuple[dict[str, Any], bytes]:
        """Send one request and wait for its answer."""
        deadline = time.monotonic() + timeout
        header = {**header, "size": len(payload)}
        self._write(json.dumps(header).encode() + b"\n", deadline)
        self._write(payload, deadline)
        try:
            answer = json.loads(self._read(None, deadline))
        except ValueError as exc:
            raise _Broken("an unreadable answer") from exc
        if not isinstance(answer, dict):
            raise _Broken("an unreadable answer")
        size = int(answer.get("size", 0))
        data = self._read(size, deadline) if size else b""
        return answer, data


class CodecError(RenderError):
    """The codec refused the frame; the message is its reason."""


class _Broken(Exception):
    """The worker misbehaved (exited, garbled its answer); it is replaced."""


class DecodePool:
    """A few worker processes decoding compressed frames under a timeout and a memory limit.

    Workers are started with the pool (their interpreters load while the caller goes on)
    and kept; one that is killed or crashes is replaced at once, so the next caller does
    not wait for an interpreter to start. At most ``workers`` decodes run at once; further
    callers wait (within their own timeout) for a free worker.

    Parameters
    ----------
    workers : int
        Worker processes at most.
    timeout : float
        Seconds a decode may take (waiting for a free worker included).
    memory_bytes : int
        ``RLIMIT_AS`` of each worker.
    """

    def __init__(self, workers: int = DEFAULT_WORKERS, timeout: float = DEFAULT_TIMEOUT,
                 memory_bytes: int = DEFAULT_MEMORY_BYTES) -> None:
        if workers < 1:
            raise ValueError(f"A decode pool needs at least one worker (got {workers})")
        self.workers = workers
        self.timeout = timeout
        self.memory_bytes = memory_bytes
        self._slots = threading.BoundedSemaphore(workers)
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self.killed = 0  # workers killed on a timeout or replaced after a crash, for tests and logs
        self._idle = [_Worker(memory_bytes) for _ in range(workers)]

    def _replace(self, worker: _Worker) -> None:
        """Kill ``worker`` and start its replacement in the idle list."""
        worker.kill()
        self.killed += 1
        with contextlib.suppress(OSError):
            fresh = _Worker(self.memory_bytes)
            with self._lock:
                self._idle.append(fresh)

    def decode(self, transfer_syntax: str, options: dict[str, Any], data: bytes
               ) -> tuple[npt.NDArray[Any], str]:
        """Decode one frame (its complete codestream) in a worker.

        Parameters
        ----------
        transfer_syntax : str
            The transfer syntax UID of the frame.
        options : dict
            pydicom pixel options (``rows``, ``columns``, ``bits_allocated``...), with
            ``number_of_frames`` 1: JSON values only.
        data : bytes
            The frame's codestream.

        Returns
        -------
        tuple
            The decoded samples and the photometric interpretation after decoding.

        Raises
        ------
        RenderError
            When the codec refuses the stream, runs out of its memory, crashes or takes
            longer than the timeout.
        """
        start = time.monotonic()
        if not self._slots.acquire(timeout=self.timeout):
            raise RenderError(f"The image decoders are busy: no decoder was free within {self.timeout:g} s, "
                              "try again")
        try:
            with self._lock:
                worker = self._idle.pop() if self._idle else None
            if worker is None or not worker.alive():
                if worker is not None:
                    worker.kill()
                worker = _Worker(self.memory_bytes)
            left = max(0.1, self.timeout - (time.monotonic() - start))
            try:
                answer, payload = worker.call({"ts": transfer_syntax, "options": options}, data, left)
            except TimeoutError:
                self._replace(worker)
                LOGGER.warning("A %s frame took longer than %g s to decode; its worker was killed",
                               transfer_syntax, self.timeout)
                raise RenderError(f"Decoding took longer than {self.timeout:g} s and was stopped: the "
                                  "compressed data is probably corrupt") from None
            except _Broken as exc:
                code = worker.proc.poll()
                self._replace(worker)
                how = (f"was killed by signal {-code}" if code is not None and code < 0 else
                       f"exited with code {code}" if code is not None else f"gave {exc}")
                LOGGER.warning("The decoder of a %s frame %s", transfer_syntax, how)
                raise RenderError(f"The image decoder failed on this frame (it {how}): the compressed "
                                  "data is probably corrupt") from None
            with self._lock:
                self._idle.append(worker)
        finally:
            self._slots.release()
        if not answer.get("ok"):
            raise CodecError(str(answer.get("error") or "the codec gave no reason"))
        try:
            shape = tuple(int(n) for n in answer["shape"])
            dtype = np.dtype(str(answer["dtype"]))
            if dtype.kind not in "iuf" or int(np.prod(shape)) * dtype.itemsize != len(payload):
                raise ValueError("size mismatch")
            arr = np.frombuffer(payload, dtype=dtype).reshape(shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise RenderError(f"The image decoder gave an unusable answer ({exc})") from None
        return arr, str(answer.get("photometric", ""))

    def close(self) -> None:
        """Stop every idle worker (busy ones stop when their decode ends or times out)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()


# --------------------------------------------------------------------------- worker side


def _limit_self(memory_bytes: int) -> None:
    """Die with the parent, cap the address space, no core dumps."""
    import ctypes
    import resource

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:
        sys.exit(0)  # the parent died before the death signal was armed
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def _decode(header: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
    """Decode one frame; any failure becomes an error answer, never an exception."""
    from pydicom.encaps import encapsulate
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import UID

    ts = UID(str(header["ts"]))
    try:
        decoder = get_decoder(ts)
        options = dict(header["options"])
        options["pixel_keyword"] = "PixelData"
        arr, properties = decoder.as_array(encapsulate([data]), index=0, **options)
        arr = np.ascontiguousarray(arr)
    except MemoryError:
        return {"ok": False, "error": "the decoder ran out of its memory limit (the compressed data "
                "is probably corrupt)"}, b""
    except BaseException as exc:  # noqa: BLE001 - Rust codecs panic with a BaseException
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        from dicomnode.errors import first_line

        return {"ok": False, "error": first_line(exc)}, b""
    photometric = str(properties.get("photometric_interpretation", options.get("photometric_interpretation")))
    answer = {"ok": True, "shape": list(arr.shape), "dtype": arr.dtype.str, "photometric": photometric}
    return answer, arr.tobytes()


def _serve(memory_bytes: int) -> None:
    """Answer requests on stdin until it closes."""
    # pydicom logs each failed plugin with its traceback; the failure reaches the web
    # process as the answer's reason, so the worker stays quiet.
    import logging as _logging
    import warnings

    _logging.disable(_logging.CRITICAL)
    warnings.simplefilter("ignore")
    # Import the codecs before the limit, so that the limit is what decoding may add.
    import pydicom.pixels.decoders.base  # noqa: F401
    with contextlib.suppress(ImportError):
        import libjpeg  # noqa: F401
        import openjpeg  # noqa: F401
        import rle  # noqa: F401
    _limit_self(memory_bytes)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        line = stdin.readline(_MAX_HEADER)
        if not line:
            return
        header = json.loads(line)
        size = int(header.get("size", 0))
        data = stdin.read(size) if size else b""
        if len(data) < size:
            return
        try:
            answer, payload = _decode(header, data)
        except MemoryError:
            answer, payload = {"ok": False, "error": "the decoder ran out of its memory limit"}, b""
        answer["size"] = len(payload)
        stdout.write(json.dumps(answer).encode() + b"\n")
        stdout.write(payload)
        stdout.flush()


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dicomnode.render.decodepool",
                                     description="A pixel data decoding worker (started by the renderer).")
    parser.add_argument("--memory", type=int, default=DEFAULT_MEMORY_BYTES, help="RLIMIT_AS in bytes")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _serve(args.memory)


if __name__ == "__main__":
    main()
