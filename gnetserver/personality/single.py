"""The ``Single`` personality: one process, one gevent hub, a greenlet per connection.

Rules of this module:

* One ``gevent.server.StreamServer`` per listener accepts in the hub; every accepted socket is
  handed to the server's ``handle`` in a greenlet of one shared pool. The pool holds
  ``max_servers + max_handshakes`` greenlets: a connection in its TLS handshake (or waiting for
  a session slot) counts against ``max_handshakes``, an established session against
  ``max_servers`` (:meth:`Single.session_slot`). Beyond both, new connections wait in the
  kernel's backlog.
* The loop is the lifecycle's wait for a stop: the hub accepts meanwhile.
* Stopping: :meth:`Single.stop_accepting` closes the StreamServers (not the listening sockets,
  which the server owns); the drain waits on :meth:`Single.wait_idle`, then
  :meth:`Single.kill_connections` cuts what is left.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import gevent
from gevent.lock import BoundedSemaphore
from gevent.pool import Pool
from gevent.server import StreamServer

from ..conf import Conf
from ..lifecycle import Dispatch, Lifecycle
from ..listener import Listener


class Single:
    """One process, one hub (see the module rules).

    Args:
        conf: the server's configuration: ``max_servers`` sessions served at once
            (established connections), ``max_handshakes`` connections in their handshake, or
            waiting for a session, on top.
    """

    name: ClassVar[str] = "Single"

    def __init__(self, conf: Conf) -> None:
        self._pool = Pool(conf.max_servers + conf.max_handshakes)
        self._slots = BoundedSemaphore(conf.max_servers)
        self._servers: list[StreamServer] = []

    def start(self, listeners: Sequence[Listener],
              handle: Callable[[Listener, Any, Any], None]) -> None:
        """One StreamServer per listener, all spawning into the one pool."""
        for listener in listeners:
            server = StreamServer(listener.sock, handle=functools.partial(handle, listener),
                                  spawn=self._pool)
            server.start()
            self._servers.append(server)

    def loop(self, lifecycle: Lifecycle, dispatch: Dispatch) -> None:
        """Wait for the stop while the hub accepts; signals go to ``dispatch``."""
        lifecycle.wait_for_stop(dispatch)

    def stop_accepting(self) -> None:
        """Close every StreamServer (the listening sockets stay open: the server owns them)."""
        for server in self._servers:
            server.close()

    def session_slot(self) -> BoundedSemaphore:
        """Held while a session runs: at most ``max_servers`` at once, others wait."""
        return self._slots

    def in_connection(self) -> bool:
        """True in a connection's greenlet."""
        return gevent.getcurrent() in self._pool.greenlets

    def active_connections(self) -> int:
        """How many connection greenlets run."""
        return len(self._pool)

    def greenlets(self) -> list[Any]:
        """The live connection greenlets."""
        return [greenlet for greenlet in self._pool.greenlets if not greenlet.dead]

    def wait_idle(self) -> gevent.Greenlet[[], Any]:
        """A greenlet that ends once the pool is empty (the drain waits on it; killed after)."""
        return gevent.spawn(self._pool.join)

    def kill_connections(self) -> None:
        """Kill the connections left (their clients are aborted), waiting up to a second."""
        self._pool.kill(block=True, timeout=1)
