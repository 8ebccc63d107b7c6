"""Operations against a remote node: associate and echo (send, find, move and get build on them).

Every failure becomes a :class:`~dicomnode.errors.RemoteError` whose ``code`` says what kind
(``connection_refused``, ``host_unreachable``, ``timeout``, ``unknown_host``,
``association_rejected``, ``association_aborted``...) and whose message says, in plain words,
what happened and what to check.
"""
from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any

from pynetdicom import AE
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from dicomnode.config import Settings
from dicomnode.errors import RemoteError
from dicomnode.nodes import Node

LOGGER = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0


def check_reachable(node: Node, timeout: float = CONNECT_TIMEOUT) -> None:
    """Open and close a TCP connection to the node, turning each failure into a clear message.

    Raises
    ------
    RemoteError
        ``unknown_host``, ``connection_refused``, ``host_unreachable`` or ``timeout``.
    """
    where = f"{node.host}:{node.port}"
    try:
        with socket.create_connection((node.host, node.port), timeout=timeout):
            pass
    except socket.gaierror:
        raise RemoteError(f"Unknown host {node.host!r}: the name does not resolve. Check the "
                          f"host of modality {node.name!r}.", code="unknown_host") from None
    except ConnectionRefusedError:
        raise RemoteError(f"Connection refused by {where}: nothing listens on that port. Check the "
                          f"port of {node.name!r} and that its DICOM service is running.",
                          code="connection_refused") from None
    except socket.timeout:
        raise RemoteError(f"No answer from {where} within {timeout:g} s: the host is down or a "
                          "firewall drops the connection.", code="timeout") from None
    except OSError as exc:
        raise RemoteError(f"Host {where} is unreachable ({exc.strerror or exc}). Check the address "
                          "and the network route.", code="host_unreachable") from None


def _describe_reject(primitive: Any) -> str:
    if primitive is None:
        return "the association was rejected"
    parts = []
    for attr in ("result_str", "source_str", "reason_str"):
        with contextlib.suppress(Exception):
            parts.append(str(getattr(primitive, attr)))
    return ", ".join(p for p in parts if p) or "the association was rejected"


@contextlib.contextmanager
def associate(settings: Settings, node: Node, contexts: Sequence[Any] = (Verification,),
              *, ae: AE | None = None, ext_neg: list[Any] | None = None,
              evt_handlers: list[Any] | None = None) -> Iterator[Association]:
    """Open an association to ``node`` and release it at the end of the ``with`` block.

    Parameters
    ----------
    contexts : sequence
        Abstract syntaxes (or presentation contexts) to request, when ``ae`` is not given.
    ae : AE, optional
        A prepared AE (for requested contexts with specific transfer syntaxes).

    Raises
    ------
    RemoteError
        When the node cannot be reached, rejects or aborts the association.
    """
    check_reachable(node)
    if ae is None:
        ae = AE(ae_title=settings["dicom.aet"])
        for cx in contexts:
            if hasattr(cx, "abstract_syntax"):
                ae.add_requested_context(cx.abstract_syntax, cx.transfer_syntax)
            else:
                ae.add_requested_context(cx)
    ae.acse_timeout = settings["dicom.acse_timeout"]
    ae.dimse_timeout = settings["dicom.dimse_timeout"]
    ae.network_timeout = settings["dicom.network_timeout"]
    received: dict[str, Any] = {}

    def on_acse(event: evt.Event) -> None:
        received["primitive"] = event.primitive

    handlers = list(evt_handlers or []) + [(evt.EVT_ACSE_RECV, on_acse)]
    assoc = ae.associate(node.host, node.port, ae_title=node.aet, ext_neg=ext_neg,
                         evt_handlers=handlers)
    if assoc.is_rejected:
        why = _describe_reject(received.get("primitive"))
        hint = ""
        if "called" in why.lower():
            hint = f" Check that {node.name!r} is really called {node.aet!r}."
        elif "calling" in why.lower():
            hint = (f" The remote node does not know our AE title {settings['dicom.aet']!r}: "
                    "declare it in its configuration.")
        raise RemoteError(f"{node.name} ({node.aet} at {node.host}:{node.port}) rejected the "
                          f"association: {why}.{hint}", code="association_rejected")
    if not assoc.is_established:
        raise RemoteError(f"{node.name} ({node.aet} at {node.host}:{node.port}) aborted the "
                          "association or did not answer the request (is it a DICOM port? does "
                          "it accept the requested SOP classes?)", code="association_aborted")
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()


def echo(settings: Settings, node: Node) -> dict[str, Any]:
    """C-ECHO ``node``; return ``{"ok": True, "status": 0, "rtt_ms": ...}``.

    Raises
    ------
    RemoteError
        Unreachable, rejected, aborted, or a non-success status.
    """
    started = time.perf_counter()
    with associate(settings, node, [Verification]) as assoc:
        status = assoc.send_c_echo()
        if not status or "Status" not in status:
            raise RemoteError(f"{node.name} did not answer the C-ECHO within "
                              f"{settings['dicom.dimse_timeout']:g} s", code="timeout")
        code = int(status.Status)
    rtt = (time.perf_counter() - started) * 1000
    if code != 0:
        raise RemoteError(f"{node.name} answered the C-ECHO with status 0x{code:04X}",
                          code="echo_failed")
    return {"ok": True, "status": code, "rtt_ms": round(rtt, 1), "modality": node.name,
            "aet": node.aet, "host": node.host, "port": node.port}
