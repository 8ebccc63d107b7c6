"""A PDU mutator against a live DICOM SCP (issue 7).

Valid association streams (an A-ASSOCIATE-RQ alone, a C-ECHO, a C-STORE) are mutated (bit
flips, interesting bytes, length fields rewritten, truncation, repetition, insertion,
splicing, reordering) and sent over fresh connections. Every ``--check-every`` executions,
and at the end, a C-ECHO from a well-behaved peer must answer within 2 s; a failure is a
finding, saved with the inputs that preceded it.

Standalone, against a Dolmen it starts itself (the survival contract is checked at the end)::

    .venv/bin/python tests/fuzz_pdu.py --seconds 600
    .venv/bin/python tests/fuzz_pdu.py --port 4242 --seconds 60     # against a running server

``tests/test_hostile_fuzz.py`` runs it for a few seconds in ``make test``.
"""

from __future__ import annotations

import argparse
import random
import socket
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.hostile import CT_IMAGE_STORAGE  # noqa: E402
from tests.hostile import associate_rq  # noqa: E402
from tests.hostile import echo  # noqa: E402
from tests.hostile import echo_rq  # noqa: E402
from tests.hostile import implicit_bytes  # noqa: E402
from tests.hostile import p_data  # noqa: E402
from tests.hostile import presentation_context  # noqa: E402
from tests.hostile import release_rq  # noqa: E402
from tests.hostile import small_instance  # noqa: E402
from tests.hostile import store_rq  # noqa: E402

READ = "READ"
INTERESTING = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0x20, 0x5C, 0x0A]
INTERESTING32 = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE, 0x10000, 6, 4]


def seeds() -> list[list[bytes | str]]:
    """Valid streams to mutate."""
    ds = small_instance("1.2.826.0.1.3680043.10.1078.99", n=1)
    data = implicit_bytes(ds)
    contexts = [presentation_context(1), presentation_context(3, CT_IMAGE_STORAGE)]
    return [
        [associate_rq(contexts=contexts)],
        [associate_rq(contexts=contexts), READ, p_data((1, 0x03, echo_rq())), READ, release_rq()],
        [
            associate_rq(contexts=contexts),
            READ,
            p_data((3, 0x03, store_rq(CT_IMAGE_STORAGE, ds.SOPInstanceUID))),
            p_data((3, 0x02, data)),
            READ,
            release_rq(),
        ],
        [
            associate_rq(contexts=contexts),
            READ,
            p_data((1, 0x03, echo_rq(1))),
            READ,
            p_data((1, 0x03, echo_rq(2))),
            READ,
            release_rq(),
        ],
    ]


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    if not buf:
        return bytes(rng.randbytes(rng.randint(1, 64)))
    kind = rng.randrange(8)
    pos = rng.randrange(len(buf))
    if kind == 0:  # bit flips
        for _ in range(rng.randint(1, 4)):
            p = rng.randrange(len(buf))
            buf[p] ^= 1 << rng.randrange(8)
    elif kind == 1:  # interesting byte
        buf[pos] = rng.choice(INTERESTING)
    elif kind == 2 and len(buf) >= 6:  # the PDU length field
        struct.pack_into(
            ">L", buf, 2, rng.choice(INTERESTING32 + [len(buf) - 6 + rng.randint(-8, 8) & 0xFFFFFFFF])
        )
    elif kind == 3 and len(buf) > pos + 4:  # a 16- or 32-bit field anywhere (item lengths, PDV lengths)
        if rng.random() < 0.5:
            struct.pack_into(">H", buf, pos, rng.choice([0, 1, 0xFFFF, 0x8000, rng.randrange(0x10000)]))
        else:
            struct.pack_into(">L", buf, pos, rng.choice(INTERESTING32))
    elif kind == 4:  # truncate
        del buf[pos:]
    elif kind == 5:  # repeat a chunk
        end = min(len(buf), pos + rng.randint(1, 64))
        buf[pos:pos] = buf[pos:end] * rng.randint(1, 8)
    elif kind == 6:  # insert random bytes
        buf[pos:pos] = rng.randbytes(rng.randint(1, 32))
    else:  # delete a chunk
        del buf[pos : pos + rng.randint(1, 32)]
    return bytes(buf)


