"""The ``INET`` personality (Net::Server::INET): serve the one connection inetd gave.

Rules of this module:

* The server's ``bind`` hands it one listener whose socket is the connection itself
  (:func:`gnetserver.inet.take_connection`). :meth:`Inet.start` runs that connection through
  the server's ``handle`` in a greenlet; when it ends, the personality asks the lifecycle to
  stop, and the server closes and ``run()`` returns (the process exits).
* Nothing is accepted: ``max_servers`` and the pending budget have no meaning; the session
  slot is free. HUP is ignored (logged): there is nothing to re-execute for one connection.
  TERM and INT cut the connection, QUIT lets it finish within ``graceful_timeout``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import gevent
import gevent.socket

from ..conf import Conf
from ..inet import peer_of
from ..lifecycle import Dispatch, Lifecycle
from ..listener import Listener
from .hooks import ProcessHooks


class Inet:
    """One connection, then stop (see the module rules).

    Args:
        conf: the server's configuration (unused: one connection has no budget).
    """

    name: ClassVar[str] = "INET"
    signals: ClassVar[tuple[str, ...]] = ()
    needs_main_loop: ClassVar[bool] = False
    #: The server's bind gives it the inherited connection instead of binding ports.
    serves_inherited_connection: ClassVar[bool] = True

    def __init__(self, conf: Conf) -> None:
        self._greenlet: gevent.Greenlet[..., Any] | None = None
        self._lifecycle: Lifecycle | None = None
        self._hooks = ProcessHooks()

    evictions = 0
    session_wait_timeouts = 0

    def start(self, listeners: Sequence[Listener],
              handle: Callable[[Listener, Any, Any], None],
              hooks: ProcessHooks | None = None) -> None:
        """Serve the connection of the one listener in a greenlet."""
        self._hooks = hooks or ProcessHooks()
        listener = listeners[0]
        # The connection as a cooperative socket; the listener keeps a detached husk (its
        # close, in release_listeners, is then a no-op).
        sock = gevent.socket.socket(fileno=listener.sock.detach())
        self._greenlet = gevent.spawn(self._serve, handle, listener, sock, peer_of(sock))

    def _serve(self, handle: Callable[[Listener, Any, Any], None], listener: Listener,
               sock: Any, peer: tuple[str, int]) -> None:
        try:
            handle(listener, sock, peer)
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            if self._lifecycle is not None:
                self._lifecycle.request_stop()

    def handle_signal(self, name: str) -> bool:
        """HUP: ignored (logged); the others are the server's."""
        if name == "HUP":
            self._hooks.log(2, "Received a SIG HUP: ignored (INET serves one connection)")
            return True
        return False

    def loop(self, lifecycle: Lifecycle, dispatch: Dispatch) -> None:
        """Wait until the connection ended (or a stop came)."""
        self._lifecycle = lifecycle
        if self._greenlet is None or self._greenlet.dead:
            lifecycle.request_stop()
        lifecycle.wait_for_stop(dispatch)

    def stop_accepting(self, take_queued: bool = False) -> None:
        """Nothing is accepted (nor queued: the one connection came from inetd)."""

    def session_slot(self) -> contextlib.nullcontext[None]:
        """Always free: there is one connection."""
        return contextlib.nullcontext()

    def in_connection(self) -> bool:
        return self._greenlet is not None and gevent.getcurrent() is self._greenlet

    def active_connections(self) -> int:
        return 0 if self._greenlet is None or self._greenlet.dead else 1

    def greenlets(self) -> list[Any]:
        return [] if self._greenlet is None or self._greenlet.dead else [self._greenlet]

    def wait_idle(self) -> gevent.Greenlet[[], Any]:
        greenlet = self._greenlet
        return gevent.spawn(lambda: greenlet.join() if greenlet is not None else None)

    def kill_connections(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=1)
