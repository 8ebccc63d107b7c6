"""DICOM networking: the SCP, the SCU operations and everything that reaches into pynetdicom.

This package is the only place that touches pynetdicom's internals. Its parts:

* :mod:`~dicomnode.net.scp` builds the AE and its event handlers; :mod:`~dicomnode.net.service`
  (what the handlers share), :mod:`~dicomnode.net.find` (C-FIND) and
  :mod:`~dicomnode.net.retrieve` (C-MOVE, C-GET) serve the requests.
* :mod:`~dicomnode.net.scu` (echo, find, move, get), :mod:`~dicomnode.net.send` (C-STORE),
  :mod:`~dicomnode.net.connect` (associations to a peer), :mod:`~dicomnode.net.identifiers`
  and :mod:`~dicomnode.net.wire` (the raw DIMSE codec both sides use) are the requester.
* :mod:`~dicomnode.net.hardening` (caps and guards against hostile peers) and
  :mod:`~dicomnode.net.latency` (pynetdicom's polling replaced by select(), a C-STORE fast
  path) patch pynetdicom; :func:`install` applies every patch in order, after checking that
  each attribute it replaces exists in the installed pynetdicom (:data:`PATCHED`).
* :mod:`~dicomnode.net.assoclog` keeps the association log.
"""
from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

from dicomnode.errors import DolmenError

LOGGER = logging.getLogger(__name__)

#: The pynetdicom release the patches were written against (pinned in pyproject.toml).
PYNETDICOM_VERSION = "3.0.4"

#: Every pynetdicom attribute :func:`install` replaces or wraps, by module, and who does it.
PATCHED: dict[str, tuple[tuple[str, str], ...]] = {
    "pynetdicom.dul": (
        ("DULServiceProvider.__init__", "latency"),
        ("DULServiceProvider.run_reactor", "latency, hardening"),
        ("DULServiceProvider.send_pdu", "latency, hardening"),
        ("DULServiceProvider.stop_dul", "latency"),
        ("DULServiceProvider._read_pdu_data", "hardening: the PDU-size cap"),
        ("time", "latency"),
    ),
    "pynetdicom.transport": (
        ("AssociationSocket.ready", "latency"),
        ("AssociationSocket.recv", "latency"),
        ("deepcopy", "latency"),
        ("_HAS_SSL", "latency (read)"),
        # Subclassed, not patched (DolmenAE.make_server passes them as server_class):
        ("ThreadedAssociationServer.verify_request", "hardening: the cap on idle connections"),
        ("RequestHandler._create_association", "hardening: when a connection was accepted"),
    ),
    "pynetdicom.dimse": (
        ("DIMSEServiceProvider.get_msg", "latency"),
        ("DIMSEServiceProvider.receive_primitive", "latency, hardening"),
        ("DIMSEServiceProvider.send_msg", "latency"),
    ),
    "pynetdicom.dimse_messages": (
        ("NamedTemporaryFile", "scp: the object-size cap; hardening: spool tracking"),
        ("create_file_meta", "latency"),
        ("write_file_meta_info", "latency"),
    ),
    "pynetdicom.association": (
        ("Association.run", "hardening; the index connection closed at the end"),
        ("uid_to_service_class", "retrieve: C-MOVE and C-GET served by RetrieveService"),
        ("time", "latency"),
    ),
    "pynetdicom.fsm": (("StateMachine.do_action", "hardening"),),
    "pynetdicom._config": (
        ("STORE_RECV_CHUNKED_DATASET", "scp"),
        ("STORE_SEND_CHUNKED_DATASET", "send"),
        ("LOG_REQUEST_IDENTIFIERS", "scp"),
    ),
}


class NetPatchError(DolmenError):
    """The installed pynetdicom lacks an attribute Dolmen replaces: Dolmen must not start."""

    code = "pynetdicom_mismatch"


def missing_attributes() -> list[str]:
    """The names of :data:`PATCHED` that the installed pynetdicom does not have."""
    missing = []
    for module_name, names in PATCHED.items():
        module = importlib.import_module(module_name)
        for dotted, _who in names:
            target: object = module
            for part in dotted.split("."):
                if not hasattr(target, part):
                    missing.append(f"{module_name}.{dotted}")
                    break
                target = getattr(target, part)
    return missing


def check() -> None:
    """Fail loudly when pynetdicom is not what the patches were written against.

    Raises
    ------
    NetPatchError
        When an attribute of :data:`PATCHED` is missing.
    """
    import pynetdicom

    missing = missing_attributes()
    if missing:
        raise NetPatchError(
            f"pynetdicom {pynetdicom.__version__} lacks {', '.join(missing)}, which Dolmen replaces "
            f"(written against pynetdicom {PYNETDICOM_VERSION}): install pynetdicom=={PYNETDICOM_VERSION}")
    if pynetdicom.__version__ != PYNETDICOM_VERSION:
        LOGGER.warning("pynetdicom %s is installed; Dolmen's patches were written against %s",
                       pynetdicom.__version__, PYNETDICOM_VERSION)


def latency_patches_wanted() -> bool:
    """False when ``DOLMEN_NO_NETPATCH`` is set (to prove the rest works without them)."""
    return not os.environ.get("DOLMEN_NO_NETPATCH")


def install(spool_dir: Path, max_object_bytes: int, *, latency: bool | None = None) -> None:
    """Apply every patch to pynetdicom, in order (each step is idempotent).

    1. :func:`dicomnode.net.latency.apply` unless ``latency`` is False (by default, unless
       ``DOLMEN_NO_NETPATCH`` is set);
    2. :func:`dicomnode.net.scp.install_spool`: received datasets go to ``spool_dir``,
       at most ``max_object_bytes`` each;
    3. :func:`dicomnode.net.hardening.apply`, which wraps the first two;
    4. the index connection of an association's thread is closed when it ends;
    5. :func:`dicomnode.net.retrieve.install_retrieve_service`.

    Raises
    ------
    NetPatchError
        Before anything is patched, when pynetdicom lacks an attribute of :data:`PATCHED`.
    """
    from dicomnode.net import hardening
    from dicomnode.net import latency as latency_patches
    from dicomnode.net import retrieve
    from dicomnode.net import scp

    check()
    if latency_patches_wanted() if latency is None else latency:
        latency_patches.apply()
    scp.install_spool(spool_dir, max_object_bytes)
    hardening.apply()
    scp.close_index_when_associations_end()
    retrieve.install_retrieve_service()


__all__ = ["PATCHED", "PYNETDICOM_VERSION", "NetPatchError", "check", "install", "latency_patches_wanted",
           "missing_attributes"]
