"""Fuzz Dolmen's ingest parser and renderer with mutated DICOM files.

Run from the repository root::

    .venv/bin/python tests/fuzz/fuzz_dicom.py --target ingest --seconds 300
    .venv/bin/python tests/fuzz/fuzz_dicom.py --target render --seconds 300 [--workers 2]

Seeds are pydicom's bundled test files (those under 256 KiB). With ``atheris`` installed
(``pip install atheris``) libFuzzer mutates them, guided by coverage of ``dicomnode`` and
``pydicom``; without it (or with ``--no-atheris``) a plain random mutator does: bit flips,
random bytes, "interesting" integers written over length fields, cuts, duplicated and
deleted chunks.

Targets
-------
``ingest``
    :func:`dicomnode.header.fast_header`, :func:`~dicomnode.header.read_header` and
    :func:`~dicomnode.header.read_index_header` on a temporary file; the fast reader must
    give the same index values as pydicom's whenever it answers (differential check); one
    input in ``--store-every`` also goes through :class:`~dicomnode.archive.ingest.Ingestor` into a
    temporary store and index, which must keep the crash contract (a stored instance has
    its file, a refused one leaves no spool file).
``render``
    :func:`dicomnode.render.render` (first and second frame, PNG and a JPEG thumbnail),
    :func:`~dicomnode.render.decode_frame` and the tag table (:func:`dicomnode.tags.tag_tree`).
    Compressed frames decode in process (``--workers 0``, the default, so a codec crash
    is a finding) or in the renderer's worker pool.

Expected failures are :class:`~dicomnode.errors.DolmenError` subclasses
(``RejectedInstance``, ``RenderError``...). Any other exception, a wrong answer of the
differential check, or an input running longer than ``--input-timeout`` is a *finding*:
its first input per kind is saved under ``--findings`` and the run goes on. At the end one
line gives the executions and the findings; the exit status is 1 when there were any.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import signal
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MAX_SEED_BYTES = 256 * 1024
INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
               0xFFFFFFFE, 0xFFFFFFFF)


class Hang(Exception):
    """An input ran longer than --input-timeout."""


def seeds() -> list[bytes]:
    import pydicom.data

    base = Path(pydicom.data.__file__).parent
    found = []
    for folder in ("test_files", "charset_files"):
        for path in sorted((base / folder).rglob("*")):
            small = path.is_file() and path.stat().st_size <= MAX_SEED_BYTES
            if small and path.suffix.lower() in (".dcm", ""):
                data = path.read_bytes()
                if data[128:132] == b"DICM" or data[:2] in (b"\x08\x00", b"\x02\x00"):
                    found.append(data)
    return found


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A plain mutator for when atheris is not installed: 1 to 8 random edits."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if not buf:
            buf += rng.randbytes(rng.randint(1, 64))
            continue
        at = rng.randrange(len(buf))
        kind = rng.randrange(8)
        if kind == 0:
            buf[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            buf[at] = rng.randrange(256)
        elif kind in (2, 3):  # an interesting number, often over a length field
            value = rng.choice(INTERESTING)
            fmt = rng.choice(("<H", "<I", ">H", ">I"))
            packed = struct.pack(fmt, value & (0xFFFF if "H" in fmt else 0xFFFFFFFF))
            buf[at : at + len(packed)] = packed
        elif kind == 4:
            del buf[at:]
        elif kind == 5:
            end = min(len(buf), at + rng.randint(1, 256))
            del buf[at:end]
        elif kind == 6:
            end = min(len(buf), at + rng.randint(1, 256))
            buf[at:at] = buf[at:end] * rng.randint(1, 4)
        else:
            buf[at:at] = rng.randbytes(rng.randint(1, 16))
    return bytes(buf)


class Harness:
    """Runs one target on inputs, counts executions and records findings."""

    def __init__(self, target: str, findings: Path, store_every: int, input_timeout: float) -> None:
        from dicomnode.errors import DolmenError

        self.expected: tuple[type[BaseException], ...] = (DolmenError,)
        self.target = target
        self.findings_dir = findings
        self.store_every = store_every
        self.input_timeout = input_timeout
        self.executions = 0
        self.findings: dict[str, int] = {}
        self.work = Path(tempfile.mkdtemp(prefix="dolmen-fuzz-"))
        self.path = self.work / "input.dcm"
        self._ingestor: object | None = None
        self.run: Callable[[bytes], None] = self.ingest if target == "ingest" else self.render

    # -- targets
    def ingest(self, data: bytes) -> None:
        from dicomnode import header

        self.path.write_bytes(data)
        fast = slow = slow_error = None
        with contextlib.suppress(*self.expected):
            fast = header.fast_header(self.path)
        try:
            slow = header._header(header.read_header(self.path))
        except self.expected as exc:
            slow_error = exc
        if fast is not None:
            if slow_error is not None:
                raise Mismatch(f"fast_header accepted what read_header refuses: {slow_error}")
            if fast != slow:
                raise Mismatch(f"fast_header and read_header disagree: {_difference(fast, slow)}")
        with contextlib.suppress(*self.expected):
            header.read_index_header(self.path)
        if self.store_every and self.executions % self.store_every == 0:
            self.store(data)

    def store(self, data: bytes) -> None:
        from dicomnode.archive import index
        from dicomnode.archive.index import Instance
        from dicomnode.archive.ingest import Ingestor
        from dicomnode.archive.ingest import Source
        from dicomnode.archive.store import Store

        if self._ingestor is None:
            store = Store(self.work / "store", fsync=False)
            index.open_index(f"sqlite:///{self.work / 'index.db'}", synchronous_full=False)
            self._ingestor = Ingestor(store, max_bytes=64 * 1024 * 1024)
        ingestor = self._ingestor
        assert isinstance(ingestor, Ingestor)
        result = ingestor.ingest_bytes(data, Source("import"), owner="fuzz")
        if result.status not in ("stored", "duplicate", "rejected"):
            raise Mismatch(f"unknown ingest status {result.status!r}")
        if result.status == "stored":
            row = Instance.get_or_none(Instance.public_id == result.instance_id)
            if row is None or not ingestor.store.path(row.path).is_file():
                raise Mismatch("a stored instance has no row or no file")
        spool = ingestor.store.tmp
        if spool.exists() and any(p.is_file() for p in spool.rglob("*")):
            raise Mismatch("a spool file was left behind")

    def render(self, data: bytes) -> None:
        import pydicom

        from dicomnode import render
        from dicomnode import tags

        self.path.write_bytes(data)
        for kwargs in ({}, {"frame": 1, "fmt": "jpeg", "max_size": 64}):
            out = self.expect(data, render.render, self.path, **kwargs)
            if out is not None and not out.startswith((b"\x89PNG", b"\xff\xd8")):
                raise Mismatch("render() returned something that is not PNG or JPEG")
        self.expect(data, render.decode_frame, self.path)
        # The tag table: never raises on odd content (as the instance page relies on).
        try:
            ds = pydicom.dcmread(self.path, defer_size=4096, force=True)
        except Exception:  # noqa: BLE001 - the page shows "cannot be read" for these
            return
        tags.tag_tree(ds)

    def expect(self, data: bytes, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call `function`; an expected error gives None, one from the renderer's safety net is
        recorded as a finding (it has no message of its own yet)."""
        try:
            return function(*args, **kwargs)
        except self.expected as exc:
            if getattr(exc, "code", "") == "render_unexpected" and exc.__cause__ is not None:
                self.record(data, exc.__cause__)
            return None

    # -- the loop body
    def __call__(self, data: bytes) -> None:
        self.executions += 1
        if self.input_timeout:
            signal.setitimer(signal.ITIMER_REAL, self.input_timeout)
        try:
            self.run(data)
        except self.expected as exc:
            if getattr(exc, "code", "") == "render_unexpected" and exc.__cause__ is not None:
                self.record(data, exc.__cause__)  # caught by the renderer's safety net only
        except Exception as exc:  # noqa: BLE001 - every other type is a finding
            self.record(data, exc)
        except BaseException as exc:  # pyo3 PanicException and friends (not KeyboardInterrupt)
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            self.record(data, exc)
        finally:
            if self.input_timeout:
                signal.setitimer(signal.ITIMER_REAL, 0)

    def record(self, data: bytes, exc: BaseException) -> None:
        frames = traceback.extract_tb(exc.__traceback__)
        ours = [f for f in frames if "/dicomnode/" in f.filename or "/pydicom/" in f.filename] or frames
        where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
        message = str(exc).splitlines()[0][:200] if str(exc) else ""
        key = f"{type(exc).__name__} at {where}"
        if isinstance(exc, Mismatch):
            key = f"Mismatch: {message[:80]}"
        count = self.findings.get(key, 0)
        self.findings[key] = count + 1
        if count == 0:
            self.findings_dir.mkdir(parents=True, exist_ok=True)
            name = f"{self.target}-{hashlib.sha1(data).hexdigest()[:12]}.dcm"
            (self.findings_dir / name).write_bytes(data)
            print(f"FINDING {key}: {type(exc).__name__}: {message} (input {self.findings_dir / name})",
                  flush=True)
            if not isinstance(exc, Mismatch):
                traceback.print_exception(exc, limit=-6)

    def cleanup(self) -> None:
        """Remove the temporary folder (inputs, store, index, libFuzzer's corpus)."""
        import shutil

        from dicomnode.archive import index

        index.close_index()
        shutil.rmtree(self.work, ignore_errors=True)

    def summary(self, elapsed: float, engine: str) -> int:
        rate = self.executions / elapsed if elapsed else 0
        print(f"fuzz {self.target} ({engine}): {self.executions} executions in {elapsed:.0f} s "
              f"({rate:.0f}/s), {len(self.findings)} distinct finding(s)", flush=True)
        for key, count in sorted(self.findings.items()):
            print(f"  {count:6d} x {key}")
        return 1 if self.findings else 0


