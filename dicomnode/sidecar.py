"""The DICOM sidecar: ``python -m dicomnode.sidecar --config FILE``.

Runs the pynetdicom AE (the SCP), the control socket server and, later, the job runner, in
a clean interpreter of its own. It exits on SIGTERM or, when started by the supervisor with
``--watch-stdin``, as soon as its standard input closes (the parent died), releasing the port.
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from dicomnode import __version__
from dicomnode import config
from dicomnode import jobs
from dicomnode import net
from dicomnode import peers
from dicomnode.archive import index
from dicomnode.archive import reconcile
from dicomnode.archive.ingest import Ingestor
from dicomnode.archive.store import open_store
from dicomnode.control import ControlServer
from dicomnode.errors import DolmenError
from dicomnode.jobs import transfer
from dicomnode.net import assoclog
from dicomnode.net import hardening
from dicomnode.net import tls
from dicomnode.net import scp
from dicomnode.net import scu
from dicomnode.net import service

LOGGER = logging.getLogger("dicomnode.sidecar")

#: Seconds between two prunings of the association log.
PRUNE_EVERY = 3600.0

#: Most answers a ``find`` returns (the rest of a larger result is cut off and flagged).
FIND_LIMIT = 1000


class Sidecar:
    """Everything the sidecar process runs, startable in-process for tests of its parts."""

    def __init__(self, settings: config.Settings) -> None:
        self.settings = settings
        self.stopped = threading.Event()
        self.store = open_store(settings)
        index.open_index(settings.database_url, synchronous_full=False,
                         busy_timeout=settings["storage.busy_timeout"])
        self.ingestor = Ingestor(self.store, overwrite=settings["storage.overwrite"])
        self.ctx = service.Context(settings, self.ingestor)
        self.server: Any = None
        self.control: ControlServer | None = None
        self.runner = jobs.Runner(settings, self.ingestor)
        self.port = 0

    def start(self) -> None:
        """Clear our spool, start the AE and the control server."""
        removed = self.store.clear_spool("scp")
        if removed:
            LOGGER.info("Removed %d partial object(s) left by an interrupted reception", removed)
        net.install(self.store.spool_dir("scp"), self.settings["dicom.max_object_mb"] * 1024 * 1024)
        ae = scp.build_ae(self.settings)
        self.ae = ae
        # Files written from now on are receptions of ours, not debris for reconciliation.
        self._serving_since = time.time()
        self.server = ae.start_server(
            (self.settings["dicom.host"], self.settings["dicom.port"]), block=False,
            evt_handlers=scp.handlers(self.ctx))
        self.port = int(self.server.server_address[1])
        self.tls_port = 0
        hardening.CALLING_CHECK = self._plain_port_refusal
        hardening.TLS_FAILED = self._tls_failed
        if tls.enabled(self.settings):
            # The same AE (title, access rules, association limit, log) on a second port, over TLS.
            self.tls_server = ae.start_server(
                (self.settings["dicom.host"], self.settings["dicom.tls.port"]), block=False,
                evt_handlers=scp.handlers(self.ctx), ssl_context=tls.server_context(self.settings))
            self.tls_port = int(self.tls_server.server_address[1])
            LOGGER.info("DICOM TLS listener on %s:%d", self.settings["dicom.host"], self.tls_port)
        jobs.reception_busy = service.Reception.active  # send jobs give way while objects arrive
        self.control = ControlServer(self.settings.control_socket)
        self.control.register("status", self.op_status)
        self.control.register("peers_changed", self.op_peers_changed)
        self.control.register("echo", self.op_echo)
        self.control.register("find", self.op_find)
        self.control.register("move", self.op_move)
        self.control.register("get", self.op_get)
        self.control.register("send", self.op_send)
        self.control.register("connectivity_test", self.op_connectivity_test)
        self.control.register("job_submit", self.op_job_submit)
        self.control.register("job_cancel", self.op_job_cancel)
        self.control.register("job_retry", self.op_job_retry)
        self.runner.start()
        self.control.start()
        # Files renamed into the store just before a crash have no row: index them, in the
        # background so that the port is open at once.
        threading.Thread(target=self._reconcile, name="reconcile", daemon=True).start()
        threading.Thread(target=self._prune_log, name="assoclog-prune", daemon=True).start()
        LOGGER.info("Dolmen DICOM server %s listening on %s:%d", self.settings["dicom.aet"],
                    self.settings["dicom.host"], self.port)

    def _plain_port_refusal(self, calling: str, over_tls: bool) -> str | None:
        """Run in the connection's DUL thread: the index connection it opens is closed again."""
        if over_tls:
            return None
        opened = index.db.obj is None or index.db.is_closed()
        try:
            return peers.plain_port_refusal(self.settings, calling, over_tls)
        finally:
            if opened:
                index.close_index()

    @staticmethod
    def _tls_failed(peer: str, reason: str) -> None:
        """A TLS handshake failed: in the association log, as a refused connection."""
        try:
            service.log_event("", "", peer.rsplit(":", 1)[0], "associate", False, f"TLS handshake failed: {reason}")
        finally:
            index.close_index()

    def _reconcile(self) -> None:
        try:
            reconcile.run(self.store, self.ingestor, spool_owners=("reconcile",), before=self._serving_since)
        except Exception:
            LOGGER.exception("Reconciliation failed")

    def _prune_log(self) -> None:
        """Keep the association log within its bounds: at start, then every hour."""
        while True:
            try:
                assoclog.prune(self.settings)
            except Exception:
                LOGGER.exception("Cannot prune the association log")
            finally:
                index.close_index()
            if self.stopped.wait(PRUNE_EVERY):
                return

    def op_peers_changed(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control op ``peers_changed``: the web process saved or deleted a modality; access
        decisions read the modality table again from the next association on."""
        peers.forget_nodes()
        return {}

    def op_status(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control op ``status``: AE title, port, uptime, associations and counters."""
        c = self.ctx.counters
        return {
            "aet": self.settings["dicom.aet"], "host": self.settings["dicom.host"], "port": self.port,
            "tls_port": self.tls_port,
            "pid": os.getpid(), "version": __version__, "uptime": round(time.time() - c.started, 1),
            "associations": len(self.ae.active_associations),
            "associations_total": c.associations_total,
            "instances_received": c.instances_received, "instances_rejected": c.instances_rejected,
        }

    def op_echo(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control op ``echo``: C-ECHO a modality by name (``{"modality": "pacs"}``), or a node not
        declared (``{"node": {"aet": ..., "host": ..., "port": ...}}``, Orthanc's ``/tools/dicom-echo``)."""
        node = args.get("node")
        if isinstance(node, dict):
            aet, host, port = str(node.get("aet", "")).strip(), str(node.get("host", "")).strip(), node.get("port")
            problem = config.check_aet(aet)
            if problem:
                raise DolmenError(f"AE title: {problem}", code="bad_request")
            if not host or isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise DolmenError("echo needs a host and a port between 1 and 65535", code="bad_request")
            return scu.echo(self.settings, peers.Node(f"{aet}@{host}:{port}", aet, host, port, peers.OPERATIONS))
        name = args.get("modality")
        if not isinstance(name, str) or not name:
            raise DolmenError("echo needs a modality name", code="bad_request")
        return scu.echo(self.settings, peers.MODALITIES.get(self.settings, name))

    def _node(self, args: dict[str, Any]) -> peers.Node:
        name = args.get("modality")
        if not isinstance(name, str) or not name:
            raise DolmenError("this operation needs a modality name", code="bad_request")
        return peers.MODALITIES.get(self.settings, name)

    def op_find(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control op ``find``: C-FIND a modality, synchronously, at most ``limit`` answers (1000 max).

        Args ``modality``, ``level``, ``filters`` ``{keyword: value}``, optional ``return_keys``
        and ``limit``; answers ``answers``, ``truncated``, ``status``, ``transcript``.
        """
        node = self._node(args)
        filters = args.get("filters") or {}
        return_keys = args.get("return_keys")
        limit = args.get("limit", 200)
        if not isinstance(filters, dict) or not all(isinstance(v, (str, int)) for v in filters.values()):
            raise DolmenError("filters must be an object of keyword: text", code="bad_request")
        if return_keys is not None and not (isinstance(return_keys, list)
                                            and all(isinstance(k, str) for k in return_keys)):
            raise DolmenError("return_keys must be a list of keywords", code="bad_request")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise DolmenError("limit must be a positive whole number", code="bad_request")
        return scu.find(self.settings, node, str(args.get("level", "STUDY")), filters,
                        return_keys=return_keys, limit=min(limit, FIND_LIMIT))

    def _retrieve(self, kind: str, args: dict[str, Any]) -> dict[str, Any]:
        node = self._node(args)
        level = str(args.get("level", "STUDY")).upper()
        keys = args.get("keys")
        if not isinstance(keys, dict):
            raise DolmenError(f"{kind} needs keys (the unique keys of what to retrieve)", code="bad_request")
        keys = scu.retrieve_keys(level, keys)
        params: dict[str, Any] = {"modality": node.name, "level": level, "keys": keys,
                                  "missing_only": bool(args.get("missing_only"))}
        if kind == "move":
            destination = str(args.get("destination") or self.settings["dicom.aet"]).strip()
            problem = config.check_aet(destination)
            if problem:
                raise DolmenError(f"Destination AE title: {problem}", code="bad_request")
            params.update(destination=destination, our_port=self.port)
        sop_classes = args.get("sop_classes")
        if isinstance(sop_classes, list):
            params["sop_classes"] = [str(c) for c in sop_classes][:64]
        description = str(args.get("description") or f"{level.lower()} {next(iter(keys.values()))}")
        return {"job": jobs.submit(kind, node.name, params, description[:255])}

    def op_move(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control op ``move``: start a C-MOVE retrieve job; answers ``{"job": id}``."""
        return self._retrieve("move", args)

    def op_get(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control op ``get``: start a C-GET retrieve job; answers ``{"job": id}``."""
        return self._retrieve("get", args)

    def op_send(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control op ``send``: start a C-STORE job for local resources; answers ``{"job": id}``."""
        node = self._node(args)
        resources = args.get("resources")
        if not isinstance(resources, list) or not resources or not all(
                isinstance(r, dict) and isinstance(r.get("level"), str) and isinstance(r.get("id"), str)
                for r in resources):
            raise DolmenError('send needs resources: [{"level": "study", "id": "..."}]', code="bad_request")
        transfer.send_items(resources)  # refuse unknown resources now, not in the job
        description = str(args.get("description") or transfer.describe(resources))
        return {"job": jobs.submit("send", node.name, {"modality": node.name, "resources": resources},
                                   description[:255])}

    def op_connectivity_test(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control op ``connectivity_test``: C-ECHO, C-FIND probe and a C-MOVE of one instance to us."""
        node = self._node(args)
        steps = scu.connectivity_test(self.settings, node, our_port=self.port)
        return {"modality": node.name, "steps": steps}

    def op_job_submit(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control op ``job_submit``: queue a job of a registered kind (see :mod:`dicomnode.jobs`)."""
        kind, target = args.get("kind"), args.get("target", "")
        params, description = args.get("params") or {}, args.get("description", "")
        if not isinstance(kind, str) or not isinstance(params, dict) or not isinstance(target, str) \
                or not isinstance(description, str):
            raise DolmenError("job_submit needs kind, target, params (an object) and description",
                              code="bad_request")
        return {"job": jobs.submit(kind, target, params, description)}

    def op_job_cancel(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control op ``job_cancel``: stop a job (``{"job": id}``); answers its state."""
        job_id = _job_id(args)
        return {"job": job_id, "state": jobs.cancel(job_id)}

    def op_job_retry(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control op ``job_retry``: queue a failed or cancelled job again; answers the new id."""
        return {"job": jobs.retry(_job_id(args))}

    def stop(self) -> None:
        """Stop serving: control socket first, then the jobs, then the AE (aborting associations)."""
        # The control socket and the AE each notice a shutdown request at their next poll
        # (0.5 s): stop them side by side rather than one after the other.
        stoppers = []
        if self.control is not None:
            stoppers.append(threading.Thread(target=self.control.stop, name="stop-control"))
        if self.server is not None:
            stoppers.append(threading.Thread(target=self.ae.shutdown, name="stop-ae"))
        for thread in stoppers:
            thread.start()
        self.runner.stop()
        for thread in stoppers:
            thread.join()
        scp.discard_spool_reserve()
        self.store.close()
        index.close_index()
        self.stopped.set()


def _job_id(args: dict[str, Any]) -> int:
    value = args.get("job")
    if isinstance(value, bool) or not isinstance(value, int):
        raise DolmenError("this operation needs a job id (\"job\": 12)", code="bad_request")
    return value


def _watch_stdin(on_eof: Any) -> None:
    # os.read rather than sys.stdin: a daemon thread blocked in the buffered reader makes
    # the interpreter abort at exit ("could not acquire lock ... at interpreter shutdown").
    try:
        while os.read(0, 4096):
            pass
    except (OSError, ValueError):
        pass
    on_eof()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m dicomnode.sidecar", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="TOML (or JSON) configuration file")
    parser.add_argument("--watch-stdin", action="store_true", help="exit when standard input closes")
    args = parser.parse_args(argv)
    try:
        settings = config.load(args.config)
    except DolmenError as exc:
        print(f"dolmen sidecar: {exc.message}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings["log.level"].upper(),
                        format="%(asctime)s sidecar %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    try:
        sidecar = Sidecar(settings)
        sidecar.start()
    except (DolmenError, OSError) as exc:
        message = exc.message if isinstance(exc, DolmenError) else str(exc)
        LOGGER.error("Cannot start the DICOM server: %s", message)
        print(f"dolmen sidecar: cannot start: {message}", file=sys.stderr)
        return 3
    # What start-up built (modules, pydicom's dictionaries, the AE's contexts: ~60,000
    # objects) lives as long as the process: keep it out of the collector's full passes,
    # which otherwise take ~50 ms with the GIL held, in the middle of receptions.
    gc.freeze()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    if args.watch_stdin:
        threading.Thread(target=_watch_stdin, args=(done.set,), name="stdin", daemon=True).start()
    while not done.wait(1.0):
        pass
    LOGGER.info("Stopping the DICOM server")
    sidecar.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
