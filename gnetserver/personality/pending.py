"""The budget of pending connections: who may be evicted, and the bounded wait for a session.

Rules of this module (the mechanism a personality uses to keep ``max_handshakes`` honest):

* A connection is *pending* from the moment its greenlet starts until it holds a session slot:
  first in its handshake (TLS), then waiting for one of the ``max_servers`` session slots.
  A personality holds at most ``max_servers + max_handshakes`` connections in all.
* A connection still in its handshake is *evictable*. When the personality is full and a new
  connection waits to be accepted, :meth:`PendingBudget.evict_oldest` cuts the oldest
  evictable one: :class:`Evicted` is thrown into its greenlet (its client is aborted, the
  server logs it at level 3) and :attr:`PendingBudget.evictions` counts it. So a flood of
  silent sockets (which never finish a handshake) can delay a real client by one accept, never
  lock it out: every new connection pushes the oldest silent one out.
* A connection that finished its handshake is no longer evictable (it cost its peer a full
  handshake, and it is the client the server exists for); its wait for a session slot is
  bounded instead, by ``timeout_session_wait``: past it, entering :meth:`PendingBudget.
  session_slot`'s context raises :class:`~gnetserver.errors.SessionWaitTimeout` (counted in
  :attr:`PendingBudget.session_wait_timeouts`) and the server closes the connection. When
  every pending connection waits for a session, new connections wait in the kernel's backlog
  until a wait ends, either way.
* Cheap on the hot path: marking a connection pending and done is a dict insertion and removal;
  taking a free session slot starts no timer (only a connection that must wait gets one).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import gevent
from gevent import GreenletExit
from gevent.lock import BoundedSemaphore

from ..errors import SessionWaitTimeout

__all__ = ["Evicted", "PendingBudget"]


class Evicted(GreenletExit):
    """Thrown into the greenlet of a connection still in its handshake, to make room for a
    newer connection when the pending budget (``max_handshakes``) is full.

    A GreenletExit (not an ``Exception``), as a kill is: the protocol's handshake aborts the
    connection (no alert, no drain) and lets it through, and a handler that swallows
    ``Exception`` cannot keep an evicted connection alive. The server catches it, logs the
    eviction at level 3 and ends the connection."""


class PendingBudget:
    """The pending connections of one personality (see the module rules).

    Args:
        max_servers: session slots (established sessions served at once).
        session_wait: seconds a connection may wait for a session slot (> 0).
    """

    def __init__(self, max_servers: int, session_wait: float) -> None:
        self._slots = BoundedSemaphore(max_servers)
        self._session_wait = session_wait
        # Greenlets in their handshake, oldest first (insertion order; O(1) pop at both ends).
        self._handshaking: OrderedDict[Any, None] = OrderedDict()
        #: Connections evicted from their handshake to make room for newer ones.
        self.evictions = 0
        #: Connections closed because no session slot freed within the session wait.
        self.session_wait_timeouts = 0

    @property
    def session_wait(self) -> float:
        """Seconds a connection may wait for a session slot."""
        return self._session_wait

    def handshaking(self, greenlet: Any) -> None:
        """Mark ``greenlet`` (a connection that just started) as pending in its handshake:
        evictable, after every connection that started before it."""
        self._handshaking[greenlet] = None

    def done(self, greenlet: Any) -> None:
        """``greenlet``'s connection ended (whatever stage it reached): no longer evictable."""
        self._handshaking.pop(greenlet, None)

    def pending_handshakes(self) -> int:
        """How many connections are in their handshake (evictable) now."""
        return len(self._handshaking)

    def evict_oldest(self) -> Any | None:
        """Cut the oldest connection still in its handshake; returns its greenlet (None when
        there is none). Call it in the hub only (the accept loop does): :class:`Evicted` is
        thrown into the greenlet at once, so on return it is normally dead, its client
        aborted. If its unwinding had to wait (a log sink blocking), it finishes later."""
        if not self._handshaking:
            return None
        victim, _ = self._handshaking.popitem(last=False)
        self.evictions += 1
        victim.throw(Evicted)
        return victim

    # -- the session slot: ``with budget:`` (what the personality's session_slot() returns) ----

    def __enter__(self) -> PendingBudget:
        """Take a session slot: the connection's handshake is over (no longer evictable); wait
        for a slot at most :attr:`session_wait` seconds, else raise
        :class:`~gnetserver.errors.SessionWaitTimeout`."""
        self._handshaking.pop(gevent.getcurrent(), None)
        if not self._slots.acquire(timeout=self._session_wait):  # a free slot: no timer
            self.session_wait_timeouts += 1
            raise SessionWaitTimeout(self._session_wait)
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Give the session slot back."""
        self._slots.release()
