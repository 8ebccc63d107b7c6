"""The ``dolmen`` command: serve, import, demo-data, passwd, check-config."""
from __future__ import annotations

import argparse
import getpass
import logging
import os
import signal
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

from dicomnode import __version__
from dicomnode import config
from dicomnode.errors import DolmenError

LOGGER = logging.getLogger("dolmen")
#: Bytes of a response waitress buffers per connection before the writing thread waits.
OUTBUF_HIGH_WATERMARK = 4 * 1024 * 1024


def _settings(path: str | None) -> config.Settings:
    try:
        return config.load(path)
    except DolmenError as exc:
        print(f"dolmen: configuration error: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None


def _logging(settings: config.Settings) -> None:
    logging.basicConfig(level=settings["log.level"].upper(),
                        format="%(asctime)s web %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)


def cmd_serve(args: argparse.Namespace) -> int:
    """Reconcile, start the sidecar under supervision, serve the web app with waitress."""
    from waitress.server import create_server

    from dicomnode.archive import index
    from dicomnode.archive import reconcile
    from dicomnode.archive.ingest import Ingestor
    from dicomnode.archive.store import open_store
    from dicomnode.control import check_socket_path
    from dicomnode.supervisor import Supervisor
    from webapp import create_app

    settings = _settings(args.config)
    _logging(settings)
    try:
        check_socket_path(settings.control_socket)
        store = open_store(settings)
        index.open_index(settings.database_url, synchronous_full=False,
                         busy_timeout=settings["storage.busy_timeout"])
        reconcile.run(store, Ingestor(store, overwrite=settings["storage.overwrite"]))
        index.close_index()
        supervisor = Supervisor(settings)
        supervisor.start()
    except DolmenError as exc:
        print(f"dolmen: cannot start: {exc.message}", file=sys.stderr)
        return 3
    app = create_app(settings, supervisor=supervisor)
    try:
        server = create_server(app, host=settings["http.host"], port=settings["http.port"],
                               threads=settings["http.threads"], ident="Dolmen",
                               max_request_body_size=settings["http.max_upload_mb"] * 1024 * 1024,
                               clear_untrusted_proxy_headers=True,
                               # A response streamed faster than the client reads it waits in
                               # memory, never in a temporary file (waitress spills a buffer to
                               # disk past outbuf_overflow, 1 MiB by default); the task thread
                               # blocks past the watermark, so each connection holds ~4 MiB.
                               outbuf_high_watermark=OUTBUF_HIGH_WATERMARK,
                               outbuf_overflow=2 * OUTBUF_HIGH_WATERMARK)
    except OSError as exc:
        supervisor.stop()
        print(f"dolmen: cannot listen on {settings['http.host']}:{settings['http.port']}: {exc.strerror}",
              file=sys.stderr)
        return 3
    port = server.effective_port  # type: ignore[union-attr]
    try:
        dicom = supervisor.status()
        dicom_where = f"DICOM {dicom['aet']} on port {dicom['port']}"
    except DolmenError as exc:
        dicom_where = f"DICOM server not answering yet ({exc.message})"
    print(f"Dolmen {__version__}: web UI on http://{settings['http.host']}:{port}/ · {dicom_where} · "
          f"data in {settings.storage_path}", flush=True)

    def stop(*_: object) -> None:
        # Leave waitress's loop from the main thread: closing its sockets from another
        # thread races with its select() (EBADF).
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        # The sidecar stops while waitress closes its sockets and task threads.
        sidecar_stop = threading.Thread(target=supervisor.stop, name="stop-sidecar")
        sidecar_stop.start()
        server.close()
        sidecar_stop.join()
    return 0


def _iter_inputs(paths: list[str]) -> Iterator[tuple[str, Path | tuple[Path, str]]]:
    """Yield (label, path) for files and (label, (zip, member)) for ZIP members."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for dirpath, _dirs, files in os.walk(path):
                for name in sorted(files):
                    yield from _iter_inputs([os.path.join(dirpath, name)])
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if not info.is_dir():
                        yield f"{path}:{info.filename}", (path, info.filename)
        else:
            yield str(path), path


def cmd_import(args: argparse.Namespace) -> int:
    """Import files, folders and ZIPs through the one ingest path, with a progress bar."""
    from tqdm import tqdm

    from dicomnode.archive import index
    from dicomnode.archive.ingest import Ingestor
    from dicomnode.archive.ingest import Source
    from dicomnode.archive.store import open_store

    settings = _settings(args.config)
    logging.basicConfig(level=logging.WARNING)
    store = open_store(settings)
    index.open_index(settings.database_url, synchronous_full=False,
                     busy_timeout=settings["storage.busy_timeout"])
    ingestor = Ingestor(store, overwrite=settings["storage.overwrite"])
    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:
        print(f"dolmen import: no such file or folder: {missing[0]}", file=sys.stderr)
        return 2
    items = list(_iter_inputs(args.paths))
    counts = {"stored": 0, "duplicate": 0, "rejected": 0}
    source = Source("import")
    with tqdm(total=len(items), unit="file", disable=args.quiet or not sys.stderr.isatty()) as bar:
        for label, item in items:
            if isinstance(item, tuple):
                zpath, member = item
                with zipfile.ZipFile(zpath) as zf, zf.open(member) as f:
                    result = ingestor.ingest_stream(f, source, owner="import")
            else:
                result = ingestor.ingest_copy(item, source)
            counts[result.status] += 1
            if result.status == "rejected" and not args.quiet:
                tqdm.write(f"rejected {label}: {result.reason}", file=sys.stderr)
            bar.update(1)
    print(f"{counts['stored']} stored, {counts['duplicate']} already stored, "
          f"{counts['rejected']} rejected ({len(items)} files)")
    return 0 if counts["rejected"] == 0 else 1


def cmd_migrate_storage(args: argparse.Namespace) -> int:
    """Copy the file store into the bucket of ``[storage.s3]`` (resumable, verified)."""
    from tqdm import tqdm

    from dicomnode.archive import index
    from dicomnode.archive import migrate
    from dicomnode.archive.s3store import S3Store

    settings = _settings(args.config)
    logging.basicConfig(level=logging.WARNING)
    try:
        dest = S3Store(settings.storage_path, endpoint=settings["storage.s3.endpoint"],
                       bucket=settings["storage.s3.bucket"], region=settings["storage.s3.region"],
                       access_key=settings["storage.s3.access_key"], secret_key=settings["storage.s3.secret_key"],
                       prefix=settings["storage.s3.prefix"], timeout=settings["storage.s3.timeout"])
        dest.check_bucket()
        index.open_index(settings.database_url, synchronous_full=False,
                         busy_timeout=settings["storage.busy_timeout"])
        with tqdm(unit="object", disable=args.quiet or not sys.stderr.isatty()) as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            report = migrate.migrate(migrate.source_store(settings.storage_path), dest, threads=args.jobs,
                                     progress=progress)
    except DolmenError as exc:
        print(f"dolmen migrate-storage: {exc.message}", file=sys.stderr)
        return 3
    print(f"{report.indexed} indexed objects: {report.copied} copied ({report.bytes_copied / 1e6:.1f} MB), "
          f"{report.already} already in {dest.describe()}")
    for rel in report.missing:
        print(f"missing from the file store: {rel}", file=sys.stderr)
    for rel, why in report.failed:
        print(f"not copied: {rel}: {why}", file=sys.stderr)
    for rel in report.unverified:
        print(f"not in the bucket with its size after the copy: {rel}", file=sys.stderr)
    if not report.complete:
        print("Not complete: run it again to retry what failed (what is in the bucket is not sent again).",
              file=sys.stderr)
        return 1
    now = "" if settings["storage.objects"] == "s3" else (
        ' Now stop Dolmen, run this once more (it copies what arrived meanwhile), set [storage] objects = "s3"'
        " and start Dolmen again.")
    print(f"Every indexed object is in the bucket with its size.{now}")
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    """Write the deterministic synthetic data set."""
    from dicomnode import demodata

    paths = demodata.write(args.out, patients=args.patients, studies=args.studies, series=args.series,
                           instances=args.instances, size=args.size, first_patient=args.first_patient)
    print(f"{len(paths)} instances written to {args.out}")
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    """Print a password hash for ``[http.users]``."""
    from werkzeug.security import generate_password_hash

    password = args.password
    if password is None:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("dolmen passwd: the two passwords differ", file=sys.stderr)
            return 2
    if len(password) < 8:
        print("dolmen passwd: use at least 8 characters", file=sys.stderr)
        return 2
    hashed = generate_password_hash(password)
    print(f'{args.user} = "{hashed}"' if args.user else hashed)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """Load the configuration and say whether it is valid."""
    settings = _settings(args.config)
    print(f"{settings.source or 'defaults'}: valid; DICOM {settings['dicom.aet']} on port "
          f"{settings['dicom.port']}, web on {settings['http.host']}:{settings['http.port']}, "
          f"data in {settings.storage_path}, {len(settings.modalities)} modality(ies)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dolmen`` console script."""
    parser = argparse.ArgumentParser(prog="dolmen", description="Dolmen, a lightweight DICOM server.")
    parser.add_argument("--version", action="version", version=f"dolmen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", help="TOML configuration file (default: $DOLMEN_CONFIG, else built-in defaults)")
        return p

    p = with_config(sub.add_parser("serve", help="run the web UI and the DICOM server"))
    p.set_defaults(func=cmd_serve)
    p = with_config(sub.add_parser("import", help="import DICOM files, folders and ZIP files"))
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no per-file messages")
    p.set_defaults(func=cmd_import)
    p = with_config(sub.add_parser("migrate-storage", help="copy the file store into the S3 bucket of [storage.s3]"))
    p.add_argument("--jobs", type=int, default=8, help="objects uploaded at once (default 8)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_migrate_storage)
    p = sub.add_parser("demo-data", help="write a deterministic synthetic data set")
    p.add_argument("out", help="output folder")
    p.add_argument("--patients", type=int, default=4)
    p.add_argument("--studies", type=int, default=2, help="per patient")
    p.add_argument("--series", type=int, default=2, help="per study")
    p.add_argument("--instances", type=int, default=10, help="per series")
    p.add_argument("--size", type=int, default=128, help="rows = columns")
    p.add_argument("--first-patient", type=int, default=0)
    p.set_defaults(func=cmd_demo_data)
    p = sub.add_parser("passwd", help="make a password hash for [http.users]")
    p.add_argument("user", nargs="?", help="print a ready `user = \"hash\"` line")
    p.add_argument("--password", help="read from here instead of asking (avoid: it lands in shell history)")
    p.set_defaults(func=cmd_passwd)
    p = with_config(sub.add_parser("check-config", help="validate a configuration file"))
    p.set_defaults(func=cmd_check_config)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
