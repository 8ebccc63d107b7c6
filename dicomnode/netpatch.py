"""Latency fixes for pynetdicom's polling reactors, applied once by the sidecar and the SCU.

pynetdicom's DUL and association reactors poll: each loop sleeps 1 ms when idle, and the
socket is checked with a zero-timeout ``select``. A C-STORE round trip crosses several of
those sleeps, which costs several milliseconds per instance (about half of the time of a
256×256 CT over one association). Here the DUL waits *in* ``select`` for up to the same
1 ms instead of sleeping blindly, so incoming PDUs are read the moment they arrive, and the
association reactor waits on its message queue instead of polling it. Idle CPU use stays
the same (one wake-up per millisecond at most); behaviour is otherwise unchanged.
"""
from __future__ import annotations

import queue
import select
import time
from typing import Any

from pynetdicom import dimse
from pynetdicom import dul
from pynetdicom import transport

WAIT = 0.001  # the same period pynetdicom polls at
_applied = False


def _ready(self: Any) -> bool:
    if self.socket is None or self._is_connected is False:
        time.sleep(WAIT)
        return False
    # Wait only when the DUL has nothing else to do: no pending state-machine event and no
    # outgoing primitive (else the wait would delay them).
    idle = self.event_queue.empty() and self.assoc.dul.to_provider_queue.empty()
    try:
        ready, _, _ = select.select([self.socket], [], [], WAIT if idle else 0)
    except (OSError, TimeoutError, ValueError):
        self.event_queue.put("Evt17")  # Evt17: transport connection closed
        return False
    return bool(ready)


def _get_msg(self: Any, block: bool = False) -> Any:
    try:
        if block:
            return self.msg_queue.get(block=True, timeout=self.dimse_timeout)
        return self.msg_queue.get(block=True, timeout=2 * WAIT)
    except queue.Empty:
        return None, None


def apply() -> None:
    """Install the patches (idempotent)."""
    global _applied
    if _applied:
        return
    original_init = dul.DULServiceProvider.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._run_loop_delay = 0  # the wait now happens inside select()

    dul.DULServiceProvider.__init__ = init  # type: ignore[method-assign]
    # TLS sockets may hold decrypted data select() cannot see: keep pynetdicom's own check there.
    original_ready = transport.AssociationSocket.ready

    def ready(self: Any) -> bool:
        if transport._HAS_SSL and isinstance(self.socket, transport.ssl.SSLSocket):
            time.sleep(WAIT)
            return bool(original_ready.fget(self))  # type: ignore[attr-defined]
        return _ready(self)

    transport.AssociationSocket.ready = property(ready)  # type: ignore[method-assign,assignment]
    dimse.DIMSEServiceProvider.get_msg = _get_msg  # type: ignore[method-assign]
    _applied = True
