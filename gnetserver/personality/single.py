"""The ``Single`` personality: one process, one gevent hub, a greenlet per connection.

Rules of this module:

* One ``gevent.server.StreamServer`` per listener accepts in the hub; every accepted socket is
  handed to the server's ``handle`` in a greenlet of one shared pool. The pool holds
  ``max_servers + max_handshakes`` greenlets: a connection in its TLS handshake (or waiting for
  a session slot) counts against ``max_handshakes``, an established session against
  ``max_servers`` (:meth:`Single.session_slot`). The pool never grows past that.
* When the pool is full, the accept loop first evicts the oldest connection still in its
  handshake (:mod:`.pending`: a flood of silent sockets cannot lock real clients out); only
  when none is (every pending connection waits for a session, each for at most
  ``timeout_session_wait``) do new connections wait in the kernel's backlog.
* The loop is the lifecycle's wait for a stop: the hub accepts meanwhile.
* Stopping: :meth:`Single.stop_accepting` closes the StreamServers and so the listening
  sockets (the server's last close first accepts what the kernel queued on them); the drain
  waits on :meth:`Single.wait_idle`, then :meth:`Single.kill_connections` cuts what is left.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import gevent
from gevent.pool import Pool
from gevent.server import StreamServer

from ..conf import Conf
from ..lifecycle import Dispatch, Lifecycle
from ..listener import Listener
from .hooks import ProcessHooks
from .pending import PendingBudget


class Single:
    """One process, one hub (see the module rules).

    Args:
        conf: the server's configuration: ``max_servers`` sessions served at once
            (established connections), ``max_handshakes`` connections in their handshake, or
            waiting for a session, on top, ``timeout_session_wait`` seconds a connection may
            wait for a session slot.
    """

    name: ClassVar[str] = "Single"
    #: Signals it handles itself (:meth:`handle_signal`): none, the server does them all.
    signals: ClassVar[tuple[str, ...]] = ()
    #: Whether it needs the server's own loop in the main thread (forking, supervising).
    needs_main_loop: ClassVar[bool] = False

    def __init__(self, conf: Conf, *, max_accept: int | None = None) -> None:
        self._pool = Pool(conf.max_servers + conf.max_handshakes)
        self._budget = PendingBudget(conf.max_servers, conf.timeout_session_wait)
        self._servers: list[StreamServer] = []
        self._running = 0  # connection greenlets that started (the others wait to be run)
        # Connections accepted per wake-up (gevent's default 100): a PreFork worker takes 1,
        # so that one woken worker does not take a burst its siblings would serve sooner.
        self._max_accept = max_accept

    @property
    def evictions(self) -> int:
        """Connections evicted from their handshake to make room for newer ones."""
        return self._budget.evictions

    @property
    def session_wait_timeouts(self) -> int:
        """Connections closed because no session slot freed within ``timeout_session_wait``."""
        return self._budget.session_wait_timeouts

    def start(self, listeners: Sequence[Listener],
              handle: Callable[[Listener, Any, Any], None],
              hooks: ProcessHooks | None = None) -> None:
        """One acceptor (a StreamServer) per listener, all spawning into the one pool
        (``hooks``: unused, one process has no workers)."""
        for listener in listeners:
            server = _Acceptor(self, listener.sock,
                               functools.partial(self._run, handle, listener))
            if self._max_accept is not None:
                server.max_accept = self._max_accept
            server.start()
            self._servers.append(server)

    def handle_signal(self, name: str) -> bool:
        """No signal of its own: False, the server's ``handle_<name>`` does it."""
        return False

    def _run(self, handle: Callable[[Listener, Any, Any], None], listener: Listener,
             sock: Any, address: Any) -> None:
        """A connection's greenlet body: pending in its handshake (evictable) until the server
        asks for its session slot, or until it ends."""
        me = gevent.getcurrent()
        self._budget.handshaking(me)
        self._running += 1
        try:
            handle(listener, sock, address)
        finally:
            self._running -= 1
            self._budget.done(me)

    def _no_room(self, server: StreamServer) -> bool:
        """``server``'s ``full`` check, in the hub before each accept: True (stop accepting
        until a greenlet ends) only when the pool is full and no connection is in its
        handshake: while one is, accepting goes on and :meth:`_make_room` evicts for each
        connection actually accepted."""
        pool = self._pool
        if not pool.full() or self._budget.pending_handshakes():
            return False
        if self._running < len(pool):
            # Greenlets of this accept burst have not run yet, so none is known to be in its
            # handshake: look again once they have (their starts are queued before this).
            gevent.get_hub().loop.run_callback(self._resume, server)
        return True  # else every pending connection waits for a session: the backlog holds

    def _make_room(self) -> bool:
        """In the hub, after an accept: free a place in a full pool by evicting the oldest
        connections in their handshake; False if none could be freed. An evicted greenlet dies
        in the call (it is thrown into from the hub), so its place frees now, not one loop
        iteration later; one whose unwinding had to wait (a log sink that blocks) ends soon
        after, and the next oldest is evicted meanwhile."""
        pool = self._pool
        while pool.full():
            victim = self._budget.evict_oldest()
            if victim is None:
                return False
            if victim.dead and victim in pool:
                pool.discard(victim)  # releases its place (gevent would, one loop later)
        return True

    @staticmethod
    def _resume(server: StreamServer) -> None:
        """Accept again on ``server`` (unless it was closed meanwhile)."""
        if server.started:
            server.start_accepting()

    def loop(self, lifecycle: Lifecycle, dispatch: Dispatch) -> None:
        """Wait for the stop while the hub accepts; signals go to ``dispatch``."""
        lifecycle.wait_for_stop(dispatch)

    def stop_accepting(self, take_queued: bool = False) -> None:
        """Close every StreamServer (and so its listening socket: new connections are
        refused from now on). With ``take_queued`` (the server's last close), the connections
        the kernel has already queued on each listener are accepted first and served like
        the others (:meth:`_take_queued`)."""
        for server in self._servers:
            if take_queued and not server.closed:
                self._take_queued(server)
            server.close()

    def _take_queued(self, server: StreamServer) -> None:
        """Accept what waits in ``server``'s listen queue, with nothing that yields until
        the close that follows. Why: those connections finished their TCP handshake, their
        peer may have sent its data already (a balancer has: the PROXY header and the
        ClientHello), and closing the listener would reset them; a balancer in TCP mode
        cannot retry a connection that was established, so the client would see the reset.
        Refused connects, after the close, are retried elsewhere. Bounded: at most the pool's
        size, and only while the pool has room (what is left is reset, as it was before)."""
        server.stop_accepting()  # the hub's watcher: this loop is the last accept
        for _ in range(self._pool.size or 1):
            if server.full():
                return
            try:
                accepted = server.do_read()
            except OSError:
                return
            if accepted is None:  # the queue is empty
                return
            server.do_handle(*accepted)

    def session_slot(self) -> PendingBudget:
        """Held while a session runs: at most ``max_servers`` at once; others wait, each at
        most ``timeout_session_wait`` seconds (then entering it raises
        :class:`~gnetserver.errors.SessionWaitTimeout`). Entering it ends the connection's
        handshake stage: it can no longer be evicted."""
        return self._budget

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


class _Acceptor(StreamServer):
    """gevent's StreamServer, with the pending budget of a :class:`Single`: it keeps accepting
    while the pool is full of connections in their handshake, and makes room for each
    connection it accepts (:meth:`Single._make_room`)."""

    def __init__(self, single: Single, sock: Any, handle: Callable[..., None]) -> None:
        super().__init__(sock, handle=handle, spawn=single._pool)
        self._single = single
        # set_spawn made the pool's ``full`` an instance attribute: replace it with ours.
        self.full = functools.partial(single._no_room, self)  # type: ignore[method-assign]

    def do_read(self) -> Any:
        """Accept one connection (None when none waits) and make room for it. If no place can
        be freed, which takes every pending handshake blocking in its unwinding, the new
        connection is closed: the pool never grows past its size."""
        accepted = super().do_read()
        if accepted is not None and not self._single._make_room():
            accepted[0].close()
            return None
        return accepted