class Mismatch(Exception):
    """The differential or contract check failed."""


def _difference(fast: object, slow: object) -> str:
    if fast.__class__ is not slow.__class__ or not hasattr(fast, "__dict__"):
        return f"{fast!r} vs {slow!r}"
    diffs = [f"{k}: {v!r} vs {getattr(slow, k, None)!r}" for k, v in vars(fast).items()
             if getattr(slow, k, None) != v]
    return "; ".join(diffs)[:300] or "equal fields, unequal objects"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("ingest", "render"), required=True)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to run (default 10)")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the plain mutator")
    parser.add_argument("--no-atheris", action="store_true",
                        help="use the plain mutator even if atheris is installed")
    parser.add_argument("--workers", type=int, default=0,
                        help="render: decode compressed frames in this many worker processes (default 0)")
    parser.add_argument("--store-every", type=int, default=20,
                        help="ingest: send one input in N through the Ingestor (0: never)")
    parser.add_argument("--input-timeout", type=float, default=20.0, help="seconds before an input is a hang")
    parser.add_argument("--findings", type=Path, default=Path("fuzz-findings"),
                        help="folder for the inputs of findings (default ./fuzz-findings)")
    args = parser.parse_args(argv)

    import logging
    import warnings

    logging.disable(logging.CRITICAL)  # pydicom logs every refused file
    warnings.simplefilter("ignore")

    def on_alarm(signum: int, frame: object) -> None:
        raise Hang(f"input ran longer than {args.input_timeout:g} s")

    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        atheris = None
    use_atheris = atheris is not None and not args.no_atheris
    if not use_atheris:  # libFuzzer has its own -timeout, on SIGALRM too
        signal.signal(signal.SIGALRM, on_alarm)

    if use_atheris:
        with atheris.instrument_imports(include=["dicomnode", "pydicom"]):
            import dicomnode.archive.ingest  # noqa: F401
            import dicomnode.render
            import dicomnode.tags  # noqa: F401
    import dicomnode.render

    dicomnode.render.configure_decoding(workers=args.workers)
    harness = Harness(args.target, args.findings, args.store_every if args.target == "ingest" else 0,
                      0.0 if use_atheris else args.input_timeout)
    started = time.monotonic()
    corpus = seeds()

    if use_atheris:
        corpus_dir = harness.work / "corpus"
        corpus_dir.mkdir()
        for n, data in enumerate(corpus):
            (corpus_dir / f"seed{n}").write_bytes(data)

        def one_input(data: bytes) -> None:
            harness(data)
            if time.monotonic() - started >= args.seconds:
                code = harness.summary(time.monotonic() - started, "atheris/libFuzzer")
                harness.cleanup()
                sys.stdout.flush()
                os._exit(code)

        atheris.Setup([sys.argv[0], str(corpus_dir), f"-max_len={MAX_SEED_BYTES}", "-rss_limit_mb=4096",
                       f"-timeout={int(args.input_timeout) + 5}", "-print_final_stats=0",
                       "-reload=0"],
                      one_input)
        atheris.Fuzz()
        return 0  # not reached: libFuzzer exits

    rng = random.Random(args.seed)
    try:
        for data in corpus:  # every seed once, unmutated
            harness(data)
        while time.monotonic() - started < args.seconds:
            harness(mutate(rng.choice(corpus), rng))
        return harness.summary(time.monotonic() - started, "plain mutator")
    finally:
        harness.cleanup()


if __name__ == "__main__":
    sys.exit(main())