def mutate(stream: list[bytes | str], pool: list[list[bytes | str]], rng: random.Random) -> list[bytes | str]:
    out = list(stream)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(10)
        steps = [i for i, s in enumerate(out) if s != READ]
        if kind < 6 and steps:
            i = rng.choice(steps)
            out[i] = mutate_bytes(out[i], rng)  # type: ignore[arg-type]
        elif kind == 6 and len(steps) > 1:  # swap two PDUs
            a, b = rng.sample(steps, 2)
            out[a], out[b] = out[b], out[a]
        elif kind == 7:  # splice a PDU from another seed
            other = [s for s in rng.choice(pool) if s != READ]
            out.insert(rng.randrange(len(out) + 1), rng.choice(other))
        elif kind == 8 and steps:  # drop a PDU
            del out[rng.choice(steps)]
        else:  # send everything at once, without waiting for answers
            out = [b"".join(s for s in out if s != READ)]  # type: ignore[misc]
    return out


def execute(port: int, stream: list[bytes | str], timeout: float) -> str:
    """Send ``stream``; the outcome: ``closed``, ``open`` (server still waiting), or ``refused``."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError:
        return "refused"
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for step in stream:
            if step == READ:
                try:
                    if not sock.recv(65536):
                        return "closed"
                except TimeoutError:
                    pass
                except OSError:
                    return "closed"
                continue
            try:
                sock.sendall(step)  # type: ignore[arg-type]
            except OSError:
                return "closed"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not sock.recv(65536):
                    return "closed"
            except TimeoutError:
                return "open"
            except OSError:
                return "closed"
        return "open"
    finally:
        sock.close()


@dataclass
class Report:
    executions: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        return (
            f"{self.executions} executions in {self.seconds:.0f} s ({self.outcomes}); "
            f"{len(self.findings)} finding(s)" + "".join(f"\n  - {f}" for f in self.findings)
        )


def fuzz(
    port: int,
    seconds: float,
    seed: int = 0,
    timeout: float = 0.5,
    check_every: int = 50,
    out: Path | None = None,
) -> Report:
    """Mutate and send for ``seconds``; a C-ECHO that fails afterwards is a finding."""
    rng = random.Random(seed)
    pool = seeds()
    report = Report()
    recent: list[list[bytes | str]] = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        stream = mutate(rng.choice(pool), pool, rng)
        outcome = execute(port, stream, timeout)
        report.executions += 1
        report.outcomes[outcome] = report.outcomes.get(outcome, 0) + 1
        recent = (recent + [stream])[-check_every:]
        if report.executions % check_every == 0 or outcome == "refused":
            problem = _health(port)
            if problem:
                report.findings.append(f"after execution {report.executions}: {problem}")
                if out is not None:
                    _save(out, report.executions, recent)
                if outcome == "refused":
                    break
    problem = _health(port)
    if problem:
        report.findings.append(f"at the end: {problem}")
    report.seconds = time.monotonic() - started
    return report


def _health(port: int) -> str | None:
    started = time.monotonic()
    try:
        status = echo(port, timeout=2.0)
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        return f"C-ECHO failed: {exc}"
    if status != 0 or time.monotonic() - started > 2.0:
        return f"C-ECHO answered 0x{status:04X} in {time.monotonic() - started:.1f} s"
    return None


def _save(out: Path, n: int, streams: list[list[bytes | str]]) -> None:
    folder = out / f"finding-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    for i, stream in enumerate(streams):
        (folder / f"{i:03d}.bin").write_bytes(b"".join(s for s in stream if isinstance(s, bytes)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, help="a running SCP on 127.0.0.1 (default: start a Dolmen)")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--out", type=Path, default=None, help="folder for the inputs of findings")
    args = parser.parse_args(argv)
    if args.port:
        report = fuzz(args.port, args.seconds, args.seed, out=args.out)
        print(report)
        return 1 if report.findings else 0
    from tests.conftest import make_config_doc
    from tests.conftest import start_dolmen
    from tests.conftest import write_toml
    from tests.hostile import Survival
    from tests.hostile import hostile_sections

    folder = Path(tempfile.mkdtemp(prefix="fz-", dir="/tmp"))
    config = write_toml(
        folder / "c.toml",
        make_config_doc(
            folder / "data", **hostile_sections(dicom={"acse_timeout": 2.0, "network_timeout": 4.0})
        ),
    )
    server = start_dolmen(config, folder / "serve.log")
    try:
        survival = Survival(server)
        report = fuzz(server.dicom_port, args.seconds, args.seed, out=args.out or folder)
        print(report)
        survival.check()
        print("survival contract: holds")
    finally:
        server.stop()
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
